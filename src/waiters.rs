//! Waiting for an assignment to reach its final state (the bounded `wait` of allocation and of
//! reading an assignment).
//!
//! Whoever finalizes assignments (the dispatcher, the notification receiver, in any replica)
//! sends a wake-up in the same transaction ([`crate::ledger::wakeups`]). Each process keeps one
//! listening connection and wakes its local waiters; waiters also re-read the row every second,
//! so a lost notification or a reconnect only costs latency.
//!
//! A wait registers its interest through a guard ([`Watch`]) that always removes it: a wait that
//! ends, fails, or whose future is dropped (the caller went away) leaves nothing behind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::Pool;
use crate::domain::records::AssignmentRow;
use crate::ledger::{assignments, wakeups};

/// Why a wait could not read the assignment.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    #[error(transparent)]
    Pool(#[from] diesel_async::pooled_connection::deadpool::PoolError),
}

/// Interest in one assignment's wake-ups; dropping it releases the registry entry once no
/// other wait holds it.
pub struct Watch<'a> {
    waiters: &'a Waiters,
    id: Uuid,
    handle: Option<Arc<Notify>>,
}

impl Watch<'_> {
    fn notify(&self) -> Option<&Arc<Notify>> {
        self.handle.as_ref()
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        self.handle = None;
        self.waiters.release(self.id);
    }
}

/// Process-wide registry of waiters.
#[derive(Default)]
pub struct Waiters {
    map: Mutex<HashMap<Uuid, Arc<Notify>>>,
}

impl Waiters {
    /// Registers interest in an assignment's wake-ups (shared by all its waiters) until the
    /// returned guard is dropped.
    pub fn watch(&self, id: Uuid) -> Watch<'_> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let handle = map
            .entry(id)
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone();
        Watch {
            waiters: self,
            id,
            handle: Some(handle),
        }
    }

    /// How many assignments are watched now.
    pub fn watched(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Waits (bounded by `timeout`) until the assignment is final; returns it as it is then
    /// (`None` when it does not exist in `space`).
    pub async fn wait_final(
        &self,
        pool: &Pool,
        space: &str,
        id: Uuid,
        timeout: Duration,
    ) -> Result<Option<AssignmentRow>, WaitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let watch = self.watch(id);
        loop {
            let notified = watch.notify().map(|n| n.notified());
            let row = {
                let mut conn = pool.get().await?;
                assignments::find(&mut conn, space, id).await?
            };
            let Some(row) = row else { return Ok(None) };
            let now = tokio::time::Instant::now();
            if row.state.is_final() || now >= deadline {
                return Ok(Some(row));
            }
            let nap = (deadline - now).min(Duration::from_secs(1));
            match notified {
                Some(notified) => tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(nap) => {}
                },
                None => tokio::time::sleep(nap).await,
            }
        }
    }

    /// Drops the handle when its last waiter is gone.
    fn release(&self, id: Uuid) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get(&id)
            && Arc::strong_count(n) == 1
        {
            map.remove(&id);
        }
    }

    fn wake(&self, ids: &str) {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids.split(',') {
            if let Ok(id) = id.parse::<Uuid>()
                && let Some(n) = map.get(&id)
            {
                n.notify_waiters();
            }
        }
    }

    /// Keeps a LISTEN connection open (reconnecting) and wakes waiters until cancelled.
    pub fn spawn_listener(self: Arc<Self>, database_url: String, cancel: CancellationToken) {
        spawn_listen_loop(database_url, wakeups::ASSIGNMENTS, cancel, move |ids| {
            self.wake(ids)
        });
    }
}

/// Keeps a LISTEN connection on `channel` open — reconnecting a second after it fails or
/// drops — and hands each notification's payload to `on_payload`, until cancelled. Each
/// process's waiters (assignments here, the event feed's long polls) follow their channel
/// this way.
pub fn spawn_listen_loop(
    database_url: String,
    channel: &'static str,
    cancel: CancellationToken,
    on_payload: impl Fn(&str) + Send + 'static,
) {
    tokio::spawn(async move {
        while !cancel.is_cancelled() {
            match wakeups::listen_on(&database_url, channel).await {
                Ok(mut conn) => {
                    let mut stream = std::pin::pin!(conn.notifications_stream());
                    loop {
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            next = stream.next() => match next {
                                Some(Ok(n)) => on_payload(&n.payload),
                                _ => break,
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(channel, error = %e, "listener cannot connect"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_that_is_dropped_midway_leaves_no_entry() {
        let waiters = Waiters::default();
        let id = Uuid::new_v4();
        let first = waiters.watch(id);
        let second = waiters.watch(id);
        assert_eq!(
            waiters.watched(),
            1,
            "two waits of one assignment share one entry"
        );
        drop(first);
        assert_eq!(
            waiters.watched(),
            1,
            "the entry stays while a wait holds it"
        );
        // A wait cancelled while parked (its future dropped by a timeout) still releases.
        let parked = async {
            let watch = waiters.watch(id);
            if let Some(n) = watch.notify() {
                n.notified().await;
            }
        };
        assert!(
            tokio::time::timeout(Duration::from_millis(20), parked)
                .await
                .is_err()
        );
        drop(second);
        assert_eq!(waiters.watched(), 0, "no wait left, no entry left");
    }

    #[tokio::test]
    async fn a_wake_up_reaches_a_parked_wait() {
        let waiters = Waiters::default();
        let id = Uuid::new_v4();
        let watch = waiters.watch(id);
        let notified = watch.notify().map(|n| n.notified());
        waiters.wake(&format!("{},{id}", Uuid::new_v4()));
        let woke = tokio::time::timeout(Duration::from_secs(5), async {
            if let Some(n) = notified {
                n.await;
            }
        })
        .await;
        assert!(woke.is_ok(), "the wait was not woken");
    }
}
