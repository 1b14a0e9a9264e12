//! The statements of a revocation ([`crate::engine::revoke`]): find the live assignments a
//! scope matches, lock their asset rows, and start releasing them in one statement (state,
//! `held`, Apple jobs, activity rows).

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::domain::origin::Origin;
use crate::domain::revocation::Scope;
use crate::ledger::jobs::JobKind;

#[derive(diesel::QueryableByName)]
struct Counts {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    dropped: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    revoking: i64,
}

#[derive(diesel::QueryableByName)]
/// A live assignment a scope matched.
pub struct Target {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub revocable: bool,
}

/// The live assignments of `space` matching `scope`, with whether they can be revoked (their
/// asset is revocable, or they are still `pending`: a license that never reached Apple is
/// dropped in the ledger alone, whatever the asset); with `lock`, locked in id order.
pub async fn matching(
    conn: &mut AsyncPgConnection,
    space: &str,
    scope: &Scope,
    lock: bool,
) -> diesel::QueryResult<Vec<Target>> {
    diesel::sql_query(format!(
        "SELECT a.id, (s.revocable OR a.state = 'pending') AS revocable FROM assignments a
           JOIN assets s ON s.account_id = a.account_id AND s.adam_id = a.adam_id
                        AND s.pricing_param = a.pricing_param
          WHERE a.space_id = $1 AND a.state IN ('pending', 'associating', 'active')
            AND ($2::uuid IS NULL OR a.id = $2)
            AND ($3::uuid IS NULL OR a.account_id = $3)
            AND ($4::text IS NULL OR a.adam_id = $4)
            AND ($5::text IS NULL OR a.pricing_param = $5)
            AND ($6::uuid IS NULL OR a.subject_id = $6)
          ORDER BY a.id
          {}",
        if lock { "FOR UPDATE OF a" } else { "" }
    ))
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Uuid>, _>(scope.assignment)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Uuid>, _>(scope.account)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(scope.adam_id.as_deref())
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(scope.pricing_param.as_deref())
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Uuid>, _>(scope.subject)
    .load::<Target>(conn)
    .await
}

/// Whether each of the live assignments `ids` of `space` can be revoked (its asset is
/// revocable, or it is still `pending`), by id, for those [`matching`] would find (joined to
/// their asset row, as there); the rows are already locked by the caller.
pub async fn revocable(
    conn: &mut AsyncPgConnection,
    space: &str,
    ids: &[Uuid],
) -> diesel::QueryResult<std::collections::HashMap<Uuid, bool>> {
    if ids.is_empty() {
        return Ok(std::collections::HashMap::new());
    }
    let rows: Vec<Target> = diesel::sql_query(
        "SELECT a.id, (s.revocable OR a.state = 'pending') AS revocable FROM assignments a
           JOIN assets s ON s.account_id = a.account_id AND s.adam_id = a.adam_id
                        AND s.pricing_param = a.pricing_param
          WHERE a.space_id = $1 AND a.id = ANY($2)",
    )
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|t| (t.id, t.revocable)).collect())
}

/// Locks up front what a use case revoking several sets of licenses in one transaction (a
/// lifecycle event: one license at a time with its own reason, or a device and then its user)
/// may touch: the assignment rows `ids` and those of `subjects` (live or waiting) in id order,
/// then the asset rows of the live ones in key order — the ledger's lock order, taken once —
/// so the revocations that follow only take locks already held instead of locking asset rows
/// piecemeal, set after set.
pub async fn lock_upfront(
    conn: &mut AsyncPgConnection,
    space: &str,
    ids: &[Uuid],
    subjects: &[Uuid],
) -> diesel::QueryResult<()> {
    if ids.is_empty() && subjects.is_empty() {
        return Ok(());
    }
    diesel::sql_query(
        "SELECT 1 FROM assignments a
          WHERE a.space_id = $1 AND a.state IN ('waiting', 'pending', 'associating', 'active')
            AND (a.id = ANY($2) OR a.subject_id = ANY($3))
          ORDER BY a.id
          FOR UPDATE",
    )
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(subjects)
    .execute(conn)
    .await?;
    diesel::sql_query(
        "SELECT 1 FROM assets s
          WHERE (s.account_id, s.adam_id, s.pricing_param) IN (
                SELECT account_id, adam_id, pricing_param FROM assignments
                 WHERE space_id = $1 AND state IN ('pending', 'associating', 'active')
                   AND (id = ANY($2) OR subject_id = ANY($3)))
          ORDER BY s.account_id, s.adam_id, s.pricing_param
          FOR UPDATE OF s",
    )
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(subjects)
    .execute(conn)
    .await?;
    Ok(())
}

/// A live or waiting assignment of one of several subjects ([`of_subjects`]).
#[derive(Clone, Debug, diesel::QueryableByName)]
pub struct SubjectTarget {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub subject_id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub adam_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub pricing_param: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub license_type: crate::domain::model::LicenseType,
    /// `waiting` (A12: holds no license, is cancelled), or live: `pending`, `associating`,
    /// `active`.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub state: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub revocable: bool,
}

/// The live and waiting assignments of `space` held by any of `subjects` (what [`matching`]
/// finds for a subject scope, for many subjects in one statement), locked in id order — the
/// first half of [`lock_upfront`]'s lock order; the asset rows follow in [`start_each`] — with
/// whether each can be revoked.
pub async fn of_subjects(
    conn: &mut AsyncPgConnection,
    space: &str,
    subjects: &[Uuid],
) -> diesel::QueryResult<Vec<SubjectTarget>> {
    if subjects.is_empty() {
        return Ok(Vec::new());
    }
    diesel::sql_query(
        "SELECT a.id, a.subject_id, a.adam_id, a.pricing_param, a.license_type, a.state,
                (COALESCE(s.revocable, false) OR a.state = 'pending') AS revocable
           FROM assignments a
           LEFT JOIN assets s ON s.account_id = a.account_id AND s.adam_id = a.adam_id
                             AND s.pricing_param = a.pricing_param
          WHERE a.subject_id = ANY($2) AND a.space_id = $1
            AND a.state IN ('waiting', 'pending', 'associating', 'active')
          ORDER BY a.id
          FOR UPDATE OF a",
    )
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(subjects)
    .load(conn)
    .await
}

/// Locks the asset rows of `targets` (in key order), then moves them to `revoked` (pending: they
/// never reached Apple, their queued job is dropped) or `revoking` (with a `disassociate` job),
/// frees their licenses in the ledger and logs each. Returns (dropped, revoking).
pub async fn start(
    conn: &mut AsyncPgConnection,
    space: &str,
    targets: &[Uuid],
    origin: &Origin,
    reason: &str,
) -> diesel::QueryResult<(i64, i64)> {
    let each: Vec<Cause> = targets
        .iter()
        .map(|_| Cause {
            origin: origin.clone(),
            reason: reason.to_owned(),
        })
        .collect();
    start_each(conn, space, targets, &each).await
}

/// Who revoked one license and why (its row's `revoked_by`, `revocation_request_id` and
/// `revocation_reason`, and its activity row).
#[derive(Clone, Debug)]
pub struct Cause {
    pub origin: Origin,
    pub reason: String,
}

/// [`start`] with its own cause per license (`causes[i]` for `targets[i]`): one statement for
/// any number of licenses (`unnest`), so a batch of lifecycle events, each revoking its
/// subject's licenses for its own reason, starts them all at once.
pub async fn start_each(
    conn: &mut AsyncPgConnection,
    space: &str,
    targets: &[Uuid],
    causes: &[Cause],
) -> diesel::QueryResult<(i64, i64)> {
    debug_assert_eq!(targets.len(), causes.len());
    if targets.is_empty() {
        return Ok((0, 0));
    }
    diesel::sql_query(
        "SELECT 1 FROM assets s
          WHERE (s.account_id, s.adam_id, s.pricing_param) IN (
                SELECT account_id, adam_id, pricing_param FROM assignments WHERE id = ANY($1))
          ORDER BY s.account_id, s.adam_id, s.pricing_param
          FOR UPDATE OF s",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(targets)
    .execute(conn)
    .await?;
    let actors: Vec<&str> = causes.iter().map(|c| c.origin.actor.as_str()).collect();
    let request_ids: Vec<Option<&str>> = causes
        .iter()
        .map(|c| c.origin.request_id.as_deref())
        .collect();
    let reasons: Vec<&str> = causes.iter().map(|c| c.reason.as_str()).collect();
    let counts = diesel::sql_query(
        "WITH cause AS (
             SELECT * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[])
                        AS t(id, actor, request_id, reason)
         ), changed AS (
             UPDATE assignments
                SET state = CASE WHEN state = 'pending' THEN 'revoked' ELSE 'revoking' END,
                    revoked_by = cause.actor, revocation_reason = cause.reason,
                    revocation_requested_at = now(), revocation_request_id = cause.request_id,
                    version = version + 1, updated_at = now()
               FROM cause
              WHERE assignments.id = cause.id
                AND assignments.state IN ('pending', 'associating', 'active')
          RETURNING assignments.id, account_id, adam_id, pricing_param, license_type,
                    assignments.state, subject_id, cause.actor, cause.request_id, cause.reason,
                    assignments.version
         ), released AS (
             UPDATE assets a SET held = a.held - c.n, updated_at = now()
               FROM (SELECT account_id, adam_id, pricing_param, count(*) AS n FROM changed
                      GROUP BY account_id, adam_id, pricing_param) c
              WHERE a.account_id = c.account_id AND a.adam_id = c.adam_id
                AND a.pricing_param = c.pricing_param
          RETURNING 1
         ), dropped_jobs AS (
             DELETE FROM jobs WHERE kind = $6::text
                AND assignment_id IN (SELECT id FROM changed WHERE state = 'revoked')
          RETURNING 1
         ), new_jobs AS (
             INSERT INTO jobs (kind, account_id, assignment_id, adam_id, pricing_param,
                               license_type)
             SELECT $7::text, account_id, id, adam_id, pricing_param, license_type
               FROM changed WHERE state = 'revoking'
              ORDER BY id
          RETURNING 1
         ), logged AS (
             INSERT INTO activity_log (space_id, actor, action, account_id, assignment_id,
                                       subject, adam_id, pricing_param, request_id, details,
                                       version)
             SELECT $1, c.actor, 'assignment.revoke_requested', c.account_id, c.id,
                    s.kind || ':' || s.external_id, c.adam_id, c.pricing_param, c.request_id,
                    jsonb_build_object('reason', c.reason, 'state', c.state,
                                       'notify_user', a.notify_on_removal),
                    c.version
               FROM changed c JOIN accounts a ON a.id = c.account_id
               LEFT JOIN subjects s ON s.id = c.subject_id
          RETURNING 1
         )
         SELECT count(*) FILTER (WHERE state = 'revoked') AS dropped,
                count(*) FILTER (WHERE state = 'revoking') AS revoking
           FROM changed",
    )
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(targets)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(actors)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Nullable<diesel::sql_types::Text>>, _>(
        request_ids,
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(reasons)
    .bind::<diesel::sql_types::Text, _>(JobKind::Associate)
    .bind::<diesel::sql_types::Text, _>(JobKind::Disassociate)
    .get_result::<Counts>(conn)
    .await?;
    Ok((counts.dropped, counts.revoking))
}
