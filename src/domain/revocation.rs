//! What a revocation is asked (which live assignments) and what it did; the use case is
//! [`crate::engine::revoke`].

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// Which live assignments to revoke (all given filters must match).
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub assignment: Option<Uuid>,
    pub account: Option<Uuid>,
    pub adam_id: Option<String>,
    pub pricing_param: Option<String>,
    pub subject: Option<Uuid>,
    /// Also send licenses of non-revocable assets to Apple (account deletion: the account goes
    /// whatever Apple answers). Otherwise they are kept and counted.
    pub include_not_revocable: bool,
}

/// What a revocation did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Revoked {
    /// Pending assignments dropped before reaching Apple (now `revoked`).
    pub dropped: i64,
    /// Assignments now `revoking`; Apple is asked to release them.
    pub revoking: i64,
    /// Matching live assignments of non-revocable assets, left as they are.
    pub not_revocable: i64,
    /// Waiting assignments (A12) cancelled (now `revoked`; they held no license).
    pub cancelled: i64,
}
