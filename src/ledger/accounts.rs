//! Token accounts, their distribution lists, and the per-space priority order.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::crypto::Sealed;
use crate::db::schema::{account_distribution_entries as dist, accounts, spaces};
use crate::domain::account_status::WhenUnusable;
use crate::domain::account_status::{AccountStatus, StatusState};
use crate::domain::origin::Origin;
use crate::ledger::activity::{self, Activity};

#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = accounts)]
pub struct AccountRow {
    pub id: Uuid,
    pub space_id: String,
    pub name: String,
    pub priority: i32,
    pub location_uid: String,
    pub location_name: String,
    pub country_code: String,
    pub website_url: String,
    pub org_name: String,
    pub token_ciphertext: Vec<u8>,
    pub token_nonce: Vec<u8>,
    pub token_key_id: String,
    pub token_expires_at: DateTime<Utc>,
    pub status: AccountStatus,
    pub status_reason: String,
    pub status_changed_at: DateTime<Utc>,
    pub throttled_until: Option<DateTime<Utc>>,
    pub apple_mdm_id: Option<String>,
    pub notification_token_hash: Option<Vec<u8>>,
    pub notify_on_removal: bool,
    pub new_assets_for_everyone: bool,
    pub when_unusable: WhenUnusable,
    pub last_full_sync_at: Option<DateTime<Utc>>,
    pub last_incremental_sync_at: Option<DateTime<Utc>>,
    pub assignments_version_id: Option<String>,
    pub delete_requested_at: Option<DateTime<Utc>>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl AccountRow {
    pub fn sealed_token(&self) -> Sealed {
        Sealed {
            key_id: self.token_key_id.clone(),
            nonce: self.token_nonce.clone(),
            ciphertext: self.token_ciphertext.clone(),
        }
    }

    pub fn status_state(&self) -> StatusState {
        StatusState {
            status: self.status,
            reason: self.status_reason.clone(),
            throttled_until: self.throttled_until,
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = accounts)]
pub struct NewAccount<'a> {
    pub id: Uuid,
    pub space_id: &'a str,
    pub name: &'a str,
    pub priority: i32,
    pub location_uid: &'a str,
    pub location_name: &'a str,
    pub country_code: &'a str,
    pub website_url: &'a str,
    pub org_name: &'a str,
    pub token_ciphertext: &'a [u8],
    pub token_nonce: &'a [u8],
    pub token_key_id: &'a str,
    pub token_expires_at: DateTime<Utc>,
    pub status: AccountStatus,
    pub status_reason: &'a str,
    pub apple_mdm_id: Option<&'a str>,
    pub notification_token_hash: Option<&'a [u8]>,
    pub notify_on_removal: bool,
    pub new_assets_for_everyone: bool,
    pub when_unusable: WhenUnusable,
    pub last_full_sync_at: Option<DateTime<Utc>>,
}

/// A distribution list entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Queryable, Selectable, Insertable)]
#[diesel(table_name = dist)]
pub struct DistributionEntry {
    pub account_id: Uuid,
    pub kind: String,
    pub value: String,
}

pub async fn insert(conn: &mut AsyncPgConnection, new: NewAccount<'_>) -> QueryResult<AccountRow> {
    diesel::insert_into(accounts::table)
        .values(new)
        .returning(AccountRow::as_returning())
        .get_result(conn)
        .await
}

pub async fn find(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
) -> QueryResult<Option<AccountRow>> {
    accounts::table
        .filter(accounts::space_id.eq(space))
        .filter(accounts::id.eq(id))
        .select(AccountRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Locks the account row for the rest of the transaction against other writers of it.
///
/// `FOR NO KEY UPDATE`, not `FOR UPDATE`: the jobs and Apple events that allocations and the
/// dispatcher insert for the account check their foreign key with a `KEY SHARE` lock on this
/// row while they hold assignment and asset rows; a `FOR UPDATE` here made them wait for us
/// while we waited for their rows (a deadlock, seen when a token replacement cleared the ledger
/// during a dispatch). Only deleting the row needs the stronger lock, and `DELETE` takes it.
pub async fn find_locked(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
) -> QueryResult<Option<AccountRow>> {
    accounts::table
        .filter(accounts::space_id.eq(space))
        .filter(accounts::id.eq(id))
        .select(AccountRow::as_select())
        .for_no_key_update()
        .first(conn)
        .await
        .optional()
}

pub async fn list(conn: &mut AsyncPgConnection, space: &str) -> QueryResult<Vec<AccountRow>> {
    accounts::table
        .filter(accounts::space_id.eq(space))
        .order(accounts::priority.asc())
        .select(AccountRow::as_select())
        .load(conn)
        .await
}

/// One page of a space's accounts in priority order, after priority `after`.
pub async fn page(
    conn: &mut AsyncPgConnection,
    space: &str,
    after: Option<i32>,
    limit: i64,
) -> QueryResult<Vec<AccountRow>> {
    accounts::table
        .filter(accounts::space_id.eq(space))
        .filter(accounts::priority.gt(after.unwrap_or(i32::MIN)))
        .order(accounts::priority.asc())
        .limit(limit)
        .select(AccountRow::as_select())
        .load(conn)
        .await
}

/// Locks the space row: serialises everything that renumbers its accounts' priorities.
/// `None` if the space does not exist. `FOR NO KEY UPDATE`, so that allocations (whose new
/// assignments reference the space) are not blocked by it, for the reason given at
/// [`find_locked`].
pub async fn lock_space(conn: &mut AsyncPgConnection, space: &str) -> QueryResult<Option<String>> {
    spaces::table
        .filter(spaces::id.eq(space))
        .select(spaces::id)
        .for_no_key_update()
        .first(conn)
        .await
        .optional()
}

/// The account holding an Apple location, anywhere in the deployment.
pub async fn by_location(
    conn: &mut AsyncPgConnection,
    location_uid: &str,
) -> QueryResult<Option<(Uuid, String)>> {
    accounts::table
        .filter(accounts::location_uid.eq(location_uid))
        .select((accounts::id, accounts::space_id))
        .first(conn)
        .await
        .optional()
}

/// Writes a full priority order (ids in order get 1..n). Runs with the unique constraint
/// deferred, so any permutation is valid; call inside a transaction holding [`lock_space`].
pub async fn write_order(conn: &mut AsyncPgConnection, ordered: &[Uuid]) -> QueryResult<()> {
    diesel::sql_query("SET CONSTRAINTS accounts_priority_unique DEFERRED")
        .execute(conn)
        .await?;
    for (i, id) in ordered.iter().enumerate() {
        let priority = i as i32 + 1;
        diesel::update(accounts::table.filter(accounts::id.eq(id)))
            .filter(accounts::priority.ne(priority))
            .set((
                accounts::priority.eq(priority),
                accounts::version.eq(accounts::version + 1),
                accounts::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Persists a status change (if it is one) and logs the transition.
pub async fn save_status(
    conn: &mut AsyncPgConnection,
    account: &AccountRow,
    next: &StatusState,
    actor: &Origin,
) -> QueryResult<bool> {
    let current = account.status_state();
    if current.status == next.status
        && current.throttled_until == next.throttled_until
        && current.reason == next.reason
    {
        return Ok(false);
    }
    let changed_status = current.status != next.status;
    let updated = diesel::update(accounts::table.filter(accounts::id.eq(account.id)))
        .filter(accounts::status.eq(current.status))
        .set((
            accounts::status.eq(next.status),
            accounts::status_reason.eq(&next.reason),
            accounts::throttled_until.eq(next.throttled_until),
            accounts::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    if updated == 1 && changed_status {
        diesel::update(accounts::table.filter(accounts::id.eq(account.id)))
            .set(accounts::status_changed_at.eq(diesel::dsl::now))
            .execute(conn)
            .await?;
        if next.status.allows_apple_calls() && !current.status.allows_apple_calls() {
            // Usable again: the Apple work that waited for it goes out now.
            diesel::sql_query(
                "UPDATE jobs SET run_at = now() WHERE account_id = $1 AND state = 'queued' AND run_at > now()",
            )
            .bind::<diesel::sql_types::Uuid, _>(account.id)
            .execute(conn)
            .await?;
        }
        activity::record(
            conn,
            Activity::new(actor, "account.status_changed")
                .space(&account.space_id)
                .account(account.id)
                .details(serde_json::json!({
                    "from": current.status,
                    "to": next.status,
                    "reason": next.reason,
                    "throttled_until": next.throttled_until,
                })),
        )
        .await?;
    }
    Ok(updated == 1)
}

pub async fn distribution(
    conn: &mut AsyncPgConnection,
    accounts_: &[Uuid],
) -> QueryResult<Vec<DistributionEntry>> {
    dist::table
        .filter(dist::account_id.eq_any(accounts_))
        .order((dist::account_id, dist::kind, dist::value))
        .select(DistributionEntry::as_select())
        .load(conn)
        .await
}

/// Replaces an account's distribution list.
pub async fn replace_distribution(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    entries: &[DistributionEntry],
) -> QueryResult<()> {
    diesel::delete(dist::table.filter(dist::account_id.eq(account)))
        .execute(conn)
        .await?;
    if !entries.is_empty() {
        diesel::insert_into(dist::table)
            .values(entries)
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Bumps the version (ETag) after a change to the account or its list.
pub async fn touch(conn: &mut AsyncPgConnection, account: Uuid) -> QueryResult<()> {
    diesel::update(accounts::table.filter(accounts::id.eq(account)))
        .set((
            accounts::version.eq(accounts::version + 1),
            accounts::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
        .map(|_| ())
}

/// New token material for an account (rule T9).
pub struct TokenUpdate<'a> {
    pub location_uid: &'a str,
    pub location_name: &'a str,
    pub country_code: &'a str,
    pub website_url: &'a str,
    pub org_name: &'a str,
    pub sealed: &'a Sealed,
    pub expires_at: DateTime<Utc>,
    pub apple_mdm_id: Option<&'a str>,
    pub notification_token_hash: Option<&'a [u8]>,
}

pub async fn set_token(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    t: TokenUpdate<'_>,
) -> QueryResult<()> {
    diesel::update(accounts::table.filter(accounts::id.eq(id)))
        .set((
            accounts::location_uid.eq(t.location_uid),
            accounts::location_name.eq(t.location_name),
            accounts::country_code.eq(t.country_code),
            accounts::website_url.eq(t.website_url),
            accounts::org_name.eq(t.org_name),
            accounts::token_ciphertext.eq(&t.sealed.ciphertext),
            accounts::token_nonce.eq(&t.sealed.nonce),
            accounts::token_key_id.eq(&t.sealed.key_id),
            accounts::token_expires_at.eq(t.expires_at),
            accounts::apple_mdm_id.eq(t.apple_mdm_id),
            accounts::notification_token_hash.eq(t.notification_token_hash),
            accounts::version.eq(accounts::version + 1),
            accounts::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Records what Apple reported about the location at a check (name, country, expiry, owner).
pub async fn set_observed(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    location_name: Option<&str>,
    country_code: Option<&str>,
    expires_at: Option<DateTime<Utc>>,
    apple_mdm_id: Option<Option<&str>>,
) -> QueryResult<()> {
    #[derive(AsChangeset)]
    #[diesel(table_name = accounts)]
    struct Observed<'a> {
        location_name: Option<&'a str>,
        country_code: Option<&'a str>,
        token_expires_at: Option<DateTime<Utc>>,
        apple_mdm_id: Option<Option<&'a str>>,
    }
    if location_name.is_none()
        && country_code.is_none()
        && expires_at.is_none()
        && apple_mdm_id.is_none()
    {
        return Ok(());
    }
    diesel::update(accounts::table.filter(accounts::id.eq(id)))
        .set(Observed {
            location_name,
            country_code,
            token_expires_at: expires_at,
            apple_mdm_id,
        })
        .execute(conn)
        .await
        .map(|_| ())
}

/// Re-encrypts the token of one account (key rotation).
pub async fn reseal(conn: &mut AsyncPgConnection, id: Uuid, sealed: &Sealed) -> QueryResult<()> {
    diesel::update(accounts::table.filter(accounts::id.eq(id)))
        .set((
            accounts::token_ciphertext.eq(&sealed.ciphertext),
            accounts::token_nonce.eq(&sealed.nonce),
            accounts::token_key_id.eq(&sealed.key_id),
        ))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Accounts whose token is not sealed with `active_key` (for `rotate-keys`), a batch at a time.
pub async fn sealed_with_other_keys(
    conn: &mut AsyncPgConnection,
    active_key: &str,
    limit: i64,
) -> QueryResult<Vec<AccountRow>> {
    accounts::table
        .filter(accounts::token_key_id.ne(active_key))
        .order(accounts::id)
        .limit(limit)
        .select(AccountRow::as_select())
        .load(conn)
        .await
}

/// Marks the account for deletion (it goes once Apple released its licenses).
pub async fn mark_deletion_requested(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    at: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::update(accounts::table.filter(accounts::id.eq(id)))
        .set((
            accounts::delete_requested_at.eq(Some(at)),
            accounts::version.eq(accounts::version + 1),
        ))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Removes the account row (assets, assignments, list entries and jobs go with it) and closes
/// the gap in its space's priorities. Call inside a transaction holding [`lock_space`].
pub async fn remove(conn: &mut AsyncPgConnection, space: &str, id: Uuid) -> QueryResult<()> {
    diesel::delete(accounts::table.filter(accounts::id.eq(id)))
        .execute(conn)
        .await?;
    let remaining: Vec<Uuid> = accounts::table
        .filter(accounts::space_id.eq(space))
        .order(accounts::priority.asc())
        .select(accounts::id)
        .load(conn)
        .await?;
    write_order(conn, &remaining).await
}

pub async fn set_notification_hash(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    hash: Option<&[u8]>,
) -> QueryResult<()> {
    diesel::update(accounts::table.filter(accounts::id.eq(id)))
        .set(accounts::notification_token_hash.eq(hash))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Plain account fields a caller may change.
#[derive(AsChangeset, Default)]
#[diesel(table_name = accounts)]
pub struct DetailsChange<'a> {
    pub name: Option<&'a str>,
    pub notify_on_removal: Option<bool>,
    pub new_assets_for_everyone: Option<bool>,
    pub when_unusable: Option<WhenUnusable>,
}

/// Applies `change` and bumps the version (even when only the distribution list changed).
pub async fn update_details(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    change: DetailsChange<'_>,
) -> QueryResult<()> {
    let empty = change.name.is_none()
        && change.notify_on_removal.is_none()
        && change.new_assets_for_everyone.is_none()
        && change.when_unusable.is_none();
    if !empty {
        diesel::update(accounts::table.filter(accounts::id.eq(id)))
            .set(change)
            .execute(conn)
            .await?;
    }
    touch(conn, id).await
}

pub async fn by_id(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<AccountRow>> {
    accounts::table
        .filter(accounts::id.eq(id))
        .select(AccountRow::as_select())
        .first(conn)
        .await
        .optional()
}
