//! Security headers over real HTTP: `nosniff` everywhere, `no-store` on authenticated answers,
//! and a Content-Security-Policy on the docs that still lets the Swagger UI load everything it
//! needs (checked by reading the page and fetching what it references).

use reqwest::Method;
use vpp_broker::http::security_headers::DOCS_CSP;

use crate::support::TestApp;

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn every_answer_is_nosniff_and_authenticated_answers_are_not_stored() {
    let app = TestApp::start().await;
    app.space("acme").await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // (request, expected status, expects no-store)
    let cases = [
        (app.req(Method::GET, "/v1/spaces"), 200, true),
        (app.req(Method::GET, "/v1/spaces/acme"), 200, true),
        (app.req(Method::GET, "/v1/spaces/nope"), 404, true),
        (client.get(app.url("/v1/spaces")), 401, true),
        (app.req(Method::GET, "/v1/not-a-route"), 404, true),
        (
            app.req(Method::POST, "/v1/spaces")
                .header("content-type", "application/json")
                .body("[]"),
            422,
            true,
        ),
        (
            client
                .post(app.url("/apple/notifications/0191e3b0-0000-7000-8000-000000000000"))
                .json(
                    &serde_json::json!({"notificationId": "n1", "notificationType": "ASSET_COUNT"}),
                ),
            404,
            true,
        ),
        (client.get(app.url("/livez")), 200, false),
        (client.get(app.url("/openapi.json")), 200, false),
        (client.get(app.url("/nowhere")), 404, false),
        (client.get(app.url("/docs")), 308, false),
    ];
    for (request, status, no_store) in cases {
        let resp = request.send().await.unwrap();
        let url = resp.url().path().to_owned();
        assert_eq!(resp.status().as_u16(), status, "{url}");
        assert_eq!(
            header(&resp, "x-content-type-options"),
            Some("nosniff"),
            "{url}"
        );
        if no_store {
            assert_eq!(header(&resp, "cache-control"), Some("no-store"), "{url}");
        } else {
            assert_eq!(header(&resp, "cache-control"), None, "{url}");
        }
        assert!(
            url.starts_with("/docs") || header(&resp, "content-security-policy").is_none(),
            "{url}: the CSP is the docs' own"
        );
    }
}

/// The values of `attr="…"` in `html`.
fn attribute_values(html: &str, attr: &str) -> Vec<String> {
    let needle = format!(" {attr}=\"");
    html.match_indices(&needle)
        .map(|(i, _)| {
            let rest = &html[i + needle.len()..];
            rest[..rest.find('"').unwrap()].to_owned()
        })
        .collect()
}

#[tokio::test]
async fn the_docs_page_has_a_csp_that_allows_exactly_what_it_loads() {
    let app = TestApp::start().await;
    let client = reqwest::Client::new();
    let page = client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        header(&page, "content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(header(&page, "content-security-policy"), Some(DOCS_CSP));
    assert_eq!(header(&page, "x-content-type-options"), Some("nosniff"));
    let html = page.text().await.unwrap();

    // The policy: same-origin scripts, styles, fetches; data: images; nothing inline or eval'd.
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(DOCS_CSP.contains(directive), "{directive}");
    }
    assert!(
        !DOCS_CSP.contains("unsafe"),
        "no unsafe-inline / unsafe-eval"
    );

    // Nothing inline, which `script-src 'self'` / `style-src 'self'` would block.
    let lower = html.to_lowercase();
    assert_eq!(
        lower.matches("<script").count(),
        attribute_values(&lower, "src").len(),
        "every script has a src: {html}"
    );
    assert!(!lower.contains("<style"), "no inline style element");
    assert!(!lower.contains(" style=\""), "no inline style attribute");
    assert!(!lower.contains(" onload="), "no inline handler");

    // Everything the page loads is on this origin and answers under the same policy.
    let scripts = attribute_values(&html, "src");
    let links = attribute_values(&html, "href");
    assert!(scripts.len() >= 3, "{scripts:?}");
    assert!(links.iter().any(|l| l.ends_with(".css")), "{links:?}");
    for reference in scripts.iter().chain(&links) {
        assert!(
            !reference.contains("//") && !reference.starts_with("data:"),
            "{reference} is same-origin"
        );
        let path = format!("/docs/{}", reference.trim_start_matches("./"));
        let resp = client.get(app.url(&path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let ct = header(&resp, "content-type").unwrap_or("").to_owned();
        assert_eq!(header(&resp, "content-security-policy"), Some(DOCS_CSP));
        let body = resp.bytes().await.unwrap();
        if path.ends_with(".js") {
            assert!(ct.contains("javascript"), "{path}: {ct}");
        }
        if path.ends_with(".css") {
            assert!(ct.starts_with("text/css"), "{path}: {ct}");
            // Stylesheets reference only data: images (img-src data:), nothing remote.
            let css = String::from_utf8_lossy(&body);
            for (i, _) in css.match_indices("url(") {
                let target = css[i + 4..].trim_start_matches(['"', '\'']);
                assert!(
                    target.starts_with("data:"),
                    "{path}: url({})",
                    &target[..20.min(target.len())]
                );
            }
        }
        if path.ends_with("swagger-initializer.js") {
            let js = String::from_utf8_lossy(&body);
            assert!(
                js.contains("\"/openapi.json\""),
                "same-origin document: {js}"
            );
            assert!(
                js.contains("\"validatorUrl\": \"none\""),
                "no remote badge: {js}"
            );
        }
    }
    // The document the UI fetches (connect-src 'self').
    let doc = client.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(doc.status(), 200);
}
