//! What can go wrong with token accounts, and the problem each failure answers with.

use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};

use crate::apple::error::{AppleError, ErrorClass};
use crate::apple::stoken::STokenError;
use crate::crypto::CryptoError;
use crate::domain::validation::FieldError;
use crate::http::problem::{ApiError, types};

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("the sToken is not valid: {0}")]
    InvalidSToken(#[from] STokenError),
    #[error("Apple rejected the sToken: {0}")]
    Rejected(String),
    #[error("Apple is unavailable: {detail}")]
    AppleUnavailable {
        detail: String,
        retry_after: Option<Duration>,
    },
    #[error("Apple answered unexpectedly: {0}")]
    Apple(AppleError),
    #[error("this Apple location is already attached")]
    LocationTaken { here: bool },
    #[error("{0}")]
    LocationMismatch(String),
    #[error("{0}")]
    InUse(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    #[error("stale version")]
    Stale { current: i64 },
    #[error("cannot read the stored sToken: {0}")]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    #[error(transparent)]
    Pool(#[from] diesel_async::pooled_connection::deadpool::PoolError),
}

impl AccountError {
    /// Classifies an Apple failure met while managing an account.
    pub fn from_apple(err: AppleError) -> Self {
        match err.class() {
            ErrorClass::Auth(_) => AccountError::Rejected(err.to_string()),
            ErrorClass::RateLimited { retry_after } | ErrorClass::Transient { retry_after } => {
                AccountError::AppleUnavailable {
                    detail: err.to_string(),
                    retry_after,
                }
            }
            _ => AccountError::Apple(err),
        }
    }
}

impl From<AccountError> for ApiError {
    fn from(err: AccountError) -> Self {
        match err {
            AccountError::InvalidSToken(e) => ApiError::new(
                &types::INVALID_STOKEN,
                format!("{e}; upload the .vpptoken file content exactly as downloaded from Apple Business Manager"),
            )
            .with_errors(vec![FieldError {
                field: "stoken".into(),
                message: e.to_string(),
            }]),
            AccountError::Rejected(detail) => ApiError::new(&types::STOKEN_REJECTED, detail),
            AccountError::AppleUnavailable { detail, retry_after } => {
                let secs = retry_after.map(|d| d.as_secs().max(1)).unwrap_or(30);
                ApiError::new(&types::APPLE_UNAVAILABLE, detail).with_header(
                    header::RETRY_AFTER,
                    HeaderValue::from_str(&secs.to_string()).unwrap_or(HeaderValue::from_static("30")),
                )
            }
            AccountError::Apple(e) => ApiError::new(&types::APPLE_ERROR, e.to_string()),
            AccountError::LocationTaken { here } => ApiError::new(
                &types::LOCATION_ALREADY_ATTACHED,
                if here {
                    "this Apple location is already attached to an account of this space; \
                     replace that account's sToken instead"
                } else {
                    "this Apple location is already attached to this deployment (in another space); \
                     one location can be managed by one account only"
                },
            ),
            AccountError::LocationMismatch(detail) => ApiError::new(&types::LOCATION_MISMATCH, detail),
            AccountError::InUse(detail) => ApiError::new(&types::ACCOUNT_IN_USE, detail),
            AccountError::NotFound(what) => ApiError::not_found(what),
            AccountError::Invalid(errors) => ApiError::validation(errors),
            AccountError::Stale { current } => crate::http::etag::IfMatch::failed(current),
            AccountError::Crypto(e) => ApiError::internal(e),
            AccountError::Db(e) => e.into(),
            AccountError::Pool(e) => e.into(),
        }
    }
}
