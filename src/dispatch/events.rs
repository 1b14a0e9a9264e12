//! The event sequencer's loop (issue 15; one per `serve` process that runs dispatcher
//! workers): calls [`crate::events::sequence_once`] on its own connection. Across replicas
//! one round runs at a time (the use case's advisory lock); the others find it busy and
//! look again.
//!
//! Pace: at once when a round was full (a backlog); [`SOON`] after a round that found the lock
//! taken or committed rows held back by an older transaction still running (its end gives no
//! hint). Otherwise it waits for the activity hint ([`crate::events::wake`]: this process's
//! writers after their commits, other processes' through `NOTIFY vpp_activity`) or
//! [`FALLBACK`], whichever comes first — after a round that found rows, no sooner than [`BUSY`]
//! (under load the rows of many commits make one round). A quiet service thus costs PostgreSQL
//! one small round a second, not thirty; a change's event is appended one round after its
//! commit's hint (a few milliseconds), within [`BUSY`] under load, and at worst [`FALLBACK`]
//! after its commit when its writer gave no hint (or the hint was lost across a reconnect).
//! A hint given while a round runs is kept: the next wait returns at once.

use std::sync::Arc;
use std::time::Duration;

use diesel_async::AsyncPgConnection;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::events::wake::ActivityHint;
use crate::events::{self, ROUND};

/// The shortest time between a round that found rows and the next.
pub const BUSY: Duration = Duration::from_millis(20);
/// Pause after a round that found the lock taken (another replica's sequencer at work) or rows
/// held back by an older transaction still running: their end gives no hint.
pub const SOON: Duration = Duration::from_millis(30);
/// The longest wait for a hint: a round runs at least this often.
pub const FALLBACK: Duration = Duration::from_secs(1);

/// How the sequencer's session names itself in `pg_stat_activity`.
const SESSION: &str = "SET application_name = 'vpp-broker event sequencer'";

pub async fn run(ctx: Arc<Ctx>, cancel: CancellationToken) {
    // Subscribed before the first round: a hint given from now on wakes it.
    let mut hint = ActivityHint::new();
    ActivityHint::listen(ctx.settings.database_url.clone(), cancel.clone());
    let mut conn: Option<AsyncPgConnection> = None;
    while !cancel.is_cancelled() {
        if conn.is_none() {
            match crate::db::pool::open(&ctx.settings.database_url, SESSION).await {
                Ok(c) => conn = Some(c),
                Err(e) => tracing::warn!(error = %e, "event sequencer cannot connect; retrying"),
            }
        }
        // (pause, then wait for a hint)
        let (pause, wait) = match conn.as_mut() {
            Some(c) => match events::sequence_once(c).await {
                Ok(round) if round.rows as i64 >= ROUND => (Duration::ZERO, false),
                Ok(round) if round.busy || round.held_back => (SOON, false),
                Ok(round) if round.rows > 0 => (BUSY, true),
                Ok(_) => (Duration::ZERO, true),
                Err(e) => {
                    tracing::warn!(error = %e, "event sequencer round failed");
                    conn = None;
                    (Duration::from_secs(1), false)
                }
            },
            None => (Duration::from_secs(1), false),
        };
        if !pause.is_zero() {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        if wait {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = hint.next() => {}
                _ = tokio::time::sleep(FALLBACK) => {}
            }
        }
    }
}
