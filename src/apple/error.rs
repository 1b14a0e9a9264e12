//! The one error type of the Apple client, and its classification.
//!
//! Callers decide by [`ErrorClass`], never by number (docs/apple.md, Error classes):
//!
//! | class | numbers / statuses | what the caller does |
//! |---|---|---|
//! | `Auth(Expired)` | 9621 | stop using the account; ask for a new sToken |
//! | `Auth(Invalid)` | 9622 (HTTP 200!), other 401 | stop; the token is not Apple's (or was replaced) |
//! | `Auth(Revoked)` | 9625 | stop; ask for a new sToken |
//! | `Auth(LoginRequired)` | 9601 | stop; an admin must sign in at Apple |
//! | `Auth(BadHeader)` | 9722, token text that cannot be a header | bug or corrupt token |
//! | `RateLimited` | 9646, HTTP 429 | back off (Retry-After if given, else exponential) |
//! | `Transient` | 9603/500, 9729/503, 9644, other 5xx, 408, timeouts, connection errors, `versionId` churn | retry later; honour `retry_after` |
//! | `Validation` | 9602, 9623, 9650, 97xx, other 4xx, requests refused locally | fix the request; retrying won't help |
//! | `NotFound` | 9708, 9609, 404 | the event / user does not exist |
//! | `Forbidden` | 9637, 9647, 403 | this token may not do that |
//! | `Gone` | 9634, 410 | the service was removed |
//! | `Protocol` | undecodable answer, unknown number on a 2xx | alert; Apple changed something |
//!
//! The number wins over the HTTP status (an invalid token arrives as HTTP 200 + 9622).
//! `Retry-After` is parsed as seconds or an HTTP date (docs/apple.md conflict #4: read on every
//! answer, not only 500). No message ever contains the sToken: errors are built from the endpoint
//! name, Apple's `errorMessage` and transport descriptions, none of which include request headers.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::codes;
use super::types::{ErrorInfo, ErrorResponse};

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    /// 9621.
    Expired,
    /// 9622 (or an unexplained 401).
    Invalid,
    /// 9625.
    Revoked,
    /// 9601.
    LoginRequired,
    /// 9722: the `Authorization` header was malformed.
    BadHeader,
}

/// What a caller should do about an [`AppleError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    Auth(AuthFailure),
    RateLimited { retry_after: Option<Duration> },
    Transient { retry_after: Option<Duration> },
    Validation,
    NotFound,
    Forbidden,
    Gone,
    Protocol,
}

impl ErrorClass {
    /// Worth retrying the same request later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ErrorClass::RateLimited { .. } | ErrorClass::Transient { .. }
        )
    }

    /// The wait Apple asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ErrorClass::RateLimited { retry_after } | ErrorClass::Transient { retry_after } => {
                *retry_after
            }
            _ => None,
        }
    }
}

/// Where an [`AppleError`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorOrigin {
    /// Apple answered with an error body (`errorNumber` / `errorMessage`), whatever the status.
    Apple,
    /// Apple answered a non-success status without an error body.
    HttpStatus,
    /// No complete answer within the timeout.
    Timeout,
    /// Connecting or talking to Apple failed.
    Connection,
    /// The answer could not be decoded.
    Decode,
    /// `versionId` kept changing during a paged read.
    VersionChanged,
    /// Refused before sending: the request breaks a documented rule or limit.
    Local,
}

/// A failed Apple call. `Display` reads `Apple GET /assets: <message> (error 9622, HTTP 200)`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct AppleError {
    /// `METHOD /path` of the call, e.g. `POST /assets/associate`.
    pub endpoint: &'static str,
    pub origin: ErrorOrigin,
    /// HTTP status, when Apple answered.
    pub http_status: Option<u16>,
    /// Apple's `errorNumber` (for [`ErrorOrigin::Local`], the number Apple would have used).
    pub error_number: Option<i32>,
    /// Apple's `errorMessage`, or a description of what went wrong.
    pub message: String,
    /// Entities the error applies to, when Apple listed them (boxed to keep the error small).
    pub error_info: Box<ErrorInfo>,
    /// Apple's `Retry-After`, parsed.
    pub retry_after: Option<Duration>,
}

impl fmt::Display for AppleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Apple {}: {}", self.endpoint, self.message)?;
        match (self.error_number, self.http_status) {
            (Some(n), Some(s)) => write!(f, " (error {n}, HTTP {s})"),
            (Some(n), None) => write!(f, " (error {n})"),
            (None, Some(s)) => write!(f, " (HTTP {s})"),
            (None, None) => Ok(()),
        }
    }
}

impl AppleError {
    fn base(endpoint: &'static str, origin: ErrorOrigin, message: String) -> Self {
        AppleError {
            endpoint,
            origin,
            http_status: None,
            error_number: None,
            message,
            error_info: Box::default(),
            retry_after: None,
        }
    }

    /// Apple answered with an error body.
    pub fn from_body(
        endpoint: &'static str,
        status: u16,
        body: ErrorResponse,
        retry_after: Option<Duration>,
    ) -> Self {
        let message = body
            .error_message
            .filter(|m| !m.trim().is_empty())
            .unwrap_or_else(|| {
                body.error_number
                    .map_or("Apple reported an error", codes::message)
                    .to_owned()
            });
        AppleError {
            http_status: Some(status),
            error_number: body.error_number,
            error_info: Box::new(body.error_info),
            retry_after,
            ..Self::base(endpoint, ErrorOrigin::Apple, message)
        }
    }

    /// A non-success status without an error body.
    pub fn from_status(endpoint: &'static str, status: u16, retry_after: Option<Duration>) -> Self {
        AppleError {
            http_status: Some(status),
            retry_after,
            ..Self::base(
                endpoint,
                ErrorOrigin::HttpStatus,
                format!("HTTP {status} without an Apple error body"),
            )
        }
    }

    pub fn timeout(endpoint: &'static str) -> Self {
        Self::base(
            endpoint,
            ErrorOrigin::Timeout,
            "no answer within the timeout".into(),
        )
    }

    pub fn connection(endpoint: &'static str, detail: impl fmt::Display) -> Self {
        Self::base(
            endpoint,
            ErrorOrigin::Connection,
            format!("connection failed: {detail}"),
        )
    }

    pub fn decode(endpoint: &'static str, status: u16, detail: impl fmt::Display) -> Self {
        AppleError {
            http_status: Some(status),
            ..Self::base(
                endpoint,
                ErrorOrigin::Decode,
                format!("undecodable answer: {detail}"),
            )
        }
    }

    pub fn version_changed(endpoint: &'static str, traversals: usize) -> Self {
        Self::base(
            endpoint,
            ErrorOrigin::VersionChanged,
            format!("versionId changed during each of {traversals} paged reads; try again later"),
        )
    }

    /// Refused locally; `number` is the error Apple would have answered.
    pub fn local(endpoint: &'static str, number: Option<i32>, message: impl Into<String>) -> Self {
        AppleError {
            error_number: number,
            ..Self::base(endpoint, ErrorOrigin::Local, message.into())
        }
    }

    /// What the caller should do about it.
    pub fn class(&self) -> ErrorClass {
        let retry_after = self.retry_after;
        match self.origin {
            ErrorOrigin::Timeout | ErrorOrigin::Connection => ErrorClass::Transient { retry_after },
            ErrorOrigin::VersionChanged => ErrorClass::Transient { retry_after: None },
            ErrorOrigin::Decode => ErrorClass::Protocol,
            ErrorOrigin::Local => self
                .error_number
                .and_then(|n| class_of_number(n, None))
                .unwrap_or(ErrorClass::Validation),
            ErrorOrigin::Apple | ErrorOrigin::HttpStatus => self
                .error_number
                .and_then(|n| class_of_number(n, retry_after))
                .unwrap_or_else(|| class_of_status(self.http_status.unwrap_or(0), retry_after)),
        }
    }

    /// Shorthand for `matches!(self.class(), ErrorClass::Auth(_))`.
    pub fn is_auth(&self) -> bool {
        matches!(self.class(), ErrorClass::Auth(_))
    }
}

/// The class of a documented error number (`None` for numbers Apple does not document).
pub fn class_of_number(number: i32, retry_after: Option<Duration>) -> Option<ErrorClass> {
    use codes::*;
    Some(match number {
        LOGIN_REQUIRED => ErrorClass::Auth(AuthFailure::LoginRequired),
        TOKEN_EXPIRED => ErrorClass::Auth(AuthFailure::Expired),
        TOKEN_INVALID => ErrorClass::Auth(AuthFailure::Invalid),
        TOKEN_REVOKED => ErrorClass::Auth(AuthFailure::Revoked),
        BAD_AUTHORIZATION_HEADER => ErrorClass::Auth(AuthFailure::BadHeader),
        TOO_MANY_REQUESTS => ErrorClass::RateLimited { retry_after },
        INTERNAL_ERROR | MAINTENANCE | SERVICE_UNAVAILABLE => ErrorClass::Transient { retry_after },
        EVENT_NOT_FOUND | USER_NOT_FOUND => ErrorClass::NotFound,
        FACILITATOR_NOT_ALLOWED | LEGACY_TOKEN => ErrorClass::Forbidden,
        SERVICE_REMOVED => ErrorClass::Gone,
        INVALID_ARGUMENT
        | INVALID_PUSH_TOKEN
        | BAD_PAGE_INDEX
        | ACCOUNT_NOT_ASSOCIABLE
        | ACCOUNT_ALREADY_ASSOCIATED => ErrorClass::Validation,
        9700..=9799 => ErrorClass::Validation,
        _ => return None,
    })
}

/// The class of an HTTP status when no known number is available.
pub fn class_of_status(status: u16, retry_after: Option<Duration>) -> ErrorClass {
    match status {
        401 => ErrorClass::Auth(AuthFailure::Invalid),
        403 => ErrorClass::Forbidden,
        404 => ErrorClass::NotFound,
        410 => ErrorClass::Gone,
        429 => ErrorClass::RateLimited { retry_after },
        408 | 500..=599 => ErrorClass::Transient { retry_after },
        400..=499 => ErrorClass::Validation,
        _ => ErrorClass::Protocol,
    }
}

/// The longest `Retry-After` honoured. Apple asks for seconds to minutes; a larger value is a
/// broken header, and believing it would block the account for years (or overflow the clock).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// Parses a `Retry-After` value: delay in seconds, or an HTTP date (a past date means "now"),
/// at most [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
    }
    let date = DateTime::parse_from_rfc2822(value).ok()?;
    let wait = date.with_timezone(&Utc) - now;
    Some(wait.to_std().unwrap_or(Duration::ZERO).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn apple(status: u16, number: i32, retry: Option<u64>) -> AppleError {
        AppleError::from_body(
            "GET /assets",
            status,
            ErrorResponse {
                error_number: Some(number),
                error_message: None,
                error_info: ErrorInfo::default(),
            },
            retry.map(Duration::from_secs),
        )
    }

    #[test]
    fn numbers_classify_before_statuses() {
        assert_eq!(
            apple(200, 9622, None).class(),
            ErrorClass::Auth(AuthFailure::Invalid)
        );
        assert_eq!(
            apple(401, 9621, None).class(),
            ErrorClass::Auth(AuthFailure::Expired)
        );
        assert_eq!(
            apple(401, 9625, None).class(),
            ErrorClass::Auth(AuthFailure::Revoked)
        );
        assert_eq!(
            apple(401, 9601, None).class(),
            ErrorClass::Auth(AuthFailure::LoginRequired)
        );
        assert_eq!(
            apple(401, 9722, None).class(),
            ErrorClass::Auth(AuthFailure::BadHeader)
        );
        assert_eq!(
            apple(429, 9646, Some(3)).class(),
            ErrorClass::RateLimited {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(
            apple(503, 9729, Some(120)).class().retry_after(),
            Some(Duration::from_secs(120))
        );
        assert!(apple(500, 9603, None).class().is_retryable());
        assert!(apple(200, 9644, None).class().is_retryable());
        for n in [9602, 9650, 9700, 9702, 9709, 9721, 9727, 9728] {
            assert_eq!(apple(400, n, None).class(), ErrorClass::Validation, "{n}");
        }
        assert_eq!(apple(400, 9708, None).class(), ErrorClass::NotFound);
        assert_eq!(apple(400, 9609, None).class(), ErrorClass::NotFound);
        assert_eq!(apple(403, 9637, None).class(), ErrorClass::Forbidden);
        assert_eq!(apple(403, 9647, None).class(), ErrorClass::Forbidden);
        assert_eq!(apple(410, 9634, None).class(), ErrorClass::Gone);
        // Unknown numbers fall back to the status; on a 2xx that is a protocol problem.
        assert_eq!(apple(400, 1, None).class(), ErrorClass::Validation);
        assert_eq!(apple(200, 1, None).class(), ErrorClass::Protocol);
    }

    #[test]
    fn statuses_without_numbers_and_transport_failures_classify() {
        let s = |status| AppleError::from_status("GET /users", status, None).class();
        assert_eq!(s(401), ErrorClass::Auth(AuthFailure::Invalid));
        assert_eq!(s(404), ErrorClass::NotFound);
        assert_eq!(s(410), ErrorClass::Gone);
        assert_eq!(s(502), ErrorClass::Transient { retry_after: None });
        assert_eq!(s(429), ErrorClass::RateLimited { retry_after: None });
        assert_eq!(s(418), ErrorClass::Validation);
        assert!(AppleError::timeout("GET /users").class().is_retryable());
        assert!(
            AppleError::connection("GET /users", "refused")
                .class()
                .is_retryable()
        );
        assert_eq!(
            AppleError::decode("GET /users", 200, "eof").class(),
            ErrorClass::Protocol
        );
        assert!(
            AppleError::version_changed("GET /users", 3)
                .class()
                .is_retryable()
        );
        assert_eq!(
            AppleError::local("POST /assets/associate", Some(9702), "too many").class(),
            ErrorClass::Validation
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 22 Nov 2026 12:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 22 Nov 2026 11:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        // Absurd values are bounded (a year-long block, or a date past the clock's range).
        assert_eq!(
            parse_retry_after("10000000000000", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn display_names_endpoint_number_and_status() {
        let e = apple(200, 9622, None);
        assert_eq!(
            e.to_string(),
            "Apple GET /assets: Invalid authentication token. (error 9622, HTTP 200)"
        );
    }
}
