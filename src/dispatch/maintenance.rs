//! Housekeeping every few minutes (any replica may do it; each step is idempotent): forget
//! idempotency keys older than 24 h, Apple notification ids older than a day and finished
//! lifecycle events older than 30 days (their stale marks stay), the feed's events older than
//! `VPP_EVENT_RETENTION_DAYS` (default 30; `crate::events::forget_old`), Apple events finished
//! more than 30 days ago (`retention::APPLE_EVENT_RETENTION_DAYS`; pending ones stay), the
//! shared Apple pacing slots of tokens idle for a day (`apple_pace::forget_idle`), dead letters
//! whose assignment no longer waits for them (`dead_letters::forget_settled`), set the
//! `apple_jobs_dead` gauge (dead letters per kind), and make stale leases (a worker that died holding them) claimable at once.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::ledger::{apple_notifications, retention};

const EVERY: Duration = Duration::from_secs(300);

pub async fn run(ctx: Arc<Ctx>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(EVERY) => {}
        }
        if let Err(e) = once(&ctx).await {
            tracing::warn!(error = %e, "maintenance failed");
        }
    }
}

pub async fn once(ctx: &Ctx) -> Result<(), super::DispatchError> {
    let mut conn = ctx.state.pool.get().await?;
    let keys = retention::forget_idempotency_keys(&mut conn).await?;
    let notes = apple_notifications::forget_older_than_a_day(&mut conn).await?;
    let events = crate::lifecycle::forget_old(&mut conn).await?;
    let feed = crate::events::forget_old(&mut conn, ctx.settings.event_retention).await?;
    let apple =
        retention::forget_finished_apple_events(&mut conn, retention::APPLE_EVENT_RETENTION_DAYS)
            .await?;
    let pace = crate::ledger::apple_pace::forget_idle(&mut conn).await?;
    let settled = crate::ledger::dead_letters::forget_settled(&mut conn).await?;
    let dead = crate::ledger::dead_letters::count_by_kind(&mut conn).await?;
    for kind in crate::ledger::jobs::JobKind::ALL {
        let n = dead.iter().find(|(k, _)| k == kind).map_or(0, |(_, n)| *n);
        metrics::gauge!("apple_jobs_dead", "kind" => kind.as_str()).set(n as f64);
    }
    if keys + notes + events + feed + apple + pace + settled > 0 {
        tracing::info!(
            idempotency_keys = keys,
            notifications = notes,
            lifecycle_events = events,
            feed_events = feed,
            apple_events = apple,
            apple_pace_slots = pace,
            settled_dead_letters = settled,
            "maintenance removed old rows"
        );
    }
    Ok(())
}
