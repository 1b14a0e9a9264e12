//! The lifecycle worker: one per `serve` process with dispatcher workers, applying due
//! lifecycle events ([`crate::lifecycle::apply_next`]) one transaction at a time. Replicas
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
        if !worked {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(ctx.settings.idle_poll) => {}
            }
        }
    }
    tracing::info!("lifecycle worker stopped");
}

/// Applies one due event; `false` when none was due.
pub async fn once(ctx: &Ctx) -> Result<bool, super::DispatchError> {
    let mut conn = ctx.state.pool.get().await?;
    match crate::lifecycle::apply_next(&mut conn).await? {
        Some((id, state)) => {
            tracing::debug!(event = %id, state = %state, "lifecycle event processed");
            Ok(true)
        }
        None => Ok(false),
    }
}
