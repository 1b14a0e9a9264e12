//! Repairing assignments the drift report found `ledger_only` (active here, not at Apple) or
//! `stuck` (pending, associating or revoking for too long): queue the association again, mark
//! the license lost (freed in the ledger), follow the Apple event again, resend the release.
//! Each function acts only on an assignment still in the state it expects (the caller locked
//! it) and reports whether it did.

use diesel::sql_types::{Bool, Jsonb, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::domain::model::LicenseType;
use crate::domain::origin::Origin;
use crate::ledger::dead_letters::REQUEUED;
use crate::ledger::jobs::JobKind;

#[derive(diesel::QueryableByName)]
struct Yes {
    #[diesel(sql_type = Bool)]
    yes: bool,
}

/// Whether Apple lists the license (the mirror, as the last sync read it).
pub async fn listed_at_apple(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    adam_id: &str,
    pricing_param: &str,
    license_type: LicenseType,
    target: &str,
) -> diesel::QueryResult<bool> {
    let row: Yes = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM apple_assignments
                         WHERE account_id = $1 AND adam_id = $2 AND pricing_param = $3
                           AND license_type = $4 AND target = $5) AS yes",
    )
    .bind::<SqlUuid, _>(account)
    .bind::<Text, _>(adam_id)
    .bind::<Text, _>(pricing_param)
    .bind::<Text, _>(license_type)
    .bind::<Text, _>(target)
    .get_result(conn)
    .await?;
    Ok(row.yes)
}

/// Queues again a dead letter of `kind` for `assignment` ([`REQUEUED`]: the repair retries it, as
/// `POST …/dead-letters/{id}/retry` would); whether there was one.
pub async fn revive_dead_job(
    conn: &mut AsyncPgConnection,
    kind: JobKind,
    assignment: Uuid,
) -> diesel::QueryResult<bool> {
    let n = diesel::sql_query(format!(
        "UPDATE jobs SET {REQUEUED} WHERE kind = $1 AND assignment_id = $2 AND state = 'dead'"
    ))
    .bind::<Text, _>(kind)
    .bind::<SqlUuid, _>(assignment)
    .execute(conn)
    .await?;
    Ok(n > 0)
}

/// Queues again a dead letter polling Apple event `event_id`; whether there was one.
pub async fn revive_dead_poll(
    conn: &mut AsyncPgConnection,
    event_id: &str,
) -> diesel::QueryResult<bool> {
    let n = diesel::sql_query(format!(
        "UPDATE jobs SET {REQUEUED} WHERE kind = 'poll_event' AND payload ->> 'event_id' = $1
            AND state = 'dead'"
    ))
    .bind::<Text, _>(event_id)
    .execute(conn)
    .await?;
    Ok(n > 0)
}

/// Whether a job of `kind` for `assignment` is queued (or running); a dead letter is not (see
/// [`revive_dead_job`]).
pub async fn job_queued(
    conn: &mut AsyncPgConnection,
    kind: JobKind,
    assignment: Uuid,
) -> diesel::QueryResult<bool> {
    let row: Yes = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE kind = $1 AND assignment_id = $2
                          AND state = 'queued') AS yes",
    )
    .bind::<Text, _>(kind)
    .bind::<SqlUuid, _>(assignment)
    .get_result(conn)
    .await?;
    Ok(row.yes)
}

/// Whether a poll of Apple event `event_id` is queued (or running); a dead letter is not (see
/// [`revive_dead_poll`]).
pub async fn poll_queued(
    conn: &mut AsyncPgConnection,
    event_id: &str,
) -> diesel::QueryResult<bool> {
    let row: Yes = diesel::sql_query(
        // The kind written out: the partial index `jobs_poll_by_event` applies.
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE kind = 'poll_event'
                          AND payload ->> 'event_id' = $1 AND state = 'queued') AS yes",
    )
    .bind::<Text, _>(event_id)
    .get_result(conn)
    .await?;
    Ok(row.yes)
}

/// Moves a live assignment back to `pending` (its Apple event and batch forgotten), to be
/// associated again. `false` when it is no longer live.
pub async fn back_to_pending(conn: &mut AsyncPgConnection, id: Uuid) -> diesel::QueryResult<bool> {
    diesel::sql_query(
        "UPDATE assignments SET state = 'pending', apple_event_id = NULL, batch_id = NULL,
                                error = NULL, version = version + 1, updated_at = now()
          WHERE id = $1 AND state IN ('pending', 'associating', 'active')",
    )
    .bind::<SqlUuid, _>(id)
    .execute(conn)
    .await
    .map(|n| n > 0)
}

/// Frees an `active` license Apple no longer lists: state `revoked`, reason `lost at Apple`,
/// recorded with who asked; `held` drops on its asset (locked here, after the assignment).
/// `false` when it is no longer active.
pub async fn mark_lost(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    origin: &Origin,
) -> diesel::QueryResult<bool> {
    diesel::sql_query(
        "SELECT 1 FROM assets s JOIN assignments a
             ON a.account_id = s.account_id AND a.adam_id = s.adam_id
            AND a.pricing_param = s.pricing_param
          WHERE a.id = $1 FOR UPDATE OF s",
    )
    .bind::<SqlUuid, _>(id)
    .execute(conn)
    .await?;
    let changed = diesel::sql_query(
        "WITH lost AS (
             UPDATE assignments SET state = 'revoked', revoked_by = $2,
                    revocation_reason = 'lost at Apple', revocation_requested_at = now(),
                    revocation_request_id = $3, version = version + 1, updated_at = now()
              WHERE id = $1 AND state = 'active'
          RETURNING account_id, adam_id, pricing_param)
         UPDATE assets s SET held = s.held - 1, updated_at = now()
           FROM lost
          WHERE s.account_id = lost.account_id AND s.adam_id = lost.adam_id
            AND s.pricing_param = lost.pricing_param",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(&origin.actor)
    .bind::<Nullable<Text>, _>(origin.request_id.as_deref())
    .execute(conn)
    .await?;
    Ok(changed > 0)
}

/// Logs a repair of assignment `id` (`action`: reassociated, marked_lost, resubmitted).
pub async fn log(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
    origin: &Origin,
    action: &str,
    details: &serde_json::Value,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO activity_log (space_id, actor, action, account_id, assignment_id, subject,
                                   adam_id, pricing_param, rule, request_id, details, version)
         SELECT $1, $2, $3, a.account_id, a.id, s.kind || ':' || s.external_id, a.adam_id,
                a.pricing_param, a.rule, $5, $6, a.version
           FROM assignments a LEFT JOIN subjects s ON s.id = a.subject_id
          WHERE a.id = $4",
    )
    .bind::<Text, _>(space)
    .bind::<Text, _>(&origin.actor)
    .bind::<Text, _>(action)
    .bind::<SqlUuid, _>(id)
    .bind::<Nullable<Text>, _>(origin.request_id.as_deref())
    .bind::<Jsonb, _>(details.clone())
    .execute(conn)
    .await
    .map(|_| ())
}
