//! Sync (rule T5; docs/sync.md) against the simulator over HTTP: full and incremental syncs,
//! the run resource, the double count, versionId churn and 9721, the scheduler, leases, and a
//! sync racing a storm of allocations.

use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use reqwest::Method;
use serde_json::Value;
use uuid::Uuid;
use vpp_broker::apple_sim::admin::NewAssignments;
use vpp_broker::apple_sim::{FaultsPatch, GeneratedAssignments, SeedAssignment, SettingsPatch};
use vpp_broker::db::schema::{apple_assignments, assets, sync_runs};
use vpp_broker::dispatch::{Ctx, sync as workers};
use vpp_broker::domain::origin::Origin;
use vpp_broker::domain::reconciliation::{SyncKind, SyncTrigger};
use vpp_broker::ledger::sync_runs as runs;

use crate::support::app::{Options, fast_dispatch};
use crate::support::fixtures::{APP, World, device, world, world_with};
use crate::support::sim::{app, location, stoken};
use crate::support::{TestApp, eventually, expect_problem};

/// A context for running syncs in the test's task (the app runs no sync worker).
fn ctx(app: &TestApp) -> Arc<Ctx> {
    Ctx::new(
        app.state.clone(),
        vpp_broker::dispatch::Settings {
            database_url: app.db.url.clone(),
            ..fast_dispatch("")
        },
    )
}

/// Runs every queued sync to its end; returns how many ran.
async fn drain(app: &TestApp) -> usize {
    workers::drain_syncs(&ctx(app), Duration::from_secs(60))
        .await
        .expect("syncs drain")
}

fn runs_path(account: Uuid) -> String {
    format!("/v1/spaces/acme/accounts/{account}/sync-runs")
}

/// The account's runs, newest first.
async fn runs_of(app: &TestApp, account: Uuid) -> Vec<Value> {
    let page = app.get_json(&runs_path(account)).await;
    page["items"].as_array().unwrap().clone()
}

async fn newest_run(app: &TestApp, account: Uuid) -> Value {
    runs_of(app, account).await.remove(0)
}

/// Apple's counts and the ledger's for [`APP`]: (total, assigned, foreign, held).
async fn counts(app: &TestApp, account: Uuid, adam: &str) -> (i32, i32, i32, i32) {
    let mut conn = app.db.connect().await;
    assets::table
        .filter(assets::account_id.eq(account))
        .filter(assets::adam_id.eq(adam))
        .select((
            assets::apple_total,
            assets::apple_assigned,
            assets::foreign_assigned,
            assets::held,
        ))
        .first(&mut conn)
        .await
        .unwrap()
}

/// The account's asset rows and when each was last written.
async fn asset_rows_written(
    app: &TestApp,
    account: Uuid,
) -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
    let mut conn = app.db.connect().await;
    assets::table
        .filter(assets::account_id.eq(account))
        .order(assets::adam_id)
        .select((assets::adam_id, assets::updated_at))
        .load(&mut conn)
        .await
        .unwrap()
}

async fn mirror_targets(app: &TestApp, account: Uuid) -> Vec<String> {
    let mut conn = app.db.connect().await;
    apple_assignments::table
        .filter(apple_assignments::account_id.eq(account))
        .order(apple_assignments::target)
        .select(apple_assignments::target)
        .load(&mut conn)
        .await
        .unwrap()
}

fn generated(count: usize, prefix: &str) -> NewAssignments {
    NewAssignments {
        generated_assignments: vec![GeneratedAssignments {
            adam_id: APP.into(),
            count,
            serial_prefix: prefix.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A world whose server runs the fast dispatcher but no sync worker (syncs run by [`drain`]).
async fn quiet_world(total: i64, before_attach: usize) -> World {
    let mut loc = location("9001", "Main", vec![app(APP, total)]);
    loc.generated_assignments = if before_attach > 0 {
        vec![GeneratedAssignments {
            adam_id: APP.into(),
            count: before_attach,
            serial_prefix: "OLD".into(),
            ..Default::default()
        }]
    } else {
        Vec::new()
    };
    world(vec![loc], &[("main", "9001")]).await
}

/// Queues a run the way the scheduler would.
async fn queue(app: &TestApp, account: Uuid, kind: SyncKind) -> Uuid {
    let mut conn = app.db.connect().await;
    let (run, _) = runs::request(
        &mut conn,
        "acme",
        account,
        kind,
        SyncTrigger::Schedule,
        &Origin::system(),
    )
    .await
    .unwrap();
    run.id
}

async fn get_counters(w: &World) -> u64 {
    let counters = w.sim.counters().await.unwrap();
    counters
        .iter()
        .filter(|(k, _)| {
            k.starts_with("GET /assets")
                || k.starts_with("GET /assignments")
                || k.starts_with("GET /users")
                || k.starts_with("GET /client")
        })
        .map(|(_, v)| *v)
        .sum()
}

#[tokio::test]
async fn t5_attach_queues_a_full_sync_that_fills_the_mirror_and_counts() {
    let w = quiet_world(10, 3).await;
    let account = w.accounts[0];
    let queued = runs_of(&w.app, account).await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0]["trigger"], "attach");
    assert_eq!(queued[0]["kind"], "full");
    assert_eq!(queued[0]["state"], "queued");

    // Behind the service's back: two more assignments and a new purchase.
    w.sim
        .add_assignments("9001", &generated(2, "NEW"))
        .await
        .unwrap();
    w.sim
        .add_assets("9001", &[app("555000111", 4)])
        .await
        .unwrap();
    assert_eq!(drain(&w.app).await, 1);

    let run = newest_run(&w.app, account).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["stats"]["assignments_read"], 5, "{run}");
    assert_eq!(run["stats"]["assets_appeared"], 1, "{run}");
    assert_eq!(run["stats"]["version_moved"], false);
    // Client config, assets, assignments: at least one request each, pages counted.
    assert!(run["requests"].as_i64().unwrap() >= 3, "{run}");
    assert!(run["pages_read"].as_i64().unwrap() >= 2, "{run}");
    assert!(run["finished_at"].is_string());
    assert_eq!(mirror_targets(&w.app, account).await.len(), 5);
    let (total, assigned, foreign, held) = counts(&w.app, account, APP).await;
    assert_eq!((total, assigned, foreign, held), (10, 5, 5, 0));
    let (total, _, foreign, _) = counts(&w.app, account, "555000111").await;
    assert_eq!((total, foreign), (4, 0));
    let actions: Vec<String> = crate::support::fixtures::account_activity(&w.app, account)
        .await
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    assert!(
        actions.contains(&"asset.appeared".to_owned()),
        "{actions:?}"
    );
    assert!(actions.contains(&"sync.finished".to_owned()), "{actions:?}");
    let mut conn = w.app.db.connect().await;
    let attempt: Option<chrono::DateTime<chrono::Utc>> = vpp_broker::db::schema::accounts::table
        .find(account)
        .select(vpp_broker::db::schema::accounts::last_sync_attempt_at)
        .first(&mut conn)
        .await
        .unwrap();
    assert!(attempt.is_some());
}

#[tokio::test]
async fn t5_a_device_already_assigned_at_apple_is_counted_once_after_a_sync() {
    // Two licenses; one device already holds one at Apple before the account is attached.
    let mut loc = location("9001", "Main", vec![app(APP, 2)]);
    loc.assignments = vec![SeedAssignment {
        adam_id: APP.into(),
        serial_number: Some("S-OLD".into()),
        ..Default::default()
    }];
    let w = world(vec![loc], &[("main", "9001")]).await;
    let account = w.accounts[0];
    drain(&w.app).await;
    assert_eq!(counts(&w.app, account, APP).await, (2, 1, 1, 0));

    // The MDM asks for the device that already holds it.
    let resp = w.api().allocate(&device("S-OLD")).await;
    assert!(resp.status().is_success(), "{}", resp.status());
    // A sync: Apple's assignment is the ledger's now, so nobody else holds a license.
    let (run, _) = {
        let resp = w
            .app
            .req(
                Method::POST,
                &format!("/v1/spaces/acme/accounts/{account}/sync"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        (resp.json::<Value>().await.unwrap(), ())
    };
    drain(&w.app).await;
    let run = w
        .app
        .get_json(&format!(
            "{}/{}",
            runs_path(account),
            run["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(run["state"], "succeeded", "{run}");
    let (total, _, foreign, held) = counts(&w.app, account, APP).await;
    assert_eq!(
        (total, foreign, held),
        (2, 0, 1),
        "assigned elsewhere counts S-OLD once"
    );
    // Apple has a free license: another device gets it.
    let resp = w.api().allocate(&device("S-NEW")).await;
    assert_eq!(resp.status(), 201);
}

#[tokio::test]
async fn t5_an_incremental_sync_with_nothing_changed_makes_at_most_three_requests() {
    let w = quiet_world(10, 3).await;
    let account = w.accounts[0];
    drain(&w.app).await;
    w.sim.reset_counters().await.unwrap();
    let run = queue(&w.app, account, SyncKind::Incremental).await;
    drain(&w.app).await;
    let requests = get_counters(&w).await;
    assert!(requests <= 3, "{requests} requests");
    assert_eq!(
        requests, 2,
        "assignments delta + assets page 0 (no user licenses)"
    );
    let run = w
        .app
        .get_json(&format!("{}/{run}", runs_path(account)))
        .await;
    assert_eq!(run["kind"], "incremental", "{run}");
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["requests"], 2, "{run}");
    assert_eq!(run["stats"]["assets_unchanged"], true, "{run}");
    assert_eq!(mirror_targets(&w.app, account).await.len(), 3);

    // A change behind the back: the delta brings it, the assets are read again for counts.
    w.sim
        .add_assignments("9001", &generated(1, "INC"))
        .await
        .unwrap();
    queue(&w.app, account, SyncKind::Incremental).await;
    drain(&w.app).await;
    let run = newest_run(&w.app, account).await;
    assert_eq!(run["stats"]["assignments_read"], 1, "{run}");
    assert_eq!(run["stats"]["assets_unchanged"], false, "{run}");
    assert_eq!(counts(&w.app, account, APP).await, (10, 4, 4, 0));
}

/// The drift report's `apple_only` items of the account: (asset, target, id).
async fn apple_only_items(app: &TestApp, account: Uuid) -> Vec<(String, String, i64)> {
    let mut conn = app.db.connect().await;
    use vpp_broker::db::schema::drift_items as d;
    d::table
        .filter(d::account_id.eq(account))
        .filter(d::class.eq("apple_only"))
        .order((d::adam_id, d::target))
        .select((d::adam_id, d::target.assume_not_null(), d::id))
        .load(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn t5_t11_a_sync_recounts_and_reports_again_only_the_assets_that_changed() {
    const OTHER: &str = "361309726";
    let mut loc = location("9001", "Main", vec![app(APP, 10), app(OTHER, 10)]);
    loc.generated_assignments = vec![
        GeneratedAssignments {
            adam_id: APP.into(),
            count: 3,
            serial_prefix: "OLD".into(),
            ..Default::default()
        },
        GeneratedAssignments {
            adam_id: OTHER.into(),
            count: 2,
            serial_prefix: "OTHER".into(),
            ..Default::default()
        },
    ];
    let w = world(vec![loc], &[("main", "9001")]).await;
    let account = w.accounts[0];
    // The first report covers every asset.
    drain(&w.app).await;
    let run = newest_run(&w.app, account).await;
    assert_eq!(run["stats"]["assets_in_scope"], Value::Null, "{run}");
    let first = apple_only_items(&w.app, account).await;
    assert_eq!(first.len(), 5);

    // Nothing changed: a full sync recounts and re-reports no asset, and the report is the same
    // (same items, same ids). It locks and rewrites no asset row either (an allocation of the
    // account's assets never waits for it), yet the counts are confirmed as of this sync.
    let rows_before = asset_rows_written(&w.app, account).await;
    let started = chrono::Utc::now();
    queue(&w.app, account, SyncKind::Full).await;
    drain(&w.app).await;
    let run = newest_run(&w.app, account).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["stats"]["assets_in_scope"], 0, "{run}");
    assert_eq!(run["stats"]["assets_locked"], 0, "{run}");
    assert_eq!(asset_rows_written(&w.app, account).await, rows_before);
    let asset = w
        .app
        .get_json(&format!("/v1/spaces/acme/assets/{APP}/STDQ"))
        .await;
    let confirmed: chrono::DateTime<chrono::Utc> = asset["totals"]["apple"]["synced_at"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{asset}"));
    assert!(confirmed >= started, "{asset}: confirmed before {started}");
    assert_eq!(apple_only_items(&w.app, account).await, first);
    assert_eq!(run["drift"]["apple_only"], 5, "{run}");

    // Another MDM assigns OTHER to one more device, and the ledger allocates APP: both assets are
    // in the next run's scope, and their figures follow.
    let late = NewAssignments {
        assignments: vec![SeedAssignment {
            adam_id: OTHER.into(),
            serial_number: Some("S-LATE".into()),
            ..Default::default()
        }],
        ..Default::default()
    };
    w.sim.add_assignments("9001", &late).await.unwrap();
    w.api().allocated(&device("S-NEW")).await;
    queue(&w.app, account, SyncKind::Full).await;
    drain(&w.app).await;
    let run = newest_run(&w.app, account).await;
    assert_eq!(run["stats"]["assets_in_scope"], 2, "{run}");
    // OTHER's Apple count changed, APP is in scope: both rows are locked, no other.
    assert_eq!(run["stats"]["assets_locked"], 2, "{run}");
    let items = apple_only_items(&w.app, account).await;
    assert_eq!(items.len(), 6, "{items:?}");
    assert!(
        first.iter().all(|item| items.contains(item)),
        "kept items keep their ids"
    );
    assert_eq!(
        counts(&w.app, account, OTHER).await.2,
        3,
        "OTHER: 3 assigned elsewhere"
    );
    assert_eq!(
        counts(&w.app, account, APP).await.2,
        3,
        "APP: still 3 assigned elsewhere"
    );

    // Once reported, a mirror change is not re-scoped; the allocation stays in scope for the
    // ledger's margin (a transaction that began before the read may commit after it).
    queue(&w.app, account, SyncKind::Full).await;
    drain(&w.app).await;
    let run = newest_run(&w.app, account).await;
    assert_eq!(run["stats"]["assets_in_scope"], 1, "{run}");
    assert_eq!(apple_only_items(&w.app, account).await, items);

    // Apple drops the late assignment: the asset's rows no longer match what was stored, so the
    // full sync compares them and deletes it.
    assert_eq!(w.sim.remove_assignments("9001", &late).await.unwrap(), 1);
    queue(&w.app, account, SyncKind::Full).await;
    drain(&w.app).await;
    let run = newest_run(&w.app, account).await;
    assert_eq!(run["stats"]["mirror_deleted"], 1, "{run}");
    assert_eq!(run["stats"]["mirror_inserted"], 0, "{run}");
    assert_eq!(run["stats"]["assets_in_scope"], 2, "{run}");
    assert_eq!(apple_only_items(&w.app, account).await, first);
    assert_eq!(counts(&w.app, account, OTHER).await.2, 2);
}

#[tokio::test]
async fn t5_an_unknown_version_id_turns_the_incremental_sync_into_a_full_one() {
    let w = quiet_world(10, 2).await;
    let account = w.accounts[0];
    drain(&w.app).await;
    let mut conn = w.app.db.connect().await;
    diesel::sql_query("UPDATE accounts SET assignments_version_id = 'gone' WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(account)
        .execute(&mut conn)
        .await
        .unwrap();
    let run = queue(&w.app, account, SyncKind::Incremental).await;
    drain(&w.app).await;
    let run = w
        .app
        .get_json(&format!("{}/{run}", runs_path(account)))
        .await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["kind"], "full", "{run}");
    assert_eq!(run["stats"]["fell_back_to_full"], true, "{run}");
    assert_eq!(mirror_targets(&w.app, account).await.len(), 2);
}

#[tokio::test]
async fn t5_a_version_id_moving_mid_read_is_tolerated_and_deletes_nothing() {
    let w = quiet_world(20, 6).await;
    let account = w.accounts[0];
    drain(&w.app).await;
    assert_eq!(mirror_targets(&w.app, account).await.len(), 6);
    w.sim
        .update_settings(&SettingsPatch {
            page_size: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    // A row only the mirror has (as if Apple dropped it): a moving read must not delete it.
    // Written as the service writes the mirror: the asset's digest is forgotten.
    let mut conn = w.app.db.connect().await;
    diesel::sql_query(
        "WITH ghost AS (
             INSERT INTO apple_assignments (account_id, adam_id, pricing_param, license_type,
                                            target, seen_by_run)
             VALUES ($1, $2, 'STDQ', 'device', 'GHOST', gen_random_uuid()))
         UPDATE mirror_assets SET digest = NULL, changed_at = now()
          WHERE account_id = $1 AND adam_id = $2",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .bind::<diesel::sql_types::Text, _>(APP)
    .execute(&mut conn)
    .await
    .unwrap();
    w.sim
        .set_faults(&FaultsPatch {
            version_churn: Some(vpp_broker::apple_sim::ChurnRule {
                dataset: vpp_broker::apple_sim::Dataset::Assignments,
                count: 100,
                location: None,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let run = queue(&w.app, account, SyncKind::Full).await;
    drain(&w.app).await;
    let run = w
        .app
        .get_json(&format!("{}/{run}", runs_path(account)))
        .await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["stats"]["version_moved"], true, "{run}");
    assert_eq!(run["stats"]["mirror_deleted"], 0, "{run}");
    assert_eq!(mirror_targets(&w.app, account).await.len(), 7);

    // A stable full read removes it.
    w.sim.clear_faults().await.unwrap();
    queue(&w.app, account, SyncKind::Full).await;
    drain(&w.app).await;
    let run = newest_run(&w.app, account).await;
    assert_eq!(run["stats"]["version_moved"], false, "{run}");
    assert_eq!(run["stats"]["mirror_deleted"], 1, "{run}");
    assert!(
        !mirror_targets(&w.app, account)
            .await
            .contains(&"GHOST".to_owned())
    );
}

#[tokio::test]
async fn t5_manual_sync_answers_202_with_the_run_and_the_same_run_while_it_waits() {
    let w = world(
        vec![
            location("9001", "Main", vec![app(APP, 5)]),
            location("9002", "Other", vec![app(APP, 5)]),
        ],
        &[("main", "9001")],
    )
    .await;
    let account = w.accounts[0];
    drain(&w.app).await;
    // An incremental run is queued; a manual request answers it, now full.
    let queued = queue(&w.app, account, SyncKind::Incremental).await;
    let path = format!("/v1/spaces/acme/accounts/{account}/sync");
    let first = w.app.req(Method::POST, &path).send().await.unwrap();
    assert_eq!(first.status(), 202);
    let location_header = first.headers()["location"].to_str().unwrap().to_owned();
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["id"], queued.to_string());
    assert_eq!(first["kind"], "full");
    assert_eq!(first["state"], "queued");
    assert_eq!(
        location_header,
        format!("{}/{}", runs_path(account), queued)
    );
    let second: Value = w
        .app
        .req(Method::POST, &path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(second["id"], first["id"]);
    drain(&w.app).await;
    let run = w.app.get_json(&location_header).await;
    assert_eq!(run["state"], "succeeded");
    // Once it ended, a new request makes a new run.
    let third: Value = w
        .app
        .req(Method::POST, &path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(third["id"], first["id"]);
    assert_eq!(third["trigger"], "manual");
    let listed = runs_of(&w.app, account).await;
    assert_eq!(listed[0]["id"], third["id"], "newest first");
    let requested: Vec<Value> = crate::support::fixtures::account_activity(&w.app, account)
        .await
        .into_iter()
        .filter(|(a, _)| a == "sync.requested")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(requested.len(), 3, "{requested:?}");

    // Paging: one per page, the cursor leads to the older one.
    let page = w
        .app
        .get_json(&format!("{}?limit=1", runs_path(account)))
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().unwrap();
    let next = w
        .app
        .get_json(&format!("{}?limit=1&cursor={cursor}", runs_path(account)))
        .await;
    assert_eq!(next["items"][0]["id"], first["id"]);

    // Unknown account: 404 problem, nothing queued.
    let unknown = Uuid::now_v7();
    let resp = w
        .app
        .req(
            Method::POST,
            &format!("/v1/spaces/acme/accounts/{unknown}/sync"),
        )
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not-found").await;
    let resp = w
        .app
        .req(Method::GET, &runs_path(unknown))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not-found").await;

    // Another space's account and its run are not found through this space.
    w.app.space("other").await;
    let other = w
        .app
        .client("other")
        .attach("other", &stoken(&w.sim, "9002"))
        .await
        .id;
    let other_run = newest_run_in(&w.app, "other", other).await;
    for path in [
        format!("/v1/spaces/acme/accounts/{other}/sync-runs/{other_run}"),
        format!("/v1/spaces/acme/accounts/{account}/sync-runs/{other_run}"),
        format!("/v1/spaces/acme/accounts/{other}/sync-runs"),
    ] {
        let resp = w.app.req(Method::GET, &path).send().await.unwrap();
        expect_problem(resp, 404, "not-found").await;
    }
    let resp = w
        .app
        .req(
            Method::POST,
            &format!("/v1/spaces/acme/accounts/{other}/sync"),
        )
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not-found").await;
    // A caller of the other space only reads it there.
    let reader = crate::support::token("licenses:read", &["other"]);
    let resp = w
        .app
        .req_as(
            Method::GET,
            &format!("/v1/spaces/other/accounts/{other}/sync-runs/{other_run}"),
            &reader,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

async fn newest_run_in(app: &TestApp, space: &str, account: Uuid) -> String {
    let page = app
        .get_json(&format!("/v1/spaces/{space}/accounts/{account}/sync-runs"))
        .await;
    page["items"][0]["id"].as_str().unwrap().to_owned()
}

/// A worker whose lease ran out and was taken over records nothing about the run when it then
/// fails or is postponed: the new holder's job and run stay as they are.
#[tokio::test]
async fn t5_a_worker_that_lost_its_lease_neither_fails_nor_postpones_the_run() {
    let w = quiet_world(10, 2).await;
    let account = w.accounts[0];
    let mut conn = w.app.db.connect().await;
    let dead = runs::claim(&mut conn, "dead-worker", Duration::from_millis(300))
        .await
        .unwrap()
        .expect("the attach run is due");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = runs::claim(&mut conn, "other", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("an expired lease makes the job claimable");
    let held_by = async |conn: &mut diesel_async::AsyncPgConnection| {
        let job: Option<String> = vpp_broker::db::schema::jobs::table
            .find(again.job_id)
            .select(vpp_broker::db::schema::jobs::locked_by)
            .first(conn)
            .await
            .unwrap();
        let run: (String, i32, Option<Value>) = sync_runs::table
            .find(again.run.id)
            .select((sync_runs::state, sync_runs::attempts, sync_runs::error))
            .first(conn)
            .await
            .unwrap();
        (job, run)
    };
    let before = held_by(&mut conn).await;
    assert_eq!(before.0.as_deref(), Some("other"));
    let settings = vpp_broker::sync::Settings::from_state(&w.app.state, Duration::from_secs(5));

    // The failure path: the account is being deleted.
    diesel::sql_query("UPDATE accounts SET delete_requested_at = now() WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(account)
        .execute(&mut conn)
        .await
        .unwrap();
    let outcome = vpp_broker::sync::run(&w.app.state, &dead, "dead-worker", &settings)
        .await
        .unwrap();
    assert!(
        matches!(outcome, vpp_broker::sync::Outcome::Lost),
        "{outcome:?}"
    );
    assert_eq!(
        held_by(&mut conn).await,
        before,
        "not failed by the dead worker"
    );

    // The postponing path: the account is throttled for an hour.
    diesel::sql_query(
        "UPDATE accounts SET delete_requested_at = NULL, status = 'throttled',
                throttled_until = now() + interval '1 hour' WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .execute(&mut conn)
    .await
    .unwrap();
    let outcome = vpp_broker::sync::run(&w.app.state, &dead, "dead-worker", &settings)
        .await
        .unwrap();
    assert!(
        matches!(outcome, vpp_broker::sync::Outcome::Lost),
        "{outcome:?}"
    );
    assert_eq!(
        held_by(&mut conn).await,
        before,
        "not postponed by the dead worker"
    );

    // The holder is not affected: it postpones its own run.
    let outcome = vpp_broker::sync::run(&w.app.state, &again, "other", &settings)
        .await
        .unwrap();
    assert!(
        matches!(outcome, vpp_broker::sync::Outcome::Postponed(_)),
        "{outcome:?}"
    );
    let after = held_by(&mut conn).await;
    assert_eq!(after.0, None, "lease released until the retry");
    assert_eq!(after.1.0, "queued");
}

/// The lease renewal tells a takeover from the run's own end: a renewal that waited for the
/// transaction ending the job (the run finished) finds nobody else holding it and lets the run
/// finish, where it used to report the lease lost ("sync lost its lease" for an applied run).
#[tokio::test]
async fn t5_a_renewal_racing_the_runs_own_end_is_not_a_takeover() {
    use diesel_async::AsyncConnection;
    let w = quiet_world(10, 0).await;
    let mut conn = w.app.db.connect().await;

    // A takeover: another worker claims a run whose lease ran out.
    let dead = runs::claim(&mut conn, "dead", Duration::from_millis(200))
        .await
        .unwrap()
        .expect("the attach run is due");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mine = runs::claim(&mut conn, "me", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("an expired lease makes the job claimable");
    assert_eq!(
        runs::heartbeat(&mut conn, dead.job_id, "dead", Duration::from_secs(30))
            .await
            .unwrap(),
        runs::Beat::TakenOver
    );
    assert_eq!(
        runs::heartbeat(&mut conn, mine.job_id, "me", Duration::from_secs(30))
            .await
            .unwrap(),
        runs::Beat::Renewed
    );

    // The run's last transaction deletes the job; the renewal waits for it, then finds no row.
    let mut ender = w.app.db.connect().await;
    let job = mine.job_id;
    let (deleting, deleted) = tokio::sync::oneshot::channel::<()>();
    let end = tokio::spawn(async move {
        ender
            .transaction(async |c| {
                diesel::sql_query("DELETE FROM jobs WHERE id = $1")
                    .bind::<diesel::sql_types::BigInt, _>(job)
                    .execute(c)
                    .await?;
                let _ = deleting.send(());
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, diesel::result::Error>(())
            })
            .await
            .unwrap();
    });
    deleted.await.unwrap();
    let beat = runs::heartbeat(&mut conn, job, "me", Duration::from_secs(30))
        .await
        .unwrap();
    end.await.unwrap();
    assert_eq!(
        beat,
        runs::Beat::NotHeld,
        "the run's own end is no takeover"
    );
}

/// An account deleted while its sync runs takes the job with it (cascade): the run is still
/// ended, `failed`, rather than left `running` for ever.
#[tokio::test]
async fn t5_a_sync_whose_account_was_deleted_meanwhile_ends_failed() {
    let w = quiet_world(10, 0).await;
    let account = w.accounts[0];
    let mut conn = w.app.db.connect().await;
    let claimed = runs::claim(&mut conn, "worker", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the attach run is due");
    diesel::sql_query("DELETE FROM accounts WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(account)
        .execute(&mut conn)
        .await
        .unwrap();
    let settings = vpp_broker::sync::Settings::from_state(&w.app.state, Duration::from_secs(5));
    let outcome = vpp_broker::sync::run(&w.app.state, &claimed, "worker", &settings)
        .await
        .unwrap();
    let vpp_broker::sync::Outcome::Finished(row) = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(row.state.to_string(), "failed");
    let state: String = sync_runs::table
        .find(claimed.run.id)
        .select(sync_runs::state)
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(state, "failed");
}

#[tokio::test]
async fn t5_one_sync_job_per_account_and_an_expired_lease_restarts_the_run_once() {
    let w = quiet_world(10, 2).await;
    let account = w.accounts[0];
    let mut conn = w.app.db.connect().await;
    // The unique index: a second sync job of the account is refused.
    let second =
        diesel::sql_query("INSERT INTO jobs (kind, account_id, payload) VALUES ('sync', $1, '{}')")
            .bind::<diesel::sql_types::Uuid, _>(account)
            .execute(&mut conn)
            .await;
    assert!(second.is_err());

    // A worker claims the attach run and dies (its lease runs out).
    let first = runs::claim(&mut conn, "dead-worker", Duration::from_millis(300))
        .await
        .unwrap()
        .expect("the attach run is due");
    assert_eq!(first.attempts, 1);
    assert!(
        runs::claim(&mut conn, "other", Duration::from_secs(30))
            .await
            .unwrap()
            .is_none(),
        "leased: nobody else takes it"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Another worker takes it over and restarts it; the dead one may no longer apply.
    let again = runs::claim(&mut conn, "other", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("an expired lease makes the job claimable");
    assert_eq!(again.run.id, first.run.id);
    assert_eq!(again.attempts, 2);
    assert!(
        !runs::still_held(&mut conn, first.job_id, "dead-worker")
            .await
            .unwrap()
    );
    assert_eq!(
        runs::heartbeat(
            &mut conn,
            first.job_id,
            "dead-worker",
            Duration::from_secs(1)
        )
        .await
        .unwrap(),
        runs::Beat::TakenOver
    );
    let settings = vpp_broker::sync::Settings::from_state(&w.app.state, Duration::from_secs(5));
    let lost = vpp_broker::sync::run(&w.app.state, &first, "dead-worker", &settings)
        .await
        .unwrap();
    assert!(matches!(lost, vpp_broker::sync::Outcome::Lost), "{lost:?}");
    assert!(
        mirror_targets(&w.app, account).await.is_empty(),
        "nothing applied"
    );
    let done = vpp_broker::sync::run(&w.app.state, &again, "other", &settings)
        .await
        .unwrap();
    assert!(
        matches!(done, vpp_broker::sync::Outcome::Finished(_)),
        "{done:?}"
    );
    let run = newest_run(&w.app, account).await;
    assert_eq!(run["state"], "succeeded");
    assert_eq!(run["attempts"], 2);
    assert_eq!(mirror_targets(&w.app, account).await.len(), 2);
    let finished = crate::support::fixtures::account_activity(&w.app, account)
        .await
        .into_iter()
        .filter(|(a, _)| a == "sync.finished")
        .count();
    assert_eq!(finished, 1, "applied once");
}

#[tokio::test]
async fn t5_apple_unavailable_postpones_the_run_and_it_succeeds_later() {
    let w = quiet_world(10, 1).await;
    let account = w.accounts[0];
    w.sim
        .set_faults(&FaultsPatch {
            fail_next: Some(vpp_broker::apple_sim::FailRule {
                count: 1,
                after: 0,
                status: 503,
                error_number: 9729,
                retry_after_secs: Some(1),
                retry_after_http_date: false,
                location: None,
                endpoint: None,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    drain(&w.app).await;
    let run = newest_run(&w.app, account).await;
    assert_eq!(run["state"], "queued", "{run}");
    assert!(run["error"]["reason"].is_string(), "{run}");
    assert_eq!(run["attempts"], 1);
    let settled = eventually(
        "the postponed run succeeds",
        async || {
            drain(&w.app).await;
            newest_run(&w.app, account).await
        },
        |run| run["state"] == "succeeded",
    )
    .await;
    assert_eq!(settled["attempts"], 2, "{settled}");
    assert_eq!(mirror_targets(&w.app, account).await.len(), 1);
}

#[tokio::test]
async fn t5_the_scheduler_queues_due_accounts_once_and_the_sync_worker_runs_them() {
    let w = world_with(
        vec![location("9001", "Main", vec![app(APP, 5)])],
        |_| Options {
            dispatcher: Some(vpp_broker::dispatch::Settings {
                sync_workers: 1,
                // The test looks for due accounts itself.
                sync_schedule: Duration::from_secs(3600),
                ..fast_dispatch("")
            }),
            ..Options::default()
        },
        &[("main", "9001")],
    )
    .await;
    let account = w.accounts[0];
    // The worker runs the attach sync by itself.
    eventually(
        "the attach sync ran",
        async || newest_run(&w.app, account).await["state"].clone(),
        |state| state == "succeeded",
    )
    .await;
    let c = ctx(&w.app);
    // Just synced: nothing due.
    let queued = workers::schedule_once(&c).await.unwrap();
    assert!(matches!(queued, Some(0) | None), "{queued:?}");
    // Long ago: an incremental sync is due (a versionId is known) ...
    let mut conn = w.app.db.connect().await;
    diesel::sql_query(
        "UPDATE accounts SET last_full_sync_at = now() - interval '1 hour',
                last_sync_attempt_at = now() - interval '1 hour' WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .execute(&mut conn)
    .await
    .unwrap();
    let c2 = Ctx::new(
        w.app.state.clone(),
        vpp_broker::dispatch::Settings {
            database_url: w.app.db.url.clone(),
            sync_incremental: Duration::from_secs(60),
            ..fast_dispatch("")
        },
    );
    let queued = eventually(
        "the scheduler queues one run",
        async || workers::schedule_once(&c2).await.unwrap(),
        |n| n.is_some(),
    )
    .await;
    assert_eq!(queued, Some(1));
    assert_eq!(
        workers::schedule_once(&c2).await.unwrap(),
        Some(0),
        "one job per account"
    );
    let run = eventually(
        "the worker runs the scheduled incremental sync",
        async || newest_run(&w.app, account).await,
        |run| run["trigger"] == "schedule" && run["state"] == "succeeded",
    )
    .await;
    assert_eq!(run["kind"], "incremental");
    // ... and a full one when the last full sync is older than the full interval.
    diesel::sql_query(
        "UPDATE accounts SET last_full_sync_at = now() - interval '3 days',
                last_sync_attempt_at = now() - interval '1 hour' WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(workers::schedule_once(&c2).await.unwrap(), Some(1));
    let run = eventually(
        "the worker runs the scheduled full sync",
        async || newest_run(&w.app, account).await,
        |run| run["kind"] == "full" && run["trigger"] == "schedule" && run["state"] == "succeeded",
    )
    .await;
    assert_eq!(run["stats"]["version_moved"], false);
}

#[tokio::test]
async fn t5_a_sync_racing_a_storm_of_allocations_over_allocates_nothing_and_loses_nothing() {
    let total = 150;
    let foreign_at_apple = 40;
    let w = quiet_world(total, foreign_at_apple).await;
    let account = w.accounts[0];
    drain(&w.app).await;
    assert_eq!(
        counts(&w.app, account, APP).await.2,
        foreign_at_apple as i32
    );
    // 200 allocations of distinct devices while syncs run.
    let sync_app = &w.app;
    let syncs = async {
        for _ in 0..3 {
            queue(sync_app, account, SyncKind::Full).await;
            drain(sync_app).await;
        }
    };
    let storm = async {
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let http = w.app.http.clone();
                let url = w.app.url("/v1/spaces/acme/assignments");
                tokio::spawn(async move {
                    http.post(url)
                        .bearer_auth(crate::support::admin_token())
                        .json(&device(&format!("STORM{i:03}")))
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap());
        }
        statuses
    };
    let ((), statuses) = tokio::join!(syncs, storm);
    let granted = statuses.iter().filter(|s| **s == 201).count();
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}"
    );
    assert_eq!(
        granted,
        total as usize - foreign_at_apple,
        "every free license, no more"
    );
    // Settled: a last sync sees the ledger's licenses at Apple.
    eventually(
        "the dispatcher associates every license",
        async || {
            crate::support::fixtures::sim_serials(&w.sim, "9001")
                .await
                .len()
        },
        |n| *n == total as usize,
    )
    .await;
    queue(&w.app, account, SyncKind::Full).await;
    drain(&w.app).await;
    let (apple_total, assigned, foreign, held) = counts(&w.app, account, APP).await;
    assert_eq!(held as usize, granted, "nothing lost");
    assert_eq!(foreign as usize, foreign_at_apple, "Apple's others only");
    assert!(
        held + foreign <= apple_total,
        "({held} + {foreign}) > {apple_total}"
    );
    assert_eq!(assigned, apple_total);
    let mut conn = w.app.db.connect().await;
    let succeeded: i64 = sync_runs::table
        .filter(sync_runs::account_id.eq(account))
        .filter(sync_runs::state.eq("succeeded"))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(succeeded, 5);
}

/// A `serve` process killed (SIGKILL) in the middle of a sync: its lease runs out, the other
/// replica restarts the run from page 0 and applies it once.
#[tokio::test]
async fn t5_a_sync_whose_replica_is_killed_is_restarted_by_another_and_applied_once() {
    use crate::support::db::TestDb;
    use crate::support::procs::{ServeProcess, chart_env};
    let mut loc = location("9101", "Killed", vec![app(APP, 3000)]);
    loc.generated_assignments = vec![GeneratedAssignments {
        adam_id: APP.into(),
        count: 2000,
        serial_prefix: "K".into(),
        ..Default::default()
    }];
    let sim = crate::support::sim::start(vec![loc]).await;
    // Slow pages: the read takes seconds, time enough to kill its replica.
    sim.update_settings(&SettingsPatch {
        page_size: Some(100),
        ..Default::default()
    })
    .await
    .unwrap();
    let db = TestDb::new().await;
    let env = chart_env(&db.url, &sim.base_url());
    // Three replicas, each with its sync worker and scheduler: one sync of the account at a
    // time across all of them.
    let mut procs: Vec<ServeProcess> = (0..3).map(|_| ServeProcess::spawn(&env)).collect();
    let http = reqwest::Client::new();
    for p in &procs {
        p.wait_ready(&http).await;
    }
    let base = procs[0].base_url.clone();
    let resp = http
        .post(format!("{base}/v1/spaces"))
        .bearer_auth(crate::support::admin_token())
        .json(&serde_json::json!({"id": "acme", "name": "Acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    sim.set_faults(&FaultsPatch {
        latency_ms: Some(300),
        ..Default::default()
    })
    .await
    .unwrap();
    let resp = http
        .post(format!("{base}/v1/spaces/acme/accounts"))
        .bearer_auth(crate::support::admin_token())
        .json(&serde_json::json!({"name": "k", "stoken": stoken(&sim, "9101")}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let account: Uuid = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut conn = db.connect().await;
    // The replica whose sync worker holds the job.
    let holder: String = eventually(
        "a sync worker claims the attach sync",
        async || {
            vpp_broker::db::schema::jobs::table
                .filter(vpp_broker::db::schema::jobs::kind.eq("sync"))
                .select(vpp_broker::db::schema::jobs::locked_by)
                .first::<Option<String>>(&mut conn)
                .await
                .ok()
                .flatten()
        },
        |by| by.is_some(),
    )
    .await
    .unwrap();
    let pid: u32 = holder
        .rsplit('-')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a pid in {holder}"));
    let victim = procs
        .iter()
        .position(|p| p.child.id() == pid)
        .expect("the holder is one of the replicas");
    procs[victim].signal(libc::SIGKILL);
    procs[victim].wait_exit(Duration::from_secs(10)).await;
    sim.set_faults(&FaultsPatch {
        latency_ms: Some(0),
        ..Default::default()
    })
    .await
    .unwrap();
    let run = crate::support::eventually_within(
        Duration::from_secs(60),
        "the other replica restarts and finishes the run",
        async || {
            sync_runs::table
                .filter(sync_runs::account_id.eq(account))
                .select((sync_runs::state, sync_runs::attempts))
                .first::<(String, i32)>(&mut conn)
                .await
                .unwrap()
        },
        |(state, _)| state == "succeeded",
    )
    .await;
    assert_eq!(run.1, 2, "restarted once: {run:?}");
    let runs: i64 = sync_runs::table
        .filter(sync_runs::account_id.eq(account))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(runs, 1, "one run of the account across the three replicas");
    let mirrored: i64 = apple_assignments::table
        .filter(apple_assignments::account_id.eq(account))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(mirrored, 2000);
    let finished: i64 = vpp_broker::db::schema::activity_log::table
        .filter(vpp_broker::db::schema::activity_log::account_id.eq(account))
        .filter(vpp_broker::db::schema::activity_log::action.eq("sync.finished"))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(finished, 1, "applied once");
    for p in &mut procs {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
}
