//! The wait-list worker (rule A12; one per `serve` process that runs dispatcher workers): claims
//! the lines a freed license woke (`FOR UPDATE SKIP LOCKED` with a lease, so any number of
//! replicas share the work and a killed one's line is served by another once its lease ends),
//! serves each with [`crate::engine::waitlist::serve`], and every [`SWEEP`] ends the waiting
//! entries whose wait expired ([`crate::engine::waitlist::expire`]). It sleeps `idle_poll`
//! when no line is woken: a line is served within that of a license freeing.
//!
//! A run that fails (the database refused it) gives its wake-up back with a back-off
//! ([`backoff`]: `idle_poll` doubled per failed attempt in a row, at most [`MAX_BACKOFF`]; the
//! attempts are counted per line by this worker) and moves the wake-up behind the lines woken
//! meanwhile, then sleeps: a line that keeps failing is neither claimed again at once nor
//! starves the others. (The engine already isolates an entry that breaks a chunk.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::{Ctx, DispatchError};
use crate::engine::waitlist;
use crate::ledger::waitlist as store;

/// Time between two sweeps for expired waiting entries.
pub const SWEEP: Duration = Duration::from_secs(30);

/// Expired entries ended per sweep statement.
const EXPIRE_BATCH: i64 = 5000;

/// The longest a failing line waits before it is tried again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Failed runs in a row, per line (space, adam id, pricing param), as one worker counts them.
pub type Attempts = HashMap<(String, String, String), u32>;

/// How long a line that failed `attempts` times in a row waits: `idle_poll` doubled per
/// attempt, at most [`MAX_BACKOFF`].
pub fn backoff(idle_poll: Duration, attempts: u32) -> Duration {
    idle_poll
        .max(Duration::from_millis(100))
        .saturating_mul(1u32 << attempts.min(16))
        .min(MAX_BACKOFF)
}

pub async fn run(ctx: Arc<Ctx>, cancel: CancellationToken) {
    let name = format!("{}-waitlist", ctx.worker);
    let mut swept: Option<Instant> = None;
    let mut attempts = Attempts::new();
    while !cancel.is_cancelled() {
        let worked = match serve_once(&ctx, &name, &mut attempts).await {
            Ok(worked) => worked,
            Err(e) => {
                tracing::warn!(error = %e, "wait-list worker iteration failed");
                false
            }
        };
        if worked {
            // Its commits may have written activity rows: wake the event sequencer.
            crate::events::wake::activity_written();
        }
        if swept.is_none_or(|at| at.elapsed() >= SWEEP) {
            swept = Some(Instant::now());
            match expire_all(&ctx).await {
                Ok(0) => {}
                Ok(_) => crate::events::wake::activity_written(),
                Err(e) => tracing::warn!(error = %e, "wait-list expiry failed"),
            }
        }
        if !worked {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(ctx.settings.idle_poll) => {}
            }
        }
    }
}

/// Claims one woken line and serves it. True when one was served (false also when serving it
/// failed: the worker then sleeps).
pub async fn serve_once(
    ctx: &Ctx,
    name: &str,
    attempts: &mut Attempts,
) -> Result<bool, DispatchError> {
    let mut conn = ctx.state.pool.get().await?;
    let Some(wakeup) = store::claim(&mut conn, name, ctx.settings.lease).await? else {
        return Ok(false);
    };
    let line = (
        wakeup.space_id.clone(),
        wakeup.adam_id.clone(),
        wakeup.pricing_param.clone(),
    );
    match waitlist::serve(&mut conn, &wakeup.space_id, &wakeup.asset()).await {
        Ok(served) => {
            if served.served + served.ended > 0 {
                tracing::info!(
                    space = %wakeup.space_id,
                    adam_id = %wakeup.adam_id,
                    served = served.served,
                    waiting = served.waiting,
                    ended = served.ended,
                    "wait-list served"
                );
            }
            metrics::counter!("waitlist_served_total").increment(served.served as u64);
            attempts.remove(&line);
            store::finish(&mut conn, &wakeup, name).await?;
            Ok(true)
        }
        Err(e) => {
            let n = attempts.entry(line).or_insert(0);
            *n += 1;
            let delay = backoff(ctx.settings.idle_poll, *n);
            tracing::warn!(space = %wakeup.space_id, adam_id = %wakeup.adam_id, error = %e,
                           attempts = *n, retry_in_ms = delay.as_millis() as u64,
                           "serving a wait-list failed; it is tried again after a back-off");
            store::back_off(&mut conn, &wakeup, name, delay).await?;
            Ok(false)
        }
    }
}

/// Ends every waiting entry whose wait expired. Returns how many.
pub async fn expire_all(ctx: &Ctx) -> Result<usize, DispatchError> {
    let mut conn = ctx.state.pool.get().await?;
    let mut total = 0;
    loop {
        let n = waitlist::expire(&mut conn, Utc::now(), EXPIRE_BATCH).await?;
        total += n;
        if n < EXPIRE_BATCH as usize {
            break;
        }
    }
    if total > 0 {
        tracing::info!(expired = total, "wait-list entries expired");
    }
    Ok(total)
}
