//! Following Apple's asynchronous events to the end (rule T10).
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

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::DispatchError;
use crate::apple::client::AssetQuery;
use crate::apple::codes::NOT_ENOUGH_LICENSES;
use crate::apple::stoken::SToken;
use crate::apple::types::{ErrorResponse, PricingParam};
use crate::db::schema::apple_events;
use crate::engine::allocate::{self, AllocationRequest, AssetRef, SubjectInput};
use crate::engine::model::{LicenseType, LicenseWish, SubjectKind};
use crate::ledger::activity::{self, Activity};
use crate::ledger::origin::Origin;
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

#[derive(Clone, Debug, Queryable)]
pub struct EventRow {
    pub event_id: String,
    pub account_id: Uuid,
    pub kind: String,
    pub adam_id: Option<String>,
    pub pricing_param: Option<String>,
}

/// The event `event_id` of `account` (an event id another account submitted is not found: a
/// notification authenticated for one account never settles another's assignments).
pub async fn find_event(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    event_id: &str,
) -> QueryResult<Option<EventRow>> {
    apple_events::table
        .filter(apple_events::event_id.eq(event_id))
        .filter(apple_events::account_id.eq(account))
        .select((
            apple_events::event_id,
            apple_events::account_id,
            apple_events::kind,
            apple_events::adam_id,
            apple_events::pricing_param,
        ))
        .first(conn)
        .await
        .optional()
}

#[derive(Debug, QueryableByName)]
struct Waiting {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Text)]
    space_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    state: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    target: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    requested_by: String,
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
) -> Result<Applied, DispatchError> {
    let mut conn = state.pool.get().await?;
    let Some(event) = find_event(&mut conn, account, event_id).await? else {
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
    if !reallocs.is_empty() {
        applied.failed += reallocs.len();
        reallocate(state, token, &event, reallocs).await?;
        let mut conn = state.pool.get().await?;
        let remaining: i64 = diesel::sql_query(
            "SELECT count(*) AS n FROM assignments
              WHERE apple_event_id = $1 AND state IN ('associating', 'revoking')",
        )
        .bind::<diesel::sql_types::Text, _>(&event.event_id)
        .get_result::<super::Count>(&mut conn)
        .await?
        .n;
        if remaining == 0 {
            close_event(&mut conn, &event.event_id).await?;
            applied.finished = true;
        }
    }
    if applied.finished {
        finish_account_deletion(state, event.account_id).await?;
    }
    Ok(applied)
}

async fn transition(
    conn: &mut AsyncPgConnection,
    event: &EventRow,
    results: &Results,
) -> Result<(Applied, Vec<Realloc>), DispatchError> {
    let waiting: Vec<Waiting> = diesel::sql_query(
        "SELECT a.id, a.space_id, a.state, s.external_id AS target, a.requested_by
           FROM assignments a JOIN subjects s ON s.id = a.subject_id
          WHERE a.apple_event_id = $1 AND a.state IN ('associating', 'revoking')
          ORDER BY a.id
          FOR UPDATE OF a",
    )
    .bind::<diesel::sql_types::Text, _>(&event.event_id)
    .load(conn)
    .await?;
    let associate = event.kind == "associate";
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
        match (associate, w.state.as_str(), outcome) {
            (true, "associating", None) => to_active.push(w.id),
            // Left `associating` until re-allocated (see `reallocate`), so its final state
            // arrives complete; a crash before that repeats the re-allocation on the next poll.
            (true, "associating", Some((NOT_ENOUGH_LICENSES, message))) => reallocs.push(Realloc {
                id: w.id,
                space: w.space_id.clone(),
                requested_by: w.requested_by.clone(),
                message,
            }),
            (true, "associating", Some((number, message))) => {
                to_failed.push((
                    w.id,
                    serde_json::json!({ "number": number, "message": message }),
                ));
            }
            // Revoked while associating, and the association failed: Apple holds nothing.
            (true, "revoking", Some(_)) => to_revoked.push(w.id),
            (false, "revoking", None) => to_revoked.push(w.id),
            (false, "revoking", Some((number, message))) => {
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
    set_state(conn, &to_active, "active", None).await?;
    set_state(conn, &to_revoked, "revoked", None).await?;
    for (id, error) in &to_failed {
        set_state(conn, &[*id], "failed", Some(error)).await?;
    }
    if associate && !to_revoked.is_empty() {
        // Their disassociation has nothing left to do.
        crate::ledger::jobs::delete_releases(conn, &to_revoked).await?;
    }
    if let (Some(adam), Some(pricing)) = (&event.adam_id, &event.pricing_param) {
        // Failed associations give their license back to the pool; failed releases stay
        // consumed at Apple.
        diesel::sql_query(
            "UPDATE assets SET held = held - $4, foreign_assigned = foreign_assigned + $5, updated_at = now()
              WHERE account_id = $1 AND adam_id = $2 AND pricing_param = $3 AND ($4 > 0 OR $5 > 0)",
        )
        .bind::<diesel::sql_types::Uuid, _>(event.account_id)
        .bind::<diesel::sql_types::Text, _>(adam)
        .bind::<diesel::sql_types::Text, _>(pricing)
        .bind::<diesel::sql_types::Integer, _>(failed_live.len() as i32)
        .bind::<diesel::sql_types::Integer, _>(still_at_apple)
        .execute(conn)
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
        diesel::sql_query(
            "INSERT INTO activity_log (space_id, actor, action, account_id, assignment_id, adam_id,
                                       pricing_param, apple_event_id, details)
             SELECT a.space_id, 'system', $2, a.account_id, a.id, a.adam_id, a.pricing_param, $3,
                    jsonb_build_object('state', a.state, 'error', a.error)
               FROM assignments a WHERE a.id = ANY($1)",
        )
        .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(&ids)
        .bind::<diesel::sql_types::Text, _>(action)
        .bind::<diesel::sql_types::Text, _>(&event.event_id)
        .execute(conn)
        .await?;
    }
    let finals: Vec<Uuid> = to_active
        .iter()
        .chain(to_revoked.iter())
        .chain(to_failed.iter().map(|(i, _)| i))
        .copied()
        .collect();
    crate::waiters::notify(conn, &finals).await?;

    let remaining: i64 = diesel::sql_query(
        "SELECT count(*) AS n FROM assignments WHERE apple_event_id = $1 AND state = $2",
    )
    .bind::<diesel::sql_types::Text, _>(&event.event_id)
    .bind::<diesel::sql_types::Text, _>(if associate { "associating" } else { "revoking" })
    .get_result::<super::Count>(conn)
    .await?
    .n;
    let finished = remaining == 0;
    if let Results::Complete(f) = results {
        diesel::update(apple_events::table.filter(apple_events::event_id.eq(&event.event_id)))
            .set(apple_events::failures.eq(Some(serde_json::to_value(f).unwrap_or_default())))
            .execute(conn)
            .await?;
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
    diesel::sql_query(
        "UPDATE apple_events SET finished_at = now(),
                status = CASE WHEN EXISTS (SELECT 1 FROM assignments
                                            WHERE apple_event_id = $1 AND state = 'failed')
                              THEN 'failed' ELSE 'complete' END
          WHERE event_id = $1 AND status = 'pending'",
    )
    .bind::<diesel::sql_types::Text, _>(event_id)
    .execute(conn)
    .await?;
    crate::ledger::jobs::delete_polls(conn, event_id)
        .await
        .map(|_| ())
}

async fn set_state(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    state: &str,
    error: Option<&serde_json::Value>,
) -> QueryResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    diesel::sql_query(
        "UPDATE assignments SET state = $2, error = COALESCE($3, error), version = version + 1,
                                updated_at = now()
          WHERE id = ANY($1)",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .bind::<diesel::sql_types::Text, _>(state)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Jsonb>, _>(error)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Removes an account whose deletion was requested once Apple holds nothing of it any more.
pub async fn finish_account_deletion(state: &AppState, account: Uuid) -> Result<(), DispatchError> {
    use crate::db::schema::accounts;
    let mut conn = state.pool.get().await?;
    let Some((space, requested)): Option<(String, Option<chrono::DateTime<chrono::Utc>>)> =
        accounts::table
            .filter(accounts::id.eq(account))
            .select((accounts::space_id, accounts::delete_requested_at))
            .first(&mut conn)
            .await
            .optional()?
    else {
        return Ok(());
    };
    if requested.is_none() {
        return Ok(());
    }
    conn.transaction(async |conn| {
        if crate::ledger::accounts::lock_space(conn, &space)
            .await?
            .is_none()
        {
            return Ok(());
        }
        if crate::ledger::assignments::count_at_apple(conn, account).await? > 0 {
            return Ok(());
        }
        crate::ledger::accounts::remove(conn, &space, account).await?;
        activity::record(
            conn,
            Activity::new(&Origin::system(), "account.deleted")
                .space(&space)
                .account(account),
        )
        .await?;
        tracing::info!(account = %account, "account removed after its licenses were released");
        Ok::<(), DispatchError>(())
    })
    .await
}

/// Refreshes the asset's counts from Apple, then re-allocates each 9709 failure from the next
/// eligible account (the failed account excluded), recording both steps.
async fn reallocate(
    state: &AppState,
    token: &SToken,
    event: &EventRow,
    reallocs: Vec<Realloc>,
) -> Result<(), DispatchError> {
    let (Some(adam), Some(pricing)) = (event.adam_id.clone(), event.pricing_param.clone()) else {
        return Ok(());
    };
    refresh_counts(state, token, event, &adam, &pricing).await?;
    for r in reallocs {
        let mut conn = state.pool.get().await?;
        let Some(old) = crate::ledger::assignments::by_id(&mut conn, r.id).await? else {
            continue;
        };
        if old.state != crate::engine::model::AssignmentState::Associating {
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
                let claimed: Vec<super::IdRow> = diesel::sql_query(
                    "UPDATE assignments SET state = 'failed', error = $2, version = version + 1,
                            updated_at = now()
                      WHERE id = $1 AND state = 'associating' RETURNING id",
                )
                .bind::<diesel::sql_types::Uuid, _>(old.id)
                .bind::<diesel::sql_types::Jsonb, _>(&error)
                .load(conn)
                .await?;
                if claimed.is_empty() {
                    return Ok::<_, DispatchError>(None);
                }
                let new_id = match allocate::allocate(conn, &request).await {
                    Ok(o) => {
                        let id = o.assignment.as_ref().map(|a| a.id);
                        error["reallocated_to"] = serde_json::json!(id);
                        error["reallocated_account_id"] = serde_json::json!(o.account_id);
                        id
                    }
                    Err(allocate::AllocationError::Db(e)) => return Err(DispatchError::Db(e)),
                    Err(allocate::AllocationError::Pool(e)) => return Err(DispatchError::Pool(e)),
                    Err(e @ allocate::AllocationError::Overdrawn) => {
                        return Err(DispatchError::Other(e.to_string()));
                    }
                    Err(refusal) => {
                        error["reallocation"] = serde_json::json!(refusal.to_string());
                        None
                    }
                };
                // After the allocation, which locked the asset rows in their usual order (the
                // failed account's row among them): taking this row first could deadlock
                // with an allocation batch.
                diesel::sql_query(
                    "UPDATE assets SET held = held - 1, updated_at = now()
                      WHERE account_id = $1 AND adam_id = $2 AND pricing_param = $3",
                )
                .bind::<diesel::sql_types::Uuid, _>(event.account_id)
                .bind::<diesel::sql_types::Text, _>(&adam)
                .bind::<diesel::sql_types::Text, _>(&pricing)
                .execute(conn)
                .await?;
                diesel::sql_query("UPDATE assignments SET error = $2 WHERE id = $1")
                    .bind::<diesel::sql_types::Uuid, _>(old.id)
                    .bind::<diesel::sql_types::Jsonb, _>(&error)
                    .execute(conn)
                    .await?;
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
                crate::waiters::notify(conn, &woken).await?;
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
) -> Result<(), DispatchError> {
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
    diesel::sql_query(
        "UPDATE assets s SET apple_total = $4, apple_assigned = $5,
                foreign_assigned = GREATEST(0, $5 - (SELECT count(*) FROM assignments a
                     WHERE a.account_id = s.account_id AND a.adam_id = s.adam_id
                       AND a.pricing_param = s.pricing_param
                       AND (a.state IN ('active', 'revoking')
                            OR (a.state = 'associating' AND a.apple_event_id <> $6)))),
                synced_at = now(), updated_at = now()
          WHERE account_id = $1 AND adam_id = $2 AND pricing_param = $3",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .bind::<diesel::sql_types::Text, _>(adam_id)
    .bind::<diesel::sql_types::Text, _>(pricing_param)
    .bind::<diesel::sql_types::Integer, _>(total)
    .bind::<diesel::sql_types::Integer, _>(assigned)
    .bind::<diesel::sql_types::Text, _>(&event.event_id)
    .execute(&mut conn)
    .await?;
    Ok(())
}
