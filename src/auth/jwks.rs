//! JWKS cache: keys fetched from `VPP_JWT_JWKS_URL`, refreshed on a timer and on demand when a
//! token names an unknown `kid` (at most once every 30 s, so forged kids cannot hammer the IdP).
//! Only RS256 and ES256 (P-256) signing keys are kept.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio_util::sync::CancellationToken;

const MIN_ON_DEMAND_INTERVAL: Duration = Duration::from_secs(30);

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

pub struct JwksCache {
    url: String,
    client: reqwest::Client,
    every: Duration,
    keys: RwLock<Arc<Vec<Key>>>,
    last_attempt: Mutex<Option<Instant>>,
}

/// Why the key set cannot be fetched (or its client built).
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot build the JWKS HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("cannot fetch JWKS: {0}")]
    Fetch(#[source] reqwest::Error),
    #[error("JWKS is not a valid key set: {0}")]
    NotAKeySet(#[source] reqwest::Error),
}

impl JwksCache {
    pub fn new(url: String, refresh_secs: u64) -> Result<Self, JwksError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("vpp-broker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(JwksError::Client)?;
        Ok(JwksCache {
            url,
            client,
            every: Duration::from_secs(refresh_secs),
            keys: RwLock::new(Arc::new(Vec::new())),
            last_attempt: Mutex::new(None),
        })
    }

    pub fn has_keys(&self) -> bool {
        self.keys.read().map(|k| !k.is_empty()).unwrap_or(false)
    }

    /// Keys usable for `alg`; with a `kid`, only the key of that id.
    pub fn keys_for(&self, alg: Algorithm, kid: Option<&str>) -> Vec<DecodingKey> {
        let keys = match self.keys.read() {
            Ok(k) => Arc::clone(&k),
            Err(_) => return Vec::new(),
        };
        keys.iter()
            .filter(|k| k.alg == alg)
            .filter(|k| match kid {
                Some(kid) => k.kid.as_deref() == Some(kid),
                None => true,
            })
            .map(|k| k.key.clone())
            .collect()
    }

    /// Fetches the key set now. Returns how many usable keys it holds.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        if let Ok(mut last) = self.last_attempt.lock() {
            *last = Some(Instant::now());
        }
        let set: JwkSet = self
            .client
            .get(&self.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(JwksError::Fetch)?
            .json()
            .await
            .map_err(JwksError::NotAKeySet)?;
        let keys: Vec<Key> = set
            .keys
            .iter()
            .filter(|jwk| !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)))
            .filter_map(|jwk| {
                let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                    (Some(KeyAlgorithm::RS256), AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                    (Some(KeyAlgorithm::ES256), AlgorithmParameters::EllipticCurve(p))
                        if p.curve == EllipticCurve::P256 =>
                    {
                        Algorithm::ES256
                    }
                    (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                    (None, AlgorithmParameters::EllipticCurve(p))
                        if p.curve == EllipticCurve::P256 =>
                    {
                        Algorithm::ES256
                    }
                    _ => return None,
                };
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some(Key {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                })
            })
            .collect();
        let n = keys.len();
        if let Ok(mut slot) = self.keys.write() {
            *slot = Arc::new(keys);
        }
        tracing::info!(keys = n, "JWKS refreshed");
        Ok(n)
    }

    /// Refreshes unless the last attempt was under 30 s ago. True if it refreshed successfully.
    pub async fn refresh_if_allowed(&self) -> bool {
        let allowed = self
            .last_attempt
            .lock()
            .map(|last| last.is_none_or(|t| t.elapsed() >= MIN_ON_DEMAND_INTERVAL))
            .unwrap_or(false);
        if !allowed {
            return false;
        }
        match self.refresh().await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "JWKS refresh failed");
                false
            }
        }
    }

    /// Refreshes every `refresh_secs` (every 5 s while no key is loaded) until cancelled.
    pub fn spawn_refresher(self: Arc<Self>, cancel: CancellationToken) {
        tokio::spawn(async move {
            loop {
                let wait = if self.has_keys() {
                    self.every
                } else {
                    Duration::from_secs(5)
                };
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                if let Err(e) = self.refresh().await {
                    tracing::warn!(error = %e, "JWKS refresh failed");
                }
            }
        });
    }
}
