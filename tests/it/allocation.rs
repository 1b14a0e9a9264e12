//! The allocation engine against PostgreSQL and the Apple simulator over real HTTP, with the
//! dispatcher running: rules A1–A10, V1, T7, T10, each test named after its rule.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use reqwest::Method;
use serde_json::{Value, json};
use vpp_broker::apple::types::{AssetKey, PricingParam};
use vpp_broker::apple_sim::{FailRule, FaultsPatch, SimHandle, TokenStatus};
use vpp_broker::db::schema::{assets, assignments};

use crate::support::sim::{self, app, book, location};
use crate::support::{TestApp, expect_problem, token};

const U1: &str = "2000000001";
const U2: &str = "2000000002";
const APP: &str = "408709785";
const BOOK: &str = "377298193";

/// Two accounts in space `acme`: A (priority 1) and B (priority 2), each owning `APP`.
struct World {
    sim: SimHandle,
    app: TestApp,
    a: String,
    b: String,
}

async fn world(total_a: i64, total_b: i64) -> World {
    let sim = sim::start(vec![
        location(U1, "Library A", vec![app(APP, total_a), book(BOOK, 5)]),
        location(U2, "Library B", vec![app(APP, total_b)]),
    ])
    .await;
    let app = TestApp::with_sim(&sim).await;
    app.space("acme").await;
    let a = app.account("acme", "A", &sim::stoken(&sim, U1)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = app.account("acme", "B", &sim::stoken(&sim, U2)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    World { sim, app, a, b }
}

fn device(serial: &str) -> Value {
    json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": serial}})
}

async fn allocate(app: &TestApp, body: Value) -> reqwest::Response {
    app.req(Method::POST, "/v1/spaces/acme/assignments")
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Allocates `APP` for a device in the background; resolves to the HTTP status.
fn spawn_allocation(app: &TestApp, serial: &str) -> tokio::task::JoinHandle<u16> {
    let req = app
        .req(Method::POST, "/v1/spaces/acme/assignments")
        .json(&device(serial));
    tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
}

async fn allocated(app: &TestApp, body: Value) -> Value {
    let resp = allocate(app, body).await;
    let status = resp.status();
    let json: Value = resp.json().await.unwrap();
    assert_eq!(status, 201, "{json}");
    json
}

async fn get(app: &TestApp, path: &str) -> Value {
    app.get_json(path).await
}

/// Waits until the assignment reaches a final state (through the API's bounded wait).
async fn final_state(app: &TestApp, id: &str) -> Value {
    let v = get(app, &format!("/v1/spaces/acme/assignments/{id}?wait=20")).await;
    assert!(
        ["active", "failed", "revoked"].contains(&v["state"].as_str().unwrap()),
        "not final after 20 s: {v}"
    );
    v
}

async fn held(app: &TestApp, account: &str) -> i32 {
    let mut conn = app.db.connect().await;
    let id: uuid::Uuid = account.parse().unwrap();
    assets::table
        .filter(assets::account_id.eq(id))
        .filter(assets::adam_id.eq(APP))
        .select(assets::held)
        .first(&mut conn)
        .await
        .unwrap()
}

async fn sim_serials(sim: &SimHandle, u_id: &str) -> Vec<String> {
    let mut serials: Vec<String> = sim
        .location(u_id)
        .await
        .unwrap()
        .assignments
        .into_iter()
        .filter(|a| a.adam_id == APP)
        .filter_map(|a| a.serial_number)
        .collect();
    serials.sort();
    serials
}

#[tokio::test]
async fn a1_accounts_are_tried_in_priority_order_and_apple_confirms() {
    let w = world(5, 5).await;
    let body = allocated(&w.app, device("S1")).await;
    assert_eq!(body["account_id"], w.a);
    assert_eq!(body["rule"], "priority");
    assert_eq!(body["created"], true);
    assert_eq!(body["assignment"]["state"], "pending");
    assert_eq!(
        body["assignment"]["subject"],
        json!({"kind": "device", "id": "S1"})
    );
    let id = body["assignment"]["id"].as_str().unwrap();
    let done = final_state(&w.app, id).await;
    assert_eq!(done["state"], "active");
    assert!(done["apple_event_id"].is_string());
    assert_eq!(sim_serials(&w.sim, U1).await, ["S1"]);
    assert_eq!(held(&w.app, &w.a).await, 1);

    // After a reorder, new allocations go to the new first account (A5: the old one stays).
    w.app
        .req(Method::PUT, "/v1/spaces/acme/account-order")
        .json(&json!({"order": [w.b, w.a]}))
        .send()
        .await
        .unwrap();
    let next = allocated(&w.app, device("S2")).await;
    assert_eq!(next["account_id"], w.b);
    assert_eq!(
        get(&w.app, &format!("/v1/spaces/acme/assignments/{id}")).await["account_id"],
        w.a
    );
}

#[tokio::test]
async fn a2_reserved_subjects_come_first_and_their_licenses_are_held_back() {
    let w = world(2, 5).await;
    let resp = w
        .app
        .req(Method::PUT, &format!("/v1/spaces/acme/policies/{APP}/STDQ"))
        .json(&json!({"reserved": [
            {"kind": "device", "id": "VIP-A", "account_id": w.a},
            {"kind": "device", "id": "VIP-B", "account_id": w.b},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    // VIP-B is served from its reservation's account although A comes first.
    let vip_b = allocated(&w.app, device("VIP-B")).await;
    assert_eq!(
        (vip_b["account_id"].as_str(), vip_b["rule"].as_str()),
        (Some(w.b.as_str()), Some("reservation"))
    );
    // A holds 2: one is held back for VIP-A, so ordinary devices get one from A, then go to B.
    let first = allocated(&w.app, device("D1")).await;
    assert_eq!(first["account_id"], w.a);
    let second = allocated(&w.app, device("D2")).await;
    assert_eq!(second["account_id"], w.b);
    assert_eq!(second["rule"], "fallback");
    let skipped = &second["decision"]["skipped"][0];
    assert_eq!(
        skipped["reason"], "held_for_reservations",
        "the license left is VIP-A's, not gone"
    );
    assert!(
        skipped["detail"]
            .as_str()
            .unwrap()
            .contains("reservations 1"),
        "{skipped}"
    );
    // VIP-A still gets its license from A.
    let vip_a = allocated(&w.app, device("VIP-A")).await;
    assert_eq!(
        (vip_a["account_id"].as_str(), vip_a["rule"].as_str()),
        (Some(w.a.as_str()), Some("reservation"))
    );
}

#[tokio::test]
async fn a3_disallowed_subjects_get_a_clear_403_and_nothing_changes() {
    let w = world(5, 5).await;
    w.app
        .req(Method::PUT, &format!("/v1/spaces/acme/policies/{APP}/STDQ"))
        .json(&json!({
            "disallowed": [{"kind": "device", "id": "BANNED"}, {"kind": "group", "id": "students"}],
            "fcfs_groups": ["staff", "students-staff"]
        }))
        .send()
        .await
        .unwrap();
    let cases = [
        device("BANNED"),
        json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": "S1", "groups": ["students", "staff"]}}),
        // Not in a first-come-first-served group.
        json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": "S2", "groups": ["visitors"]}}),
    ];
    for body in cases {
        let problem = expect_problem(allocate(&w.app, body).await, 403, "subject-disallowed").await;
        assert!(problem["detail"].as_str().unwrap().contains("policy"));
    }
    assert_eq!(held(&w.app, &w.a).await, 0);
    let ok = allocated(
        &w.app,
        json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": "S3", "groups": ["staff"]}}),
    )
    .await;
    assert_eq!(ok["account_id"], w.a);
}

#[tokio::test]
async fn a4_fallback_needs_the_distribution_list_and_exhaustion_explains_itself() {
    let w = world(1, 5).await;
    w.app
        .req(Method::PATCH, &format!("/v1/spaces/acme/accounts/{}", w.b))
        .json(&json!({"distribution_list": [{"kind": "group", "value": "staff"}, {"kind": "device", "value": "LISTED"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(allocated(&w.app, device("FIRST")).await["account_id"], w.a);
    // A is exhausted; B only serves its list.
    let refused = allocate(&w.app, device("OUTSIDER")).await;
    let problem = expect_problem(refused, 409, "no-license-available").await;
    let accounts = problem["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 2);
    assert_eq!(accounts[0]["account_id"], w.a);
    assert_eq!(accounts[0]["reason"], "no_free_license");
    assert_eq!(accounts[1]["account_id"], w.b);
    assert_eq!(accounts[1]["reason"], "not_on_distribution_list");
    let by_group = allocated(
        &w.app,
        json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": "STAFFER", "groups": ["staff"]}}),
    )
    .await;
    assert_eq!(
        (by_group["account_id"].as_str(), by_group["rule"].as_str()),
        (Some(w.b.as_str()), Some("fallback"))
    );
    assert_eq!(allocated(&w.app, device("LISTED")).await["account_id"], w.b);
}

#[tokio::test]
async fn a6_allocation_is_idempotent_and_idempotency_keys_replay() {
    let w = world(5, 5).await;
    let first = allocated(&w.app, device("S1")).await;
    let again = allocate(&w.app, device("S1")).await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["created"], false);
    assert_eq!(again["rule"], "existing");
    assert_eq!(again["assignment"]["id"], first["assignment"]["id"]);

    let with_key = |serial: &str, key: &str| {
        w.app
            .req(Method::POST, "/v1/spaces/acme/assignments")
            .header("idempotency-key", key)
            .json(&device(serial))
            .send()
    };
    let one = with_key("S2", "key-1").await.unwrap();
    assert_eq!(one.status(), 201);
    let one: Value = one.json().await.unwrap();
    let replay = with_key("S2", "key-1").await.unwrap();
    assert_eq!(replay.status(), 201, "the first answer is replayed");
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(replay, one);
    expect_problem(
        with_key("S3", "key-1").await.unwrap(),
        422,
        "idempotency-key-reused",
    )
    .await;
    // Concurrent requests with one key allocate once.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let req = w
            .app
            .req(Method::POST, "/v1/spaces/acme/assignments")
            .header("idempotency-key", "key-2")
            .json(&device("S4"));
        tasks.push(tokio::spawn(async move {
            req.send().await.unwrap().json::<Value>().await.unwrap()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap()["assignment"]["id"].clone());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
    assert_eq!(held(&w.app, &w.a).await, 3);
}

#[tokio::test]
async fn a7_a_users_license_covers_their_device_but_shared_ipads_get_device_licenses() {
    let w = world(5, 5).await;
    let user = allocated(
        &w.app,
        json!({"asset": {"adam_id": APP}, "subject": {"kind": "user", "id": "u1"}}),
    )
    .await;
    assert_eq!(user["license_type"], "user");
    let covered = allocate(
        &w.app,
        json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": "D1", "user": "u1"}}),
    )
    .await;
    assert_eq!(covered.status(), 200);
    let covered: Value = covered.json().await.unwrap();
    assert_eq!(covered["rule"], "user_license_covers_device");
    assert_eq!(covered["assignment"]["id"], user["assignment"]["id"]);
    let shared = allocated(
        &w.app,
        json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": "IPAD", "user": "u1", "shared_ipad": true}}),
    )
    .await;
    assert_eq!(shared["license_type"], "device");
    // "regardless of whether device-based licenses are selected": a user wish on a Shared iPad
    // gets the device license, not a 422.
    let shared_user_wish = allocated(
        &w.app,
        json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": "IPAD2", "user": "u1", "shared_ipad": true}, "license_type": "user"}),
    )
    .await;
    assert_eq!(
        shared_user_wish["license_type"], "device",
        "{shared_user_wish}"
    );
    assert_eq!(shared_user_wish["assignment"]["subject"]["id"], "IPAD2");
    // The user license reaches Apple through a registered user.
    let done = final_state(&w.app, user["assignment"]["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "active", "{done}");
    let snapshot = w.sim.location(U1).await.unwrap();
    assert!(snapshot.users.iter().any(|u| u.client_user_id == "u1"));
    assert!(
        snapshot
            .assignments
            .iter()
            .any(|a| a.client_user_id.as_deref() == Some("u1"))
    );
    // Books are not device-assignable: `auto` picks the device's user.
    let book_body = json!({"asset": {"adam_id": BOOK}, "subject": {"kind": "device", "id": "D2", "user": "u2"}});
    let b = allocated(&w.app, book_body).await;
    assert_eq!(
        (
            b["license_type"].as_str(),
            b["assignment"]["subject"]["id"].as_str()
        ),
        (Some("user"), Some("u2"))
    );
    let no_user = allocate(
        &w.app,
        json!({"asset": {"adam_id": BOOK}, "subject": {"kind": "device", "id": "D3"}}),
    )
    .await;
    expect_problem(no_user, 422, "license-type-unavailable").await;
}

#[tokio::test]
async fn a8_free_apps_consume_licenses_like_paid_ones() {
    // A free app bought with 2 licenses: the third managed install has none.
    let w = world(2, 0).await;
    allocated(&w.app, device("S1")).await;
    allocated(&w.app, device("S2")).await;
    expect_problem(
        allocate(&w.app, device("S3")).await,
        409,
        "no-license-available",
    )
    .await;
    assert_eq!(held(&w.app, &w.a).await, 2);
}

#[tokio::test]
async fn a9_never_over_allocate_under_concurrency() {
    let w = world(25, 0).await;
    let mut tasks = Vec::new();
    for i in 0..120 {
        tasks.push(spawn_allocation(&w.app, &format!("SERIAL-{i:04}")));
    }
    let mut created = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            201 => created += 1,
            409 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((created, refused), (25, 95));
    assert_eq!(held(&w.app, &w.a).await, 25);
    let mut conn = w.app.db.connect().await;
    let live: i64 = assignments::table
        .filter(assignments::state.eq_any(["pending", "associating", "active"]))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(live, 25);
    // Apple ends up holding exactly the ledger's assignments.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sim_serials(&w.sim, U1).await.len() < 25 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sim_serials(&w.sim, U1).await.len(), 25);
}

#[tokio::test]
async fn a10_unusable_accounts_queue_or_skip_as_configured_and_nothing_is_lost() {
    let w = world(5, 5).await;
    // A is revoked at Apple and the service knows it (a Test found out).
    w.sim
        .set_location_token_status(U1, TokenStatus::Revoked)
        .await
        .unwrap();
    let resp = w
        .app
        .req(
            Method::POST,
            &format!("/v1/spaces/acme/accounts/{}/test", w.a),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.json::<Value>().await.unwrap()["report"]["status"],
        "revoked"
    );
    // Default `queue_when_throttled`: a revoked account is skipped, the next one serves (A10).
    let by_default = allocated(&w.app, device("Q0")).await;
    assert_eq!(by_default["account_id"], w.b, "{by_default}");
    assert_eq!(by_default["decision"]["skipped"][0]["reason"], "unusable");
    // `queue`: the license comes from A's ledger, the Apple call waits.
    w.app
        .req(Method::PATCH, &format!("/v1/spaces/acme/accounts/{}", w.a))
        .json(&json!({"settings": {"when_unusable": "queue"}}))
        .send()
        .await
        .unwrap();
    let queued = allocated(&w.app, device("Q1")).await;
    assert_eq!(queued["account_id"], w.a);
    assert!(
        queued["decision"]["queued_because"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = get(
        &w.app,
        &format!(
            "/v1/spaces/acme/assignments/{}",
            queued["assignment"]["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(
        still["state"], "pending",
        "no Apple call for a revoked account"
    );
    // `skip`: the next account serves.
    w.app
        .req(Method::PATCH, &format!("/v1/spaces/acme/accounts/{}", w.a))
        .json(&json!({"settings": {"when_unusable": "skip"}}))
        .send()
        .await
        .unwrap();
    let skipped = allocated(&w.app, device("Q2")).await;
    assert_eq!(skipped["account_id"], w.b);
    assert_eq!(skipped["decision"]["skipped"][0]["reason"], "unusable");
    // When A works again, its queued call goes out by itself.
    w.sim
        .set_location_token_status(U1, TokenStatus::Valid)
        .await
        .unwrap();
    w.app
        .req(
            Method::POST,
            &format!("/v1/spaces/acme/accounts/{}/test", w.a),
        )
        .send()
        .await
        .unwrap();
    let done = final_state(&w.app, queued["assignment"]["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "active");
}

#[tokio::test]
async fn t7_retry_after_pauses_only_that_account_and_work_resumes_by_itself() {
    let w = world(5, 5).await;
    w.sim
        .set_faults(&FaultsPatch {
            fail_next: Some(FailRule {
                after: 0,
                count: 1,
                status: 503,
                error_number: 9729,
                retry_after_secs: Some(2),
                retry_after_http_date: false,
                location: Some(U1.into()),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let on_a = allocated(&w.app, device("S1")).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let account = get(&w.app, &format!("/v1/spaces/acme/accounts/{}", w.a)).await;
    assert_eq!(account["status"]["state"], "throttled", "{account}");
    // B is unaffected meanwhile.
    w.app
        .req(Method::PUT, "/v1/spaces/acme/account-order")
        .json(&json!({"order": [w.b, w.a]}))
        .send()
        .await
        .unwrap();
    let on_b = allocated(&w.app, device("S2")).await;
    let b_done = final_state(&w.app, on_b["assignment"]["id"].as_str().unwrap()).await;
    assert_eq!(b_done["state"], "active");
    // A resumes after its Retry-After.
    let a_done = final_state(&w.app, on_a["assignment"]["id"].as_str().unwrap()).await;
    assert_eq!(a_done["state"], "active");
    assert_eq!(sim_serials(&w.sim, U1).await, ["S1"]);
}

#[tokio::test]
async fn t10_associations_are_batched_and_followed_to_the_end() {
    let w = world(100, 0).await;
    w.sim.reset_counters().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let req = w
            .app
            .req(Method::POST, "/v1/spaces/acme/assignments")
            .json(&device(&format!("B{i:03}")));
        tasks.push(tokio::spawn(async move {
            req.send().await.unwrap().json::<Value>().await.unwrap()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(
            t.await.unwrap()["assignment"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for id in &ids {
        assert_eq!(final_state(&w.app, id).await["state"], "active");
    }
    let counters = w.sim.counters().await.unwrap();
    let associates = counters
        .iter()
        .filter(|(k, _)| k.contains("associate") && !k.contains("dis"))
        .map(|(_, v)| *v)
        .sum::<u64>();
    assert!(
        (1..=4).contains(&associates),
        "40 associations took {associates} requests: {counters:?}"
    );
    assert_eq!(sim_serials(&w.sim, U1).await.len(), 40);
}

#[tokio::test]
async fn t10_apple_running_short_9709_reallocates_from_the_next_account() {
    let w = world(10, 10).await;
    // Apple sold fewer licenses than the ledger believes (a refund the service has not seen).
    w.sim
        .set_asset_total(U1, &AssetKey::new(APP, PricingParam::Stdq), 2)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            allocated(&w.app, device(&format!("R{i}"))).await["assignment"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut failed = 0;
    for id in &ids {
        let v = final_state(&w.app, id).await;
        if v["state"] == "failed" {
            failed += 1;
            assert_eq!(v["error"]["number"], 9709);
            let new_id = v["error"]["reallocated_to"]
                .as_str()
                .unwrap_or_else(|| panic!("not re-allocated: {v}"));
            let moved = final_state(&w.app, new_id).await;
            assert_eq!(moved["account_id"], w.b);
            assert_eq!(moved["rule"], "reallocation");
            assert_eq!(moved["state"], "active");
        }
    }
    assert_eq!(failed, 2);
    assert_eq!(sim_serials(&w.sim, U1).await.len(), 2);
    assert_eq!(sim_serials(&w.sim, U2).await.len(), 2);
    // The ledger learned Apple's count: A owns 2 of the app and holds both.
    let mut conn = w.app.db.connect().await;
    let a: uuid::Uuid = w.a.parse().unwrap();
    let (total, foreign): (i32, i32) = assets::table
        .filter(assets::account_id.eq(a))
        .filter(assets::adam_id.eq(APP))
        .select((assets::apple_total, assets::foreign_assigned))
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!((total, foreign, held(&w.app, &w.a).await), (2, 0, 2));
    // So the next device goes straight to B.
    assert_eq!(allocated(&w.app, device("R9")).await["account_id"], w.b);
}

/// A waited allocation whose association Apple refused with 9709 answers the live replacement
/// from the next account (and names the failed assignment in `replaces`), so a caller reading
/// the answer learns that the device has a license.
#[tokio::test]
async fn t10_a_waited_allocation_refused_with_9709_answers_the_live_replacement() {
    let w = world(10, 10).await;
    // Apple has none of A's licenses left (a refund the ledger has not seen yet).
    w.sim
        .set_asset_total(U1, &AssetKey::new(APP, PricingParam::Stdq), 0)
        .await
        .unwrap();
    let resp = w
        .app
        .req(Method::POST, "/v1/spaces/acme/assignments?wait=20")
        .json(&device("W1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = resp.json().await.unwrap();
    let live = &body["assignment"];
    assert_eq!(live["state"], "active", "{body}");
    assert_eq!(live["account_id"], w.b, "{body}");
    assert_eq!(body["account_id"], w.b, "{body}");
    assert_eq!(body["rule"], "reallocation", "{body}");
    assert_eq!(live["subject"]["id"], "W1");
    let failed_id = body["replaces"]
        .as_str()
        .unwrap_or_else(|| panic!("no replaces: {body}"))
        .to_owned();
    assert_ne!(failed_id, live["id"].as_str().unwrap());
    assert_eq!(body["decision"]["replaces"], failed_id.as_str());
    assert_eq!(
        location.as_deref(),
        Some(
            format!(
                "/v1/spaces/acme/assignments/{}",
                live["id"].as_str().unwrap()
            )
            .as_str()
        ),
        "Location names the live assignment"
    );
    // The failed one stays readable and points at its replacement.
    let failed = get(&w.app, &format!("/v1/spaces/acme/assignments/{failed_id}")).await;
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["account_id"], w.a);
    assert_eq!(failed["error"]["number"], 9709);
    assert_eq!(failed["error"]["reallocated_to"], live["id"]);
    assert_eq!(sim_serials(&w.sim, U2).await, vec!["W1".to_owned()]);
    assert!(sim_serials(&w.sim, U1).await.is_empty());
    // Without a wait, the answer is the allocation as decided (nothing to follow yet).
    let plain = allocated(&w.app, device("W2")).await;
    assert!(plain.get("replaces").is_none(), "{plain}");
}

#[tokio::test]
async fn v1_revocations_free_licenses_at_once_and_apple_releases_them() {
    let w = world(2, 5).await;
    let one = allocated(&w.app, device("S1")).await;
    let one_id = one["assignment"]["id"].as_str().unwrap().to_owned();
    assert_eq!(final_state(&w.app, &one_id).await["state"], "active");
    allocated(&w.app, device("S2")).await;
    // Revoke one: its license is free in the ledger immediately.
    let resp = w
        .app
        .req(
            Method::DELETE,
            &format!("/v1/spaces/acme/assignments/{one_id}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.json::<Value>().await.unwrap()["state"], "revoking");
    assert_eq!(allocated(&w.app, device("S3")).await["account_id"], w.a);
    assert_eq!(final_state(&w.app, &one_id).await["state"], "revoked");

    // All of a subject's, all of an asset's in one account, all of an account's.
    let by_subject = w
        .app
        .req(Method::POST, "/v1/spaces/acme/revocations")
        .json(&json!({"subject": {"kind": "device", "id": "S2"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(by_subject.status(), 202);
    let r: Value = by_subject.json().await.unwrap();
    assert_eq!(
        r["dropped"].as_i64().unwrap() + r["revoking"].as_i64().unwrap(),
        1
    );
    allocated(&w.app, device("S4")).await;
    let by_asset = w
        .app
        .req(Method::POST, "/v1/spaces/acme/revocations")
        .json(&json!({"asset": {"adam_id": APP, "pricing_param": "STDQ"}, "account_id": w.a}))
        .send()
        .await
        .unwrap();
    let r: Value = by_asset.json().await.unwrap();
    assert_eq!(
        r["dropped"].as_i64().unwrap() + r["revoking"].as_i64().unwrap(),
        2
    );
    assert_eq!(held(&w.app, &w.a).await, 0);
    allocated(&w.app, device("S5")).await;
    let by_account = w
        .app
        .req(Method::POST, "/v1/spaces/acme/revocations")
        .json(&json!({"account_id": w.a}))
        .send()
        .await
        .unwrap();
    let r: Value = by_account.json().await.unwrap();
    assert_eq!(
        r["dropped"].as_i64().unwrap() + r["revoking"].as_i64().unwrap(),
        1
    );
    let empty = w
        .app
        .req(Method::POST, "/v1/spaces/acme/revocations")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    expect_problem(empty, 422, "validation-failed").await;
    // Apple ends up holding nothing.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !sim_serials(&w.sim, U1).await.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sim_serials(&w.sim, U1).await.is_empty());
}

#[tokio::test]
async fn t8_deleting_with_revoke_all_waits_for_apple_then_removes_the_account() {
    let w = world(5, 5).await;
    let a = allocated(&w.app, device("S1")).await;
    final_state(&w.app, a["assignment"]["id"].as_str().unwrap()).await;
    let resp = w
        .app
        .req(Method::DELETE, &format!("/v1/spaces/acme/accounts/{}", w.a))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 409, "account-in-use").await;
    let resp = w
        .app
        .req(
            Method::DELETE,
            &format!("/v1/spaces/acme/accounts/{}?revoke_all=true", w.a),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert!(resp.json::<Value>().await.unwrap()["deletion_requested_at"].is_string());
    // New allocations skip it while it is being deleted.
    assert_eq!(allocated(&w.app, device("S2")).await["account_id"], w.b);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = w
            .app
            .req(Method::GET, &format!("/v1/spaces/acme/accounts/{}", w.a))
            .send()
            .await
            .unwrap();
        if r.status() == 404 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "account not removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sim_serials(&w.sim, U1).await.is_empty(),
        "Apple released the license"
    );
    let order = get(&w.app, "/v1/spaces/acme/account-order").await;
    assert_eq!(order["order"], json!([w.b]), "priorities closed the gap");
}

/// A deletion whose licenses cannot be released because Apple revoked the token says so on the
/// account (what blocks it, what to do), and completes once the token is replaced.
#[tokio::test]
async fn t8_a_deletion_blocked_by_a_revoked_token_says_why_and_completes_after_token_replacement() {
    let w = world(5, 5).await;
    let a = allocated(&w.app, device("S1")).await;
    final_state(&w.app, a["assignment"]["id"].as_str().unwrap()).await;
    // Apple revokes A's token (an admin downloaded a new one in Apple Business Manager).
    w.sim
        .set_location_token_status(U1, TokenStatus::Revoked)
        .await
        .unwrap();
    let path = format!("/v1/spaces/acme/accounts/{}", w.a);
    let resp = w
        .app
        .req(Method::DELETE, &format!("{path}?revoke_all=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let accepted: Value = resp.json().await.unwrap();
    assert_eq!(accepted["deletion"]["releasing"], 1, "{accepted}");
    // The dispatcher's release meets Apple's 9625: the account shows what blocks the deletion.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let blocked = loop {
        let v = get(&w.app, &path).await;
        if v["deletion"]["blocked_by"] == "revoked" {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "deletion never reported as blocked: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(blocked["status"]["state"], "revoked");
    assert_eq!(blocked["deletion"]["releasing"], 1, "{blocked}");
    let action = blocked["deletion"]["action"].as_str().unwrap();
    assert!(action.contains("replace"), "{action}");
    assert!(action.contains("/stoken"), "{action}");
    // It stays blocked (nothing is dropped, Apple still holds the license).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        get(&w.app, &path).await["deletion"]["blocked_by"],
        "revoked"
    );
    assert_eq!(sim_serials(&w.sim, U1).await, vec!["S1".to_owned()]);

    // The admin replaces the token with a new one of the same location.
    let renewed = w.sim.add_token(U1, None).await.unwrap();
    let resp = w
        .app
        .req(Method::PUT, &format!("{path}/stoken"))
        .json(&json!({"stoken": renewed.expose()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let replaced: Value = resp.json().await.unwrap();
    assert!(
        replaced["deletion"].get("blocked_by").is_none(),
        "no longer blocked: {replaced}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = w.app.req(Method::GET, &path).send().await.unwrap();
        if r.status() == 404 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "account not removed after the token was replaced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sim_serials(&w.sim, U1).await.is_empty(),
        "Apple released the license"
    );
}

#[tokio::test]
async fn dry_run_explains_without_taking_and_wait_returns_the_final_state() {
    let w = world(1, 1).await;
    let resp = allocate(&w.app, json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": "S1"}, "dry_run": true})).await;
    assert_eq!(resp.status(), 200);
    let dry: Value = resp.json().await.unwrap();
    assert_eq!(
        (dry["dry_run"].as_bool(), dry["account_id"].as_str()),
        (Some(true), Some(w.a.as_str()))
    );
    assert!(dry.get("assignment").is_none());
    assert_eq!(held(&w.app, &w.a).await, 0);
    let resp = w
        .app
        .req(Method::POST, "/v1/spaces/acme/assignments?wait=20")
        .json(&device("S1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let waited: Value = resp.json().await.unwrap();
    assert_eq!(waited["assignment"]["state"], "active", "{waited}");
    let bad_wait = w
        .app
        .req(Method::POST, "/v1/spaces/acme/assignments?wait=31")
        .json(&device("S2"))
        .send()
        .await
        .unwrap();
    expect_problem(bad_wait, 400, "invalid-parameter").await;
}

#[tokio::test]
async fn bad_allocation_requests_are_problems_and_leave_the_ledger_alone() {
    let w = world(5, 5).await;
    let cases = [
        (
            json!({"asset": {"adam_id": "999999"}, "subject": {"kind": "device", "id": "S1"}}),
            404,
            "asset-not-found",
        ),
        (
            json!({"asset": {"adam_id": "abc"}, "subject": {"kind": "device", "id": "S1"}}),
            422,
            "validation-failed",
        ),
        (
            json!({"asset": {"adam_id": APP, "pricing_param": "GOLD"}, "subject": {"kind": "device", "id": "S1"}}),
            422,
            "validation-failed",
        ),
        (
            json!({"asset": {"adam_id": APP}, "subject": {"kind": "robot", "id": "S1"}}),
            422,
            "invalid-body",
        ),
        (
            json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": ""}}),
            422,
            "validation-failed",
        ),
        (
            json!({"asset": {"adam_id": APP}, "subject": {"kind": "user", "id": "u1"}, "license_type": "device"}),
            422,
            "license-type-unavailable",
        ),
        (json!({"asset": {"adam_id": APP}}), 422, "invalid-body"),
    ];
    for (body, status, slug) in cases {
        expect_problem(allocate(&w.app, body).await, status, slug).await;
    }
    // Scopes and grants.
    let reader = token("licenses:read", &["acme"]);
    let resp = w
        .app
        .req_as(Method::POST, "/v1/spaces/acme/assignments", &reader)
        .json(&device("S1"))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 403, "forbidden").await;
    let other = token("licenses:write", &["elsewhere"]);
    let resp = w
        .app
        .req_as(Method::POST, "/v1/spaces/acme/assignments", &other)
        .json(&device("S1"))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not-found").await;
    assert_eq!(held(&w.app, &w.a).await, 0);
    let mut conn = w.app.db.connect().await;
    let n: i64 = assignments::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn v1_a_revoked_license_reused_at_once_is_released_at_apple_first() {
    // One license: every allocation needs the previous holder's release to reach Apple first.
    let w = world(1, 0).await;
    let mut previous: Option<String> = None;
    for i in 0..5 {
        if let Some(id) = &previous {
            let resp = w
                .app
                .req(Method::DELETE, &format!("/v1/spaces/acme/assignments/{id}"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 202);
        }
        let next = allocated(&w.app, device(&format!("R{i}"))).await;
        assert_eq!(next["account_id"], w.a);
        let id = next["assignment"]["id"].as_str().unwrap().to_owned();
        let done = final_state(&w.app, &id).await;
        assert_eq!(
            done["state"], "active",
            "Apple refused a license the ledger had freed: {done}"
        );
        previous = Some(id);
    }
    assert_eq!(sim_serials(&w.sim, U1).await, ["R4"]);
}

#[tokio::test]
async fn t10_full_requests_go_out_during_a_burst_and_the_remainder_waits_for_it_to_end() {
    let sim = sim::start_with(vec![location(U1, "Library A", vec![app(APP, 100)])], |s| {
        s.limits.insert("maxSerialNumbers".to_owned(), 5);
    })
    .await;
    let mut dispatch = crate::support::app::fast_dispatch("");
    // A long quiet window: only batches that fill an Apple request may go before it passes.
    dispatch.quiet = Duration::from_secs(3);
    dispatch.max_wait = Duration::from_secs(3);
    let app_ = TestApp::start_opts(crate::support::app::Options {
        apple_base_url: sim.base_url(),
        dispatcher: Some(dispatch),
        ..Default::default()
    })
    .await;
    app_.space("acme").await;
    app_.account("acme", "A", &sim::stoken(&sim, U1)).await;
    // The account's sync and config calls are done; count associations from here.
    sim.reset_counters().await.unwrap();

    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(
            allocated(&app_, device(&format!("F{i:03}"))).await["assignment"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // Two full requests of 5 go out without waiting for the burst to end ...
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
    while sim_serials(&sim, U1).await.len() < 10 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sim_serials(&sim, U1).await.len(),
        10,
        "full requests waited for the quiet window"
    );
    // ... and the last two wait for it, then go out together.
    for id in &ids {
        assert_eq!(final_state(&app_, id).await["state"], "active");
    }
    assert_eq!(sim_serials(&sim, U1).await.len(), 12);
    let counters = sim.counters().await.unwrap();
    let associates: u64 = counters
        .iter()
        .filter(|(k, _)| k.contains("associate") && !k.contains("dis"))
        .map(|(_, v)| *v)
        .sum();
    assert_eq!(associates, 3, "12 serials at 5 per request: {counters:?}");
}

#[tokio::test]
async fn t10_a_batch_is_full_by_its_own_license_types_limit() {
    use vpp_broker::ledger::jobs::{self, Batching};
    let sim = sim::start(vec![location(U1, "Library A", vec![app(APP, 100)])]).await;
    // No dispatcher: the test claims the queued jobs itself.
    let app_ = TestApp::start_opts(crate::support::app::Options {
        apple_base_url: sim.base_url(),
        ..Default::default()
    })
    .await;
    app_.space("acme").await;
    let account: uuid::Uuid = app_.account("acme", "A", &sim::stoken(&sim, U1)).await["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    for i in 0..6 {
        allocated(&app_, device(&format!("D{i}"))).await;
        let user = allocated(
            &app_,
            json!({"asset": {"adam_id": APP}, "subject": {"kind": "user", "id": format!("user{i}")}}),
        )
        .await;
        assert_eq!(user["assignment"]["license_type"], "user", "{user}");
    }
    let mut conn = app_.db.connect().await;
    let burst = Batching {
        lease: Duration::from_secs(60),
        // The burst is still going on, and nothing waited long.
        quiet: Duration::from_secs(600),
        max_wait: Duration::from_secs(600),
        full_devices: 5,
        full_users: 1000,
        max: 100,
    };
    let claimed = jobs::claim(&mut conn, account, "test", &burst)
        .await
        .unwrap();
    // Six device jobs fill a request of five: the five oldest are claimed, marked as not
    // closed; the sixth stays queued (unleased) for the next request. Six user jobs fill
    // nothing of a thousand: left queued.
    assert_eq!(
        claimed.len(),
        5,
        "{:?}",
        claimed.iter().map(|j| j.id).collect::<Vec<_>>()
    );
    assert!(
        claimed
            .iter()
            .all(|j| j.kind() == Some(jobs::JobKind::Associate) && !j.closed)
    );
    let device_jobs: Vec<i64> = {
        use vpp_broker::db::schema::{assignments as a, jobs as j};
        j::table
            .inner_join(a::table.on(a::id.nullable().eq(j::assignment_id)))
            .filter(a::license_type.eq("device"))
            .order(j::id)
            .select(j::id)
            .load(&mut conn)
            .await
            .unwrap()
    };
    let mut ids: Vec<i64> = claimed.iter().map(|j| j.id).collect();
    ids.sort();
    assert_eq!(ids, device_jobs[..5], "the oldest five");
    let ids: Vec<i64> = claimed.iter().map(|j| j.id).collect();
    jobs::unclaim(&mut conn, &ids, chrono::Utc::now())
        .await
        .unwrap();

    let quiet = Batching {
        quiet: Duration::ZERO,
        ..burst
    };
    let claimed = jobs::claim(&mut conn, account, "test", &quiet)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 12);
    assert!(claimed.iter().all(|j| j.closed));
    // Handing back did not count as an attempt.
    assert!(
        claimed.iter().all(|j| j.attempts == 1),
        "{:?}",
        claimed.iter().map(|j| j.attempts).collect::<Vec<_>>()
    );
}

/// Apple lowering `maxSerialNumbers` while the service runs (1000 → 10): the batch the service
/// sized by the old limit is refused with 9702, the service re-reads `/service/config` at once,
/// cuts the batch to the new limit and resends; no subject fails.
#[tokio::test]
async fn t10_a_lowered_batch_limit_is_reread_and_the_batch_resent_in_smaller_requests() {
    use std::collections::BTreeMap;
    use vpp_broker::apple_sim::SettingsPatch;
    let sim = sim::start(vec![location(U1, "Library A", vec![app(APP, 100)])]).await;
    let app_ = TestApp::start_opts(crate::support::app::Options {
        apple_base_url: sim.base_url(),
        // A long quiet window: the 25 allocations below form one batch.
        dispatcher: Some(vpp_broker::dispatch::Settings {
            quiet: Duration::from_millis(800),
            max_wait: Duration::from_secs(5),
            ..crate::support::app::fast_dispatch("")
        }),
        ..Default::default()
    })
    .await;
    app_.space("acme").await;
    app_.account("acme", "A", &sim::stoken(&sim, U1)).await;
    // The service reads the config (limit 1000) while serving a first device.
    let first = allocated(&app_, device("L0")).await;
    assert_eq!(
        final_state(&app_, first["assignment"]["id"].as_str().unwrap()).await["state"],
        "active"
    );
    let reads_before = sim.counters().await.unwrap()["GET /service/config"];
    sim.update_settings(&SettingsPatch {
        limits: BTreeMap::from([("maxSerialNumbers".to_owned(), 10)]),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut ids = Vec::new();
    for i in 1..=25 {
        ids.push(
            allocated(&app_, device(&format!("L{i}"))).await["assignment"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for id in &ids {
        let v = final_state(&app_, id).await;
        assert_eq!(v["state"], "active", "{v}");
    }
    assert_eq!(sim_serials(&sim, U1).await.len(), 26);
    let counters = sim.counters().await.unwrap();
    assert!(
        counters["GET /service/config"] > reads_before,
        "the config was read again: {counters:?}"
    );
    // One refused request of 25, then requests of at most 10.
    assert!(
        counters["POST /assets/associate"] >= 1 + 1 + 3,
        "{counters:?}"
    );
}

/// Another MDM taking the location mid-run is noticed on the dispatcher's next Apple answer
/// (no explicit test): the account becomes `not_owned`, its Apple writes stop, the activity log
/// says when, and allocation moves to the next account; reclaiming resumes the waiting work.
#[tokio::test]
async fn t3_another_mdm_taking_the_location_is_noticed_on_any_apple_answer() {
    use vpp_broker::apple::types::MdmInfo;
    use vpp_broker::db::schema::activity_log;
    let w = world(5, 5).await;
    let one = allocated(&w.app, device("X1")).await;
    final_state(&w.app, one["assignment"]["id"].as_str().unwrap()).await;
    w.sim
        .overwrite_mdm_info(
            U1,
            &MdmInfo {
                id: "other-mdm".into(),
                name: "Other MDM".into(),
                metadata: "1.0".into(),
            },
        )
        .await
        .unwrap();
    // The next association's answer names the other MDM.
    let two = allocated(&w.app, device("X2")).await;
    assert_eq!(two["account_id"], w.a);
    let path = format!("/v1/spaces/acme/accounts/{}", w.a);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = get(&w.app, &path).await;
        if v["status"]["state"] == "not_owned" {
            assert!(
                v["status"]["reason"]
                    .as_str()
                    .unwrap()
                    .contains("Other MDM"),
                "{v}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not noticed: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut conn = w.app.db.connect().await;
    let a: uuid::Uuid = w.a.parse().unwrap();
    let lost: Vec<Value> = activity_log::table
        .filter(activity_log::account_id.eq(a))
        .filter(activity_log::action.eq("account.ownership_lost"))
        .select(activity_log::details)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0]["owner"]["name"], "Other MDM");
    assert!(lost[0]["noticed_at"].is_string());
    // New allocations go to B; A gets no further Apple write.
    let three = allocated(&w.app, device("X3")).await;
    assert_eq!(three["account_id"], w.b);
    assert_eq!(
        final_state(&w.app, three["assignment"]["id"].as_str().unwrap()).await["state"],
        "active"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = w.sim.counters().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        w.sim
            .counters()
            .await
            .unwrap()
            .get("POST /assets/associate"),
        before.get("POST /assets/associate"),
        "no writes while not owned"
    );
    // Reclaiming resumes the waiting work.
    let resp = w
        .app
        .req(Method::POST, &format!("{path}/reclaim"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = two["assignment"]["id"].as_str().unwrap();
    assert_eq!(final_state(&w.app, id).await["state"], "active");
}

/// The user registration that precedes a user license's association is an Apple answer too:
/// when it names another MDM, the account becomes `not_owned` there and then (T3), the
/// association behind it is not sent, and the activity log says which answer showed it.
#[tokio::test]
async fn t3_another_mdm_is_noticed_in_the_user_registration_answer() {
    use vpp_broker::apple::types::MdmInfo;
    use vpp_broker::db::schema::activity_log;
    let w = world(5, 5).await;
    let first = allocated(&w.app, device("X1")).await;
    final_state(&w.app, first["assignment"]["id"].as_str().unwrap()).await;
    w.sim
        .overwrite_mdm_info(
            U1,
            &MdmInfo {
                id: "other-mdm".into(),
                name: "Other MDM".into(),
                metadata: "1.0".into(),
            },
        )
        .await
        .unwrap();
    let associations_before = w
        .sim
        .counters()
        .await
        .unwrap()
        .get("POST /assets/associate")
        .copied();
    let user = allocated(
        &w.app,
        json!({"asset": {"adam_id": APP}, "subject": {"kind": "user", "id": "new-user"}}),
    )
    .await;
    assert_eq!(user["account_id"], w.a, "{user}");
    let path = format!("/v1/spaces/acme/accounts/{}", w.a);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = get(&w.app, &path).await;
        if v["status"]["state"] == "not_owned" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not noticed: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut conn = w.app.db.connect().await;
    let a: uuid::Uuid = w.a.parse().unwrap();
    let lost: Vec<Value> = activity_log::table
        .filter(activity_log::account_id.eq(a))
        .filter(activity_log::action.eq("account.ownership_lost"))
        .select(activity_log::details)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0]["noticed_in"], "POST /users/create", "{lost:?}");
    // The user's association waits for the location to be reclaimed: never sent meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        w.sim
            .counters()
            .await
            .unwrap()
            .get("POST /assets/associate")
            .copied(),
        associations_before,
        "no association sent for a location another MDM holds"
    );
    let id = user["assignment"]["id"].as_str().unwrap();
    let waiting = get(&w.app, &format!("/v1/spaces/acme/assignments/{id}")).await;
    assert_eq!(waiting["state"], "pending", "{waiting}");
}

/// A 9709 reported twice at once (a status poll and Apple's notification race) re-allocates
/// the subject once and gives the failed account's license back once (rule A9): the second
/// report finds the assignment no longer waiting for Apple.
#[tokio::test]
async fn t10_a_9709_reported_twice_at_once_reallocates_once() {
    use std::collections::HashMap;
    use vpp_broker::settle::{self as events, Results};
    let sim = sim::start(vec![
        location(U1, "Library A", vec![app(APP, 10)]),
        location(U2, "Library B", vec![app(APP, 10)]),
    ])
    .await;
    // The test reports the event's result itself.
    let app = TestApp::start_opts(crate::support::app::Options {
        apple_base_url: sim.base_url(),
        dispatcher: Some(crate::support::app::unpolled_dispatch()),
        ..Default::default()
    })
    .await;
    app.space("acme").await;
    let a = app.account("acme", "A", &sim::stoken(&sim, U1)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = app.account("acme", "B", &sim::stoken(&sim, U2)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    sim.set_asset_total(U1, &AssetKey::new(APP, PricingParam::Stdq), 0)
        .await
        .unwrap();
    let first = allocated(&app, device("R0")).await;
    let id = first["assignment"]["id"].as_str().unwrap().to_owned();
    assert_eq!(first["account_id"], a);
    let event = loop {
        let v = get(&app, &format!("/v1/spaces/acme/assignments/{id}")).await;
        if let Some(e) = v["apple_event_id"].as_str() {
            break e.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let results = Results::Complete(HashMap::from([(
        "R0".to_owned(),
        (9709, "There aren't enough assets available.".to_owned()),
    )]));
    let token = vpp_broker::apple::stoken::SToken::new(sim::stoken(&sim, U1));
    let account: uuid::Uuid = a.parse().unwrap();
    let (one, two) = tokio::join!(
        events::apply(&app.state, &token, account, &event, &results),
        events::apply(&app.state, &token, account, &event, &results),
    );
    one.unwrap();
    two.unwrap();

    let old = final_state(&app, &id).await;
    assert_eq!(old["state"], "failed");
    let new_id = old["error"]["reallocated_to"].as_str().unwrap().to_owned();
    assert_eq!(
        get(&app, &format!("/v1/spaces/acme/assignments/{new_id}")).await["account_id"],
        b
    );
    let mut conn = app.db.connect().await;
    let live: i64 = assignments::table
        .filter(assignments::state.eq_any(["pending", "associating", "active"]))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(live, 1, "one license for R0");
    assert_eq!((held(&app, &a).await, held(&app, &b).await), (0, 1));
}

/// What a device request told the service before stays true when a later request gives only
/// the serial: the device's user still decides A6/A7 and user-based licenses, and a Shared
/// iPad stays one.
#[tokio::test]
async fn a7_a_devices_stored_user_and_shared_ipad_flag_carry_over() {
    let w = world(5, 5).await;
    // A book is not device-assignable: the device's user gets the license.
    let book = |subject: Value| json!({"asset": {"adam_id": BOOK}, "subject": subject});
    let first = allocated(
        &w.app,
        book(json!({"kind": "device", "id": "D1", "user": "u1"})),
    )
    .await;
    assert_eq!(first["license_type"], "user");
    let again = allocate(&w.app, book(json!({"kind": "device", "id": "D1"}))).await;
    assert_eq!(again.status(), 200, "the stored user's license (A6)");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["assignment"]["id"], first["assignment"]["id"]);

    // The user's app license covers the device when only the serial is given (A7).
    let user_app = allocated(
        &w.app,
        json!({"asset": {"adam_id": APP}, "subject": {"kind": "user", "id": "u1"}}),
    )
    .await;
    let covered = allocate(&w.app, device("D1")).await;
    assert_eq!(covered.status(), 200);
    let covered: Value = covered.json().await.unwrap();
    assert_eq!(covered["rule"], "user_license_covers_device");
    assert_eq!(covered["assignment"]["id"], user_app["assignment"]["id"]);

    // A Shared iPad stays one when a later request omits the flag.
    let ipad = json!({"kind": "device", "id": "IPAD", "user": "u2", "shared_ipad": true});
    allocated(&w.app, json!({"asset": {"adam_id": APP}, "subject": ipad})).await;
    let refused = allocate(&w.app, book(json!({"kind": "device", "id": "IPAD"}))).await;
    let body = expect_problem(refused, 409, "no-license-available").await;
    assert_eq!(
        body["accounts"][0]["reason"], "not_device_assignable",
        "a Shared iPad gets device licenses only: {body}"
    );
}

/// A re-allocation after 9709 follows A4 like any allocation: excluding the first account does
/// not make the next one "first", so a subject outside its distribution list gets nothing.
#[tokio::test]
async fn a4_a_reallocation_after_9709_respects_the_distribution_list() {
    let w = world(10, 10).await;
    let resp = w
        .app
        .req(Method::PATCH, &format!("/v1/spaces/acme/accounts/{}", w.b))
        .json(&json!({"distribution_list": [{"kind": "device", "value": "LISTED"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    w.sim
        .set_asset_total(U1, &AssetKey::new(APP, PricingParam::Stdq), 0)
        .await
        .unwrap();
    let unlisted = allocated(&w.app, device("OTHER")).await;
    let listed = allocated(&w.app, device("LISTED")).await;
    let unlisted = final_state(&w.app, unlisted["assignment"]["id"].as_str().unwrap()).await;
    assert_eq!(unlisted["state"], "failed");
    assert!(unlisted["error"]["reallocated_to"].is_null(), "{unlisted}");
    assert!(
        unlisted["error"]["reallocation"].as_str().is_some(),
        "{unlisted}"
    );
    let listed = final_state(&w.app, listed["assignment"]["id"].as_str().unwrap()).await;
    let moved = listed["error"]["reallocated_to"].as_str().unwrap();
    let moved = final_state(&w.app, moved).await;
    assert_eq!(
        (moved["account_id"].as_str(), moved["state"].as_str()),
        (Some(w.b.as_str()), Some("active"))
    );
    assert_eq!(held(&w.app, &w.b).await, 1);
}

/// Deleting an account while allocations race it (rule T8 with A9): every license the account
/// handed out is revoked before it goes, none is handed out after, and Apple holds nothing of
/// it at the end.
#[tokio::test]
async fn t8_deleting_an_account_under_concurrent_allocations_leaves_nothing_behind() {
    let w = world(100, 100).await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        tasks.push(spawn_allocation(&w.app, &format!("RACE-{i}")));
        if i == 20 {
            let del = w.app.req(
                Method::DELETE,
                &format!("/v1/spaces/acme/accounts/{}?revoke_all=true", w.a),
            );
            tasks.push(tokio::spawn(async move {
                del.send().await.unwrap().status().as_u16()
            }));
        }
    }
    for t in tasks {
        let status = t.await.unwrap();
        assert!([201, 202, 204].contains(&status), "{status}");
    }
    let path = format!("/v1/spaces/acme/accounts/{}", w.a);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while w.app.req(Method::GET, &path).send().await.unwrap().status() != 404 {
        assert!(std::time::Instant::now() < deadline, "account A never left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sim_serials(&w.sim, U1).await.is_empty(),
        "Apple still holds A's licenses"
    );
    let mut conn = w.app.db.connect().await;
    let b: uuid::Uuid = w.b.parse().unwrap();
    let live: Vec<uuid::Uuid> = assignments::table
        .filter(assignments::state.eq_any(["pending", "associating", "active"]))
        .select(assignments::account_id)
        .load(&mut conn)
        .await
        .unwrap();
    assert!(live.iter().all(|a| *a == b), "only B holds licenses now");
}

/// An account whose setting `new_assets_for_everyone` is off serves an asset only once the
/// space has a distribution policy for it (even an empty one: "everyone not disallowed").
#[tokio::test]
async fn accounts_that_keep_new_assets_back_serve_them_once_a_policy_exists() {
    let w = world(5, 5).await;
    let resp = w
        .app
        .req(Method::PATCH, &format!("/v1/spaces/acme/accounts/{}", w.a))
        .json(&json!({"settings": {"new_assets_for_everyone": false}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = allocated(&w.app, device("N1")).await;
    assert_eq!(first["account_id"], w.b, "{first}");
    assert_eq!(first["decision"]["skipped"][0]["reason"], "no_policy");
    let resp = w
        .app
        .req(Method::PUT, &format!("/v1/spaces/acme/policies/{APP}/STDQ"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "a new policy is created");
    let second = allocated(&w.app, device("N2")).await;
    assert_eq!(
        (second["account_id"].as_str(), second["rule"].as_str()),
        (Some(w.a.as_str()), Some("priority"))
    );
}
