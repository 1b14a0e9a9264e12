//! The notifier's loop (N1, N2; one per `serve` process that runs dispatcher workers, unless
//! `VPP_NOTIFICATION_SECS` is 0): every interval, [`crate::notices::evaluate`] on a pooled
//! connection. Across replicas one evaluation runs at a time (the use case's advisory lock);
//! the others find it busy and wait for their next turn. The first evaluation comes one
//! interval after start, the exhaustion forecasts at most every
//! [`crate::notices::FORECAST_EVERY`] per process.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::notices::{self, FORECAST_EVERY};

pub async fn run(ctx: Arc<Ctx>, cancel: CancellationToken) {
    let every = ctx.settings.notifications_every;
    let sync_interval = chrono::Duration::from_std(ctx.settings.sync_incremental)
        .unwrap_or(chrono::Duration::minutes(15));
    let mut forecasts_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        let forecasts = forecasts_at.is_none_or(|at| at.elapsed() >= FORECAST_EVERY);
        let round = match ctx.state.pool.get().await {
            Ok(mut conn) => notices::evaluate(&mut conn, sync_interval, forecasts, Utc::now())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match round {
            Ok(round) if !round.busy => {
                if forecasts {
                    forecasts_at = Some(Instant::now());
                }
                if round.raised + round.cleared > 0 {
                    // Committed `notification.*` activity rows: wake the event sequencer.
                    crate::events::wake::activity_written();
                    tracing::debug!(
                        raised = round.raised,
                        cleared = round.cleared,
                        "notifications evaluated"
                    );
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "notification evaluation failed"),
        }
    }
}
