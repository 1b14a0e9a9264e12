//! Cursor pagination: `?limit=&cursor=`; answers carry `next_cursor` (absent on the last page).
//! A cursor is opaque to callers (base64url of `{"l": <list>, "k": <last key seen>}`), so
//! ordering keys can change without breaking clients.
//!
//! A cursor is bound to the list that issued it (`l`, e.g. `accounts:acme`): another list's
//! cursor, one that does not decode, whose key has the wrong shape, or whose key holds a control
//! character (a forged `"\u0000"` used to reach PostgreSQL and fail there) is a 400
//! `invalid-parameter`. Cursors are not signed: a forged cursor of the right shape only moves
//! the start of a page the caller may read anyway.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;

use super::problem::{ApiError, types};

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

/// Page selection.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageQuery {
    pub fn limit(&self) -> Result<i64, ApiError> {
        match self.limit {
            None => Ok(DEFAULT_LIMIT as i64),
            Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n as i64),
            Some(n) => Err(ApiError::new(
                &types::INVALID_PARAMETER,
                format!("limit must be between 1 and {MAX_LIMIT}, not {n}"),
            )),
        }
    }

    /// The decoded cursor key, if a cursor was given; `list` names the list being read and
    /// must be the one the cursor was issued for (see [`next_cursor`]).
    pub fn after<K: DeserializeOwned>(&self, list: &str) -> Result<Option<K>, ApiError> {
        let Some(cursor) = &self.cursor else {
            return Ok(None);
        };
        decode(cursor, list).map(Some).ok_or_else(|| {
            ApiError::new(
                &types::INVALID_PARAMETER,
                "cursor is not a cursor this API issued for this list",
            )
        })
    }
}

#[derive(Serialize)]
struct CursorOut<'a, K> {
    l: &'a str,
    k: K,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CursorIn {
    l: String,
    k: serde_json::Value,
}

fn decode<K: DeserializeOwned>(cursor: &str, list: &str) -> Option<K> {
    if cursor.len() > 1024 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let CursorIn { l, k } = serde_json::from_slice(&bytes).ok()?;
    if l != list || has_control_character(&k) {
        return None;
    }
    serde_json::from_value(k).ok()
}

/// Whether any string in the key holds a control character (keys are ids, never text).
fn has_control_character(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.chars().any(char::is_control),
        Value::Array(items) => items.iter().any(has_control_character),
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k.chars().any(char::is_control) || has_control_character(v)),
        _ => false,
    }
}

/// Encodes the key of the last item of a full page of `list` as the next cursor.
pub fn next_cursor<K: Serialize>(
    list: &str,
    page_len: usize,
    limit: i64,
    last_key: Option<K>,
) -> Option<String> {
    if (page_len as i64) < limit {
        return None;
    }
    let k = last_key?;
    serde_json::to_vec(&CursorOut { l: list, k })
        .ok()
        .map(|bytes| URL_SAFE_NO_PAD.encode(bytes))
}

/// The cursor of position `key` in `list` (a feed's `next`, which is always given).
pub fn cursor_at<K: Serialize>(list: &str, key: K) -> String {
    serde_json::to_vec(&CursorOut { l: list, k: key })
        .map(|bytes| URL_SAFE_NO_PAD.encode(bytes))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_bad_cursor() {
        let c = next_cursor("spaces", 2, 2, Some("b".to_owned())).unwrap();
        let q = PageQuery {
            limit: Some(2),
            cursor: Some(c),
        };
        assert_eq!(q.after::<String>("spaces").unwrap().as_deref(), Some("b"));
        assert_eq!(
            q.after::<String>("policies:acme").unwrap_err().kind().slug,
            "invalid-parameter",
            "another list's cursor"
        );
        assert!(
            next_cursor("spaces", 1, 2, Some("b")).is_none(),
            "short page is the last"
        );
        let cursor = |raw: &str| PageQuery {
            limit: None,
            cursor: Some(raw.to_owned()),
        };
        for raw in [
            "%%%".to_owned(),
            URL_SAFE_NO_PAD.encode("\"\\u0000\""),
            URL_SAFE_NO_PAD.encode(r#"{"l":"spaces","k":"a\u0000"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"l":"spaces","k":"a\u001b[2J"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"l":"spaces","k":7}"#),
            URL_SAFE_NO_PAD.encode(r#"{"l":"spaces","k":"a","x":1}"#),
        ] {
            assert_eq!(
                cursor(&raw)
                    .after::<String>("spaces")
                    .unwrap_err()
                    .kind()
                    .slug,
                "invalid-parameter",
                "{raw}"
            );
        }
        assert!(
            PageQuery {
                limit: Some(0),
                cursor: None
            }
            .limit()
            .is_err()
        );
        assert!(
            PageQuery {
                limit: Some(201),
                cursor: None
            }
            .limit()
            .is_err()
        );
    }
}
