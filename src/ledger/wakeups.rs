//! Wake-ups of assignment waiters across replicas ([`crate::waiters`]): whoever finalizes
//! assignments sends `NOTIFY vpp_assignment, '<id>,<id>…'` in its transaction; each process
//! keeps one connection that `LISTEN`s.

use diesel_async::{AsyncPgConnection, RunQueryDsl};
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

/// The channel of assignment wake-ups; each payload is a comma-separated list of ids.
pub const ASSIGNMENTS: &str = CHANNEL;

/// A dedicated connection (not pooled) listening on `channel` (a fixed name of this crate's:
/// [`ASSIGNMENTS`], `outbox::CHANNEL`); read it with `notifications_stream()`.
pub async fn listen_on(
    database_url: &str,
    channel: &'static str,
) -> diesel::ConnectionResult<AsyncPgConnection> {
    // Named like every other session of the service, so `pg_stat_activity` tells them apart.
    crate::db::pool::open(
        database_url,
        &format!("SET application_name = 'vpp-broker listener {channel}'; LISTEN {channel}"),
    )
    .await
}
