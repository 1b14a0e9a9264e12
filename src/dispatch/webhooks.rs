//! The webhook senders (`VPP_WEBHOOK_WORKERS` per process; issue 15, rule N6). Each one loops:
//! fan new events out to the endpoints, lease due deliveries, keep up to
//! `VPP_WEBHOOK_CONCURRENCY` requests in flight, and write the outcomes (queue, log, streaks)
//! in batches — when 256 are done, 20 ms after the first of a batch, or when nothing is in
//! flight. It looks for work when woken, when the poll comes round or after a full claim,
//! with a free slot and at most every 50 ms (after a full claim, again without waiting once
//! half its slots are free): under load claims come in batches, and an event waits up to
//! 50 ms more than it would otherwise. A slow endpoint holds one slot per delivery, never the
//! batch.
//!
//! It wakes on `NOTIFY vpp_events` (the sequencer's, after it appended events; one
//! reconnecting listen connection per process, [`crate::waiters::spawn_listen_loop`]) and
//! otherwise looks every `VPP_WEBHOOK_POLL_MS` (1 s): for retries that came due, deliveries
//! queued by `redeliver` or `recover`, and events whose notification was lost across a
//! reconnect. Every minute one sender of each process disables endpoints failing for 5 days
//! and forgets delivery log rows past their retention (both idempotent, any replica).
//! Coordination is PostgreSQL's only (see [`crate::ledger::webhooks`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;
use crate::webhooks::delivery::{self, Message, Sent};

/// Outcomes written per batch at most.
const FLUSH_AT: usize = 256;
/// Longest an outcome waits to be written.
const FLUSH_AFTER: Duration = Duration::from_millis(20);
/// Shortest time between two looks, unless the last claim was full (then the next comes once
/// half the slots are free): under load, wake-ups come
/// with every round of the sequencer (about a hundred a second), and each look costs the same
/// four statements whether it brings one event or fifty.
const LOOK_GAP: Duration = Duration::from_millis(50);
/// Time between housekeeping rounds.
const HOUSEKEEPING: Duration = Duration::from_secs(60);

/// Starts the senders of this process (none when `webhook_workers` is 0); the feed's listener
/// wakes them.
pub fn spawn(state: Arc<AppState>, cancel: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
    let workers = state.webhooks.settings.workers;
    if workers == 0 {
        return Vec::new();
    }
    // Woken through the process's one `LISTEN vpp_events` connection (the feed's, see
    // `events::wake`), by a counter: a wake-up that came while a sender was busy is kept.
    let wake = state.event_wakes.any_space();
    let mut handles = Vec::new();
    for i in 0..workers {
        let name = format!("{}-{}-webhooks-{i}", hostname(), std::process::id());
        handles.push(tokio::spawn(run(
            state.clone(),
            name,
            i == 0,
            wake.clone(),
            cancel.clone(),
        )));
    }
    handles
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "vpp-broker".into())
}

type InFlight = FuturesUnordered<futures_util::future::BoxFuture<'static, (Message, Sent)>>;

async fn run(
    state: Arc<AppState>,
    name: String,
    housekeeper: bool,
    mut wake: watch::Receiver<u64>,
    cancel: CancellationToken,
) {
    tracing::info!(worker = %name, "webhook sender started");
    let settings = state.webhooks.settings.clone();
    let concurrency = settings.concurrency.max(1);
    // A look is four statements (fan-out, claim, endpoints, events) whatever it brings, so the
    // sender looks only for a reason — a wake-up (new events), the poll (retries come due) or
    // a full last claim (more is waiting) — with a free slot, and at most every [`LOOK_GAP`];
    // after a full claim it looks again without the gap once half its slots are free. It used
    // to look after every finished request (four statements per delivery under load).
    let refill_at = concurrency / 2;
    let mut inflight: InFlight = FuturesUnordered::new();
    let mut done: Vec<(Message, Sent)> = Vec::new();
    let mut first_done: Option<Instant> = None;
    let mut look = true;
    let mut full = false;
    let mut last_look = Instant::now()
        .checked_sub(LOOK_GAP)
        .unwrap_or_else(Instant::now);
    let mut next_poll = Instant::now();
    let mut kept_house = Instant::now();
    // Whether a pending look may happen now: a free slot, and the gap over or, after a full
    // claim, half the slots free.
    let may_look = |inflight: usize, full: bool, last_look: Instant| {
        inflight < concurrency
            && (last_look.elapsed() >= LOOK_GAP || (full && inflight <= refill_at))
    };
    while !cancel.is_cancelled() {
        if look && may_look(inflight.len(), full, last_look) {
            last_look = Instant::now();
            next_poll = last_look + settings.poll;
            let room = (concurrency - inflight.len()) as i64;
            match refill(&state, &name, room).await {
                Ok((leased, messages)) => {
                    // A full claim (counted in leased rows: some may give no message): more
                    // is probably due; look again as soon as there is room.
                    full = leased as i64 >= room;
                    look = full;
                    for msg in messages {
                        let webhooks = state.webhooks.clone();
                        inflight.push(
                            async move {
                                let sent = delivery::send(&webhooks, &msg).await;
                                (msg, sent)
                            }
                            .boxed(),
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook claim failed");
                    look = false;
                    full = false;
                }
            }
        }
        // The next flush of finished outcomes, the poll, and for a pending look with a free
        // slot: now (a full claim whose rows gave few messages, so slots are free), or the end
        // of the gap. With every slot busy, a finished request wakes the loop.
        let mut until = match first_done {
            Some(first) if !done.is_empty() => (first + FLUSH_AFTER).min(next_poll),
            _ => next_poll,
        };
        if look && inflight.len() < concurrency {
            until = if may_look(inflight.len(), full, last_look) {
                Instant::now()
            } else {
                until.min(last_look + LOOK_GAP)
            };
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(out) = inflight.next(), if !inflight.is_empty() => {
                first_done.get_or_insert_with(Instant::now);
                done.push(out);
                // Everything else already finished, without waiting. A finished request is
                // not a reason to look: new work comes with a wake-up, retries with the poll.
                while let Some(Some(out)) = inflight.next().now_or_never() {
                    done.push(out);
                }
            }
            Ok(()) = wake.changed() => { look = true; }
            _ = tokio::time::sleep_until(until.into()) => {
                if Instant::now() >= next_poll {
                    look = true;
                    next_poll = Instant::now() + settings.poll;
                }
            }
        }
        let due = done.len() >= FLUSH_AT
            || inflight.is_empty()
            || first_done.is_some_and(|t| t.elapsed() >= FLUSH_AFTER);
        if due && !done.is_empty() {
            flush(&state, &mut done).await;
            first_done = None;
        }
        if housekeeper && kept_house.elapsed() >= HOUSEKEEPING {
            kept_house = Instant::now();
            housekeeping(&state).await;
        }
    }
    // Cancelled: write what finished; the rest is sent again after the lease.
    if !done.is_empty() {
        flush(&state, &mut done).await;
    }
    tracing::info!(worker = %name, "webhook sender stopped");
}

/// Fans new events out, then leases up to `room` due deliveries.
async fn refill(
    state: &AppState,
    name: &str,
    room: i64,
) -> Result<(usize, Vec<Message>), crate::webhooks::WebhookError> {
    let mut conn = state
        .pool
        .get()
        .await
        .map_err(|e| crate::webhooks::WebhookError::Invalid {
            field: "database",
            message: e.to_string(),
        })?;
    delivery::fan_out(&mut conn).await?;
    delivery::claim_counted(&state.webhooks, &state.cipher, &mut conn, name, room).await
}

async fn flush(state: &AppState, done: &mut Vec<(Message, Sent)>) {
    let batch = std::mem::take(done);
    let n = batch.len();
    // A 410 disables its endpoint and writes a `webhook.disabled` activity row.
    let disables = batch.iter().any(|(_, sent)| sent.gone());
    let result = match state.pool.get().await {
        Ok(mut conn) => delivery::settle(&state.webhooks, &mut conn, batch).await,
        Err(e) => {
            tracing::warn!(error = %e, "webhook outcomes not written (no connection); they are sent again after the lease");
            return;
        }
    };
    match result {
        Ok(()) if disables => crate::events::wake::activity_written(),
        Ok(()) => {}
        Err(e) => {
            tracing::warn!(error = %e, outcomes = n, "webhook outcomes not written; they are sent again after the lease");
        }
    }
}

async fn housekeeping(state: &AppState) {
    let Ok(mut conn) = state.pool.get().await else {
        return;
    };
    match delivery::disable_failing(&state.webhooks, &mut conn).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(
                disabled = n,
                "webhook endpoints failing for 5 days disabled"
            );
            crate::events::wake::activity_written();
        }
        Err(e) => tracing::warn!(error = %e, "disabling failing webhooks failed"),
    }
    match delivery::forget_old_attempts(&state.webhooks, &mut conn).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(forgotten = n, "old webhook delivery log rows forgotten"),
        Err(e) => tracing::warn!(error = %e, "forgetting old webhook attempts failed"),
    }
}

/// One round of housekeeping now (tests call it instead of waiting a minute).
pub async fn housekeep_now(state: &AppState) {
    housekeeping(state).await;
}
