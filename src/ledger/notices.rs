//! The notifications' store (issue 15, rules N1, N2; `crate::notices`): the facts an
//! evaluation reads, the open notifications, raising and clearing them, and the API's reads.
//!
//! Raising inserts with `ON CONFLICT DO NOTHING` against the partial unique index
//! `notifications_open_key (space_id, key) WHERE cleared_at IS NULL`, and clearing updates only
//! rows still open: two replicas evaluating at once raise and clear each notification once (the
//! rows each statement returns are the ones that replica changed, and only those get an
//! activity row).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::{accounts, notifications};
use crate::domain::account_status::{AccountStatus, StatusState};
use crate::domain::notices::{
    ClearReason, NoticeKind, NoticeScope, Open, Raise, Severity, Target, Token, Usage,
};

/// The advisory lock one evaluation holds (per transaction): other replicas skip their turn.
const EVALUATION_LOCK: i64 = 0x7670_706e_6f74_6963;

/// One notification as stored.
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = notifications)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct NoticeRow {
    pub id: Uuid,
    pub space_id: String,
    pub key: String,
    pub kind: NoticeKind,
    pub severity: Severity,
    pub scope: NoticeScope,
    pub account_id: Option<Uuid>,
    pub adam_id: Option<String>,
    pub pricing_param: Option<String>,
    pub level: Option<i32>,
    pub message: String,
    pub action: String,
    pub details: serde_json::Value,
    pub raised_at: DateTime<Utc>,
    pub cleared_at: Option<DateTime<Utc>>,
    pub cleared_reason: Option<ClearReason>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
}

impl NoticeRow {
    /// The row a raise inserts.
    pub fn raised(raise: &Raise, now: DateTime<Utc>) -> NoticeRow {
        let (account_id, adam_id, pricing_param) = match &raise.target {
            Target::Asset {
                adam_id,
                pricing_param,
            } => (None, Some(adam_id.clone()), Some(pricing_param.clone())),
            Target::Account(id) => (Some(*id), None, None),
            Target::Space => (None, None, None),
        };
        NoticeRow {
            id: Uuid::now_v7(),
            space_id: raise.space.clone(),
            key: raise.key.clone(),
            kind: raise.kind,
            severity: raise.severity,
            scope: raise.target.scope(),
            account_id,
            adam_id,
            pricing_param,
            level: raise.level,
            message: raise.message.clone(),
            action: raise.action.clone(),
            details: raise.details.clone(),
            raised_at: now,
            cleared_at: None,
            cleared_reason: None,
            acknowledged_at: None,
            acknowledged_by: None,
        }
    }
}

/// Takes the evaluation's lock for this transaction, unless another replica holds it.
pub async fn try_lock(conn: &mut AsyncPgConnection) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Locked {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        locked: bool,
    }
    let row: Locked = diesel::sql_query("SELECT pg_try_advisory_xact_lock($1) AS locked")
        .bind::<BigInt, _>(EVALUATION_LOCK)
        .get_result(conn)
        .await?;
    Ok(row.locked)
}

#[derive(QueryableByName)]
struct UsageRow {
    #[diesel(sql_type = Text)]
    space: String,
    #[diesel(sql_type = Nullable<diesel::sql_types::Uuid>)]
    account_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<Text>)]
    account_name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    adam_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pricing_param: Option<String>,
    #[diesel(sql_type = BigInt)]
    total: i64,
    #[diesel(sql_type = BigInt)]
    held: i64,
    #[diesel(sql_type = BigInt)]
    elsewhere: i64,
    #[diesel(sql_type = BigInt)]
    available: i64,
}

/// License usage of every asset (over the space's accounts), every account and every space
/// that has an account, in one aggregate over the asset rows. Accounts being deleted and assets
/// Apple no longer lists are left out (their notifications clear as gone).
pub async fn usage(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Usage>> {
    let rows: Vec<UsageRow> = diesel::sql_query(
        "SELECT a.space_id AS space,
                CASE WHEN GROUPING(a.id) = 0 THEN a.id END AS account_id,
                CASE WHEN GROUPING(a.id) = 0 THEN min(a.name) END AS account_name,
                CASE WHEN GROUPING(s.adam_id) = 0 THEN s.adam_id END AS adam_id,
                CASE WHEN GROUPING(s.pricing_param) = 0 THEN s.pricing_param END AS pricing_param,
                COALESCE(SUM(s.apple_total), 0)::bigint AS total,
                COALESCE(SUM(s.held), 0)::bigint AS held,
                COALESCE(SUM(s.foreign_assigned), 0)::bigint AS elsewhere,
                COALESCE(SUM(GREATEST(0, s.apple_total - s.foreign_assigned - s.held)), 0)::bigint
                    AS available
           FROM assets s
           JOIN accounts a ON a.id = s.account_id
          WHERE a.delete_requested_at IS NULL AND s.vanished_at IS NULL
          GROUP BY GROUPING SETS ((a.space_id, s.adam_id, s.pricing_param), (a.space_id, a.id),
                                  (a.space_id))",
    )
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let target = match (r.account_id, r.adam_id, r.pricing_param) {
                (Some(id), _, _) => Target::Account(id),
                (None, Some(adam_id), Some(pricing_param)) => Target::Asset {
                    adam_id,
                    pricing_param,
                },
                _ => Target::Space,
            };
            Usage {
                space: r.space,
                target,
                name: r.account_name,
                total: r.total,
                held: r.held,
                elsewhere: r.elsewhere,
                available: r.available,
            }
        })
        .collect())
}

/// Every account's token facts (accounts being deleted left out).
pub async fn tokens(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Token>> {
    type Row = (
        Uuid,
        String,
        String,
        AccountStatus,
        String,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        DateTime<Utc>,
    );
    let rows: Vec<Row> = accounts::table
        .filter(accounts::delete_requested_at.is_null())
        .select((
            accounts::id,
            accounts::space_id,
            accounts::name,
            accounts::status,
            accounts::status_reason,
            accounts::status_changed_at,
            accounts::throttled_until,
            accounts::token_expires_at,
            accounts::last_full_sync_at,
            accounts::last_incremental_sync_at,
            accounts::updated_at,
        ))
        .load(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(
            |(
                id,
                space,
                name,
                status,
                reason,
                changed,
                throttled,
                expires,
                full,
                incr,
                updated,
            )| {
                Token {
                    space,
                    account_id: id,
                    name,
                    status: StatusState {
                        status,
                        reason,
                        throttled_until: throttled,
                    },
                    status_changed_at: changed,
                    expires_at: expires,
                    last_synced_at: full.max(incr),
                    changed_at: updated,
                }
            },
        )
        .collect())
}

/// Every open notification.
pub async fn open(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Open>> {
    let rows: Vec<(Uuid, String, String, NoticeKind)> = notifications::table
        .filter(notifications::cleared_at.is_null())
        .select((
            notifications::id,
            notifications::space_id,
            notifications::key,
            notifications::kind,
        ))
        .load(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, space, key, kind)| Open {
            id,
            space,
            key,
            kind,
        })
        .collect())
}

/// Inserts the raised notifications; returns those this call inserted (a condition another
/// replica raised at the same moment is left out).
pub async fn insert(
    conn: &mut AsyncPgConnection,
    rows: &[NoticeRow],
) -> QueryResult<Vec<NoticeRow>> {
    let mut inserted = Vec::new();
    // 18 parameters a row: stay well under PostgreSQL's 65,535 per statement.
    for chunk in rows.chunks(2000) {
        let mut some: Vec<NoticeRow> = diesel::insert_into(notifications::table)
            .values(chunk)
            .on_conflict_do_nothing()
            .returning(NoticeRow::as_returning())
            .get_results(conn)
            .await?;
        inserted.append(&mut some);
    }
    Ok(inserted)
}

/// Clears the notifications still open among `ids` with `reason`; returns those it cleared.
pub async fn clear(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    reason: ClearReason,
    now: DateTime<Utc>,
) -> QueryResult<Vec<NoticeRow>> {
    diesel::update(
        notifications::table
            .filter(notifications::id.eq_any(ids))
            .filter(notifications::cleared_at.is_null()),
    )
    .set((
        notifications::cleared_at.eq(now),
        notifications::cleared_reason.eq(reason),
    ))
    .returning(NoticeRow::as_returning())
    .get_results(conn)
    .await
}

/// What the list shows.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// `Some(true)`: open only; `Some(false)`: cleared only.
    pub open: Option<bool>,
    pub acknowledged: Option<bool>,
    pub kinds: Vec<NoticeKind>,
    pub severities: Vec<Severity>,
    pub account_id: Option<Uuid>,
}

/// A page of the space's notifications, newest first, after `before` (an id) when given.
pub async fn list(
    conn: &mut AsyncPgConnection,
    space: &str,
    filter: &ListFilter,
    before: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<NoticeRow>> {
    let mut q = notifications::table
        .filter(notifications::space_id.eq(space))
        .select(NoticeRow::as_select())
        .order(notifications::id.desc())
        .limit(limit)
        .into_boxed();
    if let Some(before) = before {
        q = q.filter(notifications::id.lt(before));
    }
    match filter.open {
        Some(true) => q = q.filter(notifications::cleared_at.is_null()),
        Some(false) => q = q.filter(notifications::cleared_at.is_not_null()),
        None => {}
    }
    match filter.acknowledged {
        Some(true) => q = q.filter(notifications::acknowledged_at.is_not_null()),
        Some(false) => q = q.filter(notifications::acknowledged_at.is_null()),
        None => {}
    }
    if !filter.kinds.is_empty() {
        q = q.filter(notifications::kind.eq_any(filter.kinds.clone()));
    }
    if !filter.severities.is_empty() {
        q = q.filter(notifications::severity.eq_any(filter.severities.clone()));
    }
    if let Some(account) = filter.account_id {
        q = q.filter(notifications::account_id.eq(account));
    }
    q.load(conn).await
}

/// One notification of the space.
pub async fn get(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
) -> QueryResult<Option<NoticeRow>> {
    notifications::table
        .filter(notifications::space_id.eq(space))
        .filter(notifications::id.eq(id))
        .select(NoticeRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Marks a notification acknowledged by `actor` unless it already is; returns it as it is now
/// and whether this call acknowledged it.
pub async fn acknowledge(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
    actor: &str,
    now: DateTime<Utc>,
) -> QueryResult<Option<(NoticeRow, bool)>> {
    let changed: Option<NoticeRow> = diesel::update(
        notifications::table
            .filter(notifications::space_id.eq(space))
            .filter(notifications::id.eq(id))
            .filter(notifications::acknowledged_at.is_null()),
    )
    .set((
        notifications::acknowledged_at.eq(now),
        notifications::acknowledged_by.eq(actor),
    ))
    .returning(NoticeRow::as_returning())
    .get_result(conn)
    .await
    .optional()?;
    match changed {
        Some(row) => Ok(Some((row, true))),
        None => Ok(get(conn, space, id).await?.map(|row| (row, false))),
    }
}
