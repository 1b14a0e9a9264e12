//! The allocation engine against PostgreSQL and the Apple simulator over real HTTP, with the
//! dispatcher running: rules A1–A10, V1, T7, T10, each test named after its rule (docs/rules.md).

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;
use vpp_broker::api::accounts::Account;
use vpp_broker::api::assignments::Allocation;
use vpp_broker::apple::types::{AssetKey, PricingParam};
use vpp_broker::apple_sim::{FailRule, FaultsPatch, SimHandle, TokenStatus};
use vpp_broker::db::schema::assignments;

use crate::support::fixtures::{self, APP, BOOK, device, held, sim_serials};
use crate::support::sim::{self, app, book, location};
use crate::support::{
    Allocated, Client, TestApp, eventually, eventually_within, expect_problem, read, token,
};

const U1: &str = "2000000001";
const U2: &str = "2000000002";

/// Two accounts in space `acme`: A (priority 1) and B (priority 2), each owning `APP`.
struct World {
    sim: SimHandle,
    app: TestApp,
    a: Uuid,
    b: Uuid,
}

impl World {
    fn api(&self) -> Client<'_> {
        self.app.client("acme")
    }
}

async fn world(total_a: i64, total_b: i64) -> World {
    let fixtures::World { sim, app, accounts } = fixtures::world(
        vec![
            location(U1, "Library A", vec![app(APP, total_a), book(BOOK, 5)]),
            location(U2, "Library B", vec![app(APP, total_b)]),
        ],
        &[("A", U1), ("B", U2)],
    )
    .await;
    World {
        sim,
        app,
        a: accounts[0],
        b: accounts[1],
    }
}

/// Allocates `APP` for a device in the background; resolves to the HTTP status.
fn spawn_allocation(app: &TestApp, serial: &str) -> tokio::task::JoinHandle<u16> {
    let req = app
        .req(Method::POST, "/v1/spaces/acme/assignments")
        .json(&device(serial));
    tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
}

/// The decision's first skipped account's reason, as on the wire.
fn first_skip(allocation: &Allocation) -> &'static str {
    allocation.decision.skipped[0].reason.as_str()
}

#[tokio::test]
async fn a1_accounts_are_tried_in_priority_order_and_apple_confirms() {
    let w = world(5, 5).await;
    let api = w.api();
    let body = api.allocated(&device("S1")).await;
    assert_eq!(body.account_id, w.a);
    assert_eq!(body.rule.as_str(), "priority");
    assert!(body.created);
    assert_eq!(body.assignment().state.as_str(), "pending");
    let subject = &body.assignment().subject;
    assert_eq!(
        (subject.kind.as_str(), subject.id.as_str()),
        ("device", "S1")
    );
    let id = body.id();
    let done = api.final_state(id).await;
    assert_eq!(done.state.as_str(), "active");
    assert!(done.apple_event_id.is_some());
    assert_eq!(sim_serials(&w.sim, U1).await, ["S1"]);
    assert_eq!(held(&w.app, w.a).await, 1);

    // After a reorder, new allocations go to the new first account (A5: the old one stays).
    api.reorder(&[w.b, w.a]).await;
    let next = api.allocated(&device("S2")).await;
    assert_eq!(next.account_id, w.b);
    assert_eq!(api.assignment(id).await.account_id, w.a);
}

#[tokio::test]
async fn a2_reserved_subjects_come_first_and_their_licenses_are_held_back() {
    let w = world(2, 5).await;
    let api = w.api();
    let resp = api
        .put_policy(
            APP,
            "STDQ",
            &json!({"reserved": [
                {"kind": "device", "id": "VIP-A", "account_id": w.a},
                {"kind": "device", "id": "VIP-B", "account_id": w.b},
            ]}),
        )
        .await;
    assert_eq!(resp.status(), 201);
    // VIP-B is served from its reservation's account although A comes first.
    let vip_b = api.allocated(&device("VIP-B")).await;
    assert_eq!(
        (vip_b.account_id, vip_b.rule.as_str()),
        (w.b, "reservation")
    );
    // A holds 2: one is held back for VIP-A, so ordinary devices get one from A, then go to B.
    let first = api.allocated(&device("D1")).await;
    assert_eq!(first.account_id, w.a);
    let second = api.allocated(&device("D2")).await;
    assert_eq!(second.account_id, w.b);
    assert_eq!(second.rule.as_str(), "fallback");
    let skipped = &second.decision.skipped[0];
    assert_eq!(
        skipped.reason.as_str(),
        "held_for_reservations",
        "the license left is VIP-A's, not gone"
    );
    assert!(skipped.detail.contains("reservations 1"), "{skipped:?}");
    // VIP-A still gets its license from A.
    let vip_a = api.allocated(&device("VIP-A")).await;
    assert_eq!(
        (vip_a.account_id, vip_a.rule.as_str()),
        (w.a, "reservation")
    );
}

#[tokio::test]
async fn a3_disallowed_subjects_get_a_clear_403_and_nothing_changes() {
    let w = world(5, 5).await;
    let api = w.api();
    api.put_policy(
        APP,
        "STDQ",
        &json!({
            "disallowed": [{"kind": "device", "id": "BANNED"}, {"kind": "group", "id": "students"}],
            "fcfs_groups": ["staff", "students-staff"]
        }),
    )
    .await;
    let cases = [
        device("BANNED"),
        json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": "S1", "groups": ["students", "staff"]}}),
        // Not in a first-come-first-served group.
        json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": "S2", "groups": ["visitors"]}}),
    ];
    for body in cases {
        let problem = expect_problem(api.allocate(&body).await, 403, "subject-disallowed").await;
        assert!(problem["detail"].as_str().unwrap().contains("policy"));
    }
    assert_eq!(held(&w.app, w.a).await, 0);
    let ok = api
        .allocated(
            &json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": "S3", "groups": ["staff"]}}),
        )
        .await;
    assert_eq!(ok.account_id, w.a);
}

#[tokio::test]
async fn a4_fallback_needs_the_distribution_list_and_exhaustion_explains_itself() {
    let w = world(1, 5).await;
    let api = w.api();
    api.update_account(
        w.b,
        &json!({"distribution_list": [{"kind": "group", "value": "staff"}, {"kind": "device", "value": "LISTED"}]}),
    )
    .await;
    assert_eq!(api.allocated(&device("FIRST")).await.account_id, w.a);
    // A is exhausted; B only serves its list.
    let refused = api.allocate(&device("OUTSIDER")).await;
    let problem = expect_problem(refused, 409, "no-license-available").await;
    let accounts = problem["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 2);
    assert_eq!(accounts[0]["account_id"], w.a.to_string());
    assert_eq!(accounts[0]["reason"], "no_free_license");
    assert_eq!(accounts[1]["account_id"], w.b.to_string());
    assert_eq!(accounts[1]["reason"], "not_on_distribution_list");
    let by_group = api
        .allocated(
            &json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": "STAFFER", "groups": ["staff"]}}),
        )
        .await;
    assert_eq!(
        (by_group.account_id, by_group.rule.as_str()),
        (w.b, "fallback")
    );
    assert_eq!(api.allocated(&device("LISTED")).await.account_id, w.b);
}

#[tokio::test]
async fn a6_allocation_is_idempotent_and_idempotency_keys_replay() {
    let w = world(5, 5).await;
    let api = w.api();
    let first = api.allocated(&device("S1")).await;
    let again: Allocation = read(api.allocate(&device("S1")).await, 200).await;
    assert!(!again.created);
    assert_eq!(again.rule.as_str(), "existing");
    assert_eq!(again.id(), first.id());

    let with_key = |serial: &str, key: &str| {
        w.app
            .req(Method::POST, "/v1/spaces/acme/assignments")
            .header("idempotency-key", key)
            .json(&device(serial))
            .send()
    };
    let one = with_key("S2", "key-1").await.unwrap();
    assert_eq!(one.status(), 201);
    // A replay is compared on the wire, byte for byte as JSON.
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
            req.send()
                .await
                .unwrap()
                .json::<Allocation>()
                .await
                .unwrap()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().id());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
    assert_eq!(held(&w.app, w.a).await, 3);
}

#[tokio::test]
async fn a7_a_users_license_covers_their_device_but_shared_ipads_get_device_licenses() {
    let w = world(5, 5).await;
    let api = w.api();
    let user = api
        .allocated(&json!({"asset": {"adam_id": APP}, "subject": {"kind": "user", "id": "u1"}}))
        .await;
    assert_eq!(user.license_type.as_str(), "user");
    let covered = api
        .allocate(
            &json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": "D1", "user": "u1"}}),
        )
        .await;
    let covered: Allocation = read(covered, 200).await;
    assert_eq!(covered.rule.as_str(), "user_license_covers_device");
    assert_eq!(covered.id(), user.id());
    let shared = api
        .allocated(
            &json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": "IPAD", "user": "u1", "shared_ipad": true}}),
        )
        .await;
    assert_eq!(shared.license_type.as_str(), "device");
    // "regardless of whether device-based licenses are selected": a user wish on a Shared iPad
    // gets the device license, not a 422.
    let shared_user_wish = api
        .allocated(
            &json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": "IPAD2", "user": "u1", "shared_ipad": true}, "license_type": "user"}),
        )
        .await;
    assert_eq!(
        shared_user_wish.license_type.as_str(),
        "device",
        "{shared_user_wish:?}"
    );
    assert_eq!(shared_user_wish.assignment().subject.id, "IPAD2");
    // The user license reaches Apple through a registered user.
    let done = api.final_state(user.id()).await;
    assert_eq!(done.state.as_str(), "active", "{done:?}");
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
    let b = api.allocated(&book_body).await;
    assert_eq!(
        (b.license_type.as_str(), b.assignment().subject.id.as_str()),
        ("user", "u2")
    );
    let no_user = api
        .allocate(&json!({"asset": {"adam_id": BOOK}, "subject": {"kind": "device", "id": "D3"}}))
        .await;
    expect_problem(no_user, 422, "license-type-unavailable").await;
}

#[tokio::test]
async fn a8_free_apps_consume_licenses_like_paid_ones() {
    // A free app bought with 2 licenses: the third managed install has none.
    let w = world(2, 0).await;
    let api = w.api();
    api.allocated(&device("S1")).await;
    api.allocated(&device("S2")).await;
    expect_problem(
        api.allocate(&device("S3")).await,
        409,
        "no-license-available",
    )
    .await;
    assert_eq!(held(&w.app, w.a).await, 2);
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
    assert_eq!(held(&w.app, w.a).await, 25);
    let mut conn = w.app.db.connect().await;
    let live: i64 = assignments::table
        .filter(assignments::state.eq_any(["pending", "associating", "active"]))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(live, 25);
    // Apple ends up holding exactly the ledger's assignments.
    let at_apple = eventually(
        "Apple holds 25 licenses",
        async || sim_serials(&w.sim, U1).await.len(),
        |n| *n >= 25,
    )
    .await;
    assert_eq!(at_apple, 25);
}

#[tokio::test]
async fn a10_unusable_accounts_queue_or_skip_as_configured_and_nothing_is_lost() {
    let w = world(5, 5).await;
    let api = w.api();
    // A is revoked at Apple and the service knows it (a Test found out).
    w.sim
        .set_location_token_status(U1, TokenStatus::Revoked)
        .await
        .unwrap();
    assert_eq!(
        api.test_account(w.a).await.report.status.as_str(),
        "revoked"
    );
    // Default `queue_when_throttled`: a revoked account is skipped, the next one serves (A10).
    let by_default = api.allocated(&device("Q0")).await;
    assert_eq!(by_default.account_id, w.b, "{by_default:?}");
    assert_eq!(first_skip(&by_default), "unusable");
    // `queue`: the license comes from A's ledger, the Apple call waits.
    api.update_account(w.a, &json!({"settings": {"when_unusable": "queue"}}))
        .await;
    let queued = api.allocated(&device("Q1")).await;
    assert_eq!(queued.account_id, w.a);
    assert!(
        queued
            .decision
            .queued_because
            .as_deref()
            .unwrap()
            .contains("revoked")
    );
    // Nothing to wait for: the dispatcher gets time to do what it must not.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = api.assignment(queued.id()).await;
    assert_eq!(
        still.state.as_str(),
        "pending",
        "no Apple call for a revoked account"
    );
    // `skip`: the next account serves.
    api.update_account(w.a, &json!({"settings": {"when_unusable": "skip"}}))
        .await;
    let skipped = api.allocated(&device("Q2")).await;
    assert_eq!(skipped.account_id, w.b);
    assert_eq!(first_skip(&skipped), "unusable");
    // When A works again, its queued call goes out by itself.
    w.sim
        .set_location_token_status(U1, TokenStatus::Valid)
        .await
        .unwrap();
    api.test_account(w.a).await;
    let done = api.final_state(queued.id()).await;
    assert_eq!(done.state.as_str(), "active");
}

#[tokio::test]
async fn t7_retry_after_pauses_only_that_account_and_work_resumes_by_itself() {
    let w = world(5, 5).await;
    let api = w.api();
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
                endpoint: None,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let on_a = api.allocated(&device("S1")).await;
    eventually_within(
        Duration::from_secs(2),
        "account A throttled (within its 2 s Retry-After)",
        async || api.account(w.a).await,
        |account: &Account| account.status.state.as_str() == "throttled",
    )
    .await;
    // B is unaffected meanwhile.
    api.reorder(&[w.b, w.a]).await;
    let on_b = api.allocated(&device("S2")).await;
    let b_done = api.final_state(on_b.id()).await;
    assert_eq!(b_done.state.as_str(), "active");
    // A resumes after its Retry-After.
    let a_done = api.final_state(on_a.id()).await;
    assert_eq!(a_done.state.as_str(), "active");
    assert_eq!(sim_serials(&w.sim, U1).await, ["S1"]);
}

#[tokio::test]
async fn t10_associations_are_batched_and_followed_to_the_end() {
    let w = world(100, 0).await;
    let api = w.api();
    w.sim.reset_counters().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let req = w
            .app
            .req(Method::POST, "/v1/spaces/acme/assignments")
            .json(&device(&format!("B{i:03}")));
        tasks.push(tokio::spawn(async move {
            req.send()
                .await
                .unwrap()
                .json::<Allocation>()
                .await
                .unwrap()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().id());
    }
    for id in &ids {
        assert_eq!(api.final_state(*id).await.state.as_str(), "active");
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
    use vpp_broker::db::schema::assets;
    let w = world(10, 10).await;
    let api = w.api();
    // Apple sold fewer licenses than the ledger believes (a refund the service has not seen).
    w.sim
        .set_asset_total(U1, &AssetKey::new(APP, PricingParam::Stdq), 2)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(api.allocated(&device(&format!("R{i}"))).await.id());
    }
    let mut failed = 0;
    for id in &ids {
        let v = api.final_state(*id).await;
        if v.state.as_str() == "failed" {
            failed += 1;
            let error = v.error.as_ref().unwrap();
            assert_eq!(error.number, Some(9709));
            let new_id = error
                .reallocated_to
                .unwrap_or_else(|| panic!("not re-allocated: {v:?}"));
            let moved = api.final_state(new_id).await;
            assert_eq!(moved.account_id, w.b);
            assert_eq!(moved.rule.as_str(), "reallocation");
            assert_eq!(moved.state.as_str(), "active");
        }
    }
    assert_eq!(failed, 2);
    assert_eq!(sim_serials(&w.sim, U1).await.len(), 2);
    assert_eq!(sim_serials(&w.sim, U2).await.len(), 2);
    // The ledger learned Apple's count: A owns 2 of the app and holds both.
    let mut conn = w.app.db.connect().await;
    let (total, foreign): (i32, i32) = assets::table
        .filter(assets::account_id.eq(w.a))
        .filter(assets::adam_id.eq(APP))
        .select((assets::apple_total, assets::foreign_assigned))
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!((total, foreign, held(&w.app, w.a).await), (2, 0, 2));
    // So the next device goes straight to B.
    assert_eq!(api.allocated(&device("R9")).await.account_id, w.b);
}

/// A waited allocation whose association Apple refused with 9709 answers the live replacement
/// from the next account (and names the failed assignment in `replaces`), so a caller reading
/// the answer learns that the device has a license.
#[tokio::test]
async fn t10_a_waited_allocation_refused_with_9709_answers_the_live_replacement() {
    let w = world(10, 10).await;
    let api = w.api();
    // Apple has none of A's licenses left (a refund the ledger has not seen yet).
    w.sim
        .set_asset_total(U1, &AssetKey::new(APP, PricingParam::Stdq), 0)
        .await
        .unwrap();
    let resp = api
        .req(Method::POST, "/assignments?wait=20")
        .json(&device("W1"))
        .send()
        .await
        .unwrap();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Allocation = read(resp, 201).await;
    let live = body.assignment();
    assert_eq!(live.state.as_str(), "active", "{body:?}");
    assert_eq!(live.account_id, w.b, "{body:?}");
    assert_eq!(body.account_id, w.b, "{body:?}");
    assert_eq!(body.rule.as_str(), "reallocation", "{body:?}");
    assert_eq!(live.subject.id, "W1");
    let failed_id = body
        .replaces
        .unwrap_or_else(|| panic!("no replaces: {body:?}"));
    assert_ne!(failed_id, live.id);
    assert_eq!(body.decision.replaces, Some(failed_id));
    assert_eq!(
        location.as_deref(),
        Some(format!("/v1/spaces/acme/assignments/{}", live.id).as_str()),
        "Location names the live assignment"
    );
    // The failed one stays readable and points at its replacement.
    let failed = api.assignment(failed_id).await;
    assert_eq!(failed.state.as_str(), "failed");
    assert_eq!(failed.account_id, w.a);
    let error = failed.error.as_ref().unwrap();
    assert_eq!(error.number, Some(9709));
    assert_eq!(error.reallocated_to, Some(live.id));
    assert_eq!(sim_serials(&w.sim, U2).await, vec!["W1".to_owned()]);
    assert!(sim_serials(&w.sim, U1).await.is_empty());
    // Without a wait, the answer is the allocation as decided (nothing to follow yet): the
    // field is absent on the wire.
    let plain: Value = read(api.allocate(&device("W2")).await, 201).await;
    assert!(plain.get("replaces").is_none(), "{plain}");
}

#[tokio::test]
async fn v1_revocations_free_licenses_at_once_and_apple_releases_them() {
    let w = world(2, 5).await;
    let api = w.api();
    let one_id = api.allocated(&device("S1")).await.id();
    assert_eq!(api.final_state(one_id).await.state.as_str(), "active");
    api.allocated(&device("S2")).await;
    // Revoke one: its license is free in the ledger immediately.
    let revoking: vpp_broker::api::assignments::Assignment =
        read(api.revoke(one_id, "").await, 202).await;
    assert_eq!(revoking.state.as_str(), "revoking");
    assert_eq!(api.allocated(&device("S3")).await.account_id, w.a);
    assert_eq!(api.final_state(one_id).await.state.as_str(), "revoked");

    // All of a subject's, all of an asset's in one account, all of an account's.
    let r = api
        .revocations(&json!({"subject": {"kind": "device", "id": "S2"}}))
        .await;
    assert_eq!(r.dropped + r.revoking, 1);
    api.allocated(&device("S4")).await;
    let r = api
        .revocations(
            &json!({"asset": {"adam_id": APP, "pricing_param": "STDQ"}, "account_id": w.a}),
        )
        .await;
    assert_eq!(r.dropped + r.revoking, 2);
    assert_eq!(held(&w.app, w.a).await, 0);
    api.allocated(&device("S5")).await;
    let r = api.revocations(&json!({"account_id": w.a})).await;
    assert_eq!(r.dropped + r.revoking, 1);
    let empty = api
        .req(Method::POST, "/revocations")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    expect_problem(empty, 422, "validation-failed").await;
    // Apple ends up holding nothing.
    eventually(
        "Apple released every license",
        async || sim_serials(&w.sim, U1).await,
        Vec::is_empty,
    )
    .await;
}

#[tokio::test]
async fn t8_deleting_with_revoke_all_waits_for_apple_then_removes_the_account() {
    let w = world(5, 5).await;
    let api = w.api();
    let a = api.allocated(&device("S1")).await;
    api.final_state(a.id()).await;
    let resp = api
        .req(Method::DELETE, &format!("/accounts/{}", w.a))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 409, "account-in-use").await;
    let resp = api
        .req(
            Method::DELETE,
            &format!("/accounts/{}?revoke_all=true", w.a),
        )
        .send()
        .await
        .unwrap();
    let deleting: Account = read(resp, 202).await;
    assert!(deleting.deletion_requested_at.is_some());
    // New allocations skip it while it is being deleted.
    assert_eq!(api.allocated(&device("S2")).await.account_id, w.b);
    api.account_removed(w.a).await;
    assert!(
        sim_serials(&w.sim, U1).await.is_empty(),
        "Apple released the license"
    );
    let order = api.account_order().await;
    assert_eq!(order.order, [w.b], "priorities closed the gap");
}

/// A deletion whose licenses cannot be released because Apple revoked the token says so on the
/// account (what blocks it, what to do), and completes once the token is replaced.
#[tokio::test]
async fn t8_a_deletion_blocked_by_a_revoked_token_says_why_and_completes_after_token_replacement() {
    let w = world(5, 5).await;
    let api = w.api();
    let a = api.allocated(&device("S1")).await;
    api.final_state(a.id()).await;
    // Apple revokes A's token (an admin downloaded a new one in Apple Business Manager).
    w.sim
        .set_location_token_status(U1, TokenStatus::Revoked)
        .await
        .unwrap();
    let path = format!("/accounts/{}", w.a);
    let resp = api
        .req(Method::DELETE, &format!("{path}?revoke_all=true"))
        .send()
        .await
        .unwrap();
    let accepted: Account = read(resp, 202).await;
    assert_eq!(
        accepted.deletion.as_ref().map(|d| d.releasing),
        Some(1),
        "{accepted:?}"
    );
    // The dispatcher's release meets Apple's 9625: the account shows what blocks the deletion.
    let blocked_by = |v: &Account| {
        v.deletion
            .as_ref()
            .and_then(|d| d.blocked_by)
            .map(|s| s.as_str())
    };
    let blocked = eventually(
        "deletion reported as blocked",
        async || api.account(w.a).await,
        |v| blocked_by(v) == Some("revoked"),
    )
    .await;
    assert_eq!(blocked.status.state.as_str(), "revoked");
    let deletion = blocked.deletion.as_ref().unwrap();
    assert_eq!(deletion.releasing, 1, "{blocked:?}");
    let action = deletion.action.as_deref().unwrap();
    assert!(action.contains("replace"), "{action}");
    assert!(action.contains("/stoken"), "{action}");
    // It stays blocked (nothing is dropped, Apple still holds the license): a check that
    // nothing changes, after giving the dispatcher time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(blocked_by(&api.account(w.a).await), Some("revoked"));
    assert_eq!(sim_serials(&w.sim, U1).await, vec!["S1".to_owned()]);

    // The admin replaces the token with a new one of the same location.
    let renewed = w.sim.add_token(U1, None).await.unwrap();
    let resp = api
        .req(Method::PUT, &format!("{path}/stoken"))
        .json(&json!({"stoken": renewed.expose()}))
        .send()
        .await
        .unwrap();
    // `blocked_by` absent on the wire: read raw.
    let replaced: Value = read(resp, 200).await;
    assert!(
        replaced["deletion"].get("blocked_by").is_none(),
        "no longer blocked: {replaced}"
    );
    api.account_removed(w.a).await;
    assert!(
        sim_serials(&w.sim, U1).await.is_empty(),
        "Apple released the license"
    );
}

#[tokio::test]
async fn dry_run_explains_without_taking_and_wait_returns_the_final_state() {
    let w = world(1, 1).await;
    let api = w.api();
    let resp = api.allocate(&json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": "S1"}, "dry_run": true})).await;
    // `assignment` absent on the wire: read raw.
    let dry: Value = read(resp, 200).await;
    assert!(dry.get("assignment").is_none());
    let dry: Allocation = serde_json::from_value(dry).unwrap();
    assert_eq!((dry.dry_run, dry.account_id), (true, w.a));
    assert_eq!(held(&w.app, w.a).await, 0);
    let resp = api
        .req(Method::POST, "/assignments?wait=20")
        .json(&device("S1"))
        .send()
        .await
        .unwrap();
    let waited: Allocation = read(resp, 201).await;
    assert_eq!(waited.assignment().state.as_str(), "active", "{waited:?}");
    let bad_wait = api
        .req(Method::POST, "/assignments?wait=31")
        .json(&device("S2"))
        .send()
        .await
        .unwrap();
    expect_problem(bad_wait, 400, "invalid-parameter").await;
}

#[tokio::test]
async fn bad_allocation_requests_are_problems_and_leave_the_ledger_alone() {
    let w = world(5, 5).await;
    let api = w.api();
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
        expect_problem(api.allocate(&body).await, status, slug).await;
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
    assert_eq!(held(&w.app, w.a).await, 0);
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
    let api = w.api();
    let mut previous: Option<Uuid> = None;
    for i in 0..5 {
        if let Some(id) = previous {
            assert_eq!(api.revoke(id, "").await.status(), 202);
        }
        let next = api.allocated(&device(&format!("R{i}"))).await;
        assert_eq!(next.account_id, w.a);
        let id = next.id();
        let done = api.final_state(id).await;
        assert_eq!(
            done.state.as_str(),
            "active",
            "Apple refused a license the ledger had freed: {done:?}"
        );
        previous = Some(id);
    }
    assert_eq!(sim_serials(&w.sim, U1).await, ["R4"]);
}

#[tokio::test]
async fn a11_licenses_revoked_while_apple_still_associates_them_are_reused_only_once_released() {
    // Issue 10's storm in small: every license of the account is revoked while Apple is still
    // associating it, and as many new devices take the licenses the ledger freed at once. The
    // releases wait for their associations' events; the new associations must wait for the
    // releases, or Apple, which still counts every license as assigned, refuses them (9709).
    let w = world(10, 0).await;
    let api = w.api();
    w.sim
        .update_settings(&vpp_broker::apple_sim::SettingsPatch {
            event_delay_ms: Some(1500),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut old = Vec::new();
    for i in 0..10 {
        old.push(api.allocated(&device(&format!("OLD{i}"))).await.id());
    }
    eventually(
        "the first ten associations submitted to Apple",
        async || {
            let mut sent = 0;
            for id in &old {
                let a = api.assignment(*id).await;
                sent +=
                    usize::from(a.state.as_str() == "associating" && a.apple_event_id.is_some());
            }
            sent
        },
        |n| *n == old.len(),
    )
    .await;
    for id in &old {
        assert_eq!(api.revoke(*id, "").await.status(), 202);
    }
    let mut new = Vec::new();
    for i in 0..10 {
        let next = api.allocated(&device(&format!("NEW{i}"))).await;
        assert_eq!(
            next.account_id, w.a,
            "the ledger freed the revoked licenses at once"
        );
        new.push(next.id());
    }
    for id in &new {
        let done = api.final_state(*id).await;
        assert_eq!(
            done.state.as_str(),
            "active",
            "an association went out before Apple released the license it needed: {done:?}"
        );
    }
    for id in &old {
        assert_eq!(api.final_state(*id).await.state.as_str(), "revoked");
    }
    let expected: Vec<String> = (0..10).map(|i| format!("NEW{i}")).collect();
    assert_eq!(sim_serials(&w.sim, U1).await, expected);
}

/// Space `acme` with account A (100 licenses of APP) at an Apple that takes 5 serials per
/// request, dispatched with a quiet window of `quiet` and at most `max_wait` of waiting.
async fn five_per_request(quiet: Duration, max_wait: Duration) -> (SimHandle, TestApp) {
    let sim = sim::start_with(vec![location(U1, "Library A", vec![app(APP, 100)])], |s| {
        s.limits.insert("maxSerialNumbers".to_owned(), 5);
    })
    .await;
    let mut dispatch = crate::support::app::fast_dispatch("");
    dispatch.quiet = quiet;
    dispatch.max_wait = max_wait;
    let app_ = TestApp::start_opts(crate::support::app::Options {
        apple_base_url: sim.base_url(),
        dispatcher: Some(dispatch),
        ..Default::default()
    })
    .await;
    app_.space("acme").await;
    app_.client("acme")
        .attach("A", &sim::stoken(&sim, U1))
        .await;
    (sim, app_)
}

#[tokio::test]
async fn t10_full_requests_go_out_during_a_burst_and_the_remainder_waits_for_it_to_end() {
    // A long quiet window: only batches that fill an Apple request may go before it passes.
    let (sim, app_) = five_per_request(Duration::from_secs(3), Duration::from_secs(3)).await;
    let api = app_.client("acme");
    // The account's sync and config calls are done; count associations from here.
    sim.reset_counters().await.unwrap();

    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(api.allocated(&device(&format!("F{i:03}"))).await.id());
    }
    // Two full requests of 5 go out without waiting for the burst to end ...
    let sent = eventually_within(
        Duration::from_millis(2500),
        "full requests sent before the quiet window passed",
        async || sim_serials(&sim, U1).await.len(),
        |n| *n >= 10,
    )
    .await;
    assert_eq!(sent, 10, "full requests waited for the quiet window");
    // ... and the last two wait for it, then go out together.
    for id in &ids {
        assert_eq!(api.final_state(*id).await.state.as_str(), "active");
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

/// Releases are batched like associations: while Apple has licenses of the asset to spare, a
/// burst of revocations mixed with allocations of the same asset goes out in full release
/// requests, not a partial one each time an association leaves (issue 10: 2.4 serials per
/// disassociate request under a storm).
#[tokio::test]
async fn t10_releases_of_an_asset_with_licenses_to_spare_go_out_in_full_requests() {
    // Windows long enough that a slow machine does not end the burst between two rounds.
    let (sim, app_) = five_per_request(Duration::from_secs(4), Duration::from_secs(10)).await;
    let api = app_.client("acme");
    let mut old = Vec::new();
    for i in 0..9 {
        old.push(api.allocated(&device(&format!("OLD{i}"))).await.id());
    }
    for id in &old {
        assert_eq!(api.final_state(*id).await.state.as_str(), "active");
    }
    sim.reset_counters().await.unwrap();

    // Three rounds: three revocations, then a full association request of the same asset,
    // which the dispatcher sends at once; the releases stay behind while Apple has room.
    let mut new = Vec::new();
    for round in 0..3 {
        for id in &old[round * 3..round * 3 + 3] {
            assert_eq!(api.revoke(*id, "").await.status(), 202);
        }
        for i in 0..5 {
            new.push(api.allocated(&device(&format!("NEW{round}{i}"))).await.id());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for id in &new {
        assert_eq!(api.final_state(*id).await.state.as_str(), "active");
    }
    for id in &old {
        assert_eq!(api.final_state(*id).await.state.as_str(), "revoked");
    }
    let counters = sim.counters().await.unwrap();
    assert_eq!(
        counters.get("POST /assets/disassociate").copied(),
        Some(2),
        "9 releases at 5 per request: {counters:?}"
    );
    assert_eq!(
        counters.get("POST /assets/associate").copied(),
        Some(3),
        "15 associations at 5 per request: {counters:?}"
    );
    assert_eq!(sim_serials(&sim, U1).await.len(), 15);
}

#[tokio::test]
async fn t10_a_batch_is_full_by_its_own_license_types_limit() {
    use vpp_broker::ledger::jobs::{self, Batching};
    // No dispatcher: the test claims the queued jobs itself.
    let w = fixtures::world_with(
        vec![location(U1, "Library A", vec![app(APP, 100)])],
        |_| crate::support::app::Options::default(),
        &[("A", U1)],
    )
    .await;
    let (app_, account) = (&w.app, w.accounts[0]);
    let api = w.api();
    for i in 0..6 {
        api.allocated(&device(&format!("D{i}"))).await;
        let user = api
            .allocated(
                &json!({"asset": {"adam_id": APP}, "subject": {"kind": "user", "id": format!("user{i}")}}),
            )
            .await;
        assert_eq!(user.assignment().license_type.as_str(), "user", "{user:?}");
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
    let w = fixtures::world_with(
        vec![location(U1, "Library A", vec![app(APP, 100)])],
        |_| crate::support::app::Options {
            // A long quiet window: the 25 allocations below form one batch.
            dispatcher: Some(vpp_broker::dispatch::Settings {
                quiet: Duration::from_millis(800),
                max_wait: Duration::from_secs(5),
                ..crate::support::app::fast_dispatch("")
            }),
            ..Default::default()
        },
        &[("A", U1)],
    )
    .await;
    let (sim, api) = (&w.sim, w.api());
    // The service reads the config (limit 1000) while serving a first device.
    let first = api.allocated(&device("L0")).await;
    assert_eq!(api.final_state(first.id()).await.state.as_str(), "active");
    let reads_before = sim.counters().await.unwrap()["GET /service/config"];
    sim.update_settings(&SettingsPatch {
        limits: BTreeMap::from([("maxSerialNumbers".to_owned(), 10)]),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut ids = Vec::new();
    for i in 1..=25 {
        ids.push(api.allocated(&device(&format!("L{i}"))).await.id());
    }
    for id in &ids {
        let v = api.final_state(*id).await;
        assert_eq!(v.state.as_str(), "active", "{v:?}");
    }
    assert_eq!(sim_serials(sim, U1).await.len(), 26);
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
    let api = w.api();
    let one = api.allocated(&device("X1")).await;
    api.final_state(one.id()).await;
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
    let two = api.allocated(&device("X2")).await;
    assert_eq!(two.account_id, w.a);
    let v = eventually(
        "ownership loss noticed",
        async || api.account(w.a).await,
        |v| v.status.state.as_str() == "not_owned",
    )
    .await;
    assert!(v.status.reason.contains("Other MDM"), "{v:?}");
    let mut conn = w.app.db.connect().await;
    let lost: Vec<Value> = activity_log::table
        .filter(activity_log::account_id.eq(w.a))
        .filter(activity_log::action.eq("account.ownership_lost"))
        .select(activity_log::details)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0]["owner"]["name"], "Other MDM");
    assert!(lost[0]["noticed_at"].is_string());
    // New allocations go to B; A gets no further Apple write.
    let three = api.allocated(&device("X3")).await;
    assert_eq!(three.account_id, w.b);
    assert_eq!(api.final_state(three.id()).await.state.as_str(), "active");
    // Nothing may happen: settle, then see that the count does not move.
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
    let resp = api
        .req(Method::POST, &format!("/accounts/{}/reclaim", w.a))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(api.final_state(two.id()).await.state.as_str(), "active");
}

/// The user registration that precedes a user license's association is an Apple answer too:
/// when it names another MDM, the account becomes `not_owned` there and then (T3), the
/// association behind it is not sent, and the activity log says which answer showed it.
#[tokio::test]
async fn t3_another_mdm_is_noticed_in_the_user_registration_answer() {
    use vpp_broker::apple::types::MdmInfo;
    use vpp_broker::db::schema::activity_log;
    let w = world(5, 5).await;
    let api = w.api();
    let first = api.allocated(&device("X1")).await;
    api.final_state(first.id()).await;
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
    let user = api
        .allocated(
            &json!({"asset": {"adam_id": APP}, "subject": {"kind": "user", "id": "new-user"}}),
        )
        .await;
    assert_eq!(user.account_id, w.a, "{user:?}");
    eventually(
        "ownership loss noticed",
        async || api.account(w.a).await,
        |v| v.status.state.as_str() == "not_owned",
    )
    .await;
    let mut conn = w.app.db.connect().await;
    let lost: Vec<Value> = activity_log::table
        .filter(activity_log::account_id.eq(w.a))
        .filter(activity_log::action.eq("account.ownership_lost"))
        .select(activity_log::details)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0]["noticed_in"], "POST /users/create", "{lost:?}");
    // The user's association waits for the location to be reclaimed: never sent meanwhile
    // (a check that nothing happens, after giving the dispatcher time).
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
    let waiting = api.assignment(user.id()).await;
    assert_eq!(waiting.state.as_str(), "pending", "{waiting:?}");
}

/// A 9709 reported twice at once (a status poll and Apple's notification race) re-allocates
/// the subject once and gives the failed account's license back once (rule A9): the second
/// report finds the assignment no longer waiting for Apple.
#[tokio::test]
async fn t10_a_9709_reported_twice_at_once_reallocates_once() {
    use std::collections::HashMap;
    use vpp_broker::settle::{self as events, Results};
    // The test reports the event's result itself.
    let fixtures::World { sim, app, accounts } = fixtures::world_with(
        vec![
            location(U1, "Library A", vec![app(APP, 10)]),
            location(U2, "Library B", vec![app(APP, 10)]),
        ],
        |_| crate::support::app::Options {
            dispatcher: Some(crate::support::app::unpolled_dispatch()),
            ..Default::default()
        },
        &[("A", U1), ("B", U2)],
    )
    .await;
    let (a, b) = (accounts[0], accounts[1]);
    let api = app.client("acme");
    sim.set_asset_total(U1, &AssetKey::new(APP, PricingParam::Stdq), 0)
        .await
        .unwrap();
    let first = api.allocated(&device("R0")).await;
    let id = first.id();
    assert_eq!(first.account_id, a);
    let event = eventually(
        "the association sent to Apple",
        async || api.assignment(id).await.apple_event_id,
        Option::is_some,
    )
    .await
    .unwrap();
    let results = Results::Complete(HashMap::from([(
        "R0".to_owned(),
        (9709, "There aren't enough assets available.".to_owned()),
    )]));
    let token = vpp_broker::apple::stoken::SToken::new(sim::stoken(&sim, U1));
    let (one, two) = tokio::join!(
        events::apply(&app.state, &token, a, &event, &results),
        events::apply(&app.state, &token, a, &event, &results),
    );
    one.unwrap();
    two.unwrap();

    let old = api.final_state(id).await;
    assert_eq!(old.state.as_str(), "failed");
    let new_id = old.error.as_ref().unwrap().reallocated_to.unwrap();
    assert_eq!(api.assignment(new_id).await.account_id, b);
    let mut conn = app.db.connect().await;
    let live: i64 = assignments::table
        .filter(assignments::state.eq_any(["pending", "associating", "active"]))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(live, 1, "one license for R0");
    assert_eq!((held(&app, a).await, held(&app, b).await), (0, 1));
}

/// What a device request told the service before stays true when a later request gives only
/// the serial: the device's user still decides A6/A7 and user-based licenses, and a Shared
/// iPad stays one.
#[tokio::test]
async fn a7_a_devices_stored_user_and_shared_ipad_flag_carry_over() {
    let w = world(5, 5).await;
    let api = w.api();
    // A book is not device-assignable: the device's user gets the license.
    let book = |subject: Value| json!({"asset": {"adam_id": BOOK}, "subject": subject});
    let first = api
        .allocated(&book(json!({"kind": "device", "id": "D1", "user": "u1"})))
        .await;
    assert_eq!(first.license_type.as_str(), "user");
    let again = api
        .allocate(&book(json!({"kind": "device", "id": "D1"})))
        .await;
    assert_eq!(again.status(), 200, "the stored user's license (A6)");
    let again: Allocation = read(again, 200).await;
    assert_eq!(again.id(), first.id());

    // The user's app license covers the device when only the serial is given (A7).
    let user_app = api
        .allocated(&json!({"asset": {"adam_id": APP}, "subject": {"kind": "user", "id": "u1"}}))
        .await;
    let covered: Allocation = read(api.allocate(&device("D1")).await, 200).await;
    assert_eq!(covered.rule.as_str(), "user_license_covers_device");
    assert_eq!(covered.id(), user_app.id());

    // A Shared iPad stays one when a later request omits the flag.
    let ipad = json!({"kind": "device", "id": "IPAD", "user": "u2", "shared_ipad": true});
    api.allocated(&json!({"asset": {"adam_id": APP}, "subject": ipad}))
        .await;
    let refused = api
        .allocate(&book(json!({"kind": "device", "id": "IPAD"})))
        .await;
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
    let api = w.api();
    api.update_account(
        w.b,
        &json!({"distribution_list": [{"kind": "device", "value": "LISTED"}]}),
    )
    .await;
    w.sim
        .set_asset_total(U1, &AssetKey::new(APP, PricingParam::Stdq), 0)
        .await
        .unwrap();
    let unlisted = api.allocated(&device("OTHER")).await;
    let listed = api.allocated(&device("LISTED")).await;
    let unlisted = api.final_state(unlisted.id()).await;
    assert_eq!(unlisted.state.as_str(), "failed");
    let error = unlisted.error.as_ref().unwrap();
    assert!(error.reallocated_to.is_none(), "{unlisted:?}");
    assert!(error.reallocation.is_some(), "{unlisted:?}");
    let listed = api.final_state(listed.id()).await;
    let moved = listed.error.as_ref().unwrap().reallocated_to.unwrap();
    let moved = api.final_state(moved).await;
    assert_eq!((moved.account_id, moved.state.as_str()), (w.b, "active"));
    assert_eq!(held(&w.app, w.b).await, 1);
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
    w.api().account_removed(w.a).await;
    assert!(
        sim_serials(&w.sim, U1).await.is_empty(),
        "Apple still holds A's licenses"
    );
    let mut conn = w.app.db.connect().await;
    let live: Vec<Uuid> = assignments::table
        .filter(assignments::state.eq_any(["pending", "associating", "active"]))
        .select(assignments::account_id)
        .load(&mut conn)
        .await
        .unwrap();
    assert!(live.iter().all(|a| *a == w.b), "only B holds licenses now");
}

/// An account whose setting `new_assets_for_everyone` is off serves an asset only once the
/// space has a distribution policy for it (even an empty one: "everyone not disallowed").
#[tokio::test]
async fn accounts_that_keep_new_assets_back_serve_them_once_a_policy_exists() {
    let w = world(5, 5).await;
    let api = w.api();
    api.update_account(
        w.a,
        &json!({"settings": {"new_assets_for_everyone": false}}),
    )
    .await;
    let first = api.allocated(&device("N1")).await;
    assert_eq!(first.account_id, w.b, "{first:?}");
    assert_eq!(first_skip(&first), "no_policy");
    let resp = api.put_policy(APP, "STDQ", &json!({})).await;
    assert_eq!(resp.status(), 201, "a new policy is created");
    let second = api.allocated(&device("N2")).await;
    assert_eq!((second.account_id, second.rule.as_str()), (w.a, "priority"));
}
