//! Apple events: the asynchronous requests Apple accepted for an account (associations,
//! releases, user registrations), followed until they finish (rule T10).

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::apple_events;

crate::text_enum! {
    /// What an Apple event does (the `kind` column).
    pub enum EventKind {
        Associate = "associate",
        Disassociate = "disassociate",
        CreateUsers = "create_users",
    }
}

#[derive(Clone, Debug, Queryable)]
pub struct EventRow {
    pub event_id: String,
    pub account_id: Uuid,
    pub kind: EventKind,
    pub adam_id: Option<String>,
    pub pricing_param: Option<String>,
}

/// An event Apple just accepted for `account`, carrying `requested` assignments.
#[derive(Clone, Debug)]
pub struct NewEvent<'a> {
    pub event_id: &'a str,
    pub account_id: Uuid,
    pub kind: EventKind,
    pub adam_id: Option<&'a str>,
    pub pricing_param: Option<&'a str>,
    pub requested: i32,
}

/// Records an accepted event (once: recording it again changes nothing).
pub async fn record(conn: &mut AsyncPgConnection, event: &NewEvent<'_>) -> QueryResult<()> {
    diesel::insert_into(apple_events::table)
        .values((
            apple_events::event_id.eq(event.event_id),
            apple_events::account_id.eq(event.account_id),
            apple_events::kind.eq(event.kind),
            apple_events::adam_id.eq(event.adam_id),
            apple_events::pricing_param.eq(event.pricing_param),
            apple_events::requested.eq(event.requested),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await
        .map(|_| ())
}

/// The event `event_id` of `account` (an event id another account submitted is not found: a
/// notification authenticated for one account never settles another's assignments).
pub async fn find(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    event_id: &str,
) -> QueryResult<Option<EventRow>> {
    apple_events::table
        .filter(apple_events::event_id.eq(event_id))
        .filter(apple_events::account_id.eq(account))
        .select((
            apple_events::event_id,
            apple_events::account_id,
            apple_events::kind,
            apple_events::adam_id,
            apple_events::pricing_param,
        ))
        .first(conn)
        .await
        .optional()
}

/// Counts one more status poll of the event; returns how many it had.
pub async fn count_poll(conn: &mut AsyncPgConnection, event_id: &str) -> QueryResult<i32> {
    diesel::update(apple_events::table.filter(apple_events::event_id.eq(event_id)))
        .set(apple_events::polls.eq(apple_events::polls + 1))
        .returning(apple_events::polls)
        .get_result(conn)
        .await
}

/// Keeps the failures Apple reported for the finished event (by target).
pub async fn record_failures(
    conn: &mut AsyncPgConnection,
    event_id: &str,
    failures: &serde_json::Value,
) -> QueryResult<()> {
    diesel::update(apple_events::table.filter(apple_events::event_id.eq(event_id)))
        .set(apple_events::failures.eq(Some(failures)))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Marks a pending event finished: `failed` when any of its assignments failed, else
/// `complete`.
pub async fn close(conn: &mut AsyncPgConnection, event_id: &str) -> QueryResult<()> {
    diesel::sql_query(
        "UPDATE apple_events SET finished_at = now(),
                status = CASE WHEN EXISTS (SELECT 1 FROM assignments
                                            WHERE apple_event_id = $1 AND state = 'failed')
                              THEN 'failed' ELSE 'complete' END
          WHERE event_id = $1 AND status = 'pending'",
    )
    .bind::<diesel::sql_types::Text, _>(event_id)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Marks an event failed (Apple no longer knows it).
pub async fn mark_failed(conn: &mut AsyncPgConnection, event_id: &str) -> QueryResult<()> {
    diesel::sql_query(
        "UPDATE apple_events SET status = 'failed', finished_at = now() WHERE event_id = $1",
    )
    .bind::<diesel::sql_types::Text, _>(event_id)
    .execute(conn)
    .await
    .map(|_| ())
}
