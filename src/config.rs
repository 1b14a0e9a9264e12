//! Command-line and environment configuration (12-factor).
//!
//! Every option reads an environment variable of the same meaning, so the Helm chart, the
//! Dockerfile and a developer shell all configure the service the same way. Values are parsed by
//! clap and then checked by [`validate`](AuthArgs::validate)-style methods at start-up, so a bad
//! setting stops the process with one clear message instead of failing on the first request.
//! Secrets (`DATABASE_URL`, the HS256 secret, the sToken keys) have `hide_env_values` so `--help`
//! never prints them, and are held as [`SecretString`]s, so `Debug` (and any log of these
//! settings) shows `[REDACTED]` instead.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};
use secrecy::{ExposeSecret, SecretString};

/// A setting that cannot work, found before anything starts. Messages name the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var} is not a valid URL: {source}")]
    NotAUrl {
        var: &'static str,
        #[source]
        source: url::ParseError,
    },
    #[error("DATABASE_URL must start with postgres:// or postgresql://, not {0}://")]
    NotPostgres(String),
    #[error("{0} must be an http(s) URL")]
    NotHttp(&'static str),
    #[error("VPP_PUBLIC_URL must be an http(s) URL (Apple requires https)")]
    PublicUrlNotHttp,
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("{0} must be 1 to 100 characters")]
    Length(&'static str),
    #[error(
        "no JWT key configured: set VPP_JWT_HS256_SECRET, VPP_JWT_PUBLIC_KEYS_PEM or VPP_JWT_JWKS_URL"
    )]
    NoJwtKey,
    #[error("VPP_JWT_HS256_SECRET must be at least 32 bytes long")]
    ShortHs256Secret,
    #[error("{0}")]
    Invalid(&'static str),
}

fn parse_url(var: &'static str, text: &str) -> Result<url::Url, ConfigError> {
    url::Url::parse(text).map_err(|source| ConfigError::NotAUrl { var, source })
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log collectors).
    Json,
    /// Human-readable lines (for a terminal).
    Text,
}

/// Logging options, shared by every subcommand.
#[derive(Args, Clone, Debug)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, env = "VPP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json, global = true)]
    pub log_format: LogFormat,
    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `info,vpp_broker=debug`.
    #[arg(long, env = "VPP_LOG", default_value = "info", global = true)]
    pub log_level: String,
}

/// PostgreSQL connection options.
#[derive(Args, Clone, Debug)]
pub struct DbArgs {
    /// PostgreSQL URL of the ledger database, e.g. postgres://user:pass@host:5432/vpp_broker.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: SecretString,
    /// Maximum connections this process keeps open to PostgreSQL.
    #[arg(long, env = "VPP_DB_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_pool_size: u32,
    /// Seconds to wait for a free pooled connection (or a new one) before answering 503.
    #[arg(long, env = "VPP_DB_TIMEOUT_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub db_timeout_secs: u64,
    /// Server-side statement timeout in milliseconds for request-path queries.
    #[arg(long, env = "VPP_DB_STATEMENT_TIMEOUT_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub db_statement_timeout_ms: u64,
}

impl DbArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.db_timeout_secs)
    }

    /// Rejects URLs that are not PostgreSQL URLs before anything tries to connect.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = parse_url("DATABASE_URL", self.database_url.expose_secret())?;
        match url.scheme() {
            "postgres" | "postgresql" => Ok(()),
            other => Err(ConfigError::NotPostgres(other.to_owned())),
        }
    }
}

/// HTTP server options.
#[derive(Args, Clone, Debug)]
pub struct HttpArgs {
    /// Address and port the HTTP API listens on.
    #[arg(long, env = "VPP_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// HTTP worker threads; 0 means one per CPU core.
    #[arg(long, env = "VPP_HTTP_WORKERS", default_value_t = 0)]
    pub http_workers: usize,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    #[arg(long, env = "VPP_BODY_LIMIT_BYTES", default_value_t = 256 * 1024, value_parser = clap::value_parser!(u64).range(1024..=16 * 1024 * 1024))]
    pub body_limit_bytes: u64,
    /// Seconds in-flight requests get to finish after SIGTERM before the process exits.
    #[arg(long, env = "VPP_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub shutdown_timeout_secs: u64,
}

/// Caller authentication: which JWTs are accepted.
///
/// At least one key source must be given: a shared HS256 secret (development), PEM public keys
/// (RS256 / ES256), or a JWKS URL. Algorithms are pinned by key type; `alg: none` and any
/// algorithm without a configured key are refused.
#[derive(Args, Clone, Debug)]
pub struct AuthArgs {
    /// Required `iss` claim of caller JWTs.
    #[arg(long, env = "VPP_JWT_ISSUER")]
    pub jwt_issuer: String,
    /// Required `aud` claim of caller JWTs.
    #[arg(long, env = "VPP_JWT_AUDIENCE")]
    pub jwt_audience: String,
    /// Shared secret for HS256 tokens (at least 32 bytes). Meant for development.
    #[arg(long, env = "VPP_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<SecretString>,
    /// PEM-encoded public keys (RSA for RS256, EC P-256 for ES256); several keys may be
    /// concatenated.
    #[arg(long, env = "VPP_JWT_PUBLIC_KEYS_PEM", hide_env_values = true)]
    pub jwt_public_keys_pem: Option<String>,
    /// URL of a JWKS document (RS256 / ES256 keys), fetched at start and cached.
    #[arg(long, env = "VPP_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// Seconds between JWKS refreshes (an unknown `kid` also triggers one, at most every 30 s).
    #[arg(long, env = "VPP_JWT_JWKS_REFRESH_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=86_400))]
    pub jwt_jwks_refresh_secs: u64,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[arg(long, env = "VPP_JWT_LEEWAY_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=300))]
    pub jwt_leeway_secs: u64,
}

impl AuthArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.jwt_issuer.trim().is_empty() {
            return Err(ConfigError::Empty("VPP_JWT_ISSUER"));
        }
        if self.jwt_audience.trim().is_empty() {
            return Err(ConfigError::Empty("VPP_JWT_AUDIENCE"));
        }
        if self.jwt_hs256_secret.is_none()
            && self.jwt_public_keys_pem.is_none()
            && self.jwt_jwks_url.is_none()
        {
            return Err(ConfigError::NoJwtKey);
        }
        if let Some(secret) = &self.jwt_hs256_secret
            && secret.expose_secret().len() < 32
        {
            return Err(ConfigError::ShortHs256Secret);
        }
        if let Some(url) = &self.jwt_jwks_url {
            let parsed = parse_url("VPP_JWT_JWKS_URL", url)?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(ConfigError::NotHttp("VPP_JWT_JWKS_URL"));
            }
        }
        Ok(())
    }
}

/// The Apple dispatcher: background workers of `serve`.
#[derive(Args, Clone, Debug)]
pub struct DispatchArgs {
    /// Dispatcher workers in this process (0: this process never calls Apple by itself).
    #[arg(long, env = "VPP_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=64))]
    pub workers: u64,
    /// An account's batches of Apple work (one per asset, license type and kind) are sent once
    /// no new work of their kind (association, release) joined any of them for this many
    /// milliseconds (the burst is over; releases also wait for the space's lifecycle events
    /// still to apply) ...
    #[arg(long, env = "VPP_BATCH_QUIET_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub batch_quiet_ms: u64,
    /// ... or a batch once its oldest work waited this many milliseconds (full Apple requests
    /// go out during a burst).
    #[arg(long, env = "VPP_BATCH_MAX_WAIT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub batch_max_wait_ms: u64,
    /// Apple requests in flight per account (paced to Apple's maxRequestPerSecond).
    #[arg(long, env = "VPP_APPLE_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=15))]
    pub apple_concurrency: u64,
    /// Seconds before the first status poll of an Apple event (doubling up to the maximum).
    #[arg(long, env = "VPP_EVENT_POLL_SECS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub event_poll_secs: u64,
    /// Longest wait between status polls of a pending Apple event.
    #[arg(long, env = "VPP_EVENT_POLL_MAX_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub event_poll_max_secs: u64,
    /// Seconds a worker's claim on jobs lasts; a crashed worker's jobs are taken over after it.
    #[arg(long, env = "VPP_JOB_LEASE_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(5..=3600))]
    pub job_lease_secs: u64,
    /// Failed attempts after which an Apple job is no longer retried but set aside as a dead
    /// letter (listed by `GET /v1/spaces/{space}/dead-letters`, retried by hand);
    /// 0: retried forever. With the retry backoff capped at 5 minutes (jittered: 262 s on
    /// average), 100 failed attempts are about 7 hours of failures.
    #[arg(long, env = "VPP_JOB_MAX_ATTEMPTS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub job_max_attempts: u64,
    /// Milliseconds an idle worker sleeps between looks for work.
    #[arg(long, env = "VPP_IDLE_POLL_MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub idle_poll_ms: u64,
    /// Sync workers in this process (0: this process runs no sync; another replica's do).
    /// Across all replicas one sync of an account runs at a time.
    #[arg(long, env = "VPP_SYNC_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=16))]
    pub sync_workers: u64,
    /// Minutes between incremental syncs of an account (assignments since the last versionId).
    #[arg(long, env = "VPP_SYNC_INCREMENTAL_MINUTES", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=10_080))]
    pub sync_incremental_minutes: u64,
    /// Hours between full syncs of an account (jittered per account by up to a tenth).
    #[arg(long, env = "VPP_SYNC_FULL_HOURS", default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=720))]
    pub sync_full_hours: u64,
    /// Seconds between two looks of the sync scheduler for accounts due.
    #[arg(long, env = "VPP_SYNC_SCHEDULE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub sync_schedule_secs: u64,
    /// Days the event feed keeps events (issue 15); a cursor older than that answers 410.
    /// The activity log keeps the history for good.
    #[arg(long, env = "VPP_EVENT_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3650))]
    pub event_retention_days: u64,
    /// Seconds between two evaluations of the notifications (N1 usage, N2 tokens; one replica
    /// at a time). 0: this process evaluates none (another replica's do).
    #[arg(long, env = "VPP_NOTIFICATION_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub notification_secs: u64,
}

impl Default for DispatchArgs {
    fn default() -> Self {
        DispatchArgs {
            workers: 2,
            batch_quiet_ms: 250,
            batch_max_wait_ms: 5000,
            apple_concurrency: 4,
            event_poll_secs: 2,
            event_poll_max_secs: 30,
            job_lease_secs: 60,
            job_max_attempts: 100,
            idle_poll_ms: 200,
            sync_workers: 1,
            sync_incremental_minutes: 15,
            sync_full_hours: 24,
            sync_schedule_secs: 30,
            event_retention_days: 30,
            notification_secs: 30,
        }
    }
}

/// Drift, plans and Reconcile (issue 13; docs/sync.md), and the wait-list's expiry (A12): what
/// the API and the workers share.
#[derive(Args, Clone, Debug)]
pub struct ReconcileArgs {
    /// An assignment pending, associating or revoking for longer than this many minutes is
    /// reported `stuck` by the drift report.
    #[arg(long, env = "VPP_DRIFT_STUCK_MINUTES", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=10_080))]
    pub stuck_minutes: u64,
    /// A plan changes at most this percentage of the account's assignments (at Apple or in
    /// the ledger, whichever is more; at least one) ...
    #[arg(long, env = "VPP_PLAN_CAP_PERCENT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub plan_cap_percent: u64,
    /// ... and never more than this many.
    #[arg(long, env = "VPP_PLAN_CAP_MAX", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub plan_cap_max: u64,
    /// Run Reconcile by itself once a day for every account (plan, then apply; capped like a
    /// manual run). Off by default.
    #[arg(long, env = "VPP_RECONCILE_DAILY", default_value_t = false)]
    pub reconcile_daily: bool,
    /// Reconcile revokes the licenses of subjects the MDM has not seen for this many days
    /// (their `last_seen`); unset: never (subjects whose last sighting is unknown never are).
    #[arg(long, env = "VPP_RECONCILE_UNSEEN_DAYS", value_parser = clap::value_parser!(u64).range(1..=3650))]
    pub reconcile_unseen_days: Option<u64>,
    /// A12: an allocation waiting for a license (`wait_for_license`) leaves the wait-list as
    /// `failed` after this many hours without one.
    #[arg(long, env = "VPP_WAIT_EXPIRY_HOURS", default_value_t = 72, value_parser = clap::value_parser!(u64).range(1..=8760))]
    pub wait_expiry_hours: u64,
}

impl Default for ReconcileArgs {
    fn default() -> Self {
        ReconcileArgs {
            stuck_minutes: 60,
            plan_cap_percent: 10,
            plan_cap_max: 5000,
            reconcile_daily: false,
            reconcile_unseen_days: None,
            wait_expiry_hours: 72,
        }
    }
}

/// Where Apple's license API is.
#[derive(Args, Clone, Debug)]
pub struct AppleArgs {
    /// Base URL of Apple's Apps and Books license API (the simulator's `/mdm/v2` in tests).
    #[arg(
        long,
        env = "VPP_APPLE_BASE_URL",
        default_value = "https://vpp.itunes.apple.com/mdm/v2"
    )]
    pub apple_base_url: String,
    /// Timeout of each Apple request, in seconds.
    #[arg(long, env = "VPP_APPLE_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub apple_timeout_secs: u64,
}

impl AppleArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = parse_url("VPP_APPLE_BASE_URL", &self.apple_base_url)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConfigError::NotHttp("VPP_APPLE_BASE_URL"));
        }
        Ok(())
    }
}

/// How this deployment stores sTokens and presents itself to Apple.
#[derive(Args, Clone, Debug)]
pub struct AccountArgs {
    /// AES-256 keys that encrypt sTokens at rest: `keyid:base64key[,keyid:base64key…]`, the first
    /// encrypts, all decrypt. Generate a key with `openssl rand -base64 32`. Required by `serve`.
    #[arg(long, env = "VPP_TOKEN_KEYS", hide_env_values = true)]
    pub token_keys: Option<SecretString>,
    /// This deployment's id in Apple's mdmInfo (default: generated once, stored in the database).
    #[arg(long, env = "VPP_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// This deployment's name in Apple's mdmInfo (what other MDMs' admins see as the owner).
    #[arg(long, env = "VPP_INSTANCE_NAME", default_value = "vpp-broker")]
    pub instance_name: String,
    /// External base URL (https) where Apple's notifications reach this service, e.g.
    /// <https://vpp-broker.example.com>. Without it the service relies on status polling.
    #[arg(long, env = "VPP_PUBLIC_URL")]
    pub public_url: Option<String>,
}

impl AccountArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(id) = &self.instance_id
            && (id.trim().is_empty() || id.chars().count() > 100)
        {
            return Err(ConfigError::Length("VPP_INSTANCE_ID"));
        }
        if self.instance_name.trim().is_empty() || self.instance_name.chars().count() > 100 {
            return Err(ConfigError::Length("VPP_INSTANCE_NAME"));
        }
        if let Some(public) = &self.public_url {
            let url = parse_url("VPP_PUBLIC_URL", public)?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::PublicUrlNotHttp);
            }
        }
        Ok(())
    }

    /// The public URL without a trailing slash.
    pub fn public_base(&self) -> Option<String> {
        self.public_url
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> AuthArgs {
        AuthArgs {
            jwt_issuer: "iss".into(),
            jwt_audience: "aud".into(),
            jwt_hs256_secret: None,
            jwt_public_keys_pem: None,
            jwt_jwks_url: None,
            jwt_jwks_refresh_secs: 300,
            jwt_leeway_secs: 30,
        }
    }

    #[test]
    fn auth_needs_a_key_source() {
        let err = auth().validate().unwrap_err().to_string();
        assert!(err.contains("no JWT key configured"), "{err}");
    }

    #[test]
    fn short_hs256_secret_is_refused() {
        let mut a = auth();
        a.jwt_hs256_secret = Some("short".into());
        assert!(a.validate().unwrap_err().to_string().contains("32 bytes"));
        a.jwt_hs256_secret = Some("x".repeat(32).into());
        assert!(a.validate().is_ok());
    }

    #[test]
    fn database_url_must_be_postgres() {
        let mut db = DbArgs {
            database_url: "mysql://x/y".into(),
            db_pool_size: 1,
            db_timeout_secs: 1,
            db_statement_timeout_ms: 1000,
        };
        assert!(
            db.validate()
                .unwrap_err()
                .to_string()
                .contains("postgres://")
        );
        db.database_url = "not a url".into();
        assert!(
            db.validate()
                .unwrap_err()
                .to_string()
                .contains("not a valid URL")
        );
        db.database_url = "postgres://u@localhost/db".into();
        assert!(db.validate().is_ok());
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn settings_with_secrets_never_print_them() {
        let db = DbArgs {
            database_url: "postgres://u:hunter2@db/x".into(),
            db_pool_size: 1,
            db_timeout_secs: 1,
            db_statement_timeout_ms: 100,
        };
        let auth = AuthArgs {
            jwt_issuer: "i".into(),
            jwt_audience: "a".into(),
            jwt_hs256_secret: Some("hunter2-hunter2-hunter2-hunter2-x".into()),
            jwt_public_keys_pem: None,
            jwt_jwks_url: None,
            jwt_jwks_refresh_secs: 300,
            jwt_leeway_secs: 5,
        };
        let accounts = AccountArgs {
            token_keys: Some("k1:hunter2".into()),
            instance_id: None,
            instance_name: "n".into(),
            public_url: None,
        };
        for printed in [
            format!("{db:?}"),
            format!("{auth:?}"),
            format!("{accounts:?}"),
        ] {
            assert!(!printed.contains("hunter2"), "{printed}");
            assert!(printed.contains("[REDACTED]"), "{printed}");
        }
    }
}

/// Signed webhooks (issue 15; docs/webhooks.md): delivery workers, URL safety, retries and
/// the delivery log.
#[derive(Args, Clone, Debug)]
pub struct WebhookArgs {
    /// Webhook senders in this process (0: this process sends none; another replica's do).
    #[arg(long, env = "VPP_WEBHOOK_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=8))]
    pub webhook_workers: u64,
    /// Deliveries in flight per sender (keep-alive connections are reused across them).
    #[arg(long, env = "VPP_WEBHOOK_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub webhook_concurrency: u64,
    /// Timeout of one delivery, in seconds.
    #[arg(long, env = "VPP_WEBHOOK_TIMEOUT_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub webhook_timeout_secs: u64,
    /// Allow `http` URLs and private, loopback, link-local, ULA and CGNAT addresses (for
    /// development and tests only: a webhook must not become a way into the cluster).
    #[arg(long, env = "VPP_WEBHOOK_ALLOW_PRIVATE", default_value_t = false)]
    pub webhook_allow_private: bool,
    /// Days the delivery log (one row per attempt) is kept.
    #[arg(long, env = "VPP_WEBHOOK_LOG_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=365))]
    pub webhook_log_retention_days: u64,
    /// For tests: multiplies the retry schedule and the 5-day disabling window (1 = as
    /// documented; 0.001 turns 5 s into 5 ms).
    #[arg(long, env = "VPP_WEBHOOK_RETRY_SCALE", default_value_t = 1.0)]
    pub webhook_retry_scale: f64,
    /// Seconds both secrets sign after a rotation (24 h; shorter only for tests).
    #[arg(long, env = "VPP_WEBHOOK_SECRET_OVERLAP_SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(0..=604_800))]
    pub webhook_secret_overlap_secs: u64,
    /// Milliseconds an idle sender waits between looks for due deliveries (retries, redeliveries);
    /// new events wake it through `NOTIFY vpp_events`. A sender looks at most every 50 ms
    /// unless its last claim was full.
    #[arg(long, env = "VPP_WEBHOOK_POLL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(5..=60_000))]
    pub webhook_poll_ms: u64,
    /// Seconds a sender's claim on deliveries lasts; a killed sender's deliveries are sent
    /// again after it. Never less than twice `VPP_WEBHOOK_TIMEOUT_SECS` plus 5 s.
    #[arg(long, env = "VPP_WEBHOOK_LEASE_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(20..=3600))]
    pub webhook_lease_secs: u64,
}

impl Default for WebhookArgs {
    fn default() -> Self {
        WebhookArgs {
            webhook_workers: 1,
            webhook_concurrency: 64,
            webhook_timeout_secs: 15,
            webhook_allow_private: false,
            webhook_log_retention_days: 30,
            webhook_retry_scale: 1.0,
            webhook_secret_overlap_secs: 86_400,
            webhook_poll_ms: 1000,
            webhook_lease_secs: 60,
        }
    }
}

impl WebhookArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.webhook_retry_scale.is_finite()
            && self.webhook_retry_scale > 0.0
            && self.webhook_retry_scale <= 1.0)
        {
            return Err(ConfigError::Invalid(
                "VPP_WEBHOOK_RETRY_SCALE must be above 0 and at most 1",
            ));
        }
        Ok(())
    }
}
