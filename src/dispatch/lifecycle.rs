//! The lifecycle worker: one per `serve` process with dispatcher workers, applying due
//! lifecycle events in batches ([`crate::lifecycle::apply_batch`], up to
//! [`crate::lifecycle::APPLY_BATCH`] per transaction). Replicas
//! share the work through `FOR UPDATE SKIP LOCKED`; an event whose process dies is rolled back
//! and applied by the next claim. Idle, it looks again every `idle_poll`.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Ctx;

pub async fn run(ctx: Arc<Ctx>, cancel: CancellationToken) {
    tracing::info!("lifecycle worker started");
    while !cancel.is_cancelled() {
        let worked = match once(&ctx).await {
            Ok(worked) => worked,
            Err(e) => {
                tracing::warn!(error = %e, "lifecycle worker iteration failed");
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
    tracing::info!("lifecycle worker stopped");
}

/// Applies a batch of due events; `false` when none was due.
pub async fn once(ctx: &Ctx) -> Result<bool, super::DispatchError> {
    let mut conn = ctx.state.pool.get().await?;
    let applied = crate::lifecycle::apply_batch(&mut conn, crate::lifecycle::APPLY_BATCH).await?;
    for (id, state) in &applied {
        tracing::debug!(event = %id, state = %state, "lifecycle event processed");
    }
    Ok(!applied.is_empty())
}
