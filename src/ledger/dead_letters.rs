//! Dead letters: Apple jobs set aside after failing `VPP_JOB_MAX_ATTEMPTS` times
//! ([`super::jobs::fail`]) — listed per space (through their account), retried by hand, and
//! counted for the metrics. A retried job is queued again with its failures reset; its work
//! (an association, a release, an event's status, a user's retirement) goes on as if it had
//! never stopped. Housekeeping forgets a dead association or release whose assignment no
//! longer waits for it ([`forget_settled`]).

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::jobs::JobKind;

crate::text_enum! {
    /// Where a dead letter stands.
    pub enum DeadLetterState {
        /// Set aside: not retried until someone retries it.
        Dead = "dead",
        /// Retried: queued again, it runs now.
        Queued = "queued",
        /// Retried while an identical job was queued (a user's retirement): dropped, the
        /// other one does the work.
        Superseded = "superseded",
    }
}

/// A dead (or just retried) job, as the API shows it.
#[derive(Debug, QueryableByName)]
pub struct DeadLetterRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub kind: JobKind,
    #[diesel(sql_type = Text)]
    pub state: DeadLetterState,
    #[diesel(sql_type = SqlUuid)]
    pub account_id: Uuid,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub assignment_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<Text>)]
    pub adam_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub pricing_param: Option<String>,
    /// The Apple event a status poll follows.
    #[diesel(sql_type = Nullable<Text>)]
    pub event_id: Option<String>,
    /// Failed attempts.
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub failures: i32,
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub dead_at: Option<DateTime<Utc>>,
}

/// What queueing a dead letter again sets: queued now, attempts and failures reset (a retry
/// here, and a Repair plan's: `super::repairs`).
pub const REQUEUED: &str = "state = 'queued', attempts = 0, failures = 0, dead_at = NULL,
                            run_at = now(), locked_by = NULL, locked_until = NULL";

/// The columns of a [`DeadLetterRow`] of job `j`, its state given by `state` (an SQL
/// expression).
fn columns(state: &str) -> String {
    format!(
        "j.id, j.kind, {state} AS state, j.account_id, j.assignment_id, j.adam_id,
         j.pricing_param, j.payload ->> 'event_id' AS event_id, j.failures, j.last_error,
         j.created_at, j.dead_at"
    )
}

/// The dead letters of `space`'s accounts, oldest first, after id `after`.
pub async fn list(
    conn: &mut AsyncPgConnection,
    space: &str,
    after: Option<i64>,
    limit: i64,
) -> diesel::QueryResult<Vec<DeadLetterRow>> {
    diesel::sql_query(format!(
        "SELECT {} FROM jobs j JOIN accounts a ON a.id = j.account_id
          WHERE a.space_id = $1 AND j.state = 'dead' AND j.id > $2
          ORDER BY j.id LIMIT $3",
        columns("j.state")
    ))
    .bind::<Text, _>(space)
    .bind::<BigInt, _>(after.unwrap_or(0))
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// One dead letter of `space`.
pub async fn get(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: i64,
) -> diesel::QueryResult<Option<DeadLetterRow>> {
    let mut rows: Vec<DeadLetterRow> = diesel::sql_query(format!(
        "SELECT {} FROM jobs j JOIN accounts a ON a.id = j.account_id
          WHERE a.space_id = $1 AND j.id = $2 AND j.state = 'dead'",
        columns("j.state")
    ))
    .bind::<Text, _>(space)
    .bind::<BigInt, _>(id)
    .load(conn)
    .await?;
    Ok(rows.pop())
}

/// Queues the dead letter `id` of `space` again, now, with its attempts and failures reset. `None` when
/// `space` has no such dead letter. A user's retirement whose twin was queued meanwhile (one
/// queued retirement per user and account) is dropped instead: the twin does its work; the
/// answer then says `state: "superseded"`.
pub async fn retry(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: i64,
) -> diesel::QueryResult<Option<DeadLetterRow>> {
    let mut rows: Vec<DeadLetterRow> = diesel::sql_query(format!(
        "WITH dead AS (
              SELECT j.id, j.dedupe_key FROM jobs j JOIN accounts a ON a.id = j.account_id
               WHERE a.space_id = $1 AND j.id = $2 AND j.state = 'dead'
                 FOR UPDATE OF j),
              twin AS (
              SELECT 1 FROM jobs q, dead
               WHERE q.dedupe_key = dead.dedupe_key AND q.state = 'queued'),
              dropped AS (
              DELETE FROM jobs j USING dead WHERE j.id = dead.id AND EXISTS (SELECT 1 FROM twin)
              RETURNING {}),
              queued AS (
              UPDATE jobs j SET {REQUEUED}
                FROM dead WHERE j.id = dead.id AND NOT EXISTS (SELECT 1 FROM twin)
              RETURNING {})
         SELECT * FROM queued UNION ALL SELECT * FROM dropped",
        columns("'superseded'::text"),
        columns("j.state"),
    ))
    .bind::<Text, _>(space)
    .bind::<BigInt, _>(id)
    .load(conn)
    .await?;
    Ok(rows.pop())
}

/// Forgets the dead associations and releases whose assignment no longer waits for them (it
/// was revoked, failed, or its work was done by a repair's new job); returns how many. Their
/// history is the assignment's and the activity log's; a dead letter is only pending work.
pub async fn forget_settled(conn: &mut AsyncPgConnection) -> diesel::QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM jobs j
          WHERE j.state = 'dead' AND j.kind IN ('associate', 'disassociate')
            AND NOT EXISTS (
                SELECT 1 FROM assignments a
                 WHERE a.id = j.assignment_id
                   AND ((j.kind = 'associate' AND a.state IN ('pending', 'associating'))
                        OR (j.kind = 'disassociate' AND a.state = 'revoking')))",
    )
    .execute(conn)
    .await
}

/// Dead letters per kind (for the metrics).
pub async fn count_by_kind(
    conn: &mut AsyncPgConnection,
) -> diesel::QueryResult<Vec<(JobKind, i64)>> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = Text)]
        kind: JobKind,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let rows: Vec<Count> = diesel::sql_query(
        "SELECT kind, count(*) AS n FROM jobs WHERE state = 'dead' GROUP BY kind",
    )
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.kind, r.n)).collect())
}
