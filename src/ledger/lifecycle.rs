//! The statements of lifecycle events ([`crate::lifecycle`]): the events as received
//! (`lifecycle_events`, unique per space, source and id), the newest applied time per subject
//! and aspect (`lifecycle_marks`), and each space's effect per type (`lifecycle_settings`).
//!
//! The worker claims a batch of due events with `FOR UPDATE SKIP LOCKED` inside the
//! transaction that applies them: the rows stay locked until the effects and the events' new
//! states commit together, so replicas never apply an event twice, and a process killed mid-way
//! leaves the events `queued` (its transaction rolled back) for the next claim. The statements
//! over many events, marks and subjects at once (`claim_due_many`, `lock_marks`, `set_marks`,
//! `finish_many`) are what lets one transaction apply hundreds of events.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::{lifecycle_events, lifecycle_marks, lifecycle_settings};

/// One event as stored.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = lifecycle_events, check_for_backend(diesel::pg::Pg))]
pub struct EventRow {
    pub id: Uuid,
    pub space_id: String,
    pub source: String,
    pub event_id: String,
    pub type_: String,
    pub subject_kind: String,
    pub subject_id: String,
    pub occurred_at: DateTime<Utc>,
    pub data: serde_json::Value,
    pub effect: String,
    pub state: String,
    pub due_at: DateTime<Utc>,
    pub revoke_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub result: Option<serde_json::Value>,
    pub requested_by: String,
    pub request_id: Option<String>,
    pub received_at: DateTime<Utc>,
    pub applied_at: Option<DateTime<Utc>>,
}

/// A new event.
#[derive(Clone, Debug, Insertable)]
#[diesel(table_name = lifecycle_events)]
pub struct NewEvent {
    pub id: Uuid,
    pub space_id: String,
    pub source: String,
    pub event_id: String,
    pub type_: String,
    pub subject_kind: String,
    pub subject_id: String,
    pub occurred_at: DateTime<Utc>,
    pub data: serde_json::Value,
    pub effect: String,
    pub state: String,
    pub due_at: DateTime<Utc>,
    pub revoke_at: Option<DateTime<Utc>>,
    pub requested_by: String,
    pub request_id: Option<String>,
}

/// Inserts the events not already stored (same space, source and id; a batch naming one twice
/// stores the first) and returns the ids of those inserted.
pub async fn insert_new(conn: &mut AsyncPgConnection, rows: &[NewEvent]) -> QueryResult<Vec<Uuid>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    diesel::insert_into(lifecycle_events::table)
        .values(rows)
        .on_conflict((
            lifecycle_events::space_id,
            lifecycle_events::source,
            lifecycle_events::event_id,
        ))
        .do_nothing()
        .returning(lifecycle_events::id)
        .get_results(conn)
        .await
}

/// The stored events of `space` among `keys` (source, id).
pub async fn find_many(
    conn: &mut AsyncPgConnection,
    space: &str,
    keys: &[(String, String)],
) -> QueryResult<Vec<EventRow>> {
    let ids: Vec<&str> = keys.iter().map(|(_, id)| id.as_str()).collect();
    let rows: Vec<EventRow> = lifecycle_events::table
        .filter(lifecycle_events::space_id.eq(space))
        .filter(lifecycle_events::event_id.eq_any(ids))
        .select(EventRow::as_select())
        .load(conn)
        .await?;
    Ok(rows
        .into_iter()
        .filter(|r| keys.iter().any(|(s, i)| *s == r.source && *i == r.event_id))
        .collect())
}

pub async fn find(
    conn: &mut AsyncPgConnection,
    space: &str,
    source: &str,
    event_id: &str,
) -> QueryResult<Option<EventRow>> {
    lifecycle_events::table
        .filter(lifecycle_events::space_id.eq(space))
        .filter(lifecycle_events::source.eq(source))
        .filter(lifecycle_events::event_id.eq(event_id))
        .select(EventRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Locks and returns the next due event (`queued` or `scheduled` with `due_at` passed), oldest
/// first, skipping those another transaction holds. Run inside the applying transaction.
pub async fn claim_due(conn: &mut AsyncPgConnection) -> QueryResult<Option<EventRow>> {
    lifecycle_events::table
        .filter(lifecycle_events::state.eq_any(["queued", "scheduled"]))
        .filter(lifecycle_events::due_at.le(diesel::dsl::now))
        .order((lifecycle_events::due_at, lifecycle_events::occurred_at))
        .select(EventRow::as_select())
        .for_update()
        .skip_locked()
        .first(conn)
        .await
        .optional()
}

/// Locks and returns up to `limit` due events, in [`claim_due`]'s order, skipping those
/// another transaction holds: the batch one transaction of the worker applies.
pub async fn claim_due_many(
    conn: &mut AsyncPgConnection,
    limit: i64,
) -> QueryResult<Vec<EventRow>> {
    lifecycle_events::table
        .filter(lifecycle_events::state.eq_any(["queued", "scheduled"]))
        .filter(lifecycle_events::due_at.le(diesel::dsl::now))
        .order((lifecycle_events::due_at, lifecycle_events::occurred_at))
        .limit(limit)
        .select(EventRow::as_select())
        .for_update()
        .skip_locked()
        .load(conn)
        .await
}

/// Records the new state and result of many events at once (`applied` or `stale`:
/// `applied_at` now), `rows[i]` = (event, state, result).
pub async fn finish_many(
    conn: &mut AsyncPgConnection,
    rows: &[(Uuid, String, serde_json::Value)],
) -> QueryResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
    let states: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    let results: Vec<&serde_json::Value> = rows.iter().map(|r| &r.2).collect();
    diesel::sql_query(
        "UPDATE lifecycle_events e
            SET state = u.state, result = u.result, applied_at = now(), last_error = NULL
           FROM unnest($1::uuid[], $2::text[], $3::jsonb[]) AS u(id, state, result)
          WHERE e.id = u.id",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(states)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Jsonb>, _>(results)
    .execute(conn)
    .await?;
    Ok(())
}

/// Locks event `id` if it is still `queued` or `scheduled` (an event applied at once, in its
/// request).
pub async fn claim_id(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<EventRow>> {
    lifecycle_events::table
        .filter(lifecycle_events::id.eq(id))
        .filter(lifecycle_events::state.eq_any(["queued", "scheduled"]))
        .select(EventRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// Records the event's new state and result (`applied`, `stale`: `applied_at` now;
/// `scheduled`: due again at `due_at`).
pub async fn finish(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    state: &str,
    result: &serde_json::Value,
    due_at: Option<DateTime<Utc>>,
) -> QueryResult<()> {
    let target = lifecycle_events::table.filter(lifecycle_events::id.eq(id));
    match due_at {
        Some(due) => {
            diesel::update(target)
                .set((
                    lifecycle_events::state.eq(state),
                    lifecycle_events::result.eq(result),
                    lifecycle_events::due_at.eq(due),
                    lifecycle_events::last_error.eq(None::<String>),
                ))
                .execute(conn)
                .await?
        }
        None => {
            diesel::update(target)
                .set((
                    lifecycle_events::state.eq(state),
                    lifecycle_events::result.eq(result),
                    lifecycle_events::applied_at.eq(diesel::dsl::now),
                    lifecycle_events::last_error.eq(None::<String>),
                ))
                .execute(conn)
                .await?
        }
    };
    Ok(())
}

/// Counts a failed attempt: the event is tried again at `retry_at`, or is `failed` for good.
pub async fn record_failure(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    error: &str,
    retry_at: Option<DateTime<Utc>>,
) -> QueryResult<()> {
    let target = lifecycle_events::table.filter(lifecycle_events::id.eq(id));
    match retry_at {
        Some(at) => {
            diesel::update(target)
                .set((
                    lifecycle_events::attempts.eq(lifecycle_events::attempts + 1),
                    lifecycle_events::last_error.eq(error),
                    lifecycle_events::due_at.eq(at),
                ))
                .execute(conn)
                .await?
        }
        None => {
            diesel::update(target)
                .set((
                    lifecycle_events::attempts.eq(lifecycle_events::attempts + 1),
                    lifecycle_events::last_error.eq(error),
                    lifecycle_events::state.eq("failed"),
                    lifecycle_events::applied_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
                .await?
        }
    };
    Ok(())
}

/// Queued or scheduled events that are due, for tests and the drain (how much work is left).
pub async fn count_due(conn: &mut AsyncPgConnection) -> QueryResult<i64> {
    lifecycle_events::table
        .filter(lifecycle_events::state.eq_any(["queued", "scheduled"]))
        .filter(lifecycle_events::due_at.le(diesel::dsl::now))
        .count()
        .get_result(conn)
        .await
}

/// The last event applied to a subject and aspect (V5).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mark {
    /// When it occurred (`None`: no event applied yet; stored as NULL, so no time, however
    /// early, is taken for "never").
    pub occurred_at: Option<DateTime<Utc>>,
    /// Its key (source, id), kept with the mark after the event itself is forgotten (30 days):
    /// a replay of that very event is recognised. `None` when `PUT …/devices|users` set it.
    pub key: Option<(String, String)>,
}

/// Locks the mark of (subject, aspect) — created if missing, so two events about the same
/// subject and aspect applied at once wait for each other — and returns it.
pub async fn lock_mark(
    conn: &mut AsyncPgConnection,
    space: &str,
    subject_kind: &str,
    subject_id: &str,
    aspect: &str,
) -> QueryResult<Mark> {
    diesel::insert_into(lifecycle_marks::table)
        .values((
            lifecycle_marks::space_id.eq(space),
            lifecycle_marks::subject_kind.eq(subject_kind),
            lifecycle_marks::subject_id.eq(subject_id),
            lifecycle_marks::aspect.eq(aspect),
            lifecycle_marks::occurred_at.eq(None::<DateTime<Utc>>),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    let (occurred_at, source, key): (Option<DateTime<Utc>>, Option<String>, Option<String>) =
        lifecycle_marks::table
            .filter(lifecycle_marks::space_id.eq(space))
            .filter(lifecycle_marks::subject_kind.eq(subject_kind))
            .filter(lifecycle_marks::subject_id.eq(subject_id))
            .filter(lifecycle_marks::aspect.eq(aspect))
            .select((
                lifecycle_marks::occurred_at,
                lifecycle_marks::event_source,
                lifecycle_marks::event_key,
            ))
            .for_update()
            .first(conn)
            .await?;
    Ok(Mark {
        occurred_at,
        key: source.zip(key),
    })
}

/// The key of a mark: space, subject kind, subject id, aspect.
pub type MarkKey = (String, String, String, String);

#[derive(diesel::QueryableByName)]
struct MarkRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    space_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    subject_kind: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    subject_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    aspect: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    occurred_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    event_source: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    event_key: Option<String>,
}

/// [`lock_mark`] for many (subject, aspect) keys at once: created where missing and locked in
/// key order (so two batches sharing subjects wait for each other instead of deadlocking).
pub async fn lock_marks(
    conn: &mut AsyncPgConnection,
    keys: &[MarkKey],
) -> QueryResult<Vec<(MarkKey, Mark)>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut sorted: Vec<&MarkKey> = keys.iter().collect();
    sorted.sort();
    sorted.dedup();
    let spaces: Vec<&str> = sorted.iter().map(|k| k.0.as_str()).collect();
    let kinds: Vec<&str> = sorted.iter().map(|k| k.1.as_str()).collect();
    let ids: Vec<&str> = sorted.iter().map(|k| k.2.as_str()).collect();
    let aspects: Vec<&str> = sorted.iter().map(|k| k.3.as_str()).collect();
    type Texts = diesel::sql_types::Array<diesel::sql_types::Text>;
    diesel::sql_query(
        "INSERT INTO lifecycle_marks (space_id, subject_kind, subject_id, aspect)
         SELECT space_id, subject_kind, subject_id, aspect
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY
                         AS k(space_id, subject_kind, subject_id, aspect, n)
          ORDER BY n
         ON CONFLICT DO NOTHING",
    )
    .bind::<Texts, _>(&spaces)
    .bind::<Texts, _>(&kinds)
    .bind::<Texts, _>(&ids)
    .bind::<Texts, _>(&aspects)
    .execute(conn)
    .await?;
    let rows: Vec<MarkRow> = diesel::sql_query(
        "SELECT m.space_id, m.subject_kind, m.subject_id, m.aspect, m.occurred_at,
                m.event_source, m.event_key
           FROM lifecycle_marks m
           JOIN unnest($1::text[], $2::text[], $3::text[], $4::text[])
                  AS k(space_id, subject_kind, subject_id, aspect)
             ON m.space_id = k.space_id AND m.subject_kind = k.subject_kind
            AND m.subject_id = k.subject_id AND m.aspect = k.aspect
          ORDER BY m.space_id, m.subject_kind, m.subject_id, m.aspect
          FOR UPDATE OF m",
    )
    .bind::<Texts, _>(&spaces)
    .bind::<Texts, _>(&kinds)
    .bind::<Texts, _>(&ids)
    .bind::<Texts, _>(&aspects)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                (r.space_id, r.subject_kind, r.subject_id, r.aspect),
                Mark {
                    occurred_at: r.occurred_at,
                    key: r.event_source.zip(r.event_key),
                },
            )
        })
        .collect())
}

/// One mark to move: its key, the event's time, the event's row id and key (source, id).
pub struct MarkMove {
    pub key: MarkKey,
    pub occurred_at: DateTime<Utc>,
    pub event: Uuid,
    pub source: String,
    pub event_id: String,
}

/// [`set_mark`] for many marks (locked by the caller) in one statement.
pub async fn set_marks(conn: &mut AsyncPgConnection, moves: &[MarkMove]) -> QueryResult<()> {
    if moves.is_empty() {
        return Ok(());
    }
    type Texts = diesel::sql_types::Array<diesel::sql_types::Text>;
    diesel::sql_query(
        "UPDATE lifecycle_marks m
            SET occurred_at = u.at, event = u.event, event_source = u.source,
                event_key = u.event_key
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                       $6::uuid[], $7::text[], $8::text[])
                  AS u(space_id, subject_kind, subject_id, aspect, at, event, source, event_key)
          WHERE m.space_id = u.space_id AND m.subject_kind = u.subject_kind
            AND m.subject_id = u.subject_id AND m.aspect = u.aspect
            AND (m.occurred_at IS NULL OR m.occurred_at <= u.at)",
    )
    .bind::<Texts, _>(moves.iter().map(|m| m.key.0.as_str()).collect::<Vec<_>>())
    .bind::<Texts, _>(moves.iter().map(|m| m.key.1.as_str()).collect::<Vec<_>>())
    .bind::<Texts, _>(moves.iter().map(|m| m.key.2.as_str()).collect::<Vec<_>>())
    .bind::<Texts, _>(moves.iter().map(|m| m.key.3.as_str()).collect::<Vec<_>>())
    .bind::<diesel::sql_types::Array<diesel::sql_types::Timestamptz>, _>(
        moves.iter().map(|m| m.occurred_at).collect::<Vec<_>>(),
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(
        moves.iter().map(|m| m.event).collect::<Vec<_>>(),
    )
    .bind::<Texts, _>(moves.iter().map(|m| m.source.as_str()).collect::<Vec<_>>())
    .bind::<Texts, _>(
        moves
            .iter()
            .map(|m| m.event_id.as_str())
            .collect::<Vec<_>>(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves the mark of (subject, aspect) to `occurred_at` (never back), naming the event that
/// moved it (`event`: its row and key; `None` for `PUT …/devices|users`).
pub async fn set_mark(
    conn: &mut AsyncPgConnection,
    space: &str,
    subject_kind: &str,
    subject_id: &str,
    aspect: &str,
    occurred_at: DateTime<Utc>,
    event: Option<(Uuid, &str, &str)>,
) -> QueryResult<()> {
    diesel::update(
        lifecycle_marks::table
            .filter(lifecycle_marks::space_id.eq(space))
            .filter(lifecycle_marks::subject_kind.eq(subject_kind))
            .filter(lifecycle_marks::subject_id.eq(subject_id))
            .filter(lifecycle_marks::aspect.eq(aspect))
            .filter(
                lifecycle_marks::occurred_at
                    .is_null()
                    .or(lifecycle_marks::occurred_at.le(occurred_at)),
            ),
    )
    .set((
        lifecycle_marks::occurred_at.eq(occurred_at),
        lifecycle_marks::event.eq(event.map(|e| e.0)),
        lifecycle_marks::event_source.eq(event.map(|e| e.1)),
        lifecycle_marks::event_key.eq(event.map(|e| e.2)),
    ))
    .execute(conn)
    .await?;
    Ok(())
}

/// One setting: the effect of a type of event in a space.
#[derive(Clone, Debug, Queryable)]
pub struct SettingRow {
    pub event_type: String,
    pub effect: String,
    pub grace_seconds: Option<i32>,
}

/// The space's settings (types left at their default have no row).
pub async fn settings(conn: &mut AsyncPgConnection, space: &str) -> QueryResult<Vec<SettingRow>> {
    lifecycle_settings::table
        .filter(lifecycle_settings::space_id.eq(space))
        .order(lifecycle_settings::event_type)
        .select((
            lifecycle_settings::event_type,
            lifecycle_settings::effect,
            lifecycle_settings::grace_seconds,
        ))
        .load(conn)
        .await
}

/// Replaces the space's settings with `rows`.
pub async fn replace_settings(
    conn: &mut AsyncPgConnection,
    space: &str,
    rows: &[SettingRow],
) -> QueryResult<()> {
    diesel::delete(lifecycle_settings::table.filter(lifecycle_settings::space_id.eq(space)))
        .execute(conn)
        .await?;
    let values: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                lifecycle_settings::space_id.eq(space),
                lifecycle_settings::event_type.eq(&r.event_type),
                lifecycle_settings::effect.eq(&r.effect),
                lifecycle_settings::grace_seconds.eq(r.grace_seconds),
            )
        })
        .collect();
    if !values.is_empty() {
        diesel::insert_into(lifecycle_settings::table)
            .values(values)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Forgets finished events received more than `days` ago (queued and scheduled ones stay
/// until applied). The marks stay, with the key of the event that set them: an older event
/// replayed after that is still judged stale, and so is a replay of the very event that set
/// the mark (V5).
pub async fn forget_older_than(conn: &mut AsyncPgConnection, days: i64) -> QueryResult<usize> {
    let cutoff = Utc::now() - chrono::Duration::days(days);
    diesel::delete(
        lifecycle_events::table
            .filter(lifecycle_events::received_at.lt(cutoff))
            .filter(lifecycle_events::state.ne_all(["queued", "scheduled"])),
    )
    .execute(conn)
    .await
}

/// Removes a deleted space's events, marks and settings.
pub async fn delete_space(conn: &mut AsyncPgConnection, space: &str) -> QueryResult<()> {
    diesel::delete(lifecycle_events::table.filter(lifecycle_events::space_id.eq(space)))
        .execute(conn)
        .await?;
    diesel::delete(lifecycle_marks::table.filter(lifecycle_marks::space_id.eq(space)))
        .execute(conn)
        .await?;
    diesel::delete(lifecycle_settings::table.filter(lifecycle_settings::space_id.eq(space)))
        .execute(conn)
        .await?;
    Ok(())
}
