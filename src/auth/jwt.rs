//! JWT verification with pinned algorithms.
//!
//! Accepted algorithms follow from the configured keys and nothing else: HS256 only when a
//! shared secret is set, RS256 for RSA keys, ES256 for P-256 keys (PEM or JWKS). The header's
//! `alg` picks among those; `none` and every other algorithm are refused before any signature
//! work. `exp`, `nbf`, `iss`, `aud` and `sub` are required.

use std::collections::BTreeSet;
use std::sync::Arc;

use actix_web::http::header::{self, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::jwks::JwksCache;
use super::{Caller, Scope, SpaceGrant};
use crate::config::AuthArgs;
use crate::http::problem::{ApiError, types};

/// Builds the 401 problem with an RFC 6750 `WWW-Authenticate` challenge.
pub fn unauthorized(detail: &str) -> ApiError {
    let challenge = format!(
        "Bearer realm=\"vpp-broker\", error=\"invalid_token\", error_description=\"{}\"",
        detail.replace('"', "'")
    );
    ApiError::new(&types::UNAUTHORIZED, detail).with_header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&challenge).unwrap_or(HeaderValue::from_static("Bearer")),
    )
}

fn missing() -> ApiError {
    ApiError::new(
        &types::UNAUTHORIZED,
        "this operation needs an `Authorization: Bearer <JWT>` header",
    )
    .with_header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"vpp-broker\""),
    )
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: Option<ScopeClaim>,
    #[serde(default)]
    spaces: Vec<String>,
}

pub struct Authenticator {
    issuer: String,
    audience: String,
    leeway: u64,
    hs256: Option<DecodingKey>,
    pem_keys: Vec<(Algorithm, DecodingKey)>,
    jwks: Option<Arc<JwksCache>>,
}

impl Authenticator {
    /// Builds the authenticator; fetches the JWKS once if configured (a failed first fetch is
    /// logged and retried by the refresher, tokens needing it get 503 meanwhile).
    pub async fn from_args(args: &AuthArgs) -> Result<Self, AuthSetupError> {
        args.validate()?;
        let hs256 = args
            .jwt_hs256_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.expose_secret().as_bytes()));
        let pem_keys = match &args.jwt_public_keys_pem {
            Some(pem) => parse_pem_keys(pem)?,
            None => Vec::new(),
        };
        let jwks = match &args.jwt_jwks_url {
            Some(url) => {
                let cache = Arc::new(JwksCache::new(url.clone(), args.jwt_jwks_refresh_secs)?);
                if let Err(e) = cache.refresh().await {
                    tracing::warn!(error = %e, "first JWKS fetch failed; will retry");
                }
                Some(cache)
            }
            None => None,
        };
        Ok(Authenticator {
            issuer: args.jwt_issuer.clone(),
            audience: args.jwt_audience.clone(),
            leeway: args.jwt_leeway_secs,
            hs256,
            pem_keys,
            jwks,
        })
    }

    /// The JWKS cache, for the background refresher.
    pub fn jwks(&self) -> Option<Arc<JwksCache>> {
        self.jwks.clone()
    }

    fn accepts(&self, alg: Algorithm) -> bool {
        match alg {
            Algorithm::HS256 => self.hs256.is_some(),
            Algorithm::RS256 | Algorithm::ES256 => {
                self.pem_keys.iter().any(|(a, _)| *a == alg) || self.jwks.is_some()
            }
            _ => false,
        }
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        v.validate_exp = true;
        v.validate_nbf = true;
        v.leeway = self.leeway;
        v
    }

    /// Verifies `Authorization` and returns the caller, or a 401 (503 if keys are unavailable).
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, ApiError> {
        let value = authorization.ok_or_else(missing)?;
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Err(unauthorized(
                    "the Authorization header must use the Bearer scheme",
                ));
            }
        };
        if token.is_empty() {
            return Err(unauthorized("the bearer token is empty"));
        }
        let header = decode_header(token).map_err(|_| {
            unauthorized("the bearer token is not a well-formed JWT with a supported algorithm")
        })?;
        if !self.accepts(header.alg) {
            return Err(unauthorized(&format!(
                "tokens signed with {:?} are not accepted",
                header.alg
            )));
        }
        let validation = self.validation(header.alg);
        let mut last = ErrorKind::InvalidSignature;
        for key in self
            .candidate_keys(header.alg, header.kid.as_deref())
            .await?
        {
            match decode::<Claims>(token, &key, &validation) {
                Ok(data) => {
                    let sub = &data.claims.sub;
                    if sub.is_empty() || sub.len() > MAX_SUBJECT_BYTES || sub.contains('\0') {
                        return Err(unauthorized(&format!(
                            "the token's `sub` must be 1 to {MAX_SUBJECT_BYTES} bytes without NUL"
                        )));
                    }
                    return Ok(caller_from(data.claims));
                }
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => {
                    last = e.into_kind();
                    break;
                }
            }
        }
        Err(unauthorized(&describe(&last)))
    }

    async fn candidate_keys(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Vec<DecodingKey>, ApiError> {
        if alg == Algorithm::HS256 {
            return Ok(self.hs256.iter().cloned().collect());
        }
        let mut keys: Vec<DecodingKey> = self
            .pem_keys
            .iter()
            .filter(|(a, _)| *a == alg)
            .map(|(_, k)| k.clone())
            .collect();
        if let Some(jwks) = &self.jwks {
            let mut found = jwks.keys_for(alg, kid);
            if found.is_empty() && kid.is_some() && jwks.refresh_if_allowed().await {
                found = jwks.keys_for(alg, kid);
            }
            if found.is_empty() && keys.is_empty() && !jwks.has_keys() {
                return Err(ApiError::new(
                    &types::UNAVAILABLE,
                    "the signing keys (JWKS) are not available yet; retry later",
                ));
            }
            keys.extend(found);
        }
        Ok(keys)
    }
}

/// Longest accepted `sub`: it is recorded as the actor of every change and keys the
/// idempotency store (PostgreSQL's index entries are limited to about 2.7 kB).
pub const MAX_SUBJECT_BYTES: usize = 255;

fn caller_from(claims: Claims) -> Caller {
    let words: Vec<String> = match claims.scope {
        None => Vec::new(),
        Some(ScopeClaim::Text(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(ScopeClaim::List(l)) => l,
    };
    // Scopes meant for other services are ignored.
    let scopes: BTreeSet<Scope> = words.iter().filter_map(|w| w.parse().ok()).collect();
    let spaces = if claims.spaces.iter().any(|s| s == "*") {
        SpaceGrant::All
    } else {
        SpaceGrant::Only(claims.spaces.into_iter().collect())
    };
    Caller {
        subject: claims.sub,
        scopes,
        spaces,
    }
}

fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => "the token's issuer (iss) is not accepted".into(),
        ErrorKind::InvalidAudience => "the token's audience (aud) is not accepted".into(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::InvalidAlgorithm => "the token's algorithm does not match its key".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("the token has no `{c}` claim"),
        ErrorKind::InvalidClaimFormat(c) => format!("the token's `{c}` claim is malformed"),
        ErrorKind::Json(_) => "the token's claims are malformed".into(),
        _ => "the token is not valid".into(),
    }
}

/// Why the authenticator cannot be set up from its settings.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("VPP_JWT_PUBLIC_KEYS_PEM key #{0} is neither an RSA nor an EC public key")]
    NotAPublicKey(usize),
    #[error("VPP_JWT_PUBLIC_KEYS_PEM holds no PEM block")]
    NoPemBlock,
    #[error(transparent)]
    Jwks(#[from] super::jwks::JwksError),
}

/// Parses one or more concatenated PEM public keys; RSA keys serve RS256, EC keys ES256.
pub fn parse_pem_keys(text: &str) -> Result<Vec<(Algorithm, DecodingKey)>, AuthSetupError> {
    let mut keys = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if line.starts_with("-----END") {
            let block = std::mem::take(&mut current);
            if let Ok(key) = DecodingKey::from_rsa_pem(block.as_bytes()) {
                keys.push((Algorithm::RS256, key));
            } else if let Ok(key) = DecodingKey::from_ec_pem(block.as_bytes()) {
                keys.push((Algorithm::ES256, key));
            } else {
                return Err(AuthSetupError::NotAPublicKey(keys.len() + 1));
            }
        }
    }
    if keys.is_empty() {
        return Err(AuthSetupError::NoPemBlock);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_to_caller() {
        let c = caller_from(Claims {
            sub: "svc".into(),
            scope: Some(ScopeClaim::Text("licenses:read other:thing admin".into())),
            spaces: vec!["a".into()],
        });
        assert!(c.scopes.contains(&Scope::Admin));
        assert_eq!(c.scopes.len(), 2);
        assert_eq!(c.spaces, SpaceGrant::Only(["a".to_owned()].into()));
        let all = caller_from(Claims {
            sub: "svc".into(),
            scope: Some(ScopeClaim::List(vec!["licenses:write".into()])),
            spaces: vec!["*".into()],
        });
        assert_eq!(all.spaces, SpaceGrant::All);
    }

    #[test]
    fn pem_parsing_rejects_garbage() {
        assert!(parse_pem_keys("nothing here").is_err());
        assert!(
            parse_pem_keys("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").is_err()
        );
    }
}
