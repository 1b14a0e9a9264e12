//! The job table: background work claimed with `FOR UPDATE SKIP LOCKED` under leases.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::prepared::Prepare;

crate::text_enum! {
    /// What a job does: the `kind` column. Every kind has its payload type (see [`Job`]).
    pub enum JobKind {
        /// Associate an assignment's license at Apple.
        Associate = "associate",
        /// Release an assignment's license at Apple.
        Disassociate = "disassociate",
        /// Poll the status of an Apple event until it finishes.
        PollEvent = "poll_event",
        /// Sync an account with Apple (payload `{"run_id": …}`): run by the sync workers
        /// (`ledger::sync_runs`), never claimed by the dispatcher, one per account at a time
        /// (unique index `jobs_one_sync_per_account`).
        Sync = "sync",
        /// Retire a user at Apple (`POST /users/retire`, payload [`RetireUser`]): queued by a
        /// `user.deleted` lifecycle event per account where the user is registered, sent once
        /// the user's releases there are settled ([`crate::ledger::apple_users`]).
        RetireUser = "retire_user",
    }
}

/// The kinds the dispatcher claims, as an SQL list. Listed, not "all but `sync`": a job of a
/// kind a newer release added is left alone by this one (an older replica during a rolling
/// update neither claims nor deletes it).
const DISPATCHED: &str = "'associate', 'disassociate', 'poll_event', 'retire_user'";

/// The payload of association and release jobs: one assignment. It is kept in the job row's
/// `assignment_id` column (next to the batch key, `adam_id`, `pricing_param` and
/// `license_type`, copied from the assignment when the job is queued), not in `payload`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AssignmentWork {
    pub assignment_id: Uuid,
}

/// The payload of an event poll, serde-encoded into the `payload` column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollEvent {
    pub event_id: String,
}

/// The payload of a user's retirement at one account, serde-encoded into the `payload` column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetireUser {
    pub client_user_id: String,
}

/// A job: its kind and that kind's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Job {
    Associate(AssignmentWork),
    Disassociate(AssignmentWork),
    PollEvent(PollEvent),
    RetireUser(RetireUser),
}

impl Job {
    pub fn kind(&self) -> JobKind {
        match self {
            Job::Associate(_) => JobKind::Associate,
            Job::Disassociate(_) => JobKind::Disassociate,
            Job::PollEvent(_) => JobKind::PollEvent,
            Job::RetireUser(_) => JobKind::RetireUser,
        }
    }

    /// The assignment an association or release job is about.
    pub fn assignment(&self) -> Option<Uuid> {
        match self {
            Job::Associate(w) | Job::Disassociate(w) => Some(w.assignment_id),
            Job::PollEvent(_) | Job::RetireUser(_) => None,
        }
    }

    /// Reads a stored job; `None` when the row is not a job of a known kind with its payload.
    fn decode(kind: &str, assignment_id: Option<Uuid>, payload: serde_json::Value) -> Option<Job> {
        let work = assignment_id.map(|assignment_id| AssignmentWork { assignment_id });
        match kind.parse::<JobKind>().ok()? {
            JobKind::Associate => work.map(Job::Associate),
            JobKind::Disassociate => work.map(Job::Disassociate),
            JobKind::PollEvent => serde_json::from_value(payload).ok().map(Job::PollEvent),
            JobKind::RetireUser => serde_json::from_value(payload).ok().map(Job::RetireUser),
            JobKind::Sync => None,
        }
    }

    /// The `assignment_id` and `payload` columns of this job.
    fn columns(&self) -> (Option<Uuid>, serde_json::Value) {
        match self {
            Job::Associate(w) | Job::Disassociate(w) => {
                (Some(w.assignment_id), serde_json::json!({}))
            }
            Job::PollEvent(p) => (
                None,
                serde_json::to_value(p).unwrap_or_else(|_| serde_json::json!({})),
            ),
            Job::RetireUser(r) => (
                None,
                serde_json::to_value(r).unwrap_or_else(|_| serde_json::json!({})),
            ),
        }
    }
}

/// Queues `job` for `account`, to run at `at`. An association or release copies its batch key
/// from its assignment. Call inside the transaction that made the work necessary.
pub async fn enqueue(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    job: &Job,
    at: DateTime<Utc>,
) -> QueryResult<()> {
    let (assignment, payload) = job.columns();
    diesel::sql_query(
        "INSERT INTO jobs (kind, account_id, assignment_id, payload, run_at, adam_id,
                           pricing_param, license_type)
         SELECT $1, $2, $3, $4, $5, a.adam_id, a.pricing_param, a.license_type
           FROM (SELECT 1) one LEFT JOIN assignments a ON a.id = $3",
    )
    .bind::<diesel::sql_types::Text, _>(job.kind())
    .bind::<diesel::sql_types::Uuid, _>(account)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Uuid>, _>(assignment)
    .bind::<diesel::sql_types::Jsonb, _>(payload)
    .bind::<diesel::sql_types::Timestamptz, _>(at)
    .prepared()
    .execute(conn)
    .await
    .map(|_| ())
}

/// A job as a worker leased it.
#[derive(Clone, Debug)]
pub struct ClaimedJob {
    pub id: i64,
    /// `None`: the row is not a job this code knows (nothing can be done with it).
    pub job: Option<Job>,
    pub attempts: i32,
    /// Its batch is complete (the account's burst of its kind is over, the batch waited long
    /// enough, or it is a release leaving with an association). A batch claimed only because
    /// it filled an Apple request is not: its last, partial request waits for more work.
    pub closed: bool,
}

impl ClaimedJob {
    pub fn kind(&self) -> Option<JobKind> {
        self.job.as_ref().map(Job::kind)
    }
}

#[derive(diesel::QueryableByName)]
struct JobRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    kind: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Uuid>)]
    assignment_id: Option<Uuid>,
    #[diesel(sql_type = diesel::sql_types::Jsonb)]
    payload: serde_json::Value,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    attempts: i32,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    closed: bool,
}

impl From<JobRow> for ClaimedJob {
    fn from(row: JobRow) -> Self {
        ClaimedJob {
            id: row.id,
            job: Job::decode(&row.kind, row.assignment_id, row.payload),
            attempts: row.attempts,
            closed: row.closed,
        }
    }
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
    /// Batches are due when no work of their kind (association, release) joined any of the
    /// account's batches for this long (a burst is over) ...
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
    let row: Any = diesel::sql_query(format!(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'queued' AND run_at <= now()
                                          AND kind IN ({DISPATCHED})) AS any"
    ))
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
    let rows: Vec<AccountId> = diesel::sql_query(format!(
        "WITH batches AS (
             SELECT account_id, kind, license_type, count(*) AS size,
                    min(created_at) AS oldest, max(created_at) AS newest
               FROM jobs
              WHERE state = 'queued' AND account_id IS NOT NULL AND run_at <= now()
                AND (locked_until IS NULL OR locked_until < now()) AND kind IN ({DISPATCHED})
              GROUP BY account_id, kind, adam_id, pricing_param, license_type
         )
         SELECT account_id FROM batches
          GROUP BY account_id
         HAVING bool_or(kind NOT IN ($6, $7))
             -- the conditions of `claim`: a burst (of associations, of releases) is over, a
             -- batch waited long enough, or a batch fills an Apple request
             OR COALESCE(max(newest) FILTER (WHERE kind = $6), 'infinity')
                  < now() - make_interval(secs => $1)
             OR (COALESCE(max(newest) FILTER (WHERE kind = $7), 'infinity')
                   < now() - make_interval(secs => $1)
                 AND NOT EXISTS (SELECT 1 FROM lifecycle_events e
                                   JOIN accounts a ON a.space_id = e.space_id
                                  WHERE a.id = batches.account_id
                                    AND e.state IN ('queued', 'scheduled')
                                    AND e.due_at <= now()))
             OR min(oldest) < now() - make_interval(secs => $2)
             OR bool_or(size >= CASE WHEN license_type = 'user' THEN $4 ELSE $3 END)
          ORDER BY min(oldest)
          LIMIT $5"
    ))
    .bind::<diesel::sql_types::Double, _>(batching.quiet.as_secs_f64())
    .bind::<diesel::sql_types::Double, _>(batching.max_wait.as_secs_f64())
    .bind::<diesel::sql_types::BigInt, _>(batching.full_devices)
    .bind::<diesel::sql_types::BigInt, _>(batching.full_users)
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .bind::<diesel::sql_types::Text, _>(JobKind::Associate)
    .bind::<diesel::sql_types::Text, _>(JobKind::Disassociate)
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
) -> QueryResult<Vec<ClaimedJob>> {
    let rows: Vec<JobRow> = diesel::sql_query(format!(
        "WITH free AS (
             SELECT j.id, j.kind, j.created_at, j.adam_id, j.pricing_param, j.license_type
               FROM jobs j
              WHERE j.account_id = $1 AND j.state = 'queued' AND j.run_at <= now()
                AND (j.locked_until IS NULL OR j.locked_until < now())
                AND j.kind IN ({DISPATCHED})
         ), batched AS (
             -- One pass over the account's due jobs (window functions, no self-join: a claim
             -- stays linear in the queue's length). A batch: kind, asset, pricing, license type.
             SELECT id, kind, adam_id, pricing_param, license_type,
                    count(*) OVER batch AS size,
                    row_number() OVER in_order AS rank,
                    min(created_at) OVER batch AS oldest,
                    max(created_at) FILTER (WHERE kind = $9) OVER () AS newest_association,
                    max(created_at) FILTER (WHERE kind = $10) OVER () AS newest_release
               FROM free
             WINDOW batch AS (PARTITION BY kind, adam_id, pricing_param, license_type),
                    in_order AS (PARTITION BY kind, adam_id, pricing_param, license_type ORDER BY id)
         ), tight AS (
             -- Assets whose count at Apple is tight: the ledger's live licenses, those
             -- assigned elsewhere and the licenses Apple still holds for releases not yet
             -- finished exceed Apple's total (as `submissions::release_shortfall` measures for
             -- A11's hold), so an association of the asset may need a license only the
             -- releases free. Only assets with releases due are looked at.
             SELECT s.adam_id, s.pricing_param
               FROM (SELECT DISTINCT adam_id, pricing_param FROM free WHERE kind = $10) r
               JOIN assets s ON s.account_id = $1 AND s.adam_id = r.adam_id
                            AND s.pricing_param = r.pricing_param
              CROSS JOIN LATERAL (
                    SELECT count(*) AS n FROM assignments a
                     WHERE a.account_id = s.account_id AND a.adam_id = s.adam_id
                       AND a.pricing_param = s.pricing_param AND a.state = 'revoking') rv
              WHERE s.held::bigint + s.foreign_assigned + rv.n > s.apple_total
         ), lifecycle AS (
             -- Lifecycle events of the account's space still to apply: a burst of revocations
             -- is not over (the worker commits them batch after batch).
             SELECT EXISTS (SELECT 1 FROM lifecycle_events e
                              JOIN accounts a ON a.space_id = e.space_id
                             WHERE a.id = $1 AND e.state IN ('queued', 'scheduled')
                               AND e.due_at <= now()) AS busy
         ), own AS (
             SELECT b.id, b.kind, b.adam_id, b.pricing_param,
                    -- (A job without a batch key is never tight: NULL must not reach `closed`.)
                    COALESCE((b.adam_id, b.pricing_param)
                               IN (SELECT adam_id, pricing_param FROM tight), false) AS tight,
                    -- Event polls (and jobs queued before jobs carried their batch key) are
                    -- never held back.
                    (b.kind NOT IN ($9, $10) OR b.adam_id IS NULL
                     -- The account's burst is over: no association (for an association), no
                     -- release (for a release, nor lifecycle events left to apply) joined any
                     -- batch lately ...
                     OR (kind = $9 AND COALESCE(newest_association, '-infinity')
                                         < now() - make_interval(secs => $4))
                     OR (kind = $10 AND COALESCE(newest_release, '-infinity')
                                          < now() - make_interval(secs => $4)
                                    AND NOT (SELECT busy FROM lifecycle))
                     -- ... or this batch waited long enough.
                     OR oldest < now() - make_interval(secs => $5)) AS closed,
                    -- A batch still gathering: only the oldest jobs that fill whole requests
                    -- (the rest stays unleased, so the next claim does not take it twice).
                    rank <= size / CASE WHEN license_type = 'user' THEN $8 ELSE $6 END
                                 * CASE WHEN license_type = 'user' THEN $8 ELSE $6 END AS fills
               FROM batched b
         ), pick AS (
             SELECT id, fills,
                    -- A tight asset's releases go with an association of the asset that goes:
                    -- the licenses they free may already be re-allocated, so Apple's free
                    -- count grows as early as it can (the dispatcher sends them first; A11's
                    -- guarantee is its hold of the associations that need an unfinished
                    -- release, dispatch::batch::plan). Other releases wait for their own batch
                    -- to close or fill, so a storm of revocations goes out in full requests.
                    closed OR (kind = $10 AND tight
                               AND bool_or(kind = $9 AND (closed OR fills))
                                   OVER (PARTITION BY adam_id, pricing_param))
                      AS closed
               FROM own
         ), locked AS (
             SELECT j.id, p.closed
               FROM pick p JOIN jobs j ON j.id = p.id
              WHERE p.closed OR p.fills
              ORDER BY j.id LIMIT $7
                FOR UPDATE OF j SKIP LOCKED
         )
         UPDATE jobs SET locked_by = $2, locked_until = now() + make_interval(secs => $3),
                         attempts = jobs.attempts + 1
           FROM locked
          WHERE jobs.id = locked.id
      RETURNING jobs.id, jobs.kind, jobs.assignment_id, jobs.payload, jobs.attempts, locked.closed"
    ))
    .bind::<diesel::sql_types::Uuid, _>(account)
    .bind::<diesel::sql_types::Text, _>(worker)
    .bind::<diesel::sql_types::Double, _>(batching.lease.as_secs_f64())
    .bind::<diesel::sql_types::Double, _>(batching.quiet.as_secs_f64())
    .bind::<diesel::sql_types::Double, _>(batching.max_wait.as_secs_f64())
    .bind::<diesel::sql_types::BigInt, _>(batching.full_devices)
    .bind::<diesel::sql_types::BigInt, _>(batching.max)
    .bind::<diesel::sql_types::BigInt, _>(batching.full_users)
    .bind::<diesel::sql_types::Text, _>(JobKind::Associate)
    .bind::<diesel::sql_types::Text, _>(JobKind::Disassociate)
    .prepared()
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(ClaimedJob::from).collect())
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

/// A failed attempt of the claimed jobs `ids`: they run again at `at` with `error` recorded,
/// except those that have now failed `max_attempts` times (0: no limit; counted in `failures`,
/// not `attempts`, which counts every claim: a pending event's polls, a throttled account's
/// waits), which become dead letters (`state = 'dead'`: never claimed again until retried by hand, see
/// [`crate::ledger::dead_letters`]). Returns the kinds of the jobs dead-lettered.
pub async fn fail(
    conn: &mut AsyncPgConnection,
    ids: &[i64],
    at: DateTime<Utc>,
    error: &str,
    max_attempts: i32,
) -> QueryResult<Vec<JobKind>> {
    #[derive(QueryableByName)]
    struct Failed {
        #[diesel(sql_type = diesel::sql_types::Text)]
        kind: JobKind,
        #[diesel(sql_type = diesel::sql_types::Text)]
        state: String,
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Failed> = diesel::sql_query(
        "UPDATE jobs SET run_at = $2, locked_by = NULL, locked_until = NULL, last_error = $3,
                         failures = failures + 1,
                         state = CASE WHEN $4 > 0 AND failures + 1 >= $4 THEN 'dead' ELSE state END,
                         dead_at = CASE WHEN $4 > 0 AND failures + 1 >= $4 THEN now()
                                        ELSE dead_at END
          WHERE id = ANY($1) AND state = 'queued'
      RETURNING kind, state",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(ids)
    .bind::<diesel::sql_types::Timestamptz, _>(at)
    .bind::<diesel::sql_types::Text, _>(error)
    .bind::<diesel::sql_types::Integer, _>(max_attempts)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter(|r| r.state == "dead")
        .map(|r| r.kind)
        .collect())
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

/// [`unclaim`], recording `why` the jobs wait in their `last_error` (a job that waits for
/// another, e.g. an association for a release Apple has not finished, says so).
pub async fn unclaim_because(
    conn: &mut AsyncPgConnection,
    ids: &[i64],
    at: DateTime<Utc>,
    why: &str,
) -> QueryResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    diesel::sql_query(
        "UPDATE jobs SET locked_by = NULL, locked_until = NULL, run_at = $2,
                         attempts = GREATEST(attempts - 1, 0), last_error = $3
          WHERE id = ANY($1)",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(ids)
    .bind::<diesel::sql_types::Timestamptz, _>(at)
    .bind::<diesel::sql_types::Text, _>(why)
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

/// Drops the queued releases of `assignments` (their association failed: Apple holds nothing).
pub async fn delete_releases(
    conn: &mut AsyncPgConnection,
    assignments: &[Uuid],
) -> QueryResult<usize> {
    diesel::sql_query("DELETE FROM jobs WHERE kind = $2 AND assignment_id = ANY($1)")
        .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(assignments)
        .bind::<diesel::sql_types::Text, _>(JobKind::Disassociate)
        .execute(conn)
        .await
}

/// Drops the polls of an Apple event (it finished).
pub async fn delete_polls(conn: &mut AsyncPgConnection, event_id: &str) -> QueryResult<usize> {
    // The kind is written out (not bound) so the partial index `jobs_poll_by_event` applies
    // to the prepared statement's generic plan too.
    diesel::sql_query("DELETE FROM jobs WHERE kind = 'poll_event' AND payload ->> 'event_id' = $1")
        .bind::<diesel::sql_types::Text, _>(event_id)
        .execute(conn)
        .await
}

/// Apple no longer knows `event_id`: its assignments still waiting for it go back to be
/// submitted again (an association to `pending`, a release stays `revoking`), each with a new
/// association or release job. Harmless if the event's work landed at Apple.
pub async fn resubmit_event(conn: &mut AsyncPgConnection, event_id: &str) -> QueryResult<usize> {
    diesel::sql_query(
        "WITH a AS (UPDATE assignments SET state = CASE WHEN state = 'associating' THEN 'pending' ELSE state END,
                           apple_event_id = NULL, batch_id = NULL, updated_at = now()
                     WHERE apple_event_id = $1 AND state IN ('associating', 'revoking')
                 RETURNING id, account_id, state, adam_id, pricing_param, license_type)
         INSERT INTO jobs (kind, account_id, assignment_id, adam_id, pricing_param, license_type)
         SELECT CASE WHEN state = 'pending' THEN $2 ELSE $3 END,
                account_id, id, adam_id, pricing_param, license_type FROM a",
    )
    .bind::<diesel::sql_types::Text, _>(event_id)
    .bind::<diesel::sql_types::Text, _>(JobKind::Associate)
    .bind::<diesel::sql_types::Text, _>(JobKind::Disassociate)
    .execute(conn)
    .await
}

/// Queued or leased dispatcher jobs (for tests and the drain check; syncs are not counted).
pub async fn count(conn: &mut AsyncPgConnection) -> QueryResult<i64> {
    use crate::db::schema::jobs;
    jobs::table
        .filter(jobs::state.eq("queued"))
        .filter(jobs::kind.ne(JobKind::Sync))
        .count()
        .get_result(conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dispatcher_claims_every_kind_but_sync_and_names_them_all() {
        let listed: Vec<&str> = DISPATCHED
            .split(',')
            .map(|k| k.trim().trim_matches('\''))
            .collect();
        let expected: Vec<&str> = JobKind::ALL
            .iter()
            .filter(|k| **k != JobKind::Sync)
            .map(|k| k.as_str())
            .collect();
        assert_eq!(listed, expected);
    }
}
