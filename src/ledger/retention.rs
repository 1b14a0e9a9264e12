//! Rows kept for a while only: what housekeeping forgets.

use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// Forgets idempotency keys older than 24 hours; returns how many.
pub async fn forget_idempotency_keys(conn: &mut AsyncPgConnection) -> diesel::QueryResult<usize> {
    diesel::sql_query("DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'")
        .execute(conn)
        .await
}
