//! The wait-list (rule A12) over real HTTP with the simulator and the dispatcher: an allocation
//! that asks to wait gets a place in line instead of the 409, is served in order (reservations
//! first, then first come) when a license frees — a revocation, a purchase found by Apple's
//! ASSET_COUNT notification or by a sync — and reaches Apple like any allocation; waiting
//! entries can be cancelled and expire.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;
use vpp_broker::api::assignments::{Allocation, Assignment};
use vpp_broker::apple::types::{AssetKey, PricingParam};
use vpp_broker::db::schema::{assets, jobs};
use vpp_broker::dispatch::{Ctx, sync as sync_workers};

use crate::support::app::{Options, fast_dispatch};
use crate::support::fixtures::{
    self, APP, World, assignment_activity as activity_of, device, sim_serials,
};
use crate::support::sim::{self, app, location};
use crate::support::{Allocated, Client, TestApp, eventually, expect_problem, read};

const U1: &str = "7100000001";

/// An allocation of [`APP`] for a device that waits for a license.
fn waiting(serial: &str) -> Value {
    json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": serial},
           "wait_for_license": true})
}

/// A world with one account owning `total` licenses of [`APP`].
async fn world(total: i64) -> World {
    fixtures::world(
        vec![location(U1, "Library", vec![app(APP, total)])],
        &[("A", U1)],
    )
    .await
}

/// Asks to wait; asserts the 202 and a `waiting` assignment; returns it.
async fn wait_in_line(api: &Client<'_>, serial: &str) -> Assignment {
    wait_with(api, &waiting(serial)).await
}

/// [`wait_in_line`] with the allocation's body.
async fn wait_with(api: &Client<'_>, body: &Value) -> Assignment {
    let resp = api.allocate(body).await;
    let location = resp
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned());
    let body: Allocation = read(resp, 202).await;
    let a = body.assignment().clone();
    assert_eq!(a.state.as_str(), "waiting", "{body:?}");
    assert_eq!(
        location.as_deref(),
        Some(format!("/v1/spaces/acme/assignments/{}", a.id).as_str())
    );
    a
}

/// Allocates [`APP`] for a device and waits until Apple confirmed it, so that the tests' later
/// revocations free licenses Apple holds (a revocation racing its association would only delay
/// the served entry's association: A11, `allocation.rs::a11_…`).
async fn active(api: &Client<'_>, serial: &str) -> Uuid {
    let id = api.allocated(&device(serial)).await.id();
    assert_eq!(api.final_state(id).await.state.as_str(), "active");
    id
}

fn position(a: &Assignment) -> i64 {
    a.waiting
        .as_ref()
        .unwrap_or_else(|| panic!("no place in line: {a:?}"))
        .position
}

async fn state_of(api: &Client<'_>, id: Uuid) -> String {
    api.assignment(id).await.state.as_str().to_owned()
}

/// Waits until the assignment is no longer `waiting`, then until it is final; returns it.
async fn served(api: &Client<'_>, id: Uuid) -> Assignment {
    eventually(
        "served from the wait-list",
        async || state_of(api, id).await,
        |s| s != "waiting",
    )
    .await;
    api.final_state(id).await
}

/// Licenses of [`APP`] the ledger holds for the account and what Apple gave it.
async fn held_and_total(app: &TestApp, account: Uuid) -> (i32, i32) {
    let mut conn = app.db.connect().await;
    assets::table
        .filter(assets::account_id.eq(account))
        .filter(assets::adam_id.eq(APP))
        .select((assets::held, assets::apple_total))
        .first(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a12_no_license_left_waits_in_line_with_its_place_and_asking_again_answers_it() {
    let w = world(2).await;
    let api = w.api();
    for s in ["S1", "S2"] {
        api.allocated(&device(s)).await;
    }
    // Without asking to wait: the 409 as before.
    expect_problem(
        api.allocate(&device("S3")).await,
        409,
        "no-license-available",
    )
    .await;
    let first = wait_in_line(&api, "S3").await;
    assert_eq!(position(&first), 1);
    assert_eq!(first.rule.as_str(), "waiting");
    assert_eq!(
        first.decision.skipped[0].reason.as_str(),
        "no_free_license",
        "{first:?}"
    );
    let second = wait_in_line(&api, "S4").await;
    assert_eq!(position(&second), 2);
    // A6: asking again (with or without the flag) answers the waiting assignment.
    for body in [waiting("S3"), device("S3")] {
        let again: Allocation = read(api.allocate(&body).await, 202).await;
        assert_eq!((again.id(), again.created), (first.id, false));
        assert_eq!(position(again.assignment()), 1);
    }
    // Idempotency-Key replays the first answer.
    let keyed = async || {
        api.req(Method::POST, "/assignments")
            .header("idempotency-key", "wait-s5")
            .json(&waiting("S5"))
            .send()
            .await
            .unwrap()
    };
    let one: Allocation = read(keyed().await, 202).await;
    let resp = keyed().await;
    assert_eq!(
        resp.headers()
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    let two: Allocation = read(resp, 202).await;
    assert_eq!((one.id(), position(one.assignment())), (two.id(), 3));
    // A3 before A12: a disallowed subject is refused, it does not wait.
    api.put_policy(
        APP,
        "STDQ",
        &json!({"disallowed": [{"kind": "device", "id": "BANNED"}]}),
    )
    .await;
    expect_problem(
        api.allocate(&waiting("BANNED")).await,
        403,
        "subject-disallowed",
    )
    .await;
    // A dry run never waits.
    let mut dry = waiting("S6");
    dry["dry_run"] = json!(true);
    expect_problem(api.allocate(&dry).await, 409, "no-license-available").await;
    // The list filters by the new state; waiting holds no license.
    let page = api.assignments("state=waiting").await;
    let ids: Vec<Uuid> = page.items.iter().map(|a| a.id).collect();
    assert_eq!(ids, [first.id, second.id, one.id()]);
    let positions: Vec<i64> = page.items.iter().map(position).collect();
    assert_eq!(positions, [1, 2, 3]);
    assert!(api.assignments("live=true").await.items.len() == 2);
    assert_eq!(held_and_total(&w.app, w.accounts[0]).await, (2, 2));
    // The inventory counts them apart.
    let inventory: Value = api.get("/assets").await;
    assert_eq!(inventory["items"][0]["waiting"], json!(3), "{inventory}");
    assert_eq!(inventory["items"][0]["totals"]["ledger"]["held"], json!(2));
    // The default expiry: 72 hours after asking.
    let expires = first.waiting.as_ref().unwrap().expires_at;
    let hours = (expires - first.created_at).num_minutes() as f64 / 60.0;
    assert!((71.9..=72.1).contains(&hours), "{hours}");
    let log = activity_of(&w.app, first.id).await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].0, "assignment.waiting");
}

#[tokio::test]
async fn a12_a_revocation_serves_the_first_in_line_and_apple_gets_the_license() {
    let w = world(2).await;
    let api = w.api();
    let s1 = active(&api, "S1").await;
    active(&api, "S2").await;
    let first = wait_in_line(&api, "W1").await;
    let second = wait_in_line(&api, "W2").await;
    let resp = api.revoke(s1, "?reason=retired").await;
    assert!(resp.status().is_success(), "{}", resp.status());
    let got = served(&api, first.id).await;
    assert_eq!(
        (got.state.as_str(), got.rule.as_str(), got.account_id),
        ("active", "priority", w.accounts[0]),
        "{got:?}"
    );
    assert!(got.waiting.is_none());
    // The second moved up and still waits.
    let still = api.assignment(second.id).await;
    assert_eq!((still.state.as_str(), position(&still)), ("waiting", 1));
    // Apple holds W1's license; the ledger never held more than the account owns (A9).
    eventually(
        "Apple assigned W1",
        async || sim_serials(&w.sim, U1).await,
        |s| s.contains(&"W1".to_owned()) && !s.contains(&"S1".to_owned()),
    )
    .await;
    assert_eq!(held_and_total(&w.app, w.accounts[0]).await, (2, 2));
    let log = activity_of(&w.app, first.id).await;
    let actions: Vec<&str> = log.iter().map(|l| l.0.as_str()).collect();
    assert_eq!(
        &actions[..2],
        ["assignment.waiting", "assignment.allocated"],
        "{log:?}"
    );
    assert_eq!(log[1].3["served_from_wait_list"], json!(true));
}

#[tokio::test]
async fn a12_a_purchase_found_by_asset_count_serves_the_line() {
    let sim = sim::start(vec![location(U1, "Library", vec![app(APP, 1)])]).await;
    let app = TestApp::start_opts(Options {
        apple_base_url: sim.base_url(),
        notify_self: true,
        dispatcher: Some(fast_dispatch("")),
        ..Options::default()
    })
    .await;
    app.space("acme").await;
    let account = app
        .client("acme")
        .attach("Main", &sim::stoken(&sim, U1))
        .await;
    let api = app.client("acme");
    api.allocated(&device("S1")).await;
    let w1 = wait_in_line(&api, "W1").await;
    let w2 = wait_in_line(&api, "W2").await;
    let w3 = wait_in_line(&api, "W3").await;
    // Two licenses bought: Apple's ASSET_COUNT raises the total, the first two are served.
    sim.set_asset_total(U1, &AssetKey::new(APP, PricingParam::Stdq), 3)
        .await
        .unwrap();
    for id in [w1.id, w2.id] {
        assert_eq!(served(&api, id).await.state.as_str(), "active");
    }
    let last = api.assignment(w3.id).await;
    assert_eq!((last.state.as_str(), position(&last)), ("waiting", 1));
    assert_eq!(held_and_total(&app, account.id).await, (3, 3));
}

#[tokio::test]
async fn a12_a_sync_that_finds_more_licenses_serves_the_line() {
    // The server runs no sync worker: the test runs the syncs (attach's, then the manual one).
    let w = world(1).await;
    let api = w.api();
    let account = w.accounts[0];
    let ctx = Ctx::new(
        w.app.state.clone(),
        vpp_broker::dispatch::Settings {
            database_url: w.app.db.url.clone(),
            ..fast_dispatch("")
        },
    );
    sync_workers::drain_syncs(&ctx, Duration::from_secs(60))
        .await
        .unwrap();
    api.allocated(&device("S1")).await;
    let w1 = wait_in_line(&api, "W1").await;
    // The purchase is not notified (no subscription): only a sync finds it.
    sim_total(&w.sim, 2).await;
    let resp = api
        .req(Method::POST, &format!("/accounts/{account}/sync"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    sync_workers::drain_syncs(&ctx, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(served(&api, w1.id).await.state.as_str(), "active");
    assert_eq!(held_and_total(&w.app, account).await, (2, 2));
}

async fn sim_total(sim: &vpp_broker::apple_sim::SimHandle, total: i64) {
    sim.set_asset_total(U1, &AssetKey::new(APP, PricingParam::Stdq), total)
        .await
        .unwrap();
}

#[tokio::test]
async fn a12_a2_reserved_subjects_are_served_first_then_first_come() {
    let w = world(2).await;
    let api = w.api();
    let s1 = active(&api, "S1").await;
    let s2 = active(&api, "S2").await;
    let w1 = wait_in_line(&api, "W1").await;
    let w2 = wait_in_line(&api, "W2").await;
    // A reservation made after W1 and W2 asked: VIP comes first anyway.
    let resp = api
        .put_policy(
            APP,
            "STDQ",
            &json!({"reserved": [{"kind": "device", "id": "VIP"}]}),
        )
        .await;
    assert_eq!(resp.status(), 201);
    let vip = wait_in_line(&api, "VIP").await;
    assert_eq!(position(&vip), 1);
    assert!(vip.waiting.as_ref().unwrap().reserved);
    assert_eq!(position(&api.assignment(w1.id).await), 2);
    assert_eq!(position(&api.assignment(w2.id).await), 3);
    // One license frees: the reserved subject gets it.
    api.revoke(s1, "").await;
    let got = served(&api, vip.id).await;
    assert_eq!(got.rule.as_str(), "reservation");
    assert_eq!(state_of(&api, w1.id).await, "waiting");
    // The next: first come.
    api.revoke(s2, "").await;
    assert_eq!(served(&api, w1.id).await.state.as_str(), "active");
    let last = api.assignment(w2.id).await;
    assert_eq!((last.state.as_str(), position(&last)), ("waiting", 1));
}

#[tokio::test]
async fn a12_a9_many_concurrent_waiters_and_n_freed_licenses_serve_exactly_n_in_order() {
    const TOTAL: usize = 6;
    const WAITERS: usize = 40;
    const FREED: usize = 4;
    let w = world(TOTAL as i64).await;
    let api = w.api();
    let mut holders = Vec::new();
    for i in 0..TOTAL {
        holders.push(active(&api, &format!("H{i}")).await);
    }
    // Waiters ask all at once (the combiner batches them): each gets its own place.
    let asks = (0..WAITERS).map(|i| {
        let api = w.api();
        async move { wait_in_line(&api, &format!("W{i:02}")).await }
    });
    let mut line: Vec<Assignment> = futures_util::future::join_all(asks).await;
    // Read the places once everyone is in line.
    for a in line.iter_mut() {
        *a = api.assignment(a.id).await;
    }
    line.sort_by_key(position);
    let positions: Vec<i64> = line.iter().map(position).collect();
    assert_eq!(positions, (1..=WAITERS as i64).collect::<Vec<_>>());
    // FREED licenses free at once, while more subjects keep asking (without waiting).
    let revocations = holders[..FREED].iter().map(|id| {
        let api = w.api();
        let id = *id;
        async move { api.revoke(id, "").await.status().as_u16() }
    });
    let latecomers = (0..10).map(|i| {
        let api = w.api();
        async move {
            api.allocate(&device(&format!("L{i}")))
                .await
                .status()
                .as_u16()
        }
    });
    let (revoked, late) = futures_util::future::join(
        futures_util::future::join_all(revocations),
        futures_util::future::join_all(latecomers),
    )
    .await;
    assert!(
        revoked.iter().all(|s| *s == 200 || *s == 202),
        "{revoked:?}"
    );
    // Latecomers do not jump the line: what frees is held for it (`held_for_wait_list`).
    assert!(late.iter().all(|s| *s == 409), "{late:?}");
    // Exactly the freed licenses go to the line, to its head, in order; the ledger never
    // exceeds what is owned.
    let expect = FREED;
    let states = eventually(
        "the head of the line served",
        async || {
            let mut states = Vec::new();
            for a in &line {
                states.push(state_of(&api, a.id).await);
            }
            states
        },
        |s| s.iter().filter(|s| *s != "waiting").count() >= expect,
    )
    .await;
    let served_n = states.iter().filter(|s| *s != "waiting").count();
    assert_eq!(served_n, expect, "{states:?}");
    assert!(
        states[..expect].iter().all(|s| s != "waiting"),
        "served in order: {states:?}"
    );
    let (held, total) = held_and_total(&w.app, w.accounts[0]).await;
    assert_eq!((held, total), (TOTAL as i32, TOTAL as i32));
    let live = api.assignments("live=true&limit=200").await.items.len();
    assert_eq!(live, TOTAL);
    // The rest moved up.
    let next = api.assignment(line[expect].id).await;
    assert_eq!(position(&next), 1);
}

#[tokio::test]
async fn a12_cancelling_a_waiting_assignment_ends_it_without_apple() {
    let w = world(1).await;
    let api = w.api();
    let s1 = active(&api, "S1").await;
    let w1 = wait_in_line(&api, "W1").await;
    let w2 = wait_in_line(&api, "W2").await;
    let w3 = wait_in_line(&api, "W3").await;
    // DELETE cancels at once: 200, revoked, with the record.
    let gone: Assignment = read(api.revoke(w1.id, "?reason=changed+my+mind").await, 200).await;
    assert_eq!(gone.state.as_str(), "revoked");
    assert_eq!(gone.revocation.as_ref().unwrap().reason, "changed my mind");
    assert!(gone.waiting.is_none());
    assert_eq!(position(&api.assignment(w2.id).await), 1);
    // A revocation naming the subject cancels its waiting assignment too.
    let by_subject = api
        .revocations(&json!({"subject": {"kind": "device", "id": "W2"}}))
        .await;
    assert_eq!(
        (
            by_subject.cancelled,
            by_subject.dropped,
            by_subject.revoking
        ),
        (1, 0, 0)
    );
    // Nothing of theirs ever went to Apple.
    let mut conn = w.app.db.connect().await;
    let queued: i64 = jobs::table
        .filter(jobs::assignment_id.eq_any([w1.id, w2.id]))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(queued, 0);
    let log = activity_of(&w.app, w1.id).await;
    assert_eq!(log.last().unwrap().0, "assignment.wait_cancelled");
    // A freed license goes to the one still waiting, not to the cancelled ones.
    api.revoke(s1, "").await;
    assert_eq!(served(&api, w3.id).await.state.as_str(), "active");
    for id in [w1.id, w2.id] {
        assert_eq!(state_of(&api, id).await, "revoked");
    }
    // Cancelling a revoked one again answers it as it is.
    let again: Assignment = read(api.revoke(w1.id, "").await, 200).await;
    assert_eq!(again.state.as_str(), "revoked");
}

#[tokio::test]
async fn a12_an_expired_wait_fails_with_its_reason() {
    let w = world(1).await;
    let api = w.api();
    api.allocated(&device("S1")).await;
    let w1 = wait_in_line(&api, "W1").await;
    let w2 = wait_in_line(&api, "W2").await;
    let mut conn = w.app.db.connect().await;
    // W1's 72 hours are over (moved back in time here rather than waited for).
    diesel::sql_query(
        "UPDATE waitlist SET expires_at = now() - interval '1 minute' WHERE assignment_id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(w1.id)
    .execute(&mut conn)
    .await
    .unwrap();
    let n = vpp_broker::engine::waitlist::expire(&mut conn, chrono::Utc::now(), 100)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let expired = api.assignment(w1.id).await;
    assert_eq!(expired.state.as_str(), "failed");
    let error = expired.error.unwrap();
    assert!(error.message.contains("expired"), "{error:?}");
    let log = activity_of(&w.app, w1.id).await;
    assert_eq!(log.last().unwrap().0, "assignment.wait_expired");
    // The other one moved up; asking again later starts a new wait.
    assert_eq!(position(&api.assignment(w2.id).await), 1);
    let again = wait_in_line(&api, "W1").await;
    assert_ne!(again.id, w1.id);
    assert_eq!(position(&again), 2);
}

/// The wait-list figure, measured in-process (no HTTP, no dispatcher: the line is
/// served by calling the use case the worker calls): N waiting entries, then N licenses bought
/// (the asset row's total raised as a sync applies it, which fires the wake-up trigger), then
/// one run of the wait-list. Prints the time; asserts only the outcome. The suite runs it with
/// 1,000 entries; the benchmark with `VPP_A12_BENCH_ENTRIES=10000` (docs/benchmarks.md).
#[tokio::test]
async fn a12_benchmark_a_line_of_waiting_entries_is_served_in_one_run() {
    use vpp_broker::domain::allocation::{AllocationRequest, AssetRef, SubjectInput};
    use vpp_broker::domain::model::LicenseWish;
    use vpp_broker::domain::origin::Origin;
    if std::env::var_os("VPP_A12_BENCH_ENTRIES").is_some() {
        crate::support::logs::capture_for_benchmark();
    }
    let n: usize = std::env::var("VPP_A12_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
        .max(1);
    let w = fixtures::world_with(
        vec![location(U1, "Library", vec![app(APP, 0)])],
        |_| Options::default(),
        &[("A", U1)],
    )
    .await;
    let asset = AssetRef {
        adam_id: APP.into(),
        pricing_param: "STDQ".into(),
    };
    let until = chrono::Utc::now() + chrono::Duration::hours(72);
    let reqs: Vec<AllocationRequest> = (0..n)
        .map(|i| AllocationRequest {
            space: "acme".into(),
            asset: asset.clone(),
            subject: SubjectInput::Device {
                serial: format!("B{i:05}"),
                user: None,
                shared_ipad: None,
                groups: None,
            },
            wish: LicenseWish::Auto,
            reason: String::new(),
            origin: Origin::new("bench", None),
            dry_run: false,
            exclude_accounts: Vec::new(),
            replaces: None,
            wait_until: Some(until),
            policy_wait_until: None,
            serves: None,
            serves_holder: None,
        })
        .collect();
    let mut conn = w.app.db.connect().await;
    let started = std::time::Instant::now();
    for chunk in reqs.chunks(1000) {
        let refs: Vec<&AllocationRequest> = chunk.iter().collect();
        use diesel_async::AsyncConnection;
        conn.transaction(async |conn| {
            vpp_broker::engine::allocate::allocate_many(conn, "acme", &refs).await
        })
        .await
        .unwrap();
    }
    let queued = started.elapsed();
    let count = async |conn: &mut diesel_async::AsyncPgConnection, sql: &str| -> i64 {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        diesel::sql_query(sql)
            .get_result::<N>(conn)
            .await
            .unwrap()
            .n
    };
    assert_eq!(
        count(&mut conn, "SELECT count(*) AS n FROM waitlist").await,
        n as i64
    );
    diesel::sql_query(format!(
        "UPDATE assets SET apple_total = apple_total + {n} WHERE adam_id = '{APP}'"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        count(&mut conn, "SELECT count(*) AS n FROM waitlist_wakeups").await,
        1,
        "the purchase woke the line"
    );
    let started = std::time::Instant::now();
    let served = vpp_broker::engine::waitlist::serve(&mut conn, "acme", &asset)
        .await
        .unwrap();
    let serving = started.elapsed();
    println!(
        "A12 benchmark: {n} entries queued in {queued:?}; {} served in {serving:?} (waiting {})",
        served.served, served.waiting
    );
    assert_eq!(served.served, n);
    assert_eq!(
        count(&mut conn, "SELECT count(*) AS n FROM waitlist").await,
        0
    );
    assert_eq!(
        held_and_total(&w.app, w.accounts[0]).await,
        (n as i32, n as i32)
    );
}

/// A world with no dispatcher (nothing moves by itself: the tests serve the line by calling
/// the use case the worker calls) and the accounts `(name, location, licenses of APP)`.
async fn still_world(accounts: &[(&str, &str, i64)]) -> World {
    let locations = accounts
        .iter()
        .map(|(name, loc, total)| location(loc, name, vec![app(APP, *total)]))
        .collect();
    let attach: Vec<(&str, &str)> = accounts.iter().map(|(n, l, _)| (*n, *l)).collect();
    fixtures::world_with(locations, |_| Options::default(), &attach).await
}

fn app_asset() -> vpp_broker::domain::allocation::AssetRef {
    vpp_broker::domain::allocation::AssetRef {
        adam_id: APP.into(),
        pricing_param: "STDQ".into(),
    }
}

/// One more license of [`APP`] for `account` in the ledger (as a sync would record a purchase).
async fn buy_one(app: &TestApp, account: Uuid) {
    let mut conn = app.db.connect().await;
    diesel::update(
        assets::table
            .filter(assets::account_id.eq(account))
            .filter(assets::adam_id.eq(APP)),
    )
    .set(assets::apple_total.eq(assets::apple_total + 1))
    .execute(&mut conn)
    .await
    .unwrap();
}

#[tokio::test]
async fn a12_a7_an_entry_whose_holder_changed_ends_instead_of_serving_another_holder() {
    // Review finding: a device waiting for its user's license (holder u1) whose user became
    // u2 was served for u2 but the license was written onto u1's row.
    let w = still_world(&[("A", U1, 1)]).await;
    let api = w.api();
    api.allocated(&device("S1")).await;
    let d = wait_with(
        &api,
        &json!({"asset": {"adam_id": APP},
                "subject": {"kind": "device", "id": "D", "user": "u1"},
                "license_type": "user", "wait_for_license": true}),
    )
    .await;
    assert_eq!(
        (d.subject.kind.as_str(), d.subject.id.as_str()),
        ("user", "u1"),
        "{d:?}"
    );
    let behind = wait_with(&api, &waiting("W2")).await;
    // D's user changes.
    let resp = api
        .req(Method::PUT, "/devices/D")
        .json(&json!({"user": "u2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    buy_one(&w.app, w.accounts[0]).await;
    let mut conn = w.app.db.connect().await;
    let done = vpp_broker::engine::waitlist::serve(&mut conn, "acme", &app_asset())
        .await
        .unwrap();
    assert_eq!(
        (done.served, done.ended, done.waiting),
        (1, 1, 0),
        "{done:?}"
    );
    let ended = api.assignment(d.id).await;
    assert_eq!(
        (ended.state.as_str(), ended.subject.id.as_str()),
        ("failed", "u1")
    );
    let error = ended.error.unwrap();
    assert!(error.message.contains("holder changed"), "{error:?}");
    assert_eq!(
        activity_of(&w.app, d.id).await.last().unwrap().0,
        "assignment.wait_ended"
    );
    // The freed license went to the next in line; u2 got nothing by the back door.
    let next = api.assignment(behind.id).await;
    assert_eq!(next.state.as_str(), "pending", "{next:?}");
    assert_eq!(held_and_total(&w.app, w.accounts[0]).await, (2, 2));
}

#[tokio::test]
async fn a12_a4_the_line_is_paged_past_full_chunks_that_serve_nobody() {
    // Review finding: serving stopped at the first full chunk that served nobody, so an entry
    // behind it that could use the freed license was never looked at. Chunks of 2 here stand
    // for the 10,000 of production.
    let w = still_world(&[("A", U1, 1), ("B", "7100000002", 0)]).await;
    let api = w.api();
    let (a, b) = (w.accounts[0], w.accounts[1]);
    api.update_account(
        b,
        &json!({"distribution_list": [{"kind": "device", "value": "LISTED"}]}),
    )
    .await;
    assert_eq!(api.allocated(&device("FIRST")).await.account_id, a);
    let w1 = wait_with(&api, &waiting("W1")).await;
    let w2 = wait_with(&api, &waiting("W2")).await;
    let listed = wait_with(&api, &waiting("LISTED")).await;
    assert_eq!(position(&listed), 3);
    // B gets a license: only LISTED (A4) may use it, behind a full chunk of entries that may not.
    buy_one(&w.app, b).await;
    let mut conn = w.app.db.connect().await;
    let done = vpp_broker::engine::waitlist::serve_in_chunks(&mut conn, "acme", &app_asset(), 2)
        .await
        .unwrap();
    assert_eq!(
        (done.served, done.waiting, done.ended),
        (1, 2, 0),
        "{done:?}"
    );
    let got = api.assignment(listed.id).await;
    assert_eq!(
        (got.state.as_str(), got.account_id, got.rule.as_str()),
        ("pending", b, "fallback"),
        "{got:?}"
    );
    for (id, place) in [(w1.id, 1), (w2.id, 2)] {
        let still = api.assignment(id).await;
        assert_eq!((still.state.as_str(), position(&still)), ("waiting", place));
    }
}

#[tokio::test]
async fn a12_a_failing_line_backs_off_and_does_not_starve_the_others() {
    // Review finding: a run that failed gave its wake-up back unchanged, so the same line was
    // claimed again at once (claims go by `woken_at`), in a hot loop, and other lines starved.
    use vpp_broker::dispatch::waitlist::{MAX_BACKOFF, backoff};
    use vpp_broker::ledger::waitlist as store;
    let w = still_world(&[("A", U1, 1)]).await;
    let mut conn = w.app.db.connect().await;
    diesel::sql_query(
        "INSERT INTO waitlist_wakeups (space_id, adam_id, pricing_param, woken_at)
         VALUES ('acme', 'FAILS', 'STDQ', now() - interval '1 minute'),
                ('acme', 'OTHER', 'STDQ', now() - interval '10 seconds')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let lease = Duration::from_secs(60);
    let first = store::claim(&mut conn, "w1", lease).await.unwrap().unwrap();
    assert_eq!(first.adam_id, "FAILS");
    // Its run failed: it goes back with a back-off, behind the line woken meanwhile.
    store::back_off(
        &mut conn,
        &first,
        "w1",
        backoff(Duration::from_millis(100), 1),
    )
    .await
    .unwrap();
    let next = store::claim(&mut conn, "w1", lease).await.unwrap().unwrap();
    assert_eq!(next.adam_id, "OTHER", "the other line is served first");
    store::release(&mut conn, &next, "w1").await.unwrap();
    let again = store::claim(&mut conn, "w1", lease).await.unwrap().unwrap();
    assert_eq!(
        again.adam_id, "OTHER",
        "the failed line waits out its back-off"
    );
    store::finish(&mut conn, &again, "w1").await.unwrap();
    assert!(
        store::claim(&mut conn, "w1", lease)
            .await
            .unwrap()
            .is_none(),
        "nothing claimable during the back-off"
    );
    // The back-off grows with the failed attempts, up to its cap.
    let idle = Duration::from_millis(200);
    assert!(backoff(idle, 1) < backoff(idle, 2) && backoff(idle, 2) < backoff(idle, 3));
    assert_eq!(backoff(idle, 40), MAX_BACKOFF);
}

#[tokio::test]
async fn a12_waiting_entries_are_not_past_licenses_nor_movement_of_the_inventory() {
    // Review finding: the device view listed a waiting entry under `licenses.past`, and the
    // inventory's daily movement counted a waiting entry as an allocation and a cancelled one
    // as a revocation.
    let w = still_world(&[("A", U1, 1)]).await;
    let api = w.api();
    api.allocated(&device("S1")).await;
    let w1 = wait_with(&api, &waiting("W1")).await;
    let w2 = wait_with(&api, &waiting("W2")).await;
    let view: vpp_broker::api::subjects::Device = api.get("/devices/W1").await;
    assert!(view.licenses.live.is_empty(), "{view:?}");
    assert_eq!(
        (view.licenses.past.len(), view.licenses.past_total),
        (0, 0),
        "{view:?}"
    );
    // Cancel one.
    let resp = api.revoke(w2.id, "?reason=not%20needed").await;
    assert!(resp.status().is_success(), "{}", resp.status());
    assert_eq!(state_of(&api, w2.id).await, "revoked");
    let detail: vpp_broker::api::assets::AssetDetail = w
        .app
        .get_as(&format!("/v1/spaces/acme/assets/{APP}/STDQ"))
        .await;
    let today = detail.daily.last().unwrap();
    assert_eq!(
        (today.allocations, today.revocations),
        (1, 0),
        "only S1's allocation moved anything: {today:?}"
    );
    assert_eq!(state_of(&api, w1.id).await, "waiting");
}

#[tokio::test]
async fn a12_a_poison_entry_is_isolated_and_the_line_behind_it_is_served() {
    // Review finding: one entry whose write the database refuses failed the whole chunk, at
    // every wake-up. Here a constraint (standing for any the entry might break) refuses W1's
    // license: W1 ends `failed` with the error, W2 behind it is served.
    let w = still_world(&[("A", U1, 1)]).await;
    let api = w.api();
    api.allocated(&device("S1")).await;
    let w1 = wait_with(&api, &waiting("W1")).await;
    let w2 = wait_with(&api, &waiting("W2")).await;
    let mut conn = w.app.db.connect().await;
    diesel::sql_query(format!(
        "ALTER TABLE assignments ADD CONSTRAINT poison
             CHECK (NOT (id = '{}' AND state = 'pending')) NOT VALID",
        w1.id
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    buy_one(&w.app, w.accounts[0]).await;
    let done = vpp_broker::engine::waitlist::serve(&mut conn, "acme", &app_asset())
        .await
        .unwrap();
    assert_eq!(
        (done.served, done.ended, done.waiting),
        (1, 1, 0),
        "{done:?}"
    );
    let poisoned = api.assignment(w1.id).await;
    assert_eq!(poisoned.state.as_str(), "failed", "{poisoned:?}");
    assert!(
        poisoned.error.unwrap().message.contains("poison"),
        "the database's error is the reason"
    );
    assert_eq!(state_of(&api, w2.id).await, "pending");
    assert_eq!(held_and_total(&w.app, w.accounts[0]).await, (2, 2));
}

/// `PUT …/policies/APP/STDQ` with `body`; the policy answered.
async fn put_policy(
    api: &Client<'_>,
    body: Value,
    status: u16,
) -> vpp_broker::api::policies::Policy {
    let resp = api
        .req(Method::PUT, &format!("/policies/{APP}/STDQ"))
        .json(&body)
        .send()
        .await
        .unwrap();
    read(resp, status).await
}

#[tokio::test]
async fn a12_a_policy_with_wait_for_license_makes_allocations_wait_unless_they_say_false() {
    let w = world(1).await;
    let api = w.api();
    active(&api, "HOLDER").await;

    // The policy asks to wait: an allocation that does not say waits in line (202).
    let policy = put_policy(&api, json!({"wait_for_license": true}), 201).await;
    assert!(policy.wait_for_license);
    let read_back: vpp_broker::api::policies::Policy =
        api.get(&format!("/policies/{APP}/STDQ")).await;
    assert!(read_back.wait_for_license);
    let waits = wait_with(&api, &device("BY-POLICY")).await;
    assert_eq!(position(&waits), 1);
    // A request that says `false` is refused as before.
    let resp = api
        .allocate(
            &json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": "NO-WAIT"},
                          "wait_for_license": false}),
        )
        .await;
    expect_problem(resp, 409, "no-license-available").await;
    // A dry run never waits, whatever the policy.
    let resp = api
        .allocate(
            &json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": "DRY"},
                          "dry_run": true}),
        )
        .await;
    expect_problem(resp, 409, "no-license-available").await;

    // The policy no longer asks (the setting's default): as before, 409 without the flag and
    // a place in line with it.
    let policy = put_policy(&api, json!({"fcfs_groups": []}), 200).await;
    assert!(!policy.wait_for_license);
    expect_problem(
        api.allocate(&device("OFF")).await,
        409,
        "no-license-available",
    )
    .await;
    let asked = wait_in_line(&api, "ASKED").await;
    assert_eq!(position(&asked), 2);

    // Both wait in line; nothing else does.
    let mut conn = w.app.db.connect().await;
    let waiting_now: i64 = vpp_broker::db::schema::assignments::table
        .filter(vpp_broker::db::schema::assignments::state.eq("waiting"))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(waiting_now, 2);
    assert_eq!(state_of(&api, waits.id).await, "waiting");
}
