//! Revocation (rule V1 in docs/rules.md): one assignment, all of an asset (in one account or all),
//! all of a subject's, all of an account's.
//!
//! A revoked license is free in the ledger at once (`held` drops in the same statement).
//! Pending assignments never reached Apple: they become `revoked` and their queued Apple job is
//! dropped. Assignments Apple holds (or is associating) become `revoking` and get a
//! `disassociate` job; the dispatcher moves them to `revoked` when Apple confirms.
//!
//! Every revocation is recorded on the assignment (who, why, when, in which request:
//! `revoked_by`, `revocation_reason`, `revocation_requested_at`, `revocation_request_id`) and in
//! the activity log, from the [`Origin`] the caller passes.
//!
//! Licenses of assets Apple does not take back (`assets.revocable = false`, books: Apple answers
//! 9706) are left alone unless the scope says otherwise: sending them to Apple only failed the
//! assignment and counted one more license as assigned elsewhere per attempt. They are counted
//! in [`Revoked::not_revocable`]; callers that name such a license or asset refuse the request
//! up front ([`not_revocable`]).
//!
//! V4: Apple's v2 disassociate has no "notify the user" flag (v1 had one), so the account's
//! license-removal-notification setting is recorded with each revocation (`notify_user` in the
//! activity log) for the calling MDM to act on.

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::ledger::origin::Origin;

/// Which live assignments to revoke (all given filters must match).
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub assignment: Option<Uuid>,
    pub account: Option<Uuid>,
    pub adam_id: Option<String>,
    pub pricing_param: Option<String>,
    pub subject: Option<Uuid>,
    /// Also send licenses of non-revocable assets to Apple (account deletion: the account goes
    /// whatever Apple answers). Otherwise they are kept and counted.
    pub include_not_revocable: bool,
}

/// What a revocation did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Revoked {
    /// Pending assignments dropped before reaching Apple (now `revoked`).
    pub dropped: i64,
    /// Assignments now `revoking`; Apple is asked to release them.
    pub revoking: i64,
    /// Matching live assignments of non-revocable assets, left as they are.
    pub not_revocable: i64,
}

#[derive(diesel::QueryableByName)]
struct Counts {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    dropped: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    revoking: i64,
}

#[derive(diesel::QueryableByName)]
struct Target {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    revocable: bool,
}

/// How many live assignments of `space` matching `scope` are of assets Apple does not let
/// revoke. Callers that name one license or one asset refuse the request when this is not 0.
pub async fn not_revocable(
    conn: &mut AsyncPgConnection,
    space: &str,
    scope: &Scope,
) -> diesel::QueryResult<i64> {
    Ok(matching(conn, space, scope, false)
        .await?
        .iter()
        .filter(|t| !t.revocable)
        .count() as i64)
}

/// The live assignments of `space` matching `scope`, with whether they can be revoked (their
/// asset is revocable, or they are still `pending`: a license that never reached Apple is
/// dropped in the ledger alone, whatever the asset); with `lock`, locked in id order.
async fn matching(
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

/// Starts revocation of every live assignment of `space` matching `scope`. Run it inside the
/// caller's transaction.
///
/// Rows are locked in the ledger's lock order first (assignments by id, then their asset rows
/// by key; see [`crate::ledger::assignments::lock_in_order`]): a revocation spanning several
/// assets or assignments then never deadlocks with allocation batches or the dispatcher.
pub async fn revoke(
    conn: &mut AsyncPgConnection,
    space: &str,
    scope: &Scope,
    origin: &Origin,
    reason: &str,
) -> diesel::QueryResult<Revoked> {
    let matched = matching(conn, space, scope, true).await?;
    let not_revocable = if scope.include_not_revocable {
        0
    } else {
        matched.iter().filter(|t| !t.revocable).count() as i64
    };
    let targets: Vec<Uuid> = matched
        .into_iter()
        .filter(|t| t.revocable || scope.include_not_revocable)
        .map(|t| t.id)
        .collect();
    if targets.is_empty() {
        return Ok(Revoked {
            not_revocable,
            ..Revoked::default()
        });
    }
    diesel::sql_query(
        "SELECT 1 FROM assets s
          WHERE (s.account_id, s.adam_id, s.pricing_param) IN (
                SELECT account_id, adam_id, pricing_param FROM assignments WHERE id = ANY($1))
          ORDER BY s.account_id, s.adam_id, s.pricing_param
          FOR UPDATE OF s",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(&targets)
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
             DELETE FROM jobs WHERE kind = 'associate'
                AND assignment_id IN (SELECT id FROM changed WHERE state = 'revoked')
          RETURNING 1
         ), new_jobs AS (
             INSERT INTO jobs (kind, account_id, assignment_id, adam_id, pricing_param,
                               license_type)
             SELECT 'disassociate', account_id, id, adam_id, pricing_param, license_type
               FROM changed WHERE state = 'revoking'
          RETURNING 1
         ), logged AS (
             INSERT INTO activity_log (space_id, actor, action, account_id, assignment_id,
                                       adam_id, pricing_param, request_id, details)
             SELECT $1, $3, 'assignment.revoke_requested', c.account_id, c.id, c.adam_id,
                    c.pricing_param, $4,
                    jsonb_build_object('reason', $5::text, 'state', c.state,
                                       'notify_user', a.notify_on_removal)
               FROM changed c JOIN accounts a ON a.id = c.account_id
          RETURNING 1
         )
         SELECT count(*) FILTER (WHERE state = 'revoked') AS dropped,
                count(*) FILTER (WHERE state = 'revoking') AS revoking
           FROM changed",
    )
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(&targets)
    .bind::<diesel::sql_types::Text, _>(&origin.actor)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(origin.request_id.as_deref())
    .bind::<diesel::sql_types::Text, _>(reason)
    .get_result::<Counts>(conn)
    .await?;
    Ok(Revoked {
        dropped: counts.dropped,
        revoking: counts.revoking,
        not_revocable,
    })
}
