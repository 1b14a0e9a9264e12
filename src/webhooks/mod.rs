//! Signed webhooks (issue 15, rules N3, N6): endpoints per space, fan-out of the space's events
//! (the `events` table, read by `(space, sequence)`) to them, delivery with Standard Webhooks
//! signatures, retries on a fixed schedule, a delivery log, manual redelivery and recovery, and
//! a test ping. docs/webhooks.md is the reader's version.
//!
//! Decisions:
//! - Endpoints ([`endpoints`]): URL (https and public unless `VPP_WEBHOOK_ALLOW_PRIVATE`; see
//!   [`safety`]), event types (a filter from [`catalog`]; empty = all), description, enabled.
//!   A `whsec_` secret is answered once, at creation and on rotation, stored sealed with the
//!   sToken keys (the endpoint id bound in), never logged or answered otherwise; after a
//!   rotation the previous one also signs for `VPP_WEBHOOK_SECRET_OVERLAP_SECS` (24 h).
//! - An endpoint gets the events recorded after it was created (or re-enabled); older ones on
//!   request (`recover`). Disabling or deleting drops its queued deliveries; the log stays.
//! - Delivery ([`delivery`]) goes through the `webhook_deliveries` queue: fan-out is one
//!   set-based statement per look, claims are `FOR UPDATE SKIP LOCKED` leases (a killed
//!   replica's deliveries are sent again after the lease: at least once, with the same
//!   `webhook-id`, the event id). The sender keeps up to `VPP_WEBHOOK_CONCURRENCY` requests in
//!   flight on one keep-alive client and writes outcomes and the log in batches.
//! - Retries: attempts at 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (±20 % jitter; a later
//!   `Retry-After` wins), then the delivery is given up (its log says so). 410 disables the
//!   endpoint at once; an endpoint failing without a success for 5 days is disabled; either
//!   writes a `webhook.disabled` activity row (which the feed turns into an event).

pub mod catalog;
pub mod delivery;
pub mod endpoints;
pub mod safety;
pub mod signing;

use std::time::Duration;

use uuid::Uuid;

use crate::config::WebhookArgs;
use crate::crypto::CryptoError;
use safety::UrlError;

/// Webhook tunables (from `VPP_WEBHOOK_*`).
#[derive(Clone, Debug)]
pub struct Settings {
    pub workers: usize,
    pub concurrency: usize,
    pub timeout: Duration,
    pub allow_private: bool,
    pub log_retention: chrono::Duration,
    /// Multiplies the retry schedule and the disabling window (tests shrink them).
    pub retry_scale: f64,
    /// How long the previous secret also signs after a rotation.
    pub overlap: chrono::Duration,
    pub poll: Duration,
    pub lease: Duration,
}

impl Settings {
    pub fn from_args(args: &WebhookArgs) -> Settings {
        Settings {
            workers: args.webhook_workers as usize,
            concurrency: args.webhook_concurrency as usize,
            timeout: Duration::from_secs(args.webhook_timeout_secs),
            allow_private: args.webhook_allow_private,
            log_retention: chrono::Duration::days(args.webhook_log_retention_days as i64),
            retry_scale: args.webhook_retry_scale,
            overlap: chrono::Duration::seconds(args.webhook_secret_overlap_secs as i64),
            poll: Duration::from_millis(args.webhook_poll_ms),
            // A claim must outlive the send it covers, or another replica sends the same
            // delivery while the first is still waiting for the receiver: at least two
            // timeouts and a margin, whatever `VPP_WEBHOOK_LEASE_SECS` says.
            lease: Duration::from_secs(
                args.webhook_lease_secs
                    .max(2 * args.webhook_timeout_secs + 5),
            ),
        }
    }
}

/// The webhooks' settings and their one HTTP client (keep-alive pool shared by all sends).
pub struct Webhooks {
    pub settings: Settings,
    pub client: reqwest::Client,
}

impl Webhooks {
    /// The delivery client: checked DNS ([`safety::CheckedResolver`]), no redirects, no proxy,
    /// the delivery timeout, HTTP/1.1 keep-alive.
    pub fn new(settings: Settings) -> Result<Webhooks, reqwest::Error> {
        let client = reqwest::Client::builder()
            .dns_resolver(safety::resolver(settings.allow_private))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(settings.concurrency.max(1))
            .tcp_nodelay(true)
            .user_agent(concat!("vpp-broker-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Webhooks { settings, client })
    }
}

/// Why a webhook request was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("unknown event type {0:?}")]
    UnknownEventType(String),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("webhook {0} is disabled; enable it first")]
    Disabled(Uuid),
    #[error("cannot open the endpoint's secret: {0}")]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

/// The associated data a secret is sealed with: the endpoint id, marked as a webhook's so a
/// ciphertext copied to an account row (or back) never opens.
pub fn aad(endpoint: Uuid) -> Vec<u8> {
    let mut aad = b"webhook:".to_vec();
    aad.extend_from_slice(endpoint.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::Settings;
    use crate::config::WebhookArgs;

    #[test]
    fn a_lease_outlives_two_delivery_timeouts() {
        let args = WebhookArgs {
            webhook_timeout_secs: 60,
            webhook_lease_secs: 20,
            ..WebhookArgs::default()
        };
        assert_eq!(Settings::from_args(&args).lease.as_secs(), 125);
        assert_eq!(
            Settings::from_args(&WebhookArgs::default()).lease.as_secs(),
            60
        );
    }
}
