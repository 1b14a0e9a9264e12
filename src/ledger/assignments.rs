//! Assignments: the ledger rows of licenses (life cycle in docs/rules.md).

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::assignments;
use crate::domain::model::AssignmentState;
use crate::domain::records::AssignmentRow;

const LIVE: [&str; 3] = ["pending", "associating", "active"];

pub async fn find(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
) -> QueryResult<Option<AssignmentRow>> {
    assignments::table
        .filter(assignments::space_id.eq(space))
        .filter(assignments::id.eq(id))
        .select(AssignmentRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// [`find`], locking the row for the rest of the transaction (the first lock of the ledger's
/// lock order, see [`lock_in_order`]).
pub async fn find_locked(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
) -> QueryResult<Option<AssignmentRow>> {
    assignments::table
        .filter(assignments::space_id.eq(space))
        .filter(assignments::id.eq(id))
        .select(AssignmentRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// The assignments `ids` of `space`, locked in id order (the first lock of the ledger's lock
/// order, see [`lock_in_order`]).
pub async fn find_many_locked(
    conn: &mut AsyncPgConnection,
    space: &str,
    ids: &[Uuid],
) -> QueryResult<Vec<AssignmentRow>> {
    assignments::table
        .filter(assignments::space_id.eq(space))
        .filter(assignments::id.eq_any(ids))
        .order(assignments::id)
        .select(AssignmentRow::as_select())
        .for_update()
        .load(conn)
        .await
}

pub async fn by_id(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<AssignmentRow>> {
    assignments::table
        .filter(assignments::id.eq(id))
        .select(AssignmentRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The assignments among `ids`, in id order.
pub async fn by_ids(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<AssignmentRow>> {
    assignments::table
        .filter(assignments::id.eq_any(ids))
        .order(assignments::id)
        .select(AssignmentRow::as_select())
        .load(conn)
        .await
}

/// The live assignment of `subject` for an asset in a space, if any.
pub async fn live_for(
    conn: &mut AsyncPgConnection,
    space: &str,
    adam_id: &str,
    pricing_param: &str,
    subject: Uuid,
) -> QueryResult<Option<AssignmentRow>> {
    assignments::table
        .filter(assignments::space_id.eq(space))
        .filter(assignments::adam_id.eq(adam_id))
        .filter(assignments::pricing_param.eq(pricing_param))
        .filter(assignments::subject_id.eq(subject))
        .filter(assignments::state.eq_any(LIVE))
        .select(AssignmentRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Filters of the assignment listing.
#[derive(Debug, Default)]
pub struct ListFilter {
    pub account: Option<Uuid>,
    pub adam_id: Option<String>,
    pub pricing_param: Option<String>,
    pub subject: Option<Uuid>,
    pub state: Option<AssignmentState>,
    pub live_only: bool,
}

/// A page of a space's assignments ordered by id (UUIDv7: creation order).
pub async fn list(
    conn: &mut AsyncPgConnection,
    space: &str,
    filter: &ListFilter,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<AssignmentRow>> {
    let mut q = assignments::table
        .filter(assignments::space_id.eq(space))
        .select(AssignmentRow::as_select())
        .order(assignments::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(a) = filter.account {
        q = q.filter(assignments::account_id.eq(a));
    }
    if let Some(a) = &filter.adam_id {
        q = q.filter(assignments::adam_id.eq(a.clone()));
    }
    if let Some(p) = &filter.pricing_param {
        q = q.filter(assignments::pricing_param.eq(p.clone()));
    }
    if let Some(s) = filter.subject {
        q = q.filter(assignments::subject_id.eq(s));
    }
    if let Some(s) = filter.state {
        q = q.filter(assignments::state.eq(s));
    }
    if filter.live_only {
        q = q.filter(assignments::state.eq_any(LIVE));
    }
    if let Some(after) = after {
        q = q.filter(assignments::id.gt(after));
    }
    q.load(conn).await
}

/// Live (license-holding) assignments of an account.
pub async fn count_live(conn: &mut AsyncPgConnection, account: Uuid) -> QueryResult<i64> {
    assignments::table
        .filter(assignments::account_id.eq(account))
        .filter(assignments::state.eq_any(["pending", "associating", "active"]))
        .count()
        .get_result(conn)
        .await
}

/// Assignments still holding or releasing a license at Apple (`associating`, `active`,
/// `revoking`).
pub async fn count_at_apple(conn: &mut AsyncPgConnection, account: Uuid) -> QueryResult<i64> {
    assignments::table
        .filter(assignments::account_id.eq(account))
        .filter(assignments::state.eq_any(["associating", "active", "revoking"]))
        .count()
        .get_result(conn)
        .await
}

/// Locks assignment rows in id order for the rest of the transaction.
///
/// Lock order, shared by every transaction that changes existing assignments (revocation, the
/// dispatcher's bookkeeping, re-allocation): assignment rows in id order first, then asset rows
/// in `(account, adam_id, pricing_param)` order, the order allocation batches lock them in.
/// Transactions that take locks in one order never wait for each other in a cycle.
pub async fn lock_in_order(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    assignments::table
        .filter(assignments::id.eq_any(ids))
        .order(assignments::id)
        .select(assignments::id)
        .for_update()
        .load::<Uuid>(conn)
        .await
        .map(|_| ())
}
