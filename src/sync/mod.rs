//! The sync use case (rule T5; docs/sync.md): asking for a sync of an account, and running one
//! claimed sync run — read Apple ([`read`]), then apply what was read ([`apply`]).
//!
//! Decisions:
//! - **Failures**: a transient one (Apple 5xx or unreachable, 429 / Retry-After, an account
//!   that cannot call Apple now, a database error) postpones the run with backoff (it stays
//!   `queued`, `error` says why) until [`MAX_ATTEMPTS`] attempts, then it fails; anything else
//!   (Apple refusing the request, an sToken that cannot be decrypted) fails it at once. Apple's
//!   answers about the account (a Retry-After, a refused token) are recorded on it, as the
//!   dispatcher does.
//! - **Nothing half applied**: a failed or postponed run applied nothing (the apply is the last
//!   step and its transactions are idempotent).

pub mod apply;
pub mod read;

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

use crate::apple::error::{AppleError, ErrorClass};
use crate::domain::account_status as status;
use crate::domain::origin::Origin;
use crate::domain::reconciliation::{SyncKind, SyncState, SyncTrigger};
use crate::ledger::accounts as account_store;
use crate::ledger::activity::{self, Activity};
use crate::ledger::apple_mirror as mirror;
use crate::ledger::sync_runs::{self, Claimed, Finish, MAX_ATTEMPTS, Progress, SyncRunRow};
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    #[error(transparent)]
    Pool(#[from] diesel_async::pooled_connection::deadpool::PoolError),
    #[error("account {0} not found")]
    NotFound(Uuid),
}

/// What a sync run needs besides the state.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Pending / associating / revoking for longer than this is `stuck` drift.
    pub stuck_after: Duration,
    /// Cap of the retry backoff of transient failures.
    pub max_backoff: Duration,
}

impl Settings {
    pub fn from_state(state: &AppState, max_backoff: Duration) -> Settings {
        Settings {
            stuck_after: Duration::from_secs(state.reconciliation.stuck_minutes * 60),
            max_backoff,
        }
    }
}

/// Asks for a sync of the space's account (`POST …/sync`, attach, token replacement): the
/// account's queued or running run, or a new one. A manual request is recorded in the activity
/// log (`sync.requested`). Returns the run and whether it is new.
pub async fn request(
    state: &AppState,
    origin: &Origin,
    space: &str,
    account: Uuid,
    kind: SyncKind,
    trigger: SyncTrigger,
) -> Result<(SyncRunRow, bool), SyncError> {
    let mut conn = state.pool.get().await?;
    if account_store::find(&mut conn, space, account)
        .await?
        .is_none()
    {
        return Err(SyncError::NotFound(account));
    }
    let (run, created) =
        sync_runs::request(&mut conn, space, account, kind, trigger, origin).await?;
    if trigger == SyncTrigger::Manual {
        activity::record(
            &mut conn,
            Activity::new(origin, "sync.requested")
                .space(space)
                .account(account)
                .details(json!({
                    "run": run.id,
                    "kind": run.kind,
                    "trigger": trigger,
                    "new": created,
                })),
        )
        .await?;
    }
    Ok((run, created))
}

/// How a claimed run ended.
#[derive(Debug)]
pub enum Outcome {
    /// Succeeded or failed (see the row).
    Finished(Box<SyncRunRow>),
    /// Queued again until then (a transient failure).
    Postponed(chrono::DateTime<Utc>),
    /// This worker lost the job to another one; nothing was applied.
    Lost,
}

/// Runs a claimed sync: reads Apple, applies what it read, finishes the run (or postpones it).
pub async fn run(
    state: &AppState,
    claimed: &Claimed,
    worker: &str,
    settings: &Settings,
) -> Result<Outcome, SyncError> {
    let run = &claimed.run;
    let account = {
        let mut conn = state.pool.get().await?;
        account_store::by_id(&mut conn, run.account_id).await?
    };
    let Some(account) = account else {
        return fail(
            state,
            claimed,
            worker,
            "the account no longer exists",
            Progress::default(),
        )
        .await;
    };
    if account.delete_requested_at.is_some() {
        return fail(
            state,
            claimed,
            worker,
            "the account is being deleted",
            Progress::default(),
        )
        .await;
    }
    let now = Utc::now();
    let effective = status::next(&account.status_state(), account.token_expires_at, None, now);
    if !effective.status.allows_apple_calls() {
        let until = match (effective.status, effective.throttled_until) {
            (status::AccountStatus::Throttled, Some(t)) => Some(t),
            _ => None,
        };
        let reason = format!("the account cannot call Apple ({})", effective.status);
        return transient(
            state,
            claimed,
            worker,
            settings,
            reason,
            until,
            Progress::default(),
        )
        .await;
    }
    let token = match state
        .cipher
        .open(account.id.as_bytes(), &account.sealed_token())
    {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(account = %account.id, error = %e, "cannot decrypt the account's sToken");
            let reason = format!("cannot decrypt the account's sToken: {e}");
            return fail(state, claimed, worker, &reason, Progress::default()).await;
        }
    };
    let (known, started_at) = {
        let mut conn = state.pool.get().await?;
        let (assignments_version, assets_version, users_version) =
            mirror::versions(&mut conn, account.id).await?;
        let users = mirror::uses_user_licenses(&mut conn, account.id).await?;
        let started_at = mirror::db_now(&mut conn).await?;
        (
            read::Known {
                assignments_version,
                assets_version,
                users_version,
                users,
            },
            started_at,
        )
    };
    let apple = state.apple.background();
    let mut counters = read::Counters::default();
    let result = read::read(&apple, &token, run.kind, &known, started_at, &mut counters).await;
    let progress = Progress {
        requests: counters.requests as i32,
        pages_read: counters.pages as i32,
    };
    let read = match result {
        Ok(read) => read,
        Err(e) => {
            return apple_failed(state, claimed, worker, settings, &account, e, progress).await;
        }
    };
    if let Some(meta) = &read.meta
        && let Err(e) = crate::accounts::ownership::notice(
            &state.pool,
            &state.identity,
            account.id,
            meta,
            "GET /client/config",
        )
        .await
    {
        tracing::warn!(account = %account.id, error = %e, "cannot record the location's owner");
    }
    let mut conn = state.pool.get().await?;
    match apply::apply(&mut conn, claimed, worker, &read, settings).await? {
        Some(row) => Ok(Outcome::Finished(Box::new(row))),
        None => Ok(Outcome::Lost),
    }
}

/// An Apple failure: recorded on the account (Retry-After, a refused token), then the run is
/// postponed (transient) or failed.
async fn apple_failed(
    state: &AppState,
    claimed: &Claimed,
    worker: &str,
    settings: &Settings,
    account: &account_store::AccountRow,
    err: AppleError,
    progress: Progress,
) -> Result<Outcome, SyncError> {
    let now = Utc::now();
    if let Some(observation) = crate::accounts::observe_error(&err, now) {
        let mut conn = state.pool.get().await?;
        let next = status::next(
            &account.status_state(),
            account.token_expires_at,
            Some(&observation),
            now,
        );
        account_store::save_status(&mut conn, account, &next, &Origin::system()).await?;
    }
    let class = err.class();
    match class {
        ErrorClass::RateLimited { retry_after } | ErrorClass::Transient { retry_after } => {
            let until =
                retry_after.map(|d| now + chrono::Duration::from_std(d).unwrap_or_default());
            transient(
                state,
                claimed,
                worker,
                settings,
                err.to_string(),
                until,
                progress,
            )
            .await
        }
        // The account is now unusable: the next attempt waits for it (and gives up after
        // MAX_ATTEMPTS).
        ErrorClass::Auth(_) => {
            transient(
                state,
                claimed,
                worker,
                settings,
                err.to_string(),
                None,
                progress,
            )
            .await
        }
        _ => fail(state, claimed, worker, &err.to_string(), progress).await,
    }
}

/// A transient failure: postponed with backoff (or until `until`), or failed after
/// [`MAX_ATTEMPTS`]; nothing is recorded when this worker no longer holds the job.
async fn transient(
    state: &AppState,
    claimed: &Claimed,
    worker: &str,
    settings: &Settings,
    reason: String,
    until: Option<chrono::DateTime<Utc>>,
    progress: Progress,
) -> Result<Outcome, SyncError> {
    if claimed.attempts >= MAX_ATTEMPTS {
        let reason = format!("gave up after {} attempts: {reason}", claimed.attempts);
        return fail(state, claimed, worker, &reason, progress).await;
    }
    let backoff =
        Duration::from_secs(5u64 << claimed.attempts.clamp(0, 16)).min(settings.max_backoff);
    let at = until
        .unwrap_or_else(|| Utc::now() + chrono::Duration::from_std(backoff).unwrap_or_default());
    let mut conn = state.pool.get().await?;
    let postponed = sync_runs::postpone(
        &mut conn,
        claimed.job_id,
        worker,
        claimed.run.id,
        at,
        progress,
        &json!({"reason": reason, "attempt": claimed.attempts, "retry_at": at}),
    )
    .await?;
    if !postponed {
        return Ok(Outcome::Lost);
    }
    tracing::info!(run = %claimed.run.id, %reason, retry_at = %at, "sync postponed");
    Ok(Outcome::Postponed(at))
}

/// Fails the run (nothing was applied), unless this worker no longer holds its job.
async fn fail(
    state: &AppState,
    claimed: &Claimed,
    worker: &str,
    reason: &str,
    progress: Progress,
) -> Result<Outcome, SyncError> {
    let run = &claimed.run;
    let mut conn = state.pool.get().await?;
    let error = json!({"reason": reason, "attempt": claimed.attempts});
    let row = diesel_async::AsyncConnection::transaction(&mut *conn, async |conn| {
        // A worker whose lease another one took over records nothing. (A job that is gone —
        // its account was deleted — still ends its run.)
        if sync_runs::taken_over(conn, claimed.job_id, worker).await? {
            return Ok::<_, diesel::result::Error>(None);
        }
        let row = sync_runs::finish(
            conn,
            claimed.job_id,
            run.id,
            run.account_id,
            &Finish {
                state: SyncState::Failed,
                kind: run.kind,
                progress,
                stats: json!({}),
                drift: json!({}),
                error: Some(error.clone()),
                version_before: None,
                version_after: None,
            },
        )
        .await?;
        activity::record(
            conn,
            Activity::new(&Origin::system(), "sync.finished")
                .space(&run.space_id)
                .account(run.account_id)
                .details(json!({
                    "run": run.id,
                    "kind": run.kind,
                    "trigger": run.trigger,
                    "state": SyncState::Failed,
                    "error": error,
                })),
        )
        .await?;
        Ok(Some(row))
    })
    .await?;
    let Some(row) = row else {
        return Ok(Outcome::Lost);
    };
    tracing::warn!(run = %run.id, account = %run.account_id, %reason, "sync failed");
    Ok(Outcome::Finished(Box::new(row)))
}
