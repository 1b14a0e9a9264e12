//! Lifecycle events from other MDM components (rules V2, V3, V5; issue 14): what devices, users
//! and apps went through, reported by the MDM, turned into revocations (and, for a space move,
//! allocations) without anyone asking for them one by one.
//!
//! # Accepting ([`accept`])
//! A batch (at most [`MAX_BATCH`]) is stored in one transaction, each event keyed by
//! `(space, source, id)`: an event already stored (within the 30-day retention) is not stored
//! again and is answered with the original's state and result (`duplicate`). Each new event
//! takes its space's effect for its type *at acceptance* (`lifecycle-settings`; defaults in
//! [`EventType::default_effect`]) and is `queued`. Nothing is applied in the request: the
//! answer is 202.
//!
//! # Applying ([`apply_batch`], run by the dispatcher's lifecycle worker)
//! A worker claims up to [`APPLY_BATCH`] due events with `FOR UPDATE SKIP LOCKED` inside the
//! transaction that applies them: their effects (subject facts, revocations, allocations,
//! activity rows) and their new states commit together, so an event is applied once even with
//! many replicas, and one whose process is killed mid-way rolls back and is claimed again
//! (at-least-once delivery, effects once). One transaction for many events is what makes a
//! burst fast (issue 14: 10,000 retirements; docs/benchmarks.md): per event, a commit and a
//! dozen round trips were the cost.
//!
//! Within the batch, events that revoke every license of their subject now (or only record
//! the event: `device.retired|wiped|deleted|checked_out`, `user.disabled`; not `user.deleted`,
//! which also queues the user's retirement at Apple) about a
//! subject no other event of the batch is about are applied *together*, set-based: their
//! marks locked at once in key order, the assignment and asset rows of all their subjects
//! locked at once in the ledger's order, one statement starting every revocation (each with its
//! own event's reason and origin), one finishing the events, one logging them. Every other
//! event (other types, `revoke_after`, grace periods ending, several events about one subject,
//! which V5 orders) is applied on its own, in claim order, in a savepoint. A database failure
//! rolls the effects back to the savepoint: a failed set is applied again event by event, and
//! a failed event counts an attempt and is retried with backoff; it is `failed` after
//! [`MAX_ATTEMPTS`].
//!
//! Out of order (V5): each event states a fact of one *aspect* of its subject
//! ([`EventType::aspect`]: enrolment, groups, user, last sighting, status, one app, the space).
//! The newest applied `occurred_at` per subject and aspect is kept (`lifecycle_marks`, locked
//! while an event is applied, so two events about the same subject wait for each other); an
//! event strictly older is `stale` and changes nothing. The marks outlive the 30-day event
//! retention and keep the key (source, id) of the event that set them, so a very late replay
//! is still stale — an older event, and also the very event that set the mark (same key, same
//! time), which would otherwise be stored as new and applied again. A mark no event set yet
//! has no time (NULL); `occurred_at` before 2000-01-01 is refused at acceptance (422).
//!
//! Lock order (no deadlock between the worker and `PUT …/devices|users`): the event, then the
//! marks, then the subject's row, then the assignments' and assets' rows. A batch takes its
//! events, then the set's marks, then the set's assignment and asset rows; events applied on
//! their own after the set take their marks after those rows. Two replicas' batches can then
//! wait for each other only over events about the same subject in both; PostgreSQL's deadlock
//! detection fails one statement, whose event's savepoint rolls back and is retried. An event revoking
//! several sets (one license at a time, each with its criterion; a device and then its user)
//! locks all their assignment and asset rows first, at once in the ledger's order
//! ([`revocations::lock_upfront`]), rather than set after set.
//!
//! # Effects (per type; the revocation's reason names the event, who posted it is its actor)
//! - `device.retired|wiped|deleted` (and `device.checked_out` when configured to revoke): every
//!   license the device holds in the space ([`crate::engine::revoke`], so Apple's releases go
//!   through the dispatcher).
//! - `user.deleted` (and `user.disabled` when configured): every license the user holds.
//!   `user.deleted` also retires the user at Apple (`POST /users/retire`) at every account of
//!   the space where Apple has it registered (`apple_users`; the accounts are in the result's
//!   `retiring_at`): one `retire_user` job per account, sent by the dispatcher only once the
//!   user's releases at that account are settled, many users per request
//!   (the dispatcher's `retire` module says why in that order). `user.disabled` never retires: a
//!   disabled user may come back, and a retired one would have to accept Apple's invitation
//!   again; its licenses are released (when configured to revoke), which is what frees them.
//!   A retired user that gets a user license again is registered again (`users/create`).
//! - `device.groups_changed`, `user.groups_changed` (the full set), `device.user_changed`, and
//!   `PUT …/devices/{serial}` / `…/users/{id}`: the facts are stored, then the subject's licenses
//!   (a device's: its own and its user's user licenses, which its groups help grant) are
//!   re-decided with allocation's own rules ([`crate::reconcile::no_longer_granted`]: disallowed,
//!   out of the first-come-first-served groups, off a fallback account's distribution list) and
//!   revoked when no rule grants them any more; a license still granted another way (a
//!   reservation, another group, the first account serving everyone) stays.
//! - `device.seen`: the last sighting moves forward (never back); nothing else.
//! - `app.removed_from_device`: ignored by default (Intune's and Fleet's behaviour);
//!   configured to revoke, the device's license of that app.
//! - `app.deleted_from_catalog`: every license of that app in the space (both pricings unless
//!   `data.pricing_param`).
//! - `device.moved` (V3): the device's licenses in this space (and its user's, with
//!   `data.with_user`) are revoked; the same assets are allocated in `data.to_space` through
//!   the allocation use case, under that space's policies and accounts; where that is not
//!   possible only the revocation happens. The result lists each asset.
//!
//! `revoke_after` records the facts at once and revokes when `occurred_at + grace` has passed
//! (the event is `scheduled` meanwhile); group changes are re-decided then, so a subject that
//! regained its group during the grace period keeps its license. A user change keeps the
//! device's former user in the result (`former_user`), and that user's licenses are
//! re-decided then too. `ignore` records the facts and
//! the event and revokes nothing.
//!
//! Every applied or stale event writes a `lifecycle.applied` activity row with its result.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::domain::allocation::{AllocationRequest, AssetRef, SubjectInput};
use crate::domain::lifecycle::{
    CheckedEvent, Effect, EventResult, EventState, EventSubject, EventType, MAX_ATTEMPTS,
    MoveOutcome, MovedAsset, RevokedLicense, is_stale,
};
pub use crate::domain::lifecycle::{MAX_BATCH, RETENTION_DAYS};
use crate::domain::model::{LicenseType, LicenseWish, SubjectKind};
use crate::domain::origin::Origin;
use crate::domain::records::SubjectRow;
use crate::domain::revocation::Scope;
use crate::engine::allocate::{self, AllocationError};
use crate::ledger::activity::{self, Activity, ActivityAction};
use crate::ledger::lifecycle::{self as store, EventRow, NewEvent, SettingRow};
use crate::ledger::subjects::{self, Facts};
use crate::ledger::{apple_users, assignments, revocations, spaces};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

/// One event of an accepted batch: its stored row, and whether it was already stored.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub row: EventRow,
    pub duplicate: bool,
}

/// The effect and grace period of each type in `space`.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub rows: Vec<SettingRow>,
}

impl Settings {
    /// The effect of `event_type` (the space's choice or the default) and its grace period.
    pub fn effect(&self, event_type: EventType) -> (Effect, Option<i32>) {
        self.rows
            .iter()
            .find(|r| r.event_type == event_type.as_str())
            .and_then(|r| Some((r.effect.parse::<Effect>().ok()?, r.grace_seconds)))
            .unwrap_or((event_type.default_effect(), None))
    }
}

/// The space's settings (404 for an unknown space).
pub async fn settings(
    conn: &mut AsyncPgConnection,
    space: &str,
) -> Result<Settings, LifecycleError> {
    if spaces::find(conn, space).await?.is_none() {
        return Err(LifecycleError::NotFound(format!("space {space}")));
    }
    Ok(Settings {
        rows: store::settings(conn, space).await?,
    })
}

/// Replaces the space's settings (types not named go back to their default). Applies to events
/// accepted from now on.
pub async fn put_settings(
    conn: &mut AsyncPgConnection,
    space: &str,
    rows: Vec<SettingRow>,
    origin: &Origin,
) -> Result<Settings, LifecycleError> {
    conn.transaction(async |conn| {
        if spaces::find(conn, space).await?.is_none() {
            return Err(LifecycleError::NotFound(format!("space {space}")));
        }
        store::replace_settings(conn, space, &rows).await?;
        let details: Vec<Value> = rows
            .iter()
            .map(|r| json!({"type": r.event_type, "effect": r.effect, "grace_seconds": r.grace_seconds}))
            .collect();
        activity::record(
            conn,
            Activity::new(origin, ActivityAction::SpaceUpdated.as_str())
                .space(space)
                .details(json!({"lifecycle_settings": details})),
        )
        .await?;
        Ok(Settings { rows })
    })
    .await
}

/// Stores a batch of checked events of `space` (see the module documentation) and answers each
/// in the batch's order.
pub async fn accept(
    conn: &mut AsyncPgConnection,
    space: &str,
    events: &[CheckedEvent],
    origin: &Origin,
) -> Result<Vec<Accepted>, LifecycleError> {
    conn.transaction(async |conn| {
        if spaces::find(conn, space).await?.is_none() {
            return Err(LifecycleError::NotFound(format!("space {space}")));
        }
        let settings = Settings {
            rows: store::settings(conn, space).await?,
        };
        let now = Utc::now();
        let rows: Vec<NewEvent> = events
            .iter()
            .map(|e| {
                let (effect, grace) = settings.effect(e.event_type);
                let effect_text = if e.event_type.configurable() {
                    effect.as_str()
                } else {
                    "record"
                };
                NewEvent {
                    id: Uuid::now_v7(),
                    space_id: space.to_owned(),
                    source: e.source.clone(),
                    event_id: e.id.clone(),
                    type_: e.event_type.as_str().to_owned(),
                    subject_kind: e.subject.as_str().to_owned(),
                    subject_id: e.subject_id.clone(),
                    occurred_at: e.occurred_at,
                    data: e.data.clone(),
                    effect: effect_text.to_owned(),
                    state: EventState::Queued.as_str().to_owned(),
                    due_at: now,
                    revoke_at: (effect == Effect::RevokeAfter && e.event_type.configurable()).then(
                        || e.occurred_at + chrono::Duration::seconds(grace.unwrap_or(0) as i64),
                    ),
                    requested_by: origin.actor.clone(),
                    request_id: origin.request_id.clone(),
                }
            })
            .collect();
        let inserted = store::insert_new(conn, &rows).await?;
        let keys: Vec<(String, String)> = events
            .iter()
            .map(|e| (e.source.clone(), e.id.clone()))
            .collect();
        let stored = store::find_many(conn, space, &keys).await?;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let Some(row) = stored
                .iter()
                .find(|r| r.source == e.source && r.event_id == e.id)
            else {
                return Err(LifecycleError::Db(diesel::result::Error::NotFound));
            };
            let first = seen.insert((e.source.as_str(), e.id.as_str()));
            out.push(Accepted {
                duplicate: !(first && inserted.contains(&row.id)),
                row: row.clone(),
            });
        }
        Ok(out)
    })
    .await
}

/// The spaces among `ids` that do not exist.
pub async fn missing_spaces(
    conn: &mut AsyncPgConnection,
    ids: &[String],
) -> diesel::QueryResult<Vec<String>> {
    let mut distinct: Vec<&String> = ids.iter().collect();
    distinct.sort();
    distinct.dedup();
    let mut missing = Vec::new();
    for id in distinct {
        if spaces::find(conn, id).await?.is_none() {
            missing.push(id.clone());
        }
    }
    Ok(missing)
}

/// The event `(source, id)` of `space`.
pub async fn find(
    conn: &mut AsyncPgConnection,
    space: &str,
    source: &str,
    id: &str,
) -> Result<EventRow, LifecycleError> {
    store::find(conn, space, source, id)
        .await?
        .ok_or_else(|| LifecycleError::NotFound(format!("lifecycle event {source}/{id}")))
}

/// What one application of an event came to.
struct Step {
    state: EventState,
    result: EventResult,
    /// `scheduled`: when to come back.
    due_at: Option<DateTime<Utc>>,
}

/// Events one transaction of the worker claims and applies at most ([`apply_batch`]).
pub const APPLY_BATCH: i64 = 250;

/// Claims up to `limit` due events of any space and applies them in one transaction (see the
/// module documentation). Empty: nothing is due. Otherwise each event's id and its state now
/// (`queued` again when its attempt failed and will be retried).
pub async fn apply_batch(
    conn: &mut AsyncPgConnection,
    limit: i64,
) -> Result<Vec<(Uuid, EventState)>, diesel::result::Error> {
    conn.transaction(async |conn| {
        let events = store::claim_due_many(conn, limit).await?;
        let mut per_subject: HashMap<(&str, &str, &str), usize> = HashMap::new();
        for e in &events {
            *per_subject.entry(subject_key(e)).or_default() += 1;
        }
        // Set-based: the revocations of subjects that only one event of the batch is about (so
        // no two of them need ordering, V5). The others, one by one in claim order.
        let (bulk, single): (Vec<&EventRow>, Vec<&EventRow>) = events
            .iter()
            .partition(|e| per_subject[&subject_key(e)] == 1 && bulk_type(e).is_some());
        let mut out = Vec::with_capacity(events.len());
        let mut fallback = Vec::new();
        if !bulk.is_empty() {
            match conn
                .transaction(async |conn| apply_bulk(conn, &bulk).await)
                .await
            {
                Ok(states) => out.extend(states),
                Err(e) => {
                    // Rolled back to the savepoint: each event again on its own, so that one
                    // bad event fails alone.
                    tracing::warn!(events = bulk.len(), error = %e,
                        "applying lifecycle events together failed; applying them one by one");
                    fallback = bulk;
                }
            }
        }
        for event in fallback.into_iter().chain(single) {
            out.push((event.id, run(conn, event).await?));
        }
        Ok(out)
    })
    .await
}

fn subject_key(e: &EventRow) -> (&str, &str, &str) {
    (
        e.space_id.as_str(),
        e.subject_kind.as_str(),
        e.subject_id.as_str(),
    )
}

/// The type of an event [`apply_bulk`] applies: a queued event whose effect is to revoke every
/// license of its subject now, or to record it only.
fn bulk_type(e: &EventRow) -> Option<EventType> {
    use EventType::*;
    let t = e.type_.parse::<EventType>().ok()?;
    // `user.deleted` is not among them: it also queues the user's retirement at Apple, which
    // the one-by-one path does.
    let revokes_subject = matches!(
        t,
        DeviceRetired | DeviceWiped | DeviceDeleted | DeviceCheckedOut | UserDisabled
    );
    (revokes_subject
        && e.state == EventState::Queued.as_str()
        && matches!(e.effect.as_str(), "revoke_now" | "ignore"))
    .then_some(t)
}

/// Applies `events` (claimed, of [`bulk_type`], each about a subject no other event of the
/// batch is about) with a fixed number of statements, whatever their number: the marks locked
/// in key order, then the assignments and asset rows of every subject at once in the ledger's
/// order, one statement starting every revocation (each with its event's reason and origin),
/// one finishing the events, one logging them. Same effects and results as [`apply`] one by
/// one.
async fn apply_bulk(
    conn: &mut AsyncPgConnection,
    events: &[&EventRow],
) -> diesel::QueryResult<Vec<(Uuid, EventState)>> {
    let keys: Vec<store::MarkKey> = events
        .iter()
        .map(|e| {
            let aspect = bulk_type(e).map(|t| t.aspect(&e.data)).unwrap_or_default();
            (
                e.space_id.clone(),
                e.subject_kind.clone(),
                e.subject_id.clone(),
                aspect,
            )
        })
        .collect();
    let marks: HashMap<store::MarkKey, store::Mark> =
        store::lock_marks(conn, &keys).await?.into_iter().collect();
    let mut steps: Vec<Step> = Vec::with_capacity(events.len());
    let mut moves = Vec::new();
    // Per space, the events that revoke.
    let mut revoking: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let mark = marks.get(&keys[i]).cloned().unwrap_or_default();
        if let Some(step) = stale_step(e, &mark) {
            steps.push(step);
            continue;
        }
        moves.push(store::MarkMove {
            key: keys[i].clone(),
            occurred_at: e.occurred_at,
            event: e.id,
            source: e.source.clone(),
            event_id: e.event_id.clone(),
        });
        if e.effect == "revoke_now" {
            revoking.entry(e.space_id.as_str()).or_default().push(i);
        }
        steps.push(Step {
            state: EventState::Applied,
            result: EventResult {
                effect: e.effect.clone(),
                ..EventResult::default()
            },
            due_at: None,
        });
    }
    store::set_marks(conn, &moves).await?;
    for (space, idxs) in revoking {
        revoke_subjects(conn, space, events, &idxs, &mut steps).await?;
    }
    let mut finished = Vec::with_capacity(events.len());
    let mut logs = Vec::with_capacity(events.len());
    let mut out = Vec::with_capacity(events.len());
    for (e, step) in events.iter().zip(&steps) {
        let result = serde_json::to_value(&step.result).unwrap_or(Value::Null);
        logs.push(log_entry(e, step.state, &result));
        finished.push((e.id, step.state.as_str().to_owned(), result));
        out.push((e.id, step.state));
    }
    store::finish_many(conn, &finished).await?;
    activity::record_many(conn, logs).await?;
    Ok(out)
}

/// The revocations of the events `idxs` of `events` (all of `space`): every live license of
/// each one's subject, as [`revoke_scope`] does for one subject, for all of them at once.
async fn revoke_subjects(
    conn: &mut AsyncPgConnection,
    space: &str,
    events: &[&EventRow],
    idxs: &[usize],
    steps: &mut [Step],
) -> diesel::QueryResult<()> {
    let mut by_subject: HashMap<Uuid, usize> = HashMap::new();
    for kind in [SubjectKind::Device, SubjectKind::User] {
        let of_kind: Vec<usize> = idxs
            .iter()
            .copied()
            .filter(|&i| subject_kind(events[i]) == kind)
            .collect();
        if of_kind.is_empty() {
            continue;
        }
        let names: Vec<&str> = of_kind
            .iter()
            .map(|&i| events[i].subject_id.as_str())
            .collect();
        let found: HashMap<String, Uuid> = subjects::find_many(conn, space, kind, &names)
            .await?
            .into_iter()
            .map(|s| (s.external_id, s.id))
            .collect();
        for i in of_kind {
            let e = events[i];
            match found.get(&e.subject_id) {
                Some(id) => {
                    by_subject.insert(*id, i);
                }
                None => {
                    steps[i].result.note = Some(format!(
                        "the space never saw {} {:?}: it holds nothing",
                        e.subject_kind, e.subject_id
                    ))
                }
            }
        }
    }
    if by_subject.is_empty() {
        return Ok(());
    }
    let mut ids: Vec<Uuid> = by_subject.keys().copied().collect();
    ids.sort();
    // The ledger's lock order, once for the whole batch: every assignment of the subjects by
    // id here, then their asset rows by key in `start_each`.
    let targets = revocations::of_subjects(conn, space, &ids).await?;
    // Waiting entries (A12) of the subjects are cancelled first, as a revocation does (rare).
    let mut waiting: Vec<Uuid> = targets
        .iter()
        .filter(|t| t.state == "waiting")
        .map(|t| t.subject_id)
        .collect();
    waiting.sort();
    waiting.dedup();
    for subject in waiting {
        if let Some(&i) = by_subject.get(&subject) {
            let scope = Scope {
                subject: Some(subject),
                ..Scope::default()
            };
            crate::engine::waitlist::cancel(
                conn,
                space,
                &scope,
                &origin_of(events[i]),
                &reason_of(events[i]),
            )
            .await?;
        }
    }
    let mut start = Vec::with_capacity(targets.len());
    let mut causes = Vec::with_capacity(targets.len());
    for t in targets.into_iter().filter(|t| t.state != "waiting") {
        let Some(&i) = by_subject.get(&t.subject_id) else {
            continue;
        };
        let result = &mut steps[i].result;
        if !t.revocable {
            result.not_revocable += 1;
            continue;
        }
        result.revoked.push(RevokedLicense {
            assignment_id: t.id,
            adam_id: t.adam_id,
            pricing_param: t.pricing_param,
            license_type: t.license_type,
            criterion: None,
        });
        start.push(t.id);
        causes.push(revocations::Cause {
            origin: origin_of(events[i]),
            reason: reason_of(events[i]),
        });
    }
    revocations::start_each(conn, space, &start, &causes).await?;
    Ok(())
}

/// Applies the claimed (locked) `event` in a savepoint and records its new state; a database
/// failure of the effects counts an attempt instead.
async fn run(
    conn: &mut AsyncPgConnection,
    event: &EventRow,
) -> Result<EventState, diesel::result::Error> {
    match conn
        .transaction(async |conn| apply(conn, event).await)
        .await
    {
        Ok(step) => {
            let result = serde_json::to_value(&step.result).unwrap_or(Value::Null);
            store::finish(conn, event.id, step.state.as_str(), &result, step.due_at).await?;
            if step.state != EventState::Scheduled || event.state == "queued" {
                log(conn, event, step.state, &result).await?;
            }
            Ok(step.state)
        }
        Err(e) => {
            let attempts = event.attempts + 1;
            let retry_at = (attempts < MAX_ATTEMPTS).then(|| {
                Utc::now() + chrono::Duration::seconds((1i64 << attempts.min(8)).min(300))
            });
            tracing::warn!(event = %event.id, attempts, error = %e, "lifecycle event failed");
            store::record_failure(conn, event.id, &e.to_string(), retry_at).await?;
            Ok(if retry_at.is_some() {
                EventState::Queued
            } else {
                EventState::Failed
            })
        }
    }
}

async fn log(
    conn: &mut AsyncPgConnection,
    event: &EventRow,
    state: EventState,
    result: &Value,
) -> diesel::QueryResult<()> {
    activity::record(conn, log_entry(event, state, result)).await
}

/// The `lifecycle.applied` activity row of an event.
fn log_entry(event: &EventRow, state: EventState, result: &Value) -> Activity {
    let origin = origin_of(event);
    let mut entry = Activity::new(&origin, ActivityAction::LifecycleApplied.as_str())
        .space(&event.space_id)
        .details(json!({
            "event": {"source": event.source, "id": event.event_id, "type": event.type_,
                      "occurred_at": event.occurred_at},
            "state": state,
            "result": result,
        }));
    match event.subject_kind.as_str() {
        "asset" => entry.adam_id = Some(event.subject_id.clone()),
        kind => entry.subject = Some(format!("{kind}:{}", event.subject_id)),
    }
    entry
}

fn origin_of(event: &EventRow) -> Origin {
    Origin::new(event.requested_by.clone(), event.request_id.clone())
}

fn reason_of(event: &EventRow) -> String {
    format!(
        "lifecycle event {} {}/{}",
        event.type_, event.source, event.event_id
    )
}

/// The effects of one event, in the caller's savepoint.
async fn apply(conn: &mut AsyncPgConnection, event: &EventRow) -> diesel::QueryResult<Step> {
    let Ok(event_type) = event.type_.parse::<EventType>() else {
        // Only a hand-edited row can get here; nothing is done about it.
        return Ok(Step {
            state: EventState::Applied,
            result: EventResult {
                effect: event.effect.clone(),
                note: Some(format!("unknown type {:?}", event.type_)),
                ..EventResult::default()
            },
            due_at: None,
        });
    };
    let space = event.space_id.as_str();
    if event.state == EventState::Scheduled.as_str() {
        // The grace period of `revoke_after` is over: revoke now (facts were recorded).
        let mut result: EventResult = event
            .result
            .clone()
            .and_then(|r| serde_json::from_value(r).ok())
            .unwrap_or_default();
        // The device's former user (a user change) is re-decided too: its user licenses may
        // have been granted only through this device's groups.
        let mut also = Vec::new();
        if let Some(old) = &result.former_user
            && let Some(old) = subjects::find(conn, space, SubjectKind::User, old).await?
        {
            also.push(old.id);
        }
        revoke_for(conn, event, event_type, &also, &mut result).await?;
        return Ok(Step {
            state: EventState::Applied,
            result,
            due_at: None,
        });
    }
    // V5: stale against the last applied event of the same subject and aspect.
    let aspect = event_type.aspect(&event.data);
    let mark =
        store::lock_mark(conn, space, &event.subject_kind, &event.subject_id, &aspect).await?;
    if let Some(step) = stale_step(event, &mark) {
        return Ok(step);
    }
    let key = (event.source.as_str(), event.event_id.as_str());
    store::set_mark(
        conn,
        space,
        &event.subject_kind,
        &event.subject_id,
        &aspect,
        event.occurred_at,
        Some((event.id, key.0, key.1)),
    )
    .await?;
    let mut result = EventResult {
        effect: event.effect.clone(),
        ..EventResult::default()
    };
    let also = record_facts(conn, event, event_type, &mut result).await?;
    match event.effect.as_str() {
        "revoke_now" => revoke_for(conn, event, event_type, &also, &mut result).await?,
        "revoke_after" => {
            let at = event.revoke_at.unwrap_or_else(Utc::now);
            result.revoke_at = Some(at);
            return Ok(Step {
                state: EventState::Scheduled,
                result,
                due_at: Some(at),
            });
        }
        _ => {}
    }
    Ok(Step {
        state: EventState::Applied,
        result,
        due_at: None,
    })
}

/// V5: the `stale` outcome of `event` when the last applied event of its subject and aspect
/// (`mark`) is newer, or is this very event.
fn stale_step(event: &EventRow, mark: &store::Mark) -> Option<Step> {
    let key = (event.source.as_str(), event.event_id.as_str());
    let mark_key = mark.key.as_ref().map(|(s, i)| (s.as_str(), i.as_str()));
    if !is_stale(event.occurred_at, key, mark.occurred_at, mark_key) {
        return None;
    }
    let replay = mark.occurred_at == Some(event.occurred_at) && mark_key == Some(key);
    Some(Step {
        state: EventState::Stale,
        result: EventResult {
            effect: event.effect.clone(),
            superseded_at: mark.occurred_at,
            note: replay.then(|| {
                "a replay of the event already applied (forgotten after the retention): \
                 nothing applied again"
                    .to_owned()
            }),
            ..EventResult::default()
        },
        due_at: None,
    })
}

/// The facts the event states: groups, the device's user, the last sighting. Returns the
/// subjects besides the event's own whose licenses the change can take away (a device's former
/// user).
async fn record_facts(
    conn: &mut AsyncPgConnection,
    event: &EventRow,
    event_type: EventType,
    result: &mut EventResult,
) -> diesel::QueryResult<Vec<Uuid>> {
    let mut facts = Facts::default();
    match event_type {
        EventType::DeviceGroupsChanged | EventType::UserGroupsChanged => {
            let groups = event
                .data
                .get("groups")
                .and_then(Value::as_array)
                .map(|gs| {
                    let mut out: Vec<String> = Vec::new();
                    for g in gs.iter().filter_map(Value::as_str) {
                        if !out.iter().any(|o| o == g) {
                            out.push(g.to_owned());
                        }
                    }
                    out
                })
                .unwrap_or_default();
            facts.groups = Some(groups);
            result.facts.push("groups".into());
        }
        EventType::DeviceUserChanged => {
            facts.user = Some(
                event
                    .data
                    .get("user")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            );
            result.facts.push("user".into());
        }
        EventType::DeviceSeen => {
            facts.last_seen = Some(event.occurred_at);
            result.facts.push("last_seen".into());
        }
        _ => return Ok(Vec::new()),
    }
    let kind = subject_kind(event);
    let row = subjects::upsert_locked(conn, &event.space_id, kind, &event.subject_id).await?;
    subjects::set_facts(conn, row.id, &facts).await?;
    let mut also = Vec::new();
    if facts.user.is_some()
        && let Some(old_id) = &row.user_external_id
        && let Some(old) = subjects::find(conn, &event.space_id, SubjectKind::User, old_id).await?
    {
        also.push(old.id);
        // Kept for `revoke_after`: the former user is re-decided when the grace period ends.
        result.former_user = Some(old_id.clone());
    }
    Ok(also)
}

fn subject_kind(event: &EventRow) -> SubjectKind {
    if event.subject_kind == EventSubject::User.as_str() {
        SubjectKind::User
    } else {
        SubjectKind::Device
    }
}

/// The revocation (and for a move, the allocations) an event causes.
async fn revoke_for(
    conn: &mut AsyncPgConnection,
    event: &EventRow,
    event_type: EventType,
    also: &[Uuid],
    result: &mut EventResult,
) -> diesel::QueryResult<()> {
    use EventType::*;
    let space = event.space_id.as_str();
    let origin = origin_of(event);
    let reason = reason_of(event);
    match event_type {
        DeviceSeen => Ok(()),
        DeviceRetired | DeviceWiped | DeviceDeleted | DeviceCheckedOut | UserDeleted
        | UserDisabled | AppRemovedFromDevice => {
            if event_type == UserDeleted {
                // Retired at Apple at every account where it is registered, by the dispatcher
                // once the releases queued below are settled there (`dispatch::retire`).
                result.retiring_at =
                    apple_users::queue_retirements(conn, space, &event.subject_id).await?;
            }
            let Some(subject) =
                subjects::find(conn, space, subject_kind(event), &event.subject_id).await?
            else {
                result.note = Some(format!(
                    "the space never saw {} {:?}: it holds nothing",
                    event.subject_kind, event.subject_id
                ));
                return Ok(());
            };
            let mut scope = Scope {
                subject: Some(subject.id),
                ..Scope::default()
            };
            if event_type == AppRemovedFromDevice {
                scope.adam_id = event
                    .data
                    .get("adam_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                scope.pricing_param = pricing_of(&event.data);
            }
            revoke_scope(conn, space, &scope, &origin, &reason, result).await?;
            Ok(())
        }
        AppDeletedFromCatalog => {
            let scope = Scope {
                adam_id: Some(event.subject_id.clone()),
                pricing_param: pricing_of(&event.data),
                ..Scope::default()
            };
            revoke_scope(conn, space, &scope, &origin, &reason, result).await?;
            Ok(())
        }
        DeviceGroupsChanged | UserGroupsChanged | DeviceUserChanged => {
            let mut ids = rejudged(conn, space, subject_kind(event), &event.subject_id).await?;
            ids.extend(
                also.iter()
                    .filter(|id| !ids.contains(id))
                    .copied()
                    .collect::<Vec<_>>(),
            );
            revoke_not_granted(conn, space, &ids, &origin, &reason, result).await
        }
        DeviceMoved => move_device(conn, event, &origin, &reason, result).await,
    }
}

fn pricing_of(data: &Value) -> Option<String> {
    data.get("pricing_param")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// The subjects whose licenses a change of `(kind, id)`'s facts can take away: the subject;
/// for a device also its user (a user license counts its devices' groups).
async fn rejudged(
    conn: &mut AsyncPgConnection,
    space: &str,
    kind: SubjectKind,
    id: &str,
) -> diesel::QueryResult<Vec<Uuid>> {
    let Some(row) = subjects::find(conn, space, kind, id).await? else {
        return Ok(Vec::new());
    };
    let mut ids = vec![row.id];
    if let (SubjectKind::Device, Some(user)) = (kind, &row.user_external_id)
        && let Some(user) = subjects::find(conn, space, SubjectKind::User, user).await?
    {
        ids.push(user.id);
    }
    Ok(ids)
}

/// Revokes the live licenses of `subjects` that allocation's rules no longer grant.
async fn revoke_not_granted(
    conn: &mut AsyncPgConnection,
    space: &str,
    subjects: &[Uuid],
    origin: &Origin,
    reason: &str,
    result: &mut EventResult,
) -> diesel::QueryResult<()> {
    let candidates = crate::reconcile::no_longer_granted(conn, space, subjects).await?;
    // Each license is revoked with its own reason (its criterion), one call each: the rows they
    // touch are locked first, all at once in the ledger's order, not piecemeal.
    let ids: Vec<Uuid> = candidates.iter().map(|c| c.assignment_id).collect();
    revocations::lock_upfront(conn, space, &ids, &[]).await?;
    for c in candidates {
        let scope = Scope {
            assignment: Some(c.assignment_id),
            ..Scope::default()
        };
        let why = format!("{reason}: {}", c.criterion);
        let revoked = crate::engine::revoke::revoke(conn, space, &scope, origin, &why).await?;
        if revoked.dropped + revoked.revoking > 0 {
            result.revoked.push(RevokedLicense {
                assignment_id: c.assignment_id,
                adam_id: c.adam_id,
                pricing_param: c.pricing_param,
                license_type: c.license_type,
                criterion: Some(c.criterion),
            });
        }
    }
    Ok(())
}

/// Revokes every live license `scope` matches in `space` (those Apple does not take back are
/// counted and left) and lists them in `result`; returns the revoked assignments.
async fn revoke_scope(
    conn: &mut AsyncPgConnection,
    space: &str,
    scope: &Scope,
    origin: &Origin,
    reason: &str,
    result: &mut EventResult,
) -> diesel::QueryResult<Vec<crate::domain::records::AssignmentRow>> {
    let targets = revocations::matching(conn, space, scope, true).await?;
    let ids: Vec<Uuid> = targets
        .iter()
        .filter(|t| t.revocable)
        .map(|t| t.id)
        .collect();
    let rows = assignments::by_ids(conn, &ids).await?;
    let revoked = crate::engine::revoke::revoke(conn, space, scope, origin, reason).await?;
    result.not_revocable += revoked.not_revocable;
    for a in &rows {
        result.revoked.push(RevokedLicense {
            assignment_id: a.id,
            adam_id: a.adam_id.clone(),
            pricing_param: a.pricing_param.clone(),
            license_type: a.license_type,
            criterion: None,
        });
    }
    Ok(rows)
}

/// V3: revokes the device's licenses here (and its user's with `data.with_user`) and allocates
/// the same assets in `data.to_space` where its policies and accounts allow.
async fn move_device(
    conn: &mut AsyncPgConnection,
    event: &EventRow,
    origin: &Origin,
    reason: &str,
    result: &mut EventResult,
) -> diesel::QueryResult<()> {
    let space = event.space_id.as_str();
    let to = event
        .data
        .get("to_space")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let with_user = event
        .data
        .get("with_user")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let Some(device) = subjects::find(conn, space, SubjectKind::Device, &event.subject_id).await?
    else {
        result.note = Some(format!(
            "the space never saw device {:?}: it holds nothing",
            event.subject_id
        ));
        return Ok(());
    };
    let mut holders: Vec<SubjectRow> = vec![device.clone()];
    if with_user
        && let Some(user) = &device.user_external_id
        && let Some(user) = subjects::find(conn, space, SubjectKind::User, user).await?
    {
        holders.push(user);
    }
    // The device's and its user's licenses are revoked one holder after the other: the rows
    // both touch are locked first, all at once in the ledger's order.
    let holder_ids: Vec<Uuid> = holders.iter().map(|h| h.id).collect();
    revocations::lock_upfront(conn, space, &[], &holder_ids).await?;
    let mut revoked = Vec::new();
    for holder in &holders {
        let scope = Scope {
            subject: Some(holder.id),
            ..Scope::default()
        };
        let rows = revoke_scope(conn, space, &scope, origin, reason, result).await?;
        revoked.extend(rows.into_iter().map(|a| (holder.clone(), a)));
    }
    let destination_exists = spaces::find(conn, &to).await?.is_some();
    for (holder, a) in revoked {
        let mut moved = MovedAsset {
            adam_id: a.adam_id.clone(),
            pricing_param: a.pricing_param.clone(),
            license_type: a.license_type,
            revoked_assignment: a.id,
            outcome: MoveOutcome::NotAvailable,
            assignment_id: None,
            detail: None,
        };
        if !destination_exists {
            moved.detail = Some(format!("space {to} no longer exists"));
            result.moved.push(moved);
            continue;
        }
        let subject = match holder.kind {
            SubjectKind::Device => SubjectInput::Device {
                serial: holder.external_id.clone(),
                user: holder.user_external_id.clone(),
                shared_ipad: Some(holder.shared_ipad),
                groups: Some(holder.group_names()),
            },
            SubjectKind::User => SubjectInput::User {
                id: holder.external_id.clone(),
                groups: Some(holder.group_names()),
            },
        };
        let request = AllocationRequest {
            space: to.clone(),
            asset: AssetRef {
                adam_id: a.adam_id.clone(),
                pricing_param: a.pricing_param.clone(),
            },
            subject,
            wish: match a.license_type {
                LicenseType::Device => LicenseWish::Device,
                LicenseType::User => LicenseWish::User,
            },
            reason: format!("moved from space {space} ({reason})"),
            origin: origin.clone(),
            dry_run: false,
            exclude_accounts: Vec::new(),
            replaces: None,
            // V3: where nothing is available in the destination only the revocation happens
            // (the move does not join a wait-list).
            wait_until: None,
            policy_wait_until: None,
            serves: None,
            serves_holder: None,
        };
        match allocate::allocate(conn, &request).await {
            Ok(outcome) => {
                moved.outcome = if outcome.created {
                    MoveOutcome::Allocated
                } else {
                    MoveOutcome::Existing
                };
                moved.assignment_id = outcome.assignment.map(|a| a.id);
            }
            Err(AllocationError::Db(e)) => return Err(e),
            Err(AllocationError::Refused(refusal)) => moved.detail = Some(refusal.to_string()),
            Err(other) => moved.detail = Some(other.to_string()),
        }
        result.moved.push(moved);
    }
    if result.revoked.is_empty() {
        result.note = Some("the device held no license in this space".into());
    }
    Ok(())
}

/// What `PUT …/devices/{serial}` or `…/users/{id}` changed.
#[derive(Clone, Debug, Default)]
pub struct SubjectUpdate {
    pub result: EventResult,
}

/// Stores new facts of a subject (created if the space never saw it) and, when the groups or
/// the device's user are among them, applies what a `groups_changed` event would: the space's effect for `<kind>.groups_changed` decides whether
/// licenses no longer granted are revoked now, after the grace period (a scheduled event of
/// source `api` does it then) or not at all. The facts' marks move to now, so an event that
/// occurred before is stale.
pub async fn update_subject(
    conn: &mut AsyncPgConnection,
    space: &str,
    kind: SubjectKind,
    id: &str,
    facts: Facts,
    origin: &Origin,
) -> Result<SubjectUpdate, LifecycleError> {
    conn.transaction(async |conn| {
        if spaces::find(conn, space).await?.is_none() {
            return Err(LifecycleError::NotFound(format!("space {space}")));
        }
        let event_type = match kind {
            SubjectKind::Device => EventType::DeviceGroupsChanged,
            SubjectKind::User => EventType::UserGroupsChanged,
        };
        let settings = Settings {
            rows: store::settings(conn, space).await?,
        };
        let (effect, grace) = settings.effect(event_type);
        // Only a change of groups or user can take eligibility away; a sighting or the Shared
        // iPad flag alone re-decides nothing.
        let effect = if facts.groups.is_some() || facts.user.is_some() {
            effect
        } else {
            Effect::Ignore
        };
        let now = Utc::now();
        let mut aspects = Vec::new();
        let mut result = EventResult {
            effect: effect.as_str().to_owned(),
            ..EventResult::default()
        };
        if facts.groups.is_some() {
            aspects.push("groups");
            result.facts.push("groups".into());
        }
        if facts.user.is_some() {
            aspects.push("user");
            result.facts.push("user".into());
        }
        if facts.shared_ipad.is_some() {
            result.facts.push("shared_ipad".into());
        }
        if facts.last_seen.is_some() {
            aspects.push("seen");
            result.facts.push("last_seen".into());
        }
        // Lock order: the marks, then the subject's row (then its assets, in the revocation),
        // as the lifecycle worker does; the other order deadlocked against it.
        for aspect in aspects {
            let at = if aspect == "seen" {
                facts.last_seen.unwrap_or(now)
            } else {
                now
            };
            store::lock_mark(conn, space, kind.as_str(), id, aspect).await?;
            store::set_mark(conn, space, kind.as_str(), id, aspect, at, None).await?;
        }
        let row = subjects::upsert_locked(conn, space, kind, id).await?;
        let previous_user = row.user_external_id.clone();
        subjects::set_facts(conn, row.id, &facts).await?;
        let mut ids = rejudged(conn, space, kind, id).await?;
        // A device's former user lost the groups this device lent its user licenses.
        if let (Some(_), Some(old_id)) = (&facts.user, &previous_user)
            && let Some(old) = subjects::find(conn, space, SubjectKind::User, old_id).await?
        {
            // Kept in the scheduled event's result for `revoke_after`.
            result.former_user = Some(old_id.clone());
            if !ids.contains(&old.id) {
                ids.push(old.id);
            }
        }
        let reason = format!("{kind} {id} updated (PUT)");
        match effect {
            Effect::RevokeNow => {
                revoke_not_granted(conn, space, &ids, origin, &reason, &mut result).await?
            }
            Effect::RevokeAfter => {
                let at = now + chrono::Duration::seconds(grace.unwrap_or(0) as i64);
                result.revoke_at = Some(at);
                let groups: Vec<String> = facts.groups.clone().unwrap_or_default();
                let scheduled = NewEvent {
                    id: Uuid::now_v7(),
                    space_id: space.to_owned(),
                    source: "api".into(),
                    event_id: Uuid::now_v7().to_string(),
                    type_: event_type.as_str().to_owned(),
                    subject_kind: kind.as_str().to_owned(),
                    subject_id: id.to_owned(),
                    occurred_at: now,
                    data: json!({"groups": groups}),
                    effect: Effect::RevokeAfter.as_str().to_owned(),
                    state: EventState::Scheduled.as_str().to_owned(),
                    due_at: at,
                    revoke_at: Some(at),
                    requested_by: origin.actor.clone(),
                    request_id: origin.request_id.clone(),
                };
                store::insert_new(conn, std::slice::from_ref(&scheduled)).await?;
                let value = serde_json::to_value(&result).unwrap_or(Value::Null);
                store::finish(conn, scheduled.id, "scheduled", &value, Some(at)).await?;
                result.note = Some(format!(
                    "licenses no longer granted are revoked at {} (lifecycle event api/{})",
                    at.to_rfc3339(),
                    scheduled.event_id
                ));
            }
            Effect::Ignore => {}
        }
        let mut entry = Activity::new(origin, ActivityAction::SubjectUpdated.as_str())
            .space(space)
            .details(json!({
                "groups": facts.groups,
                "user": facts.user,
                "shared_ipad": facts.shared_ipad,
                "last_seen": facts.last_seen,
                "result": result,
            }));
        entry.subject = Some(format!("{kind}:{id}"));
        activity::record(conn, entry).await?;
        Ok(SubjectUpdate { result })
    })
    .await
}

/// Forgets finished events older than the retention (the maintenance loop).
pub async fn forget_old(conn: &mut AsyncPgConnection) -> diesel::QueryResult<usize> {
    store::forget_older_than(conn, RETENTION_DAYS).await
}

/// Applies due events in this task until none is left or `limit` were applied (tests,
/// benchmarks). Returns how many were applied.
pub async fn drain(conn: &mut AsyncPgConnection, limit: usize) -> diesel::QueryResult<usize> {
    let mut n = 0;
    while n < limit {
        let batch = APPLY_BATCH.min((limit - n) as i64);
        match apply_batch(conn, batch).await?.len() {
            0 => break,
            applied => n += applied,
        }
    }
    Ok(n)
}
