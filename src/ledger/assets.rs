//! Assets (apps and books) per account, with Apple's counts and what this service holds.
//!
//! Free licenses of an account for an asset = `apple_total - foreign_assigned - held`, where
//! `foreign_assigned` counts licenses assigned at Apple that this instance did not assign
//! (another MDM, a previous owner) and `held` counts this ledger's live assignments.

use chrono::{DateTime, Utc};
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::assets;
use crate::domain::origin::Origin;

/// One asset as Apple reported it.
#[derive(Clone, Debug)]
pub struct AppleAsset {
    pub adam_id: String,
    pub pricing_param: String,
    pub product_type: String,
    pub device_assignable: bool,
    pub revocable: bool,
    pub supported_platforms: Vec<String>,
    pub total: i32,
    pub assigned: i32,
    pub retired: i32,
}

impl AppleAsset {
    pub fn from_apple(a: &crate::apple::types::Asset) -> Self {
        let clamp = |v: Option<i64>| v.unwrap_or(0).clamp(0, i32::MAX as i64) as i32;
        let product_type = match a.product_type.as_ref().map(|p| p.as_str()) {
            Some("App") => "App",
            Some("Book") => "Book",
            _ => "Other",
        };
        AppleAsset {
            adam_id: a.adam_id.clone(),
            pricing_param: a.pricing_param.as_str().to_owned(),
            product_type: product_type.to_owned(),
            device_assignable: a.device_assignable.unwrap_or(false),
            revocable: a.revocable.unwrap_or(false),
            supported_platforms: a
                .supported_platforms
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect(),
            total: clamp(a.total_count),
            assigned: clamp(a.assigned_count),
            retired: clamp(a.retired_count),
        }
    }
}

#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = assets)]
pub struct AssetRow {
    pub account_id: Uuid,
    pub adam_id: String,
    pub pricing_param: String,
    pub product_type: String,
    pub device_assignable: bool,
    pub revocable: bool,
    pub supported_platforms: Vec<Option<String>>,
    pub apple_total: i32,
    pub apple_assigned: i32,
    pub apple_retired: i32,
    pub foreign_assigned: i32,
    pub held: i32,
    pub synced_at: Option<DateTime<Utc>>,
}

/// SQL: when Apple's counts of the asset row `alias` were last confirmed — the row's own
/// `synced_at` (written when a sync or a notification changed it) or, for an asset Apple still
/// lists, the last time a sync read the account's whole asset list
/// (`asset_list_reads`; a sync does not rewrite rows that did not change).
pub fn counts_confirmed_at(alias: &str) -> String {
    format!(
        "GREATEST({alias}.synced_at, CASE WHEN {alias}.vanished_at IS NULL THEN \
         (SELECT r.read_at FROM asset_list_reads r WHERE r.account_id = {alias}.account_id) END)"
    )
}

impl AssetRow {
    /// Licenses this service may still hand out from this account.
    pub fn free(&self) -> i64 {
        (self.apple_total as i64 - self.foreign_assigned as i64 - self.held as i64).max(0)
    }
}

/// Records the assets of a freshly attached account: every license Apple reports as assigned
/// is someone else's (this instance has assigned nothing from it yet).
pub async fn import_new(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    list: &[AppleAsset],
    at: DateTime<Utc>,
) -> QueryResult<usize> {
    let mut n = 0;
    for chunk in list.chunks(500) {
        let rows: Vec<_> = chunk
            .iter()
            .map(|a| {
                (
                    assets::account_id.eq(account),
                    assets::adam_id.eq(&a.adam_id),
                    assets::pricing_param.eq(&a.pricing_param),
                    assets::product_type.eq(&a.product_type),
                    assets::device_assignable.eq(a.device_assignable),
                    assets::revocable.eq(a.revocable),
                    assets::supported_platforms.eq(a
                        .supported_platforms
                        .iter()
                        .cloned()
                        .map(Some)
                        .collect::<Vec<_>>()),
                    assets::apple_total.eq(a.total),
                    assets::apple_assigned.eq(a.assigned),
                    assets::apple_retired.eq(a.retired),
                    assets::foreign_assigned.eq(a.assigned),
                    assets::synced_at.eq(Some(at)),
                )
            })
            .collect();
        n += diesel::insert_into(assets::table)
            .values(rows)
            .on_conflict((assets::account_id, assets::adam_id, assets::pricing_param))
            .do_nothing()
            .execute(conn)
            .await?;
    }
    Ok(n)
}

const LIVE: [&str; 3] = ["pending", "associating", "active"];
/// States in which an assignment holds (or is releasing) a license.
const HOLDING: [&str; 4] = ["pending", "associating", "active", "revoking"];

/// Locks an account's live assignments (by id) and then its asset rows (by key), in the
/// ledger's lock order (see [`crate::ledger::assignments::lock_in_order`]). Waits for the
/// allocation batches that hold the asset rows, so a later statement sees their licenses.
/// The accounts among `accounts_` that own the asset.
pub async fn owners(
    conn: &mut AsyncPgConnection,
    accounts_: &[Uuid],
    adam_id: &str,
    pricing: &str,
) -> QueryResult<Vec<Uuid>> {
    assets::table
        .filter(assets::account_id.eq_any(accounts_))
        .filter(assets::adam_id.eq(adam_id))
        .filter(assets::pricing_param.eq(pricing))
        .select(assets::account_id)
        .load(conn)
        .await
}

pub async fn lock_account(conn: &mut AsyncPgConnection, account: Uuid) -> QueryResult<()> {
    lock_rows(conn, account, &LIVE).await.map(|_| ())
}

/// Forgets what the ledger knows of an account's Apple location, when a token of another
/// location replaces it: its assets, queued Apple work, followed events and registered users.
/// Its assignments stay as history (H1): those still holding or releasing a license are
/// finished as `revoked` (the license stays assigned at the old location; this ledger no
/// longer manages it), with the revocation record (`origin`, the reason below) unless one was
/// already asked, and an `assignment.forgotten` activity row. Returns how many were finished.
///
/// Everything is locked in the ledger's lock order first: deleting the assets straight away
/// took the locks the other way round and deadlocked with a dispatch in progress.
pub async fn forget_location(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    origin: &Origin,
) -> QueryResult<i64> {
    use crate::db::schema::{apple_events, apple_users, jobs};
    lock_rows(conn, account, &HOLDING).await?;
    #[derive(QueryableByName)]
    struct Finished {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let finished = diesel::sql_query(
        "WITH done AS (
             UPDATE assignments
                SET state = 'revoked',
                    revoked_by = COALESCE(revoked_by, $2),
                    revocation_reason = COALESCE(revocation_reason, $3),
                    revocation_requested_at = COALESCE(revocation_requested_at, now()),
                    revocation_request_id = COALESCE(revocation_request_id, $4),
                    version = version + 1, updated_at = now()
              WHERE account_id = $1 AND state IN ('pending', 'associating', 'active', 'revoking')
          RETURNING id, space_id, adam_id, pricing_param, state, version
         ), logged AS (
             INSERT INTO activity_log (space_id, actor, action, account_id, assignment_id,
                                       subject, adam_id, pricing_param, request_id, details,
                                       version)
             SELECT d.space_id, $2, 'assignment.forgotten', $1, d.id,
                    s.kind || ':' || s.external_id, d.adam_id, d.pricing_param, $4,
                    jsonb_build_object('reason', $3::text, 'state', d.state), d.version
               FROM done d JOIN assignments x ON x.id = d.id
               LEFT JOIN subjects s ON s.id = x.subject_id
          RETURNING 1
         )
         SELECT count(*) AS n FROM done",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .bind::<diesel::sql_types::Text, _>(&origin.actor)
    .bind::<diesel::sql_types::Text, _>(FORGOTTEN)
    .bind::<Nullable<diesel::sql_types::Text>, _>(origin.request_id.as_deref())
    .get_result::<Finished>(conn)
    .await?
    .n;
    diesel::delete(jobs::table.filter(jobs::account_id.eq(account)))
        .execute(conn)
        .await?;
    diesel::delete(apple_events::table.filter(apple_events::account_id.eq(account)))
        .execute(conn)
        .await?;
    diesel::delete(apple_users::table.filter(apple_users::account_id.eq(account)))
        .execute(conn)
        .await?;
    diesel::delete(assets::table.filter(assets::account_id.eq(account)))
        .execute(conn)
        .await?;
    // What the syncs knew of the old location goes too: its mirror and drift report (caches of
    // Apple, not history: the sync runs stay), its versionIds and sync times, so nothing reads
    // the old location's licenses as this one's (Adopt, Clean Up's "synced within the hour")
    // before the new location's full sync.
    diesel::sql_query(
        "WITH mirror AS (DELETE FROM apple_assignments WHERE account_id = $1),
              drift AS (DELETE FROM drift_items WHERE account_id = $1),
              -- The next report covers every asset (ledger::drift_scope).
              marks AS (DELETE FROM drift_watermarks WHERE account_id = $1),
              changes AS (DELETE FROM mirror_assets WHERE account_id = $1)
         UPDATE accounts SET assignments_version_id = NULL, assets_version_id = NULL,
                             users_version_id = NULL, last_full_sync_at = NULL,
                             last_incremental_sync_at = NULL
          WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .execute(conn)
    .await?;
    Ok(finished)
}

/// The revocation reason of licenses a token replacement forgot.
const FORGOTTEN: &str = "the account's token was replaced by one of another Apple location \
    (clear_ledger): this ledger no longer manages the license; it stays assigned at the old \
    location";

/// Locks the account's assignments in `states` by id, then its assets by key. Returns how
/// many assignments it locked.
async fn lock_rows(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    states: &[&str],
) -> QueryResult<usize> {
    use crate::db::schema::assignments;
    let locked = assignments::table
        .filter(assignments::account_id.eq(account))
        .filter(assignments::state.eq_any(states))
        .order(assignments::id)
        .select(assignments::id)
        .for_update()
        .load::<Uuid>(conn)
        .await?
        .len();
    assets::table
        .filter(assets::account_id.eq(account))
        .order((assets::adam_id, assets::pricing_param))
        .select(assets::adam_id)
        .for_update()
        .load::<String>(conn)
        .await?;
    Ok(locked)
}

pub async fn for_account(
    conn: &mut AsyncPgConnection,
    account: Uuid,
) -> QueryResult<Vec<AssetRow>> {
    assets::table
        .filter(assets::account_id.eq(account))
        .order((assets::adam_id, assets::pricing_param))
        .select(AssetRow::as_select())
        .load(conn)
        .await
}

/// Per-account totals: (account, assets, licenses owned, held by us, assigned elsewhere).
#[derive(Clone, Debug, Default, Queryable)]
pub struct Totals {
    pub account_id: Uuid,
    pub assets: i64,
    pub total: Option<i64>,
    pub held: Option<i64>,
    pub foreign: Option<i64>,
}

pub async fn totals(conn: &mut AsyncPgConnection, accounts_: &[Uuid]) -> QueryResult<Vec<Totals>> {
    assets::table
        .filter(assets::account_id.eq_any(accounts_))
        .group_by(assets::account_id)
        .select((
            assets::account_id,
            diesel::dsl::count_star(),
            sql::<Nullable<BigInt>>("sum(apple_total)"),
            sql::<Nullable<BigInt>>("sum(held)"),
            sql::<Nullable<BigInt>>("sum(foreign_assigned)"),
        ))
        .load(conn)
        .await
}
