//! `POST /apple/notifications/{account}`: Apple's notifications for a location (rule T10 in
//! docs/rules.md).
//!
//! Transport only: the bearer token and the request's origin are handed to the settlement use
//! case ([`crate::settle::notifications`], which authenticates, deduplicates, applies and
//! records refusals), and its outcome is answered: 200 when acknowledged (applied, a duplicate,
//! or nothing to do), 401 for a wrong token, 404 for an unknown account, 422 for a refused
//! notification (no usable `notificationId`, a payload that does not decode, a number out of
//! range: the same answer to every retry of an identified one), 500 when applying failed (the
//! notification is forgotten, so Apple's retry applies it).

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, post, web};
use uuid::Uuid;

use crate::apple::types::NotificationEnvelope;
use crate::domain::origin::Origin;
use crate::domain::validation::FieldError;
use crate::http::problem::{ApiError, Problem, types};
use crate::settle::notifications::{self, NotificationError, Rejection, RejectionKind};
use crate::state::AppState;

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
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let origin = Origin::new("apple", crate::http::request::request_id());
    notifications::receive(&state, path.into_inner(), bearer, &body.0, &origin)
        .await
        .map_err(problem)?;
    Ok(HttpResponse::Ok().finish())
}

/// The answer to a notification that was not acknowledged.
fn problem(err: NotificationError) -> ApiError {
    match err {
        NotificationError::UnknownAccount(id) => ApiError::not_found(format!("account {id}")),
        NotificationError::Unauthenticated => ApiError::new(
            &types::UNAUTHORIZED,
            "the notification's bearer token is not this account's",
        ),
        NotificationError::Refused(rejection) => refusal(&rejection),
        NotificationError::Db(e) => e.into(),
        NotificationError::Pool(e) => e.into(),
        e @ (NotificationError::Settle(_)
        | NotificationError::Crypto(_)
        | NotificationError::Encode(_)) => ApiError::internal(e),
    }
}

/// A refused notification's problem (422), naming the refused field.
fn refusal(rejection: &Rejection) -> ApiError {
    let kind = match rejection.kind {
        RejectionKind::InvalidBody => &types::INVALID_BODY,
        RejectionKind::ValidationFailed => &types::VALIDATION_FAILED,
    };
    ApiError::new(kind, format!("{}: {}", rejection.field, rejection.message)).with_errors(vec![
        FieldError {
            field: rejection.field.clone(),
            message: rejection.message.clone(),
        },
    ])
}

/// Apple's notification is not one of this API's documented request bodies (its shape is
/// Apple's, decoded leniently): only its top level is checked to be an object.
impl crate::http::body_shape::BodyShape for NotificationEnvelope {
    fn schema_name() -> Option<std::borrow::Cow<'static, str>> {
        None
    }
}
