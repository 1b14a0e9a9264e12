//! Bad input anywhere gets a 4xx problem and leaves the ledger untouched; unexpected failures
//! are generic 500s; a panic never reaches a client as a dropped connection.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use reqwest::Method;
use serde_json::json;
use vpp_broker::db::schema::spaces;

use crate::support::{TestApp, admin_token, expect_problem};

async fn ledger_snapshot(app: &TestApp) -> Vec<(String, String, i64)> {
    let mut conn = app.db.connect().await;
    spaces::table
        .select((spaces::id, spaces::name, spaces::version))
        .order(spaces::id)
        .load(&mut conn)
        .await
        .unwrap()
}

async fn post_raw(
    app: &TestApp,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = app
        .http
        .post(app.url(path))
        .bearer_auth(admin_token())
        .body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn malformed_bodies_are_problems_and_change_nothing() {
    let app = TestApp::start_with(crate::support::app::hs256_auth(), 4096).await;
    app.req(Method::POST, "/v1/spaces")
        .json(&json!({"id": "keep", "name": "keep"}))
        .send()
        .await
        .unwrap();
    let before = ledger_snapshot(&app).await;

    let json_ct = Some("application/json");
    // (content type, body, status, problem slug, offending field)
    type Case<'a> = (Option<&'a str>, Vec<u8>, u16, &'a str, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            json_ct,
            b"{\"id\": \"x\", ".to_vec(),
            400,
            "malformed-json",
            None,
        ),
        (
            json_ct,
            b"not json at all".to_vec(),
            400,
            "malformed-json",
            None,
        ),
        (
            json_ct,
            b"{\"id\":\"x\",\"name\":\"n\"} trailing".to_vec(),
            400,
            "malformed-json",
            None,
        ),
        (
            json_ct,
            br#"{"id": 42, "name": "n"}"#.to_vec(),
            422,
            "invalid-body",
            Some("id"),
        ),
        (
            json_ct,
            br#"{"name": "n"}"#.to_vec(),
            422,
            "invalid-body",
            Some("id"),
        ),
        (
            json_ct,
            br#"{"id": "x", "name": "n", "admin": true}"#.to_vec(),
            422,
            "invalid-body",
            Some("admin"),
        ),
        (json_ct, br#"[1, 2, 3]"#.to_vec(), 422, "invalid-body", None),
        // PostgreSQL stores no NUL in text: refused before anything is written.
        (
            json_ct,
            br#"{"id": "nul", "name": "a\u0000b"}"#.to_vec(),
            422,
            "invalid-body",
            Some("body"),
        ),
        (
            None,
            br#"{"id": "x", "name": "n"}"#.to_vec(),
            415,
            "unsupported-media-type",
            None,
        ),
        (
            Some("text/plain"),
            br#"{"id": "x", "name": "n"}"#.to_vec(),
            415,
            "unsupported-media-type",
            None,
        ),
        (
            json_ct,
            format!("{{\"id\":\"x\",\"name\":\"{}\"}}", "n".repeat(10_000)).into_bytes(),
            413,
            "payload-too-large",
            None,
        ),
    ];
    for (ct, body, status, slug, field) in cases {
        let resp = post_raw(&app, "/v1/spaces", ct, body).await;
        let problem = expect_problem(resp, status, slug).await;
        if let Some(field) = field {
            assert_eq!(problem["errors"][0]["field"], field, "{problem}");
        }
    }
    // PATCH bodies go through the same extractor.
    let resp = app
        .http
        .patch(app.url("/v1/spaces/keep"))
        .bearer_auth(admin_token())
        .header("content-type", "application/json")
        .body(r#"{"name": ["not", "a", "string"]}"#)
        .send()
        .await
        .unwrap();
    expect_problem(resp, 422, "invalid-body").await;
    assert_eq!(ledger_snapshot(&app).await, before);
}

#[tokio::test]
async fn bad_paths_queries_routes_and_methods() {
    let app = TestApp::start().await;
    let get = |path: &'static str| app.req(Method::GET, path).send();

    expect_problem(
        get("/v1/spaces/Not_A_Slug").await.unwrap(),
        400,
        "invalid-parameter",
    )
    .await;
    expect_problem(
        get("/v1/spaces?limit=abc").await.unwrap(),
        400,
        "invalid-parameter",
    )
    .await;
    for nul in [
        "/v1/spaces/acme/assignments?adam_id=%00",
        "/v1/spaces/a%00b",
        "/v1/spaces?cursor=x%00",
    ] {
        expect_problem(get(nul).await.unwrap(), 400, "invalid-parameter").await;
    }
    expect_problem(
        get("/v1/spaces?limit=0").await.unwrap(),
        400,
        "invalid-parameter",
    )
    .await;
    expect_problem(
        get("/v1/spaces?limit=100000").await.unwrap(),
        400,
        "invalid-parameter",
    )
    .await;
    expect_problem(
        get("/v1/spaces?cursor=%25%25").await.unwrap(),
        400,
        "invalid-parameter",
    )
    .await;
    expect_problem(
        get("/v1/spaces?colour=blue").await.unwrap(),
        400,
        "invalid-parameter",
    )
    .await;
    expect_problem(get("/v1/nothing-here").await.unwrap(), 404, "not-found").await;
    expect_problem(get("/").await.unwrap(), 404, "not-found").await;

    let resp = app.req(Method::PUT, "/v1/spaces/x").send().await.unwrap();
    assert_eq!(resp.headers()["allow"], "DELETE, GET, PATCH");
    expect_problem(resp, 405, "method-not-allowed").await;
    let resp = app.req(Method::DELETE, "/v1/spaces").send().await.unwrap();
    assert_eq!(resp.headers()["allow"], "GET, POST");
    expect_problem(resp, 405, "method-not-allowed").await;
    let resp = app.http.post(app.url("/livez")).send().await.unwrap();
    expect_problem(resp, 405, "method-not-allowed").await;
}

#[tokio::test]
async fn database_outage_is_503_not_500() {
    let app = TestApp::start().await;
    assert_eq!(
        app.req(Method::GET, "/v1/spaces")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Take the database away underneath the running service.
    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
    let mut admin = AsyncPgConnection::establish(&crate::support::db::server().await.admin_url)
        .await
        .unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", app.db.name))
        .await
        .unwrap();
    let resp = app.req(Method::GET, "/v1/spaces").send().await.unwrap();
    assert_eq!(resp.headers()["retry-after"], "1");
    let body = expect_problem(resp, 503, "unavailable").await;
    // Internals (connection strings, SQL) never reach the body.
    let text = body.to_string();
    assert!(
        !text.contains("postgres://") && !text.contains("SELECT"),
        "{text}"
    );
    let resp = app.http.get(app.url("/readyz")).send().await.unwrap();
    expect_problem(resp, 503, "unavailable").await;
}

#[actix_web::test]
async fn a_panicking_handler_answers_a_generic_500_problem() {
    use actix_web::middleware::from_fn;
    use actix_web::{App, HttpResponse, test, web};
    async fn boom() -> HttpResponse {
        panic!("secret detail in a panic");
    }
    let app = test::init_service(
        App::new()
            .route("/boom", web::get().to(boom))
            .wrap(from_fn(vpp_broker::http::context::middleware)),
    )
    .await;
    let resp =
        test::try_call_service(&app, test::TestRequest::get().uri("/boom").to_request()).await;
    let resp = match resp {
        Ok(r) => r.into_parts().1,
        Err(e) => e.error_response(),
    };
    assert_eq!(resp.status(), 500);
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "application/problem+json"
    );
    assert!(resp.headers().contains_key("x-request-id"));
    let body = actix_web::body::to_bytes(resp.into_body()).await.unwrap();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["type"], "urn:vpp-broker:problem:internal");
    assert!(!problem.to_string().contains("secret detail"), "{problem}");
}
