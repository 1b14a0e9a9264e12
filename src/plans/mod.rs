//! Plans: acting on drift (Adopt, Clean Up, Repair) and on licenses no longer used (Reconcile),
//! always planned first, then applied by id (rules T4, T6, T12; docs/sync.md, "Plans").
//!
//! - [`create`] ([`make`]) lists exactly what applying would change — the dry run — from the
//!   drift report's items as the rows they are about are *now*, capped per account, and keeps
//!   the list (`plans`, `plan_items`) for an hour.
//! - [`apply()`] ([`mod@apply`]) changes exactly those items, once: the plan row is locked, a plan
//!   already applied answers its outcome again, an expired one is refused (`410`). Every item is
//!   checked again in the applying transaction; what changed since the plan is `skipped` with
//!   the reason. Each item runs in a savepoint, so a conflict rolls back that item alone.
//!
//! Decisions:
//! - **Cap** ([`cap`]): `VPP_PLAN_CAP_PERCENT` of the account's assignments — the larger of the
//!   ledger's live ones and Apple's rows in the mirror, at least 1 — and at most
//!   `VPP_PLAN_CAP_MAX`, per account (a space-wide plan adds the accounts' caps). `limit` asks
//!   for fewer items in the whole plan. A plan says how many candidates there were and whether
//!   items were cut (`capped`): the rest waits for the next plan.
//! - **Clean Up** is refused (409 `clean-up-refused`, at plan and at apply time) unless every
//!   account it acts on is owned by this deployment (status not `not_owned`) and was synced
//!   within the hour; rows of non-revocable assets and rows Apple first listed less than an
//!   hour ago are not candidates (counted in the plan's `excluded`). A cleaned-up license is
//!   recorded (rule `adopted`) and revoked through the ordinary revocation
//!   ([`crate::engine::revoke`]), so the dispatcher releases it: batched, followed, in the
//!   history.
//! - **Adopt** never calls Apple: Apple already lists the license
//!   ([`crate::ledger::adoption`]).
//! - **Reconcile**'s candidates come from the Reconcile use case ([`crate::reconcile`],
//!   through [`make::reconcile_candidates`]); applying an item re-checks its criterion with the
//!   allocation rules and revokes it there ([`crate::reconcile::revoke_candidate`]), so a
//!   subject allowed again since the plan keeps its license (the item is `skipped`).

pub mod apply;
pub mod make;

use uuid::Uuid;

pub use apply::apply;
pub use make::create;

use crate::domain::reconciliation::PlanAction;
use crate::ledger::plans::{self as store, ItemRow, PlanRow};

crate::text_enum! {
    /// What Repair does with a `ledger_only` license (active in the ledger, not at Apple).
    pub enum RepairChoice {
        /// Queue its association again (Apple lists it again once the dispatcher drained).
        Reassociate = "reassociate",
        /// Free it in the ledger (state `revoked`, reason `lost at Apple`).
        MarkLost = "mark_lost",
    }
}

/// What a caller asks to plan.
#[derive(Clone, Debug)]
pub struct PlanRequest {
    pub action: PlanAction,
    /// `None`: every account of the space.
    pub account: Option<Uuid>,
    pub adam_id: Option<String>,
    pub pricing_param: Option<String>,
    /// Repair only.
    pub repair: RepairChoice,
    /// At most this many items in the plan.
    pub limit: Option<u32>,
}

/// A plan with its items.
#[derive(Clone, Debug)]
pub struct Plan {
    pub row: PlanRow,
    pub items: Vec<ItemRow>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The space, account or plan does not exist (or is of another space).
    #[error("{0} not found")]
    NotFound(String),
    /// The plan's hour passed before it was applied; nothing changed.
    #[error("plan {0} expired at {1}; make a new plan")]
    Expired(Uuid, chrono::DateTime<chrono::Utc>),
    /// Clean Up's preconditions do not hold (says which account and why); nothing changed.
    #[error("{0}")]
    CleanUpRefused(String),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

/// The plan `id` of `space` with its items.
pub async fn get(
    conn: &mut diesel_async::AsyncPgConnection,
    space: &str,
    id: Uuid,
) -> Result<Plan, PlanError> {
    let row = store::find(conn, space, id, false)
        .await?
        .ok_or_else(|| PlanError::NotFound(format!("plan {id}")))?;
    let items = store::items(conn, id).await?;
    Ok(Plan { row, items })
}

/// How many items a plan may hold for an account with `live` ledger assignments and `mirror`
/// rows at Apple: `percent` of the larger, at least 1, at most `max`.
pub fn cap(percent: u64, max: u64, live: i64, mirror: i64) -> i64 {
    let base = live.max(mirror).max(0) as u64;
    (base.saturating_mul(percent) / 100).clamp(1, max.max(1)) as i64
}

/// The daily Reconcile (`VPP_RECONCILE_DAILY`): for every space whose last scheduled Reconcile
/// is a day old, a space-wide Reconcile plan is made and applied at once by `system`, capped
/// like a manual one (what the cap leaves waits for the next day, or a manual plan). One
/// replica at a time (a transaction advisory lock); the plans and their outcomes are in the
/// activity log like a caller's. Returns the plans applied.
pub async fn daily_reconcile(
    conn: &mut diesel_async::AsyncPgConnection,
    settings: &crate::config::ReconcileArgs,
) -> Result<Vec<Plan>, PlanError> {
    use diesel_async::AsyncConnection;
    let origin = crate::domain::origin::Origin::system();
    conn.transaction(async |conn| {
        if !store::daily_reconcile_turn(conn).await? {
            return Ok(Vec::new());
        }
        let mut done = Vec::new();
        for space in store::spaces_due_for_reconcile(conn, &origin.actor).await? {
            let request = PlanRequest {
                action: PlanAction::Reconcile,
                account: None,
                adam_id: None,
                pricing_param: None,
                repair: RepairChoice::Reassociate,
                limit: None,
            };
            let plan = create(conn, &space, &origin, settings, &request).await?;
            done.push(apply(conn, &space, plan.row.id, &origin, settings).await?);
        }
        Ok(done)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::cap;

    #[test]
    fn cap_is_a_share_of_the_larger_side_at_least_one_at_most_the_max() {
        assert_eq!(cap(10, 5000, 0, 0), 1);
        assert_eq!(cap(10, 5000, 5, 3), 1);
        assert_eq!(cap(10, 5000, 25, 40), 4);
        assert_eq!(cap(10, 5000, 1_000_000, 0), 5000);
        assert_eq!(cap(100, 5000, 7, 2), 7);
    }
}
