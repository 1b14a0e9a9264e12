//! Rows kept for a while only: what housekeeping forgets.

use diesel::sql_types::Integer;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// Days an Apple event is kept after it finished. Its status polls and Apple's notifications
/// end within hours; each assignment's outcome stays in the activity log (with the event id)
/// and on the assignment.
pub const APPLE_EVENT_RETENTION_DAYS: i32 = 30;

/// Rows one delete statement removes at most (short transactions on a large backlog).
const DELETE_BATCH: i64 = 10_000;

/// Forgets idempotency keys older than 24 hours; returns how many.
pub async fn forget_idempotency_keys(conn: &mut AsyncPgConnection) -> diesel::QueryResult<usize> {
    diesel::sql_query("DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'")
        .execute(conn)
        .await
}

/// Forgets Apple events finished more than `days` days ago, in batches; returns how many.
/// Pending events are never forgotten (their work is not done).
pub async fn forget_finished_apple_events(
    conn: &mut AsyncPgConnection,
    days: i32,
) -> diesel::QueryResult<usize> {
    let mut total = 0;
    loop {
        let n = diesel::sql_query(format!(
            "DELETE FROM apple_events WHERE event_id IN (
                 SELECT event_id FROM apple_events
                  WHERE finished_at IS NOT NULL
                    AND finished_at < now() - make_interval(days => $1)
                  LIMIT {DELETE_BATCH})"
        ))
        .bind::<Integer, _>(days)
        .execute(conn)
        .await?;
        total += n;
        if (n as i64) < DELETE_BATCH {
            return Ok(total);
        }
    }
}
