//! What an allocation is asked and why it can be refused: the request the transport builds and
//! the use case ([`crate::engine::allocate`]) decides with [`super::decide`]. Plain values: no
//! I/O, no database types.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::model::{LicenseWish, Skip};
use super::origin::Origin;

/// An asset: Apple product id and pricing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AssetRef {
    pub adam_id: String,
    pub pricing_param: String,
}

/// Who asks for a license.
#[derive(Clone, Debug)]
pub enum SubjectInput {
    Device {
        serial: String,
        /// Client user id of the device's user, when known.
        user: Option<String>,
        /// `None`: as stored before (a new device is not a Shared iPad).
        shared_ipad: Option<bool>,
        groups: Option<Vec<String>>,
    },
    User {
        id: String,
        groups: Option<Vec<String>>,
    },
}

#[derive(Clone, Debug)]
pub struct AllocationRequest {
    pub space: String,
    pub asset: AssetRef,
    pub subject: SubjectInput,
    pub wish: LicenseWish,
    pub reason: String,
    /// Who asks (recorded as the assignment's `requested_by`) and in which request (the
    /// activity log's `request_id`), carried here because the combiner decides the request on
    /// a task of its own.
    pub origin: Origin,
    pub dry_run: bool,
    /// Accounts not to use (a re-allocation after Apple's 9709 excludes the account that failed).
    pub exclude_accounts: Vec<Uuid>,
    /// For re-allocations: the assignment being replaced (recorded in the decision).
    pub replaces: Option<Uuid>,
    /// A12: when no license is left, wait in line until this time instead of being refused.
    pub wait_until: Option<DateTime<Utc>>,
    /// A12, a request that left waiting to the asset's policy (`wait_for_license` absent):
    /// when no license is left and the policy says `wait_for_license`, wait in line until this
    /// time. `None` when the request decided itself (or never waits).
    pub policy_wait_until: Option<DateTime<Utc>>,
    /// A12: this request serves the waiting assignment with this id (the wait-list worker's
    /// re-decision); the license, if one is free, is written onto that assignment.
    pub serves: Option<Uuid>,
    /// A12: the holder the waiting assignment [`Self::serves`] was written for. The
    /// re-decision is refused ([`Refusal::HolderChanged`]) when the request now resolves to
    /// another holder (a device waiting for its user's license whose user changed): the
    /// license is never written onto another holder's row.
    pub serves_holder: Option<Uuid>,
}

/// Why a request is refused: the answers of the rules themselves (the use case adds the
/// ledger's failures in [`crate::engine::allocate::AllocationError`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    #[error("space {0} not found")]
    UnknownSpace(String),
    #[error("no account of space {space} owns asset {adam_id}/{pricing_param}")]
    UnknownAsset {
        space: String,
        adam_id: String,
        pricing_param: String,
    },
    #[error("{0}")]
    Disallowed(String),
    #[error("{0}")]
    Incompatible(String),
    #[error("no license available")]
    Exhausted { skipped: Vec<Skip> },
    /// A12: the waiting assignment being served was written for another holder than the one
    /// the request resolves to now (only the wait-list's re-decisions are refused so).
    #[error("{0}")]
    HolderChanged(String),
}
