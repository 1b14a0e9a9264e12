//! The spaces resource: create, list with cursor pagination, get, update with ETag/If-Match,
//! delete.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use reqwest::Method;
use serde_json::{Value, json};
use vpp_broker::db::schema::{activity_log, spaces};

use vpp_broker::api::spaces::{Space, SpacePage};

use crate::support::{TestApp, expect_problem, token};

async fn create(app: &TestApp, id: &str) -> reqwest::Response {
    app.req(Method::POST, "/v1/spaces")
        .json(&json!({"id": id, "name": format!("Space {id}")}))
        .send()
        .await
        .unwrap()
}

async fn count_spaces(app: &TestApp) -> i64 {
    let mut conn = app.db.connect().await;
    spaces::table.count().get_result(&mut conn).await.unwrap()
}

#[tokio::test]
async fn create_then_get_round_trips_with_location_and_etag() {
    let app = TestApp::start().await;
    let resp = app
        .req(Method::POST, "/v1/spaces")
        .json(&json!({"id": "acme-eu", "name": "  ACME Europe ", "description": "EU devices"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["location"], "/v1/spaces/acme-eu");
    assert_eq!(resp.headers()["etag"], "\"1\"");
    // The round trip is compared on the wire, as JSON.
    let created: Value = resp.json().await.unwrap();
    let typed: Space = serde_json::from_value(created.clone()).unwrap();
    assert_eq!(typed.name, "ACME Europe", "names are trimmed");
    assert_eq!(typed.version, 1);

    let resp = app
        .req(Method::GET, "/v1/spaces/acme-eu")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["etag"], "\"1\"");
    let got: Value = resp.json().await.unwrap();
    assert_eq!(got, created);

    // The creation is in the activity log, attributed to the caller.
    let mut conn = app.db.connect().await;
    let (actor, action): (String, String) = activity_log::table
        .filter(activity_log::space_id.eq("acme-eu"))
        .select((activity_log::actor, activity_log::action))
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        (actor.as_str(), action.as_str()),
        ("test-caller", "space.created")
    );
}

#[tokio::test]
async fn duplicate_id_is_409_and_changes_nothing() {
    let app = TestApp::start().await;
    assert_eq!(create(&app, "dup").await.status(), 201);
    let body = expect_problem(create(&app, "dup").await, 409, "already-exists").await;
    assert!(body["detail"].as_str().unwrap().contains("dup"));
    assert_eq!(count_spaces(&app).await, 1);
}

#[tokio::test]
async fn create_validates_fields_and_grants() {
    let app = TestApp::start().await;
    let resp = app
        .req(Method::POST, "/v1/spaces")
        .json(&json!({"id": "Bad_Id", "name": "  ", "description": "x".repeat(2001)}))
        .send()
        .await
        .unwrap();
    let body = expect_problem(resp, 422, "validation-failed").await;
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["id", "name", "description"]);

    // An admin of other spaces may not create this one; a reader may not create at all.
    let resp = app
        .req_as(Method::POST, "/v1/spaces", &token("admin", &["mine"]))
        .json(&json!({"id": "theirs", "name": "x"}))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 403, "forbidden").await;
    let resp = app
        .req_as(Method::POST, "/v1/spaces", &token("licenses:read", &["*"]))
        .json(&json!({"id": "theirs", "name": "x"}))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 403, "forbidden").await;
    assert_eq!(count_spaces(&app).await, 0);
}

#[tokio::test]
async fn list_pages_with_cursors() {
    let app = TestApp::start().await;
    for id in ["e", "a", "d", "b", "c"] {
        assert_eq!(create(&app, id).await.status(), 201);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/v1/spaces?limit=2".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page: SpacePage = app.get_as(&path).await;
        pages += 1;
        seen.extend(page.items.into_iter().map(|item| item.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
    assert_eq!(pages, 3);

    // Default limit returns everything here, with no cursor (absent on the wire: read raw).
    let page: Value = app
        .req(Method::GET, "/v1/spaces")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 5);
    assert!(page.get("next_cursor").is_none());
}

#[tokio::test]
async fn update_honours_if_match() {
    let app = TestApp::start().await;
    create(&app, "s1").await;
    let patch = |etag: Option<&str>, name: &str| {
        let mut req = app
            .req(Method::PATCH, "/v1/spaces/s1")
            .json(&json!({"name": name}));
        if let Some(e) = etag {
            req = req.header("if-match", e);
        }
        req.send()
    };
    let resp = patch(Some("\"1\""), "first").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["etag"], "\"2\"");

    // A writer still holding version 1 loses, and nothing changes.
    let body = expect_problem(
        patch(Some("\"1\""), "stale").await.unwrap(),
        412,
        "precondition-failed",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("\"2\""), "{body}");
    let got: Space = app.get_as("/v1/spaces/s1").await;
    assert_eq!(got.name, "first");
    assert_eq!(got.version, 2);

    // Weak tags never match; `*` and no header always do.
    expect_problem(
        patch(Some("W/\"2\""), "weak").await.unwrap(),
        412,
        "precondition-failed",
    )
    .await;
    assert_eq!(patch(Some("*"), "star").await.unwrap().status(), 200);
    assert_eq!(patch(None, "blind").await.unwrap().status(), 200);
    let got: Space = app.get_as("/v1/spaces/s1").await;
    assert_eq!((got.name.as_str(), got.version), ("blind", 4));

    // Empty changes are refused; unknown spaces are 404.
    let resp = app
        .req(Method::PATCH, "/v1/spaces/s1")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 422, "validation-failed").await;
    let resp = app
        .req(Method::PATCH, "/v1/spaces/nope")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not-found").await;
}

#[tokio::test]
async fn concurrent_updates_with_the_same_etag_let_exactly_one_win() {
    let app = TestApp::start().await;
    create(&app, "race").await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let req = app
            .req(Method::PATCH, "/v1/spaces/race")
            .header("if-match", "\"1\"")
            .json(&json!({"name": format!("writer {i}")}));
        tasks.push(tokio::spawn(async move {
            req.send().await.unwrap().status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 412, 412, 412, 412, 412, 412, 412]);
}

#[tokio::test]
async fn delete_respects_if_match_and_references() {
    let app = TestApp::start().await;
    create(&app, "gone").await;
    let resp = app
        .req(Method::DELETE, "/v1/spaces/gone")
        .header("if-match", "\"7\"")
        .send()
        .await
        .unwrap();
    expect_problem(resp, 412, "precondition-failed").await;
    let resp = app
        .req(Method::DELETE, "/v1/spaces/gone")
        .header("if-match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = app
        .req(Method::GET, "/v1/spaces/gone")
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not-found").await;
    let resp = app
        .req(Method::DELETE, "/v1/spaces/gone")
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not-found").await;

    // A space with token accounts cannot be deleted: deleting an account revokes its licenses,
    // which must be asked for explicitly.
    create(&app, "busy").await;
    let mut conn = app.db.connect().await;
    diesel::sql_query(
        "INSERT INTO accounts (id, space_id, name, priority, location_uid, token_ciphertext,
                               token_nonce, token_key_id, token_expires_at)
         VALUES (gen_random_uuid(), 'busy', 'A', 1, 'loc-1', 'x', '123456789012', 'k1', now())",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let resp = app
        .req(Method::DELETE, "/v1/spaces/busy")
        .send()
        .await
        .unwrap();
    let body = expect_problem(resp, 409, "in-use").await;
    assert!(
        body["detail"].as_str().unwrap().contains("revoke_all"),
        "{body}"
    );
    assert_eq!(count_spaces(&app).await, 1);

    // Without accounts, what callers told the space (subjects, policies) goes with it.
    create(&app, "used").await;
    for sql in [
        "INSERT INTO subjects (id, space_id, kind, external_id) \
         VALUES (gen_random_uuid(), 'used', 'device', 'SERIAL1')",
        "INSERT INTO distribution_policies (id, space_id, adam_id, pricing_param) \
         VALUES (gen_random_uuid(), 'used', '408709785', 'STDQ')",
    ] {
        diesel::sql_query(sql).execute(&mut conn).await.unwrap();
    }
    let resp = app
        .req(Method::DELETE, "/v1/spaces/used")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(count_spaces(&app).await, 1, "only `busy` is left");
}
