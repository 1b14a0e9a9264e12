//! Several `serve` processes on one database, configured like the Helm chart configures pods: no
//! over-allocation across replicas (A9 in docs/rules.md), a killed replica's work finished by the
//! others, one migration run for replicas starting together, graceful drain on SIGTERM, and
//! lifecycle events applied exactly once by three processes, one of them killed mid-batch.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use vpp_broker::api::accounts::Account;
use vpp_broker::api::assignments::Allocation;
use vpp_broker::apple_sim::SimHandle;
use vpp_broker::db::schema::{assignments, jobs, lifecycle_events, subjects};

use crate::support::db::TestDb;
use crate::support::procs::{ServeProcess, chart_env};
use crate::support::sim::{self, app, location};
use crate::support::{Allocated, admin_token, eventually_within, expect_problem, read};

const UA: &str = "3000000001";
const UB: &str = "3000000002";
const APP: &str = "408709785";

struct Cluster {
    sim: SimHandle,
    db: TestDb,
    procs: Vec<ServeProcess>,
    http: reqwest::Client,
    a: String,
    b: String,
}

async fn cluster(total_a: i64, total_b: i64) -> Cluster {
    let sim = sim::start(vec![
        location(UA, "Library A", vec![app(APP, total_a)]),
        location(UB, "Library B", vec![app(APP, total_b)]),
    ])
    .await;
    let c = cluster_on(sim).await;
    // B serves only the `eligible` group when A runs out.
    let resp = c
        .http
        .patch(format!(
            "{}/v1/spaces/acme/accounts/{}",
            c.procs[0].base_url, c.b
        ))
        .bearer_auth(admin_token())
        .json(&json!({"distribution_list": [{"kind": "group", "value": "eligible"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    c
}

/// Three `serve` processes on a new database, Apple being `sim` (which has locations UA and
/// UB), space `acme` with account A (UA) and B (UB).
async fn cluster_on(sim: SimHandle) -> Cluster {
    let db = TestDb::new().await;
    let env = chart_env(&db.url, &sim.base_url());
    let procs: Vec<ServeProcess> = (0..3).map(|_| ServeProcess::spawn(&env)).collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    for p in &procs {
        p.wait_ready(&http).await;
    }
    let base = &procs[0].base_url;
    let post = |path: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(admin_token())
            .json(&body)
            .send()
    };
    assert_eq!(
        post("/v1/spaces", json!({"id": "acme", "name": "Acme"}))
            .await
            .unwrap()
            .status(),
        201
    );
    let mut ids = Vec::new();
    for (name, uid) in [("A", UA), ("B", UB)] {
        let resp = post(
            "/v1/spaces/acme/accounts",
            json!({"name": name, "stoken": sim::stoken(&sim, uid)}),
        )
        .await
        .unwrap();
        ids.push(read::<Account>(resp, 201).await.id.to_string());
    }
    Cluster {
        sim,
        db,
        procs,
        http,
        b: ids.pop().unwrap(),
        a: ids.pop().unwrap(),
    }
}

fn body(i: usize) -> Value {
    let groups = if i.is_multiple_of(3) {
        vec!["eligible"]
    } else {
        vec!["others"]
    };
    json!({
        "asset": {"adam_id": APP},
        "subject": {"kind": "device", "id": format!("DEV-{i:04}"), "groups": groups}
    })
}

/// Fires `n` allocations, spread over the live processes, `concurrency` at a time. Each uses
/// an Idempotency-Key, and a request whose process dies is retried on the next one, as a load
/// balancer would. Returns (index, status, body) per request.
async fn storm(
    c: &Cluster,
    n: usize,
    concurrency: usize,
    alive: Arc<std::sync::Mutex<Vec<String>>>,
) -> Vec<(usize, u16, Value)> {
    let limit = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for i in 0..n {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let http = c.http.clone();
        let alive = alive.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            for attempt in 0..10 {
                let base = {
                    let list = alive.lock().unwrap();
                    list[(i + attempt) % list.len()].clone()
                };
                let sent = http
                    .post(format!("{base}/v1/spaces/acme/assignments"))
                    .bearer_auth(admin_token())
                    .header("idempotency-key", format!("storm-{i}"))
                    .json(&body(i))
                    .send()
                    .await;
                if let Ok(resp) = sent {
                    let status = resp.status().as_u16();
                    if let Ok(json) = resp.json::<Value>().await {
                        return (i, status, json);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("request {i} failed on every process");
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Waits until no Apple work is left and returns the ledger's active (account, serial) pairs.
async fn drained(c: &Cluster, timeout: Duration) -> BTreeSet<(String, String)> {
    let mut conn = c.db.connect().await;
    crate::support::fixtures::wait_drained(&mut conn, timeout).await;
    let rows: Vec<(uuid::Uuid, String)> = assignments::table
        .inner_join(subjects::table)
        .filter(assignments::state.eq("active"))
        .select((assignments::account_id, subjects::external_id))
        .load(&mut conn)
        .await
        .unwrap();
    rows.into_iter().map(|(a, s)| (a.to_string(), s)).collect()
}

async fn at_apple(c: &Cluster) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (uid, account) in [(UA, &c.a), (UB, &c.b)] {
        let snapshot = c.sim.location(uid).await.unwrap();
        let serials: Vec<String> = snapshot
            .assignments
            .into_iter()
            .filter_map(|a| a.serial_number)
            .collect();
        let distinct: BTreeSet<&String> = serials.iter().collect();
        assert_eq!(
            distinct.len(),
            serials.len(),
            "duplicate assignment at Apple"
        );
        for s in serials {
            out.insert((account.clone(), s));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a9_three_processes_share_one_ledger_without_over_allocating() {
    let c = cluster(200, 100).await;
    let alive = Arc::new(std::sync::Mutex::new(
        c.procs
            .iter()
            .map(|p| p.base_url.clone())
            .collect::<Vec<_>>(),
    ));
    let started = Instant::now();
    let results = storm(&c, 1000, 64, alive).await;
    let elapsed = started.elapsed();
    let mut from_a = 0;
    let mut from_b = 0;
    let mut refused = 0;
    let mut subjects_served = BTreeSet::new();
    for (i, status, json) in &results {
        match status {
            201 => {
                let allocation: Allocation = serde_json::from_value(json.clone()).unwrap();
                assert!(
                    subjects_served.insert(allocation.assignment().subject.id.clone()),
                    "duplicate for {i}"
                );
                let account = allocation.account_id.to_string();
                if account == c.a {
                    from_a += 1;
                } else {
                    assert_eq!(account, c.b);
                    assert!(
                        i.is_multiple_of(3),
                        "B served a device outside its distribution list"
                    );
                    from_b += 1;
                }
            }
            409 => {
                refused += 1;
                assert_eq!(json["type"], "urn:vpp-broker:problem:no-license-available");
            }
            other => panic!("request {i}: unexpected {other}: {json}"),
        }
    }
    assert_eq!((from_a, from_b, refused), (200, 100, 700), "in {elapsed:?}");
    let ledger = drained(&c, Duration::from_secs(60)).await;
    assert_eq!(ledger.len(), 300);
    assert_eq!(
        at_apple(&c).await,
        ledger,
        "Apple holds exactly the ledger's active assignments"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_a_killed_process_s_work_is_finished_by_the_others_without_loss_or_doubling() {
    let mut c = cluster(400, 0).await;
    let alive = Arc::new(std::sync::Mutex::new(
        c.procs
            .iter()
            .map(|p| p.base_url.clone())
            .collect::<Vec<_>>(),
    ));
    let storm_alive = alive.clone();
    let victim_url = c.procs[1].base_url.clone();
    let victim_pid = c.procs[1].child.id() as i32;
    // Kill one process with SIGKILL once the storm is under way.
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        storm_alive.lock().unwrap().retain(|u| u != &victim_url);
        unsafe { libc::kill(victim_pid, libc::SIGKILL) };
    });
    let started = Instant::now();
    let results = {
        let c = &c;
        storm(c, 500, 32, alive).await
    };
    assert!(
        started.elapsed() > Duration::from_millis(700),
        "the kill landed mid-storm"
    );
    killer.await.unwrap();
    let status = c.procs[1].wait_exit(Duration::from_secs(5)).await;
    assert!(!status.success(), "the victim was killed");
    let granted = results.iter().filter(|(_, s, _)| *s == 201).count();
    let others: Vec<(u16, String)> = results
        .iter()
        .filter(|(_, s, _)| *s != 201 && *s != 409)
        .map(|(_, s, body)| (*s, body.to_string()))
        .collect();
    assert_eq!(
        granted, 400,
        "every license granted once, none lost; answers other than 201 and 409: {others:?}"
    );
    // Leases of the dead process expire (5 s) and the survivors finish its Apple work.
    let ledger = drained(&c, Duration::from_secs(90)).await;
    assert_eq!(ledger.len(), 400);
    assert_eq!(
        at_apple(&c).await,
        ledger,
        "nothing lost or doubled at Apple"
    );
    c.procs.remove(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_together_migrate_once_and_drain_in_flight_requests_on_sigterm() {
    let sim = sim::start(vec![location(UA, "Library A", vec![app(APP, 5)])]).await;
    let db = TestDb::empty().await;
    let mut env = chart_env(&db.url, &sim.base_url());
    env.push(("VPP_AUTO_MIGRATE".into(), "true".into()));
    let mut procs: Vec<ServeProcess> = (0..3).map(|_| ServeProcess::spawn(&env)).collect();
    let http = reqwest::Client::new();
    for p in &procs {
        p.wait_ready(&http).await;
    }
    // Three processes raced to migrate an empty database: each migration ran once.
    let mut conn = db.connect().await;
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let applied: N = diesel::sql_query("SELECT count(*) AS n FROM __diesel_schema_migrations")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(applied.n as usize, vpp_broker::db::migrate::count());

    // An in-flight request (a bounded wait on an assignment that cannot finish) survives SIGTERM.
    let base = procs[0].base_url.clone();
    let post = |path: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(admin_token())
            .json(&body)
            .send()
    };
    post("/v1/spaces", json!({"id": "acme", "name": "Acme"}))
        .await
        .unwrap();
    let account: Account = post(
        "/v1/spaces/acme/accounts",
        // `queue`: the allocation below stays pending at a revoked account.
        json!({"name": "A", "stoken": sim::stoken(&sim, UA), "settings": {"when_unusable": "queue"}}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    sim.set_location_token_status(UA, vpp_broker::apple_sim::TokenStatus::Revoked)
        .await
        .unwrap();
    post(
        &format!("/v1/spaces/acme/accounts/{}/test", account.id),
        json!({}),
    )
    .await
    .unwrap();
    let alloc: Allocation = post(
        "/v1/spaces/acme/assignments",
        json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": "S1"}}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let id = alloc.id();
    let waiting = {
        let url = format!("{base}/v1/spaces/acme/assignments/{id}?wait=3");
        let http = http.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let resp = http
                .get(url)
                .bearer_auth(admin_token())
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), started.elapsed())
        })
    };
    // Let the wait get under way (the assertions below are about that request, not about
    // anything that happens in the background).
    tokio::time::sleep(Duration::from_millis(500)).await;
    procs[0].signal(libc::SIGTERM);
    let (status, took) = waiting.await.unwrap();
    assert_eq!(status, 200, "the in-flight request finished");
    assert!(
        took >= Duration::from_millis(2500),
        "it ran its full wait ({took:?})"
    );
    let exit = procs[0].wait_exit(Duration::from_secs(15)).await;
    assert!(exit.success(), "clean exit: {exit:?}");
    // The others keep serving; new connections to the stopped one are refused.
    let resp = http
        .get(format!("{}/readyz", procs[1].base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(http.get(format!("{base}/livez")).send().await.is_err());
    let resp = http
        .get(format!(
            "{}/v1/spaces/acme/assignments/nope",
            procs[2].base_url
        ))
        .bearer_auth(admin_token())
        .send()
        .await
        .unwrap();
    expect_problem(resp, 400, "invalid-parameter").await;
    procs.remove(0);
}

/// A second app only library A owns (part of the lifecycle proof below).
const APP2: &str = "1000000002";

/// `POST …/lifecycle-events` of `device.retired` events for devices `from..to` to `base`.
async fn post_retired(http: &reqwest::Client, base: &str, from: usize, to: usize) -> Value {
    let events: Vec<Value> = (from..to)
        .map(|i| {
            json!({"id": format!("ret-{i:04}"), "source": "mdm", "type": "device.retired",
                   "occurred_at": "2026-12-01T10:00:00Z", "subject": {"id": format!("LC-{i:04}")}})
        })
        .collect();
    let resp = http
        .post(format!("{base}/v1/spaces/acme/lifecycle-events"))
        .bearer_auth(admin_token())
        .json(&json!({ "events": events }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    resp.json().await.unwrap()
}

#[derive(diesel::QueryableByName, Debug)]
struct Tally {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    rows: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    distinct_keys: i64,
}

/// (rows, distinct keys) of the activity rows of `action`, keyed by `key` (an SQL expression).
async fn tally(conn: &mut diesel_async::AsyncPgConnection, action: &str, key: &str) -> (i64, i64) {
    let t: Tally = diesel::sql_query(format!(
        "SELECT count(*) AS rows, count(DISTINCT {key}) AS distinct_keys
           FROM activity_log WHERE action = $1"
    ))
    .bind::<diesel::sql_types::Text, _>(action)
    .get_result(conn)
    .await
    .unwrap();
    (t.rows, t.distinct_keys)
}

/// Issue 14's proof: three `serve` processes share a stream of lifecycle events, one of them is
/// killed with SIGKILL while the events are being applied (and started again), and every event
/// is still applied exactly once: one `lifecycle.applied` row per event, one revocation per
/// license, every license released at Apple once; posting the batches again answers
/// `duplicate` and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn v5_three_processes_apply_lifecycle_events_exactly_once_through_a_sigkill() {
    const DEVICES: usize = 300;
    const BATCH: usize = 100;
    let sim = sim::start(vec![
        location(UA, "Library A", vec![app(APP, 400), app(APP2, 400)]),
        location(UB, "Library B", vec![app(APP, 0)]),
    ])
    .await;
    let mut c = cluster_on(sim).await;
    let bases: Vec<String> = c.procs.iter().map(|p| p.base_url.clone()).collect();

    // 300 devices × 2 apps, allocated through all three processes.
    let limit = Arc::new(Semaphore::new(32));
    let mut tasks = Vec::new();
    for i in 0..DEVICES * 2 {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let http = c.http.clone();
        let base = bases[i % bases.len()].clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let adam = if i.is_multiple_of(2) { APP } else { APP2 };
            let body = json!({"asset": {"adam_id": adam},
                              "subject": {"kind": "device", "id": format!("LC-{:04}", i / 2)}});
            let resp = http
                .post(format!("{base}/v1/spaces/acme/assignments"))
                .bearer_auth(admin_token())
                .json(&body)
                .send()
                .await
                .unwrap();
            resp.status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    drained(&c, Duration::from_secs(90)).await;
    let mut conn = c.db.connect().await;
    let active: i64 = assignments::table
        .filter(assignments::state.eq("active"))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(active, (DEVICES * 2) as i64);

    // The events, in batches of 100, one batch per process, all at once.
    let started = Instant::now();
    let mut posts = Vec::new();
    for (k, base) in bases.iter().enumerate() {
        let http = c.http.clone();
        let base = base.clone();
        posts.push(tokio::spawn(async move {
            post_retired(&http, &base, k * BATCH, (k + 1) * BATCH).await
        }));
    }
    for p in posts {
        let answer = p.await.unwrap();
        assert_eq!(answer["accepted"], BATCH, "{answer}");
    }
    // SIGKILL the second process once the workers are under way.
    let applied = async |conn: &mut diesel_async::AsyncPgConnection| -> i64 {
        lifecycle_events::table
            .filter(lifecycle_events::state.eq("applied"))
            .count()
            .get_result(conn)
            .await
            .unwrap()
    };
    let at_kill = eventually_within(
        Duration::from_secs(30),
        "some events applied",
        async || applied(&mut conn).await,
        |n| *n >= 20,
    )
    .await;
    c.procs[1].signal(libc::SIGKILL);
    let status = c.procs[1].wait_exit(Duration::from_secs(5)).await;
    assert!(!status.success(), "the victim was killed");
    assert!(
        at_kill < DEVICES as i64,
        "killed while events were being applied ({at_kill} of {DEVICES} applied)"
    );
    // Started again, as Kubernetes would.
    let env = chart_env(&c.db.url, &c.sim.base_url());
    c.procs[1] = ServeProcess::spawn(&env);
    c.procs[1].wait_ready(&c.http).await;

    eventually_within(
        Duration::from_secs(90),
        "every event applied",
        async || applied(&mut conn).await,
        |n| *n == DEVICES as i64,
    )
    .await;
    let took = started.elapsed();
    drained(&c, Duration::from_secs(90)).await;

    // Every event applied exactly once.
    let states: Vec<String> = lifecycle_events::table
        .select(lifecycle_events::state)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(states.len(), DEVICES);
    assert!(states.iter().all(|s| s == "applied"), "{states:?}");
    assert_eq!(
        tally(&mut conn, "lifecycle.applied", "details->'event'->>'id'").await,
        (DEVICES as i64, DEVICES as i64),
        "one lifecycle.applied row per event"
    );
    // One revocation per license, none revoked twice, each released at Apple once.
    let revoked: i64 = assignments::table
        .filter(assignments::state.eq("revoked"))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(revoked, (DEVICES * 2) as i64);
    assert_eq!(
        tally(&mut conn, "assignment.revoke_requested", "assignment_id").await,
        ((DEVICES * 2) as i64, (DEVICES * 2) as i64),
        "one revocation per license"
    );
    assert_eq!(
        tally(&mut conn, "assignment.revoked", "assignment_id").await,
        ((DEVICES * 2) as i64, (DEVICES * 2) as i64),
        "each license released at Apple once"
    );
    let snapshot = c.sim.location(UA).await.unwrap();
    assert!(
        snapshot.assignments.is_empty(),
        "Apple still holds {:?}",
        snapshot.assignments.len()
    );
    for asset in &snapshot.assets {
        assert_eq!(asset.assigned_count, Some(0), "{asset:?}");
        assert_eq!(asset.available_count, Some(400), "{asset:?}");
    }
    #[derive(diesel::QueryableByName)]
    struct Sent {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        requests: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        targets: i64,
    }
    let sent: Sent = diesel::sql_query(
        "SELECT count(*) AS requests, COALESCE(sum(requested), 0)::bigint AS targets
           FROM apple_events WHERE kind = 'disassociate'",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    println!(
        "lifecycle through a SIGKILL: {DEVICES} events ({} licenses) applied in {took:?}; \
         killed after {at_kill}; {} release requests for {} targets",
        DEVICES * 2,
        sent.requests,
        sent.targets
    );

    // The same batches again: every event a duplicate, answered `applied`; nothing changes.
    for (k, base) in bases.iter().enumerate() {
        let base = if k == 1 { &c.procs[1].base_url } else { base };
        let answer = post_retired(&c.http, base, k * BATCH, (k + 1) * BATCH).await;
        assert_eq!(answer["accepted"], 0, "{answer}");
        assert_eq!(answer["duplicates"], BATCH, "{answer}");
        let entries = answer["events"].as_array().unwrap();
        assert!(
            entries
                .iter()
                .all(|e| e["duplicate"] == true && e["status"] == "applied"),
            "{answer}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        tally(&mut conn, "lifecycle.applied", "details->'event'->>'id'").await,
        (DEVICES as i64, DEVICES as i64)
    );
    let queued: i64 = jobs::table.count().get_result(&mut conn).await.unwrap();
    assert_eq!(queued, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t13_three_processes_keep_to_one_apple_request_rate_per_token() {
    // One serial per association request: each allocation is its own Apple request (and its
    // event's status polls). Allocations come in waves, so each dispatch round is short and
    // the account's dispatcher lock changes hands between the three processes all along; each
    // process paces itself to 15 requests/s, so a new holder would start with an empty window
    // of its own. Only the budget they share keeps the three together under Apple's limit
    // (the simulator refuses the 16th request within a second with 429 and counts it).
    let sim = sim::start_with(
        vec![
            location(UA, "Library A", vec![app(APP, 400)]),
            location(UB, "Library B", vec![app(APP, 0)]),
        ],
        |s| {
            s.limits.insert("maxSerialNumbers".to_owned(), 1);
        },
    )
    .await;
    let c = cluster_on(sim).await;
    c.sim.reset_counters().await.unwrap();
    let (waves, per_wave) = (20, 12);
    for wave in 0..waves {
        let posts: Vec<_> = (0..per_wave)
            .map(|i| {
                let n = wave * per_wave + i;
                c.http
                    .post(format!(
                        "{}/v1/spaces/acme/assignments",
                        c.procs[n % c.procs.len()].base_url
                    ))
                    .bearer_auth(admin_token())
                    .json(&body(n))
                    .send()
            })
            .collect();
        for resp in futures_util::future::join_all(posts).await {
            assert_eq!(resp.unwrap().status(), 201);
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let ledger = drained(&c, Duration::from_secs(120)).await;
    assert_eq!(ledger.len(), waves * per_wave);
    assert_eq!(at_apple(&c).await, ledger);
    let counters = c.sim.counters().await.unwrap();
    let associations = counters.get("POST /assets/associate").copied().unwrap_or(0);
    assert!(
        associations >= (waves * per_wave) as u64,
        "one request per serial: {counters:?}"
    );
    assert_eq!(
        counters
            .get(vpp_broker::apple_sim::THROTTLED)
            .copied()
            .unwrap_or(0),
        0,
        "more than 15 requests within a second for one token: {counters:?}"
    );
}
