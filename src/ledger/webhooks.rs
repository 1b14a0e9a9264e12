//! Webhook endpoints, their delivery queue and their delivery log (issue 15, rules N3, N6).
//!
//! - `webhook_endpoints`: the subscribers. Secrets are stored sealed (see [`crate::crypto`]);
//!   `last_sequence` is the endpoint's fan-out cursor on its space's event sequence.
//! - `webhook_deliveries`: the queue. [`fan_out`] turns new events into rows for every enabled
//!   endpoint whose filter matches, in one statement for all endpoints (`FOR UPDATE SKIP
//!   LOCKED` on the endpoints, so replicas never fan out the same range twice; the unique
//!   `(endpoint_id, event_id)` makes a repeat harmless). [`claim`] leases due rows with
//!   `FOR UPDATE SKIP LOCKED` by moving their `run_at` past the lease: a sender killed
//!   mid-delivery leaves them due again after it (at least once).
//! - `webhook_attempts`: one row per attempt, written in batches ([`record_attempts`]), read
//!   newest first and keyset-paged on `id` ([`attempts`]), forgotten after the retention.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Integer, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::crypto::Sealed;
use crate::db::schema::{event_sequences, events, webhook_attempts, webhook_endpoints};
use crate::ledger::events::EventRow;

/// One endpoint as stored.
#[derive(Clone, Debug, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = webhook_endpoints)]
#[diesel(check_for_backend(diesel::pg::Pg))]
#[diesel(treat_none_as_null = true)]
pub struct EndpointRow {
    pub id: Uuid,
    pub space_id: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub description: String,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub secret_key_id: String,
    pub secret_nonce: Vec<u8>,
    pub secret_ciphertext: Vec<u8>,
    pub previous_key_id: Option<String>,
    pub previous_nonce: Option<Vec<u8>>,
    pub previous_ciphertext: Option<Vec<u8>>,
    pub previous_until: Option<DateTime<Utc>>,
    pub last_sequence: i64,
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

impl EndpointRow {
    /// The current secret, sealed.
    pub fn sealed_secret(&self) -> Sealed {
        Sealed {
            key_id: self.secret_key_id.clone(),
            nonce: self.secret_nonce.clone(),
            ciphertext: self.secret_ciphertext.clone(),
        }
    }

    /// The previous secret, sealed, while it still signs at `now`.
    pub fn sealed_previous(&self, now: DateTime<Utc>) -> Option<Sealed> {
        match (
            &self.previous_key_id,
            &self.previous_nonce,
            &self.previous_ciphertext,
            self.previous_until,
        ) {
            (Some(key_id), Some(nonce), Some(ciphertext), Some(until)) if until > now => {
                Some(Sealed {
                    key_id: key_id.clone(),
                    nonce: nonce.clone(),
                    ciphertext: ciphertext.clone(),
                })
            }
            _ => None,
        }
    }

    /// Whether `type_` passes the endpoint's filter (empty: every type).
    pub fn wants(&self, type_: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == type_)
    }
}

/// The last sequence number given out for the space (0 before its first event).
pub async fn last_sequence(conn: &mut AsyncPgConnection, space: &str) -> QueryResult<i64> {
    Ok(event_sequences::table
        .filter(event_sequences::space_id.eq(space))
        .select(event_sequences::last)
        .first::<i64>(conn)
        .await
        .optional()?
        .unwrap_or(0))
}

pub async fn insert(conn: &mut AsyncPgConnection, row: &EndpointRow) -> QueryResult<()> {
    diesel::insert_into(webhook_endpoints::table)
        .values(row)
        .execute(conn)
        .await
        .map(|_| ())
}

/// The endpoint, unless deleted; `lock` takes its row lock until the transaction ends.
pub async fn get(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
    lock: bool,
) -> QueryResult<Option<EndpointRow>> {
    let query = webhook_endpoints::table
        .filter(webhook_endpoints::id.eq(id))
        .filter(webhook_endpoints::space_id.eq(space))
        .filter(webhook_endpoints::deleted_at.is_null())
        .select(EndpointRow::as_select());
    if lock {
        query.for_update().first(conn).await.optional()
    } else {
        query.first(conn).await.optional()
    }
}

/// The space's endpoints, oldest first, after `after` (`(created_at, id)`).
pub async fn list(
    conn: &mut AsyncPgConnection,
    space: &str,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> QueryResult<Vec<EndpointRow>> {
    let mut query = webhook_endpoints::table
        .filter(webhook_endpoints::space_id.eq(space))
        .filter(webhook_endpoints::deleted_at.is_null())
        .order((webhook_endpoints::created_at, webhook_endpoints::id))
        .limit(limit)
        .select(EndpointRow::as_select())
        .into_boxed();
    if let Some((at, id)) = after {
        query = query.filter(
            webhook_endpoints::created_at
                .gt(at)
                .or(webhook_endpoints::created_at
                    .eq(at)
                    .and(webhook_endpoints::id.gt(id))),
        );
    }
    query.load(conn).await
}

/// Writes every column of `row` (the use case changed it under the row lock).
pub async fn save(conn: &mut AsyncPgConnection, row: &EndpointRow) -> QueryResult<()> {
    diesel::update(webhook_endpoints::table.filter(webhook_endpoints::id.eq(row.id)))
        .set(row)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Forgets the endpoint's queued deliveries (it was disabled or deleted).
pub async fn drop_queued(conn: &mut AsyncPgConnection, endpoint: Uuid) -> QueryResult<usize> {
    diesel::sql_query("DELETE FROM webhook_deliveries WHERE endpoint_id = $1")
        .bind::<diesel::sql_types::Uuid, _>(endpoint)
        .execute(conn)
        .await
}

/// Fan-out: for every enabled endpoint behind its space's last event (and not being fanned
/// out by another replica), queues a delivery of each of its next events (at most `limit` per
/// endpoint) that passes its filter, and moves its cursor past them. One statement for all
/// endpoints; returns how many deliveries were queued.
///
/// Why no event is skipped: `event_sequences.last` and the events it numbers commit together,
/// and the statement reads both in one snapshot, so every event up to the `last` it sees is
/// visible to it.
pub async fn fan_out(conn: &mut AsyncPgConnection, limit: i64) -> QueryResult<usize> {
    #[derive(QueryableByName)]
    struct Queued {
        #[diesel(sql_type = BigInt)]
        queued: i64,
    }
    let row: Queued = diesel::sql_query(
        "WITH eps AS (
             SELECT ep.id, ep.space_id, ep.last_sequence AS after, ep.event_types,
                    least(s.last, ep.last_sequence + $1) AS upto
               FROM webhook_endpoints ep
               JOIN event_sequences s ON s.space_id = ep.space_id
              WHERE ep.enabled AND ep.deleted_at IS NULL AND s.last > ep.last_sequence
                FOR UPDATE OF ep SKIP LOCKED
         ), ins AS (
             INSERT INTO webhook_deliveries (endpoint_id, space_id, sequence, event_id)
             SELECT eps.id, ev.space_id, ev.sequence, ev.id
               FROM eps
               JOIN events ev ON ev.space_id = eps.space_id
                             AND ev.sequence > eps.after AND ev.sequence <= eps.upto
              WHERE cardinality(eps.event_types) = 0 OR ev.type = ANY(eps.event_types)
             ON CONFLICT (endpoint_id, event_id) DO NOTHING
             RETURNING 1
         ), moved AS (
             -- Runs although nothing reads it (a data-modifying WITH always does).
             UPDATE webhook_endpoints ep SET last_sequence = eps.upto
               FROM eps WHERE ep.id = eps.id
             RETURNING 1
         )
         SELECT count(*) AS queued FROM ins",
    )
    .bind::<BigInt, _>(limit)
    .get_result(conn)
    .await?;
    Ok(row.queued as usize)
}

/// A delivery a sender leased.
#[derive(Clone, Debug, QueryableByName)]
pub struct Claimed {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub endpoint_id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub event_id: Uuid,
    /// This attempt's number (1 for the first).
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
}

/// Leases up to `limit` due deliveries of enabled endpoints for `lease_secs`, oldest due first.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    worker: &str,
    lease_secs: i64,
    limit: i64,
) -> QueryResult<Vec<Claimed>> {
    diesel::sql_query(
        "UPDATE webhook_deliveries d
            SET run_at = now() + make_interval(secs => $1), locked_by = $2,
                attempts = d.attempts + 1
          WHERE d.id IN (SELECT id FROM webhook_deliveries
                          WHERE run_at <= now()
                          ORDER BY run_at
                          LIMIT $3
                            FOR UPDATE SKIP LOCKED)
         RETURNING d.id, d.endpoint_id, d.event_id, d.attempts",
    )
    .bind::<BigInt, _>(lease_secs)
    .bind::<Text, _>(worker)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// The endpoints with these ids (deleted ones too: the caller checks).
pub async fn endpoints_by_id(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> QueryResult<Vec<EndpointRow>> {
    webhook_endpoints::table
        .filter(webhook_endpoints::id.eq_any(ids))
        .select(EndpointRow::as_select())
        .load(conn)
        .await
}

/// The events with these ids (those still kept).
pub async fn events_by_id(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> QueryResult<Vec<EventRow>> {
    events::table
        .filter(events::id.eq_any(ids))
        .select(EventRow::as_select())
        .load(conn)
        .await
}

/// One event of the space, if still kept.
pub async fn event_in_space(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
) -> QueryResult<Option<EventRow>> {
    events::table
        .filter(events::space_id.eq(space))
        .filter(events::id.eq(id))
        .select(EventRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Deletes finished deliveries (delivered, given up, or nothing left to send).
pub async fn finish(conn: &mut AsyncPgConnection, ids: &[i64]) -> QueryResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    diesel::sql_query("DELETE FROM webhook_deliveries WHERE id = ANY($1)")
        .bind::<Array<BigInt>, _>(ids)
        .execute(conn)
        .await
}

/// Schedules the next attempt of each delivery: `(id, at)`.
pub async fn reschedule(
    conn: &mut AsyncPgConnection,
    next: &[(i64, DateTime<Utc>)],
) -> QueryResult<usize> {
    if next.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = next.iter().map(|(id, _)| *id).collect();
    let ats: Vec<DateTime<Utc>> = next.iter().map(|(_, at)| *at).collect();
    diesel::sql_query(
        "UPDATE webhook_deliveries d SET run_at = n.at, locked_by = NULL
           FROM unnest($1::bigint[], $2::timestamptz[]) AS n(id, at)
          WHERE d.id = n.id",
    )
    .bind::<Array<BigInt>, _>(ids)
    .bind::<Array<Timestamptz>, _>(ats)
    .execute(conn)
    .await
}

/// Queues a delivery of each event of the space recorded at or after `since` that the
/// endpoint already fanned out and its filter passes (an event queued already stays as it is).
/// Returns how many were queued.
pub async fn enqueue_since(
    conn: &mut AsyncPgConnection,
    endpoint: &EndpointRow,
    since: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::sql_query(
        "INSERT INTO webhook_deliveries (endpoint_id, space_id, sequence, event_id)
         SELECT $1, ev.space_id, ev.sequence, ev.id FROM events ev
          WHERE ev.space_id = $2 AND ev.recorded_at >= $3 AND ev.sequence <= $4
            AND (cardinality($5::text[]) = 0 OR ev.type = ANY($5::text[]))
         ON CONFLICT (endpoint_id, event_id) DO NOTHING",
    )
    .bind::<diesel::sql_types::Uuid, _>(endpoint.id)
    .bind::<Text, _>(&endpoint.space_id)
    .bind::<Timestamptz, _>(since)
    .bind::<BigInt, _>(endpoint.last_sequence)
    .bind::<Array<Text>, _>(&endpoint.event_types)
    .execute(conn)
    .await
}

/// Queues a delivery of one event; false when it is queued already.
pub async fn enqueue_one(
    conn: &mut AsyncPgConnection,
    endpoint: Uuid,
    event: &EventRow,
) -> QueryResult<bool> {
    diesel::sql_query(
        "INSERT INTO webhook_deliveries (endpoint_id, space_id, sequence, event_id)
         VALUES ($1, $2, $3, $4) ON CONFLICT (endpoint_id, event_id) DO NOTHING",
    )
    .bind::<diesel::sql_types::Uuid, _>(endpoint)
    .bind::<Text, _>(&event.space_id)
    .bind::<BigInt, _>(event.sequence)
    .bind::<diesel::sql_types::Uuid, _>(event.id)
    .execute(conn)
    .await
    .map(|n| n > 0)
}

/// An attempt for the delivery log.
#[derive(Clone, Debug, Insertable)]
#[diesel(table_name = webhook_attempts)]
pub struct NewAttempt {
    pub endpoint_id: Uuid,
    pub space_id: String,
    pub event_id: Uuid,
    pub event_type: String,
    pub sequence: Option<i64>,
    pub attempt: i32,
    pub attempted_at: DateTime<Utc>,
    pub delivered: bool,
    pub status: Option<i32>,
    pub latency_ms: i32,
    pub response: Option<String>,
    pub error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// One logged attempt.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = webhook_attempts)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct AttemptRow {
    pub id: i64,
    pub endpoint_id: Uuid,
    pub space_id: String,
    pub event_id: Uuid,
    pub event_type: String,
    pub sequence: Option<i64>,
    pub attempt: i32,
    pub attempted_at: DateTime<Utc>,
    pub delivered: bool,
    pub status: Option<i32>,
    pub latency_ms: i32,
    pub response: Option<String>,
    pub error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// Writes attempts, many per statement.
pub async fn record_attempts(conn: &mut AsyncPgConnection, rows: &[NewAttempt]) -> QueryResult<()> {
    // A receiver's answer is whatever it sent: PostgreSQL's `text` refuses NUL, and one such
    // answer would fail the whole batch of outcomes (each delivery then sent again after its
    // lease, and the bad one forever). Control characters other than line breaks and tabs
    // are stored as U+FFFD.
    let cleaned: Vec<NewAttempt>;
    let rows = if rows.iter().any(|r| {
        r.response.as_deref().is_some_and(needs_cleaning)
            || r.error.as_deref().is_some_and(needs_cleaning)
    }) {
        cleaned = rows
            .iter()
            .map(|r| NewAttempt {
                response: r.response.as_deref().map(printable),
                error: r.error.as_deref().map(printable),
                ..r.clone()
            })
            .collect();
        &cleaned
    } else {
        rows
    };
    // 13 parameters a row: well under PostgreSQL's 65,535 per statement.
    for chunk in rows.chunks(2000) {
        diesel::insert_into(webhook_attempts::table)
            .values(chunk)
            .execute(conn)
            .await?;
    }
    Ok(())
}

fn needs_cleaning(text: &str) -> bool {
    text.chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
}

/// `text` with its control characters (but line breaks and tabs) replaced by U+FFFD.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' && c != '\r' {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

/// The endpoint's attempts, newest first, before attempt id `before`.
pub async fn attempts(
    conn: &mut AsyncPgConnection,
    endpoint: Uuid,
    before: Option<i64>,
    event: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<AttemptRow>> {
    let mut query = webhook_attempts::table
        .filter(webhook_attempts::endpoint_id.eq(endpoint))
        .order(webhook_attempts::id.desc())
        .limit(limit)
        .select(AttemptRow::as_select())
        .into_boxed();
    if let Some(before) = before {
        query = query.filter(webhook_attempts::id.lt(before));
    }
    if let Some(event) = event {
        query = query.filter(webhook_attempts::event_id.eq(event));
    }
    query.load(conn).await
}

/// Endpoints that answered: their failure streak ends.
pub async fn mark_succeeded(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    diesel::sql_query(
        "UPDATE webhook_endpoints SET failing_since = NULL
          WHERE id = ANY($1) AND failing_since IS NOT NULL",
    )
    .bind::<Array<diesel::sql_types::Uuid>, _>(ids)
    .execute(conn)
    .await
}

/// Endpoints that failed: their failure streak starts (if it had not).
pub async fn mark_failed(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    at: DateTime<Utc>,
) -> QueryResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    diesel::sql_query(
        "UPDATE webhook_endpoints SET failing_since = $2
          WHERE id = ANY($1) AND failing_since IS NULL",
    )
    .bind::<Array<diesel::sql_types::Uuid>, _>(ids)
    .bind::<Timestamptz, _>(at)
    .execute(conn)
    .await
}

/// Enabled endpoints failing since before `cutoff`, locked (skipping those locked elsewhere).
pub async fn failing_since_before(
    conn: &mut AsyncPgConnection,
    cutoff: DateTime<Utc>,
) -> QueryResult<Vec<EndpointRow>> {
    webhook_endpoints::table
        .filter(webhook_endpoints::enabled.eq(true))
        .filter(webhook_endpoints::deleted_at.is_null())
        .filter(webhook_endpoints::failing_since.lt(cutoff))
        .select(EndpointRow::as_select())
        .for_update()
        .skip_locked()
        .load(conn)
        .await
}

/// Forgets attempts logged before `cutoff`; returns how many.
pub async fn forget_attempts(
    conn: &mut AsyncPgConnection,
    cutoff: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::sql_query("DELETE FROM webhook_attempts WHERE attempted_at < $1")
        .bind::<Timestamptz, _>(cutoff)
        .execute(conn)
        .await
}

/// Deliveries still queued for the endpoint.
pub async fn queued(conn: &mut AsyncPgConnection, endpoint: Uuid) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let row: N =
        diesel::sql_query("SELECT count(*) AS n FROM webhook_deliveries WHERE endpoint_id = $1")
            .bind::<diesel::sql_types::Uuid, _>(endpoint)
            .get_result(conn)
            .await?;
    Ok(row.n)
}

/// Endpoints (not deleted) whose current or still-signing previous secret is sealed with
/// another key than `active`, locked (skipping those locked elsewhere), at most `limit`.
pub async fn sealed_with_other_keys(
    conn: &mut AsyncPgConnection,
    active: &str,
    limit: i64,
) -> QueryResult<Vec<EndpointRow>> {
    webhook_endpoints::table
        .filter(webhook_endpoints::deleted_at.is_null())
        .filter(
            webhook_endpoints::secret_key_id
                .ne(active)
                .or(webhook_endpoints::previous_key_id
                    .ne(active)
                    .and(webhook_endpoints::previous_until.gt(diesel::dsl::now))),
        )
        .order(webhook_endpoints::id)
        .limit(limit)
        .select(EndpointRow::as_select())
        .for_update()
        .skip_locked()
        .load(conn)
        .await
}

/// A space is deleted: its endpoints are stamped deleted (so a space re-created with the same id
/// starts without them) and their queued deliveries dropped; the delivery log stays for its
/// retention.
pub async fn delete_space(conn: &mut AsyncPgConnection, space: &str) -> QueryResult<()> {
    diesel::sql_query("DELETE FROM webhook_deliveries WHERE space_id = $1")
        .bind::<Text, _>(space)
        .execute(conn)
        .await?;
    diesel::sql_query(
        "UPDATE webhook_endpoints SET enabled = false, deleted_at = now(), updated_at = now()
          WHERE space_id = $1 AND deleted_at IS NULL",
    )
    .bind::<Text, _>(space)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn a_receivers_answer_is_stored_without_nul_and_control_characters() {
        assert_eq!(
            printable("ok\0\u{7}\nnext\tline"),
            "ok\u{FFFD}\u{FFFD}\nnext\tline"
        );
        assert_eq!(printable("plain"), "plain");
    }
}
