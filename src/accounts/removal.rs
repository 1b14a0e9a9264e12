//! Deleting an account (rule T8 in docs/rules.md).
//!
//! An account a distribution policy uses (a reservation names it), or that still holds
//! licenses, is only deleted when the caller passes `revoke_all=true`: silently revoking licenses
//! or breaking a policy is never what a caller wants by accident. With `revoke_all`, the
//! policy entries naming the account are removed, every live assignment starts revocation
//! (pending ones are dropped at once, the others go `revoking` with a disassociate job queued in
//! the same transaction), and the account is marked for deletion; the dispatcher removes the
//! row when Apple has released every license. An account with nothing at Apple is removed at
//! once.
//!
//! A deletion can only finish while Apple accepts the account's token: releasing a license is an
//! Apple call. While the account is expired, revoked, invalid, login-required or not owned,
//! the releases wait (A10) and [`blocked`] says why and what to do (shown in the account's
//! `deletion` view); once the token is replaced (or ownership reclaimed, or the content manager
//! signed in again), the account is usable, its queued releases go out at once and the deletion
//! completes by itself.

use chrono::Utc;
use diesel_async::AsyncConnection;
use uuid::Uuid;

use super::AccountError;
use crate::domain::account_status::AccountStatus;
use crate::domain::origin::Origin;
use crate::ledger::accounts as store;
use crate::ledger::activity::{self, Activity};
use crate::ledger::assignments;
use crate::state::AppState;

/// Outcome of a delete request.
#[derive(Debug, PartialEq, Eq)]
pub enum Deleted {
    /// The account is gone.
    Now,
    /// Revocation is under way; the account goes when Apple has released its licenses.
    Pending { revoking: i64 },
}

pub async fn delete(
    state: &AppState,
    actor: &Origin,
    space: &str,
    id: Uuid,
    revoke_all: bool,
    versions: Option<&[i64]>,
) -> Result<Deleted, AccountError> {
    let mut conn = state.pool.get().await?;
    conn.transaction(async |conn| {
        if store::lock_space(conn, space).await?.is_none() {
            return Err(AccountError::NotFound(format!("space {space}")));
        }
        let account = store::find_locked(conn, space, id)
            .await?
            .ok_or_else(|| AccountError::NotFound(format!("account {id}")))?;
        if let Some(v) = versions
            && !v.contains(&account.version)
        {
            return Err(AccountError::Stale {
                current: account.version,
            });
        }
        // Allocations in flight hold the account's asset rows until they commit: waiting for
        // them lets the count and the revocation below see their licenses, and once this
        // transaction commits the allocation guard refuses new ones (`ledger::allocation_write`).
        crate::ledger::assets::lock_account(conn, id).await?;
        let policies = crate::ledger::policies::count_account_entries(conn, id).await?;
        let live = assignments::count_live(conn, id).await?;
        if !revoke_all && (policies > 0 || live > 0) {
            return Err(AccountError::InUse(format!(
                "account {id} is used by {policies} distribution policy entries and holds {live} \
                 licenses; pass revoke_all=true to revoke every license and delete it"
            )));
        }
        if policies > 0 {
            crate::ledger::policies::remove_account_entries(conn, id).await?;
        }
        let counts = crate::engine::revoke::revoke(
            conn,
            space,
            &crate::engine::revoke::Scope {
                account: Some(id),
                // The account goes whatever Apple answers: its non-revocable licenses are
                // asked back too, and fail there (as before), so none is left holding it.
                include_not_revocable: true,
                ..Default::default()
            },
            actor,
            "account deleted",
        )
        .await?;
        let at_apple = assignments::count_at_apple(conn, id).await?;
        activity::record(
            conn,
            Activity::new(actor, "account.delete_requested")
                .space(space)
                .account(id)
                .details(serde_json::json!({
                    "revoke_all": revoke_all,
                    "policy_entries_removed": policies,
                    "pending_dropped": counts.dropped,
                    "revoking": at_apple,
                })),
        )
        .await?;
        if at_apple == 0 {
            store::remove(conn, space, id).await?;
            activity::record(
                conn,
                Activity::new(actor, "account.deleted")
                    .space(space)
                    .account(id),
            )
            .await?;
            return Ok(Deleted::Now);
        }
        store::mark_deletion_requested(conn, id, Utc::now()).await?;
        Ok(Deleted::Pending { revoking: at_apple })
    })
    .await
}

/// Why a requested deletion cannot progress while the account has `status`, and what the
/// admin must do; `None` when it progresses (a Retry-After passes by itself).
pub fn blocked(status: AccountStatus) -> Option<String> {
    let waits = "so its licenses cannot be released at Apple and the deletion waits";
    let then = "the deletion then continues by itself";
    match status {
        AccountStatus::Active | AccountStatus::Expiring | AccountStatus::Throttled => None,
        AccountStatus::Expired | AccountStatus::Revoked | AccountStatus::Invalid => Some(format!(
            "Apple no longer accepts this account's sToken ({status}), {waits}: download a new \
             sToken of the same location in Apple Business Manager and replace it \
             (PUT …/accounts/{{account}}/stoken); {then}"
        )),
        AccountStatus::LoginRequired => Some(format!(
            "Apple requires the content manager to sign in again, {waits}: sign in to Apple \
             Business Manager, then test the account (POST …/accounts/{{account}}/test) or \
             replace its sToken; {then}"
        )),
        AccountStatus::NotOwned => Some(format!(
            "another MDM owns this account's token and this deployment does not write to Apple \
             for it, {waits}: reclaim ownership (POST …/accounts/{{account}}/reclaim) or replace \
             the sToken (PUT …/accounts/{{account}}/stoken); {then}"
        )),
    }
}
