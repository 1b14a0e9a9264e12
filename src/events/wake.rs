//! Wake-ups around the event feed.
//!
//! - **Readers**: the feed's long polls wake when the sequencer appended events to their space:
//!   one `LISTEN vpp_events` connection per process (payload: the space), and a registry of the
//!   spaces someone waits on ([`EventWakes`]). A long poll also re-reads every second, so a lost
//!   notification or a reconnect costs latency only (as [`crate::waiters`] does for assignments).
//! - **The sequencer**: it waits for a hint that activity rows were committed
//!   ([`activity_written`], [`ActivityHint`]) instead of polling every few milliseconds. Writers
//!   give the hint *after* their commit, in the process: the HTTP layer after every request that
//!   may write (any method but `GET`, `HEAD`, `OPTIONS`), the background workers after a round
//!   that did work, the settlement of Apple's results after its transaction. Nothing is sent
//!   from inside the writers' transactions: a `NOTIFY` there would serialize their commits
//!   (PostgreSQL holds a database-wide lock from a notifying transaction's pre-commit to its
//!   end; measured on this machine: 8 clients inserting one row each, 2,400 → 860
//!   transactions/s with a `NOTIFY` in each). A process that runs no sequencer passes the hint
//!   on as `NOTIFY vpp_activity` from a connection of its own, outside any writer's transaction
//!   and at most one at a time ([`spawn_relay`]); sequencers listen on that channel. A hint is
//!   only a hint: the sequencer also looks every second ([`crate::dispatch::events`]), so a
//!   writer that gives none, or a notification lost across a reconnect, delays events, never
//!   loses them.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::db::Pool;
use crate::ledger::outbox;

/// The process's activity hint: a counter bumped by [`activity_written`]; each sequencer (and
/// relay) holds a receiver and wakes when it moved, so no hint given while it was busy is lost.
static ACTIVITY: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::Sender::new(0));

/// Other processes' hints (`NOTIFY vpp_activity`), apart from this process's own: they wake the
/// sequencers only, never the relay (a process that relays is not the one they are for, and
/// relaying them would echo them back).
static REMOTE: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::Sender::new(0));

fn bump(counter: &watch::Sender<u64>) {
    counter.send_modify(|n| *n = n.wrapping_add(1));
}

/// Says that this process committed activity rows (or may have): wakes the sequencers of the
/// process and, through [`spawn_relay`], those of other processes. Call it **after** the
/// commit; it costs a counter increment.
pub fn activity_written() {
    bump(&ACTIVITY);
}

/// A sequencer's view of the activity hints (this process's and, by `NOTIFY`, the others').
pub struct ActivityHint {
    local: watch::Receiver<u64>,
    remote: watch::Receiver<u64>,
}

impl Default for ActivityHint {
    fn default() -> Self {
        Self::new()
    }
}

impl ActivityHint {
    /// A view that has seen every hint given so far.
    pub fn new() -> ActivityHint {
        let mut local = ACTIVITY.subscribe();
        local.mark_unchanged();
        let mut remote = REMOTE.subscribe();
        remote.mark_unchanged();
        ActivityHint { local, remote }
    }

    /// Resolves at the next hint (at once when one was given since the last call).
    pub async fn next(&mut self) {
        // The senders are statics: `changed` never fails.
        tokio::select! {
            _ = self.local.changed() => {}
            _ = self.remote.changed() => {}
        }
    }

    /// Passes `NOTIFY vpp_activity` (other processes' hints) on to this process's sequencers
    /// until cancelled, through the shared reconnecting listen loop.
    pub fn listen(database_url: String, cancel: CancellationToken) {
        crate::waiters::spawn_listen_loop(database_url, outbox::ACTIVITY_CHANNEL, cancel, |_| {
            bump(&REMOTE)
        });
    }
}

/// For a process that runs no sequencer: sends `NOTIFY vpp_activity` on a pooled connection
/// after this process's hints, outside every writer's transaction and one at a time (hints
/// given meanwhile make one more), so the sequencers of other processes wake.
pub fn spawn_relay(pool: Pool, cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut hint = ACTIVITY.subscribe();
        hint.mark_unchanged();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = hint.changed() => {}
            }
            let sent = match pool.get().await {
                Ok(mut conn) => outbox::notify_activity(&mut conn)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = sent {
                // The other processes' sequencers look every second anyway.
                tracing::debug!(error = %e, "activity hint not relayed");
            }
        }
    });
}

/// Process-wide registry of the spaces whose events someone waits for, and a counter of every
/// `NOTIFY vpp_events` for the webhook senders ([`EventWakes::any_space`]).
pub struct EventWakes {
    map: Mutex<HashMap<String, Arc<Notify>>>,
    any: watch::Sender<u64>,
}

impl Default for EventWakes {
    fn default() -> Self {
        EventWakes {
            map: Mutex::default(),
            any: watch::Sender::new(0),
        }
    }
}

/// Interest in one space's wake-ups; dropping it releases the entry once no other waiter
/// holds it.
pub struct Interest<'a> {
    wakes: &'a EventWakes,
    space: String,
    handle: Option<Arc<Notify>>,
}

impl Interest<'_> {
    /// Resolves at the space's next wake-up (create it before reading, then await it).
    /// (Always `Some` until dropped.)
    pub fn notify(&self) -> Option<&Notify> {
        self.handle.as_deref()
    }
}

impl Drop for Interest<'_> {
    fn drop(&mut self) {
        self.handle = None;
        let mut map = self.wakes.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get(&self.space)
            && Arc::strong_count(n) == 1
        {
            map.remove(&self.space);
        }
    }
}

impl EventWakes {
    /// Registers interest in `space` until the returned guard is dropped.
    pub fn watch(&self, space: &str) -> Interest<'_> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let handle = map
            .entry(space.to_owned())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone();
        Interest {
            wakes: self,
            space: space.to_owned(),
            handle: Some(handle),
        }
    }

    /// How many spaces are watched now.
    pub fn watched(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Wakes the waiters of `space` (and those of any space).
    pub fn wake(&self, space: &str) {
        {
            let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get(space) {
                n.notify_waiters();
            }
        }
        bump(&self.any);
    }

    /// Changes at each wake-up of any space (the webhook senders wait on it). A receiver keeps
    /// a wake-up that came while its holder was busy, unlike a `Notify`'s waiters.
    pub fn any_space(&self) -> watch::Receiver<u64> {
        let mut rx = self.any.subscribe();
        rx.mark_unchanged();
        rx
    }

    /// Keeps a LISTEN connection open (reconnecting) and wakes waiters until cancelled.
    pub fn spawn_listener(self: Arc<Self>, database_url: String, cancel: CancellationToken) {
        crate::waiters::spawn_listen_loop(database_url, outbox::CHANNEL, cancel, move |space| {
            self.wake(space)
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_hint_given_while_the_sequencer_is_not_waiting_is_kept_for_its_next_wait() {
        let mut hint = ActivityHint::new();
        // Given before the wait (the sequencer was running a round): not lost.
        activity_written();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), hint.next())
                .await
                .is_ok()
        );
        // A remote hint wakes it too.
        bump(&REMOTE);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), hint.next())
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_wake_reaches_the_spaces_waiters_only_and_dropping_leaves_no_entry() {
        let wakes = EventWakes::default();
        let acme = wakes.watch("acme");
        let other = wakes.watch("other");
        let acme_woken = acme.notify().unwrap().notified();
        let other_woken = other.notify().unwrap().notified();
        wakes.wake("acme");
        assert!(
            tokio::time::timeout(Duration::from_secs(5), acme_woken)
                .await
                .is_ok()
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(20), other_woken)
                .await
                .is_err(),
            "another space's waiter was woken"
        );
        assert_eq!(wakes.watched(), 2);
        drop(acme);
        drop(other);
        assert_eq!(wakes.watched(), 0);
    }
}
