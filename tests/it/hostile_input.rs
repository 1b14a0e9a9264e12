//! Hostile input that used to get through: bodies that are not JSON objects, forged or foreign
//! cursors, control characters in names, far-past times (a 500 from PostgreSQL before). Each is
//! a 4xx problem and leaves the ledger as it was.

use diesel::QueryableByName;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::app::Options;
use crate::support::fixtures::{self, APP};
use crate::support::sim::{app, location};
use crate::support::{TestApp, expect_problem};

const U1: &str = "5000000001";

#[derive(QueryableByName)]
struct Named {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Dump {
    #[diesel(sql_type = Text)]
    dump: String,
}

/// Every row of every table of the service, as text: equal dumps mean nothing changed.
async fn ledger_dump(app: &TestApp) -> String {
    let mut conn = app.db.connect().await;
    let tables: Vec<Named> = diesel::sql_query(
        "SELECT table_name::text AS name FROM information_schema.tables
          WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
            AND table_name <> '__diesel_schema_migrations'
          ORDER BY 1",
    )
    .load(&mut conn)
    .await
    .unwrap();
    assert!(tables.len() > 5, "the ledger's tables are found");
    let mut out = String::new();
    for Named { name } in tables {
        let rows: Dump = diesel::sql_query(format!(
            "SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '') AS dump FROM \"{name}\" t"
        ))
        .get_result(&mut conn)
        .await
        .unwrap();
        out.push_str(&format!("== {name}\n{}\n", rows.dump));
    }
    out
}

/// A space with an attached account and a policy; no dispatcher, so nothing moves by itself.
async fn quiet_world() -> (vpp_broker::apple_sim::SimHandle, TestApp, String) {
    let w = fixtures::world_with(
        vec![location(U1, "Library", vec![app(APP, 10)])],
        |_| Options {
            dispatcher: None,
            ..Options::default()
        },
        &[("Main", U1)],
    )
    .await;
    let resp = w
        .app
        .client("acme")
        .put_policy(
            APP,
            "STDQ",
            &json!({"disallowed": [{"kind": "device", "id": "LOST"}]}),
        )
        .await;
    assert!(resp.status().is_success(), "policy stored");
    (w.sim, w.app, w.accounts[0].to_string())
}

/// Every documented operation that takes a request body, as (method, concrete path).
fn operations_with_bodies(account: &str) -> Vec<(Method, String)> {
    let doc = vpp_broker::http::openapi::document_value(vpp_broker::api::configure);
    let mut ops = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op.get("requestBody").is_none() {
                continue;
            }
            let path = template
                .replace("{space}", "acme")
                .replace("{account}", account)
                .replace("{adam_id}", APP)
                .replace("{pricing_param}", "STDQ")
                .replace("{assignment}", "0191e3b0-0000-7000-8000-000000000000")
                .replace("{serial}", "S1")
                .replace("{client_user_id}", "u1")
                .replace("{id}", "0191e3b0-0000-7000-8000-000000000001");
            assert!(!path.contains('{'), "a parameter of {template} is filled");
            ops.push((method.to_uppercase().parse().unwrap(), path));
        }
    }
    ops
}

#[tokio::test]
async fn bodies_that_are_not_objects_are_refused_by_every_operation_and_change_nothing() {
    let (_sim, app, account) = quiet_world().await;
    let ops = operations_with_bodies(&account);
    assert!(
        ops.len() >= 10,
        "every operation with a body is tried: {ops:?}"
    );
    let before = ledger_dump(&app).await;
    // serde fills a struct from an array by position: each of these used to be accepted by some
    // operation (an empty policy, a space named "X", an allocation of S1).
    let bodies = [
        json!([]),
        json!(["x", "X"]),
        json!([{"adam_id": APP}, {"kind": "device", "id": "S1"}]),
        json!([[], [], [], []]),
        json!("x"),
        json!(7),
        Value::Null,
    ];
    for (method, path) in &ops {
        for body in &bodies {
            let resp = app
                .req(method.clone(), path)
                .json(body)
                .send()
                .await
                .unwrap();
            let problem = expect_problem(resp, 422, "invalid-body").await;
            assert_eq!(
                problem["errors"][0]["field"], "body",
                "{method} {path} with {body}: {problem}"
            );
        }
    }
    assert_eq!(before, ledger_dump(&app).await, "the ledger is unchanged");
    let policy = app
        .get_json(&format!("/v1/spaces/acme/policies/{APP}/STDQ"))
        .await;
    assert_eq!(policy["disallowed"][0]["id"], "LOST", "{policy}");
}

/// The same trick one level down: an array where the contract says object, inside an object.
/// `{"subject": ["device", "S9"]}` used to be read as the device S9 (and took a license);
/// `{"disallowed": [["device", "X"]]}` as a policy entry. Each is 422 naming the field.
#[tokio::test]
async fn arrays_in_place_of_nested_objects_are_refused_and_change_nothing() {
    let (_sim, app, account) = quiet_world().await;
    let before = ledger_dump(&app).await;
    let policy = format!("/v1/spaces/acme/policies/{APP}/STDQ");
    let cases: Vec<(Method, String, Value, &str)> = vec![
        (
            Method::POST,
            "/v1/spaces/acme/assignments".into(),
            json!({"asset": {"adam_id": APP}, "subject": ["device", "S9"]}),
            "subject",
        ),
        (
            Method::POST,
            "/v1/spaces/acme/assignments".into(),
            json!({"asset": [APP], "subject": {"kind": "device", "id": "S9"}}),
            "asset",
        ),
        (
            Method::PUT,
            policy.clone(),
            json!({"disallowed": [["device", "X"]]}),
            "disallowed[0]",
        ),
        (
            Method::PUT,
            policy.clone(),
            json!({"reserved": [{"kind": "device", "id": "R1"}, ["device", "R2"]]}),
            "reserved[1]",
        ),
        (
            Method::POST,
            "/v1/spaces/acme/revocations".into(),
            json!({"asset": [APP]}),
            "asset",
        ),
        (
            Method::PATCH,
            format!("/v1/spaces/acme/accounts/{account}"),
            json!({"distribution_list": [["group", "sales"]]}),
            "distribution_list[0]",
        ),
    ];
    for (method, path, body, field) in cases {
        let resp = app
            .req(method.clone(), &path)
            .header("if-match", "\"1\"")
            .json(&body)
            .send()
            .await
            .unwrap();
        let problem = expect_problem(resp, 422, "invalid-body").await;
        assert_eq!(
            problem["errors"][0]["field"], field,
            "{method} {path} with {body}: {problem}"
        );
    }
    assert_eq!(before, ledger_dump(&app).await, "the ledger is unchanged");
    // The documented shapes still pass (arrays where arrays belong).
    let resp = app
        .req(Method::POST, "/v1/spaces/acme/assignments")
        .json(&json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": "S9", "groups": ["a", "b"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

async fn next_cursor_of(app: &TestApp, path: &str) -> String {
    let page = app.get_json(path).await;
    page["next_cursor"]
        .as_str()
        .unwrap_or_else(|| panic!("{path} has a next page: {page}"))
        .to_owned()
}

#[tokio::test]
async fn forged_and_foreign_cursors_are_400_on_every_list() {
    let (_sim, app, _account) = quiet_world().await;
    app.space("beta").await;
    let resp = app
        .req(Method::PUT, &format!("/v1/spaces/beta/policies/{APP}/STDQ"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let spaces = next_cursor_of(&app, "/v1/spaces?limit=1").await;
    let accounts = next_cursor_of(&app, "/v1/spaces/acme/accounts?limit=1").await;
    let policies = next_cursor_of(&app, "/v1/spaces/acme/policies?limit=1").await;
    // Each list's own cursor still pages.
    let second = app
        .get_json(&format!("/v1/spaces?limit=1&cursor={spaces}"))
        .await;
    assert_eq!(second["items"][0]["id"], "beta", "{second}");
    let after_policy = app
        .get_json(&format!(
            "/v1/spaces/acme/policies?limit=1&cursor={policies}"
        ))
        .await;
    assert_eq!(after_policy["items"], json!([]), "{after_policy}");
    let a_uuid = "0191e3b0-0000-7000-8000-000000000000";
    let own_assignments = b64(&format!(r#"{{"l":"assignments:acme","k":"{a_uuid}"}}"#));
    app.get_json(&format!(
        "/v1/spaces/acme/assignments?cursor={own_assignments}"
    ))
    .await;

    let before = ledger_dump(&app).await;
    let cases = [
        // The issue's example: a bare NUL string used to reach PostgreSQL (500).
        ("/v1/spaces", b64("\"\\u0000\"")),
        ("/v1/spaces", b64(r#"{"l":"spaces","k":"a\u0000"}"#)),
        ("/v1/spaces", b64(r#"{"l":"spaces","k":"\u001b[31m"}"#)),
        ("/v1/spaces", b64(r#"{"l":"spaces","k":["a","b"]}"#)),
        ("/v1/spaces", "!!!".to_owned()),
        ("/v1/spaces", "AAAA".to_owned()),
        ("/v1/spaces", accounts.clone()),
        ("/v1/spaces/acme/accounts", spaces.clone()),
        (
            "/v1/spaces/acme/accounts",
            b64(r#"{"l":"accounts:acme","k":"1"}"#),
        ),
        (
            "/v1/spaces/acme/accounts",
            b64(r#"{"l":"accounts:acme","k":99999999999}"#),
        ),
        ("/v1/spaces/acme/assignments", accounts.clone()),
        (
            "/v1/spaces/acme/assignments",
            b64(r#"{"l":"assignments:acme","k":"x\u0000"}"#),
        ),
        ("/v1/spaces/beta/assignments", own_assignments.clone()),
        ("/v1/spaces/acme/policies", spaces.clone()),
        ("/v1/spaces/beta/policies", policies.clone()),
        (
            "/v1/spaces/acme/policies",
            b64(r#"{"l":"policies:acme","k":["\u0000","STDQ"]}"#),
        ),
    ];
    for (list, cursor) in cases {
        let resp = app
            .req(Method::GET, &format!("{list}?cursor={cursor}"))
            .send()
            .await
            .unwrap();
        let problem = expect_problem(resp, 400, "invalid-parameter").await;
        assert!(
            problem["detail"].as_str().unwrap().contains("cursor"),
            "{list} {cursor}: {problem}"
        );
    }
    assert_eq!(before, ledger_dump(&app).await, "reads change nothing");
}

#[tokio::test]
async fn control_characters_in_names_and_descriptions_are_refused_and_change_nothing() {
    let (_sim, app, account) = quiet_world().await;
    let before = ledger_dump(&app).await;
    let account_path = format!("/v1/spaces/acme/accounts/{account}");
    // (method, path, body, offending field)
    let mut cases: Vec<(Method, String, Value, &str)> = Vec::new();
    for bad in [
        "a\u{1}b",
        "red\u{1b}[31m",
        "two\r\nlines",
        "a\nb",
        "tab\tbed",
        "a\u{202e}b",
    ] {
        cases.push((
            Method::POST,
            "/v1/spaces".into(),
            json!({"id": "evil", "name": bad}),
            "name",
        ));
        cases.push((
            Method::PATCH,
            "/v1/spaces/acme".into(),
            json!({"name": bad}),
            "name",
        ));
        cases.push((
            Method::PATCH,
            account_path.clone(),
            json!({"name": bad}),
            "name",
        ));
        cases.push((
            Method::POST,
            "/v1/spaces/acme/accounts".into(),
            json!({"name": bad, "stoken": "e30"}),
            "name",
        ));
    }
    for bad in [
        "a\u{1}b",
        "red\u{1b}[31m",
        "two\r\nlines",
        "a\nb",
        "bell\u{7}",
    ] {
        cases.push((
            Method::POST,
            "/v1/spaces".into(),
            json!({"id": "evil", "name": "Evil", "description": bad}),
            "description",
        ));
        cases.push((
            Method::PATCH,
            "/v1/spaces/acme".into(),
            json!({"description": bad}),
            "description",
        ));
    }
    for (method, path, body, field) in cases {
        let resp = app
            .req(method.clone(), &path)
            .json(&body)
            .send()
            .await
            .unwrap();
        let problem = expect_problem(resp, 422, "validation-failed").await;
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(fields.contains(&field), "{method} {path} {body}: {problem}");
    }
    assert_eq!(before, ledger_dump(&app).await, "nothing was stored");

    // Ordinary text still goes through: accents, dashes, emoji; a tab in a description.
    let resp = app
        .req(Method::PATCH, "/v1/spaces/acme")
        .json(&json!({"name": "ACME – Süd 🏢", "description": "column\tseparated"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let space = app.get_json("/v1/spaces/acme").await;
    assert_eq!(space["name"], "ACME – Süd 🏢");
    assert_eq!(space["description"], "column\tseparated");
}

/// V2, V5: times before 2000-01-01 (chrono parses years PostgreSQL refuses, e.g. -5000) in
/// lifecycle events and `PUT …/devices|users` are 422 problems, never a 500; a batch keeps its
/// good events.
#[tokio::test]
async fn far_past_times_are_refused_per_event_and_by_put_and_change_nothing() {
    let (_sim, app, _account) = quiet_world().await;
    let before = ledger_dump(&app).await;
    let at = |id: &str, when: &str| {
        json!({"id": id, "source": "mdm", "type": "device.seen", "occurred_at": when,
               "subject": {"id": "D1"}, "data": {}})
    };
    let far = [
        "-5000-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "1969-12-31T23:59:59Z",
        "1999-12-31T23:59:59Z",
    ];
    let bad: Vec<Value> = far
        .iter()
        .enumerate()
        .map(|(i, w)| at(&format!("far{i}"), w))
        .collect();
    let resp = app
        .req(Method::POST, "/v1/spaces/acme/lifecycle-events")
        .json(&json!({"events": bad}))
        .send()
        .await
        .unwrap();
    let problem = expect_problem(resp, 422, "validation-failed").await;
    assert_eq!(
        problem["errors"][0]["field"], "events[0].occurred_at",
        "{problem}"
    );
    for (path, when) in far.iter().flat_map(|w| {
        [
            ("/v1/spaces/acme/devices/D1", *w),
            ("/v1/spaces/acme/users/u1", *w),
        ]
    }) {
        let resp = app
            .req(Method::PUT, path)
            .json(&json!({"last_seen": when}))
            .send()
            .await
            .unwrap();
        let problem = expect_problem(resp, 422, "validation-failed").await;
        assert_eq!(
            problem["errors"][0]["field"], "last_seen",
            "{path} {when}: {problem}"
        );
    }
    assert_eq!(before, ledger_dump(&app).await, "nothing was stored");

    // Among good events: each far-past one rejected with its problem, the good one stored.
    let mut events = bad.clone();
    events.push(at("good", "2020-06-01T00:00:00Z"));
    let resp = app
        .req(Method::POST, "/v1/spaces/acme/lifecycle-events")
        .json(&json!({"events": events}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["accepted"], 1, "{body}");
    assert_eq!(body["rejected"], far.len(), "{body}");
    for i in 0..far.len() {
        assert_eq!(
            body["events"][i]["problem"]["errors"][0]["field"], "occurred_at",
            "{body}"
        );
    }
}
