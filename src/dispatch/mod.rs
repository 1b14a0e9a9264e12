//! The Apple dispatcher: background workers that turn queued jobs into Apple requests and
//! follow Apple's events to the end (rules T7, T10, A10 in docs/rules.md).
//!
//! Every `serve` process runs `VPP_WORKERS` workers. Coordination goes through PostgreSQL only:
//! - a worker becomes the dispatcher of one account at a time through a session advisory lock
//!   held on its own dedicated connection, so across all replicas one worker talks to Apple for
//!   an account (batches are as large as possible and the per-token rate limit holds); a worker
//!   that dies loses its session and with it the lock;
//! - it leases the account's queued jobs (`locked_until`); a lease that expires (the worker was
//!   killed mid-batch) makes the jobs claimable again, and re-submission is harmless;
//! - an account that cannot call Apple (expired, revoked, not owned, throttled) keeps its jobs
//!   queued until it can (A10): nothing is dropped. A Retry-After pauses that account only (T7).
//!
//! Each iteration: pick an account with due jobs → lock it → lease its due work → releases, then
//! associations, grouped into chunks (see [`batch`]) and sent up to `concurrency` at a time (the
//! Apple client paces them to Apple's `maxRequestPerSecond`) → event polls, whose results are
//! settled by the settlement use case ([`crate::settle`], which Apple's notifications feed too).
//! The statements are the store's (`ledger::jobs`, `ledger::submissions`, …).
//!
//! Beside them each process runs one wait-list worker ([`waitlist`], rule A12) that serves the
//! lines of allocations waiting for a license when one frees, and one bulk worker ([`bulk`],
//! rule V6) that works through bulk operations a chunk at a time, one event sequencer
//! ([`events`], issue 15) that turns finished activity rows into the feed's events (one
//! round at a time across replicas), and one notifier ([`notices`], N1, N2) that raises and
//! clears the notifications every `VPP_NOTIFICATION_SECS`.
//!
//! Batching: an account's queued work for one asset, license type and kind (association or
//! release) is one *batch*. Batches are sent when the account's burst of their kind is over (no
//! association, or no release, joined any of its batches for `quiet`, 250 ms by default; for
//! releases also no lifecycle event of the account's space left to apply, since the lifecycle
//! worker commits a burst of revocations batch after batch), when
//! their oldest work waited `max_wait` (5 s), or, during a burst, as full Apple requests (1000
//! targets; the partial rest waits). An asset's releases also leave with an association of the
//! same asset that leaves, and before it, when Apple's count of the asset is tight (the ledger's
//! live licenses, those assigned elsewhere and the releases queued exceed Apple's total), so the
//! licenses they free reach Apple's free count as early as they can; otherwise releases keep to
//! their own batches, and a storm of revocations goes out in full requests. An association that needs a license the ledger freed but Apple
//! has not released yet (its release's event has not finished: it waited for its own
//! association, or was retried) waits until it has (A11, [`batch::plan`]): the service never
//! causes a 9709 itself. A lone allocation or revocation reaches Apple after
//! ~`quiet`; a storm spread over many assets (10,000 retired devices' 30,000 licenses) goes out
//! in as few requests as Apple's limits allow, because no asset's batch leaves half-filled
//! while the storm goes on. A steady trickle on one asset delays the account's other partial
//! batches by at most `max_wait`.

pub mod batch;
pub mod bulk;
pub mod events;
pub mod lifecycle;
pub mod maintenance;
pub mod notices;
pub mod retire;
pub mod retry;
pub mod sync;
pub mod users;
pub mod waitlist;
pub mod webhooks;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::accounts::AccountError;
use crate::apple::error::{AppleError, ErrorClass};
use crate::apple::stoken::SToken;
use crate::config::DispatchArgs;
use crate::domain::account_status as status;
use crate::domain::origin::Origin;
use crate::ledger::accounts::{self as store, AccountRow};
use crate::ledger::apple_events;
use crate::ledger::jobs::{self, ClaimedJob, Job, PollEvent};
use crate::settle::{self, SettleError};
use crate::state::AppState;
use batch::Sent;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Apple(#[from] AppleError),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    #[error(transparent)]
    Pool(#[from] diesel_async::pooled_connection::deadpool::PoolError),
    #[error(transparent)]
    Connect(#[from] diesel::ConnectionError),
    #[error(transparent)]
    Settle(#[from] SettleError),
    /// Recording what an Apple answer says about the account (its owner) failed.
    #[error(transparent)]
    Account(#[from] AccountError),
    /// [`drain`] gave up with work left.
    #[error("{remaining} jobs left after {timeout:?}")]
    Undrained { remaining: i64, timeout: Duration },
}

/// Dispatcher tunables (all from the command line / environment).
#[derive(Clone, Debug)]
pub struct Settings {
    pub database_url: String,
    pub workers: usize,
    /// Sleep between looks for work when idle.
    pub idle_poll: Duration,
    /// How long claimed jobs stay leased before another worker may take them over.
    pub lease: Duration,
    /// An account's batches (its queued work per asset, license type and kind) are sent once
    /// no work of their kind (association, release) joined any of them for this long ...
    pub quiet: Duration,
    /// ... or a batch's oldest work waited this long; full requests go during a burst.
    pub max_wait: Duration,
    /// Apple requests in flight per account.
    pub concurrency: usize,
    /// First status poll of an event, doubling up to `max_poll`.
    pub first_poll: Duration,
    pub max_poll: Duration,
    /// Cap of the retry backoff for transient failures.
    pub max_backoff: Duration,
    /// Failed attempts after which a job becomes a dead letter (0: never).
    pub max_attempts: i32,
    /// Jobs leased per iteration.
    pub max_claim: i64,
    /// Sync workers of this process (0: none).
    pub sync_workers: usize,
    /// Time between incremental syncs of an account.
    pub sync_incremental: Duration,
    /// Time between full syncs of an account (jittered per account).
    pub sync_full: Duration,
    /// Time between two looks of the sync scheduler.
    pub sync_schedule: Duration,
    /// How long the event feed keeps events (maintenance forgets older ones).
    pub event_retention: Duration,
    /// Time between two evaluations of the notifications (zero: this process runs none).
    pub notifications_every: Duration,
}

impl Settings {
    /// The dispatcher's settings from its command-line / environment arguments.
    pub fn from_args(args: &DispatchArgs, database_url: &str) -> Settings {
        Settings {
            database_url: database_url.to_owned(),
            workers: args.workers as usize,
            idle_poll: Duration::from_millis(args.idle_poll_ms),
            lease: Duration::from_secs(args.job_lease_secs),
            quiet: Duration::from_millis(args.batch_quiet_ms),
            max_wait: Duration::from_millis(args.batch_max_wait_ms.max(args.batch_quiet_ms)),
            concurrency: args.apple_concurrency as usize,
            first_poll: Duration::from_secs(args.event_poll_secs),
            max_poll: Duration::from_secs(args.event_poll_max_secs.max(args.event_poll_secs)),
            max_backoff: Duration::from_secs(300),
            max_attempts: i32::try_from(args.job_max_attempts).unwrap_or(i32::MAX),
            max_claim: 20_000,
            sync_workers: args.sync_workers as usize,
            sync_incremental: Duration::from_secs(args.sync_incremental_minutes * 60),
            sync_full: Duration::from_secs(args.sync_full_hours * 3600),
            sync_schedule: Duration::from_secs(args.sync_schedule_secs),
            event_retention: Duration::from_secs(args.event_retention_days * 86_400),
            notifications_every: Duration::from_secs(args.notification_secs),
        }
    }
}

/// What every worker of a process shares.
pub struct Ctx {
    pub state: Arc<AppState>,
    pub settings: Settings,
    pub worker: String,
    /// When a worker of this process last looked for due work and found none: the others
    /// skip their look until `idle_poll` has passed since (one look per interval per process).
    nothing_due_at: std::sync::Mutex<Option<Instant>>,
}

impl Ctx {
    pub fn new(state: Arc<AppState>, settings: Settings) -> Arc<Ctx> {
        Arc::new(Ctx {
            state,
            settings,
            worker: format!("{}-{}", hostname(), std::process::id()),
            nothing_due_at: std::sync::Mutex::new(None),
        })
    }

    fn looked_lately(&self) -> bool {
        let at = *self
            .nothing_due_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        at.is_some_and(|t| t.elapsed() < self.settings.idle_poll)
    }

    fn found_nothing_due(&self) {
        *self
            .nothing_due_at
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "vpp-broker".into())
}

/// Starts the workers; they stop when `cancel` fires (finishing the request in hand).
pub fn spawn(ctx: Arc<Ctx>, cancel: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
    let mut handles = Vec::new();
    for i in 0..ctx.settings.workers {
        let ctx = ctx.clone();
        let cancel = cancel.clone();
        handles.push(tokio::spawn(async move { worker(ctx, i, cancel).await }));
    }
    if ctx.settings.workers > 0 {
        handles.push(tokio::spawn(maintenance::run(ctx.clone(), cancel.clone())));
        handles.push(tokio::spawn(lifecycle::run(ctx.clone(), cancel.clone())));
        handles.push(tokio::spawn(waitlist::run(ctx.clone(), cancel.clone())));
        handles.push(tokio::spawn(bulk::run(ctx.clone(), cancel.clone())));
        handles.push(tokio::spawn(events::run(ctx.clone(), cancel.clone())));
        if !ctx.settings.notifications_every.is_zero() {
            handles.push(tokio::spawn(notices::run(ctx.clone(), cancel.clone())));
        }
    }
    handles.extend(sync::spawn(ctx, cancel));
    handles
}

/// Records what an Apple error says about the whole account (expired or revoked token,
/// Retry-After: T7, A10) and returns the account's new status.
async fn record_observation(
    conn: &mut AsyncPgConnection,
    account: &AccountRow,
    observation: &status::Observation,
    now: chrono::DateTime<Utc>,
) -> Result<status::StatusState, DispatchError> {
    let next = status::next(
        &account.status_state(),
        account.token_expires_at,
        Some(observation),
        now,
    );
    store::save_status(conn, account, &next, &Origin::system()).await?;
    Ok(next)
}

/// How the dispatcher's own sessions name themselves in `pg_stat_activity`.
const DISPATCH_SESSION: &str = "SET application_name = 'vpp-broker dispatcher'";

async fn worker(ctx: Arc<Ctx>, index: usize, cancel: CancellationToken) {
    let mut conn: Option<AsyncPgConnection> = None;
    tracing::info!(worker = index, "dispatcher worker started");
    while !cancel.is_cancelled() {
        if conn.is_none() {
            match crate::db::pool::open(&ctx.settings.database_url, DISPATCH_SESSION).await {
                Ok(c) => conn = Some(c),
                Err(e) => tracing::warn!(error = %e, "dispatcher cannot connect; retrying"),
            }
        }
        let worked = match conn.as_mut() {
            Some(c) => match run_once(&ctx, c).await {
                Ok(worked) => worked,
                Err(e) => {
                    tracing::warn!(error = %e, "dispatcher iteration failed");
                    conn = None;
                    false
                }
            },
            None => false,
        };
        if worked {
            // Its commits may have written activity rows: wake the event sequencer.
            crate::events::wake::activity_written();
        } else {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(ctx.settings.idle_poll) => {}
            }
        }
    }
    tracing::info!(worker = index, "dispatcher worker stopped");
}

/// One look for work. True when something was processed.
pub async fn run_once(ctx: &Ctx, conn: &mut AsyncPgConnection) -> Result<bool, DispatchError> {
    if ctx.looked_lately() {
        return Ok(false);
    }
    // An idle dispatcher neither groups anything nor calls Apple (for the service config).
    if !jobs::any_ready(conn).await? {
        ctx.found_nothing_due();
        return Ok(false);
    }
    let due = jobs::due_accounts(conn, &batching(ctx).await, 16).await?;
    if due.is_empty() {
        ctx.found_nothing_due();
    }
    for account in due {
        if !jobs::try_lock_account(conn, account).await? {
            continue;
        }
        let result = process_account(ctx, conn, account).await;
        let unlocked = jobs::unlock_account(conn, account).await;
        let worked = result?;
        unlocked?;
        if worked {
            return Ok(true);
        }
    }
    Ok(false)
}

/// How work is grouped into Apple requests, by the limits of Apple's service config (fetched
/// unless cached; the last known limits when Apple does not answer).
async fn batching(ctx: &Ctx) -> jobs::Batching {
    let config = match ctx.state.apple.service_config().await {
        Ok(config) => config,
        Err(_) => ctx.state.apple.known_service_config(),
    };
    let (full_devices, full_users) = (config.max_serial_numbers(), config.max_client_user_ids());
    jobs::Batching {
        lease: ctx.settings.lease,
        quiet: ctx.settings.quiet,
        max_wait: ctx.settings.max_wait,
        full_devices: full_devices.max(1) as i64,
        full_users: full_users.max(1) as i64,
        max: ctx.settings.max_claim,
    }
}

async fn process_account(
    ctx: &Ctx,
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> Result<bool, DispatchError> {
    let account = {
        let mut pooled = ctx.state.pool.get().await?;
        match store::by_id(&mut pooled, id).await? {
            Some(a) => a,
            None => return Ok(false),
        }
    };
    let now = Utc::now();
    let effective = status::next(&account.status_state(), account.token_expires_at, None, now);
    if !effective.status.allows_apple_calls() {
        // A10: the work waits (queued, never dropped) until the account is usable again.
        let until = match (effective.status, effective.throttled_until) {
            (status::AccountStatus::Throttled, Some(t)) => t,
            _ => now + chrono::Duration::minutes(1),
        };
        jobs::postpone_account(conn, id, until).await?;
        return Ok(false);
    }
    let claimed = jobs::claim(conn, id, &ctx.worker, &batching(ctx).await).await?;
    if claimed.is_empty() {
        return Ok(false);
    }
    let token = match ctx
        .state
        .cipher
        .open(account.id.as_bytes(), &account.sealed_token())
    {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(account = %id, error = %e, "cannot decrypt the account's sToken; its jobs wait");
            let ids: Vec<i64> = claimed.iter().map(|j| j.id).collect();
            // An operator's fix (the key), not the jobs' fault: they wait, never dead letters.
            jobs::postpone(
                conn,
                &ids,
                now + chrono::Duration::minutes(5),
                Some(&e.to_string()),
            )
            .await?;
            return Ok(false);
        }
    };
    // Event polls, and association / release work (with any job that does not decode, which
    // the plan drops).
    let (polls, work): (Vec<ClaimedJob>, Vec<ClaimedJob>) = claimed
        .into_iter()
        .partition(|j| matches!(j.job, Some(Job::PollEvent(_))));
    // Users to retire at Apple (after the releases, see [`retire`]).
    let (retirements, work): (Vec<ClaimedJob>, Vec<ClaimedJob>) = work
        .into_iter()
        .partition(|j| matches!(j.job, Some(Job::RetireUser(_))));
    let attempts = work.iter().map(|j| j.attempts).max().unwrap_or(1);
    let chunks = batch::plan(ctx, id, &work).await?;
    if chunks.is_empty() && polls.is_empty() && retirements.is_empty() {
        // Only held-back or finished work: let the worker look at other accounts (or sleep)
        // instead of claiming the same jobs again at once.
        return Ok(false);
    }
    let blocked = AtomicBool::new(false);
    // Releases first, and all of them accepted before any association goes out, so Apple's
    // free count grows as early as it can. What makes re-use safe (A11) is that `plan` kept
    // back any association that needs a license whose release Apple has not finished.
    let (releases, associations): (Vec<&batch::Chunk>, Vec<&batch::Chunk>) =
        chunks.iter().partition(|c| !c.associate);
    for phase in [releases, associations] {
        let sends: Vec<_> = phase
            .into_iter()
            .map(|chunk| submit_unless_blocked(ctx, &account, &token, chunk, attempts, &blocked))
            .collect();
        let results: Vec<Result<Sent, DispatchError>> = futures_util::stream::iter(sends)
            .buffer_unordered(ctx.settings.concurrency.max(1))
            .collect()
            .await;
        for r in results {
            r?;
        }
    }
    if !retirements.is_empty() && !AtomicBool::load(&blocked, Ordering::SeqCst) {
        let retired = retire::run(ctx, &account, &token, &retirements).await?;
        if retired == retire::Retired::AccountBlocked {
            blocked.store(true, Ordering::SeqCst);
        }
    } else if !retirements.is_empty() {
        let ids: Vec<i64> = retirements.iter().map(|j| j.id).collect();
        jobs::postpone(conn, &ids, now + chrono::Duration::seconds(30), None).await?;
    }
    if AtomicBool::load(&blocked, Ordering::SeqCst) {
        let ids: Vec<i64> = polls.iter().map(|j| j.id).collect();
        jobs::postpone(conn, &ids, now + chrono::Duration::seconds(30), None).await?;
        return Ok(true);
    }
    let polling: Vec<_> = polls
        .iter()
        .filter_map(|job| match &job.job {
            Some(Job::PollEvent(event)) => Some(poll(ctx, &account, &token, job, event)),
            _ => None,
        })
        .collect();
    let polled: Vec<Result<(), DispatchError>> = futures_util::stream::iter(polling)
        .buffer_unordered(ctx.settings.concurrency.max(1))
        .collect()
        .await;
    for r in polled {
        r?;
    }
    Ok(true)
}

/// Submits a chunk, unless an earlier chunk found the account blocked (then its jobs wait).
async fn submit_unless_blocked(
    ctx: &Ctx,
    account: &AccountRow,
    token: &SToken,
    chunk: &batch::Chunk,
    attempts: i32,
    blocked: &AtomicBool,
) -> Result<Sent, DispatchError> {
    if AtomicBool::load(blocked, Ordering::SeqCst) {
        let mut c = ctx.state.pool.get().await?;
        jobs::postpone(
            &mut c,
            &chunk.job_ids,
            retry::at(Duration::from_secs(30)),
            None,
        )
        .await?;
        return Ok(Sent::AccountBlocked);
    }
    let sent = batch::submit(ctx, account, token, chunk, attempts).await;
    if matches!(sent, Ok(Sent::AccountBlocked)) {
        blocked.store(true, Ordering::SeqCst);
    }
    sent
}

/// Polls one event; applies its result when finished.
async fn poll(
    ctx: &Ctx,
    account: &AccountRow,
    token: &SToken,
    job: &ClaimedJob,
    event: &PollEvent,
) -> Result<(), DispatchError> {
    let event_id = event.event_id.as_str();
    let status = match ctx.state.apple.event_status(token, event_id).await {
        Ok(status) => status,
        Err(err) => return poll_failed(ctx, account, job, event_id, err).await,
    };
    crate::accounts::ownership::notice(
        &ctx.state.pool,
        &ctx.state.identity,
        account.id,
        &status.meta,
        "GET /status",
    )
    .await?;
    if status.is_pending() {
        let mut conn = ctx.state.pool.get().await?;
        // A poll count that cannot be read counts as the first poll.
        let polls = apple_events::count_poll(&mut conn, event_id)
            .await
            .unwrap_or(1);
        let delay = ctx
            .settings
            .first_poll
            .saturating_mul(1u32 << polls.clamp(0, 10))
            .min(ctx.settings.max_poll);
        jobs::postpone(&mut conn, &[job.id], retry::at(delay), None).await?;
        return Ok(());
    }
    let failures = settle::failures_by_target(&status.failures);
    let applied = settle::apply(
        &ctx.state,
        token,
        account.id,
        event_id,
        &settle::Results::Complete(failures),
    )
    .await?;
    let mut conn = ctx.state.pool.get().await?;
    if applied.finished {
        jobs::delete(&mut conn, &[job.id]).await?;
    } else {
        // Something of the event is still being settled (a re-allocation cut short): look
        // again soon; applying results again is harmless.
        jobs::postpone(
            &mut conn,
            &[job.id],
            retry::at(ctx.settings.first_poll),
            None,
        )
        .await?;
    }
    Ok(())
}

/// A status poll Apple did not answer: an event it no longer knows has its work submitted
/// again; any other failure is recorded on the account (throttling, token) and retried later.
async fn poll_failed(
    ctx: &Ctx,
    account: &AccountRow,
    job: &ClaimedJob,
    event_id: &str,
    err: AppleError,
) -> Result<(), DispatchError> {
    let mut conn = ctx.state.pool.get().await?;
    if matches!(err.class(), ErrorClass::NotFound) {
        // Apple no longer knows the event: submit its work again (harmless if it landed).
        tracing::warn!(event = %event_id, "Apple does not know the event; resubmitting its work");
        conn.transaction(async |conn| {
            jobs::resubmit_event(conn, event_id).await?;
            apple_events::mark_failed(conn, event_id).await?;
            jobs::delete(conn, &[job.id]).await?;
            Ok::<(), diesel::result::Error>(())
        })
        .await?;
        return Ok(());
    }
    let now = Utc::now();
    let delay = retry::backoff(job.attempts, ctx.settings.max_backoff);
    if let Some(observation) = crate::accounts::observe_error(&err, now) {
        // The account's trouble (throttled, token), not the poll's: it waits (T7, A10).
        record_observation(&mut conn, account, &observation, now).await?;
        jobs::postpone(
            &mut conn,
            &[job.id],
            retry::at(delay),
            Some(&err.to_string()),
        )
        .await?;
        return Ok(());
    }
    retry::failed(
        ctx,
        &mut conn,
        &[job.id],
        retry::at(delay),
        &err.to_string(),
    )
    .await?;
    Ok(())
}

/// Runs the dispatcher until no job is left (tests and the benchmark use it to drain).
pub async fn drain(ctx: &Ctx, timeout: Duration) -> Result<(), DispatchError> {
    let deadline = Instant::now() + timeout;
    let mut conn = crate::db::pool::open(&ctx.settings.database_url, DISPATCH_SESSION).await?;
    loop {
        let worked = run_once(ctx, &mut conn).await?;
        if !worked {
            let remaining = jobs::count(&mut conn).await?;
            if remaining == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(DispatchError::Undrained { remaining, timeout });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
