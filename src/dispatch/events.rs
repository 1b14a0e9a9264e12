//! The event sequencer's loop (issue 15; one per `serve` process that runs dispatcher
//! workers): calls [`crate::events::sequence_once`] on its own connection. Across replicas
//! one round runs at a time (the use case's advisory lock); the others find it busy and
//! look again.
//!
//! Pace: at once when a round was full (a backlog), [`BUSY`] after a round that found rows,
//! [`IDLE`] otherwise. A change's event is thus appended about `IDLE / 2` after its commit on
//! average when the service is quiet (plus the time any older transaction still runs), and
//! within [`BUSY`] under load; an idle round is one small transaction.

use std::sync::Arc;
use std::time::Duration;

use diesel_async::AsyncPgConnection;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::events::{self, ROUND};

/// Pause after a round that found rows.
pub const BUSY: Duration = Duration::from_millis(20);
/// Pause after a round that found none (or another replica's sequencer was at work).
pub const IDLE: Duration = Duration::from_millis(30);

/// How the sequencer's session names itself in `pg_stat_activity`.
const SESSION: &str = "SET application_name = 'vpp-broker event sequencer'";

pub async fn run(ctx: Arc<Ctx>, cancel: CancellationToken) {
    let mut conn: Option<AsyncPgConnection> = None;
    while !cancel.is_cancelled() {
        if conn.is_none() {
            match crate::db::pool::open(&ctx.settings.database_url, SESSION).await {
                Ok(c) => conn = Some(c),
                Err(e) => tracing::warn!(error = %e, "event sequencer cannot connect; retrying"),
            }
        }
        let pause = match conn.as_mut() {
            Some(c) => match events::sequence_once(c).await {
                Ok(round) if round.rows as i64 >= ROUND => Duration::ZERO,
                Ok(round) if round.rows > 0 => BUSY,
                Ok(_) => IDLE,
                Err(e) => {
                    tracing::warn!(error = %e, "event sequencer round failed");
                    conn = None;
                    Duration::from_secs(1)
                }
            },
            None => Duration::from_secs(1),
        };
        if pause.is_zero() {
            continue;
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
