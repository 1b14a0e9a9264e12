//! The sync workers (`VPP_SYNC_WORKERS` per process) and the sync scheduler (docs/sync.md).
//!
//! A worker claims one due sync job at a time (`FOR UPDATE SKIP LOCKED`, a lease), runs it
//! ([`crate::sync::run`]) while a heartbeat renews the lease every third of it, and sleeps
//! `idle_poll` when nothing is due. A heartbeat that finds the job taken over stops the run (it
//! applies nothing); a shutdown releases the job for another replica. The scheduler looks every
//! `sync_schedule` for accounts due (one statement; one replica at a time) and, with
//! `VPP_RECONCILE_DAILY`, runs the daily Reconcile of spaces whose last one is a day old
//! ([`crate::plans::daily_reconcile`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Ctx, DispatchError};
use crate::ledger::sync_runs::{self, Claimed, Schedule};
use crate::sync::{self, Outcome};

/// Starts the sync workers and the scheduler (none when `sync_workers` is 0).
pub fn spawn(ctx: Arc<Ctx>, cancel: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
    let mut handles = Vec::new();
    for i in 0..ctx.settings.sync_workers {
        let (ctx, cancel) = (ctx.clone(), cancel.clone());
        handles.push(tokio::spawn(async move { worker(ctx, i, cancel).await }));
    }
    if ctx.settings.sync_workers > 0 {
        handles.push(tokio::spawn(scheduler(ctx, cancel)));
    }
    handles
}

/// The name a sync worker leases jobs under (unique per worker across replicas).
fn worker_name(ctx: &Ctx, index: usize) -> String {
    format!("{}-sync{index}", ctx.worker)
}

async fn worker(ctx: Arc<Ctx>, index: usize, cancel: CancellationToken) {
    let name = worker_name(&ctx, index);
    tracing::info!(worker = %name, "sync worker started");
    while !cancel.is_cancelled() {
        let worked = match run_once(&ctx, &name, &cancel).await {
            Ok(worked) => worked,
            Err(e) => {
                tracing::warn!(error = %e, "sync worker iteration failed");
                false
            }
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
    tracing::info!(worker = %name, "sync worker stopped");
}

/// Claims and runs one due sync. True when one was run.
pub async fn run_once(
    ctx: &Ctx,
    name: &str,
    cancel: &CancellationToken,
) -> Result<bool, DispatchError> {
    let claimed = {
        let mut conn = ctx.state.pool.get().await?;
        sync_runs::claim(&mut conn, name, ctx.settings.lease).await?
    };
    let Some(claimed) = claimed else {
        return Ok(false);
    };
    tracing::info!(run = %claimed.run.id, account = %claimed.run.account_id, kind = %claimed.run.kind, "sync started");
    let settings = sync::Settings::from_state(&ctx.state, ctx.settings.max_backoff);
    let lost = CancellationToken::new();
    let result = tokio::select! {
        r = sync::run(&ctx.state, &claimed, name, &settings) => Some(r),
        _ = heartbeat(ctx, &claimed, name, &lost) => None,
        _ = cancel.cancelled() => None,
    };
    match result {
        Some(Ok(Outcome::Finished(row))) => {
            tracing::info!(run = %row.id, state = %row.state, "sync finished");
        }
        Some(Ok(Outcome::Postponed(_))) => {}
        Some(Ok(Outcome::Lost)) => {
            tracing::warn!(run = %claimed.run.id, "sync lost its job to another worker; nothing applied");
        }
        Some(Err(e)) => {
            // A database error: the run waits and is retried (its attempts count).
            tracing::warn!(run = %claimed.run.id, error = %e, "sync failed on the database; retrying later");
            release_after_error(ctx, &claimed, name).await;
        }
        None if lost.is_cancelled() => {
            tracing::warn!(run = %claimed.run.id, "sync lost its lease; stopped without applying");
        }
        None => {
            // Shutting down: another worker (or replica) takes the run over from page 0.
            let mut conn = ctx.state.pool.get().await?;
            sync_runs::release(&mut conn, claimed.job_id, name, claimed.run.id).await?;
        }
    }
    Ok(true)
}

/// Renews the lease every third of it; returns (after cancelling `lost`) when the job was
/// taken over. When nobody holds the job any more (the run's own end deleted or released it,
/// or its account is gone) it stops beating and leaves the run to finish: the apply checks
/// the job again. A failed renewal is retried at the next beat (the lease has time).
async fn heartbeat(ctx: &Ctx, claimed: &Claimed, name: &str, lost: &CancellationToken) {
    let every = (ctx.settings.lease / 3).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let renewed = match ctx.state.pool.get().await {
            Ok(mut conn) => {
                sync_runs::heartbeat(&mut conn, claimed.job_id, name, ctx.settings.lease).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "sync heartbeat cannot connect");
                continue;
            }
        };
        match renewed {
            Ok(sync_runs::Beat::Renewed) => {}
            Ok(sync_runs::Beat::TakenOver) => {
                lost.cancel();
                return;
            }
            Ok(sync_runs::Beat::NotHeld) => std::future::pending::<()>().await,
            Err(e) => tracing::warn!(error = %e, "sync heartbeat failed"),
        }
    }
}

async fn release_after_error(ctx: &Ctx, claimed: &Claimed, name: &str) {
    let at = chrono::Utc::now() + chrono::Duration::seconds(10);
    let result = async {
        let mut conn = ctx.state.pool.get().await?;
        sync_runs::postpone(
            &mut conn,
            claimed.job_id,
            name,
            claimed.run.id,
            at,
            sync_runs::Progress::default(),
            &sync_runs::reason("a database error interrupted the sync"),
        )
        .await?;
        Ok::<_, DispatchError>(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot postpone the sync; its lease will expire");
    }
}

async fn scheduler(ctx: Arc<Ctx>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(ctx.settings.sync_schedule) => {}
        }
        if let Err(e) = schedule_once(&ctx).await {
            tracing::warn!(error = %e, "sync scheduler failed");
        }
    }
}

/// One look of the scheduler: queues the syncs due. `None`: another replica is looking.
pub async fn schedule_once(ctx: &Ctx) -> Result<Option<usize>, DispatchError> {
    let mut conn = ctx.state.pool.get().await?;
    let queued = sync_runs::schedule(
        &mut conn,
        Schedule {
            incremental: ctx.settings.sync_incremental,
            full: ctx.settings.sync_full,
        },
    )
    .await?;
    if let Some(n) = queued
        && n > 0
    {
        tracing::info!(queued = n, "sync scheduler queued runs");
    }
    if ctx.state.reconciliation.reconcile_daily {
        match crate::plans::daily_reconcile(&mut conn, &ctx.state.reconciliation).await {
            Ok(plans) => {
                for plan in plans {
                    tracing::info!(space = %plan.row.space_id, plan = %plan.row.id,
                        items = plan.items.len(), "daily reconcile applied");
                }
            }
            Err(e) => tracing::warn!(error = %e, "daily reconcile failed; retried next look"),
        }
    }
    Ok(queued)
}

/// Runs the queued syncs that are due, in this task, until none is left (tests and benchmarks).
/// Returns how many were run; gives up after `timeout`.
pub async fn drain_syncs(ctx: &Ctx, timeout: Duration) -> Result<usize, DispatchError> {
    let deadline = Instant::now() + timeout;
    let name = worker_name(ctx, 99);
    let never = CancellationToken::new();
    let mut ran = 0;
    while Instant::now() < deadline {
        if !run_once(ctx, &name, &never).await? {
            return Ok(ran);
        }
        ran += 1;
    }
    Ok(ran)
}
