//! The activity log read as the events' outbox (issue 15, rule N5; docs/events.md): the
//! sequencer's statements. Every activity row carries `txid`, the top-level transaction that
//! wrote it (a column default, `pg_current_xact_id()`), so nothing on the write paths changes.
//!
//! [`finished_after`] reads rows after the watermark `(txid, id)` in that order, **only of
//! transactions that have finished** (`txid < pg_snapshot_xmin(pg_current_snapshot())`, in the
//! statement that reads them, so the rows it sees and the snapshot's horizon agree). Every
//! transaction that could still add a row below that horizon has ended, and every later
//! transaction gets a greater xid: a row read after the watermark can never be followed by a
//! row that sorts before it. A transaction still running (and any younger one) waits for a
//! later round. Rows written before the outbox existed have no `txid` and are never read.
//!
//! One sequencer at a time across replicas: [`try_lock`] takes a transaction-scoped advisory
//! lock (not a row lock: a row lock would give the sequencer's transaction an xid before its
//! read, holding its own read's horizon back by one round).

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::sql_types::{BigInt, Bool, Text};
use diesel::{QueryableByName, prelude::*};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::activity_log;

/// The advisory lock key of the sequencer ("vppevent" in ASCII).
pub const SEQUENCER_LOCK: i64 = 0x7670_7065_7665_6e74;

/// The channel readers of the feed (and the webhook worker) listen on; the payload is a space.
pub const CHANNEL: &str = "vpp_events";

/// The channel of activity hints (no payload): a process that runs no sequencer says that it
/// committed activity rows (`events::wake::spawn_relay`); every sequencer listens.
pub const ACTIVITY_CHANNEL: &str = "vpp_activity";

/// The sequencer's position: every activity row at or before `(txid, activity_id)` was seen.
#[derive(Clone, Debug, PartialEq, Eq, QueryableByName)]
pub struct Watermark {
    /// The xid8, as text (diesel has no xid8 type; PostgreSQL casts it back).
    #[diesel(sql_type = Text)]
    pub txid: String,
    #[diesel(sql_type = BigInt)]
    pub activity_id: i64,
}

/// One activity row, as the sequencer reads it.
#[derive(Clone, Debug, QueryableByName)]
#[diesel(table_name = activity_log, check_for_backend(Pg))]
pub struct OutboxRow {
    pub id: i64,
    pub occurred_at: DateTime<Utc>,
    pub space_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub account_id: Option<Uuid>,
    pub assignment_id: Option<Uuid>,
    pub subject: Option<String>,
    pub adam_id: Option<String>,
    pub pricing_param: Option<String>,
    pub rule: Option<String>,
    pub apple_event_id: Option<String>,
    pub request_id: Option<String>,
    pub details: serde_json::Value,
    pub version: Option<i64>,
    #[diesel(sql_type = Text)]
    pub txid: String,
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

/// Takes the sequencer's lock for the rest of the transaction; false when another holds it.
pub async fn try_lock(conn: &mut AsyncPgConnection) -> QueryResult<bool> {
    let row: Locked = diesel::sql_query("SELECT pg_try_advisory_xact_lock($1) AS locked")
        .bind::<BigInt, _>(SEQUENCER_LOCK)
        .get_result(conn)
        .await?;
    Ok(row.locked)
}

/// The watermark (call under the lock).
pub async fn watermark(conn: &mut AsyncPgConnection) -> QueryResult<Watermark> {
    diesel::sql_query("SELECT txid::text AS txid, activity_id FROM event_watermark")
        .get_result(conn)
        .await
}

/// Moves the watermark (call under the lock, in the transaction that appends the events).
pub async fn advance(conn: &mut AsyncPgConnection, to: &Watermark) -> QueryResult<()> {
    diesel::sql_query(
        "UPDATE event_watermark SET txid = $1::xid8, activity_id = $2, updated_at = now()",
    )
    .bind::<Text, _>(&to.txid)
    .bind::<BigInt, _>(to.activity_id)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Up to `limit` rows after `after`, of finished transactions only, in `(txid, id)` order.
pub async fn finished_after(
    conn: &mut AsyncPgConnection,
    after: &Watermark,
    limit: i64,
) -> QueryResult<Vec<OutboxRow>> {
    // `txid >= $1` lets the planner use the partial index `activity_by_txid` (txid NOT NULL)
    // and bounds the walk; the row comparison then skips what the watermark already passed.
    diesel::sql_query(
        "SELECT id, occurred_at, space_id, actor, action, account_id, assignment_id, subject,
                adam_id, pricing_param, rule, apple_event_id, request_id, details, version,
                txid::text AS txid
           FROM activity_log
          WHERE txid >= $1::xid8 AND (txid, id) > ($1::xid8, $2)
            AND txid < pg_snapshot_xmin(pg_current_snapshot())
          -- Qualified: the output column `txid` is the text (whose order is not the xid's).
          ORDER BY activity_log.txid, activity_log.id
          LIMIT $3",
    )
    .bind::<Text, _>(&after.txid)
    .bind::<BigInt, _>(after.activity_id)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// Sends an activity hint to the sequencers (its own statement: never call it in a writer's
/// transaction, whose commit it would serialize with every other notifying transaction).
pub async fn notify_activity(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_notify($1, '')")
        .bind::<Text, _>(ACTIVITY_CHANNEL)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Whether rows after the watermark are already committed but not yet readable: an older
/// transaction (of any database of the cluster) is still running and holds the snapshot's
/// `xmin` below them. The sequencer then keeps looking often, since the end of that
/// transaction is no hint.
pub async fn held_back(conn: &mut AsyncPgConnection, after: &Watermark) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Exists {
        #[diesel(sql_type = Bool)]
        held: bool,
    }
    // Not `EXISTS (…)`: for an EXISTS the planner expects a match within the first few rows
    // of a sequential scan, but the rows after the watermark are the newest, at the end of the
    // heap, so it read the whole log (86 ms at 37,000 rows, growing with the log, every 30 ms
    // while rows are held back). The first row in index order is one index probe.
    let row: Exists = diesel::sql_query(
        "SELECT (SELECT id FROM activity_log
                  WHERE txid >= $1::xid8 AND (txid, id) > ($1::xid8, $2)
                  ORDER BY txid, id LIMIT 1) IS NOT NULL AS held",
    )
    .bind::<Text, _>(&after.txid)
    .bind::<BigInt, _>(after.activity_id)
    .get_result(conn)
    .await?;
    Ok(row.held)
}

/// Wakes the feed's long polls (and the webhook worker) of `spaces` when the transaction
/// commits.
pub async fn notify(conn: &mut AsyncPgConnection, spaces: &[&str]) -> QueryResult<()> {
    for space in spaces {
        diesel::sql_query("SELECT pg_notify($1, $2)")
            .bind::<Text, _>(CHANNEL)
            .bind::<Text, _>(*space)
            .execute(conn)
            .await?;
    }
    Ok(())
}
