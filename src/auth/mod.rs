//! Caller authentication and authorisation.
//!
//! Every `/v1` route takes a [`Caller`], extracted from `Authorization: Bearer <JWT>` by the
//! [`jwt::Authenticator`]. Claims used:
//!
//! | claim | meaning |
//! | --- | --- |
//! | `iss`, `aud`, `exp`, `nbf` | required and checked (`nbf`/`exp` with the configured leeway) |
//! | `sub` | required; who the caller is (recorded in the activity log, keys idempotency) |
//! | `scope` | space-separated string (or array) of scopes, see [`Scope`] |
//! | `spaces` | array of space ids the caller may touch; `"*"` grants every space |
//!
//! Failure answers: 401 for a bad or missing token, 404 for a space outside the grant (so a
//! caller cannot learn which spaces exist), 403 for a missing scope. Space-scoped routes take a
//! [`SpaceAccess`], which makes these checks for the space their path names.

pub mod jwks;
pub mod jwt;
pub mod space;

pub use space::{SpaceAccess, needs};

use std::collections::BTreeSet;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::future::LocalBoxFuture;

use crate::domain::validation::valid_space_id;
use crate::http::problem::{ApiError, types};

crate::text_enum! {
    /// What a caller may do. `admin` implies every scope; `licenses:write` and
    /// `accounts:manage` each imply `licenses:read`.
    pub enum Scope {
        /// Read spaces, accounts (never their sTokens), assets, assignments, reports.
        LicensesRead = "licenses:read",
        /// Allocate and revoke licenses, send lifecycle events.
        LicensesWrite = "licenses:write",
        /// Add, change and delete token accounts, policies and distribution lists.
        AccountsManage = "accounts:manage",
        /// Create, change and delete spaces; implies every other scope.
        Admin = "admin",
    }
}

/// Which spaces a caller may touch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpaceGrant {
    All,
    Only(BTreeSet<String>),
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    pub subject: String,
    pub scopes: BTreeSet<Scope>,
    pub spaces: SpaceGrant,
}

impl Caller {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin)
            || self.scopes.contains(&scope)
            || (scope == Scope::LicensesRead
                && (self.scopes.contains(&Scope::LicensesWrite)
                    || self.scopes.contains(&Scope::AccountsManage)))
    }

    /// 403 unless the caller has `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(ApiError::new(
                &types::FORBIDDEN,
                format!("this operation needs the `{scope}` scope"),
            ))
        }
    }

    pub fn may_see(&self, space: &str) -> bool {
        match &self.spaces {
            SpaceGrant::All => true,
            SpaceGrant::Only(set) => set.contains(space),
        }
    }

    /// The origin of the current request's changes: this caller and the request id (read here,
    /// in the transport, from the request's context; use cases receive it as a value).
    pub fn origin(&self) -> crate::domain::origin::Origin {
        crate::domain::origin::Origin::new(self.subject.clone(), crate::http::request::request_id())
    }

    /// 400 unless `space` (from a path) is a well-formed space id, 404 unless the caller's grant
    /// includes it (whether or not it exists), then 403 unless it has `scope`. The order hides
    /// other spaces' existence.
    pub fn authorize(&self, space: &str, scope: Scope) -> Result<(), ApiError> {
        check_space_path(space)?;
        if !self.may_see(space) {
            return Err(ApiError::not_found(format!("space {space}")));
        }
        self.require(scope)
    }
}

/// 400 for a malformed space id in a path.
pub fn check_space_path(id: &str) -> Result<(), ApiError> {
    if valid_space_id(id) {
        Ok(())
    } else {
        Err(ApiError::new(
            &types::INVALID_PARAMETER,
            format!(
                "{id:?} is not a space id (lowercase letters, digits, dashes; 1-63 characters)"
            ),
        ))
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let authenticator = req.app_data::<web::Data<jwt::Authenticator>>().cloned();
        let header_value = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().map(str::to_owned));
        Box::pin(async move {
            let Some(authenticator) = authenticator else {
                return Err(ApiError::internal(std::io::Error::other(
                    "authenticator missing from app data",
                )));
            };
            let value = match header_value {
                None => None,
                Some(Ok(v)) => Some(v),
                Some(Err(_)) => {
                    return Err(jwt::unauthorized(
                        "the Authorization header is not valid ASCII",
                    ));
                }
            };
            authenticator.authenticate(value.as_deref()).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(scopes: &[Scope], spaces: SpaceGrant) -> Caller {
        Caller {
            subject: "t".into(),
            scopes: scopes.iter().copied().collect(),
            spaces,
        }
    }

    #[test]
    fn scope_implications() {
        let admin = caller(&[Scope::Admin], SpaceGrant::All);
        for s in Scope::ALL {
            assert!(admin.has(*s));
        }
        let writer = caller(&[Scope::LicensesWrite], SpaceGrant::All);
        assert!(writer.has(Scope::LicensesRead));
        assert!(!writer.has(Scope::AccountsManage));
        let reader = caller(&[Scope::LicensesRead], SpaceGrant::All);
        assert!(!reader.has(Scope::LicensesWrite));
        assert_eq!(reader.require(Scope::Admin).unwrap_err().kind().status, 403);
    }

    #[test]
    fn other_spaces_are_not_found_before_scope_is_checked() {
        let c = caller(
            &[Scope::LicensesRead],
            SpaceGrant::Only(["a".to_owned()].into()),
        );
        assert_eq!(
            c.authorize("b", Scope::Admin).unwrap_err().kind().status,
            404
        );
        assert_eq!(
            c.authorize("a", Scope::Admin).unwrap_err().kind().status,
            403
        );
        assert!(c.authorize("a", Scope::LicensesRead).is_ok());
    }
}
