//! The events table (issue 15, rule N5): the one source of the pollable feed and of the
//! webhook deliveries. Each event belongs to one space and carries a `sequence` that strictly
//! increases per space, given out by [`append`] from `event_sequences`.
//!
//! [`append`] locks the space's counter row until its transaction ends, so it is meant for a
//! single writer per space that appends in batches, off the allocation path (the hot path must
//! not queue behind one counter row per space). Events are kept for the delivery window
//! (30 days) and then forgotten; the activity log is the permanent history.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::{event_sequences, events};

/// The envelope's `api_version` of every event written today.
pub const API_VERSION: &str = "2026-12-07";

/// An event to append; its sequence is given out by [`append`].
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub space_id: String,
    pub id: Uuid,
    pub type_: String,
    pub occurred_at: DateTime<Utc>,
    /// The activity row it was made from, if any.
    pub activity_id: Option<i64>,
    pub data: serde_json::Value,
}

/// One stored event.
#[derive(Clone, Debug, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = events)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct EventRow {
    pub space_id: String,
    pub sequence: i64,
    pub id: Uuid,
    pub type_: String,
    pub api_version: String,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub activity_id: Option<i64>,
    pub data: serde_json::Value,
}

/// Rows per INSERT statement (9 parameters each, under PostgreSQL's 65,535).
const INSERT_CHUNK: usize = 5_000;

/// Appends `new` in its order, numbering each space's events after the last one given out
/// for that space; returns the stored rows in the order given. Call it inside a transaction:
/// the numbers and the rows commit together.
pub async fn append(
    conn: &mut AsyncPgConnection,
    new: Vec<NewEvent>,
) -> QueryResult<Vec<EventRow>> {
    let now = Utc::now();
    // Spaces in key order (one lock order for every writer), each space's events in the
    // order given.
    let mut by_space: BTreeMap<String, Vec<(usize, NewEvent)>> = BTreeMap::new();
    for (index, event) in new.into_iter().enumerate() {
        by_space
            .entry(event.space_id.clone())
            .or_default()
            .push((index, event));
    }
    let mut stored: Vec<(usize, EventRow)> = Vec::new();
    for (space, batch) in by_space {
        let count = batch.len() as i64;
        let last: i64 = diesel::insert_into(event_sequences::table)
            .values((
                event_sequences::space_id.eq(&space),
                event_sequences::last.eq(count),
            ))
            .on_conflict(event_sequences::space_id)
            .do_update()
            .set(event_sequences::last.eq(event_sequences::last + count))
            .returning(event_sequences::last)
            .get_result(conn)
            .await?;
        let first = last - count + 1;
        let rows: Vec<(usize, EventRow)> = batch
            .into_iter()
            .enumerate()
            .map(|(offset, (index, event))| {
                (
                    index,
                    EventRow {
                        space_id: space.clone(),
                        sequence: first + offset as i64,
                        id: event.id,
                        type_: event.type_,
                        api_version: API_VERSION.to_owned(),
                        occurred_at: event.occurred_at,
                        recorded_at: now,
                        activity_id: event.activity_id,
                        data: event.data,
                    },
                )
            })
            .collect();
        for chunk in rows.chunks(INSERT_CHUNK) {
            let values: Vec<&EventRow> = chunk.iter().map(|(_, row)| row).collect();
            diesel::insert_into(events::table)
                .values(values)
                .execute(conn)
                .await?;
        }
        stored.extend(rows);
    }
    stored.sort_by_key(|(index, _)| *index);
    Ok(stored.into_iter().map(|(_, row)| row).collect())
}

/// The space's events after `after` (a sequence number; 0 for the oldest kept), oldest first,
/// at most `limit`, optionally only of the given types.
pub async fn after(
    conn: &mut AsyncPgConnection,
    space: &str,
    after: i64,
    types: Option<&[String]>,
    limit: i64,
) -> QueryResult<Vec<EventRow>> {
    let mut query = events::table
        .filter(events::space_id.eq(space))
        .filter(events::sequence.gt(after))
        .order(events::sequence.asc())
        .limit(limit)
        .select(EventRow::as_select())
        .into_boxed();
    if let Some(types) = types {
        query = query.filter(events::type_.eq_any(types));
    }
    query.load(conn).await
}

/// The oldest sequence number the space still keeps, if it has any event.
pub async fn oldest_kept(conn: &mut AsyncPgConnection, space: &str) -> QueryResult<Option<i64>> {
    events::table
        .filter(events::space_id.eq(space))
        .select(diesel::dsl::min(events::sequence))
        .get_result(conn)
        .await
}

/// The last sequence number given out for the space (0 before its first event). Every event
/// up to it is visible to any statement that starts after this one: the numbers and the rows
/// commit together.
pub async fn last_given(conn: &mut AsyncPgConnection, space: &str) -> QueryResult<i64> {
    Ok(event_sequences::table
        .filter(event_sequences::space_id.eq(space))
        .select(event_sequences::last)
        .first::<i64>(conn)
        .await
        .optional()?
        .unwrap_or(0))
}

/// [`after`] bounded above: events with `after < sequence <= upto`.
pub async fn between(
    conn: &mut AsyncPgConnection,
    space: &str,
    after: i64,
    upto: i64,
    types: Option<&[String]>,
    limit: i64,
) -> QueryResult<Vec<EventRow>> {
    let mut query = events::table
        .filter(events::space_id.eq(space))
        .filter(events::sequence.gt(after))
        .filter(events::sequence.le(upto))
        .order(events::sequence.asc())
        .limit(limit)
        .select(EventRow::as_select())
        .into_boxed();
    if let Some(types) = types {
        query = query.filter(events::type_.eq_any(types));
    }
    query.load(conn).await
}

/// Retention: forgets the events recorded before `cutoff`, and in each space every event
/// numbered below one of those (so a space's kept events stay one unbroken run up to its end,
/// and a reader's cursor is either in that run or answered 410). Returns how many.
pub async fn forget_recorded_before(
    conn: &mut AsyncPgConnection,
    cutoff: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM events e
          USING (SELECT space_id, max(sequence) AS upto FROM events
                  WHERE recorded_at < $1 GROUP BY space_id) old
          WHERE e.space_id = old.space_id AND e.sequence <= old.upto",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(cutoff)
    .execute(conn)
    .await
}
