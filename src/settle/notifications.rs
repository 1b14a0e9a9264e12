//! One notification from Apple for a location (rule T10), as `POST
//! /apple/notifications/{account}` receives it.
//!
//! Apple authenticates with the random bearer token this service gave it when it wrote the
//! client config; only its SHA-256 is stored and the comparison is constant-time. Notifications
//! may arrive more than once: each `notificationId` is processed once per account (and
//! forgotten again when processing fails, so Apple's retry counts). A notification without a
//! usable id cannot be deduplicated and is refused.
//!
//! A notification whose content cannot be applied — a payload that does not decode, a
//! `countDelta` beyond what a license count can hold — is refused and *recorded*: its dedupe
//! row keeps the [`Rejection`] (Apple's retries get the same answer and change nothing) and the
//! activity log gets an `apple.notification_rejected` row with the reason. Such input never
//! reaches PostgreSQL as an out-of-range number.
//!
//! ASSET_MANAGEMENT results move the assignments of this account's events like a status poll
//! would ([`super::apply`]); ASSET_COUNT adjusts the asset's total. A notification naming
//! another location (`uId`) or another account's event changes nothing: one account's token
//! never reaches another's ledger. TEST_NOTIFICATION is acknowledged before any check: Apple
//! sends it while the account is being attached (not stored yet), and it changes nothing.
//! Anything else is acknowledged and ignored, so Apple does not retry it.

use diesel_async::AsyncConnection;
use uuid::Uuid;

use super::{Results, SettleError};
use crate::accounts::identity::notification_token_hash;
use crate::apple::types::{
    NotificationEnvelope, NotificationPayload, NotificationResult, NotificationType,
};
use crate::crypto::CryptoError;
use crate::domain::origin::Origin;
use crate::ledger::accounts::{self as store, AccountRow};
use crate::ledger::activity::{self, Activity};
use crate::ledger::{apple_notifications, asset_counts};
use crate::state::AppState;

/// Longest notification id kept (Apple's are UUID-sized).
pub const MAX_NOTIFICATION_ID: usize = 256;

/// Largest `countDelta` magnitude: a license count is an `int`, so no real change is larger.
pub const MAX_COUNT_DELTA: u64 = i32::MAX as u64;

crate::text_enum! {
    /// How a refused notification is answered (the problem type's slug).
    pub enum RejectionKind {
        /// The body does not decode.
        InvalidBody = "invalid-body",
        /// A value is not acceptable.
        ValidationFailed = "validation-failed",
    }
}

/// Why a notification's content is refused: the answer it gets, every time.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Rejection {
    #[serde(rename = "type")]
    pub kind: RejectionKind,
    pub field: String,
    pub message: String,
}

impl Rejection {
    fn new(kind: RejectionKind, field: &str, message: impl Into<String>) -> Self {
        Rejection {
            kind,
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// Why a notification was not (or not fully) processed.
#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    #[error("account {0} not found")]
    UnknownAccount(Uuid),
    #[error("the notification's bearer token is not this account's")]
    Unauthenticated,
    /// Its content is refused (recorded, when it has an id, for its retries).
    #[error("{}: {}", .0.field, .0.message)]
    Refused(Rejection),
    /// Applying its results failed; Apple's retry applies them.
    #[error(transparent)]
    Settle(#[from] SettleError),
    #[error("cannot read the account's sToken: {0}")]
    Crypto(#[from] CryptoError),
    #[error("cannot record the refusal: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    #[error(transparent)]
    Pool(#[from] diesel_async::pooled_connection::deadpool::PoolError),
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Receives one notification for `account_id`, presented with `bearer` (the token after
/// `Bearer `). `origin` is recorded with a refusal. `Ok` means acknowledged: applied, a
/// duplicate, or nothing to do.
pub async fn receive(
    state: &AppState,
    account_id: Uuid,
    bearer: Option<&str>,
    envelope: &NotificationEnvelope,
    origin: &Origin,
) -> Result<(), NotificationError> {
    if matches!(
        envelope.notification_type,
        NotificationType::TestNotification
    ) {
        // Apple sends it while the client config is being written, before the account is
        // stored; it changes nothing, so it is acknowledged without further checks.
        return Ok(());
    }
    let mut conn = state.pool.get().await?;
    let account = store::by_id(&mut conn, account_id)
        .await?
        .ok_or(NotificationError::UnknownAccount(account_id))?;
    let presented = bearer.map(notification_token_hash);
    let authentic = match (&presented, &account.notification_token_hash) {
        (Some(p), Some(stored)) => constant_time_eq(p, stored),
        _ => false,
    };
    if !authentic {
        return Err(NotificationError::Unauthenticated);
    }
    let notification_id = envelope.notification_id.as_str();
    if notification_id.trim().is_empty() || notification_id.chars().count() > MAX_NOTIFICATION_ID {
        tracing::warn!(account = %account_id, "Apple notification without a usable id refused");
        return Err(NotificationError::Refused(Rejection::new(
            RejectionKind::InvalidBody,
            "notificationId",
            format!(
                "is required (1 to {MAX_NOTIFICATION_ID} characters): without it a retry cannot be recognised"
            ),
        )));
    }
    let fresh = apple_notifications::remember(&mut conn, account_id, notification_id).await?;
    if !fresh {
        if let Some(rejection) = earlier_rejection(&mut conn, account_id, notification_id).await? {
            tracing::debug!(notification = %notification_id, "retry of a refused Apple notification");
            return Err(NotificationError::Refused(rejection));
        }
        tracing::debug!(notification = %notification_id, "duplicate Apple notification ignored");
        return Ok(());
    }
    drop(conn);
    let failure = match process(state, &account, envelope).await {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(rejection)) => {
            match record_rejection(state, &account, envelope, &rejection, origin).await {
                Ok(()) => return Err(NotificationError::Refused(rejection)),
                Err(e) => e,
            }
        }
        Err(e) => e,
    };
    // Forget the notification, so that Apple's next delivery of it is processed.
    let mut conn = state.pool.get().await?;
    apple_notifications::forget(&mut conn, account_id, notification_id).await?;
    Err(failure)
}

/// The refusal recorded for an already-received notification, if it was refused.
async fn earlier_rejection(
    conn: &mut diesel_async::AsyncPgConnection,
    account_id: Uuid,
    notification_id: &str,
) -> Result<Option<Rejection>, NotificationError> {
    Ok(
        apple_notifications::rejection(conn, account_id, notification_id)
            .await?
            .and_then(|v| serde_json::from_value(v).ok()),
    )
}

/// Keeps the refusal on the dedupe row and in the activity log, in one transaction.
async fn record_rejection(
    state: &AppState,
    account: &AccountRow,
    envelope: &NotificationEnvelope,
    rejection: &Rejection,
    origin: &Origin,
) -> Result<(), NotificationError> {
    tracing::warn!(
        account = %account.id,
        notification = %envelope.notification_id,
        field = %rejection.field,
        reason = %rejection.message,
        "Apple notification refused"
    );
    let stored = serde_json::to_value(rejection)?;
    let details = serde_json::json!({
        "notification_id": envelope.notification_id,
        "notification_type": envelope.notification_type,
        "field": rejection.field,
        "reason": rejection.message,
    });
    let mut conn = state.pool.get().await?;
    conn.transaction(async |conn| {
        apple_notifications::set_rejection(conn, account.id, &envelope.notification_id, &stored)
            .await?;
        activity::record(
            conn,
            Activity::new(origin, "apple.notification_rejected")
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
) -> Result<Result<(), Rejection>, NotificationError> {
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
                RejectionKind::InvalidBody,
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
                .open(account.id.as_bytes(), &account.sealed_token())?;
            super::apply(
                state,
                &token,
                account.id,
                &event_id,
                &Results::Partial(results),
            )
            .await?;
        }
        NotificationPayload::AssetCount(n) => {
            if n.count_delta.unsigned_abs() > MAX_COUNT_DELTA {
                return Ok(Err(Rejection::new(
                    RejectionKind::ValidationFailed,
                    "notification.countDelta",
                    format!(
                        "{} is out of range (at most {MAX_COUNT_DELTA} either way)",
                        n.count_delta
                    ),
                )));
            }
            let mut conn = state.pool.get().await?;
            asset_counts::add_to_total(
                &mut conn,
                account.id,
                &n.adam_id,
                n.pricing_param.as_str(),
                n.count_delta,
            )
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
