//! Answers for requests no route took: 405 with `Allow` when the path exists for other methods,
//! else 404. actix itself answers 404 for both, because each `#[get]`/`#[post]` handler is its
//! own resource guarded by method; the table here is built from the OpenAPI document (the same
//! registration the server uses) plus the operational routes.

use actix_web::dev::ResourceDef;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, web};

use super::problem::{ApiError, types};

/// Path templates and the methods each one serves.
pub struct RouteTable {
    routes: Vec<(ResourceDef, Vec<String>)>,
}

impl RouteTable {
    pub fn new(api: &utoipa::openapi::OpenApi, extra: &[(&str, &str)]) -> Self {
        let mut routes: Vec<(String, Vec<String>)> = Vec::new();
        let mut add = |path: &str, method: String| match routes.iter_mut().find(|(p, _)| p == path)
        {
            Some((_, methods)) => {
                if !methods.contains(&method) {
                    methods.push(method)
                }
            }
            None => routes.push((path.to_owned(), vec![method])),
        };
        for (path, item) in api.paths.paths.iter() {
            let value = serde_json::to_value(item).unwrap_or_default();
            if let Some(map) = value.as_object() {
                for method in [
                    "get", "put", "post", "delete", "options", "head", "patch", "trace",
                ] {
                    if map.contains_key(method) {
                        add(path, method.to_ascii_uppercase());
                    }
                }
            }
        }
        for (path, method) in extra {
            add(path, (*method).to_owned());
        }
        RouteTable {
            routes: routes
                .into_iter()
                .map(|(p, mut m)| {
                    m.sort();
                    (ResourceDef::new(p), m)
                })
                .collect(),
        }
    }

    /// Methods served at `path`, if any route template matches it.
    pub fn allowed(&self, path: &str) -> Option<&[String]> {
        self.routes
            .iter()
            .find(|(def, _)| def.is_match(path))
            .map(|(_, m)| m.as_slice())
    }
}

pub async fn not_routed(
    req: HttpRequest,
    table: web::Data<RouteTable>,
) -> Result<actix_web::HttpResponse, ApiError> {
    Err(match table.allowed(req.path()) {
        Some(methods) => {
            let allow = methods.join(", ");
            let err = ApiError::new(
                &types::METHOD_NOT_ALLOWED,
                format!("{} is not supported here; allowed: {allow}", req.method()),
            );
            match HeaderValue::from_str(&allow) {
                Ok(v) => err.with_header(header::ALLOW, v),
                Err(_) => err,
            }
        }
        None => ApiError::new(&types::NOT_FOUND, format!("no route for {}", req.path())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_templates() {
        let table = RouteTable::new(
            &utoipa::openapi::OpenApi::default(),
            &[
                ("/v1/spaces/{space}", "GET"),
                ("/v1/spaces/{space}", "PATCH"),
                ("/livez", "GET"),
            ],
        );
        assert_eq!(
            table.allowed("/v1/spaces/acme").unwrap(),
            &["GET".to_owned(), "PATCH".to_owned()]
        );
        assert!(table.allowed("/v1/spaces/acme/x").is_none());
        assert!(table.allowed("/nope").is_none());
    }
}
