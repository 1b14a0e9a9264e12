//! `/v1/spaces/{space}/lifecycle-events` and `/lifecycle-settings`: what other MDM components
//! report about devices, users and apps, turned into revocations (rules V2, V3, V5; issue 14).
//! The use case is [`crate::lifecycle`], whose documentation says what each type does.
//!
//! Decisions (an MDM integrating this wants a stream that never jams on one bad event):
//! - A batch is `{"events": [...]}` of 1 to 500 events. A body that is not that shape (not JSON,
//!   not an object, `events` missing or not an array, an event given as an array) is refused
//!   whole (400/415/422); more than 500 events is 413 `payload-too-large`; nothing is stored.
//! - Each event is then checked on its own: a wrong field type, an unknown `type`, a missing or
//!   blank subject id, an `occurred_at` before 2000-01-01 or more than 5 minutes in the
//!   future, `data` its type needs missing or wrong, a `device.moved` to the same space, to an
//!   unknown space or to one the caller's token does not grant (404 `not-found`, the same for
//!   both, as everywhere): that event is `rejected` with its problem in the answer and is not
//!   stored (it may be sent again, corrected, with the same id); the others are stored. When
//!   every event of the batch is rejected the answer is 422 `validation-failed` naming each
//!   (`events[i].field`).
//! - Otherwise 202 with one entry per event in the batch's order: `queued` for a new event, or
//!   for one already stored (same space, `source` and `id`, within 30 days) `duplicate: true`
//!   with the original's state and result — even if this copy's content differs.
//! - Writing needs `licenses:write` (the revocation scope); reading an event and the settings
//!   `licenses:read`; changing the settings `accounts:manage` (like distribution policies).
//! - The effect of a type is the space's setting when the event is accepted (a later change of
//!   the settings does not change queued events).

use actix_web::{HttpResponse, get, post, put, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::auth::space::SpacePath;
use crate::auth::{Scope, SpaceAccess, needs};
use crate::domain::lifecycle::{
    self as rules, Effect, EventResult, EventState, EventSubject, EventType, MAX_BATCH, RawEvent,
};
use crate::domain::validation::{FieldError, check_id};
use crate::http::extract::Json;
use crate::http::problem::{ApiError, Problem, types};
use crate::ledger::lifecycle::{EventRow, SettingRow};
use crate::lifecycle::{self as usecase, LifecycleError};
use crate::state::AppState;

impl From<LifecycleError> for ApiError {
    fn from(err: LifecycleError) -> Self {
        match err {
            LifecycleError::NotFound(what) => ApiError::not_found(what),
            LifecycleError::Db(e) => ApiError::from(e),
        }
    }
}

/// A batch of lifecycle events.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LifecycleEventBatch {
    /// 1 to 500 events. Each is checked on its own (see the operation).
    #[schema(value_type = Vec<LifecycleEventInput>, min_items = 1, max_items = 500)]
    pub events: Vec<Value>,
}

/// One event as the MDM reports it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LifecycleEventInput {
    /// The event's id at its source (1-256 characters); `(source, id)` makes it idempotent.
    pub id: String,
    /// Which component sent it (1-256 characters), e.g. `enrolment`, `catalog`.
    pub source: String,
    /// What happened.
    #[serde(rename = "type")]
    #[schema(value_type = EventType)]
    pub type_: String,
    /// When it happened (RFC 3339); not before 2000-01-01, at most 5 minutes in the future.
    pub occurred_at: DateTime<Utc>,
    /// What it happened to.
    pub subject: EventSubjectInput,
    /// What the type needs: `groups` (groups_changed: the full current set), `user`
    /// (device.user_changed: a client user id or null), `adam_id` and optional
    /// `pricing_param` (app.removed_from_device), optional `pricing_param`
    /// (app.deleted_from_catalog), `to_space` and optional `with_user` (device.moved).
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub data: Value,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// The subject of an event: a device's serial number, a user's client user id, or (for
/// `app.deleted_from_catalog`) the app's adamId.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventSubjectInput {
    /// 1-256 characters.
    pub id: String,
    /// Optional; when given it must be what the type is about.
    #[schema(value_type = Option<EventSubject>, nullable = false)]
    pub kind: Option<String>,
}

crate::text_enum! {
    /// What became of one event of a batch.
    pub enum BatchStatus {
        /// Stored; the worker applies it shortly.
        Queued = "queued",
        /// (Duplicate) facts recorded, revocation due at `result.revoke_at`.
        Scheduled = "scheduled",
        /// (Duplicate) already applied.
        Applied = "applied",
        /// (Duplicate) was older than the last applied event of its subject and aspect.
        Stale = "stale",
        /// (Duplicate) could not be applied.
        Failed = "failed",
        /// Refused (`problem`); not stored.
        Rejected = "rejected",
    }
}

/// The answer to a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct LifecycleBatchAnswer {
    /// Events stored by this request.
    pub accepted: usize,
    /// Events already stored, answered with the original.
    pub duplicates: usize,
    /// Events refused, each with its problem.
    pub rejected: usize,
    /// One per event, in the batch's order.
    pub events: Vec<BatchEntry>,
}

/// What became of one event of a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchEntry {
    /// Position in the batch (0-based).
    pub index: usize,
    /// As sent, when it was a string.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub source: Option<String>,
    /// As sent, when it was a string.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub id: Option<String>,
    pub status: BatchStatus,
    /// The event was already stored (same source and id): this is the original's status.
    pub duplicate: bool,
    /// Duplicates: the original's result, once it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub result: Option<EventResult>,
    /// `rejected`: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub problem: Option<Problem>,
}

/// A stored lifecycle event and what it did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LifecycleEvent {
    pub source: String,
    pub id: String,
    pub space: String,
    #[serde(rename = "type")]
    pub type_: EventType,
    pub subject: EventSubjectView,
    pub occurred_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub data: Value,
    pub state: EventState,
    /// The effect taken when the event was accepted: `revoke_now`, `revoke_after`, `ignore`,
    /// or `record` (`device.seen`).
    pub effect: String,
    /// Who sent it (JWT subject).
    pub received_by: String,
    pub received_at: DateTime<Utc>,
    /// When it was applied (or found stale, or given up).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub applied_at: Option<DateTime<Utc>>,
    /// Failed attempts (database errors) so far.
    pub attempts: i32,
    /// The last failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
    /// What it did: facts recorded, licenses revoked (assignment ids), a move's answers per
    /// asset. Absent while `queued`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub result: Option<EventResult>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventSubjectView {
    pub kind: EventSubject,
    pub id: String,
}

fn view(row: EventRow) -> LifecycleEvent {
    LifecycleEvent {
        type_: row.type_.parse().unwrap_or(EventType::DeviceSeen),
        subject: EventSubjectView {
            kind: row.subject_kind.parse().unwrap_or(EventSubject::Device),
            id: row.subject_id,
        },
        state: row.state.parse().unwrap_or(EventState::Queued),
        result: row.result.and_then(|r| serde_json::from_value(r).ok()),
        source: row.source,
        id: row.event_id,
        space: row.space_id,
        occurred_at: row.occurred_at,
        data: row.data,
        effect: row.effect,
        received_by: row.requested_by,
        received_at: row.received_at,
        applied_at: row.applied_at,
        attempts: row.attempts,
        error: row.last_error,
    }
}

/// Send lifecycle events: devices retired, wiped, deleted, moved; users deleted; group changes;
/// apps removed (V2, V3, V5).
///
/// Each event is `{id, source, type, occurred_at, subject, data}`; up to 500 per batch. Events
/// are stored and answered 202 at once (`queued`), then applied by a background worker:
/// retired, wiped and deleted devices and deleted users lose their licenses; a group or user
/// change revokes the licenses allocation's rules no longer grant (first-come-first-served
/// groups, a fallback account's distribution list), unless still granted another way;
/// `app.deleted_from_catalog` revokes every license of the app; `device.moved` revokes here and
/// allocates the same assets in `data.to_space` where possible. The space's
/// `lifecycle-settings` choose per type between `revoke_now`, `revoke_after` (a grace period)
/// and `ignore`. `(source, id)` is idempotent for 30 days: a duplicate is answered with the
/// original's status and result. An event older than the last applied one of the same subject
/// and aspect is recorded `stale` and changes nothing. An event that fails its checks is
/// `rejected` with its problem and not stored, the others are; when all are rejected the answer
/// is 422. `GET …/lifecycle-events/{source}/{id}` shows what an event did.
#[utoipa::path(
    tag = "lifecycle",
    operation_id = "send_lifecycle_events",
    security(("bearer" = ["licenses:write"])),
    params(("space" = String, Path, description = "Space id")),
    request_body = LifecycleEventBatch,
    responses(
        (status = 202, description = "Stored (or already stored); one entry per event", body = LifecycleBatchAnswer),
        (status = 404, description = "Unknown space"),
        (status = 413, description = "More than 500 events, or a body over the size limit"),
        (status = 422, description = "Not a batch of events, no events, or every event rejected (each named in `errors`)"),
    )
)]
#[post("/v1/spaces/{space}/lifecycle-events")]
pub async fn send_lifecycle_events(
    access: SpaceAccess<needs::LicensesWrite>,
    state: web::Data<AppState>,
    body: Json<LifecycleEventBatch>,
) -> Result<HttpResponse, ApiError> {
    let (caller, space) = access.into_parts();
    let events = body.0.events;
    if events.len() > MAX_BATCH {
        return Err(ApiError::new(
            &types::PAYLOAD_TOO_LARGE,
            format!("{} events: a batch holds at most {MAX_BATCH}", events.len()),
        ));
    }
    if events.is_empty() {
        return Err(ApiError::field(
            "events",
            format!("give 1 to {MAX_BATCH} events"),
        ));
    }
    let now = Utc::now();
    let mut checked = Vec::new();
    let mut entries: Vec<BatchEntry> = Vec::with_capacity(events.len());
    let mut all_errors = Vec::new();
    let mut positions = Vec::new();
    for (index, raw) in events.iter().enumerate() {
        let text = |key: &str| raw.get(key).and_then(Value::as_str).map(str::to_owned);
        let mut entry = BatchEntry {
            index,
            source: text("source"),
            id: text("id"),
            status: BatchStatus::Queued,
            duplicate: false,
            result: None,
            problem: None,
        };
        let refused = match check_one(raw, &space, now, &caller) {
            Ok(event) => {
                checked.push(event);
                positions.push(index);
                None
            }
            Err(problem) => Some(problem),
        };
        if let Some(problem) = refused {
            for e in problem.errors_of() {
                all_errors.push(FieldError {
                    field: format!("events[{index}].{}", e.field),
                    message: e.message,
                });
            }
            entry.status = BatchStatus::Rejected;
            entry.problem = Some(problem.to_problem());
        }
        entries.push(entry);
    }
    let mut conn = state.pool.get().await?;
    // A move's destination must exist (the grant was checked with the event).
    let destinations: Vec<String> = checked
        .iter()
        .filter(|e| e.event_type == EventType::DeviceMoved)
        .filter_map(|e| e.data.get("to_space").and_then(Value::as_str))
        .map(str::to_owned)
        .collect();
    let missing = usecase::missing_spaces(&mut conn, &destinations).await?;
    if !missing.is_empty() {
        let mut kept = Vec::new();
        let mut kept_positions = Vec::new();
        for (event, position) in checked.into_iter().zip(positions) {
            let to = event.data.get("to_space").and_then(Value::as_str);
            match to {
                Some(to)
                    if event.event_type == EventType::DeviceMoved
                        && missing.iter().any(|m| m == to) =>
                {
                    let errors = vec![FieldError {
                        field: "data.to_space".into(),
                        message: format!("space {to} not found"),
                    }];
                    all_errors.push(FieldError {
                        field: format!("events[{position}].data.to_space"),
                        message: format!("space {to} not found"),
                    });
                    let entry = &mut entries[position];
                    entry.status = BatchStatus::Rejected;
                    entry.problem = Some(
                        ApiError::not_found(format!("space {to}"))
                            .with_errors(errors)
                            .to_problem(),
                    );
                }
                _ => {
                    kept.push(event);
                    kept_positions.push(position);
                }
            }
        }
        checked = kept;
        positions = kept_positions;
    }
    if checked.is_empty() {
        return Err(ApiError::new(
            &types::VALIDATION_FAILED,
            "every event of the batch was rejected; nothing was stored",
        )
        .with_errors(all_errors));
    }
    let accepted = usecase::accept(&mut conn, &space, &checked, &caller.origin()).await?;
    let (mut new, mut duplicates) = (0, 0);
    for (position, a) in positions.into_iter().zip(accepted) {
        let entry = &mut entries[position];
        entry.duplicate = a.duplicate;
        if a.duplicate {
            duplicates += 1;
            entry.status = a.row.state.parse().unwrap_or(BatchStatus::Queued);
            entry.result = a.row.result.and_then(|r| serde_json::from_value(r).ok());
        } else {
            new += 1;
        }
    }
    let rejected = entries.len() - new - duplicates;
    Ok(HttpResponse::Accepted().json(LifecycleBatchAnswer {
        accepted: new,
        duplicates,
        rejected,
        events: entries,
    }))
}

/// A refused event: its problem, with the field errors kept for the all-rejected answer.
struct Refused {
    error: ApiError,
    errors: Vec<FieldError>,
}

impl Refused {
    fn errors_of(&self) -> Vec<FieldError> {
        self.errors.clone()
    }

    fn to_problem(&self) -> Problem {
        self.error.to_problem()
    }
}

fn check_one(
    raw: &Value,
    space: &str,
    now: DateTime<Utc>,
    caller: &crate::auth::Caller,
) -> Result<rules::CheckedEvent, Refused> {
    let input: LifecycleEventInput = match serde_json::from_value(raw.clone()) {
        Ok(input) => input,
        Err(e) => {
            let errors = vec![FieldError {
                field: "event".into(),
                message: e.to_string(),
            }];
            return Err(Refused {
                error: ApiError::new(&types::INVALID_BODY, e.to_string())
                    .with_errors(errors.clone()),
                errors,
            });
        }
    };
    let event = rules::check(
        &RawEvent {
            id: &input.id,
            source: &input.source,
            event_type: &input.type_,
            subject_kind: input.subject.kind.as_deref(),
            subject_id: &input.subject.id,
            occurred_at: input.occurred_at,
            data: &input.data,
        },
        space,
        now,
    )
    .map_err(|errors| Refused {
        error: ApiError::validation(errors.clone()),
        errors,
    })?;
    if event.event_type == EventType::DeviceMoved {
        let to = event
            .data
            .get("to_space")
            .and_then(Value::as_str)
            .unwrap_or_default();
        // The destination must be granted to the caller for writing, as if it were sent there;
        // whether it exists is checked before the batch is stored.
        if caller.authorize(to, Scope::LicensesWrite).is_err() {
            let errors = vec![FieldError {
                field: "data.to_space".into(),
                message: format!("space {to} not found"),
            }];
            return Err(Refused {
                error: ApiError::not_found(format!("space {to}")).with_errors(errors.clone()),
                errors,
            });
        }
    }
    Ok(event)
}

/// `/v1/spaces/{space}/lifecycle-events/{source}/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct EventPath {
    /// Space id
    pub space: String,
    /// The event's source (1-256 characters).
    pub source: String,
    /// The event's id at its source (1-256 characters).
    pub id: String,
}

impl SpacePath for EventPath {
    fn space(&self) -> &str {
        &self.space
    }

    fn check(&self) -> Result<(), ApiError> {
        let mut errors = Vec::new();
        check_id(&mut errors, "source", &self.source);
        check_id(&mut errors, "id", &self.id);
        match errors.pop() {
            None => Ok(()),
            Some(e) => Err(ApiError::new(
                &types::INVALID_PARAMETER,
                format!("{} {}", e.field, e.message),
            )),
        }
    }
}

/// Get a lifecycle event: its state and what it did.
///
/// `state` is `queued` until the worker applied it, `scheduled` while a `revoke_after` grace
/// period runs, then `applied`, `stale` (older than the last applied event of the same subject
/// and aspect: nothing changed) or `failed`. `result` lists the facts recorded, the licenses
/// revoked (assignment ids, with the rule that no longer grants them for group changes), the
/// licenses of books left alone, and for `device.moved` what happened per asset in the
/// destination space. Events are kept 30 days.
#[utoipa::path(
    tag = "lifecycle",
    operation_id = "get_lifecycle_event",
    security(("bearer" = ["licenses:read"])),
    params(EventPath),
    responses(
        (status = 200, description = "The event", body = LifecycleEvent),
        (status = 400, description = "Malformed source or id"),
        (status = 404, description = "No such event in the space (or older than 30 days)"),
    )
)]
#[get("/v1/spaces/{space}/lifecycle-events/{source}/{id}")]
pub async fn get_lifecycle_event(
    access: SpaceAccess<needs::LicensesRead, EventPath>,
    state: web::Data<AppState>,
) -> Result<web::Json<LifecycleEvent>, ApiError> {
    let EventPath { space, source, id } = access.path;
    let mut conn = state.pool.get().await?;
    let row = usecase::find(&mut conn, &space, &source, &id).await?;
    Ok(web::Json(view(row)))
}

/// A space's effect per event type.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LifecycleSettings {
    /// Every type whose effect may be chosen, in type order.
    pub effects: Vec<TypeEffect>,
}

/// The effect of one type of event.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TypeEffect {
    #[serde(rename = "type")]
    pub type_: EventType,
    pub effect: Effect,
    /// `revoke_after`: seconds after `occurred_at`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub grace_seconds: Option<i32>,
    /// True when the space did not choose (the built-in default applies).
    pub default: bool,
}

/// New settings: the types named get the effect given, the others their default.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LifecycleSettingsBody {
    pub effects: Vec<TypeEffectInput>,
}

/// The effect chosen for one type.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TypeEffectInput {
    #[serde(rename = "type")]
    pub type_: EventType,
    pub effect: Effect,
    /// Required with `revoke_after` (1 to 31,536,000 seconds), refused otherwise.
    #[schema(nullable = false, minimum = 1, maximum = 31_536_000)]
    pub grace_seconds: Option<i32>,
}

fn settings_view(settings: &usecase::Settings) -> LifecycleSettings {
    LifecycleSettings {
        effects: EventType::ALL
            .iter()
            .filter(|t| t.configurable())
            .map(|&t| {
                let (effect, grace_seconds) = settings.effect(t);
                TypeEffect {
                    type_: t,
                    effect,
                    grace_seconds,
                    default: !settings.rows.iter().any(|r| r.event_type == t.as_str()),
                }
            })
            .collect(),
    }
}

/// Get the space's effect per lifecycle event type.
///
/// Every type whose effect may be chosen, with the effect in force (`default: true` when the
/// space left it at the built-in default: revoke now for retired, wiped and deleted devices,
/// deleted users, group and user changes, apps deleted from the catalog and moves; ignore for
/// checked-out devices, disabled users and apps removed from a device).
#[utoipa::path(
    tag = "lifecycle",
    operation_id = "get_lifecycle_settings",
    security(("bearer" = ["licenses:read"])),
    params(("space" = String, Path, description = "Space id")),
    responses(
        (status = 200, description = "The settings", body = LifecycleSettings),
        (status = 404, description = "Unknown space"),
    )
)]
#[get("/v1/spaces/{space}/lifecycle-settings")]
pub async fn get_lifecycle_settings(
    access: SpaceAccess<needs::LicensesRead>,
    state: web::Data<AppState>,
) -> Result<web::Json<LifecycleSettings>, ApiError> {
    let space = access.path;
    let mut conn = state.pool.get().await?;
    let settings = usecase::settings(&mut conn, &space).await?;
    Ok(web::Json(settings_view(&settings)))
}

/// Set the space's effect per lifecycle event type.
///
/// Replaces the settings: each type named gets its effect (`revoke_now`, `revoke_after` with
/// `grace_seconds`, or `ignore`), every other type its default. Events accepted from now on
/// follow them; events already accepted keep the effect they were accepted with.
/// `device.seen` has no effect to choose.
#[utoipa::path(
    tag = "lifecycle",
    operation_id = "put_lifecycle_settings",
    security(("bearer" = ["accounts:manage"])),
    params(("space" = String, Path, description = "Space id")),
    request_body = LifecycleSettingsBody,
    responses(
        (status = 200, description = "The settings now", body = LifecycleSettings),
        (status = 404, description = "Unknown space"),
        (status = 422, description = "A type named twice or not configurable, or a grace period missing, given without `revoke_after`, or out of range"),
    )
)]
#[put("/v1/spaces/{space}/lifecycle-settings")]
pub async fn put_lifecycle_settings(
    access: SpaceAccess<needs::AccountsManage>,
    state: web::Data<AppState>,
    body: Json<LifecycleSettingsBody>,
) -> Result<web::Json<LifecycleSettings>, ApiError> {
    let (caller, space) = access.into_parts();
    let mut errors = Vec::new();
    let mut rows: Vec<SettingRow> = Vec::new();
    for (i, e) in body.0.effects.iter().enumerate() {
        let field = |f: &str| format!("effects[{i}].{f}");
        if !e.type_.configurable() {
            errors.push(FieldError {
                field: field("type"),
                message: format!("{} has no effect to choose", e.type_),
            });
        }
        if rows.iter().any(|r| r.event_type == e.type_.as_str()) {
            errors.push(FieldError {
                field: field("type"),
                message: format!("{} is named twice", e.type_),
            });
        }
        match (e.effect, e.grace_seconds) {
            (Effect::RevokeAfter, None) => errors.push(FieldError {
                field: field("grace_seconds"),
                message: "required with revoke_after".into(),
            }),
            (Effect::RevokeAfter, Some(g)) if !(1..=31_536_000).contains(&g) => {
                errors.push(FieldError {
                    field: field("grace_seconds"),
                    message: "must be 1 to 31536000 seconds".into(),
                })
            }
            (Effect::RevokeNow | Effect::Ignore, Some(_)) => errors.push(FieldError {
                field: field("grace_seconds"),
                message: "only with revoke_after".into(),
            }),
            _ => {}
        }
        rows.push(SettingRow {
            event_type: e.type_.as_str().to_owned(),
            effect: e.effect.as_str().to_owned(),
            grace_seconds: e.grace_seconds,
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let mut conn = state.pool.get().await?;
    let settings = usecase::put_settings(&mut conn, &space, rows, &caller.origin()).await?;
    Ok(web::Json(settings_view(&settings)))
}
