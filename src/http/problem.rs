//! RFC 9457 `application/problem+json` errors.
//!
//! Every failure a client can see has a [`ProblemType`] with a stable `type` URI
//! (`urn:vpp-broker:problem:<slug>`), an HTTP status and a title. Handlers return
//! [`ApiError`]; its `ResponseError` impl renders the problem, adds the request id, and logs
//! 5xx causes once (with the request id from the surrounding span). Internal details never reach
//! the body of a 500.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use super::request;
use crate::domain::validation::FieldError;

/// Prefix of every problem `type`.
pub const TYPE_PREFIX: &str = "urn:vpp-broker:problem:";

/// A kind of failure: stable slug, HTTP status and title.
#[derive(Debug, PartialEq, Eq)]
pub struct ProblemType {
    pub slug: &'static str,
    pub status: u16,
    pub title: &'static str,
}

impl ProblemType {
    pub fn type_uri(&self) -> String {
        format!("{TYPE_PREFIX}{}", self.slug)
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

macro_rules! problem_types {
    ($( $(#[$doc:meta])* $name:ident = ($slug:literal, $status:literal, $title:literal); )+) => {
        $( $(#[$doc])* pub const $name: ProblemType = ProblemType { slug: $slug, status: $status, title: $title }; )+
        /// Every problem type the service can answer with.
        pub const ALL: &[&ProblemType] = &[$(&$name),+];
    };
}

/// The catalogue of problem types. Adding one here is the only way to answer a new failure.
pub mod types {
    use super::ProblemType;

    problem_types! {
        /// The body is not syntactically valid JSON.
        MALFORMED_JSON = ("malformed-json", 400, "Malformed JSON body");
        /// A path segment or query parameter has the wrong format.
        INVALID_PARAMETER = ("invalid-parameter", 400, "Invalid path or query parameter");
        /// The request is malformed in another way (bad header, bad payload).
        BAD_REQUEST = ("bad-request", 400, "Bad request");
        /// Missing, malformed, expired or otherwise unacceptable bearer token.
        UNAUTHORIZED = ("unauthorized", 401, "Authentication required");
        /// The token is valid but lacks a scope the operation needs.
        FORBIDDEN = ("forbidden", 403, "Missing scope");
        /// Nothing with that id exists in a space the caller may see.
        NOT_FOUND = ("not-found", 404, "Not found");
        /// The route exists but not for this HTTP method.
        METHOD_NOT_ALLOWED = ("method-not-allowed", 405, "Method not allowed");
        /// The `Accept` header takes none of the media types the operation answers with (the
        /// detail lists them; see `crate::http::export`).
        NOT_ACCEPTABLE = ("not-acceptable", 406, "Not acceptable");
        /// A resource with the same identity already exists.
        ALREADY_EXISTS = ("already-exists", 409, "Already exists");
        /// The resource is still referenced and cannot be deleted.
        IN_USE = ("in-use", 409, "Resource in use");
        /// The request conflicts with the current state of the resource.
        CONFLICT = ("conflict", 409, "Conflict");
        /// `If-Match` does not match the resource's current ETag.
        PRECONDITION_FAILED = ("precondition-failed", 412, "Precondition failed");
        /// The body is larger than the configured limit.
        PAYLOAD_TOO_LARGE = ("payload-too-large", 413, "Payload too large");
        /// The body is not `application/json`.
        UNSUPPORTED_MEDIA_TYPE = ("unsupported-media-type", 415, "Unsupported media type");
        /// Well-formed JSON that does not match the operation's schema (types, unknown fields).
        INVALID_BODY = ("invalid-body", 422, "Invalid request body");
        /// The body matches the schema but a value is not acceptable.
        VALIDATION_FAILED = ("validation-failed", 422, "Validation failed");
        /// The sToken file is not a valid Apple content token (not base64, not JSON, fields
        /// missing, bad or past expiry date).
        INVALID_STOKEN = ("invalid-stoken", 422, "Invalid sToken");
        /// Apple refused the sToken (expired, invalid, revoked, login required).
        STOKEN_REJECTED = ("stoken-rejected", 422, "Apple rejected the sToken");
        /// The token's Apple location is already attached to an account of this deployment.
        LOCATION_ALREADY_ATTACHED = ("location-already-attached", 409, "Apple location already attached");
        /// A replacement sToken belongs to another Apple location.
        LOCATION_MISMATCH = ("location-mismatch", 409, "Different Apple location");
        /// The account is used by a policy or still holds licenses.
        ACCOUNT_IN_USE = ("account-in-use", 409, "Account in use");
        /// The license's asset is not revocable (books: Apple keeps them with the user); nothing
        /// was changed.
        NOT_REVOCABLE = ("not-revocable", 409, "License not revocable");
        /// Clean Up needs the account owned by this deployment and synced within the hour;
        /// the detail says which account and what to do. Nothing was changed.
        CLEAN_UP_REFUSED = ("clean-up-refused", 409, "Clean Up refused");
        /// The plan's hour passed before it was applied; nothing was changed (plan again).
        PLAN_EXPIRED = ("plan-expired", 410, "Plan expired");
        /// The event feed no longer keeps the events after the cursor (retention): read the
        /// current state, then follow the feed from the problem's `cursor` (issue 15).
        CURSOR_EXPIRED = ("cursor-expired", 410, "Cursor expired");
        /// Apple asked to wait (429/503 with Retry-After) or did not answer.
        APPLE_UNAVAILABLE = ("apple-unavailable", 503, "Apple is unavailable");
        /// Apple answered with an error the service cannot act on.
        APPLE_ERROR = ("apple-error", 502, "Apple returned an error");
        /// The `Idempotency-Key` was already used for a different request.
        IDEMPOTENCY_KEY_REUSED = ("idempotency-key-reused", 422, "Idempotency key reused");
        /// The asset's distribution policy refuses this subject (rule A3).
        SUBJECT_DISALLOWED = ("subject-disallowed", 403, "Subject disallowed by policy");
        /// No account of the space owns the asset.
        ASSET_NOT_FOUND = ("asset-not-found", 404, "Asset not found");
        /// Every account is exhausted or cannot serve; `accounts` says why, per account (A9).
        NO_LICENSE_AVAILABLE = ("no-license-available", 409, "No license available");
        /// The requested license type cannot be given to this subject or asset.
        LICENSE_TYPE_UNAVAILABLE = ("license-type-unavailable", 422, "License type unavailable");
        /// A webhook URL is refused: not https, credentials in it, a host that does not
        /// resolve or resolves to a non-public address (N6).
        WEBHOOK_URL_REFUSED = ("webhook-url-refused", 422, "Webhook URL refused");
        /// An event type no event has (a webhook's filter).
        UNKNOWN_EVENT_TYPE = ("unknown-event-type", 422, "Unknown event type");
        /// An unexpected failure; details are in the server log under the request id.
        INTERNAL = ("internal", 500, "Internal server error");
        /// A dependency (the database, the key set) is unavailable; retry later.
        UNAVAILABLE = ("unavailable", 503, "Service unavailable");
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Stable identifier of the kind of failure (`urn:vpp-broker:problem:<slug>`).
    #[serde(rename = "type")]
    #[schema(example = "urn:vpp-broker:problem:not-found")]
    pub type_: String,
    /// Short summary of the kind of failure.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The request path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The request id (also in the `x-request-id` response header and every log line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Invalid fields, for `validation-failed` and `invalid-body`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Extra, problem-specific members (RFC 9457 extensions), e.g. `accounts` of
    /// `no-license-available`.
    #[serde(flatten)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

/// The error type of every handler (boxed, so `Result<_, ApiError>` stays one pointer wide).
pub struct ApiError(Box<Inner>);

struct Inner {
    kind: &'static ProblemType,
    detail: Option<String>,
    errors: Vec<FieldError>,
    extensions: Option<serde_json::Value>,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Cause of a 5xx, logged once and never shown.
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ApiError {
    pub fn new(kind: &'static ProblemType, detail: impl Into<String>) -> Self {
        ApiError(Box::new(Inner {
            kind,
            detail: Some(detail.into()),
            errors: Vec::new(),
            extensions: None,
            headers: Vec::new(),
            source: None,
        }))
    }

    /// A problem without detail text.
    pub fn bare(kind: &'static ProblemType) -> Self {
        let mut e = ApiError::new(kind, "");
        e.0.detail = None;
        e
    }

    /// An unexpected failure: logged with its cause, answered with a generic 500.
    pub fn internal(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ApiError::new(
            &types::INTERNAL,
            "an unexpected error occurred; the server log has the details under this request id",
        )
        .with_source(source)
    }

    pub fn not_found(what: impl fmt::Display) -> Self {
        ApiError::new(&types::NOT_FOUND, format!("{what} not found"))
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        ApiError::new(&types::VALIDATION_FAILED, detail).with_errors(errors)
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        ApiError::validation(vec![FieldError {
            field: field.to_owned(),
            message: message.into(),
        }])
    }

    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.0.errors = errors;
        self
    }

    pub fn with_extensions(mut self, extensions: serde_json::Value) -> Self {
        self.0.extensions = Some(extensions);
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.0.headers.push((name, value));
        self
    }

    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        self.0.source = Some(source.into());
        self
    }

    pub fn kind(&self) -> &'static ProblemType {
        self.0.kind
    }

    pub fn detail(&self) -> Option<&str> {
        self.0.detail.as_deref()
    }

    /// The problem document this error renders to.
    pub fn to_problem(&self) -> Problem {
        let info = request::current();
        let this = &self.0;
        Problem {
            type_: this.kind.type_uri(),
            title: this.kind.title.to_owned(),
            status: this.kind.status,
            detail: this.detail.clone(),
            instance: info.as_ref().map(|i| i.path.clone()),
            request_id: info.map(|i| i.request_id),
            errors: this.errors.clone(),
            extensions: match &this.extensions {
                Some(serde_json::Value::Object(map)) => map.clone(),
                _ => serde_json::Map::new(),
            },
        }
    }
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiError")
            .field("type", &self.0.kind.slug)
            .field("detail", &self.0.detail)
            .finish()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.detail {
            Some(d) => write!(f, "{}: {d}", self.0.kind.title),
            None => f.write_str(self.0.kind.title),
        }
    }
}

/// Renders the cause chain of an error on one line.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.0.kind.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        let this = &self.0;
        if this.kind.status >= 500 {
            match &this.source {
                Some(source) => tracing::error!(
                    problem = this.kind.slug,
                    error = %chain(source.as_ref()),
                    "request failed"
                ),
                None => {
                    tracing::error!(problem = this.kind.slug, detail = ?this.detail, "request failed")
                }
            }
        }
        let mut builder = HttpResponse::build(self.status_code());
        builder.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        for (name, value) in &this.headers {
            builder.insert_header((name.clone(), value.clone()));
        }
        builder.json(self.to_problem())
    }
}

/// Maps database errors: missing row → 404, unique (or exclusion) violation → 409, FK violation → 409 in-use,
/// CHECK violation → 422, a lost connection or a transaction PostgreSQL aborted to resolve a
/// conflict with a concurrent one (serialization failure, deadlock) → 503 with `Retry-After`
/// (nothing was written; the same request succeeds when retried); everything else is a 500
/// with the cause logged.
impl From<diesel::result::Error> for ApiError {
    fn from(err: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match &err {
            Error::NotFound => ApiError::bare(&types::NOT_FOUND),
            Error::DatabaseError(
                DatabaseErrorKind::UniqueViolation | DatabaseErrorKind::ExclusionViolation,
                info,
            ) => ApiError::new(
                &types::ALREADY_EXISTS,
                format!(
                    "conflicts with an existing record ({})",
                    info.constraint_name().unwrap_or("unique constraint")
                ),
            ),
            Error::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, info) => ApiError::new(
                &types::IN_USE,
                format!(
                    "still referenced by other records ({})",
                    info.constraint_name().unwrap_or("foreign key")
                ),
            ),
            Error::DatabaseError(DatabaseErrorKind::CheckViolation, info) => ApiError::new(
                &types::VALIDATION_FAILED,
                format!(
                    "a value is out of range ({})",
                    info.constraint_name().unwrap_or("check constraint")
                ),
            ),
            Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => {
                conflict_aborted(&err)
            }
            // diesel reports no SQLSTATE for 40P01; PostgreSQL's message is the only mark.
            Error::DatabaseError(DatabaseErrorKind::Unknown, info)
                if info.message().starts_with("deadlock detected") =>
            {
                conflict_aborted(&err)
            }
            _ if unavailable_now(&err) => {
                tracing::warn!(error = %err, "database unavailable");
                ApiError::new(
                    &types::UNAVAILABLE,
                    "the ledger database is unavailable or did not answer in time; retry later \
                     (a change that was under way may have been applied: retrying it with the \
                     same Idempotency-Key, or the same allocation, answers what happened)",
                )
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
            }
            _ => ApiError::internal(err),
        }
    }
}

/// PostgreSQL rolled the transaction back because it conflicted with a concurrent one.
/// PostgreSQL's messages (diesel gives no SQLSTATE for these) of failures that say the
/// database is unavailable for now, not that the request is wrong: a statement cancelled by its
/// timeout or an operator (57014), a lock timeout (55P03), a connection ended by the server
/// (57P01, 57P02, 57P03, 25P03), too many connections (53300), a standby or read-only server
/// during a failover (25006).
const UNAVAILABLE_MESSAGES: [&str; 14] = [
    "canceling statement due to statement timeout",
    "canceling statement due to lock timeout",
    "canceling statement due to user request",
    "canceling statement due to conflict with recovery",
    "terminating connection due to administrator command",
    "terminating connection due to conflict with recovery",
    "terminating connection due to idle-in-transaction timeout",
    "terminating connection because of crash of another server process",
    "the database system is",
    "sorry, too many clients already",
    "remaining connection slots are reserved",
    "cannot execute",
    "server closed the connection unexpectedly",
    "could not receive data from server",
];

/// Whether a database error means the ledger cannot be used right now (answered 503 with
/// Retry-After, so a caller retries — with the same Idempotency-Key, which then answers what
/// happened) rather than a defect (500). Every failure of the connection counts: closed,
/// unable to send (the socket died mid-statement), a transaction manager left broken by one.
fn unavailable_now(err: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match err {
        Error::DatabaseError(
            DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::UnableToSendCommand
            | DatabaseErrorKind::ReadOnlyTransaction,
            _,
        )
        | Error::BrokenTransactionManager => true,
        Error::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            let message = info.message();
            UNAVAILABLE_MESSAGES.iter().any(|m| message.starts_with(m))
                // "cannot execute INSERT in a read-only transaction" (25006) only.
                && (!message.starts_with("cannot execute") || message.ends_with("read-only transaction"))
        }
        _ => false,
    }
}

fn conflict_aborted(err: &diesel::result::Error) -> ApiError {
    tracing::warn!(error = %err, "transaction aborted by a concurrent one");
    ApiError::new(
        &types::UNAVAILABLE,
        "the change conflicted with a concurrent one and was rolled back; retry it",
    )
    .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
}

impl From<crate::waiters::WaitError> for ApiError {
    fn from(err: crate::waiters::WaitError) -> Self {
        match err {
            crate::waiters::WaitError::Db(e) => e.into(),
            crate::waiters::WaitError::Pool(e) => e.into(),
        }
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for ApiError {
    fn from(err: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        tracing::warn!(error = %err, "database pool unavailable");
        ApiError::new(
            &types::UNAVAILABLE,
            "the ledger database is unavailable; retry later",
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
    }
}

/// Builds the problem for a bare status code (the safety net for responses not produced by
/// [`ApiError`], e.g. from third-party services mounted in the app).
pub fn for_status(status: StatusCode) -> &'static ProblemType {
    match status.as_u16() {
        401 => &types::UNAUTHORIZED,
        403 => &types::FORBIDDEN,
        404 => &types::NOT_FOUND,
        405 => &types::METHOD_NOT_ALLOWED,
        406 => &types::NOT_ACCEPTABLE,
        409 => &types::CONFLICT,
        412 => &types::PRECONDITION_FAILED,
        413 => &types::PAYLOAD_TOO_LARGE,
        415 => &types::UNSUPPORTED_MEDIA_TYPE,
        422 => &types::INVALID_BODY,
        s if s >= 500 && s != 503 => &types::INTERNAL,
        503 => &types::UNAVAILABLE,
        _ => &types::BAD_REQUEST,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn problem_slugs_are_unique_and_statuses_are_errors() {
        let mut seen = HashSet::new();
        for p in types::ALL {
            assert!(seen.insert(p.slug), "duplicate slug {}", p.slug);
            assert!(
                (400..600).contains(&p.status),
                "{} has status {}",
                p.slug,
                p.status
            );
            assert!(p.type_uri().starts_with(TYPE_PREFIX));
        }
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let err = ApiError::internal(std::io::Error::other("secret connection string"));
        let problem = err.to_problem();
        assert_eq!(problem.status, 500);
        let body = serde_json::to_string(&problem).unwrap();
        assert!(!body.contains("secret connection string"), "{body}");
    }

    #[test]
    fn every_database_unavailability_is_a_503_with_retry_after_never_a_500() {
        use diesel::result::{DatabaseErrorKind, Error};
        let unknown =
            |m: &str| Error::DatabaseError(DatabaseErrorKind::Unknown, Box::new(m.to_owned()));
        let unavailable = [
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection, Box::new(String::new())),
            Error::DatabaseError(
                DatabaseErrorKind::UnableToSendCommand,
                Box::new(String::new()),
            ),
            Error::DatabaseError(
                DatabaseErrorKind::ReadOnlyTransaction,
                Box::new(String::new()),
            ),
            Error::BrokenTransactionManager,
            unknown("canceling statement due to statement timeout"),
            unknown("canceling statement due to lock timeout"),
            unknown("canceling statement due to user request"),
            unknown("terminating connection due to administrator command"),
            unknown("the database system is shutting down"),
            unknown("the database system is starting up"),
            unknown("the database system is in recovery mode"),
            unknown("sorry, too many clients already"),
            unknown("cannot execute INSERT in a read-only transaction"),
            unknown("server closed the connection unexpectedly"),
        ];
        for err in unavailable {
            let shown = err.to_string();
            let api = ApiError::from(err);
            let problem = api.to_problem();
            assert_eq!(problem.status, 503, "{shown}");
            assert!(
                api.0
                    .headers
                    .iter()
                    .any(|(name, _)| *name == header::RETRY_AFTER),
                "{shown}: Retry-After"
            );
        }
        // A defect stays a 500 (hidden cause), not a "retry later".
        let defect = unknown("cannot execute this in a function");
        assert_eq!(ApiError::from(defect).to_problem().status, 500);
        let defect = unknown("column \"x\" does not exist");
        assert_eq!(ApiError::from(defect).to_problem().status, 500);
    }

    #[test]
    fn database_errors_map_to_problems() {
        assert_eq!(
            ApiError::from(diesel::result::Error::NotFound)
                .kind()
                .status,
            404
        );
        assert_eq!(
            ApiError::from(diesel::result::Error::RollbackTransaction)
                .kind()
                .status,
            500
        );
        use diesel::result::{DatabaseErrorKind, Error};
        for (kind, message) in [
            (
                DatabaseErrorKind::SerializationFailure,
                "could not serialize access",
            ),
            (DatabaseErrorKind::Unknown, "deadlock detected"),
        ] {
            let err = ApiError::from(Error::DatabaseError(kind, Box::new(message.to_owned())));
            assert_eq!(err.kind().status, 503, "{message}");
            assert!(
                err.0.headers.iter().any(|(n, _)| n == header::RETRY_AFTER),
                "{message}"
            );
        }
        let other = Error::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("division by zero".to_owned()),
        );
        assert_eq!(ApiError::from(other).kind().status, 500);
    }
}
