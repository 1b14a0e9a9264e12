//! Making a plan: the candidates of each account, cut to the account's cap and the caller's
//! `limit`, kept as the plan's items (the dry run), with `plan.created` in the activity log.

use diesel_async::{AsyncConnection, AsyncPgConnection};
use uuid::Uuid;

use super::{Plan, PlanError, PlanRequest, RepairChoice, cap};
use crate::config::ReconcileArgs;
use crate::domain::model::{AssignmentState, LicenseType};
use crate::domain::origin::Origin;
use crate::domain::reconciliation::{PlanAction, PlanChange, ReconcileCriterion};
use crate::ledger::activity::{self, Activity, ActivityAction};
use crate::ledger::plans::{self as store, AccountFacts, ItemRow, NewPlan};

/// Candidates left out of a plan, and why (Clean Up).
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Excluded {
    /// Rows of assets Apple does not take back (books).
    pub not_revocable: i64,
    /// Rows Apple first listed less than an hour ago (another MDM may be mid-assignment).
    pub too_recent: i64,
}

/// One license Reconcile would revoke: what the Reconcile use case gives a plan.
#[derive(Clone, Debug)]
pub struct ReconcileCandidate {
    pub assignment_id: Uuid,
    pub account_id: Uuid,
    pub adam_id: String,
    pub pricing_param: String,
    pub license_type: LicenseType,
    /// Apple's target: serial number (device licenses) or client user id (user licenses).
    pub target: String,
    pub reason: ReconcileCriterion,
}

/// Reconcile's candidates in `account` ([`crate::reconcile`]: licenses this deployment
/// assigned that the allocation rules no longer allow, or whose subject was not seen), at most
/// `VPP_PLAN_CAP_MAX` of them (a plan never takes more), with how many there are in all.
pub async fn reconcile_candidates(
    conn: &mut AsyncPgConnection,
    space: &str,
    account: Uuid,
    settings: &ReconcileArgs,
) -> Result<(Vec<ReconcileCandidate>, i64), PlanError> {
    let limit = settings.plan_cap_max.min(i64::MAX as u64) as i64;
    let (found, total) =
        crate::reconcile::candidates_and_count(conn, space, Some(account), settings, limit).await?;
    let listed = found
        .into_iter()
        .map(|c| ReconcileCandidate {
            assignment_id: c.assignment_id,
            account_id: c.account_id,
            adam_id: c.adam_id,
            pricing_param: c.pricing_param,
            license_type: c.license_type,
            target: c.target,
            reason: c.criterion,
        })
        .collect();
    Ok((listed, total))
}

/// Refuses Clean Up unless every account of `accounts` is owned by this deployment and was
/// synced within the hour.
pub fn check_clean_up(accounts: &[AccountFacts]) -> Result<(), PlanError> {
    for a in accounts {
        if a.status == "not_owned" {
            return Err(PlanError::CleanUpRefused(format!(
                "account {} is managed by another MDM (status not_owned): reclaim it first",
                a.id
            )));
        }
        if !a.synced_within_hour {
            return Err(PlanError::CleanUpRefused(match a.synced_at {
                Some(at) => format!(
                    "account {} was last synced at {at}, more than an hour ago: sync it first",
                    a.id
                ),
                None => format!("account {} was never synced: sync it first", a.id),
            }));
        }
    }
    Ok(())
}

/// An item of a plan, before it is numbered.
fn item(
    change: PlanChange,
    license: (Uuid, String, String, LicenseType, String),
    assignment_id: Option<Uuid>,
    reason: String,
) -> ItemRow {
    let (account_id, adam_id, pricing_param, license_type, target) = license;
    ItemRow {
        seq: 0,
        account_id,
        change,
        adam_id,
        pricing_param,
        license_type,
        target,
        assignment_id,
        reason,
        outcome: None,
        outcome_reason: None,
        subject: None,
    }
}

/// The candidates of one account for `request`, in the order they would be applied.
async fn candidates(
    conn: &mut AsyncPgConnection,
    space: &str,
    account: Uuid,
    request: &PlanRequest,
    settings: &ReconcileArgs,
    excluded: &mut Excluded,
    beyond: &mut i64,
) -> Result<Vec<ItemRow>, PlanError> {
    let adam = request.adam_id.as_deref();
    let pricing = request.pricing_param.as_deref();
    Ok(match request.action {
        PlanAction::Adopt | PlanAction::CleanUp => {
            let clean_up = request.action == PlanAction::CleanUp;
            let mut out = Vec::new();
            for row in store::apple_only(conn, account, adam, pricing).await? {
                if clean_up && !row.revocable {
                    excluded.not_revocable += 1;
                    continue;
                }
                if clean_up && row.first_seen_within_hour {
                    excluded.too_recent += 1;
                    continue;
                }
                let change = if clean_up {
                    PlanChange::RevokeAtApple
                } else {
                    PlanChange::Adopt
                };
                let license = (
                    row.account_id,
                    row.adam_id,
                    row.pricing_param,
                    row.license_type,
                    row.target,
                );
                out.push(item(change, license, None, "apple_only".into()));
            }
            out
        }
        PlanAction::Repair => store::ledger_side(conn, account, adam, pricing)
            .await?
            .into_iter()
            .map(|row| {
                let change = match (row.class.as_str(), row.state) {
                    ("ledger_only", _) => match request.repair {
                        RepairChoice::Reassociate => PlanChange::Reassociate,
                        RepairChoice::MarkLost => PlanChange::MarkLost,
                    },
                    (_, AssignmentState::Associating) if row.apple_event_id.is_some() => {
                        PlanChange::FollowEvent
                    }
                    (_, AssignmentState::Revoking) => PlanChange::ResubmitRelease,
                    // Pending, or associating without an Apple event (the request never
                    // landed): queue the association again.
                    _ => PlanChange::Reassociate,
                };
                let license = (
                    row.account_id,
                    row.adam_id,
                    row.pricing_param,
                    row.license_type,
                    row.target,
                );
                item(change, license, Some(row.assignment_id), row.class)
            })
            .collect(),
        PlanAction::Reconcile => {
            let (listed, total) = reconcile_candidates(conn, space, account, settings).await?;
            *beyond += (total - listed.len() as i64).max(0);
            listed
                .into_iter()
                .map(|c| {
                    let license = (
                        c.account_id,
                        c.adam_id,
                        c.pricing_param,
                        c.license_type,
                        c.target,
                    );
                    item(
                        PlanChange::Revoke,
                        license,
                        Some(c.assignment_id),
                        c.reason.as_str().into(),
                    )
                })
                .collect()
        }
    })
}

/// Makes and keeps a plan for `request` in `space` (see the module doc of [`super`]).
pub async fn create(
    conn: &mut AsyncPgConnection,
    space: &str,
    origin: &Origin,
    settings: &ReconcileArgs,
    request: &PlanRequest,
) -> Result<Plan, PlanError> {
    if crate::ledger::spaces::find(conn, space).await?.is_none() {
        return Err(PlanError::NotFound(format!("space {space}")));
    }
    let accounts = store::account_facts(conn, space, request.account).await?;
    if let Some(account) = request.account
        && accounts.is_empty()
    {
        return Err(PlanError::NotFound(format!("account {account}")));
    }
    if request.action == PlanAction::CleanUp {
        check_clean_up(&accounts)?;
    }
    let mut excluded = Excluded::default();
    let mut items = Vec::new();
    let mut found = 0i64;
    let mut room_total = 0i64;
    let limit = request.limit.map(i64::from).unwrap_or(i64::MAX);
    for account in &accounts {
        let account_cap = cap(
            settings.plan_cap_percent,
            settings.plan_cap_max,
            account.live,
            account.mirror,
        );
        room_total += account_cap;
        // Candidates a source did not list (Reconcile lists at most VPP_PLAN_CAP_MAX).
        let mut beyond = 0;
        let mut listed = candidates(
            conn,
            space,
            account.id,
            request,
            settings,
            &mut excluded,
            &mut beyond,
        )
        .await?;
        found += listed.len() as i64 + beyond;
        let left = (limit - items.len() as i64).max(0);
        listed.truncate(account_cap.min(left) as usize);
        items.extend(listed);
    }
    for (i, item) in items.iter_mut().enumerate() {
        item.seq = i as i32 + 1;
    }
    let plan_cap = room_total.min(limit);
    let options = serde_json::json!({
        "adam_id": request.adam_id,
        "pricing_param": request.pricing_param,
        "repair": (request.action == PlanAction::Repair).then_some(request.repair),
        "limit": request.limit,
        // Not asked by the caller but decided with the plan: kept with what was asked, as the
        // plans table has no column of its own for it.
        "excluded": excluded,
    });
    let id = Uuid::now_v7();
    let new = NewPlan {
        id,
        space,
        account: request.account,
        action: request.action,
        options,
        created_by: &origin.actor,
        request_id: origin.request_id.as_deref(),
        cap: plan_cap.min(i32::MAX as i64) as i32,
        candidates: found.min(i32::MAX as i64) as i32,
    };
    let count = items.len();
    conn.transaction(async |conn| {
        store::insert(conn, &new, &items).await?;
        let mut act = Activity::new(origin, ActivityAction::PlanCreated.as_str())
            .space(space)
            .details(serde_json::json!({
                "plan": id,
                "action": request.action,
                "items": count,
                "cap": new.cap,
                "candidates": new.candidates,
            }));
        act.account_id = request.account;
        activity::record(conn, act).await
    })
    .await?;
    super::get(conn, space, id).await
}
