//! The space's notifications (issue 15, rules N1, N2; docs/notifications.md): license usage
//! crossings, exhaustion and its forecast, token problems — the open ones and their history,
//! newest first, and acknowledging one.
//!
//! - The list is keyset-paged on the id (UUIDv7: raise order; cursor list
//!   `notifications:{space}`), filtered by `state` (`open`, `cleared`, `all`: the default),
//!   `kinds` and `severities` (comma-separated; an unknown one is a 400), `acknowledged` and
//!   `account`.
//! - Acknowledging records who saw it and when; the notification stays open until its
//!   condition ends (acknowledging again changes nothing and answers it as it is).

use actix_web::{get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::spaces::require_space;
use crate::auth::{SpaceAccess, needs};
use crate::domain::notices::{
    ClearReason, NoticeKind, NoticeScope, NoticeState, NoticeStateFilter, Severity,
};
use crate::http::pagination::{PageQuery, next_cursor};
use crate::http::problem::{ApiError, types};
use crate::ledger::notices::{self as store, ListFilter, NoticeRow};
use crate::notices;
use crate::state::AppState;

/// An asset: Apple's `adamId` and pricing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NoticeAsset {
    pub adam_id: String,
    pub pricing_param: String,
}

/// One notification: a condition worth a person's attention, with what to do about it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Notification {
    pub id: Uuid,
    pub kind: NoticeKind,
    pub severity: Severity,
    /// What the figures cover: one asset (over the space's accounts), one account, the space.
    pub scope: NoticeScope,
    /// The account (account scope: usage of the account, its token).
    #[schema(required = true)]
    pub account_id: Option<Uuid>,
    /// The asset (asset scope).
    #[schema(required = true)]
    pub asset: Option<NoticeAsset>,
    /// The threshold crossed: percent for `license.usage` (50, 70, 80, 90, 100), days for
    /// `token.expiring` (30, 14, 7, 3, 1) and `license.exhaustion_forecast` (14, 3).
    #[schema(required = true)]
    pub level: Option<i32>,
    /// What happened, for a person.
    pub message: String,
    /// What to do about it.
    pub action: String,
    /// The figures behind it when it was raised: usage (`owned`, `held`,
    /// `assigned_elsewhere`, `available`, `usage_percent`), token (`expires_at`, `days_left`,
    /// `status`; throttled: `since`, `until`; not synced: `last_synced_at`,
    /// `interval_minutes`), forecast (`days_until_exhausted`, `net_rate_per_day`,
    /// `exhausted_around`).
    #[schema(value_type = Object)]
    pub figures: serde_json::Value,
    pub state: NoticeState,
    pub raised_at: DateTime<Utc>,
    #[schema(required = true)]
    pub cleared_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub cleared_reason: Option<ClearReason>,
    #[schema(required = true)]
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// The caller (JWT `sub`) who acknowledged it.
    #[schema(required = true)]
    pub acknowledged_by: Option<String>,
}

impl From<NoticeRow> for Notification {
    fn from(n: NoticeRow) -> Self {
        Notification {
            id: n.id,
            kind: n.kind,
            severity: n.severity,
            scope: n.scope,
            account_id: n.account_id,
            asset: match (n.adam_id, n.pricing_param) {
                (Some(adam_id), Some(pricing_param)) => Some(NoticeAsset {
                    adam_id,
                    pricing_param,
                }),
                _ => None,
            },
            level: n.level,
            message: n.message,
            action: n.action,
            figures: n.details,
            state: if n.cleared_at.is_some() {
                NoticeState::Cleared
            } else {
                NoticeState::Open
            },
            raised_at: n.raised_at,
            cleared_at: n.cleared_at,
            cleared_reason: n.cleared_reason,
            acknowledged_at: n.acknowledged_at,
            acknowledged_by: n.acknowledged_by,
        }
    }
}

/// A page of notifications.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NotificationPage {
    /// Newest first.
    pub items: Vec<Notification>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NotificationsQuery {
    /// `open` (the condition holds), `cleared` (history) or `all` (default).
    pub state: Option<NoticeStateFilter>,
    /// Only these kinds, comma-separated (e.g. `license.usage,token.expiring`).
    pub kinds: Option<String>,
    /// Only these severities, comma-separated (`info`, `warn`, `alert`).
    pub severities: Option<String>,
    /// Only acknowledged ones (`true`) or not yet acknowledged ones (`false`).
    pub acknowledged: Option<bool>,
    /// Only those about this account (its usage, its token).
    pub account: Option<Uuid>,
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A comma-separated list of a closed vocabulary; 400 naming the unknown value.
fn parse_list<T: std::str::FromStr + Copy>(
    field: &str,
    raw: Option<&str>,
    known: &[T],
    name: fn(T) -> &'static str,
) -> Result<Vec<T>, ApiError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    raw.split(',')
        .map(|v| {
            v.trim().parse::<T>().map_err(|_| {
                ApiError::new(
                    &types::INVALID_PARAMETER,
                    format!(
                        "{field}: unknown value {v:?} (known: {})",
                        known
                            .iter()
                            .map(|k| name(*k))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
        })
        .collect()
}

/// List the space's notifications, newest first.
///
/// License usage per asset, account and space crossing 50, 70, 80, 90 and 100 % (cleared when
/// usage drops below 50 %), an asset exhausted and available again, an exhaustion forecast
/// under 14 and 3 days, and token problems (expiring in 30, 14, 7, 3, 1 days; expired, revoked,
/// invalid, login required, not owned, throttled for more than a minute, not synced for twice
/// the sync interval), each with the action to take. Open ones and their history; filter with
/// `state`, `kinds`, `severities`, `acknowledged` and `account`.
#[utoipa::path(
    tag = "notifications",
    operation_id = "list_notifications",
    security(("bearer" = ["licenses:read"])),
    params(("space" = String, Path, description = "Space id"), NotificationsQuery),
    responses(
        (status = 200, description = "A page of notifications, newest first", body = NotificationPage),
        (status = 400, description = "A cursor this API did not issue for this list, an unknown state, kind or severity, `limit` out of range (`invalid-parameter`)"),
    )
)]
#[get("/v1/spaces/{space}/notifications")]
pub async fn list_notifications(
    access: SpaceAccess<needs::LicensesRead>,
    state: web::Data<AppState>,
    query: web::Query<NotificationsQuery>,
) -> Result<web::Json<NotificationPage>, ApiError> {
    let space = access.path;
    let q = query.into_inner();
    let list = format!("notifications:{space}");
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let before: Option<Uuid> = page.after(&list)?;
    let filter = ListFilter {
        open: match q.state {
            None | Some(NoticeStateFilter::All) => None,
            Some(NoticeStateFilter::Open) => Some(true),
            Some(NoticeStateFilter::Cleared) => Some(false),
        },
        acknowledged: q.acknowledged,
        kinds: parse_list("kinds", q.kinds.as_deref(), NoticeKind::ALL, |k| k.as_str())?,
        severities: parse_list("severities", q.severities.as_deref(), Severity::ALL, |s| {
            s.as_str()
        })?,
        account_id: q.account,
    };
    let mut conn = state.pool.get().await?;
    require_space(&mut conn, &space).await?;
    let rows = store::list(&mut conn, &space, &filter, before, limit).await?;
    let next = next_cursor(&list, rows.len(), limit, rows.last().map(|r| r.id));
    Ok(web::Json(NotificationPage {
        items: rows.into_iter().map(Notification::from).collect(),
        next_cursor: next,
    }))
}

/// Read one notification.
///
/// Open while its condition holds; `cleared_at` and `cleared_reason` say when and why it
/// ended.
#[utoipa::path(
    tag = "notifications",
    operation_id = "get_notification",
    security(("bearer" = ["licenses:read"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("notification" = Uuid, Path, description = "Notification id"),
    ),
    responses((status = 200, description = "The notification", body = Notification))
)]
#[get("/v1/spaces/{space}/notifications/{notification}")]
pub async fn get_notification(
    access: SpaceAccess<needs::LicensesRead, (String, Uuid)>,
    state: web::Data<AppState>,
) -> Result<web::Json<Notification>, ApiError> {
    let (space, id) = access.path;
    let mut conn = state.pool.get().await?;
    store::get(&mut conn, &space, id)
        .await?
        .map(|n| web::Json(Notification::from(n)))
        .ok_or_else(|| ApiError::not_found(format!("notification {id}")))
}

/// Acknowledge a notification.
///
/// Records who saw it and when (`acknowledged_at`, `acknowledged_by`); the notification stays
/// open until its condition ends. Acknowledging again changes nothing and answers the
/// notification as it is.
#[utoipa::path(
    tag = "notifications",
    operation_id = "acknowledge_notification",
    security(("bearer" = ["licenses:write"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("notification" = Uuid, Path, description = "Notification id"),
    ),
    responses((status = 200, description = "The notification, acknowledged", body = Notification))
)]
#[post("/v1/spaces/{space}/notifications/{notification}/acknowledge")]
pub async fn acknowledge_notification(
    access: SpaceAccess<needs::LicensesWrite, (String, Uuid)>,
    state: web::Data<AppState>,
) -> Result<web::Json<Notification>, ApiError> {
    let (caller, (space, id)) = access.into_parts();
    let mut conn = state.pool.get().await?;
    notices::acknowledge(&mut conn, &caller.origin(), &space, id)
        .await?
        .map(|n| web::Json(Notification::from(n)))
        .ok_or_else(|| ApiError::not_found(format!("notification {id}")))
}
