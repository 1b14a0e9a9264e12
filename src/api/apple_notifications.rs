//! `POST /apple/notifications/{account}`: Apple's notifications for a location (rule T10).
//!
//! Apple authenticates with `Authorization: Bearer <notificationAuthToken>`, the random token
//! this service gave Apple when it wrote the client config; only its SHA-256 is stored and the
//! comparison is constant-time. Notifications may arrive more than once: each `notificationId`
//! is processed once per account (and forgotten again when processing fails, so Apple's retry
//! counts). A notification without an id cannot be deduplicated and is refused (422).
//!
//! A notification whose content cannot be applied — a payload that does not decode, a
//! `countDelta` beyond what a license count can hold — is refused with a 422 and *recorded*:
//! its dedupe row keeps the problem (Apple's retries get the same answer and change nothing)
//! and the activity log gets an `apple.notification_rejected` row with the reason. Such input
//! never reaches PostgreSQL as an out-of-range number (it used to fail there, as a 500, and
//! since failures are forgotten every retry failed the same way).
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
use crate::domain::validation::FieldError;
use crate::http::problem::{ApiError, Problem, ProblemType, types};
use crate::ledger::accounts::{self as store, AccountRow};
use crate::ledger::activity::{self, Activity};
use crate::ledger::origin::Origin;
use crate::state::AppState;

/// Longest notification id kept (Apple's are UUID-sized).
const MAX_NOTIFICATION_ID: usize = 256;

/// Largest `countDelta` magnitude: a license count is an `int`, so no real change is larger.
const MAX_COUNT_DELTA: u64 = i32::MAX as u64;

/// Why a notification's content is refused: the problem it is answered with, every time.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Rejection {
    /// Problem slug (`invalid-body` or `validation-failed`).
    #[serde(rename = "type")]
    kind: String,
    field: String,
    message: String,
}

impl Rejection {
    fn new(kind: &'static ProblemType, field: &str, message: impl Into<String>) -> Self {
        Rejection {
            kind: kind.slug.to_owned(),
            field: field.to_owned(),
            message: message.into(),
        }
    }

    fn to_error(&self) -> ApiError {
        let kind = if self.kind == types::INVALID_BODY.slug {
            &types::INVALID_BODY
        } else {
            &types::VALIDATION_FAILED
        };
        ApiError::new(kind, format!("{}: {}", self.field, self.message)).with_errors(vec![
            FieldError {
                field: self.field.clone(),
                message: self.message.clone(),
            },
        ])
    }
}

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
        (status = 422, description = "No `notificationId` (`invalid-body`), a payload that does not decode (`invalid-body`) or a number out of range (`validation-failed`); refusals of an identified notification are recorded and repeated to its retries", body = Problem, content_type = "application/problem+json"),
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
    let notification_id = envelope.notification_id.as_str();
    if notification_id.trim().is_empty() || notification_id.chars().count() > MAX_NOTIFICATION_ID {
        tracing::warn!(account = %account_id, "Apple notification without a usable id refused");
        return Err(Rejection::new(
            &types::INVALID_BODY,
            "notificationId",
            format!("is required (1 to {MAX_NOTIFICATION_ID} characters): without it a retry cannot be recognised"),
        )
        .to_error());
    }
    let fresh = diesel::sql_query(
        "INSERT INTO apple_notifications (account_id, notification_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind::<diesel::sql_types::Uuid, _>(account_id)
    .bind::<diesel::sql_types::Text, _>(notification_id)
    .execute(&mut conn)
    .await?;
    if fresh == 0 {
        if let Some(rejection) = earlier_rejection(&mut conn, account_id, notification_id).await? {
            tracing::debug!(notification = %notification_id, "retry of a refused Apple notification");
            return Err(rejection.to_error());
        }
        tracing::debug!(notification = %notification_id, "duplicate Apple notification ignored");
        return Ok(HttpResponse::Ok().finish());
    }
    drop(conn);
    let failure = match process(&state, &account, &envelope).await {
        Ok(Ok(())) => return Ok(HttpResponse::Ok().finish()),
        Ok(Err(rejection)) => match record_rejection(&state, &account, &envelope, &rejection).await
        {
            Ok(()) => return Err(rejection.to_error()),
            Err(e) => e,
        },
        Err(e) => e,
    };
    // Forget the notification, so that Apple's next delivery of it is processed.
    let mut conn = state.pool.get().await?;
    diesel::sql_query(
        "DELETE FROM apple_notifications WHERE account_id = $1 AND notification_id = $2",
    )
    .bind::<diesel::sql_types::Uuid, _>(account_id)
    .bind::<diesel::sql_types::Text, _>(notification_id)
    .execute(&mut conn)
    .await?;
    Err(failure)
}

#[derive(diesel::QueryableByName)]
struct StoredRejection {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Jsonb>)]
    rejection: Option<serde_json::Value>,
}

/// The refusal recorded for an already-received notification, if it was refused.
async fn earlier_rejection(
    conn: &mut diesel_async::AsyncPgConnection,
    account_id: Uuid,
    notification_id: &str,
) -> Result<Option<Rejection>, ApiError> {
    let rows: Vec<StoredRejection> = diesel::sql_query(
        "SELECT rejection FROM apple_notifications WHERE account_id = $1 AND notification_id = $2",
    )
    .bind::<diesel::sql_types::Uuid, _>(account_id)
    .bind::<diesel::sql_types::Text, _>(notification_id)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .find_map(|r| r.rejection)
        .and_then(|v| serde_json::from_value(v).ok()))
}

/// Keeps the refusal on the dedupe row and in the activity log, in one transaction.
async fn record_rejection(
    state: &AppState,
    account: &AccountRow,
    envelope: &NotificationEnvelope,
    rejection: &Rejection,
) -> Result<(), ApiError> {
    use diesel_async::AsyncConnection;
    tracing::warn!(
        account = %account.id,
        notification = %envelope.notification_id,
        field = %rejection.field,
        reason = %rejection.message,
        "Apple notification refused"
    );
    let stored = serde_json::to_value(rejection).map_err(ApiError::internal)?;
    let details = serde_json::json!({
        "notification_id": envelope.notification_id,
        "notification_type": envelope.notification_type,
        "field": rejection.field,
        "reason": rejection.message,
    });
    let mut conn = state.pool.get().await?;
    conn.transaction(async |conn| {
        diesel::sql_query(
            "UPDATE apple_notifications SET rejection = $3 WHERE account_id = $1 AND notification_id = $2",
        )
        .bind::<diesel::sql_types::Uuid, _>(account.id)
        .bind::<diesel::sql_types::Text, _>(&envelope.notification_id)
        .bind::<diesel::sql_types::Jsonb, _>(&stored)
        .execute(conn)
        .await?;
        activity::record(
            conn,
            Activity::new(
                &Origin::new("apple", crate::http::context::request_id()),
                "apple.notification_rejected",
            )
                .space(&account.space_id)
                .account(account.id)
                .details(details),
        )
        .await
    })
    .await?;
    Ok(())
}

/// Applies one authenticated, first-seen notification of `account`. `Ok(Err(_))` refuses its
/// content (nothing was applied); `Err(_)` is a failure worth Apple's retry.
async fn process(
    state: &AppState,
    account: &AccountRow,
    envelope: &NotificationEnvelope,
) -> Result<Result<(), Rejection>, ApiError> {
    if let Some(uid) = &envelope.u_id
        && !uid.is_empty()
        && *uid != account.location_uid
    {
        tracing::warn!(account = %account.id, "Apple notification for another location; ignored");
        return Ok(Ok(()));
    }
    let payload = match envelope.payload() {
        Ok(p) => p,
        Err(e) => {
            let text = e.to_string();
            let message = strip_position(&text);
            return Ok(Err(Rejection::new(
                &types::INVALID_BODY,
                "notification",
                format!(
                    "does not decode as {}: {message}",
                    envelope.notification_type
                ),
            )));
        }
    };
    match payload {
        NotificationPayload::AssetManagement(n) => {
            let Some(event_id) = n.event_id.clone() else {
                return Ok(Ok(()));
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
            if n.count_delta.unsigned_abs() > MAX_COUNT_DELTA {
                return Ok(Err(Rejection::new(
                    &types::VALIDATION_FAILED,
                    "notification.countDelta",
                    format!(
                        "{} is out of range (at most {MAX_COUNT_DELTA} either way)",
                        n.count_delta
                    ),
                )));
            }
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
    Ok(Ok(()))
}

/// serde_json appends "at line 1 column 42" to its messages; the position means nothing here.
fn strip_position(message: &str) -> &str {
    message.find(" at line ").map_or(message, |i| &message[..i])
}

/// Apple's notification is not one of this API's documented request bodies (its shape is
/// Apple's, decoded leniently): only its top level is checked to be an object.
impl crate::http::body_shape::BodyShape for NotificationEnvelope {
    fn schema_name() -> Option<std::borrow::Cow<'static, str>> {
        None
    }
}
