//! Waiting for an assignment to reach its final state (the bounded `wait` of allocation and of
//! reading an assignment).
//!
//! Whoever finalizes assignments (the dispatcher, the notification receiver, in any replica)
//! sends `NOTIFY vpp_assignment, '<id>,<id>…'` in the same transaction. Each process keeps one
//! `LISTEN` connection and wakes its local waiters; waiters also re-read the row every second,
//! so a lost notification or a reconnect only costs latency.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const CHANNEL: &str = "vpp_assignment";

/// Sends the wake-up for `ids` (delivered when the surrounding transaction commits).
pub async fn notify(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> diesel::QueryResult<()> {
    // NOTIFY payloads are limited to 8000 bytes: 200 ids (7400 bytes) per notification.
    for chunk in ids.chunks(200) {
        let payload = chunk
            .iter()
            .map(Uuid::to_string)
            .collect::<Vec<_>>()
            .join(",");
        diesel::sql_query("SELECT pg_notify($1, $2)")
            .bind::<diesel::sql_types::Text, _>(CHANNEL)
            .bind::<diesel::sql_types::Text, _>(payload)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Process-wide registry of waiters.
#[derive(Default)]
pub struct Waiters {
    map: Mutex<HashMap<Uuid, Arc<Notify>>>,
}

impl Waiters {
    /// The wake-up handle of an assignment (shared by all its waiters).
    pub fn handle(&self, id: Uuid) -> Arc<Notify> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(id)
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    /// Drops the handle when its last waiter is gone.
    pub fn release(&self, id: Uuid) {
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
        tokio::spawn(async move {
            while !cancel.is_cancelled() {
                match AsyncPgConnection::establish(&database_url).await {
                    Ok(mut conn) => {
                        if conn
                            .batch_execute(&format!("LISTEN {CHANNEL}"))
                            .await
                            .is_ok()
                        {
                            let mut stream = std::pin::pin!(conn.notifications_stream());
                            loop {
                                tokio::select! {
                                    _ = cancel.cancelled() => return,
                                    next = stream.next() => match next {
                                        Some(Ok(n)) => self.wake(&n.payload),
                                        _ => break,
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "waiter listener cannot connect"),
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }
}
