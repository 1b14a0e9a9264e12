//! Response headers a security review expects, set on every answer by [`super::context`]:
//!
//! * `X-Content-Type-Options: nosniff` on every answer: browsers take the declared media type
//!   (a problem document or a JSON list is never rendered as HTML or run as a script).
//! * `Cache-Control: no-store` on authenticated answers (`/v1/…`, and `/apple/…`, which Apple
//!   calls with a bearer token): licenses and tokens' metadata must not linger in shared or
//!   browser caches.
//! * A `Content-Security-Policy` on the Swagger UI (`/docs/…`). The page is the static Swagger UI
//!   distribution: `index.html` loads `swagger-ui.css`, `index.css`, `swagger-ui-bundle.js`,
//!   `swagger-ui-standalone-preset.js` and `swagger-initializer.js`, all from `/docs/`, with no
//!   inline script or style element; the bundle fetches `/openapi.json` (and "Try it out" calls
//!   `/v1`) on the same origin; `swagger-ui.css` draws its icons from `data:` SVG/PNG images.
//!   Styles the UI sets at run time go through the CSSOM, which `style-src` does not restrict.
//!   So the policy allows exactly same-origin scripts, styles, images and fetches plus `data:`
//!   images; nothing inline, no `eval`, no framing, no plugins. The validator badge (an image
//!   from validator.swagger.io) is turned off where the UI is configured, so nothing is loaded
//!   from elsewhere.

use actix_web::http::header::{self, HeaderMap, HeaderValue};

/// The Swagger UI page's policy (see the module documentation for why each source is needed).
pub const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Adds the headers for an answer to `path`.
pub fn apply(path: &str, headers: &mut HeaderMap) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if under(path, "/v1") || under(path, "/apple") {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if under(path, "/docs") {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(DOCS_CSP),
        );
    }
}

/// `path` is `prefix` or below it (`/v1x` is not under `/v1`).
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_follow_the_path() {
        let mut h = HeaderMap::new();
        apply("/v1/spaces", &mut h);
        assert_eq!(h.get(header::CACHE_CONTROL).unwrap(), "no-store");
        assert_eq!(h.get(header::X_CONTENT_TYPE_OPTIONS).unwrap(), "nosniff");
        assert!(h.get(header::CONTENT_SECURITY_POLICY).is_none());

        let mut h = HeaderMap::new();
        apply("/docs/index.html", &mut h);
        assert!(h.get(header::CACHE_CONTROL).is_none());
        assert_eq!(h.get(header::CONTENT_SECURITY_POLICY).unwrap(), DOCS_CSP);

        let mut h = HeaderMap::new();
        apply("/v1x", &mut h);
        assert!(h.get(header::CACHE_CONTROL).is_none());
        assert_eq!(h.get(header::X_CONTENT_TYPE_OPTIONS).unwrap(), "nosniff");
    }
}
