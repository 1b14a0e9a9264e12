//! Applying the results of an Apple event (rule T10).
//!
//! Results arrive two ways: by polling `GET /status` (complete: every target not listed in
//! `failures` succeeded) and by Apple's ASSET_MANAGEMENT notifications (partial: only the
//! listed targets). Both feed [`apply`], which moves each assignment to its final state and is
//! idempotent (it only moves assignments out of `associating` / `revoking`).
//!
//! Per target of an association: success → `active`; 9709 (Apple had fewer licenses than the
//! ledger thought) → `failed`, then the asset's counts are refreshed from Apple and the subject
//! is re-allocated from the next eligible account; any other error → `failed` with Apple's
//! error. A subject whose revocation arrived while it was associating is `revoked` if the
//! association failed (Apple holds nothing). Per target of a disassociation: success →
//! `revoked`; failure → `failed`, and the license counts as assigned elsewhere, since Apple
//! still holds it. One failing subject never holds up the others.

use std::collections::HashMap;

use diesel::QueryResult;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use uuid::Uuid;

use super::SettleError;
use super::deletion::finish_account_deletion;
use crate::apple::client::AssetQuery;
use crate::apple::codes::NOT_ENOUGH_LICENSES;
use crate::apple::stoken::SToken;
use crate::apple::types::{ErrorResponse, PricingParam};
use crate::domain::allocation::{AllocationRequest, AssetRef, SubjectInput};
use crate::domain::model::AssignmentState::{Active, Associating, Failed, Revoked, Revoking};
use crate::domain::model::{LicenseType, LicenseWish, SubjectKind};
use crate::domain::origin::Origin;
use crate::engine::allocate;
use crate::ledger::activity::{self, Activity};
use crate::ledger::apple_events::{self, EventKind, EventRow};
use crate::ledger::{asset_counts, jobs, settlements};
use crate::state::AppState;

/// Results of some or all targets of an event.
#[derive(Debug)]
pub enum Results {
    /// The event finished: targets not in the map succeeded.
    Complete(HashMap<String, (i32, String)>),
    /// A notification: exactly these targets, each with its outcome.
    Partial(HashMap<String, Option<(i32, String)>>),
}

/// Groups Apple's `failures` by failing target (serial number or client user id).
pub fn failures_by_target(failures: &[ErrorResponse]) -> HashMap<String, (i32, String)> {
    let mut out = HashMap::new();
    for f in failures {
        let number = f.error_number.unwrap_or(0);
        let message = f.error_message.clone().unwrap_or_default();
        for t in f
            .error_info
            .serial_numbers
            .iter()
            .chain(f.error_info.client_user_ids.iter())
        {
            out.insert(t.clone(), (number, message.clone()));
        }
    }
    out
}

/// A 9709 failure to re-allocate after the transaction.
#[derive(Debug)]
struct Realloc {
    id: Uuid,
    space: String,
    requested_by: String,
    message: String,
}

/// What applying results changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub activated: usize,
    pub revoked: usize,
    pub failed: usize,
    /// The event has no assignment left waiting for Apple.
    pub finished: bool,
}

/// Moves the assignments of `account`'s event `event_id` according to `results`. `token` (the
/// account's) is needed to refresh counts when Apple reports 9709.
pub async fn apply(
    state: &AppState,
    token: &SToken,
    account: Uuid,
    event_id: &str,
    results: &Results,
) -> Result<Applied, SettleError> {
    let mut conn = state.pool.get().await?;
    let Some(event) = apple_events::find(&mut conn, account, event_id).await? else {
        // Not ours (or its account is gone): nothing to settle.
        return Ok(Applied {
            finished: true,
            ..Applied::default()
        });
    };
    let (mut applied, reallocs) = conn
        .transaction(async |conn| transition(conn, &event, results).await)
        .await?;
    drop(conn);
    // Committed: the assignments' events can be sequenced now (the notification receiver
    // settles too, not only the dispatcher).
    crate::events::wake::activity_written();
    if !reallocs.is_empty() {
        applied.failed += reallocs.len();
        reallocate(state, token, &event, reallocs).await?;
        let mut conn = state.pool.get().await?;
        let remaining = settlements::count_waiting(&mut conn, &event.event_id).await?;
        if remaining == 0 {
            close_event(&mut conn, &event.event_id).await?;
            applied.finished = true;
        }
    }
    if applied.finished {
        finish_account_deletion(&state.pool, event.account_id).await?;
    }
    Ok(applied)
}

async fn transition(
    conn: &mut AsyncPgConnection,
    event: &EventRow,
    results: &Results,
) -> Result<(Applied, Vec<Realloc>), SettleError> {
    let waiting = settlements::waiting_locked(conn, &event.event_id).await?;
    let associate = event.kind == EventKind::Associate;
    let mut to_active = Vec::new();
    let mut to_revoked = Vec::new();
    let mut to_failed: Vec<(Uuid, serde_json::Value)> = Vec::new();
    let mut still_at_apple = 0i32;
    let mut reallocs = Vec::new();
    for w in &waiting {
        let outcome: Option<Option<(i32, String)>> = match results {
            Results::Complete(failures) => Some(failures.get(&w.target).cloned()),
            Results::Partial(listed) => listed.get(&w.target).cloned(),
        };
        let Some(outcome) = outcome else { continue };
        match (associate, w.state, outcome) {
            (true, Associating, None) => to_active.push(w.id),
            // Left `associating` until re-allocated (see `reallocate`), so its final state
            // arrives complete; a crash before that repeats the re-allocation on the next poll.
            (true, Associating, Some((NOT_ENOUGH_LICENSES, message))) => reallocs.push(Realloc {
                id: w.id,
                space: w.space_id.clone(),
                requested_by: w.requested_by.clone(),
                message,
            }),
            (true, Associating, Some((number, message))) => {
                to_failed.push((
                    w.id,
                    serde_json::json!({ "number": number, "message": message }),
                ));
            }
            // Revoked while associating, and the association failed: Apple holds nothing.
            (true, Revoking, Some(_)) => to_revoked.push(w.id),
            (false, Revoking, None) => to_revoked.push(w.id),
            (false, Revoking, Some((number, message))) => {
                still_at_apple += 1;
                to_failed.push((
                    w.id,
                    serde_json::json!({
                        "number": number,
                        "message": message,
                        "action": "Apple refused to release the license; it stays assigned at Apple and counts as assigned elsewhere",
                    }),
                ));
            }
            _ => {}
        }
    }
    let failed_live: Vec<Uuid> = if associate {
        to_failed.iter().map(|(id, _)| *id).collect()
    } else {
        Vec::new()
    };
    settlements::set_state(conn, &to_active, Active, None).await?;
    settlements::set_state(conn, &to_revoked, Revoked, None).await?;
    crate::ledger::apple_mirror::forget_released(conn, &to_revoked).await?;
    for (id, error) in &to_failed {
        settlements::set_state(conn, &[*id], Failed, Some(error)).await?;
    }
    if associate && !to_revoked.is_empty() {
        // Their disassociation has nothing left to do.
        crate::ledger::jobs::delete_releases(conn, &to_revoked).await?;
    }
    if let (Some(adam), Some(pricing)) = (&event.adam_id, &event.pricing_param) {
        // Failed associations give their license back to the pool; failed releases stay
        // consumed at Apple.
        asset_counts::settle(
            conn,
            event.account_id,
            adam,
            pricing,
            failed_live.len() as i32,
            still_at_apple,
        )
        .await?;
    }
    let log = |ids: Vec<Uuid>, action: &'static str| (ids, action);
    for (ids, action) in [
        log(to_active.clone(), "assignment.activated"),
        log(to_revoked.clone(), "assignment.revoked"),
        log(
            to_failed.iter().map(|(i, _)| *i).collect(),
            "assignment.failed",
        ),
    ] {
        if ids.is_empty() {
            continue;
        }
        settlements::log(conn, &ids, action, &event.event_id).await?;
    }
    let finals: Vec<Uuid> = to_active
        .iter()
        .chain(to_revoked.iter())
        .chain(to_failed.iter().map(|(i, _)| i))
        .copied()
        .collect();
    crate::ledger::wakeups::notify(conn, &finals).await?;

    let waiting_state = if associate { Associating } else { Revoking };
    let remaining = settlements::count_in_state(conn, &event.event_id, waiting_state).await?;
    let finished = remaining == 0;
    if let Results::Complete(f) = results {
        let failures = serde_json::to_value(f).unwrap_or_default();
        apple_events::record_failures(conn, &event.event_id, &failures).await?;
    }
    if finished {
        close_event(conn, &event.event_id).await?;
    }
    Ok((
        Applied {
            activated: to_active.len(),
            revoked: to_revoked.len(),
            failed: to_failed.len(),
            finished,
        },
        reallocs,
    ))
}

/// Marks an event finished (complete, or failed when any of its assignments failed) and drops
/// its poll job.
async fn close_event(conn: &mut AsyncPgConnection, event_id: &str) -> QueryResult<()> {
    apple_events::close(conn, event_id).await?;
    jobs::delete_polls(conn, event_id).await.map(|_| ())
}

/// Refreshes the asset's counts from Apple, then re-allocates each 9709 failure from the next
/// eligible account (the failed account excluded), recording both steps.
async fn reallocate(
    state: &AppState,
    token: &SToken,
    event: &EventRow,
    reallocs: Vec<Realloc>,
) -> Result<(), SettleError> {
    let (Some(adam), Some(pricing)) = (event.adam_id.clone(), event.pricing_param.clone()) else {
        return Ok(());
    };
    refresh_counts(state, token, event, &adam, &pricing).await?;
    for r in reallocs {
        let mut conn = state.pool.get().await?;
        let Some(old) = crate::ledger::assignments::by_id(&mut conn, r.id).await? else {
            continue;
        };
        if old.state != crate::domain::model::AssignmentState::Associating {
            continue;
        }
        let Some(subject) = crate::ledger::subjects::by_ids(&mut conn, &[old.subject_id])
            .await?
            .pop()
        else {
            continue;
        };
        let input = match subject.kind {
            SubjectKind::Device => SubjectInput::Device {
                serial: subject.external_id.clone(),
                user: subject.user_external_id.clone(),
                shared_ipad: None,
                groups: None,
            },
            SubjectKind::User => SubjectInput::User {
                id: subject.external_id.clone(),
                groups: None,
            },
        };
        let request = AllocationRequest {
            space: r.space.clone(),
            asset: AssetRef {
                adam_id: adam.clone(),
                pricing_param: pricing.clone(),
            },
            subject: input,
            wish: match old.license_type {
                LicenseType::Device => LicenseWish::Device,
                LicenseType::User => LicenseWish::User,
            },
            reason: format!("re-allocation of {} after Apple error 9709", old.id),
            // Still the original requester's license; no request of theirs is running now.
            origin: Origin::new(r.requested_by.clone(), None),
            dry_run: false,
            exclude_accounts: vec![event.account_id],
            replaces: Some(old.id),
            wait_until: None,
            policy_wait_until: None,
            serves: None,
            serves_holder: None,
        };
        // One transaction: the failed assignment gives its license back, the subject gets one
        // from another account, and the old assignment records where it went.
        let outcome = conn
            .transaction(async |conn| {
                let mut error =
                    serde_json::json!({ "number": NOT_ENOUGH_LICENSES, "message": r.message });
                // Only an assignment still waiting for this association is re-allocated, once:
                // a poll and a notification may report the same 9709, and a revocation may
                // have taken the assignment (and its license) meanwhile.
                if !settlements::take_for_reallocation(conn, old.id, &error).await? {
                    return Ok::<_, SettleError>(None);
                }
                let new_id = match allocate::allocate(conn, &request).await {
                    Ok(o) => {
                        let id = o.assignment.as_ref().map(|a| a.id);
                        error["reallocated_to"] = serde_json::json!(id);
                        error["reallocated_account_id"] = serde_json::json!(o.account_id);
                        id
                    }
                    Err(allocate::AllocationError::Db(e)) => return Err(SettleError::Db(e)),
                    Err(allocate::AllocationError::Pool(e)) => return Err(SettleError::Pool(e)),
                    Err(e @ allocate::AllocationError::Overdrawn) => {
                        return Err(SettleError::Reallocation(e));
                    }
                    Err(refusal) => {
                        error["reallocation"] = serde_json::json!(refusal.to_string());
                        None
                    }
                };
                // After the allocation, which locked the asset rows in their usual order (the
                // failed account's row among them): taking this row first could deadlock
                // with an allocation batch.
                asset_counts::settle(conn, event.account_id, &adam, &pricing, 1, 0).await?;
                settlements::set_error(conn, old.id, &error).await?;
                let action = if new_id.is_some() {
                    "assignment.reallocated"
                } else {
                    "assignment.reallocation_failed"
                };
                activity::record(
                    conn,
                    Activity {
                        assignment_id: Some(old.id),
                        adam_id: Some(adam.clone()),
                        pricing_param: Some(pricing.clone()),
                        apple_event_id: Some(event.event_id.clone()),
                        ..Activity::new(&Origin::system(), action)
                            .space(&r.space)
                            .account(event.account_id)
                            .details(error.clone())
                    },
                )
                .await?;
                let mut woken = vec![old.id];
                woken.extend(new_id);
                crate::ledger::wakeups::notify(conn, &woken).await?;
                Ok(Some(new_id))
            })
            .await?;
        if let Some(new_id) = outcome {
            tracing::info!(old = %old.id, new = ?new_id, "re-allocated after Apple error 9709");
        }
    }
    Ok(())
}

/// Re-reads one asset's counts from Apple after `event` reported 9709. Licenses Apple reports
/// as assigned beyond what this ledger holds at Apple count as assigned elsewhere. The ledger
/// holds at Apple its active and revoking assignments and those of other events in flight
/// (Apple may have applied them already; counting them as foreign as well would refuse
/// licenses that exist), but not this event's, which Apple just refused.
async fn refresh_counts(
    state: &AppState,
    token: &SToken,
    event: &EventRow,
    adam_id: &str,
    pricing_param: &str,
) -> Result<(), SettleError> {
    let account = event.account_id;
    let listing = state
        .apple
        .get_assets(
            token,
            &AssetQuery {
                adam_id: Some(adam_id.to_owned()),
                pricing_param: Some(PricingParam::from(pricing_param)),
                ..Default::default()
            },
        )
        .await?;
    crate::accounts::ownership::notice(
        &state.pool,
        &state.identity,
        account,
        &listing.meta,
        "GET /assets",
    )
    .await?;
    let Some(asset) = listing
        .items
        .iter()
        .find(|a| a.adam_id == adam_id && a.pricing_param.as_str() == pricing_param)
    else {
        return Ok(());
    };
    let total = asset.total_count.unwrap_or(0).clamp(0, i32::MAX as i64) as i32;
    let assigned = asset.assigned_count.unwrap_or(0).clamp(0, i32::MAX as i64) as i32;
    let mut conn = state.pool.get().await?;
    asset_counts::refresh(
        &mut conn,
        account,
        adam_id,
        pricing_param,
        total,
        assigned,
        &event.event_id,
    )
    .await?;
    Ok(())
}
