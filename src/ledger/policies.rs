//! Distribution policies per space and asset: reserved subjects, first-come-first-served
//! groups, disallowed subjects.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::{distribution_policies as policies, policy_entries as entries};
use crate::domain::records::EntryRow;

#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = policies)]
pub struct PolicyRow {
    pub id: Uuid,
    pub space_id: String,
    pub adam_id: String,
    pub pricing_param: String,
    pub version: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// A12: an allocation that does not say `wait_for_license` waits when none is left.
    pub wait_for_license: bool,
}

pub async fn find(
    conn: &mut AsyncPgConnection,
    space: &str,
    adam_id: &str,
    pricing_param: &str,
) -> QueryResult<Option<PolicyRow>> {
    find_with(conn, space, adam_id, pricing_param, false).await
}

/// [`find`], locking the row for the rest of the transaction (an `If-Match` check and the
/// change it guards then see the same version).
pub async fn find_locked(
    conn: &mut AsyncPgConnection,
    space: &str,
    adam_id: &str,
    pricing_param: &str,
) -> QueryResult<Option<PolicyRow>> {
    find_with(conn, space, adam_id, pricing_param, true).await
}

async fn find_with(
    conn: &mut AsyncPgConnection,
    space: &str,
    adam_id: &str,
    pricing_param: &str,
    lock: bool,
) -> QueryResult<Option<PolicyRow>> {
    let query = policies::table
        .filter(policies::space_id.eq(space))
        .filter(policies::adam_id.eq(adam_id))
        .filter(policies::pricing_param.eq(pricing_param))
        .select(PolicyRow::as_select());
    if lock {
        query.for_update().first(conn).await.optional()
    } else {
        query.first(conn).await.optional()
    }
}

pub async fn list(conn: &mut AsyncPgConnection, space: &str) -> QueryResult<Vec<PolicyRow>> {
    policies::table
        .filter(policies::space_id.eq(space))
        .order((policies::adam_id, policies::pricing_param))
        .select(PolicyRow::as_select())
        .load(conn)
        .await
}

/// One page of a space's policies by asset, after the asset `after` (adam id, pricing).
pub async fn page(
    conn: &mut AsyncPgConnection,
    space: &str,
    after: Option<(String, String)>,
    limit: i64,
) -> QueryResult<Vec<PolicyRow>> {
    let mut query = policies::table
        .filter(policies::space_id.eq(space))
        .order((policies::adam_id, policies::pricing_param))
        .limit(limit)
        .select(PolicyRow::as_select())
        .into_boxed();
    if let Some((adam_id, pricing)) = after {
        query = query.filter(
            policies::adam_id.gt(adam_id.clone()).or(policies::adam_id
                .eq(adam_id)
                .and(policies::pricing_param.gt(pricing))),
        );
    }
    query.load(conn).await
}

pub async fn entries_of(
    conn: &mut AsyncPgConnection,
    policies_: &[Uuid],
) -> QueryResult<Vec<EntryRow>> {
    entries::table
        .filter(entries::policy_id.eq_any(policies_))
        .order((
            entries::policy_id,
            entries::mode,
            entries::target_kind,
            entries::target,
        ))
        .select(EntryRow::as_select())
        .load(conn)
        .await
}

/// The entries of the policy of (space, asset), if there is one: one query.
pub async fn entries_for_asset(
    conn: &mut AsyncPgConnection,
    space: &str,
    adam_id: &str,
    pricing_param: &str,
) -> QueryResult<Vec<EntryRow>> {
    entries::table
        .inner_join(policies::table)
        .filter(policies::space_id.eq(space))
        .filter(policies::adam_id.eq(adam_id))
        .filter(policies::pricing_param.eq(pricing_param))
        .select(EntryRow::as_select())
        .load(conn)
        .await
}

/// Creates or replaces the policy of (space, asset) with `new_entries` and its
/// `wait_for_license` setting; returns the policy.
pub async fn replace(
    conn: &mut AsyncPgConnection,
    space: &str,
    adam_id: &str,
    pricing_param: &str,
    new_entries: &[EntryRow],
    wait_for_license: bool,
    id: Uuid,
) -> QueryResult<PolicyRow> {
    let policy: PolicyRow = diesel::insert_into(policies::table)
        .values((
            policies::id.eq(id),
            policies::space_id.eq(space),
            policies::adam_id.eq(adam_id),
            policies::pricing_param.eq(pricing_param),
            policies::wait_for_license.eq(wait_for_license),
        ))
        .on_conflict((
            policies::space_id,
            policies::adam_id,
            policies::pricing_param,
        ))
        .do_update()
        .set((
            policies::version.eq(policies::version + 1),
            policies::wait_for_license.eq(wait_for_license),
            policies::updated_at.eq(diesel::dsl::now),
        ))
        .returning(PolicyRow::as_returning())
        .get_result(conn)
        .await?;
    diesel::delete(entries::table.filter(entries::policy_id.eq(policy.id)))
        .execute(conn)
        .await?;
    let rows: Vec<EntryRow> = new_entries
        .iter()
        .map(|e| EntryRow {
            policy_id: policy.id,
            ..e.clone()
        })
        .collect();
    if !rows.is_empty() {
        diesel::insert_into(entries::table)
            .values(rows)
            .execute(conn)
            .await?;
    }
    Ok(policy)
}

pub async fn delete(
    conn: &mut AsyncPgConnection,
    space: &str,
    adam_id: &str,
    pricing_param: &str,
) -> QueryResult<usize> {
    diesel::delete(
        policies::table
            .filter(policies::space_id.eq(space))
            .filter(policies::adam_id.eq(adam_id))
            .filter(policies::pricing_param.eq(pricing_param)),
    )
    .execute(conn)
    .await
}

/// Removes the entries (reservations) naming `account` from every policy, and gives each policy
/// it changed a new version, so an `If-Match` based on the old one fails. Returns how many
/// entries went.
/// How many distribution-policy entries name the account.
pub async fn count_account_entries(
    conn: &mut AsyncPgConnection,
    account: Uuid,
) -> QueryResult<i64> {
    entries::table
        .filter(entries::account_id.eq(account))
        .count()
        .get_result(conn)
        .await
}

pub async fn remove_account_entries(
    conn: &mut AsyncPgConnection,
    account: Uuid,
) -> QueryResult<usize> {
    let changed: Vec<Uuid> = diesel::delete(entries::table.filter(entries::account_id.eq(account)))
        .returning(entries::policy_id)
        .get_results(conn)
        .await?;
    if !changed.is_empty() {
        diesel::update(policies::table.filter(policies::id.eq_any(&changed)))
            .set((
                policies::version.eq(policies::version + 1),
                policies::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .await?;
    }
    Ok(changed.len())
}
