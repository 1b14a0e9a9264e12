//! The statements of lifecycle events ([`crate::lifecycle`]): the events as received
//! (`lifecycle_events`, unique per space, source and id), the newest applied time per subject
//! and aspect (`lifecycle_marks`), and each space's effect per type (`lifecycle_settings`).
//!
//! The worker claims one due event at a time with `FOR UPDATE SKIP LOCKED` inside the
//! transaction that applies it: the row stays locked until the effects and the event's new
//! state commit together, so replicas never apply an event twice, and a process killed mid-way
//! leaves the event `queued` (its transaction rolled back) for the next claim.

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
