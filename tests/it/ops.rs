//! Operational routes, request ids, metrics and logs.

use reqwest::Method;

use crate::support::{TestApp, expect_problem};

#[tokio::test]
async fn livez_and_readyz() {
    let app = TestApp::start().await;
    let live: serde_json::Value = app
        .http
        .get(app.url("/livez"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(live["status"], "ok");
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    // Revert the newest migration: the service is no longer ready, and says why.
    vpp_broker::db::migrate::revert(&app.db.url, 1)
        .await
        .unwrap();
    let resp = app.http.get(app.url("/readyz")).send().await.unwrap();
    let body = expect_problem(resp, 503, "unavailable").await;
    assert!(
        body["detail"].as_str().unwrap().contains("migrations"),
        "{body}"
    );
    // Liveness does no I/O and stays green.
    assert_eq!(
        app.http
            .get(app.url("/livez"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = TestApp::start().await;
    let resp = app
        .req(Method::GET, "/v1/spaces")
        .header("x-request-id", "caller-chosen-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "caller-chosen-42");

    let resp = app.req(Method::GET, "/v1/spaces").send().await.unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");

    // Unsafe ids are replaced, not echoed.
    let resp = app
        .req(Method::GET, "/v1/spaces")
        .header("x-request-id", "evil\tvalue with spaces")
        .send()
        .await
        .unwrap();
    assert_ne!(resp.headers()["x-request-id"], "evil\tvalue with spaces");
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_report_the_pool() {
    let app = TestApp::start().await;
    for _ in 0..3 {
        app.req(Method::GET, "/v1/spaces/some-space")
            .send()
            .await
            .unwrap();
    }
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("http_requests_total")
                && l.contains("method=\"GET\"")
                && l.contains("route=\"/v1/spaces/{space}\"")
                && l.contains("status=\"404\"")
        })
        .unwrap_or_else(|| panic!("no request counter in:\n{text}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 3.0, "{line}");
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "histogram missing"
    );
    assert!(
        text.contains("db_pool_connections{state=\"max\"}"),
        "pool gauge missing"
    );
}

#[tokio::test]
async fn docs_ui_is_served_offline() {
    let app = TestApp::start().await;
    // `/docs` leads to the UI too (clients follow the redirect).
    let resp = app.http.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.url().path().ends_with("/docs/"), "{}", resp.url());
    let resp = app.http.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    assert!(html.to_lowercase().contains("swagger"), "{html}");
    // The UI's assets come from the binary, not a CDN.
    assert!(
        !html.contains("cdn.") && !html.contains("unpkg.com"),
        "{html}"
    );
    let resp = app
        .http
        .get(app.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap().len() > 100_000);
    let init = app
        .http
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains("/openapi.json"), "{init}");
}

#[tokio::test]
async fn every_database_session_of_the_service_names_itself() {
    // Issue 10: the listener connections had no `application_name`, so an operator could not
    // tell them from anything else in `pg_stat_activity`.
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Session {
        #[diesel(sql_type = diesel::sql_types::Text)]
        application_name: String,
    }
    let app = TestApp::start_opts(crate::support::app::Options {
        dispatcher: Some(crate::support::app::fast_dispatch("")),
        ..Default::default()
    })
    .await;
    let mut conn = app.db.connect().await;
    let names = crate::support::eventually(
        "the listeners, the dispatcher and the pool are connected",
        async || {
            diesel::sql_query(
                "SELECT application_name FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid()
                    AND backend_type = 'client backend'
                  ORDER BY application_name",
            )
            .load::<Session>(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.application_name)
            .collect::<Vec<_>>()
        },
        |names| {
            [
                "vpp-broker listener vpp_assignment",
                "vpp-broker listener vpp_events",
            ]
            .iter()
            .all(|want| names.iter().any(|n| n == want))
                && names.iter().any(|n| n == "vpp-broker dispatcher")
                // A backend still starting shows no name for an instant (the pool opening one
                // more connection): look again; a session without a name stays without one.
                && names.iter().all(|n| n.starts_with("vpp-broker"))
        },
    )
    .await;
    for name in &names {
        assert!(
            name.starts_with("vpp-broker"),
            "an unnamed session: {names:?}"
        );
    }
}
