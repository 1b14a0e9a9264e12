//! `/v1/spaces/{space}/assets`: the license inventory (issue 12). Per asset, Apple's counts as
//! last synced beside the ledger's (held by state, assigned elsewhere, held back for
//! reservations, available now), per account and summed over the space; one asset's detail
//! adds its policy summary, its daily movement over 30 days and an exhaustion forecast
//! ([`crate::domain::forecast`]). `GET …/accounts/{account}/assets` lists one account's rows.
//!
//! The figures' arithmetic and its decisions are in [`crate::domain::inventory`] (available
//! now is the most the next allocation would find: 0 for an account allocation skips, with the
//! account's status and the reason beside it). The queries and their indexes are described in
//! [`crate::ledger::inventory`].
//!
//! Lists: `sort` = `asset` (adam id then pricing, ascending; default), `usage` (highest
//! first; assets owning nothing last) or `available` (fewest first), ties by asset. A cursor
//! is bound to its list and its sort (`assets:{space}:{sort}`, or
//! `assets:{space}:account:{id}:{sort}`); filters are not part of it. With `account_id`, a row's
//! figures (and the `exhausted` and `min_usage` filters) are that account's alone.
//!
//! Exports (`Accept: text/csv` or `application/x-ndjson`, [`crate::http::export`]) of both lists:
//! every matching asset in the sort's order, read page by page with the list's own keys. NDJSON
//! is the JSON item; CSV has one record per asset and account (the asset's fields beside the
//! account's figures, no `totals`: they are the sums of an asset's records), the shape a
//! spreadsheet reconciles with Apple Business Manager's per-location exports.

use std::collections::HashMap;

use actix_web::{HttpRequest, HttpResponse, get, web};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::policies::PolicyPath;
use crate::api::spaces::require_space;
use crate::auth::{SpaceAccess, needs};
use crate::domain::account_status::AccountStatus;
use crate::domain::forecast::{self, HALF_LIFE_DAYS, WINDOW_DAYS};
use crate::domain::inventory::{
    self as inv, AccountGate, AssetProductType, AssetSort, ByState, Reservation,
};
use crate::domain::validation::{valid_adam_id, valid_pricing};
use crate::http::export::{self, Chunk, ExportRow};
use crate::http::pagination::{PageQuery, next_cursor};
use crate::http::problem::{ApiError, types};
use crate::ledger::accounts::{self as accounts_store, AccountRow};
use crate::ledger::inventory::{self as store, After, Filter, PageKey, Scope};
use crate::state::AppState;

/// Query of `GET …/assets`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AssetListQuery {
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page (of the same sort).
    pub cursor: Option<String>,
    /// Only this account's assets; figures and filters are then the account's alone.
    pub account_id: Option<Uuid>,
    /// Only assets of this product type.
    pub product_type: Option<AssetProductType>,
    /// `true`: only assets with nothing available now; `false`: only those with some.
    pub exhausted: Option<bool>,
    /// Only assets used at least this much, in percent (0–100); assets owning no license never
    /// match.
    #[param(minimum = 0, maximum = 100)]
    pub min_usage: Option<u32>,
    /// `asset` (default), `usage` (highest first) or `available` (fewest first).
    pub sort: Option<AssetSort>,
}

/// Query of `GET …/accounts/{account}/assets`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AccountAssetListQuery {
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page (of the same sort).
    pub cursor: Option<String>,
    /// Only assets of this product type.
    pub product_type: Option<AssetProductType>,
    /// `true`: only assets with nothing available now; `false`: only those with some.
    pub exhausted: Option<bool>,
    /// Only assets used at least this much, in percent (0–100).
    #[param(minimum = 0, maximum = 100)]
    pub min_usage: Option<u32>,
    /// `asset` (default), `usage` (highest first) or `available` (fewest first).
    pub sort: Option<AssetSort>,
}

/// Apple's counts as last synced.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct AppleCounts {
    /// Licenses owned.
    pub total: i64,
    /// Licenses assigned (by this service or anyone else).
    pub assigned: i64,
    /// `total - assigned`.
    pub available: i64,
    /// Licenses retired.
    pub retired: i64,
    /// When Apple's counts were last read (for a sum: the oldest of the accounts'); absent
    /// before the first sync.
    #[schema(required = true)]
    pub synced_at: Option<DateTime<Utc>>,
}

/// Assignments holding or releasing a license, by state.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct HeldByState {
    pub pending: i64,
    pub associating: i64,
    pub active: i64,
    /// Being released at Apple: back in the pool already (not counted in `held`).
    pub revoking: i64,
}

/// The ledger's figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct LedgerCounts {
    /// Licenses this service holds: pending, associating and active assignments (what
    /// allocation counts).
    pub held: i64,
    /// Assignments by state, `revoking` included (`active` = `held` - pending - associating).
    pub held_by_state: HeldByState,
    /// Licenses assigned at Apple that this service did not assign.
    pub assigned_elsewhere: i64,
    /// Licenses kept for reserved subjects that hold none yet.
    pub held_back: i64,
    /// What an allocation could take now: `total - held - assigned_elsewhere - held_back`, at
    /// least 0; 0 for an account allocation skips (`allocatable` false).
    pub available_now: i64,
    /// `(held + assigned_elsewhere) / total` in percent; null when nothing is owned.
    #[schema(required = true)]
    pub usage_percent: Option<f64>,
}

/// One account's figures for an asset.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AccountFigures {
    pub account_id: Uuid,
    pub account_name: String,
    /// 1 is tried first.
    pub priority: i32,
    /// The account's status now.
    pub account_status: AccountStatus,
    /// Whether allocation takes licenses of this asset from the account at all.
    pub allocatable: bool,
    /// Why not, when `allocatable` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub not_allocatable_reason: Option<String>,
    pub apple: AppleCounts,
    pub ledger: LedgerCounts,
}

/// The sums over the accounts shown.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct SpaceFigures {
    pub apple: AppleCounts,
    pub ledger: LedgerCounts,
}

/// One asset of the inventory.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AssetInventory {
    /// Apple's product id.
    #[schema(example = "408709785")]
    pub adam_id: String,
    /// `STDQ` or `PLUS`.
    #[schema(example = "STDQ")]
    pub pricing_param: String,
    pub product_type: AssetProductType,
    pub device_assignable: bool,
    pub revocable: bool,
    pub supported_platforms: Vec<String>,
    /// A distribution policy exists in the space for the asset.
    pub has_policy: bool,
    /// A12: allocations of the space waiting in line for a license of the asset (they hold
    /// none, so no other figure counts them).
    pub waiting: i64,
    /// Sums over `accounts`.
    pub totals: SpaceFigures,
    /// Per account owning the asset, priority order.
    pub accounts: Vec<AccountFigures>,
}

/// One page of the inventory.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AssetInventoryPage {
    pub items: Vec<AssetInventory>,
    /// Pass as `cursor` (with the same `sort`) to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next_cursor: Option<String>,
}

/// One asset of one account.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AccountAsset {
    #[schema(example = "408709785")]
    pub adam_id: String,
    #[schema(example = "STDQ")]
    pub pricing_param: String,
    pub product_type: AssetProductType,
    pub device_assignable: bool,
    pub revocable: bool,
    pub supported_platforms: Vec<String>,
    pub has_policy: bool,
    pub account_status: AccountStatus,
    pub allocatable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub not_allocatable_reason: Option<String>,
    pub apple: AppleCounts,
    pub ledger: LedgerCounts,
}

/// One page of an account's assets.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccountAssetPage {
    pub items: Vec<AccountAsset>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next_cursor: Option<String>,
}

/// The asset's distribution policy, summed up.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PolicySummary {
    /// The policy's version (its `ETag`).
    pub version: i64,
    pub reserved: i64,
    /// Reservations whose subject holds no license yet.
    pub reserved_outstanding: i64,
    pub fcfs_groups: i64,
    pub disallowed: i64,
}

/// One day's movement of the asset in the space.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DayMovement {
    /// The UTC day.
    pub day: NaiveDate,
    /// Licenses allocated that day (failed allocations excluded).
    pub allocations: i64,
    /// Revocations asked that day.
    pub revocations: i64,
}

/// When nothing will be left, at the recent pace.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ExhaustionForecast {
    /// Days until nothing is available, at the weighted net rate; null with `reason` when
    /// there is no forecast.
    #[schema(required = true)]
    pub days_until_exhausted: Option<f64>,
    /// The UTC day that falls on.
    #[schema(required = true)]
    pub exhausted_on: Option<NaiveDate>,
    /// Net allocations per day, exponentially weighted (half-life `half_life_days`).
    #[schema(required = true)]
    pub net_rate_per_day: Option<f64>,
    /// Days since the first allocation of the asset in the space (at most 30); 7 are needed.
    pub history_days: i64,
    pub half_life_days: f64,
    /// Why there is no forecast.
    #[schema(required = true)]
    pub reason: Option<String>,
}

/// One asset in detail.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AssetDetail {
    #[serde(flatten)]
    pub asset: AssetInventory,
    /// Absent when the asset has no policy.
    pub policy: Option<PolicySummary>,
    /// The last 30 UTC days, oldest first (today last).
    pub daily: Vec<DayMovement>,
    pub forecast: ExhaustionForecast,
}

/// The asset inventory of a space.
///
/// One row per asset with Apple's counts and the ledger's per account and summed; see the
/// figures' descriptions for how each is counted.
#[utoipa::path(
    tag = "assets",
    operation_id = "list_assets",
    security(("bearer" = ["licenses:read"])),
    params(("space" = String, Path, description = "Space id"), AssetListQuery),
    responses(
        (status = 200, description = "A page of assets (JSON); or every matching asset in the sort's order, as CSV (RFC 4180, header row, CRLF; one record per asset and account) or NDJSON (one asset per line)", content(
            (AssetInventoryPage = "application/json"),
            (String = "text/csv"),
            (AssetInventory = "application/x-ndjson"),
        )),
        (status = 404, description = "No such space, or `account_id` is not an account of it"),
        (status = 406, description = "The `Accept` header takes none of `application/json`, `text/csv`, `application/x-ndjson` (`not-acceptable`)"),
    )
)]
#[get("/v1/spaces/{space}/assets")]
pub async fn list_assets(
    access: SpaceAccess<needs::LicensesRead>,
    state: web::Data<AppState>,
    query: web::Query<AssetListQuery>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let space = access.path;
    let format = export::negotiate(&req)?;
    let q = query.into_inner();
    export::refuse_paging(format, q.limit, q.cursor.as_deref())?;
    let sort = q.sort.unwrap_or(AssetSort::Asset);
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let list = format!("assets:{space}:{sort}");
    let ask = Ask::new(&page, &list, sort, q.product_type, q.exhausted, q.min_usage)?;
    let mut conn = state.pool.get().await?;
    // Admitted once the query, the space and the filters' ids are known good: a refusal (503)
    // never hides a 400 or a 404.
    if let Some(admission) = export::admission(format, &state.exports)? {
        let source = AssetExport::new(&ask, space, q.account_id);
        return export::respond(format, admission, conn, source, "assets").await;
    }
    let (items, next) = ask.run(&mut conn, &space, q.account_id).await?;
    Ok(export::json_page(AssetInventoryPage {
        items,
        next_cursor: next,
    }))
}

/// One account's assets.
///
/// The account's rows of the inventory, flat.
#[utoipa::path(
    tag = "assets",
    operation_id = "list_account_assets",
    security(("bearer" = ["licenses:read"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("account" = Uuid, Path, description = "Account id"),
        AccountAssetListQuery,
    ),
    responses(
        (status = 200, description = "A page of the account's assets (JSON); or all of them in the sort's order, as CSV (RFC 4180, header row, CRLF) or NDJSON (one asset per line)", content(
            (AccountAssetPage = "application/json"),
            (String = "text/csv"),
            (AccountAsset = "application/x-ndjson"),
        )),
        (status = 404, description = "No such account in the space"),
        (status = 406, description = "The `Accept` header takes none of `application/json`, `text/csv`, `application/x-ndjson` (`not-acceptable`)"),
    )
)]
#[get("/v1/spaces/{space}/accounts/{account}/assets")]
pub async fn list_account_assets(
    access: SpaceAccess<needs::LicensesRead, (String, Uuid)>,
    state: web::Data<AppState>,
    query: web::Query<AccountAssetListQuery>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (space, account) = access.path;
    let format = export::negotiate(&req)?;
    let q = query.into_inner();
    export::refuse_paging(format, q.limit, q.cursor.as_deref())?;
    let sort = q.sort.unwrap_or(AssetSort::Asset);
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let list = format!("assets:{space}:account:{account}:{sort}");
    let ask = Ask::new(&page, &list, sort, q.product_type, q.exhausted, q.min_usage)?;
    let mut conn = state.pool.get().await?;
    // Admitted once the query, the space and the filters' ids are known good: a refusal (503)
    // never hides a 400 or a 404.
    if let Some(admission) = export::admission(format, &state.exports)? {
        let source = AccountAssetExport(AssetExport::new(&ask, space, Some(account)));
        return export::respond(format, admission, conn, source, "account-assets").await;
    }
    let (items, next) = ask.run(&mut conn, &space, Some(account)).await?;
    Ok(export::json_page(AccountAssetPage {
        items: items.into_iter().filter_map(flat).collect(),
        next_cursor: next,
    }))
}

/// One asset: figures, policy summary, 30 days of movement, exhaustion forecast.
///
/// The asset's figures as in the list (per account and summed over the space), its
/// distribution policy in summary, allocations and revocations per day over the last 30 days,
/// and the days until nothing is left at the current net rate (`null` with the reason when
/// there are fewer than 7 days of history or the rate is not positive).
#[utoipa::path(
    tag = "assets",
    operation_id = "get_asset",
    security(("bearer" = ["licenses:read"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("adam_id" = String, Path, description = "Apple's product id"),
        ("pricing_param" = String, Path, description = "`STDQ` or `PLUS`"),
    ),
    responses(
        (status = 200, description = "The asset", body = AssetDetail),
        (status = 400, description = "`adam_id` is not a product id, or `pricing_param` neither `STDQ` nor `PLUS`"),
        (status = 404, description = "No account of the space owns the asset"),
    )
)]
#[get("/v1/spaces/{space}/assets/{adam_id}/{pricing_param}")]
pub async fn get_asset(
    access: SpaceAccess<needs::LicensesRead, PolicyPath>,
    state: web::Data<AppState>,
) -> Result<web::Json<AssetDetail>, ApiError> {
    let PolicyPath {
        space,
        adam_id,
        pricing_param: pricing,
    } = access.path;
    let missing = || ApiError::not_found(format!("asset {adam_id}/{pricing}"));
    let mut conn = state.pool.get().await?;
    let accounts = space_accounts(&mut conn, &space).await?;
    let now = Utc::now();
    let scope = scope_of(&space, &accounts, None, now);
    let keys = [(adam_id.clone(), pricing.clone())];
    let figures = store::figures(&mut conn, &scope, &keys).await?;
    let mut built = assemble(&scope, &accounts, &keys, figures, now);
    let (asset, policy) = built.pop().ok_or_else(missing)?;
    let today = now.date_naive();
    let since = today - Duration::days(WINDOW_DAYS - 1);
    let (counts, first) = store::daily(&mut conn, &space, &adam_id, &pricing, since).await?;
    let f = forecast::forecast(today, &counts, first, asset.totals.ledger.available_now);
    let days = f.outcome.ok().map(|d| round(d, 1));
    Ok(web::Json(AssetDetail {
        policy,
        daily: forecast::series(today, &counts)
            .into_iter()
            .map(|d| DayMovement {
                day: d.day,
                allocations: d.allocations,
                revocations: d.revocations,
            })
            .collect(),
        forecast: ExhaustionForecast {
            days_until_exhausted: days,
            exhausted_on: days.map(|d| today + Duration::days(d.floor().min(36_500.0) as i64)),
            net_rate_per_day: f.net_rate_per_day.map(|r| round(r, 3)),
            history_days: f.history_days,
            half_life_days: HALF_LIFE_DAYS,
            reason: f.outcome.err().map(|why| why.reason().to_owned()),
        },
        asset,
    }))
}

fn round(x: f64, places: i32) -> f64 {
    let m = 10f64.powi(places);
    (x * m).round() / m
}

/// A validated list request.
struct Ask<'a> {
    list: &'a str,
    limit: i64,
    sort: AssetSort,
    after: Option<After>,
    filter: Filter,
}

fn bad(detail: impl Into<String>) -> ApiError {
    ApiError::new(&types::INVALID_PARAMETER, detail)
}

fn bad_cursor() -> ApiError {
    bad("cursor is not a cursor this API issued for this list")
}

impl<'a> Ask<'a> {
    fn new(
        page: &PageQuery,
        list: &'a str,
        sort: AssetSort,
        product_type: Option<AssetProductType>,
        exhausted: Option<bool>,
        min_usage: Option<u32>,
    ) -> Result<Ask<'a>, ApiError> {
        let limit = page.limit()?;
        if let Some(n) = min_usage
            && n > 100
        {
            return Err(bad(format!("min_usage must be between 0 and 100, not {n}")));
        }
        let asset_ok = |a: &str, p: &str| valid_adam_id(a) && valid_pricing(p);
        let after = match sort {
            AssetSort::Asset => page
                .after::<(String, String)>(list)?
                .map(|(adam_id, pricing_param)| {
                    asset_ok(&adam_id, &pricing_param)
                        .then_some(After::Asset {
                            adam_id,
                            pricing_param,
                        })
                        .ok_or_else(bad_cursor)
                })
                .transpose()?,
            AssetSort::Usage => page
                .after::<(String, String, String)>(list)?
                .map(|(usage_key, adam_id, pricing_param)| {
                    (asset_ok(&adam_id, &pricing_param) && store::valid_usage_key(&usage_key))
                        .then_some(After::Usage {
                            usage_key,
                            adam_id,
                            pricing_param,
                        })
                        .ok_or_else(bad_cursor)
                })
                .transpose()?,
            AssetSort::Available => page
                .after::<(i64, String, String)>(list)?
                .map(|(available, adam_id, pricing_param)| {
                    asset_ok(&adam_id, &pricing_param)
                        .then_some(After::Available {
                            available,
                            adam_id,
                            pricing_param,
                        })
                        .ok_or_else(bad_cursor)
                })
                .transpose()?,
        };
        Ok(Ask {
            list,
            limit,
            sort,
            after,
            filter: Filter {
                product_type,
                exhausted,
                min_usage: min_usage.map(i64::from),
            },
        })
    }

    /// Reads one page; `account` restricts it to one account of the space (404 otherwise).
    async fn run(
        &self,
        conn: &mut crate::db::Conn,
        space: &str,
        account: Option<Uuid>,
    ) -> Result<(Vec<AssetInventory>, Option<String>), ApiError> {
        let (items, raw, last) = self.read(conn, space, account).await?;
        let next = next_cursor(
            self.list,
            raw,
            self.limit,
            last.map(|k| cursor_key(self.sort, &k)),
        );
        Ok((items, next))
    }

    /// One page's assets, how many keys the page read and the last of them.
    async fn read(
        &self,
        conn: &mut crate::db::Conn,
        space: &str,
        account: Option<Uuid>,
    ) -> Result<(Vec<AssetInventory>, usize, Option<PageKey>), ApiError> {
        let accounts = space_accounts(conn, space).await?;
        if let Some(id) = account
            && !accounts.iter().any(|a| a.id == id)
        {
            return Err(ApiError::not_found(format!("account {id}")));
        }
        let now = Utc::now();
        let scope = scope_of(space, &accounts, account, now);
        let keys = store::page(
            conn,
            &scope,
            &self.filter,
            self.sort,
            self.after.as_ref(),
            self.limit,
        )
        .await?;
        let pairs: Vec<(String, String)> = keys
            .iter()
            .map(|k| (k.adam_id.clone(), k.pricing_param.clone()))
            .collect();
        let figures = store::figures(conn, &scope, &pairs).await?;
        let items = assemble(&scope, &accounts, &pairs, figures, now)
            .into_iter()
            .map(|(asset, _)| asset)
            .collect();
        Ok((items, keys.len(), keys.last().cloned()))
    }
}

/// Where the next page starts after an asset, in the sort's terms (the cursor's key, typed).
fn after_of(sort: AssetSort, k: &PageKey) -> After {
    let (adam_id, pricing_param) = (k.adam_id.clone(), k.pricing_param.clone());
    match sort {
        AssetSort::Asset => After::Asset {
            adam_id,
            pricing_param,
        },
        AssetSort::Usage => After::Usage {
            usage_key: k.usage_key.clone(),
            adam_id,
            pricing_param,
        },
        AssetSort::Available => After::Available {
            available: k.available.unwrap_or(0),
            adam_id,
            pricing_param,
        },
    }
}

/// The inventory as an export: the list's pages, in its sort, chunk by chunk.
struct AssetExport {
    list: String,
    sort: AssetSort,
    filter: Filter,
    space: String,
    account: Option<Uuid>,
}

impl AssetExport {
    fn new(ask: &Ask<'_>, space: String, account: Option<Uuid>) -> Self {
        AssetExport {
            list: ask.list.to_owned(),
            sort: ask.sort,
            filter: ask.filter.clone(),
            space,
            account,
        }
    }

    async fn read(
        &self,
        conn: &mut crate::db::Conn,
        after: Option<After>,
        limit: i64,
    ) -> Result<Chunk<AssetInventory, After>, ApiError> {
        let ask = Ask {
            list: &self.list,
            limit,
            sort: self.sort,
            after,
            filter: self.filter.clone(),
        };
        let (items, raw, last) = ask.read(conn, &self.space, self.account).await?;
        let next = last.map(|k| after_of(self.sort, &k));
        Ok(Chunk::new(items, raw, limit, next))
    }
}

/// Assets per chunk of the space's inventory export: each carries a row per owning account
/// (up to every account of the space), so a chunk of [`export::CHUNK_ROWS`] assets could hold
/// a hundred thousand account rows; a hundred keeps the export's memory flat.
const ASSETS_PER_CHUNK: i64 = 100;

impl export::Source for AssetExport {
    type Row = AssetInventory;
    type Key = After;

    async fn chunk(
        &self,
        conn: &mut crate::db::Conn,
        after: Option<After>,
        limit: i64,
    ) -> Result<Chunk<AssetInventory, After>, ApiError> {
        self.read(conn, after, limit.min(ASSETS_PER_CHUNK)).await
    }
}

/// One account's assets as an export (the flat rows).
struct AccountAssetExport(AssetExport);

impl export::Source for AccountAssetExport {
    type Row = AccountAsset;
    type Key = After;

    async fn chunk(
        &self,
        conn: &mut crate::db::Conn,
        after: Option<After>,
        limit: i64,
    ) -> Result<Chunk<AccountAsset, After>, ApiError> {
        let chunk = self.0.read(conn, after, limit).await?;
        Ok(Chunk {
            rows: chunk.rows.into_iter().filter_map(flat).collect(),
            next: chunk.next,
        })
    }
}

/// CSV: one record per asset and account (the space's sums are the sums of those records), the
/// asset's fields and the account's side by side; NDJSON: the JSON item.
impl ExportRow for AssetInventory {
    const COLUMNS: &'static [&'static str] = &[
        "adam_id",
        "pricing_param",
        "product_type",
        "device_assignable",
        "revocable",
        "supported_platforms",
        "has_policy",
        "waiting",
        "account_id",
        "account_name",
        "priority",
        "account_status",
        "allocatable",
        "not_allocatable_reason",
        "apple.total",
        "apple.assigned",
        "apple.available",
        "apple.retired",
        "apple.synced_at",
        "ledger.held",
        "ledger.held_by_state.pending",
        "ledger.held_by_state.associating",
        "ledger.held_by_state.active",
        "ledger.held_by_state.revoking",
        "ledger.assigned_elsewhere",
        "ledger.held_back",
        "ledger.available_now",
        "ledger.usage_percent",
    ];

    fn csv_records(&self) -> Result<Option<Vec<serde_json::Value>>, serde_json::Error> {
        let serde_json::Value::Object(mut asset) = serde_json::to_value(self)? else {
            return Ok(Some(Vec::new()));
        };
        asset.remove("totals");
        asset.remove("accounts");
        self.accounts
            .iter()
            .map(|account| {
                let mut record = asset.clone();
                if let serde_json::Value::Object(figures) = serde_json::to_value(account)? {
                    record.extend(figures);
                }
                Ok(serde_json::Value::Object(record))
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }
}

impl ExportRow for AccountAsset {
    const COLUMNS: &'static [&'static str] = &[
        "adam_id",
        "pricing_param",
        "product_type",
        "device_assignable",
        "revocable",
        "supported_platforms",
        "has_policy",
        "account_status",
        "allocatable",
        "not_allocatable_reason",
        "apple.total",
        "apple.assigned",
        "apple.available",
        "apple.retired",
        "apple.synced_at",
        "ledger.held",
        "ledger.held_by_state.pending",
        "ledger.held_by_state.associating",
        "ledger.held_by_state.active",
        "ledger.held_by_state.revoking",
        "ledger.assigned_elsewhere",
        "ledger.held_back",
        "ledger.available_now",
        "ledger.usage_percent",
    ];
}

/// The cursor key of a page's last asset, in the sort's terms.
fn cursor_key(sort: AssetSort, k: &PageKey) -> serde_json::Value {
    match sort {
        AssetSort::Asset => serde_json::json!([k.adam_id, k.pricing_param]),
        AssetSort::Usage => serde_json::json!([k.usage_key, k.adam_id, k.pricing_param]),
        AssetSort::Available => {
            serde_json::json!([k.available.unwrap_or(0), k.adam_id, k.pricing_param])
        }
    }
}

/// The space's accounts, highest priority first (404 for a space that does not exist).
async fn space_accounts(
    conn: &mut crate::db::Conn,
    space: &str,
) -> Result<Vec<AccountRow>, ApiError> {
    require_space(conn, space).await?;
    Ok(accounts_store::list(conn, space).await?)
}

fn gate(a: &AccountRow) -> AccountGate {
    AccountGate {
        status: a.status_state(),
        token_expires_at: a.token_expires_at,
        when_unusable: a.when_unusable,
        deleting: a.delete_requested_at.is_some(),
        new_assets_for_everyone: a.new_assets_for_everyone,
    }
}

fn scope_of(space: &str, accounts: &[AccountRow], only: Option<Uuid>, now: DateTime<Utc>) -> Scope {
    let ids = |pick: &dyn Fn(&AccountRow) -> bool| -> Vec<Uuid> {
        accounts.iter().filter(|a| pick(a)).map(|a| a.id).collect()
    };
    Scope {
        space: space.to_owned(),
        accounts: ids(&|a| only.is_none_or(|id| id == a.id)),
        all_accounts: ids(&|_| true),
        blocked: ids(&|a| gate(a).blocked(now).is_some()),
        needs_policy: ids(&|a| gate(a).needs_policy(now)),
    }
}

/// Builds each asset of `keys` (in that order; assets without rows are left out) with its
/// policy summary.
fn assemble(
    scope: &Scope,
    accounts: &[AccountRow],
    keys: &[(String, String)],
    figures: store::Figures,
    now: DateTime<Utc>,
) -> Vec<(AssetInventory, Option<PolicySummary>)> {
    type Key = (String, String);
    let mut rows: HashMap<Key, Vec<store::AccountAsset>> = HashMap::new();
    for r in figures.rows {
        rows.entry((r.adam_id.clone(), r.pricing_param.clone()))
            .or_default()
            .push(r);
    }
    let mut states: HashMap<(Key, Uuid), ByState> = HashMap::new();
    for s in figures.states {
        states
            .entry(((s.adam_id, s.pricing_param), s.account_id))
            .or_default()
            .add(&s.state, s.n);
    }
    let mut policies: HashMap<Key, Vec<store::PolicyEntry>> = HashMap::new();
    for p in figures.policies {
        policies
            .entry((p.adam_id.clone(), p.pricing_param.clone()))
            .or_default()
            .push(p);
    }
    let waiting: HashMap<Key, i64> = figures
        .waiting
        .into_iter()
        .map(|w| ((w.adam_id, w.pricing_param), w.waiting))
        .collect();
    let first_owners: HashMap<Key, Uuid> = figures
        .first_owners
        .into_iter()
        .map(|(adam, pricing, account)| ((adam, pricing), account))
        .collect();
    // Per account once: what it shows and whether allocation skips it.
    let shown: HashMap<Uuid, Shown> = accounts
        .iter()
        .filter(|a| scope.accounts.contains(&a.id))
        .map(|a| {
            let g = gate(a);
            let shown = Shown {
                row: a,
                status: inv::shown_status(&g, now),
                blocked: g.blocked(now),
                without_policy: g.blocked_for(false, now),
            };
            (a.id, shown)
        })
        .collect();
    let mut out = Vec::new();
    for key in keys {
        let Some(mut asset_rows) = rows.remove(key) else {
            continue;
        };
        let rank = |id: Uuid| scope.all_accounts.iter().position(|a| *a == id);
        asset_rows.sort_by_key(|r| rank(r.account_id));
        let entries = policies.remove(key).unwrap_or_default();
        let has_policy = !entries.is_empty();
        let reservations: Vec<Reservation> = entries
            .iter()
            .filter(|e| e.mode.as_deref() == Some("reserved"))
            .map(|e| Reservation {
                account_id: e.account_id,
                served: e.served,
            })
            .collect();
        let owners: Vec<Uuid> = match first_owners.get(key) {
            Some(first) => vec![*first],
            None => asset_rows.iter().map(|r| r.account_id).collect(),
        };
        let held_back = inv::held_back(&owners, &reservations);
        let policy = entries.first().map(|first| {
            let count = |mode: &str| {
                entries
                    .iter()
                    .filter(|e| e.mode.as_deref() == Some(mode))
                    .count() as i64
            };
            PolicySummary {
                version: first.version,
                reserved: count("reserved"),
                reserved_outstanding: reservations.iter().filter(|r| !r.served).count() as i64,
                fcfs_groups: count("fcfs"),
                disallowed: count("disallowed"),
            }
        });
        let mut per_account = Vec::new();
        let mut totals = SpaceFigures::default();
        let mut oldest_sync: Option<Option<DateTime<Utc>>> = None;
        for r in asset_rows
            .iter()
            .filter(|r| shown.contains_key(&r.account_id))
        {
            let Some(account) = shown.get(&r.account_id) else {
                continue;
            };
            let blocked = if has_policy {
                account.blocked.clone()
            } else {
                account.without_policy.clone()
            };
            let mut by_state = states
                .get(&(key.clone(), r.account_id))
                .copied()
                .unwrap_or_default();
            // Active licenses are the live count less the transient ones (the store counts
            // only those: see `ledger::inventory::StateCount`).
            by_state.active = (i64::from(r.held) - by_state.pending - by_state.associating).max(0);
            let hb = held_back.get(&r.account_id).copied().unwrap_or(0);
            let (total, held, elsewhere) = (
                i64::from(r.apple_total),
                i64::from(r.held),
                i64::from(r.foreign_assigned),
            );
            let apple = AppleCounts {
                total,
                assigned: i64::from(r.apple_assigned),
                available: total - i64::from(r.apple_assigned),
                retired: i64::from(r.apple_retired),
                synced_at: r.synced_at,
            };
            let ledger = LedgerCounts {
                held,
                held_by_state: held_view(&by_state),
                assigned_elsewhere: elsewhere,
                held_back: hb,
                available_now: inv::available_now(total, held, elsewhere, hb, blocked.is_none()),
                usage_percent: inv::usage_percent(total, held, elsewhere).map(|u| round(u, 2)),
            };
            add(&mut totals, &apple, &ledger, &by_state);
            oldest_sync = Some(match oldest_sync {
                None => r.synced_at,
                Some(prev) => match (prev, r.synced_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    _ => None,
                },
            });
            per_account.push(AccountFigures {
                account_id: r.account_id,
                account_name: account.row.name.clone(),
                priority: account.row.priority,
                account_status: account.status,
                allocatable: blocked.is_none(),
                not_allocatable_reason: blocked,
                apple,
                ledger,
            });
        }
        if per_account.is_empty() {
            continue;
        }
        totals.apple.synced_at = oldest_sync.flatten();
        totals.ledger.usage_percent = inv::usage_percent(
            totals.apple.total,
            totals.ledger.held,
            totals.ledger.assigned_elsewhere,
        )
        .map(|u| round(u, 2));
        let first = &asset_rows[0];
        out.push((
            AssetInventory {
                adam_id: key.0.clone(),
                pricing_param: key.1.clone(),
                product_type: first.product_type,
                device_assignable: first.device_assignable,
                revocable: first.revocable,
                supported_platforms: first
                    .supported_platforms
                    .iter()
                    .flatten()
                    .cloned()
                    .collect(),
                has_policy,
                waiting: waiting.get(key).copied().unwrap_or(0),
                totals,
                accounts: per_account,
            },
            policy,
        ));
    }
    out
}

/// An account shown, with what allocation makes of it now.
struct Shown<'a> {
    row: &'a AccountRow,
    status: AccountStatus,
    blocked: Option<String>,
    without_policy: Option<String>,
}

fn held_view(s: &ByState) -> HeldByState {
    HeldByState {
        pending: s.pending,
        associating: s.associating,
        active: s.active,
        revoking: s.revoking,
    }
}

fn add(totals: &mut SpaceFigures, apple: &AppleCounts, ledger: &LedgerCounts, by: &ByState) {
    let t = &mut totals.apple;
    t.total += apple.total;
    t.assigned += apple.assigned;
    t.available += apple.available;
    t.retired += apple.retired;
    let l = &mut totals.ledger;
    l.held += ledger.held;
    let mut sum = ByState {
        pending: l.held_by_state.pending,
        associating: l.held_by_state.associating,
        active: l.held_by_state.active,
        revoking: l.held_by_state.revoking,
    };
    sum.sum(by);
    l.held_by_state = held_view(&sum);
    l.assigned_elsewhere += ledger.assigned_elsewhere;
    l.held_back += ledger.held_back;
    l.available_now += ledger.available_now;
}

/// An inventory row of one account, flat.
fn flat(asset: AssetInventory) -> Option<AccountAsset> {
    let a = asset.accounts.into_iter().next()?;
    Some(AccountAsset {
        adam_id: asset.adam_id,
        pricing_param: asset.pricing_param,
        product_type: asset.product_type,
        device_assignable: asset.device_assignable,
        revocable: asset.revocable,
        supported_platforms: asset.supported_platforms,
        has_policy: asset.has_policy,
        account_status: a.account_status,
        allocatable: a.allocatable,
        not_allocatable_reason: a.not_allocatable_reason,
        apple: a.apple,
        ledger: a.ledger,
    })
}
