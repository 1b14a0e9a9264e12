//! Settling Apple's results (rule T10): the use case that both the dispatcher (status polls)
//! and the notification receiver (`POST /apple/notifications/{account}`) call.
//!
//! - [`results`]: an event's results move its assignments to their final states; a license
//!   Apple did not have (9709) is re-allocated from the next eligible account;
//! - [`deletion`]: an account whose deletion waited for Apple is removed once Apple holds
//!   nothing of it;
//! - [`notifications`]: one notification from Apple, authenticated, deduplicated and applied
//!   (ASSET_MANAGEMENT results through [`results`], ASSET_COUNT changes to the asset's total).
//!
//! The statements are the store's (`ledger::apple_events`, `ledger::settlements`,
//! `ledger::asset_counts`, `ledger::apple_notifications`); transactions are opened here.

pub mod deletion;
pub mod notifications;
pub mod results;

pub use deletion::finish_account_deletion;
pub use results::{Applied, Results, apply, failures_by_target};

use crate::accounts::AccountError;
use crate::apple::error::AppleError;
use crate::engine::allocate::AllocationError;

/// What can go wrong while settling Apple's results.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error(transparent)]
    Apple(#[from] AppleError),
    /// Recording what an Apple answer says about the account's owner failed.
    #[error(transparent)]
    Ownership(#[from] AccountError),
    /// Re-allocating a license Apple did not have failed for a reason other than a refusal.
    #[error("re-allocation failed: {0}")]
    Reallocation(#[source] AllocationError),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    #[error(transparent)]
    Pool(#[from] diesel_async::pooled_connection::deadpool::PoolError),
}
