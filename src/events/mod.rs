//! Events (issue 15, rule N5): one source for the pollable feed and the webhooks
//! (docs/events.md).
//!
//! # The activity log is the outbox
//! Every state change already writes its activity row in the transaction that makes the change
//! (the allocation hot path in the same single statement), so the activity log *is* a
//! transactional outbox: an event exists exactly when its change committed. Writing events
//! there too would add a row per change and, to number them per space, a counter every writer
//! of a space queues behind; the hot path stays as it was (one more column default and one more
//! index entry per activity row).
//!
//! # The sequencer ([`sequence_once`], run by `dispatch::events`)
//! One at a time across replicas (an advisory lock), each round reads the activity rows after
//! its watermark of **finished** transactions in `(txid, id)` order (`ledger::outbox` explains
//! why that order is safe: no row can later appear before one already read), maps the
//! event-worthy ones ([`mapping`]), appends them with per-space sequences
//! (`ledger::events::append`), advances the watermark and `NOTIFY vpp_events, '<space>'`, all
//! in one transaction. So the feed is append-only as served: a reader at sequence `n` never
//! later finds an event numbered `n` or below that it did not see. The price: a transaction
//! that stays open holds every later change's event back until it ends (delayed, never lost).
//!
//! Ordering caveat: the feed's order is the order transactions took their ids and finished,
//! not always the order of one assignment's changes (an older transaction may commit after a
//! younger one); events carry the assignment's `version` so consumers drop stale ones.

pub mod feed;
pub mod mapping;
pub mod wake;

use std::collections::BTreeSet;

use diesel_async::{AsyncConnection, AsyncPgConnection};
use uuid::Uuid;

use crate::ledger::events::{self, NewEvent};
use crate::ledger::outbox::{self, Watermark};

/// Activity rows read per round.
pub const ROUND: i64 = 5_000;

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    /// Another replica's sequencer holds the lock.
    pub busy: bool,
    /// Activity rows passed (events or not).
    pub rows: usize,
    /// Events appended.
    pub events: usize,
    /// Committed rows after the ones read wait behind an older transaction still running
    /// (see [`outbox::held_back`]): look again soon. (Not checked after a full round.)
    pub held_back: bool,
}

/// One round of the sequencer (see the module doc); `rows == ROUND` means more may wait.
pub async fn sequence_once(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Round> {
    conn.transaction(async |conn| {
        if !outbox::try_lock(conn).await? {
            return Ok(Round {
                busy: true,
                ..Round::default()
            });
        }
        let from = outbox::watermark(conn).await?;
        let rows = outbox::finished_after(conn, &from, ROUND).await?;
        let Some(last) = rows.last() else {
            return Ok(Round {
                held_back: outbox::held_back(conn, &from).await?,
                ..Round::default()
            });
        };
        let to = Watermark {
            txid: last.txid.clone(),
            activity_id: last.id,
        };
        // A full round looks again at once anyway.
        let held_back = (rows.len() as i64) < ROUND && outbox::held_back(conn, &to).await?;
        let new: Vec<NewEvent> = rows
            .iter()
            .filter_map(|row| {
                let space = row.space_id.clone()?;
                let (kind, data) = mapping::map(row)?;
                Some(NewEvent {
                    space_id: space,
                    id: Uuid::now_v7(),
                    type_: kind.as_str().to_owned(),
                    occurred_at: row.occurred_at,
                    activity_id: Some(row.id),
                    data,
                })
            })
            .collect();
        let spaces: BTreeSet<String> = new.iter().map(|e| e.space_id.clone()).collect();
        let count = new.len();
        events::append(conn, new).await?;
        outbox::advance(conn, &to).await?;
        let spaces: Vec<&str> = spaces.iter().map(String::as_str).collect();
        outbox::notify(conn, &spaces).await?;
        Ok(Round {
            busy: false,
            rows: rows.len(),
            events: count,
            held_back,
        })
    })
    .await
}

/// Retention: forgets the feed's events recorded more than `keep` ago (the activity log keeps
/// the history); returns how many.
pub async fn forget_old(
    conn: &mut AsyncPgConnection,
    keep: std::time::Duration,
) -> diesel::QueryResult<usize> {
    let keep = chrono::TimeDelta::from_std(keep).unwrap_or(chrono::TimeDelta::MAX);
    let cutoff = chrono::Utc::now()
        .checked_sub_signed(keep)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    events::forget_recorded_before(conn, cutoff).await
}
