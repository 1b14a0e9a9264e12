//! Assignments on their way to Apple: what the dispatcher reads to cut requests, and how it
//! marks the assignments of a request (its batch) submitted, accepted, put back or failed.

use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::domain::model::{AssignmentState, LicenseType};
use crate::ledger::jobs::JobKind;

/// An assignment queued for Apple, as a request needs it.
#[derive(Debug, QueryableByName)]
pub struct Work {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub adam_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub pricing_param: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub license_type: LicenseType,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub state: AssignmentState,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub apple_event_id: Option<String>,
    /// Its association is still in flight (submitted, or being submitted right now).
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub event_pending: bool,
    /// The serial number or client user id Apple knows the subject by.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub target: String,
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
}

/// The assignments `ids` with what a request needs of them.
pub async fn work(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> diesel::QueryResult<Vec<Work>> {
    diesel::sql_query(
        "SELECT a.id, a.adam_id, a.pricing_param, a.license_type, a.state, a.apple_event_id,
                (COALESCE(e.status = 'pending', false)
                 OR EXISTS (SELECT 1 FROM jobs j WHERE j.kind = $2 AND j.assignment_id = a.id
                              AND j.locked_until > now())) AS event_pending,
                s.external_id AS target
           FROM assignments a
           JOIN subjects s ON s.id = a.subject_id
           LEFT JOIN apple_events e ON e.event_id = a.apple_event_id
          WHERE a.id = ANY($1)",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .bind::<diesel::sql_types::Text, _>(JobKind::Associate)
    .load(conn)
    .await
}

/// Marks the assignments of `ids` that a request carries (those still waiting for it) with the
/// request's `batch`: associations become `associating`, releases stay `revoking`. Returns the
/// marked ones. Lock the rows first ([`super::assignments::lock_in_order`]).
pub async fn mark(
    conn: &mut AsyncPgConnection,
    associate: bool,
    ids: &[Uuid],
    batch: Uuid,
) -> diesel::QueryResult<Vec<Uuid>> {
    let mark = if associate {
        "UPDATE assignments SET state = 'associating', batch_id = $2, updated_at = now()
          WHERE id = ANY($1)
            AND (state = 'pending' OR (state = 'associating' AND apple_event_id IS NULL))
      RETURNING id"
    } else {
        "UPDATE assignments SET batch_id = $2, updated_at = now()
          WHERE id = ANY($1) AND state = 'revoking' RETURNING id"
    };
    let rows: Vec<IdRow> = diesel::sql_query(mark)
        .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
        .bind::<diesel::sql_types::Uuid, _>(batch)
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// Apple accepted the batch's request as `event_id`: the batch's assignments among `ids` (the
/// ones [`mark`] returned) get it. The ids find the rows (`batch_id` has no index: a search by
/// it alone would read the whole ledger for every Apple request); the batch filter keeps out
/// any of them a later request took since.
pub async fn accepted(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    batch: Uuid,
    event_id: &str,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "UPDATE assignments SET apple_event_id = $2, updated_at = now()
          WHERE id = ANY($3) AND batch_id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(batch)
    .bind::<diesel::sql_types::Text, _>(event_id)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Fails the associations of `ids` still in `batch` with `error`; returns the failed ones.
pub async fn fail_associations(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    batch: Uuid,
    error: &serde_json::Value,
) -> diesel::QueryResult<Vec<Uuid>> {
    let rows: Vec<IdRow> = diesel::sql_query(
        "UPDATE assignments SET state = 'failed', error = $3, version = version + 1, updated_at = now()
          WHERE id = ANY($1) AND batch_id = $2 AND state = 'associating' RETURNING id",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .bind::<diesel::sql_types::Uuid, _>(batch)
    .bind::<diesel::sql_types::Jsonb, _>(error)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// Records `assignment.failed` (by the system, with `error`) for each of `ids`.
pub async fn log_failed(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    error: &serde_json::Value,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO activity_log (space_id, actor, action, account_id, assignment_id, subject,
                                   adam_id, pricing_param, details, version)
         SELECT a.space_id, 'system', 'assignment.failed', a.account_id, a.id,
                s.kind || ':' || s.external_id, a.adam_id, a.pricing_param, $2, a.version
           FROM assignments a LEFT JOIN subjects s ON s.id = a.subject_id
          WHERE a.id = ANY($1)",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .bind::<diesel::sql_types::Jsonb, _>(error)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Puts the batch's associations among `ids` that Apple did not take back to `pending`.
pub async fn requeue_associations(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    batch: Uuid,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "UPDATE assignments SET state = 'pending', batch_id = NULL, updated_at = now()
          WHERE id = ANY($2) AND batch_id = $1 AND state = 'associating'
            AND apple_event_id IS NULL",
    )
    .bind::<diesel::sql_types::Uuid, _>(batch)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Apple refused the batch's release outright: its assignments among `ids` fail with `error`,
/// and their licenses stay consumed at Apple (counted as assigned elsewhere). Returns the
/// failed ones (log them: [`log_failed`]).
pub async fn fail_releases(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    batch: Uuid,
    error: &serde_json::Value,
) -> diesel::QueryResult<Vec<Uuid>> {
    let rows: Vec<IdRow> = diesel::sql_query(
        "WITH f AS (UPDATE assignments SET state = 'failed', error = $2, version = version + 1,
                           updated_at = now()
                     WHERE id = ANY($3) AND batch_id = $1 AND state = 'revoking'
                 RETURNING id, account_id, adam_id, pricing_param),
              counted AS (
                 UPDATE assets s SET foreign_assigned = foreign_assigned + (SELECT count(*) FROM f)
                  WHERE (s.account_id, s.adam_id, s.pricing_param)
                        IN (SELECT account_id, adam_id, pricing_param FROM f))
         SELECT id FROM f",
    )
    .bind::<diesel::sql_types::Uuid, _>(batch)
    .bind::<diesel::sql_types::Jsonb, _>(error)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// An asset whose pending associations Apple cannot all take yet (rule A11).
#[derive(Debug, QueryableByName)]
pub struct Shortfall {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub adam_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub pricing_param: String,
    /// How many of the asset's associations must wait: the licenses the ledger freed whose
    /// release Apple has not finished (`revoking`), beyond what Apple has free besides them.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub short: i64,
}

/// Per asset of `account` among `(adam_ids[i], pricing_params[i])`, the associations that would
/// need a license Apple still counts as assigned: at Apple a `revoking` license is held until
/// its release finishes, so the asset's live licenses here (`held`: pending, associating and
/// active), those assigned elsewhere and the revoking ones may exceed Apple's total by at most
/// the revoking count. Only assets short of licenses are returned. Reads the transient states'
/// partial index (`assignments_transient_by_asset`), which holds only unsettled rows.
pub async fn release_shortfall(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    adam_ids: &[String],
    pricing_params: &[String],
) -> diesel::QueryResult<Vec<Shortfall>> {
    diesel::sql_query(
        "SELECT s.adam_id, s.pricing_param,
                LEAST(r.n, s.held::bigint + s.foreign_assigned + r.n - s.apple_total) AS short
           FROM unnest($2::text[], $3::text[]) AS k(adam_id, pricing_param)
           JOIN assets s ON s.account_id = $1 AND s.adam_id = k.adam_id
                        AND s.pricing_param = k.pricing_param
          CROSS JOIN LATERAL (
                SELECT count(*) AS n FROM assignments a
                 WHERE a.adam_id = s.adam_id AND a.pricing_param = s.pricing_param
                   AND a.account_id = s.account_id AND a.state = 'revoking') r
          WHERE r.n > 0 AND s.held::bigint + s.foreign_assigned + r.n > s.apple_total",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(adam_ids)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(pricing_params)
    .load(conn)
    .await
}
