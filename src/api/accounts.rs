//! `/v1/spaces/{space}/accounts`: token accounts (rules T1–T3, T8, T9, A5 in docs/rules.md).
//!
//! Reading needs `licenses:read`; every change needs `accounts:manage`. Responses never carry
//! the sToken, not even masked parts of it. Reads persist time-driven status transitions
//! (expiring, expired, end of throttling) before answering, so the status shown is honest.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, put, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::accounts::checks::{self, TestReport};
use crate::accounts::overview::{self, Details};
use crate::accounts::removal::{self, Deleted};
use crate::accounts::update::{self, AccountChange};
use crate::accounts::{AccountError, ListEntry, ListKind, attach, check_list, order};
use crate::api::spaces::require_space;
use crate::auth::{SpaceAccess, needs};
use crate::db::Conn;
use crate::domain::account_status::AccountStatus;
use crate::domain::account_status::WhenUnusable;
use crate::domain::validation::{self, FieldError};
use crate::http::etag::{IfMatch, etag_header};
use crate::http::extract::Json;
use crate::http::pagination::{PageQuery, next_cursor};
use crate::http::problem::{ApiError, Problem, types};
use crate::ledger::accounts::{self as store, AccountRow};
use crate::state::AppState;

/// The Apple location an account manages.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Location {
    /// Apple's location id (`uId`).
    pub uid: String,
    pub name: String,
    /// ISO 3166 alpha-2 country code.
    pub country: String,
    pub website_url: String,
}

/// Status with its cause.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusView {
    pub state: AccountStatus,
    /// Why, and what to do about it (empty when active).
    pub reason: String,
    /// When the state last changed.
    pub since: DateTime<Utc>,
    /// Until when Apple asked to wait (while throttled).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub throttled_until: Option<DateTime<Utc>>,
}

/// License counts over all the account's assets.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct Licenses {
    /// Distinct assets (adamId + pricing).
    pub assets: i64,
    /// Licenses the account owns at Apple.
    pub total: i64,
    /// Licenses this service holds (pending, associating or active assignments).
    pub held: i64,
    /// Licenses assigned at Apple by someone else (another MDM, a previous owner).
    pub assigned_elsewhere: i64,
    /// Licenses this service may still allocate.
    pub available: i64,
}

/// Account settings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Settings {
    /// Apple's "license removal notification": notify the user when a license is taken back.
    pub notify_on_removal: bool,
    /// Whether the account's assets are available to everyone in the space by default (`true`),
    /// or only once the space has a distribution policy for the asset (`false`: an admin
    /// releases each new purchase by giving it a policy, even an empty one).
    pub new_assets_for_everyone: bool,
    /// What allocation does while the account cannot call Apple (rule A10):
    /// `queue_when_throttled` (default) queues the Apple call behind Apple's Retry-After and
    /// skips an account that is expired, revoked, invalid, login-required or not owned (the
    /// next account serves); `queue` always queues; `skip` always skips.
    pub when_unusable: WhenUnusable,
}

/// A token account. The sToken is never returned.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Account {
    pub id: Uuid,
    pub space: String,
    pub name: String,
    /// Organisation named in the sToken.
    pub organization: String,
    pub location: Location,
    /// 1 is tried first.
    pub priority: i32,
    pub status: StatusView,
    pub token_expires_at: DateTime<Utc>,
    /// Whether Apple's client config names this deployment as owner.
    pub owned_by_this_deployment: bool,
    #[schema(required = true)]
    pub last_full_sync_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub last_incremental_sync_at: Option<DateTime<Utc>>,
    pub licenses: Licenses,
    pub settings: Settings,
    /// Who may receive this account's licenses when allocation falls back to it; empty means
    /// everyone in the space.
    pub distribution_list: Vec<ListEntry>,
    /// Set while a delete with `revoke_all` waits for Apple to release the licenses.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub deletion_requested_at: Option<DateTime<Utc>>,
    /// Progress of a requested deletion: what Apple still has to release, and what blocks it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub deletion: Option<Deletion>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A deletion waiting for Apple to release the account's licenses.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Deletion {
    pub requested_at: DateTime<Utc>,
    /// Licenses Apple still holds (or is releasing) for this account; the account is removed
    /// when none is left.
    pub releasing: i64,
    /// The account status that stops the deletion (the releases are Apple calls, which wait
    /// while Apple refuses the token or another MDM owns it); absent while it progresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub blocked_by: Option<AccountStatus>,
    /// What to do so the deletion completes (e.g. replace the sToken); absent while it
    /// progresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub action: Option<String>,
}

/// The accounts of a space, in priority order (one page of them, for the list).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccountList {
    pub items: Vec<Account>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next_cursor: Option<String>,
}

fn default_true() -> bool {
    true
}

fn default_when_unusable() -> WhenUnusable {
    WhenUnusable::QueueWhenThrottled
}

/// Settings given when adding an account (all optional).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSettings {
    #[serde(default = "default_true")]
    pub notify_on_removal: bool,
    #[serde(default = "default_true")]
    pub new_assets_for_everyone: bool,
    #[serde(default = "default_when_unusable")]
    pub when_unusable: WhenUnusable,
}

impl Default for NewSettings {
    fn default() -> Self {
        NewSettings {
            notify_on_removal: true,
            new_assets_for_everyone: true,
            when_unusable: WhenUnusable::QueueWhenThrottled,
        }
    }
}

/// Body of `POST …/accounts`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "Headquarters",
    "stoken": "eyJ0b2tlbiI6Ii4uLiIsImV4cERhdGUiOiIyMDI3LTEyLTA2VDEwOjAwOjAwKzAwMDAiLCJvcmdOYW1lIjoiQUNNRSJ9",
    "priority": 1,
    "settings": {"when_unusable": "queue_when_throttled"},
    "distribution_list": [{"kind": "group", "value": "sales"}]
}))]
pub struct CreateAccount {
    /// Display name, 1–200 characters; no control characters (tab, line breaks, escapes).
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// The content of the `.vpptoken` file as downloaded from Apple Business Manager.
    #[schema(min_length = 1)]
    pub stoken: String,
    /// Where to insert the account (1 = first); default: after the existing accounts.
    #[schema(minimum = 1, nullable = false)]
    pub priority: Option<i32>,
    #[serde(default)]
    pub settings: NewSettings,
    #[serde(default)]
    pub distribution_list: Vec<ListEntry>,
}

/// Settings to change (each optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsChange {
    #[schema(nullable = false)]
    pub notify_on_removal: Option<bool>,
    #[schema(nullable = false)]
    pub new_assets_for_everyone: Option<bool>,
    #[schema(nullable = false)]
    pub when_unusable: Option<WhenUnusable>,
}

/// Body of `PATCH …/accounts/{account}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAccount {
    /// Display name, 1–200 characters; no control characters (tab, line breaks, escapes).
    #[schema(min_length = 1, max_length = 200, nullable = false)]
    pub name: Option<String>,
    /// Move the account to this priority (1 = first); the others shift. Existing licenses
    /// never move.
    #[schema(minimum = 1, nullable = false)]
    pub priority: Option<i32>,
    #[schema(nullable = false)]
    pub settings: Option<SettingsChange>,
    /// Replaces the whole distribution list.
    #[schema(nullable = false)]
    pub distribution_list: Option<Vec<ListEntry>>,
}

/// Body of `PUT …/accounts/{account}/stoken`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaceToken {
    /// The new `.vpptoken` file content.
    pub stoken: String,
    /// Required when the new token belongs to another Apple location: forget this account's
    /// assets and queued work; the licenses it held become `revoked` in this ledger (they stay
    /// assigned at the old location) and stay readable as history.
    #[serde(default)]
    pub clear_ledger: bool,
}

/// Body of `PUT …/account-order`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountOrder {
    /// Every account id of the space, highest priority first.
    pub order: Vec<Uuid>,
}

/// Answer of `POST …/test`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TestResult {
    pub report: TestReport,
    pub account: Account,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Revoke every license of the account and remove policy entries that name it. Required
    /// when the account is used by a policy or holds licenses.
    #[serde(default)]
    pub revoke_all: bool,
}

const MAX_STOKEN_LEN: usize = 16 * 1024;

fn check_name(errors: &mut Vec<FieldError>, name: &str) {
    validation::check_name(errors, "name", name);
}

fn check_stoken(errors: &mut Vec<FieldError>, stoken: &str) {
    if stoken.trim().is_empty() || stoken.len() > MAX_STOKEN_LEN {
        errors.push(FieldError {
            field: "stoken".into(),
            message: format!("must be the .vpptoken file content (1 to {MAX_STOKEN_LEN} bytes)"),
        });
    }
}

fn check_priority(errors: &mut Vec<FieldError>, priority: Option<i32>) {
    if priority.is_some_and(|p| p < 1) {
        errors.push(FieldError {
            field: "priority".into(),
            message: "must be 1 or more".into(),
        });
    }
}

/// The problem each account failure answers with.
impl From<AccountError> for ApiError {
    fn from(err: AccountError) -> Self {
        match err {
            AccountError::InvalidSToken(e) => ApiError::new(
                &types::INVALID_STOKEN,
                format!("{e}; upload the .vpptoken file content exactly as downloaded from Apple Business Manager"),
            )
            .with_errors(vec![FieldError {
                field: "stoken".into(),
                message: e.to_string(),
            }]),
            AccountError::Rejected(e) => ApiError::new(&types::STOKEN_REJECTED, e.to_string()),
            e @ AccountError::NoLocation => ApiError::new(&types::STOKEN_REJECTED, e.to_string()),
            AccountError::AppleUnavailable {
                source,
                retry_after,
            } => {
                let secs = retry_after.map(|d| d.as_secs().max(1)).unwrap_or(30);
                ApiError::new(&types::APPLE_UNAVAILABLE, source.to_string()).with_header(
                    header::RETRY_AFTER,
                    HeaderValue::from_str(&secs.to_string()).unwrap_or(HeaderValue::from_static("30")),
                )
            }
            AccountError::Apple(e) => ApiError::new(&types::APPLE_ERROR, e.to_string()),
            AccountError::LocationTaken { here } => ApiError::new(
                &types::LOCATION_ALREADY_ATTACHED,
                if here {
                    "this Apple location is already attached to an account of this space; \
                     replace that account's sToken instead"
                } else {
                    "this Apple location is already attached to this deployment (in another space); \
                     one location can be managed by one account only"
                },
            ),
            AccountError::LocationMismatch(detail) => ApiError::new(&types::LOCATION_MISMATCH, detail),
            AccountError::InUse(detail) => ApiError::new(&types::ACCOUNT_IN_USE, detail),
            AccountError::NotFound(what) => ApiError::not_found(what),
            AccountError::Invalid(errors) => ApiError::validation(errors),
            AccountError::Stale { current } => IfMatch::failed(current),
            AccountError::Crypto(e) => ApiError::internal(e),
            AccountError::Db(e) => e.into(),
            AccountError::Pool(e) => e.into(),
        }
    }
}

/// 422 unless the change names something to change and every value is acceptable.
fn validate_update(body: &UpdateAccount) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    if body.name.is_none()
        && body.priority.is_none()
        && body.settings.is_none()
        && body.distribution_list.is_none()
    {
        errors.push(FieldError {
            field: "body".into(),
            message: "name, priority, settings or distribution_list is required".into(),
        });
    }
    if let Some(name) = &body.name {
        check_name(&mut errors, name);
    }
    check_priority(&mut errors, body.priority);
    if let Some(list) = &body.distribution_list {
        check_list(list, &mut errors);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

/// Builds the views of some accounts of one space (one query for lists, one for counts).
async fn views(
    conn: &mut Conn,
    rows: Vec<AccountRow>,
    state: &AppState,
) -> Result<Vec<Account>, ApiError> {
    let Details {
        lists,
        totals,
        releasing,
    } = overview::details(conn, &rows).await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let t = totals
                .iter()
                .find(|t| t.account_id == r.id)
                .cloned()
                .unwrap_or_default();
            let total = t.total.unwrap_or(0);
            let held = t.held.unwrap_or(0);
            let elsewhere = t.foreign.unwrap_or(0);
            let distribution_list = lists
                .iter()
                .filter(|e| e.account_id == r.id)
                .filter_map(|e| {
                    Some(ListEntry {
                        kind: e.kind.parse::<ListKind>().ok()?,
                        value: e.value.clone(),
                    })
                })
                .collect();
            Account {
                owned_by_this_deployment: r.apple_mdm_id.as_deref()
                    == Some(state.identity.instance_id.as_str()),
                id: r.id,
                space: r.space_id,
                name: r.name,
                organization: r.org_name,
                location: Location {
                    uid: r.location_uid,
                    name: r.location_name,
                    country: r.country_code,
                    website_url: r.website_url,
                },
                priority: r.priority,
                status: StatusView {
                    state: r.status,
                    reason: r.status_reason,
                    since: r.status_changed_at,
                    throttled_until: r.throttled_until,
                },
                token_expires_at: r.token_expires_at,
                last_full_sync_at: r.last_full_sync_at,
                last_incremental_sync_at: r.last_incremental_sync_at,
                licenses: Licenses {
                    assets: t.assets,
                    total,
                    held,
                    assigned_elsewhere: elsewhere,
                    available: (total - held - elsewhere).max(0),
                },
                settings: Settings {
                    notify_on_removal: r.notify_on_removal,
                    new_assets_for_everyone: r.new_assets_for_everyone,
                    when_unusable: r.when_unusable,
                },
                distribution_list,
                deletion: r.delete_requested_at.map(|at| {
                    let action = removal::blocked(r.status);
                    Deletion {
                        requested_at: at,
                        releasing: releasing.get(&r.id).copied().unwrap_or(0),
                        blocked_by: action.is_some().then_some(r.status),
                        action,
                    }
                }),
                deletion_requested_at: r.delete_requested_at,
                version: r.version,
                created_at: r.created_at,
                updated_at: r.updated_at,
            }
        })
        .collect())
}

async fn view(conn: &mut Conn, row: AccountRow, state: &AppState) -> Result<Account, ApiError> {
    views(conn, vec![row], state)
        .await?
        .pop()
        .ok_or_else(|| ApiError::internal(std::io::Error::other("account view missing")))
}

async fn load(conn: &mut Conn, space: &str, id: Uuid) -> Result<AccountRow, ApiError> {
    let row = store::find(conn, space, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("account {id}")))?;
    Ok(checks::refresh(conn, row).await?)
}

fn with_etag(mut builder: actix_web::HttpResponseBuilder, account: Account) -> HttpResponse {
    builder.insert_header(etag_header(account.version));
    builder.json(account)
}

/// List a space's token accounts in priority order.
///
/// Accounts are listed with their Apple location, status (checked again when stale), license counts
/// over all their assets, settings and distribution list. The sToken is never returned. Paged like
/// every list (`limit`, `cursor`, `next_cursor`).
#[utoipa::path(
    tag = "accounts",
    operation_id = "list_accounts",
    security(("bearer" = ["licenses:read"])),
    params(("space" = String, Path, description = "Space id"), PageQuery),
    responses((status = 200, description = "A page of accounts, priority 1 first", body = AccountList))
)]
#[get("/v1/spaces/{space}/accounts")]
pub async fn list_accounts(
    access: SpaceAccess<needs::LicensesRead>,
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<web::Json<AccountList>, ApiError> {
    let space = access.path;
    let limit = query.limit()?;
    let after: Option<i32> = query.after(&format!("accounts:{space}"))?;
    let mut conn = state.pool.get().await?;
    require_space(&mut conn, &space).await?;
    let page = store::page(&mut conn, &space, after, limit).await?;
    let rows = overview::refreshed(&mut conn, page).await?;
    let next = next_cursor(
        &format!("accounts:{space}"),
        rows.len(),
        limit,
        rows.last().map(|r| r.priority),
    );
    Ok(web::Json(AccountList {
        items: views(&mut conn, rows, &state).await?,
        next_cursor: next,
    }))
}

/// Attach an Apple location by its sToken.
///
/// The body carries the `.vpptoken` file's content. The service validates it, asks Apple for the
/// location, refuses a location already attached anywhere in the deployment (409
/// `location-already-attached`), writes this deployment's identity into the token's client config,
/// stores the sToken encrypted and reads the location's assets. The new account takes the given
/// priority (others move down) or the last one.
#[utoipa::path(
    tag = "accounts",
    operation_id = "create_account",
    security(("bearer" = ["accounts:manage"])),
    params(("space" = String, Path, description = "Space id")),
    request_body = CreateAccount,
    responses(
        (status = 201, description = "Attached; `status` tells whether the token is owned by this deployment", body = Account),
        (status = 409, description = "The Apple location is already attached (`location-already-attached`)"),
        (status = 422, description = "Invalid sToken file (`invalid-stoken`), Apple refused it (`stoken-rejected`) or a field is invalid"),
        (status = 502, description = "Apple answered with an unexpected error (`apple-error`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Apple is unavailable or throttling (`apple-unavailable`, with Retry-After)"),
    )
)]
#[post("/v1/spaces/{space}/accounts")]
pub async fn create_account(
    access: SpaceAccess<needs::AccountsManage>,
    state: web::Data<AppState>,
    body: Json<CreateAccount>,
) -> Result<HttpResponse, ApiError> {
    let (caller, space) = access.into_parts();
    let body = body.0;
    let mut errors = Vec::new();
    check_name(&mut errors, &body.name);
    check_stoken(&mut errors, &body.stoken);
    check_priority(&mut errors, body.priority);
    check_list(&body.distribution_list, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let row = attach::add(
        &state,
        &caller.origin(),
        &space,
        attach::NewAccountInput {
            name: body.name,
            stoken: body.stoken,
            priority: body.priority,
            notify_on_removal: body.settings.notify_on_removal,
            new_assets_for_everyone: body.settings.new_assets_for_everyone,
            when_unusable: body.settings.when_unusable,
            distribution_list: body.distribution_list,
        },
    )
    .await?;
    let mut conn = state.pool.get().await?;
    let account = view(&mut conn, row, &state).await?;
    let mut builder = HttpResponse::Created();
    builder.insert_header((
        header::LOCATION,
        format!("/v1/spaces/{space}/accounts/{}", account.id),
    ));
    Ok(with_etag(builder, account))
}

/// Get one token account.
///
/// The account with its status, counts, settings and distribution list; `ETag` carries its version
/// for `If-Match`.
#[utoipa::path(
    tag = "accounts",
    operation_id = "get_account",
    security(("bearer" = ["licenses:read"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("account" = Uuid, Path, description = "Account id"),
    ),
    responses((status = 200, description = "The account; `ETag` is set", body = Account))
)]
#[get("/v1/spaces/{space}/accounts/{account}")]
pub async fn get_account(
    access: SpaceAccess<needs::LicensesRead, (String, Uuid)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (space, id) = access.path;
    let mut conn = state.pool.get().await?;
    let row = load(&mut conn, &space, id).await?;
    Ok(with_etag(
        HttpResponse::Ok(),
        view(&mut conn, row, &state).await?,
    ))
}

/// Rename, change settings or the distribution list, or move to another priority.
///
/// Every member is optional; only those given change. Moving an account to another priority
/// renumbers the others and never moves existing licenses (A5). Honours `If-Match` (412 when the
/// account changed since).
#[utoipa::path(
    tag = "accounts",
    operation_id = "update_account",
    security(("bearer" = ["accounts:manage"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("account" = Uuid, Path, description = "Account id"),
        ("If-Match" = Option<String>, Header, description = "ETag the change is based on"),
    ),
    request_body = UpdateAccount,
    responses(
        (status = 200, description = "Updated; the new `ETag` is set", body = Account),
        (status = 412, description = "If-Match does not match"),
    )
)]
#[patch("/v1/spaces/{space}/accounts/{account}")]
pub async fn update_account(
    access: SpaceAccess<needs::AccountsManage, (String, Uuid)>,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Json<UpdateAccount>,
) -> Result<HttpResponse, ApiError> {
    let (caller, (space, id)) = access.into_parts();
    let if_match = IfMatch::from_request(&req)?;
    let body = body.0;
    validate_update(&body)?;
    let settings = body.settings.unwrap_or_default();
    let change = AccountChange {
        name: body.name,
        notify_on_removal: settings.notify_on_removal,
        new_assets_for_everyone: settings.new_assets_for_everyone,
        when_unusable: settings.when_unusable,
        distribution_list: body.distribution_list,
        priority: body.priority,
    };
    let mut conn = state.pool.get().await?;
    update::update(
        &mut conn,
        &caller.origin(),
        &space,
        id,
        if_match.versions(),
        &change,
    )
    .await?;
    let row = load(&mut conn, &space, id).await?;
    Ok(with_etag(
        HttpResponse::Ok(),
        view(&mut conn, row, &state).await?,
    ))
}

/// Delete an account; with `revoke_all`, revoke its licenses first.
///
/// An account that holds licenses or that a policy names needs `revoke_all=true` (409
/// `account-in-use` otherwise). Then every live license is revoked at Apple and the account is
/// removed once Apple released them all (202 meanwhile, 204 when nothing was held).
#[utoipa::path(
    tag = "accounts",
    operation_id = "delete_account",
    security(("bearer" = ["accounts:manage"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("account" = Uuid, Path, description = "Account id"),
        ("If-Match" = Option<String>, Header, description = "ETag the delete is based on"),
        DeleteQuery,
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 202, description = "Licenses are being revoked at Apple; the account is removed when they are all released", body = Account),
        (status = 409, description = "Used by a distribution policy or holding licenses, and `revoke_all` was not given (`account-in-use`)"),
        (status = 412, description = "If-Match does not match"),
    )
)]
#[delete("/v1/spaces/{space}/accounts/{account}")]
pub async fn delete_account(
    access: SpaceAccess<needs::AccountsManage, (String, Uuid)>,
    state: web::Data<AppState>,
    query: web::Query<DeleteQuery>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (caller, (space, id)) = access.into_parts();
    let if_match = IfMatch::from_request(&req)?;
    match removal::delete(
        &state,
        &caller.origin(),
        &space,
        id,
        query.revoke_all,
        if_match.versions(),
    )
    .await?
    {
        Deleted::Now => Ok(HttpResponse::NoContent().finish()),
        Deleted::Pending { .. } => {
            let mut conn = state.pool.get().await?;
            let row = load(&mut conn, &space, id).await?;
            Ok(with_etag(
                HttpResponse::Accepted(),
                view(&mut conn, row, &state).await?,
            ))
        }
    }
}

/// Check the token with Apple now and update the status.
///
/// Calls Apple with the stored sToken and records what it says: active, expiring (30 days or less),
/// expired, revoked, invalid, login required, not owned by this deployment, or throttled.
#[utoipa::path(
    tag = "accounts",
    operation_id = "test_account",
    security(("bearer" = ["accounts:manage"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("account" = Uuid, Path, description = "Account id"),
    ),
    responses((status = 200, description = "What Apple said, and the account after it", body = TestResult))
)]
#[post("/v1/spaces/{space}/accounts/{account}/test")]
pub async fn test_account(
    access: SpaceAccess<needs::AccountsManage, (String, Uuid)>,
    state: web::Data<AppState>,
) -> Result<web::Json<TestResult>, ApiError> {
    let (caller, (space, id)) = access.into_parts();
    let (row, report) = checks::test(&state, &caller.origin(), &space, id).await?;
    let mut conn = state.pool.get().await?;
    Ok(web::Json(TestResult {
        report,
        account: view(&mut conn, row, &state).await?,
    }))
}

/// Overwrite another MDM's identity in the token's client config with this deployment's.
///
/// Writes this deployment's identity into the token's client config, so that Apple's notifications
/// come here and Apple writes are allowed again; another MDM using the same token loses it.
#[utoipa::path(
    tag = "accounts",
    operation_id = "reclaim_account",
    security(("bearer" = ["accounts:manage"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("account" = Uuid, Path, description = "Account id"),
    ),
    responses(
        (status = 200, description = "This deployment owns the token again", body = Account),
        (status = 422, description = "Apple refused the token (`stoken-rejected`)"),
        (status = 502, description = "Apple answered with an unexpected error (`apple-error`)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/spaces/{space}/accounts/{account}/reclaim")]
pub async fn reclaim_account(
    access: SpaceAccess<needs::AccountsManage, (String, Uuid)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (caller, (space, id)) = access.into_parts();
    let row = checks::reclaim(&state, &caller.origin(), &space, id).await?;
    let mut conn = state.pool.get().await?;
    Ok(with_etag(
        HttpResponse::Ok(),
        view(&mut conn, row, &state).await?,
    ))
}

/// Replace the account's sToken (same Apple location; another location needs `clear_ledger`).
///
/// A renewed token of the same location keeps the account and its ledger. A token of another
/// location is refused (409 `location-mismatch`) unless `clear_ledger` is true, which forgets the
/// old location's assets and queued work; its assignments stay as history, the live ones
/// finished as `revoked` with the reason.
#[utoipa::path(
    tag = "accounts",
    operation_id = "replace_account_token",
    security(("bearer" = ["accounts:manage"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("account" = Uuid, Path, description = "Account id"),
    ),
    request_body = ReplaceToken,
    responses(
        (status = 200, description = "Token replaced", body = Account),
        (status = 409, description = "The token belongs to another location and `clear_ledger` was not given (`location-mismatch`), or that location is attached elsewhere"),
        (status = 502, description = "Apple answered with an unexpected error (`apple-error`)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[put("/v1/spaces/{space}/accounts/{account}/stoken")]
pub async fn replace_account_token(
    access: SpaceAccess<needs::AccountsManage, (String, Uuid)>,
    state: web::Data<AppState>,
    body: Json<ReplaceToken>,
) -> Result<HttpResponse, ApiError> {
    let (caller, (space, id)) = access.into_parts();
    let mut errors = Vec::new();
    check_stoken(&mut errors, &body.0.stoken);
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let row = attach::replace_token(
        &state,
        &caller.origin(),
        &space,
        id,
        &body.0.stoken,
        body.0.clear_ledger,
    )
    .await?;
    let mut conn = state.pool.get().await?;
    Ok(with_etag(
        HttpResponse::Ok(),
        view(&mut conn, row, &state).await?,
    ))
}

/// The current priority order.
///
/// The ids of the space's accounts, priority 1 first, for `PUT …/account-order`.
#[utoipa::path(
    tag = "accounts",
    operation_id = "get_account_order",
    security(("bearer" = ["licenses:read"])),
    params(("space" = String, Path, description = "Space id")),
    responses((status = 200, description = "Account ids, priority 1 first", body = AccountOrder))
)]
#[get("/v1/spaces/{space}/account-order")]
pub async fn get_account_order(
    access: SpaceAccess<needs::LicensesRead>,
    state: web::Data<AppState>,
) -> Result<web::Json<AccountOrder>, ApiError> {
    let space = access.path;
    let mut conn = state.pool.get().await?;
    require_space(&mut conn, &space).await?;
    let order = store::list(&mut conn, &space)
        .await?
        .into_iter()
        .map(|a| a.id)
        .collect();
    Ok(web::Json(AccountOrder { order }))
}

/// Reorder all accounts of the space at once. Existing licenses are never moved.
///
/// The body must list every account of the space exactly once. Only new allocations follow the new
/// order (A5).
#[utoipa::path(
    tag = "accounts",
    operation_id = "set_account_order",
    security(("bearer" = ["accounts:manage"])),
    params(("space" = String, Path, description = "Space id")),
    request_body = AccountOrder,
    responses((status = 200, description = "The new order", body = AccountList))
)]
#[put("/v1/spaces/{space}/account-order")]
pub async fn set_account_order(
    access: SpaceAccess<needs::AccountsManage>,
    state: web::Data<AppState>,
    body: Json<AccountOrder>,
) -> Result<web::Json<AccountList>, ApiError> {
    let (caller, space) = access.into_parts();
    let rows = order::reorder(&state, &caller.origin(), &space, &body.0.order).await?;
    let mut conn = state.pool.get().await?;
    Ok(web::Json(AccountList {
        items: views(&mut conn, rows, &state).await?,
        next_cursor: None,
    }))
}
