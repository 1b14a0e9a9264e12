//! The job table: background work claimed with `FOR UPDATE SKIP LOCKED` under leases.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// Enqueues a job unless one with the same `dedupe_key` is already waiting. Returns whether a
/// row was inserted. Call inside the transaction that made the work necessary.
pub async fn enqueue(
    conn: &mut AsyncPgConnection,
    kind: &str,
    account: Option<Uuid>,
    payload: serde_json::Value,
    dedupe_key: Option<&str>,
) -> QueryResult<bool> {
    let n = diesel::sql_query(
        "INSERT INTO jobs (kind, account_id, payload, dedupe_key)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL AND state = 'queued' DO NOTHING",
    )
    .bind::<diesel::sql_types::Text, _>(kind)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Uuid>, _>(account)
    .bind::<diesel::sql_types::Jsonb, _>(payload)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(dedupe_key)
    .execute(conn)
    .await?;
    Ok(n == 1)
}
