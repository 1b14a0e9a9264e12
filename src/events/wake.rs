//! Waking the feed's long polls when the sequencer appended events to their space: one
//! `LISTEN vpp_events` connection per process (payload: the space), and a registry of the
//! spaces someone waits on. A long poll also re-reads every second, so a lost notification or
//! a reconnect costs latency only (as [`crate::waiters`] does for assignments).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::ledger::outbox;

/// Process-wide registry of the spaces whose events someone waits for.
#[derive(Default)]
pub struct EventWakes {
    map: Mutex<HashMap<String, Arc<Notify>>>,
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

    /// Wakes the waiters of `space`.
    pub fn wake(&self, space: &str) {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get(space) {
            n.notify_waiters();
        }
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
