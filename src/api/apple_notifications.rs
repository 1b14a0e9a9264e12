//! `POST /apple/notifications/{account}`: Apple's notifications for a location (rule T10).
//!
//! Apple authenticates with `Authorization: Bearer <notificationAuthToken>`, the random token
//! this service gave Apple when it wrote the client config; only its SHA-256 is stored and the
//! comparison is constant-time. Notifications may arrive more than once: each `notificationId`
//! is processed once (and forgotten again when processing fails, so Apple's retry counts).
//! ASSET_MANAGEMENT results move the assignments of this account's events like a status poll
//! would; ASSET_COUNT adjusts the asset's total. A notification naming another location (`uId`)
//! or another account's event changes nothing: one account's token never reaches another's
//! ledger. TEST_NOTIFICATION is acknowledged before any check:
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
use crate::ledger::accounts::{self as store, AccountRow};
use crate::state::AppState;

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Receive a notification from Apple.
///
/// Apple posts asset, assignment and user notifications here with the notification auth token the
/// service gave it for the account. Notifications are applied once per id; a notification that
/// fails is not remembered, so Apple's retry applies it. Not for MDM callers.
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
    if let Err(e) = process(&state, &account, &envelope).await {
        // Forget the notification, so that Apple's next delivery of it is processed.
        let mut conn = state.pool.get().await?;
        diesel::sql_query("DELETE FROM apple_notifications WHERE notification_id = $1")
            .bind::<diesel::sql_types::Text, _>(&envelope.notification_id)
            .execute(&mut conn)
            .await?;
        return Err(e);
    }
    Ok(HttpResponse::Ok().finish())
}

/// Applies one authenticated, first-seen notification of `account`.
async fn process(
    state: &AppState,
    account: &AccountRow,
    envelope: &NotificationEnvelope,
) -> Result<(), ApiError> {
    if let Some(uid) = &envelope.u_id
        && !uid.is_empty()
        && *uid != account.location_uid
    {
        tracing::warn!(account = %account.id, "Apple notification for another location; ignored");
        return Ok(());
    }
    let payload = match envelope.payload() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "undecodable Apple notification payload; acknowledged");
            return Ok(());
        }
    };
    match payload {
        NotificationPayload::AssetManagement(n) => {
            let Some(event_id) = n.event_id.clone() else {
                return Ok(());
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
            events::apply(
                state,
                &token,
                account.id,
                &event_id,
                &Results::Partial(results),
            )
            .await
            .map_err(ApiError::internal)?;
        }
        NotificationPayload::AssetCount(n) => {
            let mut conn = state.pool.get().await?;
            diesel::sql_query(
                "UPDATE assets
                    SET apple_total = LEAST(GREATEST(0, apple_total::bigint + $4), 2147483647)::int,
                        updated_at = now()
                  WHERE account_id = $1 AND adam_id = $2 AND pricing_param = $3",
            )
            .bind::<diesel::sql_types::Uuid, _>(account.id)
            .bind::<diesel::sql_types::Text, _>(&n.adam_id)
            .bind::<diesel::sql_types::Text, _>(n.pricing_param.as_str())
            .bind::<diesel::sql_types::BigInt, _>(n.count_delta)
            .execute(&mut conn)
            .await?;
        }
        _ => {}
    }
    Ok(())
}
