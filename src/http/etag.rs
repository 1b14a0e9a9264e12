//! Optimistic concurrency: resources carry a `version`; responses send it as a strong `ETag`
//! (`"<version>"`) and updates honour `If-Match` (strong comparison, `*` matches anything).
//! `If-Match` is optional: a caller that omits it accepts last-writer-wins.

use actix_web::HttpRequest;
use actix_web::http::header::{self, HeaderValue};

use super::problem::{ApiError, types};

/// The `ETag` value of a version.
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

pub fn etag_header(version: i64) -> (header::HeaderName, HeaderValue) {
    (
        header::ETAG,
        HeaderValue::from_str(&etag(version)).unwrap_or(HeaderValue::from_static("\"0\"")),
    )
}

/// What `If-Match` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IfMatch {
    /// No header, or `*`.
    Any,
    /// One of these versions (tags that are not ours never match).
    Versions(Vec<i64>),
}

impl IfMatch {
    /// The versions a conditional write may apply to (`None`: any), as use cases take them.
    pub fn versions(&self) -> Option<&[i64]> {
        match self {
            IfMatch::Any => None,
            IfMatch::Versions(v) => Some(v.as_slice()),
        }
    }

    pub fn from_request(req: &HttpRequest) -> Result<Self, ApiError> {
        let mut versions = Vec::new();
        let mut any_header = false;
        for value in req.headers().get_all(header::IF_MATCH) {
            any_header = true;
            let text = value
                .to_str()
                .map_err(|_| ApiError::new(&types::BAD_REQUEST, "If-Match is not valid ASCII"))?;
            for tag in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if tag == "*" {
                    return Ok(IfMatch::Any);
                }
                if tag.starts_with("W/") {
                    // Weak tags never match under the strong comparison If-Match requires.
                    continue;
                }
                let inner = tag
                    .strip_prefix('"')
                    .and_then(|t| t.strip_suffix('"'))
                    .ok_or_else(|| {
                        ApiError::new(
                            &types::BAD_REQUEST,
                            format!("If-Match value {tag} is not a quoted entity tag"),
                        )
                    })?;
                if let Ok(v) = inner.parse::<i64>() {
                    versions.push(v);
                }
            }
        }
        Ok(if any_header {
            IfMatch::Versions(versions)
        } else {
            IfMatch::Any
        })
    }

    pub fn matches(&self, version: i64) -> bool {
        match self {
            IfMatch::Any => true,
            IfMatch::Versions(v) => v.contains(&version),
        }
    }

    /// The 412 answer for a mismatch.
    pub fn failed(current: i64) -> ApiError {
        ApiError::new(
            &types::PRECONDITION_FAILED,
            format!(
                "If-Match does not match the current ETag {}; fetch the resource again and retry",
                etag(current)
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn parse(values: &[&str]) -> Result<IfMatch, ApiError> {
        let mut req = TestRequest::default();
        for v in values {
            req = req.append_header((header::IF_MATCH, *v));
        }
        IfMatch::from_request(&req.to_http_request())
    }

    #[test]
    fn if_match_forms() {
        assert_eq!(parse(&[]).unwrap(), IfMatch::Any);
        assert_eq!(parse(&["*"]).unwrap(), IfMatch::Any);
        assert_eq!(parse(&["\"3\""]).unwrap(), IfMatch::Versions(vec![3]));
        assert_eq!(
            parse(&["\"3\", \"4\""]).unwrap(),
            IfMatch::Versions(vec![3, 4])
        );
        assert_eq!(parse(&["W/\"3\""]).unwrap(), IfMatch::Versions(vec![]));
        assert!(!parse(&["W/\"3\""]).unwrap().matches(3));
        assert!(parse(&["3"]).is_err());
    }
}
