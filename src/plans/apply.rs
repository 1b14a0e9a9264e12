//! Applying a plan: once, within its hour, each item checked again (see [`super`]).

use chrono::Utc;
use diesel::result::{DatabaseErrorKind, Error as DbError};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use uuid::Uuid;

use super::make::check_clean_up;
use super::{Plan, PlanError};
use crate::domain::model::AssignmentState;
use crate::domain::origin::Origin;
use crate::domain::reconciliation::{
    ItemOutcome, PlanAction, PlanChange, PlanState, ReconcileCriterion,
};
use crate::domain::revocation::Scope;
use crate::engine::revoke;
use crate::ledger::activity::{self, Activity, ActivityAction};
use crate::ledger::adoption::{self, AdoptedBy, Adoption, AppleLicense};
use crate::ledger::jobs::{self, AssignmentWork, Job, JobKind, PollEvent};
use crate::ledger::plans::{self as store, ItemRow, PlanRow};
use crate::ledger::{assignments, repairs};

/// What applying one item did.
enum Done {
    /// Applied; the assignment it created or changed.
    Applied(Option<Uuid>),
    Skipped(String),
}

fn skipped(reason: impl Into<String>) -> Result<Done, DbError> {
    Ok(Done::Skipped(reason.into()))
}

/// Applies plan `id` of `space` once (see the module doc of [`super`]) and answers it as it is
/// then: applied, with each item's outcome.
pub async fn apply(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
    origin: &Origin,
    settings: &crate::config::ReconcileArgs,
) -> Result<Plan, PlanError> {
    conn.transaction(async |conn| {
        // The plan row's lock makes a concurrent second apply wait, then see it applied.
        let plan = store::find(conn, space, id, true)
            .await?
            .ok_or_else(|| PlanError::NotFound(format!("plan {id}")))?;
        if plan.state == PlanState::Applied {
            return Ok(());
        }
        if plan.expired {
            return Err(PlanError::Expired(id, plan.expires_at));
        }
        let mut items = store::items(conn, id).await?;
        if plan.action == PlanAction::CleanUp {
            let mut accounts: Vec<Uuid> = items.iter().map(|i| i.account_id).collect();
            accounts.sort();
            accounts.dedup();
            for account in accounts {
                check_clean_up(&store::account_facts(conn, space, Some(account)).await?)?;
            }
        }
        let (mut applied, mut skipped_n) = (0i64, 0i64);
        // Items are applied in the ledger's lock order (account, asset), as allocation batches
        // and the sync lock asset rows, so an apply never deadlocks with them; `seq` stays the
        // plan's order for people.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by(|&a, &b| {
            let key = |i: &ItemRow| {
                (
                    i.account_id,
                    i.adam_id.clone(),
                    i.pricing_param.clone(),
                    i.seq,
                )
            };
            key(&items[a]).cmp(&key(&items[b]))
        });
        for index in order {
            let item = &mut items[index];
            // A savepoint per item: a statement that fails (a conflict with a change made
            // since the plan) rolls back this item alone.
            let done = conn
                .transaction(async |conn| {
                    apply_item(conn, space, &plan, item, origin, settings).await
                })
                .await;
            let done = match done {
                Ok(done) => done,
                Err(DbError::DatabaseError(
                    kind @ (DatabaseErrorKind::UniqueViolation
                    | DatabaseErrorKind::CheckViolation
                    | DatabaseErrorKind::ForeignKeyViolation),
                    info,
                )) => Done::Skipped(format!(
                    "conflicts with a change made since the plan ({:?}: {})",
                    kind,
                    info.constraint_name().unwrap_or("constraint")
                )),
                Err(e) => return Err(e.into()),
            };
            match done {
                Done::Applied(assignment) => {
                    applied += 1;
                    item.outcome = Some(ItemOutcome::Applied);
                    if item.assignment_id.is_none() {
                        item.assignment_id = assignment;
                    }
                }
                Done::Skipped(reason) => {
                    skipped_n += 1;
                    item.outcome = Some(ItemOutcome::Skipped);
                    item.outcome_reason = Some(reason);
                }
            }
        }
        let outcome = serde_json::json!({"applied": applied, "skipped": skipped_n});
        store::mark_applied(conn, id, &origin.actor, &items, &outcome).await?;
        let mut act = Activity::new(origin, ActivityAction::PlanApplied.as_str())
            .space(space)
            .details(serde_json::json!({
                "plan": id,
                "action": plan.action,
                "applied": applied,
                "skipped": skipped_n,
            }));
        act.account_id = plan.account_id;
        activity::record(conn, act).await?;
        Ok(())
    })
    .await?;
    super::get(conn, space, id).await
}

/// Applies one item, checking first that what it acts on is still as planned.
async fn apply_item(
    conn: &mut AsyncPgConnection,
    space: &str,
    plan: &PlanRow,
    item: &ItemRow,
    origin: &Origin,
    settings: &crate::config::ReconcileArgs,
) -> Result<Done, DbError> {
    let details = serde_json::json!({"plan": plan.id, "reason": item.reason});
    match item.change {
        PlanChange::Adopt => adopt(conn, space, item, origin, details, false).await,
        PlanChange::RevokeAtApple => adopt(conn, space, item, origin, details, true).await,
        PlanChange::Reassociate
        | PlanChange::MarkLost
        | PlanChange::FollowEvent
        | PlanChange::ResubmitRelease
        | PlanChange::Revoke => {
            let Some(id) = item.assignment_id else {
                return skipped("the item names no assignment");
            };
            let Some(row) = assignments::find_locked(conn, space, id).await? else {
                return skipped("the assignment no longer exists");
            };
            match item.change {
                PlanChange::MarkLost => {
                    if row.state != AssignmentState::Active {
                        return skipped(format!("the assignment is now {}", row.state));
                    }
                    if listed(conn, &row, &item.target).await? {
                        return skipped("Apple lists the license again (last sync)");
                    }
                    if !repairs::mark_lost(conn, id, origin).await? {
                        return skipped("the assignment is no longer active");
                    }
                    repairs::log(
                        conn,
                        space,
                        id,
                        origin,
                        ActivityAction::AssignmentMarkedLost.as_str(),
                        &details,
                    )
                    .await?;
                    Ok(Done::Applied(Some(id)))
                }
                PlanChange::Reassociate => {
                    let expected = if item.reason == "ledger_only" {
                        row.state == AssignmentState::Active
                    } else {
                        matches!(
                            row.state,
                            AssignmentState::Pending | AssignmentState::Associating
                        )
                    };
                    if !expected {
                        return skipped(format!("the assignment is now {}", row.state));
                    }
                    if row.state == AssignmentState::Active
                        && listed(conn, &row, &item.target).await?
                    {
                        return skipped("Apple lists the license again (last sync)");
                    }
                    if row.state == AssignmentState::Associating && row.apple_event_id.is_some() {
                        return skipped("Apple is now working on its association");
                    }
                    if row.state != AssignmentState::Pending {
                        repairs::back_to_pending(conn, id).await?;
                    }
                    if repairs::revive_dead_job(conn, JobKind::Associate, id).await? {
                        // Its association was a dead letter: queued again, the repair retries it.
                    } else if repairs::job_queued(conn, JobKind::Associate, id).await? {
                        if row.state == AssignmentState::Pending {
                            return skipped(
                                "its association is already queued (the account may be \
                                 waiting for Apple: see its status)",
                            );
                        }
                    } else {
                        let job = Job::Associate(AssignmentWork { assignment_id: id });
                        jobs::enqueue(conn, row.account_id, &job, Utc::now()).await?;
                    }
                    let action = if item.reason == "ledger_only" {
                        ActivityAction::AssignmentReassociated
                    } else {
                        ActivityAction::AssignmentResubmitted
                    };
                    repairs::log(conn, space, id, origin, action.as_str(), &details).await?;
                    Ok(Done::Applied(Some(id)))
                }
                PlanChange::FollowEvent => {
                    let event = match (&row.state, &row.apple_event_id) {
                        (AssignmentState::Associating, Some(event)) => event.clone(),
                        _ => {
                            return skipped(format!(
                                "the assignment is now {} without an Apple event to follow",
                                row.state
                            ));
                        }
                    };
                    if !repairs::revive_dead_poll(conn, &event).await? {
                        if repairs::poll_queued(conn, &event).await? {
                            return skipped(format!(
                                "Apple event {event} is already being followed"
                            ));
                        }
                        let job = Job::PollEvent(PollEvent {
                            event_id: event.clone(),
                        });
                        jobs::enqueue(conn, row.account_id, &job, Utc::now()).await?;
                    }
                    let details = serde_json::json!({
                        "plan": plan.id, "reason": item.reason, "apple_event_id": event,
                    });
                    repairs::log(
                        conn,
                        space,
                        id,
                        origin,
                        ActivityAction::AssignmentResubmitted.as_str(),
                        &details,
                    )
                    .await?;
                    Ok(Done::Applied(Some(id)))
                }
                PlanChange::ResubmitRelease => {
                    if row.state != AssignmentState::Revoking {
                        return skipped(format!("the assignment is now {}", row.state));
                    }
                    if !repairs::revive_dead_job(conn, JobKind::Disassociate, id).await? {
                        if repairs::job_queued(conn, JobKind::Disassociate, id).await? {
                            return skipped("its release is already queued");
                        }
                        let job = Job::Disassociate(AssignmentWork { assignment_id: id });
                        jobs::enqueue(conn, row.account_id, &job, Utc::now()).await?;
                    }
                    repairs::log(
                        conn,
                        space,
                        id,
                        origin,
                        ActivityAction::AssignmentResubmitted.as_str(),
                        &details,
                    )
                    .await?;
                    Ok(Done::Applied(Some(id)))
                }
                // Reconcile: revoke a license this deployment assigned, if the criterion it was
                // planned for still holds (re-decided with the allocation rules).
                _ => {
                    if !row.state.is_live() {
                        return skipped(format!("the assignment is now {}", row.state));
                    }
                    let Ok(criterion) = item.reason.parse::<ReconcileCriterion>() else {
                        return skipped(format!("unknown Reconcile criterion {:?}", item.reason));
                    };
                    if crate::reconcile::revoke_candidate(
                        conn, space, id, criterion, settings, origin,
                    )
                    .await?
                    {
                        Ok(Done::Applied(Some(id)))
                    } else {
                        skipped(format!(
                            "no longer {criterion}: the subject is allowed again, or Apple does not take the license back"
                        ))
                    }
                }
            }
        }
    }
}

/// Adopt (and, with `clean_up`, revoke at once through the dispatcher) one Apple license.
async fn adopt(
    conn: &mut AsyncPgConnection,
    space: &str,
    item: &ItemRow,
    origin: &Origin,
    details: serde_json::Value,
    clean_up: bool,
) -> Result<Done, DbError> {
    if clean_up
        && !store::asset_revocable(conn, item.account_id, &item.adam_id, &item.pricing_param)
            .await?
            .unwrap_or(false)
    {
        return skipped("Apple does not take this asset's licenses back");
    }
    let license = AppleLicense {
        account: item.account_id,
        adam_id: &item.adam_id,
        pricing_param: &item.pricing_param,
        license_type: item.license_type,
        target: &item.target,
    };
    let (reason, action) = if clean_up {
        (
            "clean up: assigned at Apple, not by this deployment",
            ActivityAction::AssignmentCleanedUp,
        )
    } else {
        ("adopted from Apple", ActivityAction::AssignmentAdopted)
    };
    let by = AdoptedBy {
        origin,
        reason,
        action: action.as_str(),
        details,
    };
    let id = match adoption::adopt(conn, space, &license, &by).await? {
        Adoption::Adopted(id) => id,
        Adoption::Skipped(reason) => return Ok(Done::Skipped(reason)),
    };
    if clean_up {
        let scope = Scope {
            assignment: Some(id),
            ..Default::default()
        };
        revoke::revoke(conn, space, &scope, origin, reason).await?;
    }
    Ok(Done::Applied(Some(id)))
}

/// Whether Apple lists the license of `row` (the mirror, as the last sync read it).
async fn listed(
    conn: &mut AsyncPgConnection,
    row: &crate::domain::records::AssignmentRow,
    target: &str,
) -> Result<bool, DbError> {
    repairs::listed_at_apple(
        conn,
        row.account_id,
        &row.adam_id,
        &row.pricing_param,
        row.license_type,
        target,
    )
    .await
}
