//! The bulk worker (rule V6): one per `serve` process with dispatcher workers, processing bulk
//! operations one chunk per transaction ([`crate::bulk::run_next`]). Replicas share the work
//! through `FOR UPDATE SKIP LOCKED`; a chunk whose process dies is rolled back and processed by
//! the next claim. Between chunks it yields, so interactive requests are never queued behind a
//! whole operation; idle, it looks again every `idle_poll`.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::domain::bulk::CHUNK;

pub async fn run(ctx: Arc<Ctx>, cancel: CancellationToken) {
    tracing::info!("bulk worker started");
    while !cancel.is_cancelled() {
        let worked = match once(&ctx).await {
            Ok(worked) => worked,
            Err(e) => {
                tracing::warn!(error = %e, "bulk worker iteration failed");
                false
            }
        };
        if worked {
            // Its commits may have written activity rows: wake the event sequencer.
            crate::events::wake::activity_written();
            tokio::task::yield_now().await;
        } else {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(ctx.settings.idle_poll) => {}
            }
        }
    }
    tracing::info!("bulk worker stopped");
}

/// Processes one chunk of the oldest unfinished operation; `false` when none was due.
pub async fn once(ctx: &Ctx) -> Result<bool, BulkWorkerError> {
    let mut conn = ctx.state.pool.get().await?;
    match crate::bulk::run_next(&mut conn, CHUNK).await? {
        Some((id, state)) => {
            tracing::debug!(operation = %id, state = %state, "bulk operation chunk processed");
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Why an iteration of the bulk worker failed.
#[derive(Debug, thiserror::Error)]
pub enum BulkWorkerError {
    #[error(transparent)]
    Bulk(#[from] crate::bulk::BulkError),
    #[error(transparent)]
    Pool(#[from] diesel_async::pooled_connection::deadpool::PoolError),
}
