//! Spaces: the partitions every other record belongs to.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::schema::spaces;

#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = spaces)]
pub struct SpaceRow {
    pub id: String,
    pub name: String,
    pub description: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Insertable)]
#[diesel(table_name = spaces)]
pub struct NewSpace<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub description: &'a str,
}

#[derive(AsChangeset, Default)]
#[diesel(table_name = spaces)]
pub struct SpaceChanges<'a> {
    pub name: Option<&'a str>,
    pub description: Option<&'a str>,
}

pub async fn insert(conn: &mut AsyncPgConnection, new: NewSpace<'_>) -> QueryResult<SpaceRow> {
    diesel::insert_into(spaces::table)
        .values(new)
        .returning(SpaceRow::as_returning())
        .get_result(conn)
        .await
}

pub async fn find(conn: &mut AsyncPgConnection, id: &str) -> QueryResult<Option<SpaceRow>> {
    spaces::table
        .find(id)
        .select(SpaceRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// A page of spaces ordered by id, after `after`, restricted to `only` when given.
pub async fn list(
    conn: &mut AsyncPgConnection,
    only: Option<&[String]>,
    after: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<SpaceRow>> {
    let mut query = spaces::table
        .select(SpaceRow::as_select())
        .order(spaces::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(only) = only {
        query = query.filter(spaces::id.eq_any(only));
    }
    if let Some(after) = after {
        query = query.filter(spaces::id.gt(after));
    }
    query.load(conn).await
}

/// Applies `changes` if the current version is one of `versions` (any version when `None`).
/// `Ok(None)` means no row matched: missing, or a version mismatch (the caller tells which).
pub async fn update(
    conn: &mut AsyncPgConnection,
    id: &str,
    versions: Option<&[i64]>,
    changes: SpaceChanges<'_>,
) -> QueryResult<Option<SpaceRow>> {
    let target = spaces::table.filter(spaces::id.eq(id));
    let set = (
        changes,
        spaces::version.eq(spaces::version + 1),
        spaces::updated_at.eq(diesel::dsl::now),
    );
    match versions {
        Some(v) => diesel::update(target.filter(spaces::version.eq_any(v)))
            .set(set)
            .returning(SpaceRow::as_returning())
            .get_result(conn)
            .await
            .optional(),
        None => diesel::update(target)
            .set(set)
            .returning(SpaceRow::as_returning())
            .get_result(conn)
            .await
            .optional(),
    }
}

/// Deletes the space if its version is one of `versions` (any when `None`). Foreign keys refuse
/// the delete while accounts, subjects or policies still belong to it.
/// Locks the space row against every change, allocations included (they key-share it), for a
/// transaction that deletes it. `None` if it does not exist.
pub async fn lock_for_delete(conn: &mut AsyncPgConnection, id: &str) -> QueryResult<Option<i64>> {
    spaces::table
        .filter(spaces::id.eq(id))
        .select(spaces::version)
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// How many token accounts the space has.
pub async fn account_count(conn: &mut AsyncPgConnection, id: &str) -> QueryResult<i64> {
    use crate::db::schema::accounts;
    accounts::table
        .filter(accounts::space_id.eq(id))
        .count()
        .get_result(conn)
        .await
}

/// Removes what exists only for a space without accounts: its distribution policies, its
/// assignments (with no account left, all finished: the history of its accounts, which outlives
/// each account but not the space an administrator deletes on purpose; the activity log keeps
/// the record), the subjects callers described, the idempotency keys and the lifecycle events, marks and
/// settings; its webhook endpoints are stamped deleted (their delivery log stays).
pub async fn delete_contents(conn: &mut AsyncPgConnection, id: &str) -> QueryResult<()> {
    use crate::db::schema::{assignments, distribution_policies, idempotency_keys, subjects};
    diesel::delete(assignments::table.filter(assignments::space_id.eq(id)))
        .execute(conn)
        .await?;
    diesel::delete(distribution_policies::table.filter(distribution_policies::space_id.eq(id)))
        .execute(conn)
        .await?;
    diesel::delete(subjects::table.filter(subjects::space_id.eq(id)))
        .execute(conn)
        .await?;
    diesel::delete(idempotency_keys::table.filter(idempotency_keys::space_id.eq(id)))
        .execute(conn)
        .await?;
    super::lifecycle::delete_space(conn, id).await?;
    super::bulk_operations::delete_space(conn, id).await?;
    super::webhooks::delete_space(conn, id).await?;
    Ok(())
}

pub async fn delete(
    conn: &mut AsyncPgConnection,
    id: &str,
    versions: Option<&[i64]>,
) -> QueryResult<usize> {
    let target = spaces::table.filter(spaces::id.eq(id));
    match versions {
        Some(v) => {
            diesel::delete(target.filter(spaces::version.eq_any(v)))
                .execute(conn)
                .await
        }
        None => diesel::delete(target).execute(conn).await,
    }
}
