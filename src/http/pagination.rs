//! Cursor pagination: `?limit=&cursor=`; answers carry `next_cursor` (absent on the last page).
//! A cursor is opaque to callers (base64url of the last key seen), so ordering keys can change
//! without breaking clients. A cursor that does not decode is a 400 `invalid-parameter`.

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

    /// The decoded cursor key, if a cursor was given.
    pub fn after<K: DeserializeOwned>(&self) -> Result<Option<K>, ApiError> {
        let Some(cursor) = &self.cursor else {
            return Ok(None);
        };
        let bad = || {
            ApiError::new(
                &types::INVALID_PARAMETER,
                "cursor is not a cursor this API issued",
            )
        };
        let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
        serde_json::from_slice(&bytes).map(Some).map_err(|_| bad())
    }
}

/// Encodes the key of the last item of a full page as the next cursor.
pub fn next_cursor<K: Serialize>(
    page_len: usize,
    limit: i64,
    last_key: Option<K>,
) -> Option<String> {
    if (page_len as i64) < limit {
        return None;
    }
    let key = last_key?;
    serde_json::to_vec(&key)
        .ok()
        .map(|bytes| URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_bad_cursor() {
        let c = next_cursor(2, 2, Some("b".to_owned())).unwrap();
        let q = PageQuery {
            limit: Some(2),
            cursor: Some(c),
        };
        assert_eq!(q.after::<String>().unwrap().as_deref(), Some("b"));
        assert!(
            next_cursor(1, 2, Some("b")).is_none(),
            "short page is the last"
        );
        let bad = PageQuery {
            limit: None,
            cursor: Some("%%%".into()),
        };
        assert_eq!(
            bad.after::<String>().unwrap_err().kind().slug,
            "invalid-parameter"
        );
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
