//! Assignments reaching their final state from Apple's results: those waiting for an event,
//! their moves to `active` / `revoked` / `failed`, the re-allocation of a license Apple did not
//! have, and the activity rows that record them.

use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::domain::model::AssignmentState;

/// An assignment waiting for an Apple event.
#[derive(Debug, QueryableByName)]
pub struct Waiting {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub space_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub state: AssignmentState,
    /// The serial number or client user id Apple knows the subject by.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub target: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub requested_by: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// The assignments still waiting for `event_id` (associating or revoking), locked in id order.
pub async fn waiting_locked(
    conn: &mut AsyncPgConnection,
    event_id: &str,
) -> diesel::QueryResult<Vec<Waiting>> {
    diesel::sql_query(
        "SELECT a.id, a.space_id, a.state, s.external_id AS target, a.requested_by
           FROM assignments a JOIN subjects s ON s.id = a.subject_id
          WHERE a.apple_event_id = $1 AND a.state IN ('associating', 'revoking')
          ORDER BY a.id
          FOR UPDATE OF a",
    )
    .bind::<diesel::sql_types::Text, _>(event_id)
    .load(conn)
    .await
}

/// How many assignments of `event_id` are still in `state`.
pub async fn count_in_state(
    conn: &mut AsyncPgConnection,
    event_id: &str,
    state: AssignmentState,
) -> diesel::QueryResult<i64> {
    let row: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM assignments WHERE apple_event_id = $1 AND state = $2",
    )
    .bind::<diesel::sql_types::Text, _>(event_id)
    .bind::<diesel::sql_types::Text, _>(state)
    .get_result(conn)
    .await?;
    Ok(row.n)
}

/// How many assignments of `event_id` still wait for Apple (associating or revoking).
pub async fn count_waiting(
    conn: &mut AsyncPgConnection,
    event_id: &str,
) -> diesel::QueryResult<i64> {
    let row: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM assignments
          WHERE apple_event_id = $1 AND state IN ('associating', 'revoking')",
    )
    .bind::<diesel::sql_types::Text, _>(event_id)
    .get_result(conn)
    .await?;
    Ok(row.n)
}

/// Moves `ids` to `state` (keeping their error unless `error` is given).
pub async fn set_state(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    state: AssignmentState,
    error: Option<&serde_json::Value>,
) -> diesel::QueryResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    diesel::sql_query(
        "UPDATE assignments SET state = $2, error = COALESCE($3, error), version = version + 1,
                                updated_at = now()
          WHERE id = ANY($1)",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .bind::<diesel::sql_types::Text, _>(state)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Jsonb>, _>(error)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Records `action` (by the system, for `event_id`) for each of `ids`, with its state and error
/// (and, for a release, who asked, why and whether the user is notified).
pub async fn log(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    action: &str,
    event_id: &str,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO activity_log (space_id, actor, action, account_id, assignment_id, subject,
                                   adam_id, pricing_param, apple_event_id, details, version)
         SELECT a.space_id, 'system', $2, a.account_id, a.id, s.kind || ':' || s.external_id,
                a.adam_id, a.pricing_param, $3,
                jsonb_build_object('state', a.state, 'error', a.error)
                -- A release: who asked and why, and the account's removal notification
                -- setting (V4), so its event tells the MDM whether to notify the user.
                || CASE WHEN a.state = 'revoked'
                        THEN jsonb_build_object('revoked_by', a.revoked_by,
                                                'reason', a.revocation_reason,
                                                'notify_user', ac.notify_on_removal)
                        ELSE '{}'::jsonb END,
                a.version
           FROM assignments a LEFT JOIN subjects s ON s.id = a.subject_id
           LEFT JOIN accounts ac ON ac.id = a.account_id
          WHERE a.id = ANY($1)",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .bind::<diesel::sql_types::Text, _>(action)
    .bind::<diesel::sql_types::Text, _>(event_id)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Fails the association `id` with `error` for re-allocation, if it is still `associating`
/// (once: a poll and a notification may report the same failure). True when it was.
pub async fn take_for_reallocation(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    error: &serde_json::Value,
) -> diesel::QueryResult<bool> {
    let taken = diesel::sql_query(
        "UPDATE assignments SET state = 'failed', error = $2, version = version + 1,
                updated_at = now()
          WHERE id = $1 AND state = 'associating'",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .bind::<diesel::sql_types::Jsonb, _>(error)
    .execute(conn)
    .await?;
    Ok(taken == 1)
}

/// Replaces the error of assignment `id` (where its re-allocation went).
pub async fn set_error(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    error: &serde_json::Value,
) -> diesel::QueryResult<()> {
    diesel::sql_query("UPDATE assignments SET error = $2 WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(id)
        .bind::<diesel::sql_types::Jsonb, _>(error)
        .execute(conn)
        .await
        .map(|_| ())
}
