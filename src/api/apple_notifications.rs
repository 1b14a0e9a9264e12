//! `POST /apple/notifications/{account}`: Apple's notifications for a location (rule T10).
//!
//! Apple authenticates with `Authorization: Bearer <notificationAuthToken>`, the random token
//! this service gave Apple when it wrote the client config; only its SHA-256 is stored and the
//! comparison is constant-time. Notifications may arrive more than once: each `notificationId`
//! is processed once. ASSET_MANAGEMENT results move assignments like a status poll would;
//! ASSET_COUNT adjusts the asset's total. TEST_NOTIFICATION is acknowledged before any check:
//! Apple sends it while the account is being attached (not stored yet), and it changes
//! nothing. Anything else is acknowledged and ignored, so Apple does not retry it.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, post, web};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use crate::accounts::identity::notification_token_hash;
use crate::apple::types::{
    NotificationEnvelope, NotificationPayload, NotificationResult, NotificationType,
};
use crate::dispatch::events::{self, Results};
use crate::http::problem::{ApiError, Problem, types};
use crate::ledger::accounts as store;
use crate::state::AppState;

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Receive a notification from Apple.
#[utoipa::path(
    tag = "apple",
    operation_id = "receive_apple_notification",
    security(("apple_notification" = [])),
    params(("account" = Uuid, Path, description = "Account id (part of the URL given to Apple)")),
    request_body(content = Object, description = "Apple's notification envelope (notificationId, notificationType, notification, uId)"),
    responses(
        (status = 200, description = "Processed (or a duplicate, ignored)"),
        (status = 401, description = "Missing or wrong bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown account", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/apple/notifications/{account}")]
pub async fn receive_apple_notification(
    state: web::Data<AppState>,
    path: web::Path<Uuid>,
    req: HttpRequest,
    body: crate::http::extract::Json<NotificationEnvelope>,
) -> Result<HttpResponse, ApiError> {
    let account_id = path.into_inner();
    let envelope = body.0;
    if matches!(
        envelope.notification_type,
        NotificationType::TestNotification
    ) {
        // Apple sends it while the client config is being written, before the account is
        // stored; it changes nothing, so it is acknowledged without further checks.
        return Ok(HttpResponse::Ok().finish());
    }
    let mut conn = state.pool.get().await?;
    let account = store::by_id(&mut conn, account_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("account {account_id}")))?;
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(notification_token_hash);
    let authentic = match (&presented, &account.notification_token_hash) {
        (Some(p), Some(stored)) => constant_time_eq(p, stored),
        _ => false,
    };
    if !authentic {
        return Err(ApiError::new(
            &types::UNAUTHORIZED,
            "the notification's bearer token is not this account's",
        ));
    }
    let fresh = diesel::sql_query(
        "INSERT INTO apple_notifications (notification_id, account_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind::<diesel::sql_types::Text, _>(&envelope.notification_id)
    .bind::<diesel::sql_types::Uuid, _>(account_id)
    .execute(&mut conn)
    .await?;
    if fresh == 0 {
        tracing::debug!(notification = %envelope.notification_id, "duplicate Apple notification ignored");
        return Ok(HttpResponse::Ok().finish());
    }
    drop(conn);
    let payload = match envelope.payload() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "undecodable Apple notification payload; acknowledged");
            return Ok(HttpResponse::Ok().finish());
        }
    };
    match payload {
        NotificationPayload::AssetManagement(n) => {
            let Some(event_id) = n.event_id.clone() else {
                return Ok(HttpResponse::Ok().finish());
            };
            let error = n.error.as_ref().map(|e| {
                (
                    e.error_number.unwrap_or(0),
                    e.error_message.clone().unwrap_or_default(),
                )
            });
            let failed = matches!(n.result, Some(NotificationResult::Failure));
            let results = n
                .assignments
                .iter()
                .filter_map(|a| a.serial_number.clone().or_else(|| a.client_user_id.clone()))
                .map(|target| {
                    let outcome = if failed {
                        Some(error.clone().unwrap_or((0, "failure".into())))
                    } else {
                        None
                    };
                    (target, outcome)
                })
                .collect();
            let token = state
                .cipher
                .open(account.id.as_bytes(), &account.sealed_token())
                .map_err(ApiError::internal)?;
            events::apply(&state, &token, &event_id, &Results::Partial(results))
                .await
                .map_err(ApiError::internal)?;
        }
        NotificationPayload::AssetCount(n) => {
            let mut conn = state.pool.get().await?;
            diesel::sql_query(
                "UPDATE assets SET apple_total = GREATEST(0, apple_total + $4), updated_at = now()
                  WHERE account_id = $1 AND adam_id = $2 AND pricing_param = $3",
            )
            .bind::<diesel::sql_types::Uuid, _>(account_id)
            .bind::<diesel::sql_types::Text, _>(&n.adam_id)
            .bind::<diesel::sql_types::Text, _>(n.pricing_param.as_str())
            .bind::<diesel::sql_types::Integer, _>(
                n.count_delta.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
            )
            .execute(&mut conn)
            .await?;
        }
        _ => {}
    }
    Ok(HttpResponse::Ok().finish())
}
