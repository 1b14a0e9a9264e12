//! Bulk operations (rule V6, issue 14) over real HTTP, against PostgreSQL and the simulator: a
//! dry run plans without writing, an operation allocates for a list (the minimum of Apple
//! requests), revokes an asset's holders, serves a group, shows its progress, stops when
//! cancelled, is processed exactly once by concurrent workers, records who asked in the
//! activity log, and refuses bad input with a 4xx problem and nothing written.
//!
//! Most tests run the server without a dispatcher and drive the bulk worker's step
//! (`bulk::run_next`) and the Apple dispatcher (`dispatch::drain`) themselves, so progress is
//! observed chunk by chunk; one runs the real background workers end to end.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;
use vpp_broker::api::bulk::BulkOperation;
use vpp_broker::db::schema::{activity_log, assets, assignments, bulk_operations, subjects};
use vpp_broker::dispatch::{Ctx, Settings};
use vpp_broker::domain::bulk::{BulkPlan, BulkState};

use crate::support::app::{Options, fast_dispatch};
use crate::support::fixtures::{self, APP, BOOK, World, sim_serials};
use crate::support::sim::{app, book, location};
use crate::support::{Client, TestApp, eventually, eventually_within, expect_problem, read};

const U1: &str = "6100000001";

/// A world with one account owning `total` licenses of [`APP`] and 10 of [`BOOK`]; no
/// dispatcher (nothing moves unless the test moves it).
async fn quiet_world(total: i64) -> World {
    fixtures::world_with(
        vec![location(
            U1,
            "Library",
            vec![app(APP, total), book(BOOK, 10)],
        )],
        |_| Options::default(),
        &[("A", U1)],
    )
    .await
}

fn devices(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"kind": "device", "id": format!("{prefix}{i:05}")}))
        .collect()
}

fn allocate_body(subjects: Vec<Value>) -> Value {
    json!({"action": "allocate", "assets": [{"adam_id": APP}], "subjects": subjects,
           "reason": "roll-out"})
}

async fn post(api: &Client<'_>, body: &Value) -> reqwest::Response {
    api.req(Method::POST, "/bulk-operations")
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Creates an operation; asserts the 202, its `Location` and `queued`.
async fn created(api: &Client<'_>, body: &Value) -> BulkOperation {
    let resp = post(api, body).await;
    let location = resp
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned());
    let op: BulkOperation = read(resp, 202).await;
    assert_eq!(op.state, BulkState::Queued, "{op:?}");
    assert_eq!(
        location.as_deref(),
        Some(format!("/v1/spaces/acme/bulk-operations/{}", op.id).as_str())
    );
    op
}

async fn get_op(api: &Client<'_>, id: Uuid) -> BulkOperation {
    api.get(&format!("/bulk-operations/{id}")).await
}

/// One step of the bulk worker with chunks of `chunk` subjects.
async fn step(app: &TestApp, chunk: usize) -> Option<(Uuid, BulkState)> {
    let mut conn = app.pool.get().await.unwrap();
    vpp_broker::bulk::run_next(&mut conn, chunk).await.unwrap()
}

/// Runs the bulk worker's steps until no operation is due; returns how many chunks it took.
async fn run_all(app: &TestApp, chunk: usize) -> usize {
    let mut chunks = 0;
    while step(app, chunk).await.is_some() {
        chunks += 1;
    }
    chunks
}

fn dispatcher(app: &TestApp) -> std::sync::Arc<Ctx> {
    Ctx::new(
        app.state.clone(),
        Settings {
            database_url: app.db.url.clone(),
            ..fast_dispatch("")
        },
    )
}

/// Sends every queued Apple job and follows the events to the end.
async fn drain(app: &TestApp) {
    let ctx = dispatcher(app);
    vpp_broker::dispatch::drain(&ctx, Duration::from_secs(120))
        .await
        .expect("the dispatcher drains");
    // Events finish after the simulator's delay; the drain polls them until no job is left.
}

/// Live assignments of [`APP`] (pending, associating, active) in the ledger.
async fn live(app: &TestApp, adam_id: &str) -> i64 {
    let mut conn = app.db.connect().await;
    assignments::table
        .filter(assignments::adam_id.eq(adam_id))
        .filter(assignments::state.eq_any(["pending", "associating", "active"]))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap()
}

async fn held(app: &TestApp, adam_id: &str) -> i32 {
    let mut conn = app.db.connect().await;
    assets::table
        .filter(assets::adam_id.eq(adam_id))
        .select(assets::held)
        .first(&mut conn)
        .await
        .unwrap()
}

/// Requests the simulator answered whose endpoint is an association (not a release).
async fn associate_requests(w: &World) -> u64 {
    w.sim
        .counters()
        .await
        .unwrap()
        .iter()
        .filter(|(k, _)| k.contains("associate") && !k.contains("disassociate"))
        .map(|(_, v)| *v)
        .sum()
}

/// Row counts of the tables a bulk operation writes: equal counts mean nothing was written.
async fn footprint(app: &TestApp) -> (i64, i64, i64, i64) {
    let mut conn = app.db.connect().await;
    let ops: i64 = bulk_operations::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    let subs: i64 = subjects::table.count().get_result(&mut conn).await.unwrap();
    let asg: i64 = assignments::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    let act: i64 = activity_log::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    (ops, subs, asg, act)
}

#[tokio::test]
async fn v6_dry_run_plans_with_the_allocation_rules_and_writes_nothing() {
    let w = quiet_world(5).await;
    let api = w.api();
    // One device already holds a license.
    api.allocated(&fixtures::device("D00000")).await;
    let before = footprint(&w.app).await;
    let mut body = allocate_body(devices("D", 8));
    body["dry_run"] = json!(true);
    let plan: BulkPlan = read(post(&api, &body).await, 200).await;
    assert_eq!((plan.subjects, plan.total), (8, 8), "{plan:?}");
    let asset = &plan.assets[0];
    // 5 licenses: 1 held already, 4 free for the 7 others; 3 refused for want of licenses.
    assert_eq!(
        (asset.already_held, asset.allocate, asset.refused),
        (1, 4, 3),
        "{asset:?}"
    );
    assert_eq!(asset.accounts.len(), 1);
    assert_eq!(asset.accounts[0].account_id, w.accounts[0]);
    assert_eq!(asset.accounts[0].allocate, 4);
    assert_eq!(asset.refusals.len(), 1);
    assert_eq!(asset.refusals[0].problem, "no-license-available");
    assert_eq!(asset.refusals[0].count, 3);
    assert_eq!(plan.sample.len(), 8);
    assert_eq!(plan.sample[0].outcome.as_str(), "already_held");
    assert_eq!(plan.sample[1].outcome.as_str(), "allocate");
    assert_eq!(plan.sample[7].outcome.as_str(), "refused");
    assert_eq!(
        plan.sample[7].problem.as_deref(),
        Some("no-license-available")
    );
    assert_eq!(footprint(&w.app).await, before, "a dry run writes nothing");
    assert_eq!(held(&w.app, APP).await, 1);

    // A revocation's dry run: the holder's license would go, the others hold nothing.
    let plan: BulkPlan = read(
        post(
            &api,
            &json!({"action": "revoke", "assets": [{"adam_id": APP}],
                    "subjects": devices("D", 3), "dry_run": true}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!((plan.assets[0].revoke, plan.assets[0].not_held), (1, 2));
    assert_eq!(plan.assets[0].accounts[0].revoke, 1);
    assert_eq!(footprint(&w.app).await, before, "a dry run writes nothing");
}

#[tokio::test]
async fn v6_allocation_for_a_list_counts_each_item_and_reaches_apple_in_the_fewest_requests() {
    let w = quiet_world(3000).await;
    let api = w.api();
    let op = created(&api, &allocate_body(devices("S", 2500))).await;
    assert_eq!((op.subjects, op.counts.total), (2500, 2500));
    assert_eq!(op.counts.processed(), 0);
    // Three chunks of at most 1,000 subjects.
    assert_eq!(run_all(&w.app, 1000).await, 3);
    let done = get_op(&api, op.id).await;
    assert_eq!(done.state, BulkState::Succeeded, "{done:?}");
    assert_eq!(
        (
            done.counts.succeeded,
            done.counts.skipped,
            done.counts.failed
        ),
        (2500, 0, 0)
    );
    assert_eq!(done.processed_subjects, 2500);
    assert!(done.started_at.is_some() && done.finished_at.is_some());
    assert_eq!(live(&w.app, APP).await, 2500);
    assert_eq!(held(&w.app, APP).await, 2500);
    drain(&w.app).await;
    // The minimum: ceil(2500 / 1000) association requests for one asset and account.
    assert_eq!(associate_requests(&w).await, 3);
    eventually(
        "every license active at Apple",
        async || sim_serials(&w.sim, U1).await.len(),
        |n| *n == 2500,
    )
    .await;
}

#[tokio::test]
async fn v6_progress_is_visible_and_refusals_are_counted_with_a_sample_of_errors() {
    // 4 licenses for 7 devices, one of which already holds one.
    let w = quiet_world(4).await;
    let api = w.api();
    api.allocated(&fixtures::device("P00001")).await;
    let op = created(&api, &allocate_body(devices("P", 7))).await;
    assert_eq!(step(&w.app, 3).await, Some((op.id, BulkState::Running)));
    let running = get_op(&api, op.id).await;
    assert_eq!(running.state, BulkState::Running);
    assert_eq!(running.processed_subjects, 3);
    // P00000 new, P00001 already held, P00002 new.
    assert_eq!(
        (
            running.counts.succeeded,
            running.counts.skipped,
            running.counts.failed
        ),
        (2, 1, 0)
    );
    // The list shows it too, newest first.
    let page: Value = w.app.get_json("/v1/spaces/acme/bulk-operations").await;
    assert_eq!(page["items"][0]["id"], json!(op.id));
    assert_eq!(page["items"][0]["state"], "running");
    assert_eq!(page["items"][0]["counts"]["succeeded"], 2);

    run_all(&w.app, 3).await;
    let done = get_op(&api, op.id).await;
    assert_eq!(done.state, BulkState::CompletedWithErrors, "{done:?}");
    // 4 licenses: P00001's, then P00000, P00002, P00003; P00004..6 refused.
    assert_eq!(
        (
            done.counts.succeeded,
            done.counts.skipped,
            done.counts.failed
        ),
        (3, 1, 3)
    );
    assert_eq!(done.errors.len(), 3);
    assert_eq!(done.errors[0].subject_id, "P00004");
    assert_eq!(done.errors[0].problem, "no-license-available");
    assert_eq!(held(&w.app, APP).await, 4, "A9: never over-allocated");
}

#[tokio::test]
async fn v6_cancel_stops_further_chunks_and_the_counts_say_how_far_it_went() {
    let w = quiet_world(100).await;
    let api = w.api();
    let op = created(&api, &allocate_body(devices("C", 10))).await;
    step(&w.app, 3).await;
    let resp = api
        .req(Method::POST, &format!("/bulk-operations/{}/cancel", op.id))
        .send()
        .await
        .unwrap();
    let cancelled: BulkOperation = read(resp, 200).await;
    assert_eq!(cancelled.state, BulkState::Cancelled);
    assert_eq!(cancelled.counts.succeeded, 3);
    assert_eq!(cancelled.processed_subjects, 3);
    assert_eq!(cancelled.cancelled_by.as_deref(), Some("test-caller"));
    assert!(cancelled.finished_at.is_some());
    // No chunk runs after the cancel.
    assert_eq!(step(&w.app, 3).await, None);
    assert_eq!(live(&w.app, APP).await, 3);
    assert_eq!(get_op(&api, op.id).await.counts.succeeded, 3);
    // Cancelling a finished operation is a conflict; an unknown one is not found.
    let again = api
        .req(Method::POST, &format!("/bulk-operations/{}/cancel", op.id))
        .send()
        .await
        .unwrap();
    expect_problem(again, 409, "conflict").await;
    let unknown = api
        .req(
            Method::POST,
            &format!("/bulk-operations/{}/cancel", Uuid::now_v7()),
        )
        .send()
        .await
        .unwrap();
    expect_problem(unknown, 404, "not-found").await;
    // A queued operation is cancelled before any chunk.
    let queued = created(&api, &allocate_body(devices("Q", 4))).await;
    let cancelled: BulkOperation = read(
        api.req(
            Method::POST,
            &format!("/bulk-operations/{}/cancel", queued.id),
        )
        .send()
        .await
        .unwrap(),
        200,
    )
    .await;
    assert_eq!(cancelled.state, BulkState::Cancelled);
    assert_eq!(cancelled.counts.processed(), 0);
    assert_eq!(step(&w.app, 3).await, None);
    assert_eq!(live(&w.app, APP).await, 3);
}

#[tokio::test]
async fn v6_revoke_for_the_holders_of_an_asset_releases_them_at_apple() {
    let w = quiet_world(100).await;
    let api = w.api();
    let op = created(&api, &allocate_body(devices("H", 6))).await;
    run_all(&w.app, 1000).await;
    assert_eq!(get_op(&api, op.id).await.state, BulkState::Succeeded);
    drain(&w.app).await;
    eventually(
        "allocated at Apple",
        async || sim_serials(&w.sim, U1).await.len(),
        |n| *n == 6,
    )
    .await;
    let revoke = created(
        &api,
        &json!({"action": "revoke", "assets": [{"adam_id": APP}],
                "selector": {"holders_of": {"adam_id": APP}}, "reason": "app retired"}),
    )
    .await;
    assert_eq!(revoke.subjects, 6, "the holders then");
    assert_eq!(
        serde_json::to_value(&revoke.selector).unwrap(),
        json!({"holders_of": {"adam_id": APP, "pricing_param": "STDQ"}})
    );
    run_all(&w.app, 4).await;
    let done = get_op(&api, revoke.id).await;
    assert_eq!(done.state, BulkState::Succeeded, "{done:?}");
    assert_eq!(done.counts.succeeded, 6);
    assert_eq!(live(&w.app, APP).await, 0);
    assert_eq!(held(&w.app, APP).await, 0, "free in the ledger at once");
    drain(&w.app).await;
    eventually(
        "released at Apple",
        async || sim_serials(&w.sim, U1).await.len(),
        |n| *n == 0,
    )
    .await;
    // Revoking again: nothing held, every item skipped.
    let again = created(
        &api,
        &json!({"action": "revoke", "assets": [{"adam_id": APP}], "subjects": devices("H", 2)}),
    )
    .await;
    run_all(&w.app, 4).await;
    let again = get_op(&api, again.id).await;
    assert_eq!(
        (again.counts.skipped, again.state),
        (2, BulkState::Succeeded)
    );
}

#[tokio::test]
async fn v6_a_book_is_not_revoked_and_the_item_fails_with_not_revocable() {
    let w = quiet_world(10).await;
    let api = w.api();
    let users: Vec<Value> = (0..2)
        .map(|i| json!({"kind": "user", "id": format!("reader{i}")}))
        .collect();
    let op = created(
        &api,
        &json!({"action": "allocate", "assets": [{"adam_id": BOOK}], "subjects": users}),
    )
    .await;
    run_all(&w.app, 1000).await;
    assert_eq!(get_op(&api, op.id).await.counts.succeeded, 2);
    drain(&w.app).await;
    eventually(
        "books active",
        async || {
            let page = w
                .app
                .get_json(&format!(
                    "/v1/spaces/acme/assignments?adam_id={BOOK}&state=active"
                ))
                .await;
            page["items"].as_array().unwrap().len()
        },
        |n| *n == 2,
    )
    .await;
    let revoke = created(
        &api,
        &json!({"action": "revoke", "assets": [{"adam_id": BOOK}], "subjects": users_of(2)}),
    )
    .await;
    run_all(&w.app, 1000).await;
    let done = get_op(&api, revoke.id).await;
    assert_eq!(done.state, BulkState::CompletedWithErrors);
    assert_eq!(done.counts.failed, 2);
    assert_eq!(done.errors[0].problem, "not-revocable");
    assert_eq!(live(&w.app, BOOK).await, 2, "the books stay");
}

fn users_of(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"kind": "user", "id": format!("reader{i}")}))
        .collect()
}

#[tokio::test]
async fn v6_a_group_selector_serves_the_groups_members_as_stored_when_created() {
    let w = quiet_world(100).await;
    let api = w.api();
    for (serial, group) in [
        ("G1", "sales"),
        ("G2", "sales"),
        ("G3", "ops"),
        ("G4", "sales"),
    ] {
        let resp = api
            .req(Method::PUT, &format!("/devices/{serial}"))
            .json(&json!({"groups": [group]}))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    }
    let op = created(
        &api,
        &json!({"action": "allocate", "assets": [{"adam_id": APP}],
                "selector": {"group": "sales"}}),
    )
    .await;
    assert_eq!(op.subjects, 3);
    // A member who joins afterwards is not part of the operation (a snapshot).
    api.req(Method::PUT, "/devices/G5")
        .json(&json!({"groups": ["sales"]}))
        .send()
        .await
        .unwrap();
    run_all(&w.app, 2).await;
    let done = get_op(&api, op.id).await;
    assert_eq!(
        (done.state, done.counts.succeeded),
        (BulkState::Succeeded, 3)
    );
    let page = w
        .app
        .get_json("/v1/spaces/acme/assignments?live=true")
        .await;
    let mut serials: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["subject"]["id"].as_str().unwrap().to_owned())
        .collect();
    serials.sort();
    assert_eq!(serials, ["G1", "G2", "G4"]);
}

#[tokio::test]
async fn v6_concurrent_workers_process_every_chunk_exactly_once() {
    let w = quiet_world(1000).await;
    let api = w.api();
    let a = created(&api, &allocate_body(devices("X", 150))).await;
    let b = created(&api, &allocate_body(devices("Y", 150))).await;
    let worker = |app: &TestApp| {
        let pool = app.pool.clone();
        async move {
            let mut chunks = 0;
            loop {
                let mut conn = pool.get().await.unwrap();
                match vpp_broker::bulk::run_next(&mut conn, 7).await.unwrap() {
                    Some(_) => chunks += 1,
                    None => return chunks,
                }
            }
        }
    };
    let (one, two, three) = tokio::join!(worker(&w.app), worker(&w.app), worker(&w.app));
    // A worker stops when every unfinished operation is held by another: run the rest.
    let rest = run_all(&w.app, 7).await;
    // 150 subjects in chunks of 7: 22 chunks per operation, each processed once.
    assert_eq!(one + two + three + rest, 44, "{one} {two} {three} {rest}");
    for op in [a.id, b.id] {
        let done = get_op(&api, op).await;
        assert_eq!(done.state, BulkState::Succeeded, "{done:?}");
        assert_eq!(done.counts.succeeded, 150);
    }
    assert_eq!(live(&w.app, APP).await, 300);
    assert_eq!(held(&w.app, APP).await, 300);
    let mut conn = w.app.db.connect().await;
    let allocated: i64 = activity_log::table
        .filter(activity_log::action.eq("assignment.allocated"))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(allocated, 300, "one activity row per license");
}

#[tokio::test]
async fn v6_the_activity_log_shows_who_asked_and_which_operation() {
    let w = quiet_world(100).await;
    let api = w.api();
    let resp = api
        .req(Method::POST, "/bulk-operations")
        .header("x-request-id", "bulk-req-1")
        .json(&allocate_body(devices("L", 2)))
        .send()
        .await
        .unwrap();
    let op: BulkOperation = read(resp, 202).await;
    assert_eq!(op.request_id.as_deref(), Some("bulk-req-1"));
    assert_eq!(op.requested_by, "test-caller");
    run_all(&w.app, 1000).await;
    let rows = w
        .app
        .get_json("/v1/spaces/acme/activity?request_id=bulk-req-1")
        .await;
    let mut actions: Vec<&str> = rows["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    actions.sort();
    assert_eq!(
        actions,
        [
            "assignment.allocated",
            "assignment.allocated",
            "bulk.created",
            "bulk.finished"
        ],
        "{rows}"
    );
    for r in rows["items"].as_array().unwrap() {
        assert_eq!(r["actor"], "test-caller", "{r}");
    }
    let page = w
        .app
        .get_json("/v1/spaces/acme/assignments?live=true")
        .await;
    for a in page["items"].as_array().unwrap() {
        assert_eq!(
            a["reason"],
            format!("bulk operation {}: roll-out", op.id),
            "{a}"
        );
        assert_eq!(a["requested_by"], "test-caller");
    }
}

#[tokio::test]
async fn v6_the_background_worker_runs_an_operation_to_the_end() {
    let w = fixtures::world(
        vec![location(U1, "Library", vec![app(APP, 100)])],
        &[("A", U1)],
    )
    .await;
    let api = w.api();
    let op = created(&api, &allocate_body(devices("W", 30))).await;
    let done = eventually(
        "the operation finished",
        async || get_op(&api, op.id).await,
        |o| o.state.is_final(),
    )
    .await;
    assert_eq!(
        (done.state, done.counts.succeeded),
        (BulkState::Succeeded, 30)
    );
    eventually(
        "every license active at Apple",
        async || sim_serials(&w.sim, U1).await.len(),
        |n| *n == 30,
    )
    .await;
}

#[tokio::test]
async fn v6_bad_input_is_a_4xx_problem_and_nothing_is_written() {
    let w = quiet_world(10).await;
    let api = w.api();
    let before = footprint(&w.app).await;
    let one = devices("B", 1);
    let too_many = devices("M", 100_001);
    let cases: Vec<(Value, u16, &str)> = vec![
        (allocate_body(too_many), 413, "payload-too-large"),
        (allocate_body(vec![]), 422, "validation-failed"),
        (
            json!({"action": "allocate", "assets": [], "subjects": one}),
            422,
            "validation-failed",
        ),
        (
            json!({"action": "allocate", "assets": [{"adam_id": APP}], "subjects": one,
                   "selector": {"group": "sales"}}),
            422,
            "validation-failed",
        ),
        (
            json!({"action": "allocate", "assets": [{"adam_id": APP}]}),
            422,
            "validation-failed",
        ),
        (
            json!({"action": "transfer", "assets": [{"adam_id": APP}], "subjects": one}),
            422,
            "invalid-body",
        ),
        (
            json!({"action": "allocate", "assets": [{"adam_id": "999999"}], "subjects": one}),
            404,
            "asset-not-found",
        ),
        (
            json!({"action": "allocate", "assets": [{"adam_id": "abc"}], "subjects": one}),
            422,
            "validation-failed",
        ),
        (
            json!({"action": "allocate", "assets": [{"adam_id": APP}],
                   "subjects": [{"kind": "device", "id": " "}]}),
            422,
            "validation-failed",
        ),
        (
            json!({"action": "allocate", "assets": [{"adam_id": APP}],
                   "selector": {"group": "a", "holders_of": {"adam_id": APP}}}),
            422,
            "validation-failed",
        ),
        (
            json!({"action": "allocate", "assets": [{"adam_id": APP}],
                   "selector": [{"group": "sales"}]}),
            422,
            "invalid-body",
        ),
        (
            json!({"action": "allocate", "assets": [{"adam_id": APP}],
                   "subjects": [["device", "S1"]]}),
            422,
            "invalid-body",
        ),
        (
            json!({"action": "allocate", "assets": {"adam_id": APP}, "subjects": one}),
            422,
            "invalid-body",
        ),
        (json!([allocate_body(devices("B", 1))]), 422, "invalid-body"),
        (
            json!({"action": "revoke", "assets": [{"adam_id": APP}], "subjects": one,
                   "license_type": "user"}),
            422,
            "validation-failed",
        ),
    ];
    for (body, status, slug) in cases {
        let problem = expect_problem(post(&api, &body).await, status, slug).await;
        assert!(problem["detail"].is_string(), "{problem}");
    }
    // An unknown space (the admin token's grant covers every space).
    let resp = w
        .app
        .req(Method::POST, "/v1/spaces/nowhere/bulk-operations")
        .json(&allocate_body(devices("B", 1)))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not-found").await;
    let resp = w
        .app
        .req(
            Method::GET,
            &format!("/v1/spaces/acme/bulk-operations/{}", Uuid::now_v7()),
        )
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not-found").await;
    assert_eq!(footprint(&w.app).await, before, "nothing was written");
}

#[tokio::test]
async fn v6_reading_needs_read_and_creating_needs_write() {
    let w = quiet_world(10).await;
    let reader = crate::support::token("licenses:read", &["acme"]);
    let resp = w
        .app
        .req_as(Method::POST, "/v1/spaces/acme/bulk-operations", &reader)
        .json(&allocate_body(devices("R", 1)))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 403, "forbidden").await;
    let resp = w
        .app
        .req_as(Method::GET, "/v1/spaces/acme/bulk-operations", &reader)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// Latency percentile `p` (0–100) of `samples`, in milliseconds.
fn percentile(samples: &mut [f64], p: usize) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[(samples.len() * p / 100).min(samples.len() - 1)]
}

/// Interactive allocations of [`APP`] for new devices `prefix…`, one after the other, until
/// `stop` is set or `max` were made; their latencies in milliseconds.
async fn interactive(
    api: &Client<'_>,
    prefix: &str,
    max: usize,
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<f64> {
    let mut out = Vec::new();
    for i in 0..max {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let started = std::time::Instant::now();
        let resp = api
            .allocate(&fixtures::device(&format!("{prefix}{i:05}")))
            .await;
        assert_eq!(resp.status().as_u16(), 201, "{:?}", resp.text().await);
        out.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    out
}

/// The bulk figure (docs/benchmarks.md, "Bulk operations"), through the service's own
/// workers (the bulk worker, 1,000 subjects per transaction, and the dispatcher with the
/// production batching settings), one account owning enough licenses:
/// 1. N devices in one bulk allocation posted over HTTP, nothing else running: decisions/s
///    (the operation's `started_at` to `finished_at`) and Apple's association requests against
///    the minimum, ceil(N / 1000);
/// 2. a second bulk allocation (min(N, 20,000) devices) while interactive allocations run one
///    after the other: their latency during the bulk against idle.
///
/// Asserts the outcome only (every license allocated once and active at Apple), no timing. The
/// suite runs it with 2,000 subjects; the benchmark with `VPP_V6_BENCH_SUBJECTS=100000`.
#[tokio::test]
async fn v6_benchmark_a_bulk_allocation_is_decided_in_chunks_with_the_fewest_apple_requests() {
    use std::sync::atomic::{AtomicBool, Ordering};
    if std::env::var_os("VPP_V6_BENCH_SUBJECTS").is_some() {
        crate::support::logs::capture_for_benchmark();
    }
    let n: usize = std::env::var("VPP_V6_BENCH_SUBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
        .clamp(1, 100_000);
    let m = n.min(20_000);
    let w = fixtures::world_with(
        vec![location(
            U1,
            "Library",
            vec![app(APP, (n + m) as i64 + 5_000)],
        )],
        |_| Options {
            dispatcher: Some(Settings {
                // The production batching (VPP_BATCH_QUIET_MS, VPP_BATCH_MAX_WAIT_MS).
                quiet: Duration::from_millis(250),
                max_wait: Duration::from_millis(5000),
                max_claim: 20_000,
                ..fast_dispatch("")
            }),
            ..Options::default()
        },
        &[("A", U1)],
    )
    .await;
    let api = w.api();
    let active = async || {
        let mut conn = w.app.db.connect().await;
        assignments::table
            .filter(assignments::state.eq("active"))
            .count()
            .get_result::<i64>(&mut conn)
            .await
            .unwrap()
    };
    let finished = async |id: Uuid| {
        eventually_within(
            Duration::from_secs(1800),
            "the bulk operation finished",
            async || get_op(&api, id).await,
            |o| o.state.is_final(),
        )
        .await
    };

    // 1. The bulk alone.
    let posted = std::time::Instant::now();
    let op = created(&api, &allocate_body(devices("S", n))).await;
    let create_secs = posted.elapsed().as_secs_f64();
    let done = finished(op.id).await;
    assert_eq!(done.state, BulkState::Succeeded, "{done:?}");
    assert_eq!(done.counts.succeeded, n as i64);
    let decided_secs = (done.finished_at.unwrap() - done.started_at.unwrap())
        .to_std()
        .unwrap()
        .as_secs_f64()
        .max(0.001);
    let after = std::time::Instant::now();
    eventually_within_secs(1800, "every license active at Apple", &active, n as i64).await;
    let activate_secs = after.elapsed().as_secs_f64();
    let associates = associate_requests(&w).await;
    let minimum = n.div_ceil(1000) as u64;
    println!(
        "v6 bench: {n} subjects; create (HTTP, stored) {create_secs:.2} s; decided in \
         {decided_secs:.2} s = {:.0} decisions/s; Apple association requests {associates} \
         (minimum {minimum}); all active {activate_secs:.1} s after the bulk finished",
        n as f64 / decided_secs
    );
    assert_eq!(live(&w.app, APP).await, n as i64, "each allocated once");

    // 2. Interactive allocations, idle and during a second bulk.
    let never = AtomicBool::new(false);
    let mut idle = interactive(&api, "I", 100, &never).await;
    let second = created(&api, &allocate_body(devices("T", m))).await;
    let stop = AtomicBool::new(false);
    let watch = async {
        let done = finished(second.id).await;
        stop.store(true, Ordering::Relaxed);
        done
    };
    let (done, mut during) = tokio::join!(watch, interactive(&api, "J", 100_000, &stop));
    assert_eq!(done.counts.succeeded, m as i64, "{done:?}");
    println!(
        "v6 bench: interactive allocation latency idle p50 {:.1} ms p99 {:.1} ms ({} calls); \
         during a bulk of {m} p50 {:.1} ms p99 {:.1} ms ({} calls)",
        percentile(&mut idle, 50),
        percentile(&mut idle, 99),
        idle.len(),
        percentile(&mut during, 50),
        percentile(&mut during, 99),
        during.len()
    );
    let everyone = (n + 100 + m + during.len()) as i64;
    eventually_within_secs(1800, "every license active at Apple", &active, everyone).await;
    assert_eq!(live(&w.app, APP).await, everyone, "each allocated once");
}

/// Waits (up to `secs`) until `count` reaches `want`.
async fn eventually_within_secs(secs: u64, what: &str, count: &impl AsyncFn() -> i64, want: i64) {
    crate::support::eventually_within(
        Duration::from_secs(secs),
        what,
        async || count().await,
        |n| *n >= want,
    )
    .await;
}

#[tokio::test]
async fn v6_a_chunk_that_keeps_failing_rolls_back_and_fails_the_operation_after_five_attempts() {
    let w = quiet_world(10).await;
    let api = w.api();
    let op = created(&api, &allocate_body(devices("F", 3))).await;
    let mut conn = w.app.db.connect().await;
    // A real database failure inside the chunk's transaction: its subjects cannot be read.
    diesel::sql_query("ALTER TABLE bulk_operation_items RENAME TO bulk_items_away")
        .execute(&mut conn)
        .await
        .unwrap();
    for attempt in 1..=5 {
        let mut pooled = w.app.pool.get().await.unwrap();
        let result = vpp_broker::bulk::run_next(&mut pooled, 1000).await;
        assert!(result.is_err(), "attempt {attempt} fails");
        let now = get_op(&api, op.id).await;
        assert!(now.last_error.is_some(), "{now:?}");
        let expected = if attempt < 5 {
            BulkState::Queued
        } else {
            BulkState::Failed
        };
        assert_eq!(now.state, expected, "after attempt {attempt}");
    }
    diesel::sql_query("ALTER TABLE bulk_items_away RENAME TO bulk_operation_items")
        .execute(&mut conn)
        .await
        .unwrap();
    // Nothing of the failed chunk was written, and a failed operation is not claimed again.
    assert_eq!(step(&w.app, 1000).await, None);
    assert_eq!(live(&w.app, APP).await, 0);
    let done = get_op(&api, op.id).await;
    assert_eq!(done.counts.processed(), 0);
    assert!(done.finished_at.is_some());
    let finished: i64 = activity_log::table
        .filter(activity_log::action.eq("bulk.finished"))
        .filter(activity_log::space_id.eq("acme"))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(finished, 1);
}
