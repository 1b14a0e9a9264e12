//! The job table: background work claimed with `FOR UPDATE SKIP LOCKED` under leases.

use crate::db::prepared::Prepare;
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
    .prepared()
    .execute(conn)
    .await?;
    Ok(n == 1)
}

use chrono::{DateTime, Utc};

#[derive(Clone, Debug, diesel::QueryableByName)]
pub struct JobRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub kind: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Uuid>)]
    pub assignment_id: Option<Uuid>,
    #[diesel(sql_type = diesel::sql_types::Jsonb)]
    pub payload: serde_json::Value,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub attempts: i32,
    /// Its batch is complete (the account is quiet, the batch waited long enough, or it is a
    /// release). A batch claimed only because it filled an Apple request is not: its last,
    /// partial request waits for more work.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub closed: bool,
}

#[derive(diesel::QueryableByName)]
struct AccountId {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    account_id: Uuid,
}

#[derive(diesel::QueryableByName)]
struct Locked {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    locked: bool,
}

/// Session advisory lock that makes one worker (across all replicas) the dispatcher of an
/// account at a time. Use on a dedicated connection: the lock dies with its session.
pub async fn try_lock_account(conn: &mut AsyncPgConnection, account: Uuid) -> QueryResult<bool> {
    let row: Locked = diesel::sql_query(
        "SELECT pg_try_advisory_lock(hashtextextended($1::text, 7610)) AS locked",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .prepared()
    .get_result(conn)
    .await?;
    Ok(row.locked)
}

pub async fn unlock_account(conn: &mut AsyncPgConnection, account: Uuid) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_advisory_unlock(hashtextextended($1::text, 7610))")
        .bind::<diesel::sql_types::Uuid, _>(account)
        .prepared()
        .execute(conn)
        .await
        .map(|_| ())
}

/// How work is grouped into batches.
pub struct Batching {
    /// How long claimed jobs stay leased.
    pub lease: std::time::Duration,
    /// Batches are due when no association joined any of the account's batches for this long
    /// (a burst is over) ...
    pub quiet: std::time::Duration,
    /// ... or its oldest job waited this long ...
    pub max_wait: std::time::Duration,
    /// ... or it fills an Apple request: this many device-license jobs ...
    pub full_devices: i64,
    /// ... or this many user-license jobs.
    pub full_users: i64,
    /// Jobs leased per claim at most.
    pub max: i64,
}

#[derive(diesel::QueryableByName)]
struct Any {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    any: bool,
}

/// Whether any queued job's time has come (an index probe).
pub async fn any_ready(conn: &mut AsyncPgConnection) -> QueryResult<bool> {
    let row: Any = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'queued' AND run_at <= now()) AS any",
    )
    .prepared()
    .get_result(conn)
    .await?;
    Ok(row.any)
}

/// Accounts with work due, the longest waiting first: what [`claim`] would lease for them.
///
/// One pass over the queued jobs, grouped by batch (jobs carry their batch key), so workers
/// that look for work every `VPP_IDLE_POLL_MS` cost PostgreSQL little while a burst is still
/// gathering and nothing is due (measured over 19,000 queued associations: one query of a few
/// milliseconds, where an account list, a due check and a join to `assignments` took 36).
pub async fn due_accounts(
    conn: &mut AsyncPgConnection,
    batching: &Batching,
    limit: i64,
) -> QueryResult<Vec<Uuid>> {
    let rows: Vec<AccountId> = diesel::sql_query(
        "WITH batches AS (
             SELECT account_id, kind, license_type, count(*) AS size,
                    min(created_at) AS oldest, max(created_at) AS newest
               FROM jobs
              WHERE state = 'queued' AND account_id IS NOT NULL AND run_at <= now()
                AND (locked_until IS NULL OR locked_until < now())
              GROUP BY account_id, kind, adam_id, pricing_param, license_type
         )
         SELECT account_id FROM batches
          GROUP BY account_id
         HAVING bool_or(kind <> 'associate')
             -- the conditions of `claim`: the burst is over, a batch waited long enough, or a
             -- batch fills an Apple request
             OR COALESCE(max(newest) FILTER (WHERE kind = 'associate'), 'infinity')
                  < now() - make_interval(secs => $1)
             OR min(oldest) < now() - make_interval(secs => $2)
             OR bool_or(size >= CASE WHEN license_type = 'user' THEN $4 ELSE $3 END)
          ORDER BY min(oldest)
          LIMIT $5",
    )
    .bind::<diesel::sql_types::Double, _>(batching.quiet.as_secs_f64())
    .bind::<diesel::sql_types::Double, _>(batching.max_wait.as_secs_f64())
    .bind::<diesel::sql_types::BigInt, _>(batching.full_devices)
    .bind::<diesel::sql_types::BigInt, _>(batching.full_users)
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .prepared()
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.account_id).collect())
}

/// Leases the account's due work: event polls whose time has come, associate/disassociate
/// jobs of *due batches* (one batch = one asset, pricing, license type and kind; see
/// [`Batching`]), and of a batch still gathering, the oldest jobs that fill whole Apple
/// requests. Expired leases of a dead worker are taken over.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    worker: &str,
    batching: &Batching,
) -> QueryResult<Vec<JobRow>> {
    diesel::sql_query(
        "WITH free AS (
             SELECT j.id, j.kind, j.created_at, j.adam_id, j.pricing_param, j.license_type
               FROM jobs j
              WHERE j.account_id = $1 AND j.state = 'queued' AND j.run_at <= now()
                AND (j.locked_until IS NULL OR j.locked_until < now())
         ), batched AS (
             -- One pass over the account's due jobs (window functions, no self-join: a claim
             -- stays linear in the queue's length). A batch: kind, asset, pricing, license type.
             SELECT id, kind, adam_id, license_type,
                    count(*) OVER batch AS size,
                    row_number() OVER in_order AS rank,
                    min(created_at) OVER batch AS oldest,
                    max(created_at) FILTER (WHERE kind = 'associate') OVER () AS newest_association
               FROM free
             WINDOW batch AS (PARTITION BY kind, adam_id, pricing_param, license_type),
                    in_order AS (PARTITION BY kind, adam_id, pricing_param, license_type ORDER BY id)
         ), pick AS (
             SELECT id,
                    -- Event polls (and jobs queued before jobs carried their batch key) are
                    -- never held back.
                    (kind NOT IN ('associate', 'disassociate') OR adam_id IS NULL
                     -- Releases go out at once: licenses they free may already be re-allocated,
                     -- and Apple must see the release before the association that reuses it.
                     OR kind = 'disassociate'
                     -- The account's burst is over: no association joined any batch lately ...
                     OR COALESCE(newest_association, '-infinity') < now() - make_interval(secs => $4)
                     -- ... or this batch waited long enough.
                     OR oldest < now() - make_interval(secs => $5)) AS closed,
                    -- A batch still gathering: only the oldest jobs that fill whole requests
                    -- (the rest stays unleased, so the next claim does not take it twice).
                    rank <= size / CASE WHEN license_type = 'user' THEN $8 ELSE $6 END
                                 * CASE WHEN license_type = 'user' THEN $8 ELSE $6 END AS full
               FROM batched
         ), locked AS (
             SELECT j.id, p.closed
               FROM pick p JOIN jobs j ON j.id = p.id
              WHERE p.closed OR p.full
              ORDER BY j.id LIMIT $7
                FOR UPDATE OF j SKIP LOCKED
         )
         UPDATE jobs SET locked_by = $2, locked_until = now() + make_interval(secs => $3),
                         attempts = jobs.attempts + 1
           FROM locked
          WHERE jobs.id = locked.id
      RETURNING jobs.id, jobs.kind, jobs.assignment_id, jobs.payload, jobs.attempts, locked.closed",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .bind::<diesel::sql_types::Text, _>(worker)
    .bind::<diesel::sql_types::Double, _>(batching.lease.as_secs_f64())
    .bind::<diesel::sql_types::Double, _>(batching.quiet.as_secs_f64())
    .bind::<diesel::sql_types::Double, _>(batching.max_wait.as_secs_f64())
    .bind::<diesel::sql_types::BigInt, _>(batching.full_devices)
    .bind::<diesel::sql_types::BigInt, _>(batching.max)
    .bind::<diesel::sql_types::BigInt, _>(batching.full_users)
    .prepared()
    .load(conn)
    .await
}

pub async fn delete(conn: &mut AsyncPgConnection, ids: &[i64]) -> QueryResult<usize> {
    diesel::sql_query("DELETE FROM jobs WHERE id = ANY($1)")
        .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(ids)
        .prepared()
        .execute(conn)
        .await
}

/// Releases jobs to run again at `at` (retry, throttling, waiting for another event).
pub async fn postpone(
    conn: &mut AsyncPgConnection,
    ids: &[i64],
    at: DateTime<Utc>,
    error: Option<&str>,
) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE jobs SET run_at = $2, locked_by = NULL, locked_until = NULL,
                         last_error = COALESCE($3, last_error)
          WHERE id = ANY($1)",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(ids)
    .bind::<diesel::sql_types::Timestamptz, _>(at)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(error)
    .prepared()
    .execute(conn)
    .await
}

/// Hands claimed jobs back to run at `at`, their claim not counted as an attempt: the partial
/// remainder of a batch that waits for more work, a release that waits for an association.
pub async fn unclaim(
    conn: &mut AsyncPgConnection,
    ids: &[i64],
    at: DateTime<Utc>,
) -> QueryResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    diesel::sql_query(
        "UPDATE jobs SET locked_by = NULL, locked_until = NULL, run_at = $2,
                         attempts = GREATEST(attempts - 1, 0)
          WHERE id = ANY($1)",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(ids)
    .bind::<diesel::sql_types::Timestamptz, _>(at)
    .prepared()
    .execute(conn)
    .await
}

/// Moves every queued job of an account that is due before `at` to `at` (the account cannot
/// call Apple until then).
pub async fn postpone_account(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    at: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE jobs SET run_at = $2 WHERE account_id = $1 AND state = 'queued' AND run_at < $2",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .bind::<diesel::sql_types::Timestamptz, _>(at)
    .prepared()
    .execute(conn)
    .await
}

/// Queues a poll of an Apple event.
pub async fn enqueue_poll(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    event_id: &str,
    at: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO jobs (kind, account_id, payload, run_at) VALUES ('poll_event', $1, $2, $3)",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .bind::<diesel::sql_types::Jsonb, _>(serde_json::json!({ "event_id": event_id }))
    .bind::<diesel::sql_types::Timestamptz, _>(at)
    .prepared()
    .execute(conn)
    .await
    .map(|_| ())
}

/// Queued or leased jobs (for tests and the drain check).
pub async fn count(conn: &mut AsyncPgConnection) -> QueryResult<i64> {
    use crate::db::schema::jobs;
    jobs::table
        .filter(jobs::state.eq("queued"))
        .count()
        .get_result(conn)
        .await
}
