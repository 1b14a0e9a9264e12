//! Simulator settings (behaviour that stays until changed) and faults (injected trouble).
//!
//! Both are JSON in the admin API (`/_sim/settings`, `/_sim/faults`) and change at runtime; a
//! patch only touches the fields it names.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// When `tokenExpirationDate` is put in responses (docs/apple.md conflict #1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TokenExpirationMode {
    /// In every response (what every Apple example shows).
    #[default]
    Always,
    /// Only when the token expires within 15 days (what Apple's prose says).
    Within15Days,
}

/// Behaviour of the simulator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimSettings {
    /// Records per page of `/assets`, `/assignments`, `/users`.
    pub page_size: usize,
    /// Time from accepting an associate/disassociate/revoke/users request to completing it.
    pub event_delay_ms: u64,
    /// HTTP status of the 9622 answer to an unknown or invalidated token (Apple: 200).
    pub invalid_token_status: u16,
    pub token_expiration_date: TokenExpirationMode,
    /// Accept `http://` notification URLs (Apple requires https; tests run on localhost).
    pub allow_http_notification_url: bool,
    /// Attempts per notification (Apple: 3).
    pub notification_attempts: u32,
    /// Pause between attempts (Apple: spread over 1–5 minutes).
    pub notification_retry_delay_ms: u64,
    /// Timeout of one delivery attempt, and of the synchronous TEST_NOTIFICATION.
    pub notification_timeout_ms: u64,
    /// Retiring a user releases its revocable licenses (v1 behaviour; v2 unconfirmed).
    pub retire_releases_licenses: bool,
    /// Apple's limits, served by `/service/config` and enforced. `maxRequestPerSecond` 0 turns
    /// rate limiting off.
    pub limits: BTreeMap<String, i64>,
}

impl Default for SimSettings {
    fn default() -> Self {
        let limits = [
            ("maxAssets", 25),
            ("maxUsers", 100),
            ("maxNotificationLength", 512),
            ("maxRevokeClientUserIds", 100),
            ("maxClientUserIds", 1000),
            ("maxSerialNumbers", 1000),
            ("maxRevokeSerialNumbers", 100),
            ("maxRequestPerSecond", 15),
            ("maxSubscriptions", 25),
            ("maxSubscriptionClientUserIds", 1000),
            ("maxMdmNameLength", 100),
            ("maxMdmMetadataLength", 255),
            ("maxMdmIdLength", 100),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        SimSettings {
            page_size: 500,
            event_delay_ms: 100,
            invalid_token_status: 200,
            token_expiration_date: TokenExpirationMode::Always,
            allow_http_notification_url: true,
            notification_attempts: 3,
            notification_retry_delay_ms: 200,
            notification_timeout_ms: 5000,
            retire_releases_licenses: true,
            limits,
        }
    }
}

impl SimSettings {
    /// A limit by Apple's name (0 when unknown).
    pub fn limit(&self, name: &str) -> usize {
        self.limits
            .get(name)
            .copied()
            .and_then(|v| usize::try_from(v).ok())
            .unwrap_or(0)
    }

    /// Applies the fields `patch` names.
    pub fn apply(&mut self, patch: &SettingsPatch) {
        if let Some(v) = patch.page_size {
            self.page_size = v.max(1);
        }
        if let Some(v) = patch.event_delay_ms {
            self.event_delay_ms = v;
        }
        if let Some(v) = patch.invalid_token_status {
            self.invalid_token_status = v;
        }
        if let Some(v) = patch.token_expiration_date {
            self.token_expiration_date = v;
        }
        if let Some(v) = patch.allow_http_notification_url {
            self.allow_http_notification_url = v;
        }
        if let Some(v) = patch.notification_attempts {
            self.notification_attempts = v.max(1);
        }
        if let Some(v) = patch.notification_retry_delay_ms {
            self.notification_retry_delay_ms = v;
        }
        if let Some(v) = patch.notification_timeout_ms {
            self.notification_timeout_ms = v.max(1);
        }
        if let Some(v) = patch.retire_releases_licenses {
            self.retire_releases_licenses = v;
        }
        for (k, v) in &patch.limits {
            self.limits.insert(k.clone(), *v);
        }
    }
}

/// A partial [`SimSettings`]; `limits` entries are merged.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettingsPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_token_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expiration_date: Option<TokenExpirationMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_http_notification_url: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_retry_delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_releases_licenses: Option<bool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, i64>,
}

/// "The next `count` requests answer `errorNumber` with `status`" (e.g. 503/9729 with
/// `Retry-After`). Scoped to one location (by uId) or global.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailRule {
    /// Requests still to fail.
    pub count: u32,
    /// Matching requests let through before the failures start (e.g. 1: the first page of a
    /// paged read succeeds, the following ones fail).
    #[serde(default)]
    pub after: u32,
    #[serde(default = "default_fail_status")]
    pub status: u16,
    #[serde(default = "default_fail_number")]
    pub error_number: i32,
    /// `Retry-After` header, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
    /// Send `Retry-After` as an HTTP date instead of seconds.
    #[serde(default)]
    pub retry_after_http_date: bool,
    /// Only requests with a token of this location (uId); absent = every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Only requests to this endpoint, its path after `/mdm/v2/` (e.g. `users/retire`);
    /// absent = every endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

fn default_fail_status() -> u16 {
    503
}

fn default_fail_number() -> i32 {
    crate::apple::codes::SERVICE_UNAVAILABLE
}

/// A list endpoint's data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Dataset {
    Assets,
    Assignments,
    Users,
}

/// "After each of the next `count` reads of `dataset`, bump its versionId" (as if the data
/// changed between pages).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChurnRule {
    pub dataset: Dataset,
    pub count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// Active faults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Faults {
    /// Added to every Apple API request.
    pub latency_ms: u64,
    /// Fraction (0–1) of requests answering 500/9603.
    pub error_rate: f64,
    /// `Retry-After` on those 500s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate_retry_after_secs: Option<u64>,
    pub fail_next: Vec<FailRule>,
    pub version_churn: Vec<ChurnRule>,
    /// Notifications still to drop (not sent at all).
    pub drop_notifications: u32,
    /// Notifications still to deliver twice.
    pub duplicate_notifications: u32,
}

/// A partial [`Faults`]: scalars replace, `failNext` / `versionChurn` rules are appended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultsPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate_retry_after_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_next: Option<FailRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_churn: Option<ChurnRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_notifications: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_notifications: Option<u32>,
}

impl Faults {
    pub fn apply(&mut self, patch: &FaultsPatch) -> Result<(), String> {
        if let Some(rate) = patch.error_rate
            && !(0.0..=1.0).contains(&rate)
        {
            return Err("errorRate must be between 0 and 1".into());
        }
        if let Some(rule) = &patch.fail_next
            && !(400..=599).contains(&rule.status)
        {
            return Err("failNext.status must be a 4xx or 5xx status".into());
        }
        if let Some(v) = patch.latency_ms {
            self.latency_ms = v;
        }
        if let Some(v) = patch.error_rate {
            self.error_rate = v;
        }
        if let Some(v) = patch.error_rate_retry_after_secs {
            self.error_rate_retry_after_secs = Some(v);
        }
        if let Some(rule) = &patch.fail_next {
            self.fail_next.push(rule.clone());
        }
        if let Some(rule) = &patch.version_churn {
            self.version_churn.push(rule.clone());
        }
        if let Some(v) = patch.drop_notifications {
            self.drop_notifications = v;
        }
        if let Some(v) = patch.duplicate_notifications {
            self.duplicate_notifications = v;
        }
        Ok(())
    }
}
