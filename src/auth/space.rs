//! The space a route's path names, authorised for the caller: the extractor every space-scoped
//! route takes instead of a bare path.
//!
//! [`SpaceAccess<N, P>`] authenticates the caller (401), parses the path into `P` (400), runs
//! `P`'s own segment checks (400), then [`Caller::authorize`]s the space for the scope `N` names:
//! 400 for a malformed space id, 404 for a space outside the caller's grant (whether or not it
//! exists), 403 for a missing scope. A handler that receives it may act in the space.

use std::marker::PhantomData;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::{Caller, Scope};
use crate::http::problem::ApiError;

/// The scope a route needs, as a type (see [`needs`]).
pub trait Need {
    const SCOPE: Scope;
}

/// One marker type per [`Scope`], for [`SpaceAccess`]'s first parameter.
pub mod needs {
    use super::{Need, Scope};

    /// Needs `licenses:read`.
    pub struct LicensesRead;
    /// Needs `licenses:write`.
    pub struct LicensesWrite;
    /// Needs `accounts:manage`.
    pub struct AccountsManage;
    /// Needs `admin`.
    pub struct Admin;

    impl Need for LicensesRead {
        const SCOPE: Scope = Scope::LicensesRead;
    }
    impl Need for LicensesWrite {
        const SCOPE: Scope = Scope::LicensesWrite;
    }
    impl Need for AccountsManage {
        const SCOPE: Scope = Scope::AccountsManage;
    }
    impl Need for Admin {
        const SCOPE: Scope = Scope::Admin;
    }
}

/// The path parameters of a space-scoped route: the space id first, then what else the route
/// names.
pub trait SpacePath: DeserializeOwned {
    /// The space id segment.
    fn space(&self) -> &str;

    /// Checks of the other segments (400), made before the space is authorised.
    fn check(&self) -> Result<(), ApiError> {
        Ok(())
    }
}

/// `/…/{space}`.
impl SpacePath for String {
    fn space(&self) -> &str {
        self
    }
}

/// `/…/{space}/…/{id}`.
impl SpacePath for (String, Uuid) {
    fn space(&self) -> &str {
        &self.0
    }
}

/// `/…/{space}/…/{number}` (a job's id: dead letters).
impl SpacePath for (String, i64) {
    fn space(&self) -> &str {
        &self.0
    }
}

/// `/…/{space}/…/{id}/…/{id}`.
impl SpacePath for (String, Uuid, Uuid) {
    fn space(&self) -> &str {
        &self.0
    }
}

/// The caller, authorised for the space its path names with the scope `N` stands for, and the
/// path's parameters.
pub struct SpaceAccess<N, P = String> {
    pub caller: Caller,
    pub path: P,
    need: PhantomData<N>,
}

impl<N, P: SpacePath> SpaceAccess<N, P> {
    /// The authorised space's id.
    pub fn space(&self) -> &str {
        self.path.space()
    }

    /// The caller and the path's parameters.
    pub fn into_parts(self) -> (Caller, P) {
        (self.caller, self.path)
    }
}

impl<N: Need + 'static, P: SpacePath + 'static> FromRequest for SpaceAccess<N, P> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, actix_web::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let caller = Caller::from_request(req, payload);
        let path = web::Path::<P>::from_request(req, payload);
        Box::pin(async move {
            let caller = caller.await?;
            let path = path.await?.into_inner();
            path.check()?;
            caller.authorize(path.space(), N::SCOPE)?;
            Ok(SpaceAccess {
                caller,
                path,
                need: PhantomData,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use actix_web::{App, HttpResponse, test, web};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    use super::*;
    use crate::auth::jwt::Authenticator;
    use crate::config::AuthArgs;

    const SECRET: &str = "a-unit-test-secret-that-is-long-enough-0123456789";

    fn token(scope: &str, spaces: &[&str]) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = serde_json::json!({
            "iss": "iss", "aud": "aud", "sub": "t", "scope": scope, "spaces": spaces,
            "nbf": now - 5, "exp": now + 600,
        });
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    async fn manage(access: SpaceAccess<needs::AccountsManage, (String, Uuid)>) -> HttpResponse {
        HttpResponse::Ok().body(format!("{} {}", access.space(), access.path.1))
    }

    #[actix_web::test]
    async fn checks_token_path_space_grant_then_scope() {
        let auth = Authenticator::from_args(&AuthArgs {
            jwt_issuer: "iss".into(),
            jwt_audience: "aud".into(),
            jwt_hs256_secret: Some(SECRET.into()),
            jwt_public_keys_pem: None,
            jwt_jwks_url: None,
            jwt_jwks_refresh_secs: 300,
            jwt_leeway_secs: 5,
        })
        .await
        .unwrap();
        let app = test::init_service(
            App::new()
                .app_data(web::Data::new(auth))
                .app_data(crate::http::extract::path_config())
                .route("/s/{space}/a/{id}", web::get().to(manage)),
        )
        .await;
        let id = Uuid::nil();
        let manager = token("accounts:manage", &["a"]);
        let reader = token("licenses:read", &["a"]);
        for (path, token, status) in [
            (format!("/s/a/a/{id}"), None, 401),
            ("/s/BAD/a/not-a-uuid".to_owned(), Some(&manager), 400),
            (format!("/s/BAD/a/{id}"), Some(&manager), 400),
            (format!("/s/b/a/{id}"), Some(&reader), 404),
            (format!("/s/a/a/{id}"), Some(&reader), 403),
            (format!("/s/a/a/{id}"), Some(&manager), 200),
        ] {
            let mut req = test::TestRequest::get().uri(&path);
            if let Some(token) = token {
                req = req.insert_header(("authorization", format!("Bearer {token}")));
            }
            let resp = test::call_service(&app, req.to_request()).await;
            assert_eq!(resp.status().as_u16(), status, "{path}");
            if status == 200 {
                let body = test::read_body(resp).await;
                assert_eq!(body, format!("a {id}").as_bytes());
            }
        }
    }
}
