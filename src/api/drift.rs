//! The drift report (T11, docs/sync.md): `GET /v1/spaces/{space}/accounts/{account}/drift` and
//! `GET /v1/spaces/{space}/drift` — the differences the last sync of each account found between
//! the ledger and Apple (`ledger::drift` computes them at the end of every sync).
//!
//! - One answer shape for both: `summary` (items per class of the whole account or space,
//!   whatever the filters), `last_sync` (one entry per account — the account's for the account
//!   report, every account of the space for the space report — with its last finished sync run,
//!   null when it never finished one: the report is only as fresh as that run), then one page of
//!   `items` and `next_cursor`.
//! - Filters: `class` (one of [`DriftClass`]; another value is a 400 like every enum parameter),
//!   `adam_id`, `pricing_param` (validated like the other lists).
//! - Keyset pages on the item id, ascending (cursor list `drift:{space}:{account}:{filters}`:
//!   a cursor is bound to the list and filters that issued it; any other is a 400). `limit`
//!   1 to 500, default 100: items are small and a report is read whole more often than not.
//! - An account of another space, or none, is a 404 like everywhere else in the space.

use actix_web::{get, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::spaces::require_space;
use crate::auth::{SpaceAccess, needs};
use crate::domain::model::LicenseType;
use crate::domain::reconciliation::{
    DriftClass, DriftCounts, SuggestedAction, SyncKind, SyncState,
};
use crate::domain::validation::{valid_adam_id, valid_pricing};
use crate::http::pagination::{PageQuery, next_cursor};
use crate::http::problem::{ApiError, types};
use crate::ledger::accounts as accounts_store;
use crate::ledger::drift::{self as store, DriftRow, LastSync, ListFilter};
use crate::state::AppState;

/// Items per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: u32 = 100;
/// The largest `limit`.
pub const MAX_LIMIT: u32 = 500;

/// One difference between the ledger and Apple.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DriftItem {
    /// The order of the report (and the key of its pages).
    pub id: i64,
    pub class: DriftClass,
    pub account_id: Uuid,
    pub adam_id: String,
    pub pricing_param: String,
    /// Who holds the license (`device:SERIAL`, `user:CLIENT_USER_ID`); null for the per-asset
    /// classes (`count_mismatch`, `overcommitted`).
    #[schema(required = true)]
    pub subject: Option<String>,
    #[schema(required = true)]
    pub license_type: Option<LicenseType>,
    /// The ledger's assignment (`ledger_only`, `stuck`).
    #[schema(required = true)]
    pub assignment_id: Option<Uuid>,
    /// When a sync first found it (kept while it persists). For `apple_only`: when a sync first
    /// saw Apple's assignment.
    pub since: DateTime<Utc>,
    pub suggested_action: SuggestedAction,
    /// Class-specific facts: `stuck` → `state`; `count_mismatch` → `apple_assigned`,
    /// `apple_listed`, `ledger_at_apple`, `apple_only`; `overcommitted` → `apple_total`,
    /// `held`; `{}` otherwise.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// A sync run, as the report refers to it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SyncRunRef {
    pub id: Uuid,
    pub kind: SyncKind,
    pub state: SyncState,
    #[schema(required = true)]
    pub finished_at: Option<DateTime<Utc>>,
}

/// An account's last finished sync run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccountLastSync {
    pub account_id: Uuid,
    /// Null when no sync of the account has finished yet (the report has nothing of it).
    #[schema(required = true)]
    pub run: Option<SyncRunRef>,
}

/// The drift report: the summary, the last syncs, one page of items.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DriftReport {
    /// Items per class of the whole account or space (the filters do not apply).
    pub summary: DriftCounts,
    /// One entry per account the report covers.
    pub last_sync: Vec<AccountLastSync>,
    pub items: Vec<DriftItem>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DriftQuery {
    /// Items per page, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page (with the same filters).
    pub cursor: Option<String>,
    /// Only items of this class.
    pub class: Option<DriftClass>,
    /// Only items about this asset (Apple product id, digits).
    pub adam_id: Option<String>,
    /// Only items about this pricing: `STDQ` or `PLUS`.
    pub pricing_param: Option<String>,
}

/// One account's drift report.
///
/// The differences the account's last sync found between the ledger and Apple, with the action
/// each suggests, and when that sync ran. Classes: `apple_only` (assigned at Apple, not by this
/// deployment), `ledger_only` (active here, not listed by Apple after a full sync), `stuck`
/// (pending, associating or revoking too long), `count_mismatch` (Apple's counts disagree with
/// Apple's list or with the ledger), `overcommitted` (Apple's total below what the ledger
/// holds).
#[utoipa::path(
    tag = "drift",
    operation_id = "get_account_drift",
    security(("bearer" = ["licenses:read"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("account" = Uuid, Path, description = "Account id"),
        DriftQuery,
    ),
    responses(
        (status = 200, description = "The summary, the account's last sync and a page of items", body = DriftReport),
        (status = 400, description = "A filter, `limit` or `cursor` is not acceptable (`invalid-parameter`)"),
        (status = 404, description = "No such account in the space"),
    )
)]
#[get("/v1/spaces/{space}/accounts/{account}/drift")]
pub async fn get_account_drift(
    access: SpaceAccess<needs::LicensesRead, (String, Uuid)>,
    state: web::Data<AppState>,
    query: web::Query<DriftQuery>,
) -> Result<web::Json<DriftReport>, ApiError> {
    let (space, account) = access.path;
    let ask = Ask::new(query.into_inner(), &space, Some(account))?;
    let mut conn = state.pool.get().await?;
    if accounts_store::find(&mut conn, &space, account)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(format!("account {account}")));
    }
    Ok(web::Json(ask.run(&mut conn, &space, &[account]).await?))
}

/// The space's drift report.
///
/// The drift report of every account of the space (see the account's report), in one list.
#[utoipa::path(
    tag = "drift",
    operation_id = "get_space_drift",
    security(("bearer" = ["licenses:read"])),
    params(("space" = String, Path, description = "Space id"), DriftQuery),
    responses(
        (status = 200, description = "The summary, each account's last sync and a page of items", body = DriftReport),
        (status = 400, description = "A filter, `limit` or `cursor` is not acceptable (`invalid-parameter`)"),
        (status = 404, description = "No such space"),
    )
)]
#[get("/v1/spaces/{space}/drift")]
pub async fn get_space_drift(
    access: SpaceAccess<needs::LicensesRead>,
    state: web::Data<AppState>,
    query: web::Query<DriftQuery>,
) -> Result<web::Json<DriftReport>, ApiError> {
    let space = access.path;
    let ask = Ask::new(query.into_inner(), &space, None)?;
    let mut conn = state.pool.get().await?;
    require_space(&mut conn, &space).await?;
    let accounts: Vec<Uuid> = accounts_store::list(&mut conn, &space)
        .await?
        .into_iter()
        .map(|a| a.id)
        .collect();
    Ok(web::Json(ask.run(&mut conn, &space, &accounts).await?))
}

/// A validated request: the store's filter, the page and the cursor's list.
struct Ask {
    filter: ListFilter,
    list: String,
    limit: i64,
    after: Option<i64>,
}

impl Ask {
    /// 400 for a malformed asset, pricing, limit or cursor.
    fn new(q: DriftQuery, space: &str, account: Option<Uuid>) -> Result<Self, ApiError> {
        if let Some(a) = &q.adam_id
            && !valid_adam_id(a)
        {
            return Err(ApiError::new(
                &types::INVALID_PARAMETER,
                "adam_id must be Apple's numeric product id (1-20 digits)",
            ));
        }
        if let Some(p) = &q.pricing_param
            && !valid_pricing(p)
        {
            return Err(ApiError::new(
                &types::INVALID_PARAMETER,
                "pricing_param must be STDQ or PLUS",
            ));
        }
        let limit = match q.limit {
            None => DEFAULT_LIMIT as i64,
            Some(n) if (1..=MAX_LIMIT).contains(&n) => n as i64,
            Some(n) => {
                return Err(ApiError::new(
                    &types::INVALID_PARAMETER,
                    format!("limit must be between 1 and {MAX_LIMIT}, not {n}"),
                ));
            }
        };
        let any = |v: Option<String>| v.unwrap_or_else(|| "*".to_owned());
        let list = format!(
            "drift:{space}:{}:{}:{}:{}",
            any(account.map(|a| a.to_string())),
            any(q.class.map(|c| c.to_string())),
            any(q.adam_id.clone()),
            any(q.pricing_param.clone()),
        );
        let after: Option<i64> = PageQuery {
            limit: None,
            cursor: q.cursor,
        }
        .after(&list)?;
        Ok(Ask {
            filter: ListFilter {
                account,
                class: q.class,
                adam_id: q.adam_id,
                pricing_param: q.pricing_param,
            },
            list,
            limit,
            after,
        })
    }

    /// The report of `accounts` (the account asked for, or the space's).
    async fn run(
        &self,
        conn: &mut crate::db::Conn,
        space: &str,
        accounts: &[Uuid],
    ) -> Result<DriftReport, ApiError> {
        let summary = store::summary(conn, space, self.filter.account).await?;
        let last = store::last_syncs(conn, accounts).await?;
        let rows = store::list(conn, space, &self.filter, self.after, self.limit).await?;
        let next_cursor = next_cursor(
            &self.list,
            rows.len(),
            self.limit,
            rows.last().map(|r| r.id),
        );
        Ok(DriftReport {
            summary,
            last_sync: accounts
                .iter()
                .map(|id| AccountLastSync {
                    account_id: *id,
                    run: last.iter().find(|r| r.account_id == *id).map(run_ref),
                })
                .collect(),
            items: rows.into_iter().map(item).collect(),
            next_cursor,
        })
    }
}

fn run_ref(r: &LastSync) -> SyncRunRef {
    SyncRunRef {
        id: r.id,
        kind: r.kind,
        state: r.state,
        finished_at: r.finished_at,
    }
}

/// The wire form of a stored item.
pub fn item(row: DriftRow) -> DriftItem {
    let license_type = row.license_type.as_deref().and_then(|t| t.parse().ok());
    let subject = match (&row.license_type, &row.target) {
        (Some(kind), Some(target)) => Some(format!("{kind}:{target}")),
        _ => None,
    };
    DriftItem {
        id: row.id,
        class: row.class,
        account_id: row.account_id,
        adam_id: row.adam_id,
        pricing_param: row.pricing_param,
        subject,
        license_type,
        assignment_id: row.assignment_id,
        since: row.since,
        suggested_action: row.class.suggested_action(),
        details: row.details,
    }
}
