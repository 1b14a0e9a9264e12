//! Token accounts (rules T1, T2, T3, T8, T9, A5 in docs/rules.md): attach an Apple location by its
//! sToken, keep an honest status, order accounts by priority, replace tokens, reclaim ownership,
//! delete.
//!
//! The HTTP layer is `api::accounts`; this module holds the decisions and the Apple calls, and
//! the ledger module `ledger::accounts` the SQL.

pub mod attach;
pub mod checks;
pub mod error;
pub mod identity;
pub mod order;
pub mod overview;
pub mod ownership;
pub mod removal;
pub mod update;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::apple::error::{AppleError, ErrorClass};
use crate::domain::account_status::Observation;
use crate::domain::validation::FieldError;

pub use error::AccountError;

crate::text_enum! {
    /// Kind of a distribution list entry.
    pub enum ListKind {
        User = "user",
        Group = "group",
        Device = "device",
    }
}

/// One entry of an account's distribution list: who may receive its licenses when allocation
/// falls back to it. An empty list means everyone in the space.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListEntry {
    pub kind: ListKind,
    /// Client user id, group name or device serial number, 1–256 characters.
    #[schema(min_length = 1, max_length = 256)]
    pub value: String,
}

/// What Apple's answer (or failure) says about the account's status.
pub fn observe_error(err: &AppleError, now: DateTime<Utc>) -> Option<Observation> {
    // Bounded, so no header can push the date past what the clock represents.
    let until = |after: std::time::Duration| {
        let after = after.min(crate::apple::error::MAX_RETRY_AFTER);
        now + chrono::Duration::from_std(after).unwrap_or(chrono::Duration::seconds(60))
    };
    match err.class() {
        ErrorClass::Auth(failure) => Some(Observation::Auth(failure)),
        ErrorClass::RateLimited { retry_after } => Some(Observation::Throttled {
            until: until(retry_after.unwrap_or(std::time::Duration::from_secs(60))),
        }),
        ErrorClass::Transient {
            retry_after: Some(after),
        } => Some(Observation::Throttled {
            until: until(after),
        }),
        _ => None,
    }
}

/// Validates a distribution list (kinds are typed; values must be 1–256 characters).
pub fn check_list(list: &[ListEntry], errors: &mut Vec<FieldError>) {
    for (i, e) in list.iter().enumerate() {
        if e.value.trim().is_empty() || e.value.chars().count() > 256 {
            errors.push(FieldError {
                field: format!("distribution_list[{i}].value"),
                message: "must be 1 to 256 characters".into(),
            });
        }
    }
}
