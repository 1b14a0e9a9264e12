//! Wake-ups of assignment waiters across replicas ([`crate::waiters`]): whoever finalizes
//! assignments sends `NOTIFY vpp_assignment, '<id>,<id>…'` in its transaction; each process
//! keeps one connection that `LISTEN`s.

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
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

/// A dedicated connection (not pooled) listening for wake-ups; read them with
/// `notifications_stream()`. Each payload is a comma-separated list of assignment ids.
pub async fn listen(database_url: &str) -> diesel::ConnectionResult<AsyncPgConnection> {
    let mut conn = AsyncPgConnection::establish(database_url).await?;
    conn.batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
    Ok(conn)
}
