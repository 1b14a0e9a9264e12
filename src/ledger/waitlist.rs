//! The wait-list's statements (rule A12; the use case is [`crate::engine::waitlist`]): writing
//! waiting assignments and their place in line, reading a line in order, ending entries
//! (cancelled, expired, no longer servable), places in line for the views, and the wake-ups
//! that the `waitlist_wake` trigger (migration `2026-12-07-000701_waitlist`) writes whenever a
//! license frees.
//!
//! Lock order, as everywhere in the ledger: assignment rows by id first, then asset rows. The
//! line is read unlocked in its order, then its rows are locked by id ([`lock_waiting`]); the
//! wake-up rows are only touched in short transactions of their own (claim, finish, back-off), never while
//! assignment or asset rows are held, so they cannot close a cycle with the freeing statements
//! (asset row, then wake-up row).

use chrono::{DateTime, Utc};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::domain::allocation::AssetRef;
use crate::domain::decide::Planned;
use crate::domain::model::{LicenseWish, SubjectKind};
use crate::domain::records::AssignmentRow;

/// The columns of an [`AssignmentRow`], as every statement here returns them.
const ROW: &str = "id, space_id, account_id, adam_id, pricing_param, subject_id, license_type, \
                   state, rule, decision, requested_by, reason, apple_event_id, batch_id, error, \
                   version, created_at, updated_at, revoked_by, revocation_reason, \
                   revocation_requested_at, revocation_request_id";

/// Who asked for a waiting entry, and what, as the line keeps it to decide it again.
pub struct Asked<'a> {
    pub requested_by: &'a str,
    pub reason: &'a str,
    pub request_id: Option<&'a str>,
    /// The subject as the caller named it (a device may wait for its user's license).
    pub subject_kind: SubjectKind,
    pub subject_external_id: &'a str,
    pub wish: LicenseWish,
    pub expires_at: DateTime<Utc>,
}

/// Writes waiting assignments (state and rule `waiting`, no license held, no Apple job) and
/// their places in line, in the order given, with an `assignment.waiting` activity row each.
pub async fn write_waiting(
    conn: &mut AsyncPgConnection,
    space: &str,
    entries: &[(&Planned, Asked<'_>)],
) -> diesel::QueryResult<Vec<AssignmentRow>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<serde_json::Value> = entries
        .iter()
        .enumerate()
        .map(|(ord, (p, a))| {
            serde_json::json!({
                "ord": ord,
                "id": p.id,
                "account_id": p.account_id,
                "adam_id": p.asset.adam_id,
                "pricing_param": p.asset.pricing_param,
                "subject_id": p.holder.id,
                "license_type": p.license_type,
                "decision": p.decision,
                "requested_by": a.requested_by,
                "reason": a.reason,
                "request_id": a.request_id,
                "subject_kind": a.subject_kind,
                "subject_external_id": a.subject_external_id,
                "wish": a.wish,
                "expires_at": a.expires_at,
                "subject_label": format!("{}:{}", p.holder.kind, p.holder.external_id),
                "details": {
                    "license_type": p.license_type,
                    "skipped": p.decision.skipped.len(),
                    "expires_at": a.expires_at,
                },
            })
        })
        .collect();
    diesel::sql_query(format!(
        "WITH new AS (
             SELECT * FROM jsonb_to_recordset($1) AS t(
                 ord int, id uuid, account_id uuid, adam_id text, pricing_param text,
                 subject_id uuid, license_type text, decision jsonb, requested_by text,
                 reason text, request_id text, subject_kind text, subject_external_id text,
                 wish text, expires_at timestamptz, subject_label text, details jsonb)
         ), ins AS (
             INSERT INTO assignments (id, space_id, account_id, adam_id, pricing_param,
                                      subject_id, license_type, state, rule, decision,
                                      requested_by, reason)
             SELECT id, $2, account_id, adam_id, pricing_param, subject_id, license_type,
                    'waiting', 'waiting', decision, requested_by, reason
               FROM new ORDER BY ord
          RETURNING {ROW}
         ), line AS (
             INSERT INTO waitlist (assignment_id, space_id, adam_id, pricing_param, subject_id,
                                   subject_kind, subject_external_id, wish, request_id,
                                   expires_at)
             SELECT id, $2, adam_id, pricing_param, subject_id, subject_kind,
                    subject_external_id, wish, request_id, expires_at
               FROM new ORDER BY ord
         ), act AS (
             INSERT INTO activity_log (space_id, actor, action, account_id, assignment_id,
                                       subject, adam_id, pricing_param, rule, request_id,
                                       details, version)
             SELECT $2, n.requested_by, 'assignment.waiting', NULL, n.id, n.subject_label,
                    n.adam_id, n.pricing_param, 'waiting', n.request_id, n.details, i.version
               FROM new n JOIN ins i ON i.id = n.id
         )
         SELECT * FROM ins"
    ))
    .bind::<diesel::sql_types::Jsonb, _>(serde_json::Value::Array(rows))
    .bind::<diesel::sql_types::Text, _>(space)
    .load(conn)
    .await
}

/// One entry of a line, as the wait-list decides it again.
#[derive(Clone, Debug, diesel::QueryableByName)]
pub struct Entry {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub assignment_id: Uuid,
    /// The holder the waiting assignment was written for (it is served only for this one).
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub subject_id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub subject_kind: SubjectKind,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub subject_external_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub wish: LicenseWish,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub request_id: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub requested_by: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub reason: String,
}

/// Whether the holder of waiting entry `w` is reserved by the asset's policy (A2): reserved
/// entries are served first. The same test as the policy's (the holder itself is named).
const RESERVED: &str = "EXISTS (
    SELECT 1 FROM distribution_policies p
      JOIN policy_entries e ON e.policy_id = p.id
      JOIN subjects s ON s.id = w.subject_id
     WHERE p.space_id = w.space_id AND p.adam_id = w.adam_id
       AND p.pricing_param = w.pricing_param AND e.mode = 'reserved'
       AND e.target_kind = s.kind AND e.target = s.external_id)";

/// Up to `limit` entries of the line of `asset` in `space`, in order (reserved holders first,
/// then first come), skipping the first `offset`. Not locked: see [`lock_waiting`].
pub async fn line(
    conn: &mut AsyncPgConnection,
    space: &str,
    asset: &AssetRef,
    offset: i64,
    limit: i64,
) -> diesel::QueryResult<Vec<Entry>> {
    diesel::sql_query(format!(
        "SELECT w.assignment_id, a.subject_id, w.subject_kind, w.subject_external_id, w.wish, w.request_id,
                a.requested_by, a.reason
           FROM waitlist w JOIN assignments a ON a.id = w.assignment_id
          WHERE w.space_id = $1 AND w.adam_id = $2 AND w.pricing_param = $3
            AND a.state = 'waiting'
          ORDER BY {RESERVED} DESC, w.seq
          OFFSET $4 LIMIT $5"
    ))
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Text, _>(&asset.adam_id)
    .bind::<diesel::sql_types::Text, _>(&asset.pricing_param)
    .bind::<diesel::sql_types::BigInt, _>(offset)
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .load(conn)
    .await
}

#[derive(diesel::QueryableByName)]
struct Id {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
}

/// Locks the assignments `ids` (by id: the ledger's lock order) and returns those still waiting.
pub async fn lock_waiting(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> diesel::QueryResult<Vec<Uuid>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Id> = diesel::sql_query(
        "SELECT id FROM assignments WHERE id = ANY($1) AND state = 'waiting'
          ORDER BY id FOR UPDATE",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// How a waiting entry ends without a license.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Cancelled by a revocation: `revoked`, with the revocation record.
    Cancelled,
    /// The wait expired, or the entry can no longer be served (the policy now refuses the
    /// subject, no account owns the asset any more, the subject got a license another way):
    /// `failed`, with the reason in `error`.
    Failed,
}

/// Ends the waiting entries `ids` (locked by the caller) without a license: out of the line,
/// state `revoked` (cancelled, with who, why and the request) or `failed` (with `message` and
/// `action` in `error`), one activity row each (`assignment.wait_cancelled`,
/// `assignment.wait_expired` or `assignment.wait_ended`). Returns the rows ended.
#[allow(clippy::too_many_arguments)]
pub async fn end(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    how: End,
    expired: bool,
    actor: &str,
    request_id: Option<&str>,
    reason: &str,
    action: &str,
) -> diesel::QueryResult<Vec<AssignmentRow>> {
    let reasons = vec![reason.to_owned(); ids.len()];
    end_each(conn, ids, &reasons, how, expired, actor, request_id, action).await
}

/// [`end`] with a reason per entry (`reasons[i]` for `ids[i]`): one statement for any number
/// of entries (`unnest`), so a chunk of the line ends its entries in one go.
#[allow(clippy::too_many_arguments)]
pub async fn end_each(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    reasons: &[String],
    how: End,
    expired: bool,
    actor: &str,
    request_id: Option<&str>,
    action: &str,
) -> diesel::QueryResult<Vec<AssignmentRow>> {
    debug_assert_eq!(ids.len(), reasons.len());
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let (state, activity) = match (how, expired) {
        (End::Cancelled, _) => ("revoked", "assignment.wait_cancelled"),
        (End::Failed, true) => ("failed", "assignment.wait_expired"),
        (End::Failed, false) => ("failed", "assignment.wait_ended"),
    };
    diesel::sql_query(format!(
        "WITH why AS (
             SELECT * FROM unnest($1::uuid[], $5::text[]) AS t(why_id, why)
         ), changed AS (
             UPDATE assignments
                SET state = $2,
                    revoked_by = CASE WHEN $2 = 'revoked' THEN $3 ELSE revoked_by END,
                    revocation_reason = CASE WHEN $2 = 'revoked' THEN why.why
                                             ELSE revocation_reason END,
                    revocation_requested_at = CASE WHEN $2 = 'revoked' THEN now()
                                                   ELSE revocation_requested_at END,
                    revocation_request_id = CASE WHEN $2 = 'revoked' THEN $4
                                                 ELSE revocation_request_id END,
                    error = CASE WHEN $2 = 'failed'
                                 THEN jsonb_build_object('message', why.why, 'action', $6::text)
                                 ELSE error END,
                    version = version + 1, updated_at = now()
               FROM why
              WHERE id = why.why_id AND state = 'waiting'
          RETURNING {ROW}, why.why
         ), unlined AS (
             DELETE FROM waitlist WHERE assignment_id IN (SELECT id FROM changed)
         ), logged AS (
             INSERT INTO activity_log (space_id, actor, action, account_id, assignment_id,
                                       subject, adam_id, pricing_param, request_id, details,
                                       version)
             SELECT c.space_id, $3, $7, NULL, c.id, s.kind || ':' || s.external_id, c.adam_id,
                    c.pricing_param, $4, jsonb_build_object('reason', c.why, 'state', c.state),
                    c.version
               FROM changed c LEFT JOIN subjects s ON s.id = c.subject_id
         )
         SELECT {ROW} FROM changed"
    ))
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .bind::<diesel::sql_types::Text, _>(state)
    .bind::<diesel::sql_types::Text, _>(actor)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(request_id)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(reasons)
    .bind::<diesel::sql_types::Text, _>(action)
    .bind::<diesel::sql_types::Text, _>(activity)
    .load(conn)
    .await
}

/// The waiting assignments of `space` a revocation scope names (an assignment, an asset, a
/// subject; every given filter must match), locked by id.
pub async fn matching_locked(
    conn: &mut AsyncPgConnection,
    space: &str,
    assignment: Option<Uuid>,
    adam_id: Option<&str>,
    pricing_param: Option<&str>,
    subject: Option<Uuid>,
) -> diesel::QueryResult<Vec<Uuid>> {
    let rows: Vec<Id> = diesel::sql_query(
        "SELECT a.id FROM assignments a
          WHERE a.space_id = $1 AND a.state = 'waiting'
            AND ($2::uuid IS NULL OR a.id = $2)
            AND ($3::text IS NULL OR a.adam_id = $3)
            AND ($4::text IS NULL OR a.pricing_param = $4)
            AND ($5::uuid IS NULL OR a.subject_id = $5)
          ORDER BY a.id
          FOR UPDATE",
    )
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Uuid>, _>(assignment)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(adam_id)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(pricing_param)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Uuid>, _>(subject)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// Waiting entries whose wait is over (`expires_at` passed), at most `limit`, locked by id;
/// rows another transaction holds (being served right now) are skipped.
pub async fn expired_locked(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> diesel::QueryResult<Vec<Uuid>> {
    let rows: Vec<Id> = diesel::sql_query(
        "SELECT a.id FROM assignments a
          WHERE a.id IN (SELECT assignment_id FROM waitlist WHERE expires_at <= $1
                          ORDER BY expires_at LIMIT $2)
            AND a.state = 'waiting'
          ORDER BY a.id
          FOR UPDATE SKIP LOCKED",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(now)
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// A waiting assignment's place in line (1: next to be served) and when its wait ends.
#[derive(Clone, Debug, diesel::QueryableByName)]
pub struct Place {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub assignment_id: Uuid,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub position: i64,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub reserved: bool,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub expires_at: DateTime<Utc>,
}

/// The places in line of the waiting assignments among `ids` (others are left out).
pub async fn places(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> diesel::QueryResult<Vec<Place>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    diesel::sql_query(format!(
        "WITH lines AS (
             SELECT DISTINCT space_id, adam_id, pricing_param FROM waitlist
              WHERE assignment_id = ANY($1)
         ), ranked AS (
             SELECT w.assignment_id, w.expires_at, {RESERVED} AS reserved, w.seq,
                    w.space_id, w.adam_id, w.pricing_param
               FROM waitlist w
               JOIN lines l ON l.space_id = w.space_id AND l.adam_id = w.adam_id
                           AND l.pricing_param = w.pricing_param
         )
         SELECT assignment_id, expires_at, reserved,
                row_number() OVER (PARTITION BY space_id, adam_id, pricing_param
                                   ORDER BY reserved DESC, seq) AS position
           FROM ranked"
    ))
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .load::<Place>(conn)
    .await
    .map(|all| {
        all.into_iter()
            .filter(|p| ids.contains(&p.assignment_id))
            .collect()
    })
}

/// Waiting entries per asset of a space (read by the inventory, `ledger::inventory`).
#[derive(Clone, Debug, diesel::QueryableByName)]
pub struct WaitingCount {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub adam_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub pricing_param: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub waiting: i64,
}

/// A line woken by a freed license, as a wait-list worker claimed it.
#[derive(Clone, Debug, diesel::QueryableByName)]
pub struct Wakeup {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub space_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub adam_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub pricing_param: String,
    /// Moves each time another license frees for the line.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub generation: i64,
}

impl Wakeup {
    pub fn asset(&self) -> AssetRef {
        AssetRef {
            adam_id: self.adam_id.clone(),
            pricing_param: self.pricing_param.clone(),
        }
    }
}

/// Claims the longest-waiting wake-up nobody holds (or whose holder's lease ran out) and not
/// backed off ([`back_off`]: `locked_until` without a holder) for `lease`; `None` when there
/// is none.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    worker: &str,
    lease: std::time::Duration,
) -> diesel::QueryResult<Option<Wakeup>> {
    let rows: Vec<Wakeup> = diesel::sql_query(
        "UPDATE waitlist_wakeups w
            SET locked_by = $1, locked_until = now() + make_interval(secs => $2)
          WHERE (w.space_id, w.adam_id, w.pricing_param) = (
                SELECT space_id, adam_id, pricing_param FROM waitlist_wakeups
                 WHERE locked_until IS NULL OR locked_until < now()
                 ORDER BY woken_at LIMIT 1
                 FOR UPDATE SKIP LOCKED)
         RETURNING w.space_id, w.adam_id, w.pricing_param, w.generation",
    )
    .bind::<diesel::sql_types::Text, _>(worker)
    .bind::<diesel::sql_types::Double, _>(lease.as_secs_f64())
    .load(conn)
    .await?;
    Ok(rows.into_iter().next())
}

/// After serving a claimed line: the wake-up goes, unless another license freed meanwhile
/// (its generation moved): then it is released to be served again at once.
pub async fn finish(
    conn: &mut AsyncPgConnection,
    wakeup: &Wakeup,
    worker: &str,
) -> diesel::QueryResult<()> {
    let gone = diesel::sql_query(
        "DELETE FROM waitlist_wakeups
          WHERE space_id = $1 AND adam_id = $2 AND pricing_param = $3 AND generation = $4
            AND locked_by = $5",
    )
    .bind::<diesel::sql_types::Text, _>(&wakeup.space_id)
    .bind::<diesel::sql_types::Text, _>(&wakeup.adam_id)
    .bind::<diesel::sql_types::Text, _>(&wakeup.pricing_param)
    .bind::<diesel::sql_types::BigInt, _>(wakeup.generation)
    .bind::<diesel::sql_types::Text, _>(worker)
    .execute(conn)
    .await?;
    if gone == 0 {
        release(conn, wakeup, worker).await?;
    }
    Ok(())
}

/// Gives a claimed wake-up back after a failed run, not to be claimed again before `delay`
/// (the caller's back-off, growing with the failed attempts): `woken_at` moves to now, so
/// lines woken meanwhile are claimed first and a line that keeps failing cannot starve them.
pub async fn back_off(
    conn: &mut AsyncPgConnection,
    wakeup: &Wakeup,
    worker: &str,
    delay: std::time::Duration,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "UPDATE waitlist_wakeups
            SET locked_by = NULL, locked_until = now() + make_interval(secs => $5),
                woken_at = now()
          WHERE space_id = $1 AND adam_id = $2 AND pricing_param = $3 AND locked_by = $4",
    )
    .bind::<diesel::sql_types::Text, _>(&wakeup.space_id)
    .bind::<diesel::sql_types::Text, _>(&wakeup.adam_id)
    .bind::<diesel::sql_types::Text, _>(&wakeup.pricing_param)
    .bind::<diesel::sql_types::Text, _>(worker)
    .bind::<diesel::sql_types::Double, _>(delay.as_secs_f64())
    .execute(conn)
    .await
    .map(|_| ())
}

/// Gives a claimed wake-up back (another look serves it).
pub async fn release(
    conn: &mut AsyncPgConnection,
    wakeup: &Wakeup,
    worker: &str,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "UPDATE waitlist_wakeups SET locked_by = NULL, locked_until = NULL
          WHERE space_id = $1 AND adam_id = $2 AND pricing_param = $3 AND locked_by = $4",
    )
    .bind::<diesel::sql_types::Text, _>(&wakeup.space_id)
    .bind::<diesel::sql_types::Text, _>(&wakeup.adam_id)
    .bind::<diesel::sql_types::Text, _>(&wakeup.pricing_param)
    .bind::<diesel::sql_types::Text, _>(worker)
    .execute(conn)
    .await
    .map(|_| ())
}
