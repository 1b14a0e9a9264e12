//! `Idempotency-Key` (rule A6 in docs/rules.md): the first response to a key is stored in the same
//! transaction as the change it describes, and replayed for every later request with that key.
//!
//! Keys are scoped per space and caller (`sub`), kept 24 hours, 1–255 visible ASCII characters.
//! A second request with the same key but a different body is refused (422
//! `idempotency-key-reused`) rather than silently answered with the first response. Two
//! concurrent requests with one key serialise on the key's row: the second waits for the
//! first to commit, then replays its answer (`Idempotent-Replayed: true`).

use actix_web::HttpRequest;
use diesel_async::AsyncPgConnection;
use sha2::{Digest, Sha256};

use super::problem::{ApiError, types};
use crate::ledger::idempotency_keys as store;

pub const HEADER: &str = "idempotency-key";
pub const REPLAYED: &str = "idempotent-replayed";

/// The key of a request, if it sent one (400 if malformed).
pub fn key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get(HEADER) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .ok()
        .filter(|t| !t.is_empty() && t.len() <= 255 && t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::new(
                &types::BAD_REQUEST,
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )
        })?;
    Ok(Some(text.to_owned()))
}

/// Fingerprint of what was asked (method, path, body).
pub fn fingerprint(req: &HttpRequest, body: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(req.method().as_str().as_bytes());
    h.update(b" ");
    h.update(req.path().as_bytes());
    h.update(b"\n");
    h.update(body);
    h.finalize().to_vec()
}

/// What the key says about this request.
#[derive(Debug)]
pub enum Begin {
    /// First use: go ahead, then call [`finish`] in the same transaction.
    Fresh,
    /// Seen before: answer this.
    Replay {
        status: u16,
        body: serde_json::Value,
    },
}

/// Claims the key inside the caller's transaction.
pub async fn begin(
    conn: &mut AsyncPgConnection,
    space: &str,
    caller: &str,
    key: &str,
    fingerprint: &[u8],
) -> Result<Begin, ApiError> {
    if store::claim(conn, space, caller, key, fingerprint).await? {
        return Ok(Begin::Fresh);
    }
    let stored = store::stored(conn, space, caller, key).await?;
    if stored.request_fingerprint != fingerprint {
        return Err(ApiError::new(
            &types::IDEMPOTENCY_KEY_REUSED,
            "this Idempotency-Key was used for a different request; use a new key",
        ));
    }
    match (stored.status_code, stored.response_body) {
        (Some(status), Some(body)) => Ok(Begin::Replay {
            status: status as u16,
            body,
        }),
        _ => Err(ApiError::new(
            &types::CONFLICT,
            "a request with this Idempotency-Key is still being processed; retry shortly",
        )),
    }
}

/// Stores the response of a fresh key (same transaction as the change).
pub async fn finish(
    conn: &mut AsyncPgConnection,
    space: &str,
    caller: &str,
    key: &str,
    status: u16,
    body: &serde_json::Value,
) -> diesel::QueryResult<()> {
    store::keep_response(conn, space, caller, key, status, body).await
}
