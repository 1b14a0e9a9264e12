//! Reading a space's feed: a page of events after a position, optionally waiting for one
//! (long poll).
//!
//! A position is the last sequence a reader has seen (0: none). A page reads the space's
//! last given sequence `end` first, then the events after the position up to `end`: the
//! sequencer commits numbers and events together, so everything up to `end` is visible to the
//! second read and the page has no gap. The next position is the last event served when the
//! page is full, else `end` (with a types filter the reader skips what it does not want, and
//! an empty page returns the position it was given, or the end).
//!
//! A position the retention passed (events after it were forgotten) is [`FeedError::Gone`]
//! with the current end: the reader resynchronises from the current state (assignments,
//! inventory) and follows the feed from there. A position beyond the end was never given out
//! ([`FeedError::Ahead`]).

use std::time::Duration;

use crate::db::Pool;
use crate::events::wake::EventWakes;
use crate::ledger::events::{self, EventRow};

/// What to read.
#[derive(Debug, Clone)]
pub struct FeedQuery {
    /// The last sequence seen; `None`: from the oldest kept.
    pub after: Option<i64>,
    /// Only these types (all when `None`).
    pub types: Option<Vec<String>>,
    pub limit: i64,
    /// Wait up to this long for an event when there is none.
    pub wait: Duration,
}

/// A page of the feed.
#[derive(Debug, Clone)]
pub struct FeedPage {
    pub events: Vec<EventRow>,
    /// The position to read from next.
    pub next: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// Events after the position were forgotten by retention; `end` is the feed's end now.
    #[error("events after sequence {after} are no longer kept (the oldest kept is {oldest:?})")]
    Gone {
        after: i64,
        oldest: Option<i64>,
        end: i64,
    },
    /// The position is beyond the last sequence given out.
    #[error("sequence {after} is beyond the end of the feed ({end})")]
    Ahead { after: i64, end: i64 },
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    #[error(transparent)]
    Pool(#[from] diesel_async::pooled_connection::deadpool::PoolError),
}

/// How often a long poll re-reads without a wake-up.
const RECHECK: Duration = Duration::from_secs(1);

/// Reads a page; with `wait`, waits (bounded) until the page has an event.
pub async fn read(
    pool: &Pool,
    wakes: &EventWakes,
    space: &str,
    query: &FeedQuery,
) -> Result<FeedPage, FeedError> {
    let deadline = tokio::time::Instant::now() + query.wait;
    let interest = (!query.wait.is_zero()).then(|| wakes.watch(space));
    let mut after = query.after;
    loop {
        let woken = interest
            .as_ref()
            .and_then(|i| i.notify())
            .map(|n| n.notified());
        let page = {
            let mut conn = pool.get().await?;
            page(&mut conn, space, after, query).await?
        };
        let now = tokio::time::Instant::now();
        if !page.events.is_empty() || now >= deadline {
            return Ok(page);
        }
        // Nothing yet: wait from where this page ended (a filtered reader skips what it saw).
        after = Some(page.next);
        let nap = (deadline - now).min(RECHECK);
        match woken {
            Some(woken) => tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(nap) => {}
            },
            None => tokio::time::sleep(nap).await,
        }
    }
}

/// One page, without waiting. The oldest kept event is read again after the page: retention
/// deletes a prefix, so if it moved past the start meanwhile, the page may have a hole.
async fn page(
    conn: &mut diesel_async::AsyncPgConnection,
    space: &str,
    after: Option<i64>,
    query: &FeedQuery,
) -> Result<FeedPage, FeedError> {
    loop {
        let end = events::last_given(conn, space).await?;
        let from = match after {
            Some(after) if after > end => return Err(FeedError::Ahead { after, end }),
            Some(after) => after,
            None => events::oldest_kept(conn, space)
                .await?
                .map_or(end, |o| o - 1),
        };
        let rows =
            events::between(conn, space, from, end, query.types.as_deref(), query.limit).await?;
        // Events after `from` up to `end` exist (or existed): the first must still be kept.
        let oldest = events::oldest_kept(conn, space).await?;
        if from < end && oldest.is_none_or(|o| o > from + 1) {
            match after {
                Some(after) => return Err(FeedError::Gone { after, oldest, end }),
                // Retention moved while this page read from the oldest: read again.
                None => continue,
            }
        }
        let next = match rows.last() {
            Some(last) if rows.len() as i64 >= query.limit => last.sequence,
            _ => end,
        };
        return Ok(FeedPage { events: rows, next });
    }
}
