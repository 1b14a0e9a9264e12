//! Notifications from "Apple" to the MDM (docs/apple.md, What it simulates).
//!
//! Event processing and admin hooks put `Outgoing` notifications in an outbox; one sender task
//! delivers them in order: `POST` JSON to the location's `notificationUrl` with
//! `Authorization: Bearer <notificationAuthToken>`. Any 2xx is delivered; otherwise it is retried
//! (`notificationAttempts`, default 3, `notificationRetryDelayMs` apart). The drop/duplicate
//! faults apply per notification. Every attempt is recorded for `GET /_sim/notifications`
//! (without the auth token or the payload).

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::Sim;
use crate::apple::types::{NotificationEnvelope, NotificationType};

/// A notification waiting to be sent.
pub(crate) struct Outgoing {
    pub url: String,
    pub auth_token: String,
    pub envelope: NotificationEnvelope,
}

/// What happened to one delivery attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeliveryOutcome {
    Delivered,
    Failed,
    /// Not sent: the drop fault took it.
    Dropped,
}

/// One delivery attempt, as `GET /_sim/notifications` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    pub notification_id: String,
    pub notification_type: NotificationType,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub outcome: DeliveryOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The second copy sent by the duplicate fault.
    #[serde(default)]
    pub duplicate: bool,
}

/// One POST; `Ok(status)` when the receiver answered.
pub(crate) async fn deliver_once(
    http: &reqwest::Client,
    outgoing: &Outgoing,
    timeout: Duration,
) -> Result<u16, String> {
    let body = serde_json::to_vec(&outgoing.envelope).map_err(|e| e.to_string())?;
    let response = http
        .post(&outgoing.url)
        .header(AUTHORIZATION, format!("Bearer {}", outgoing.auth_token))
        .header(CONTENT_TYPE, "application/json")
        .timeout(timeout)
        .body(body)
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    Ok(response.status().as_u16())
}

/// Delivers the outbox, in order, until the simulator stops.
pub(crate) async fn run_sender(sim: Arc<Sim>, mut outbox: mpsc::UnboundedReceiver<Outgoing>) {
    while let Some(outgoing) = outbox.recv().await {
        let (dropped, duplicated, attempts, delay, timeout) = {
            let mut state = sim.lock();
            let dropped = state.faults.drop_notifications > 0;
            if dropped {
                state.faults.drop_notifications -= 1;
            }
            let duplicated = !dropped && state.faults.duplicate_notifications > 0;
            if duplicated {
                state.faults.duplicate_notifications -= 1;
            }
            (
                dropped,
                duplicated,
                state.settings.notification_attempts.max(1),
                Duration::from_millis(state.settings.notification_retry_delay_ms),
                Duration::from_millis(state.settings.notification_timeout_ms),
            )
        };
        let record = |attempt, outcome, http_status, error, duplicate| DeliveryRecord {
            notification_id: outgoing.envelope.notification_id.clone(),
            notification_type: outgoing.envelope.notification_type.clone(),
            attempt,
            outcome,
            http_status,
            error,
            duplicate,
        };
        if dropped {
            sim.lock()
                .record_delivery(record(0, DeliveryOutcome::Dropped, None, None, false));
            continue;
        }
        let copies = if duplicated { 2 } else { 1 };
        for copy in 0..copies {
            for attempt in 1..=attempts {
                let result = deliver_once(&sim.http, &outgoing, timeout).await;
                let delivered = matches!(result, Ok(s) if (200..300).contains(&s));
                let entry = match result {
                    Ok(status) => record(
                        attempt,
                        if delivered {
                            DeliveryOutcome::Delivered
                        } else {
                            DeliveryOutcome::Failed
                        },
                        Some(status),
                        None,
                        copy > 0,
                    ),
                    Err(e) => record(attempt, DeliveryOutcome::Failed, None, Some(e), copy > 0),
                };
                sim.lock().record_delivery(entry);
                if delivered {
                    break;
                }
                if attempt < attempts {
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}
