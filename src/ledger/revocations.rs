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
    let counts = diesel::sql_query(
        "WITH changed AS (
             UPDATE assignments
                SET state = CASE WHEN state = 'pending' THEN 'revoked' ELSE 'revoking' END,
                    revoked_by = $3, revocation_reason = $5, revocation_requested_at = now(),
                    revocation_request_id = $4,
                    version = version + 1, updated_at = now()
              WHERE id = ANY($2) AND state IN ('pending', 'associating', 'active')
          RETURNING id, account_id, adam_id, pricing_param, license_type, state
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
          RETURNING 1
         ), logged AS (
             INSERT INTO activity_log (space_id, actor, action, account_id, assignment_id,
                                       subject, adam_id, pricing_param, request_id, details)
             SELECT $1, $3, 'assignment.revoke_requested', c.account_id, c.id,
                    s.kind || ':' || s.external_id, c.adam_id, c.pricing_param, $4,
                    jsonb_build_object('reason', $5::text, 'state', c.state,
                                       'notify_user', a.notify_on_removal)
               FROM changed c JOIN accounts a ON a.id = c.account_id
               JOIN assignments x ON x.id = c.id
               LEFT JOIN subjects s ON s.id = x.subject_id
          RETURNING 1
         )
         SELECT count(*) FILTER (WHERE state = 'revoked') AS dropped,
                count(*) FILTER (WHERE state = 'revoking') AS revoking
           FROM changed",
    )
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(targets)
    .bind::<diesel::sql_types::Text, _>(&origin.actor)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(origin.request_id.as_deref())
    .bind::<diesel::sql_types::Text, _>(reason)
    .bind::<diesel::sql_types::Text, _>(JobKind::Associate)
    .bind::<diesel::sql_types::Text, _>(JobKind::Disassociate)
    .get_result::<Counts>(conn)
    .await?;
    Ok((counts.dropped, counts.revoking))
}
