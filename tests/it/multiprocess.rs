//! Several `serve` processes on one database, configured like the Helm chart configures pods: no
//! over-allocation across replicas (A9 in docs/rules.md), a killed replica's work finished by the
//! others, one migration run for replicas starting together, graceful drain on SIGTERM.

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
use vpp_broker::db::schema::{assignments, jobs, subjects};

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
    // B serves only the `eligible` group when A runs out.
    let resp = http
        .patch(format!("{base}/v1/spaces/acme/accounts/{}", ids[1]))
        .bearer_auth(admin_token())
        .json(&json!({"distribution_list": [{"kind": "group", "value": "eligible"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
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
    eventually_within(
        timeout,
        "drained: (queued jobs, assignments in flight) both zero",
        async || {
            let queued: i64 = jobs::table.count().get_result(&mut conn).await.unwrap();
            let moving: i64 = assignments::table
                .filter(assignments::state.eq_any(["pending", "associating", "revoking"]))
                .count()
                .get_result(&mut conn)
                .await
                .unwrap();
            (queued, moving)
        },
        |in_flight| *in_flight == (0, 0),
    )
    .await;
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
    assert_eq!(granted, 400, "every license granted once, none lost");
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
