//! Sync runs of an account (rule T5; docs/sync.md): `POST …/accounts/{account}/sync` (Refresh:
//! always full) answers `202` with the run to poll (`Location`); the account's runs, newest
//! first; one run.
//!
//! - Asking while a run is queued or running answers that run (`202`, same id); a queued
//!   incremental run becomes full.
//! - Runs are read through their account: a run of another space's account, or of another
//!   account, is a 404 like an unknown one.
//! - The list is keyset-paged on `(requested_at, id)` (cursor list `sync-runs:{space}:{account}`).

use actix_web::http::header;
use actix_web::{HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{SpaceAccess, needs};
use crate::domain::reconciliation::{DriftCounts, SyncKind, SyncState, SyncTrigger};
use crate::http::pagination::{PageQuery, next_cursor};
use crate::http::problem::ApiError;
use crate::ledger::accounts as account_store;
use crate::ledger::sync_runs::{self as store, SyncRunRow};
use crate::state::AppState;
use crate::sync::{self, SyncError};

/// One sync of an account: what it read from Apple and what it found.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SyncRun {
    pub id: Uuid,
    pub account_id: Uuid,
    /// `full` (everything, finds removals) or `incremental` (changes since the last read).
    pub kind: SyncKind,
    /// What asked for it.
    pub trigger: SyncTrigger,
    /// The caller's JWT `sub`, or `system`.
    pub requested_by: String,
    pub state: SyncState,
    /// Attempts so far (transient failures are retried, at most 5 attempts).
    pub attempts: i32,
    pub requested_at: DateTime<Utc>,
    #[schema(required = true)]
    pub started_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub finished_at: Option<DateTime<Utc>>,
    /// Apple requests made by the last attempt.
    pub requests: i32,
    /// Pages of Apple's lists read by the last attempt.
    pub pages_read: i32,
    /// What the run read and changed: `assets_read`, `assignments_read`, `mirror_inserted`,
    /// `mirror_deleted`, `assets_appeared`, `assets_vanished`, `assets_overcommitted`,
    /// `counts_changed`, `foreign_changed`, `users_changed`, `version_moved` (Apple's
    /// versionId moved during the read: nothing unseen was deleted), `fell_back_to_full`.
    #[schema(value_type = Object)]
    pub stats: serde_json::Value,
    /// Drift found, per class (when the run succeeded).
    #[schema(required = true)]
    pub drift: Option<DriftCounts>,
    /// Why it failed, or the last transient error of a run waiting to be retried
    /// (`reason`, `attempt`, `retry_at`).
    #[schema(value_type = Option<Object>, required = true)]
    pub error: Option<serde_json::Value>,
}

impl From<SyncRunRow> for SyncRun {
    fn from(r: SyncRunRow) -> Self {
        let drift = (r.state == SyncState::Succeeded)
            .then(|| serde_json::from_value(r.drift).ok())
            .flatten();
        SyncRun {
            id: r.id,
            account_id: r.account_id,
            kind: r.kind,
            trigger: r.trigger,
            requested_by: r.requested_by,
            state: r.state,
            attempts: r.attempts,
            requested_at: r.requested_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            requests: r.requests,
            pages_read: r.pages_read,
            stats: r.stats,
            drift,
            error: r.error,
        }
    }
}

/// One page of an account's sync runs, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SyncRunPage {
    pub items: Vec<SyncRun>,
    /// Pass as `cursor` to get the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next_cursor: Option<String>,
}

impl From<SyncError> for ApiError {
    fn from(err: SyncError) -> Self {
        match err {
            SyncError::NotFound(id) => ApiError::not_found(format!("account {id}")),
            SyncError::Db(e) => e.into(),
            SyncError::Pool(e) => e.into(),
        }
    }
}

fn location(space: &str, account: Uuid, run: Uuid) -> String {
    format!("/v1/spaces/{space}/accounts/{account}/sync-runs/{run}")
}

/// Sync the account with Apple now (Refresh): a full sync.
///
/// Queues a full sync of the account and answers at once with the run to poll (`Location`).
/// While a sync of the account is queued or running, that run is answered (a queued incremental
/// run becomes full). The sync reads every asset with its counts, every assignment and the
/// users, then updates the counts, what is assigned elsewhere and the drift report.
#[utoipa::path(
    tag = "accounts",
    operation_id = "sync_account",
    security(("bearer" = ["accounts:manage"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("account" = Uuid, Path, description = "Account id"),
    ),
    responses(
        (status = 202, description = "The sync run (queued, or the one already queued or running); `Location` names it", body = SyncRun),
    )
)]
#[post("/v1/spaces/{space}/accounts/{account}/sync")]
pub async fn sync_account(
    access: SpaceAccess<needs::AccountsManage, (String, Uuid)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (caller, (space, account)) = access.into_parts();
    let (run, _) = sync::request(
        &state,
        &caller.origin(),
        &space,
        account,
        SyncKind::Full,
        SyncTrigger::Manual,
    )
    .await?;
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, location(&space, account, run.id)))
        .json(SyncRun::from(run)))
}

/// List the account's sync runs, newest first.
///
/// Scheduled, attach-time, token-replacement and manual runs alike, with their state, what they
/// read and found; paged with `limit` and `cursor` like every list.
#[utoipa::path(
    tag = "accounts",
    operation_id = "list_sync_runs",
    security(("bearer" = ["licenses:read"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("account" = Uuid, Path, description = "Account id"),
        PageQuery,
    ),
    responses((status = 200, description = "A page of the account's sync runs, newest first", body = SyncRunPage))
)]
#[get("/v1/spaces/{space}/accounts/{account}/sync-runs")]
pub async fn list_sync_runs(
    access: SpaceAccess<needs::LicensesRead, (String, Uuid)>,
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<web::Json<SyncRunPage>, ApiError> {
    let (space, account) = access.path;
    let list = format!("sync-runs:{space}:{account}");
    let limit = query.limit()?;
    let after: Option<(DateTime<Utc>, Uuid)> = query.after(&list)?;
    let mut conn = state.pool.get().await?;
    if account_store::find(&mut conn, &space, account)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(format!("account {account}")));
    }
    let rows = store::list(&mut conn, &space, account, after, limit).await?;
    let next = next_cursor(
        &list,
        rows.len(),
        limit,
        rows.last().map(|r| (r.requested_at, r.id)),
    );
    Ok(web::Json(SyncRunPage {
        items: rows.into_iter().map(SyncRun::from).collect(),
        next_cursor: next,
    }))
}

/// Read one sync run of the account.
///
/// Poll it after `POST …/sync` until `state` is `succeeded` or `failed`: `stats` and `drift` say
/// what it read, changed and found; `error` why it failed or is being retried.
#[utoipa::path(
    tag = "accounts",
    operation_id = "get_sync_run",
    security(("bearer" = ["licenses:read"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("account" = Uuid, Path, description = "Account id"),
        ("run" = Uuid, Path, description = "Sync run id"),
    ),
    responses((status = 200, description = "The sync run", body = SyncRun))
)]
#[get("/v1/spaces/{space}/accounts/{account}/sync-runs/{run}")]
pub async fn get_sync_run(
    access: SpaceAccess<needs::LicensesRead, (String, Uuid, Uuid)>,
    state: web::Data<AppState>,
) -> Result<web::Json<SyncRun>, ApiError> {
    let (space, account, run) = access.path;
    let mut conn = state.pool.get().await?;
    store::get(&mut conn, &space, account, run)
        .await?
        .map(|r| web::Json(SyncRun::from(r)))
        .ok_or_else(|| ApiError::not_found(format!("sync run {run}")))
}
