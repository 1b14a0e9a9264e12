//! Dead letters (issue 10): Apple jobs that failed `VPP_JOB_MAX_ATTEMPTS` times (default 100,
//! about 7 hours of failures at the 5-minute backoff cap) are set aside instead of being retried
//! forever. They are listed per space (through their account), oldest first, and retried by
//! hand once the cause is fixed; `apple_jobs_dead` (gauge, per kind) and
//! `apple_jobs_dead_lettered_total` count them for alerting. The work of a dead letter waits
//! meanwhile: its assignment stays `pending`, `associating` or `revoking` (the drift report lists
//! it as `stuck`; a Repair plan queues its work anew) and keeps its license in the ledger. A dead
//! release (or the dead poll of a release's event) also keeps the license it frees from being
//! re-used at Apple: the asset's associations beyond Apple's free count wait for it (A11), their
//! jobs saying so in `last_error`. Only failed attempts count (`failures`): a pending event's
//! polls and an account's waits (throttled, token trouble, a key that cannot open its sToken)
//! never make a dead letter.

use actix_web::{get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::spaces::require_space;
use crate::auth::{SpaceAccess, needs};
use crate::http::pagination::{PageQuery, next_cursor};
use crate::http::problem::ApiError;
use crate::ledger::dead_letters::{self as store, DeadLetterRow, DeadLetterState};
use crate::ledger::jobs::JobKind;
use crate::state::AppState;

/// An Apple job set aside after failing too often, or the answer to retrying one.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeadLetter {
    pub id: i64,
    /// `associate` / `disassociate` (an assignment's license at Apple), `poll_event` (following
    /// an Apple event to its end), `retire_user`.
    pub kind: JobKind,
    /// `dead`; after a retry `queued` (it runs again now), or `superseded` (a user's
    /// retirement queued again meanwhile does its work; this one was dropped).
    pub state: DeadLetterState,
    pub account_id: Uuid,
    /// The assignment whose association or release it is.
    #[schema(required = true)]
    pub assignment_id: Option<Uuid>,
    #[schema(required = true)]
    pub adam_id: Option<String>,
    #[schema(required = true)]
    pub pricing_param: Option<String>,
    /// The Apple event a status poll follows.
    #[schema(required = true)]
    pub event_id: Option<String>,
    /// Failed attempts (reset to 0 by a retry).
    pub failures: i32,
    /// The last failure, as the service saw it (no secrets).
    #[schema(required = true)]
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When it was set aside (absent once retried).
    #[schema(required = true)]
    pub dead_at: Option<DateTime<Utc>>,
}

impl From<DeadLetterRow> for DeadLetter {
    fn from(r: DeadLetterRow) -> Self {
        DeadLetter {
            id: r.id,
            kind: r.kind,
            state: r.state,
            account_id: r.account_id,
            assignment_id: r.assignment_id,
            adam_id: r.adam_id,
            pricing_param: r.pricing_param,
            event_id: r.event_id,
            failures: r.failures,
            last_error: r.last_error,
            created_at: r.created_at,
            dead_at: r.dead_at,
        }
    }
}

/// A page of dead letters.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterPage {
    /// Oldest first.
    pub items: Vec<DeadLetter>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadLettersQuery {
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// List the space's dead letters: Apple jobs set aside after failing too often.
///
/// An Apple job (an association, a release, following an event, retiring a user) that failed
/// `VPP_JOB_MAX_ATTEMPTS` times in all is no longer retried by itself; its work
/// waits here, oldest first, with the last error, until it is retried.
#[utoipa::path(
    tag = "accounts",
    operation_id = "list_dead_letters",
    security(("bearer" = ["licenses:read"])),
    params(("space" = String, Path, description = "Space id"), DeadLettersQuery),
    responses(
        (status = 200, description = "A page of dead letters, oldest first", body = DeadLetterPage),
        (status = 400, description = "A cursor this API did not issue for this list, `limit` out of range (`invalid-parameter`)"),
    )
)]
#[get("/v1/spaces/{space}/dead-letters")]
pub async fn list_dead_letters(
    access: SpaceAccess<needs::LicensesRead>,
    state: web::Data<AppState>,
    query: web::Query<DeadLettersQuery>,
) -> Result<web::Json<DeadLetterPage>, ApiError> {
    let space = access.path;
    let q = query.into_inner();
    let list = format!("dead-letters:{space}");
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let after: Option<i64> = page.after(&list)?;
    let mut conn = state.pool.get().await?;
    require_space(&mut conn, &space).await?;
    let rows = store::list(&mut conn, &space, after, limit).await?;
    let next = next_cursor(&list, rows.len(), limit, rows.last().map(|r| r.id));
    Ok(web::Json(DeadLetterPage {
        items: rows.into_iter().map(DeadLetter::from).collect(),
        next_cursor: next,
    }))
}

/// Read one dead letter.
///
/// The job as it was set aside: what it does, for which account, assignment, asset or Apple
/// event, how often it was tried, the last error and when it was set aside.
#[utoipa::path(
    tag = "accounts",
    operation_id = "get_dead_letter",
    security(("bearer" = ["licenses:read"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("dead_letter" = i64, Path, description = "Dead letter (job) id"),
    ),
    responses((status = 200, description = "The dead letter", body = DeadLetter))
)]
#[get("/v1/spaces/{space}/dead-letters/{dead_letter}")]
pub async fn get_dead_letter(
    access: SpaceAccess<needs::LicensesRead, (String, i64)>,
    state: web::Data<AppState>,
) -> Result<web::Json<DeadLetter>, ApiError> {
    let (space, id) = access.path;
    let mut conn = state.pool.get().await?;
    store::get(&mut conn, &space, id)
        .await?
        .map(|r| web::Json(DeadLetter::from(r)))
        .ok_or_else(|| ApiError::not_found(format!("dead letter {id}")))
}

/// Retry a dead letter.
///
/// Queues the job again, now, with its failures reset; the dispatcher takes it up within its
/// idle poll. Retry once the cause in `last_error` is fixed: if it fails as often again, it
/// comes back here.
#[utoipa::path(
    tag = "accounts",
    operation_id = "retry_dead_letter",
    security(("bearer" = ["accounts:manage"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("dead_letter" = i64, Path, description = "Dead letter (job) id"),
    ),
    responses((status = 200, description = "Queued again (`state: queued`), or dropped because an identical job is queued (`state: superseded`)", body = DeadLetter))
)]
#[post("/v1/spaces/{space}/dead-letters/{dead_letter}/retry")]
pub async fn retry_dead_letter(
    access: SpaceAccess<needs::AccountsManage, (String, i64)>,
    state: web::Data<AppState>,
) -> Result<web::Json<DeadLetter>, ApiError> {
    let (space, id) = access.path;
    let mut conn = state.pool.get().await?;
    let retried = store::retry(&mut conn, &space, id)
        .await?
        .map(|r| web::Json(DeadLetter::from(r)))
        .ok_or_else(|| ApiError::not_found(format!("dead letter {id}")))?;
    tracing::info!(space = %space, job = id, "dead letter retried");
    Ok(retried)
}
