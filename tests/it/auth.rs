//! Every way a caller can fail to authenticate or authorise gets the right problem.

use reqwest::Method;
use serde_json::json;

use crate::support::keys::{self, claims};
use crate::support::{TestApp, app, expect_problem};

async fn get_with(app: &TestApp, token: &str) -> reqwest::Response {
    app.req_as(Method::GET, "/v1/spaces", token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn missing_or_malformed_authorization_is_401() {
    let app = TestApp::start().await;
    let resp = app.http.get(app.url("/v1/spaces")).send().await.unwrap();
    assert_eq!(
        resp.headers()["www-authenticate"].to_str().unwrap(),
        "Bearer realm=\"vpp-broker\""
    );
    expect_problem(resp, 401, "unauthorized").await;

    let resp = app
        .http
        .get(app.url("/v1/spaces"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    expect_problem(resp, 401, "unauthorized").await;

    for garbage in ["", "not-a-jwt", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30"] {
        let resp = app
            .http
            .get(app.url("/v1/spaces"))
            .header("authorization", format!("Bearer {garbage}"))
            .send()
            .await
            .unwrap();
        let body = expect_problem(resp, 401, "unauthorized").await;
        assert!(body["detail"].is_string());
    }
}

#[tokio::test]
async fn valid_hs256_token_is_accepted() {
    let app = TestApp::start().await;
    let resp = get_with(&app, &keys::sign_hs256(&claims("licenses:read", &["*"]))).await;
    assert_eq!(resp.status(), 200);
    // The scope claim may also be an array.
    let mut c = claims("", &["*"]);
    c["scope"] = json!(["licenses:read"]);
    assert_eq!(get_with(&app, &keys::sign_hs256(&c)).await.status(), 200);
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_401() {
    let app = TestApp::start().await;
    let now = chrono::Utc::now().timestamp();
    let mut expired = claims("admin", &["*"]);
    expired["exp"] = json!(now - 120);
    expired["nbf"] = json!(now - 600);
    let body = expect_problem(
        get_with(&app, &keys::sign_hs256(&expired)).await,
        401,
        "unauthorized",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("expired"),
        "{body}"
    );

    let mut early = claims("admin", &["*"]);
    early["nbf"] = json!(now + 600);
    let body = expect_problem(
        get_with(&app, &keys::sign_hs256(&early)).await,
        401,
        "unauthorized",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("nbf"), "{body}");
}

#[tokio::test]
async fn wrong_issuer_or_audience_is_401() {
    let app = TestApp::start().await;
    let mut c = claims("admin", &["*"]);
    c["iss"] = json!("https://evil.test");
    let body = expect_problem(
        get_with(&app, &keys::sign_hs256(&c)).await,
        401,
        "unauthorized",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("issuer"),
        "{body}"
    );

    let mut c = claims("admin", &["*"]);
    c["aud"] = json!("someone-else");
    let body = expect_problem(
        get_with(&app, &keys::sign_hs256(&c)).await,
        401,
        "unauthorized",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("audience"),
        "{body}"
    );
}

#[tokio::test]
async fn required_claims_must_be_present() {
    let app = TestApp::start().await;
    for claim in ["exp", "nbf", "iss", "aud", "sub"] {
        let mut c = claims("admin", &["*"]);
        c.as_object_mut().unwrap().remove(claim);
        let resp = get_with(&app, &keys::sign_hs256(&c)).await;
        let body = expect_problem(resp, 401, "unauthorized").await;
        assert!(body["detail"].is_string(), "{claim}: {body}");
    }
    // `sub` names the actor in the ledger: empty or oversized subjects are refused.
    for sub in [String::new(), "x".repeat(3000)] {
        let mut c = claims("admin", &["*"]);
        c["sub"] = serde_json::json!(sub);
        let resp = get_with(&app, &keys::sign_hs256(&c)).await;
        let body = expect_problem(resp, 401, "unauthorized").await;
        assert!(body["detail"].as_str().unwrap().contains("sub"), "{body}");
    }
}

#[tokio::test]
async fn alg_none_and_tampered_signatures_are_401() {
    let app = TestApp::start().await;
    let c = claims("admin", &["*"]);
    expect_problem(
        get_with(&app, &keys::unsigned(&c)).await,
        401,
        "unauthorized",
    )
    .await;

    // Same header and signature, different payload (the grant widened).
    let good = keys::sign_hs256(&claims("licenses:read", &["a"]));
    let parts: Vec<&str> = good.split('.').collect();
    use base64::Engine;
    let forged_payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(claims("admin", &["*"]).to_string());
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    let body = expect_problem(get_with(&app, &forged).await, 401, "unauthorized").await;
    assert!(
        body["detail"].as_str().unwrap().contains("signature"),
        "{body}"
    );

    // Signed with another secret.
    let other = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &c,
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-0123456789"),
    )
    .unwrap();
    expect_problem(get_with(&app, &other).await, 401, "unauthorized").await;
}

#[tokio::test]
async fn rs256_pem_keys_are_pinned() {
    let rsa = keys::rsa();
    let mut auth = app::hs256_auth();
    auth.jwt_hs256_secret = None;
    auth.jwt_public_keys_pem = Some(rsa.public_pem.clone());
    let app = TestApp::start_with(auth, 256 * 1024).await;
    let c = claims("licenses:read", &["*"]);

    assert_eq!(
        get_with(&app, &keys::sign_with(&rsa, None, &c))
            .await
            .status(),
        200
    );

    // HS256 is not accepted when no shared secret is configured ...
    let body = expect_problem(
        get_with(&app, &keys::sign_hs256(&c)).await,
        401,
        "unauthorized",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("not accepted"),
        "{body}"
    );
    // ... not even the classic confusion attack: HS256 keyed with the RSA public key.
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &c,
        &jsonwebtoken::EncodingKey::from_secret(rsa.public_pem.as_bytes()),
    )
    .unwrap();
    expect_problem(get_with(&app, &confused).await, 401, "unauthorized").await;
    // A different RSA key does not verify.
    let other = keys::rsa();
    expect_problem(
        get_with(&app, &keys::sign_with(&other, None, &c)).await,
        401,
        "unauthorized",
    )
    .await;
    // ES256 has no configured key.
    let ec = keys::ec("k1");
    expect_problem(
        get_with(&app, &keys::sign_with(&ec, Some("k1"), &c)).await,
        401,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn es256_keys_from_a_jwks_url() {
    use actix_web::{App, HttpResponse, HttpServer, web};
    let ec = keys::ec("key-1");
    let jwks = json!({ "keys": [ec.jwk.clone().unwrap()] }).to_string();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::new(move || {
        let body = jwks.clone();
        App::new().route(
            "/jwks.json",
            web::get().to(move || {
                let body = body.clone();
                async move {
                    HttpResponse::Ok()
                        .content_type("application/json")
                        .body(body)
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    let jwks_handle = server.handle();
    tokio::spawn(server);

    let mut auth = app::hs256_auth();
    auth.jwt_hs256_secret = None;
    auth.jwt_jwks_url = Some(format!("http://{addr}/jwks.json"));
    let app = TestApp::start_with(auth, 256 * 1024).await;
    let c = claims("licenses:read", &["*"]);

    assert_eq!(
        get_with(&app, &keys::sign_with(&ec, Some("key-1"), &c))
            .await
            .status(),
        200
    );
    // Without a kid every key of the algorithm is tried.
    assert_eq!(
        get_with(&app, &keys::sign_with(&ec, None, &c))
            .await
            .status(),
        200
    );
    // Unknown kid, and a key the set does not hold.
    expect_problem(
        get_with(&app, &keys::sign_with(&ec, Some("nope"), &c)).await,
        401,
        "unauthorized",
    )
    .await;
    let stranger = keys::ec("key-1");
    expect_problem(
        get_with(&app, &keys::sign_with(&stranger, Some("key-1"), &c)).await,
        401,
        "unauthorized",
    )
    .await;
    jwks_handle.stop(false).await;
}

#[tokio::test]
async fn missing_scope_is_403_and_other_spaces_are_404() {
    let app = TestApp::start().await;
    for id in ["alpha", "beta"] {
        let resp = app
            .req(Method::POST, "/v1/spaces")
            .json(&json!({"id": id, "name": id}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
    let reader_alpha = crate::support::token("licenses:read", &["alpha"]);
    // Granted space: readable; not changeable without admin.
    let resp = app
        .req_as(Method::GET, "/v1/spaces/alpha", &reader_alpha)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = app
        .req_as(Method::PATCH, "/v1/spaces/alpha", &reader_alpha)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    let body = expect_problem(resp, 403, "forbidden").await;
    assert!(body["detail"].as_str().unwrap().contains("admin"), "{body}");
    // Another space: 404 for reads and writes alike, whether or not it exists.
    for path in ["/v1/spaces/beta", "/v1/spaces/does-not-exist"] {
        let resp = app
            .req_as(Method::GET, path, &reader_alpha)
            .send()
            .await
            .unwrap();
        expect_problem(resp, 404, "not-found").await;
    }
    let admin_alpha = crate::support::token("admin", &["alpha"]);
    let resp = app
        .req_as(Method::DELETE, "/v1/spaces/beta", &admin_alpha)
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not-found").await;
    // A token without any known scope cannot even list.
    let nobody = crate::support::token("something:else", &["*"]);
    let resp = app
        .req_as(Method::GET, "/v1/spaces", &nobody)
        .send()
        .await
        .unwrap();
    expect_problem(resp, 403, "forbidden").await;
    // Listing shows only granted spaces.
    let page: vpp_broker::api::spaces::SpacePage = crate::support::read(
        app.req_as(Method::GET, "/v1/spaces", &reader_alpha)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let ids: Vec<&str> = page.items.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["alpha"]);
}

/// The space is authorised before the request's body and query are read: a caller outside the
/// space learns nothing of the operation's schema (404 whatever it sends), and a caller without
/// the scope gets 403 before any 422.
#[tokio::test]
async fn the_space_is_authorised_before_the_body_and_query_are_read() {
    let app = TestApp::start().await;
    let resp = app
        .req(Method::POST, "/v1/spaces")
        .json(&json!({"id": "alpha", "name": "alpha"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let writer_beta = crate::support::token("licenses:write", &["beta"]);
    let reader_alpha = crate::support::token("licenses:read", &["alpha"]);
    let bad_body = json!({"asset": 7, "subject": []});
    for (token, status, kind) in [
        (&writer_beta, 404, "not-found"),
        (&reader_alpha, 403, "forbidden"),
    ] {
        let resp = app
            .req_as(Method::POST, "/v1/spaces/alpha/assignments", token)
            .json(&bad_body)
            .send()
            .await
            .unwrap();
        expect_problem(resp, status, kind).await;
        let resp = app
            .req_as(
                Method::POST,
                "/v1/spaces/alpha/assignments?wait=banana",
                token,
            )
            .json(&bad_body)
            .send()
            .await
            .unwrap();
        expect_problem(resp, status, kind).await;
    }
    // With the grant and the scope, the same body is what is refused.
    let writer_alpha = crate::support::token("licenses:write", &["alpha"]);
    let resp = app
        .req_as(Method::POST, "/v1/spaces/alpha/assignments", &writer_alpha)
        .json(&bad_body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        422,
        "{}",
        resp.text().await.unwrap_or_default()
    );
}
