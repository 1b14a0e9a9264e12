//! `/v1/spaces/{space}/webhooks`: signed webhooks (issue 15, rules N3, N6). The use cases are
//! [`crate::webhooks`], whose documentation (and docs/webhooks.md) says how delivery works.
//!
//! Decisions:
//! - Managing endpoints needs `accounts:manage` (it is configuration, like accounts and
//!   policies); reading them and their delivery log `licenses:read`.
//! - The secret is answered once: in the 201 of `POST …/webhooks` and the 200 of
//!   `POST …/{id}/rotate-secret` (as `secret`); never by list, get or change.
//! - Bad input is a 422 with a stable type: `webhook-url-refused` (not https, private address,
//!   does not resolve, credentials in it), `unknown-event-type`, or `validation-failed`.
//!   `redeliver` and `recover` of a disabled endpoint are 409 `conflict`; an event the space
//!   does not keep (unknown, another space's, forgotten) is 404.
//! - The list of endpoints is oldest first, keyset-paged on `(created_at, id)`; the delivery
//!   log newest first, keyset-paged on the attempt id (cursor lists `webhooks:{space}` and
//!   `webhook-deliveries:{space}:{id}`).

use actix_web::http::header;
use actix_web::{HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{SpaceAccess, needs};
use crate::http::extract::Json;
use crate::http::pagination::{PageQuery, next_cursor};
use crate::http::problem::{ApiError, types};
use crate::ledger::webhooks::{AttemptRow, EndpointRow};
use crate::state::AppState;
use crate::webhooks::endpoints::{self as usecase, Changes, NewEndpoint};
use crate::webhooks::{WebhookError, delivery};

impl From<WebhookError> for ApiError {
    fn from(err: WebhookError) -> Self {
        match err {
            WebhookError::NotFound(what) => {
                ApiError::new(&types::NOT_FOUND, format!("{what} not found"))
            }
            WebhookError::Url(e) => ApiError::new(&types::WEBHOOK_URL_REFUSED, e.to_string())
                .with_errors(vec![crate::domain::validation::FieldError {
                    field: "url".into(),
                    message: e.to_string(),
                }]),
            e @ WebhookError::UnknownEventType(_) => ApiError::new(
                &types::UNKNOWN_EVENT_TYPE,
                format!("{e}; see the webhooks section of the OpenAPI document for the types"),
            ),
            WebhookError::Invalid { field, message } => ApiError::field(field, message),
            e @ WebhookError::Disabled(_) => ApiError::new(&types::CONFLICT, e.to_string()),
            e @ WebhookError::Crypto(_) => ApiError::internal(e),
            WebhookError::Db(e) => e.into(),
        }
    }
}

/// Body of `POST …/webhooks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "url": "https://mdm.example.com/hooks/vpp",
    "event_types": ["assignment.active", "assignment.failed", "assignment.revoked"],
    "description": "catalog service"
}))]
pub struct WebhookBody {
    /// Where to POST events: `https`, resolving to public addresses only, no credentials, at
    /// most 2,048 characters.
    #[schema(max_length = 2048)]
    pub url: String,
    /// The event types to receive (see the document's `webhooks`); empty or absent: all.
    #[serde(default)]
    #[schema(max_items = 50)]
    pub event_types: Vec<String>,
    /// At most 1,000 characters.
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub description: String,
    /// Deliver to it (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// Body of `PATCH …/webhooks/{id}`: the members given change, the others stay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"enabled": true}))]
pub struct WebhookPatch {
    #[serde(default)]
    #[schema(nullable = false, max_length = 2048)]
    pub url: Option<String>,
    /// Replaces the filter; `[]`: all types.
    #[serde(default)]
    #[schema(nullable = false, max_items = 50)]
    pub event_types: Option<Vec<String>>,
    #[serde(default)]
    #[schema(nullable = false, max_length = 1000)]
    pub description: Option<String>,
    /// `true` re-enables a disabled endpoint: it receives the events from now on (use
    /// `recover` for the ones in between); `false` disables it and drops its queue.
    #[serde(default)]
    #[schema(nullable = false)]
    pub enabled: Option<bool>,
}

/// A webhook endpoint (never its secret).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    pub id: Uuid,
    pub space: String,
    pub url: String,
    /// The types it receives; empty: all.
    pub event_types: Vec<String>,
    pub description: String,
    pub enabled: bool,
    /// Why it is disabled: `manual`, `gone` (it answered 410) or `failing` (5 days of failed
    /// deliveries).
    #[schema(required = true)]
    pub disabled_reason: Option<String>,
    #[schema(required = true)]
    pub disabled_at: Option<DateTime<Utc>>,
    /// Since when its deliveries fail without a success in between.
    #[schema(required = true)]
    pub failing_since: Option<DateTime<Utc>>,
    /// Until when the secret before the last rotation also signs.
    #[schema(required = true)]
    pub previous_secret_signs_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A webhook endpoint with its secret: answered once, at creation and rotation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookWithSecret {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// `whsec_` + base64 of 32 random bytes: the Standard Webhooks signing secret. Shown only
    /// now; store it.
    pub secret: String,
}

/// One page of webhook endpoints.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookPage {
    pub items: Vec<Webhook>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next_cursor: Option<String>,
}

/// One delivery attempt, from the delivery log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryAttempt {
    pub id: i64,
    /// The event (`webhook-id`), or the ping's id.
    pub event_id: Uuid,
    pub event_type: String,
    #[schema(required = true)]
    pub sequence: Option<i64>,
    /// 1 for the first attempt of a delivery.
    pub attempt: i32,
    pub attempted_at: DateTime<Utc>,
    /// A 2xx answer.
    pub delivered: bool,
    /// The HTTP status, when the endpoint answered.
    #[schema(required = true)]
    pub status: Option<i32>,
    pub latency_ms: i32,
    /// The first KiB of the answer's body.
    #[schema(required = true)]
    pub response: Option<String>,
    /// What went wrong before an answer (refused address, timeout, connection).
    #[schema(required = true)]
    pub error: Option<String>,
    /// When the next attempt is due; null when delivered, given up or not retried.
    #[schema(required = true)]
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// One page of the delivery log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryAttempt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next_cursor: Option<String>,
}

/// Filter of the delivery log.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only the attempts of this event.
    pub event_id: Option<Uuid>,
}

/// Body of `POST …/recover`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"since": "2026-12-06T08:00:00Z"}))]
pub struct RecoverBody {
    /// Send again every event recorded since then (kept 30 days) that the filter passes.
    pub since: DateTime<Utc>,
}

/// How many deliveries were queued.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Queued {
    pub queued: i64,
}

/// What a test ping gave.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PingAnswer {
    /// The ping's `webhook-id`.
    pub id: Uuid,
    pub delivered: bool,
    #[schema(required = true)]
    pub status: Option<i32>,
    pub latency_ms: i32,
    #[schema(required = true)]
    pub response: Option<String>,
    #[schema(required = true)]
    pub error: Option<String>,
}

fn view(r: EndpointRow) -> Webhook {
    let now = Utc::now();
    Webhook {
        previous_secret_signs_until: r.previous_until.filter(|u| *u > now),
        id: r.id,
        space: r.space_id,
        url: r.url,
        event_types: r.event_types,
        description: r.description,
        enabled: r.enabled,
        disabled_reason: r.disabled_reason,
        disabled_at: r.disabled_at,
        failing_since: r.failing_since,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

fn attempt_view(a: AttemptRow) -> DeliveryAttempt {
    DeliveryAttempt {
        id: a.id,
        event_id: a.event_id,
        event_type: a.event_type,
        sequence: a.sequence,
        attempt: a.attempt,
        attempted_at: a.attempted_at,
        delivered: a.delivered,
        status: a.status,
        latency_ms: a.latency_ms,
        response: a.response,
        error: a.error,
        next_attempt_at: a.next_attempt_at,
    }
}

/// Subscribe an endpoint to the space's events.
///
/// Creates an endpoint that receives the space's events recorded from now on (all types, or
/// those of `event_types`), each POSTed as the envelope of the document's `webhooks` section
/// and signed with the Standard Webhooks scheme. The answer holds the signing `secret`; it is
/// shown only this once. The URL must be `https` and resolve to public addresses only.
#[utoipa::path(
    tag = "webhooks",
    operation_id = "create_webhook",
    security(("bearer" = ["accounts:manage"])),
    params(("space" = String, Path, description = "Space id")),
    request_body = WebhookBody,
    responses(
        (status = 201, description = "Created; `Location` names it; `secret` is shown only now", body = WebhookWithSecret),
        (status = 404, description = "Unknown space"),
        (status = 422, description = "A URL refused (`webhook-url-refused`), an unknown event type (`unknown-event-type`), or another bad value"),
    )
)]
#[post("/v1/spaces/{space}/webhooks")]
pub async fn create_webhook(
    access: SpaceAccess<needs::AccountsManage>,
    state: web::Data<AppState>,
    body: Json<WebhookBody>,
) -> Result<HttpResponse, ApiError> {
    let (caller, space) = access.into_parts();
    let body = body.0;
    let mut conn = state.pool.get().await?;
    let (row, secret) = usecase::create(
        &state.webhooks,
        &state.cipher,
        &mut conn,
        &space,
        NewEndpoint {
            url: body.url,
            event_types: body.event_types,
            description: body.description,
            enabled: body.enabled,
        },
        &caller.origin(),
    )
    .await?;
    let location = format!("/v1/spaces/{space}/webhooks/{}", row.id);
    use secrecy::ExposeSecret;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(WebhookWithSecret {
            webhook: view(row),
            secret: secret.expose_secret().to_owned(),
        }))
}

/// The space's webhook endpoints.
///
/// Every endpoint of the space (never its secret), oldest first; `limit` (1 to 200, default
/// 50) and `cursor` page through them.
#[utoipa::path(
    tag = "webhooks",
    operation_id = "list_webhooks",
    security(("bearer" = ["licenses:read"])),
    params(("space" = String, Path, description = "Space id"), PageQuery),
    responses(
        (status = 200, description = "A page of endpoints", body = WebhookPage),
        (status = 404, description = "Unknown space"),
    )
)]
#[get("/v1/spaces/{space}/webhooks")]
pub async fn list_webhooks(
    access: SpaceAccess<needs::LicensesRead>,
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<web::Json<WebhookPage>, ApiError> {
    let space = access.path;
    let list = format!("webhooks:{space}");
    let limit = query.limit()?;
    let after: Option<(DateTime<Utc>, Uuid)> = query.after(&list)?;
    let mut conn = state.pool.get().await?;
    let rows = usecase::list(&mut conn, &space, after, limit).await?;
    let next = next_cursor(
        &list,
        rows.len(),
        limit,
        rows.last().map(|r| (r.created_at, r.id)),
    );
    Ok(web::Json(WebhookPage {
        items: rows.into_iter().map(view).collect(),
        next_cursor: next,
    }))
}

/// One webhook endpoint.
///
/// Its settings and state: enabled or why disabled, since when it fails, until when the
/// previous secret still signs. Never the secret.
#[utoipa::path(
    tag = "webhooks",
    operation_id = "get_webhook",
    security(("bearer" = ["licenses:read"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("id" = Uuid, Path, description = "Webhook id"),
    ),
    responses(
        (status = 200, description = "The endpoint", body = Webhook),
        (status = 404, description = "Unknown space or webhook"),
    )
)]
#[get("/v1/spaces/{space}/webhooks/{id}")]
pub async fn get_webhook(
    access: SpaceAccess<needs::LicensesRead, (String, Uuid)>,
    state: web::Data<AppState>,
) -> Result<web::Json<Webhook>, ApiError> {
    let (space, id) = access.path;
    let mut conn = state.pool.get().await?;
    Ok(web::Json(view(usecase::get(&mut conn, &space, id).await?)))
}

/// Change a webhook endpoint.
///
/// Changes the members given (URL, event types, description, enabled). Re-enabling a disabled
/// endpoint starts it at the space's newest event; `recover` sends the ones in between.
/// Disabling drops its queued deliveries.
#[utoipa::path(
    tag = "webhooks",
    operation_id = "update_webhook",
    security(("bearer" = ["accounts:manage"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("id" = Uuid, Path, description = "Webhook id"),
    ),
    request_body = WebhookPatch,
    responses(
        (status = 200, description = "The changed endpoint", body = Webhook),
        (status = 404, description = "Unknown space or webhook"),
        (status = 422, description = "A URL refused (`webhook-url-refused`), an unknown event type (`unknown-event-type`), or another bad value"),
    )
)]
#[patch("/v1/spaces/{space}/webhooks/{id}")]
pub async fn update_webhook(
    access: SpaceAccess<needs::AccountsManage, (String, Uuid)>,
    state: web::Data<AppState>,
    body: Json<WebhookPatch>,
) -> Result<web::Json<Webhook>, ApiError> {
    let (caller, (space, id)) = access.into_parts();
    let body = body.0;
    let mut conn = state.pool.get().await?;
    let row = usecase::update(
        &state.webhooks,
        &mut conn,
        &space,
        id,
        Changes {
            url: body.url,
            event_types: body.event_types,
            description: body.description,
            enabled: body.enabled,
        },
        &caller.origin(),
    )
    .await?;
    Ok(web::Json(view(row)))
}

/// Delete a webhook endpoint.
///
/// It stops receiving events at once (queued deliveries are dropped); its delivery log is
/// kept for its retention.
#[utoipa::path(
    tag = "webhooks",
    operation_id = "delete_webhook",
    security(("bearer" = ["accounts:manage"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("id" = Uuid, Path, description = "Webhook id"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "Unknown space or webhook"),
    )
)]
#[delete("/v1/spaces/{space}/webhooks/{id}")]
pub async fn delete_webhook(
    access: SpaceAccess<needs::AccountsManage, (String, Uuid)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (caller, (space, id)) = access.into_parts();
    let mut conn = state.pool.get().await?;
    usecase::delete(&mut conn, &space, id, &caller.origin()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Rotate a webhook endpoint's secret.
///
/// Answers a new secret (shown only now). For 24 hours both the new and the previous secret
/// sign every message (two signatures in `webhook-signature`), so the receiver can switch
/// without losing a message; then only the new one does.
#[utoipa::path(
    tag = "webhooks",
    operation_id = "rotate_webhook_secret",
    security(("bearer" = ["accounts:manage"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("id" = Uuid, Path, description = "Webhook id"),
    ),
    responses(
        (status = 200, description = "The endpoint and its new `secret`, shown only now", body = WebhookWithSecret),
        (status = 404, description = "Unknown space or webhook"),
    )
)]
#[post("/v1/spaces/{space}/webhooks/{id}/rotate-secret")]
pub async fn rotate_webhook_secret(
    access: SpaceAccess<needs::AccountsManage, (String, Uuid)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (caller, (space, id)) = access.into_parts();
    let mut conn = state.pool.get().await?;
    let (row, secret) = usecase::rotate(
        &state.webhooks,
        &state.cipher,
        &mut conn,
        &space,
        id,
        &caller.origin(),
    )
    .await?;
    use secrecy::ExposeSecret;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(WebhookWithSecret {
            webhook: view(row),
            secret: secret.expose_secret().to_owned(),
        }))
}

/// Send a test ping to a webhook endpoint.
///
/// POSTs a signed `webhook.ping` message (not a space event; `sequence` null) now and answers
/// what the endpoint said. The attempt is logged; it is not retried and never disables the
/// endpoint.
#[utoipa::path(
    tag = "webhooks",
    operation_id = "ping_webhook",
    security(("bearer" = ["accounts:manage"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("id" = Uuid, Path, description = "Webhook id"),
    ),
    responses(
        (status = 200, description = "What the endpoint answered (or why it could not be reached)", body = PingAnswer),
        (status = 404, description = "Unknown space or webhook"),
    )
)]
#[post("/v1/spaces/{space}/webhooks/{id}/ping")]
pub async fn ping_webhook(
    access: SpaceAccess<needs::AccountsManage, (String, Uuid)>,
    state: web::Data<AppState>,
) -> Result<web::Json<PingAnswer>, ApiError> {
    let (space, id) = access.path;
    let mut conn = state.pool.get().await?;
    let result = delivery::ping(&state.webhooks, &state.cipher, &mut conn, &space, id).await?;
    let sent = result.sent;
    Ok(web::Json(PingAnswer {
        id: result.id,
        delivered: sent.delivered(),
        status: sent.status.map(i32::from),
        latency_ms: sent.latency.as_millis().min(i32::MAX as u128) as i32,
        response: sent.response,
        error: sent.error,
    }))
}

/// A webhook endpoint's delivery log.
///
/// One item per attempt (status, latency, the first KiB of the answer, error, when the next
/// attempt is due), newest first, kept 30 days; `event_id` narrows it to one event.
#[utoipa::path(
    tag = "webhooks",
    operation_id = "list_webhook_deliveries",
    security(("bearer" = ["licenses:read"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("id" = Uuid, Path, description = "Webhook id"),
        DeliveryQuery,
    ),
    responses(
        (status = 200, description = "A page of attempts, newest first", body = DeliveryPage),
        (status = 404, description = "Unknown space or webhook"),
    )
)]
#[get("/v1/spaces/{space}/webhooks/{id}/deliveries")]
pub async fn list_webhook_deliveries(
    access: SpaceAccess<needs::LicensesRead, (String, Uuid)>,
    state: web::Data<AppState>,
    query: web::Query<DeliveryQuery>,
) -> Result<web::Json<DeliveryPage>, ApiError> {
    let (space, id) = access.path;
    let query = query.into_inner();
    let page = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    };
    let list = format!("webhook-deliveries:{space}:{id}");
    let limit = page.limit()?;
    let before: Option<i64> = page.after(&list)?;
    let mut conn = state.pool.get().await?;
    let rows = usecase::attempts(&mut conn, &space, id, before, query.event_id, limit).await?;
    let next = next_cursor(&list, rows.len(), limit, rows.last().map(|r| r.id));
    Ok(web::Json(DeliveryPage {
        items: rows.into_iter().map(attempt_view).collect(),
        next_cursor: next,
    }))
}

/// Deliver one event to a webhook endpoint again.
///
/// Queues the event (one the space still keeps) for the endpoint now, whether or not it was
/// delivered before; it is sent with the same `webhook-id`, so a receiver that already has it
/// can tell. `queued` is 0 when a delivery of it was queued already.
#[utoipa::path(
    tag = "webhooks",
    operation_id = "redeliver_webhook_event",
    security(("bearer" = ["accounts:manage"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("id" = Uuid, Path, description = "Webhook id"),
        ("event_id" = Uuid, Path, description = "Event id (the `webhook-id`)"),
    ),
    responses(
        (status = 202, description = "Queued", body = Queued),
        (status = 404, description = "Unknown space, webhook, or an event the space does not keep"),
        (status = 409, description = "The endpoint is disabled (`conflict`)"),
    )
)]
#[post("/v1/spaces/{space}/webhooks/{id}/deliveries/{event_id}/redeliver")]
pub async fn redeliver_webhook_event(
    access: SpaceAccess<needs::AccountsManage, (String, Uuid, Uuid)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (space, id, event) = access.path;
    let mut conn = state.pool.get().await?;
    let queued = usecase::redeliver(&mut conn, &space, id, event).await?;
    Ok(HttpResponse::Accepted().json(Queued {
        queued: i64::from(queued),
    }))
}

/// Send a webhook endpoint every event since a time again.
///
/// Queues every event recorded since `since` (events are kept 30 days) that the endpoint's
/// filter passes, up to the newest it was already given (newer ones come by themselves). For
/// a receiver that lost messages or was down longer than the retries last.
#[utoipa::path(
    tag = "webhooks",
    operation_id = "recover_webhook",
    security(("bearer" = ["accounts:manage"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("id" = Uuid, Path, description = "Webhook id"),
    ),
    request_body = RecoverBody,
    responses(
        (status = 202, description = "How many deliveries were queued", body = Queued),
        (status = 404, description = "Unknown space or webhook"),
        (status = 409, description = "The endpoint is disabled (`conflict`)"),
        (status = 422, description = "`since` is in the future, or not a date-time"),
    )
)]
#[post("/v1/spaces/{space}/webhooks/{id}/recover")]
pub async fn recover_webhook(
    access: SpaceAccess<needs::AccountsManage, (String, Uuid)>,
    state: web::Data<AppState>,
    body: Json<RecoverBody>,
) -> Result<HttpResponse, ApiError> {
    let (space, id) = access.path;
    let mut conn = state.pool.get().await?;
    let queued = usecase::recover(&mut conn, &space, id, body.0.since).await?;
    Ok(HttpResponse::Accepted().json(Queued {
        queued: queued as i64,
    }))
}
