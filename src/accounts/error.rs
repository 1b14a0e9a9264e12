//! What can go wrong with token accounts (the API answers each with a problem: see
//! `api::accounts`).

use std::time::Duration;

use crate::apple::error::{AppleError, ErrorClass};
use crate::apple::stoken::STokenError;
use crate::crypto::CryptoError;
use crate::domain::validation::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("the sToken is not valid: {0}")]
    InvalidSToken(#[from] STokenError),
    #[error("Apple rejected the sToken: {0}")]
    Rejected(#[source] AppleError),
    /// Apple accepted the sToken but its client config names no location to attach.
    #[error("Apple's client config names no location (uId)")]
    NoLocation,
    #[error("Apple is unavailable: {source}")]
    AppleUnavailable {
        #[source]
        source: AppleError,
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
            ErrorClass::Auth(_) => AccountError::Rejected(err),
            ErrorClass::RateLimited { retry_after } | ErrorClass::Transient { retry_after } => {
                AccountError::AppleUnavailable {
                    source: err,
                    retry_after,
                }
            }
            _ => AccountError::Apple(err),
        }
    }
}
