//! Revocation (rule V1 in docs/rules.md): one assignment, all of an asset (in one account or all),
//! all of a subject's, all of an account's.
//!
//! A revoked license is free in the ledger at once (`held` drops in the same statement).
//! Pending assignments never reached Apple: they become `revoked` and their queued Apple job is
//! dropped. Assignments Apple holds (or is associating) become `revoking` and get a
//! `disassociate` job; the dispatcher moves them to `revoked` when Apple confirms.
//!
//! Every revocation is recorded on the assignment (who, why, when, in which request:
//! `revoked_by`, `revocation_reason`, `revocation_requested_at`, `revocation_request_id`) and in
//! the activity log, from the [`Origin`] the caller passes.
//!
//! Licenses of assets Apple does not take back (`assets.revocable = false`, books: Apple answers
//! 9706) are left alone unless the scope says otherwise: sending them to Apple only failed the
//! assignment and counted one more license as assigned elsewhere per attempt. They are counted
//! in [`Revoked::not_revocable`]; callers that name such a license or asset refuse the request
//! up front ([`not_revocable`]).
//!
//! V4: Apple's v2 disassociate has no "notify the user" flag (v1 had one), so the account's
//! license-removal-notification setting is recorded with each revocation (`notify_user` in the
//! activity log) for the calling MDM to act on.

use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use crate::domain::origin::Origin;
pub use crate::domain::revocation::{Revoked, Scope};
use crate::ledger::revocations as store;

/// How many live assignments of `space` matching `scope` are of assets Apple does not let
/// revoke. Callers that name one license or one asset refuse the request when this is not 0.
pub async fn not_revocable(
    conn: &mut AsyncPgConnection,
    space: &str,
    scope: &Scope,
) -> diesel::QueryResult<i64> {
    Ok(store::matching(conn, space, scope, false)
        .await?
        .iter()
        .filter(|t| !t.revocable)
        .count() as i64)
}

/// Starts revocation of every live assignment of `space` matching `scope`. Run it inside the
/// caller's transaction.
///
/// Rows are locked in the ledger's lock order first (assignments by id, then their asset rows
/// by key; see [`crate::ledger::assignments::lock_in_order`]): a revocation spanning several
/// assets or assignments then never deadlocks with allocation batches or the dispatcher.
pub async fn revoke(
    conn: &mut AsyncPgConnection,
    space: &str,
    scope: &Scope,
    origin: &Origin,
    reason: &str,
) -> diesel::QueryResult<Revoked> {
    let matched = store::matching(conn, space, scope, true).await?;
    let not_revocable = if scope.include_not_revocable {
        0
    } else {
        matched.iter().filter(|t| !t.revocable).count() as i64
    };
    let targets: Vec<Uuid> = matched
        .into_iter()
        .filter(|t| t.revocable || scope.include_not_revocable)
        .map(|t| t.id)
        .collect();
    if targets.is_empty() {
        return Ok(Revoked {
            not_revocable,
            ..Revoked::default()
        });
    }
    let (dropped, revoking) = store::start(conn, space, &targets, origin, reason).await?;
    Ok(Revoked {
        dropped,
        revoking,
        not_revocable,
    })
}
