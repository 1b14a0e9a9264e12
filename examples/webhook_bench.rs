//! Webhook benchmark: `cargo run --release --example webhook_bench` (issue 15's webhook figures;
//! docs/benchmarks.md).
//!
//! Starts a local HTTP receiver in this process (actix, answering 204) and a `vpp-broker serve`
//! child process (the release binary next to this example) on a fresh database with
//! `VPP_WEBHOOK_ALLOW_PRIVATE=true`, creates one space with 3 endpoints on the receiver, then:
//!
//! 1. **burst**: appends 10,000 events (batches of 100 per transaction, each followed by
//!    `NOTIFY vpp_events` as the event writer does) as fast as it can, and waits until all
//!    30,000 deliveries arrived: deliveries/s (first commit to last arrival), commit→delivery
//!    p50/p99, serve's peak RSS;
//! 2. **trickle**: 200 events/s for 5 s (one event per transaction): commit→delivery p50/p99
//!    when the sender is idle between events.
//!
//! 3. **allocations with and without webhooks** (issue 15: "allocation throughput within 10 % of
//!    without webhooks, same run"): a second `serve` child (dispatcher and event sequencer
//!    included) on its own fresh database, with the Apple simulator in this process (one
//!    location owning 100 apps, 200 ms added to every Apple call) and one attached account.
//!    Closed-loop clients allocate over HTTP (each request a new device, one of the 100 apps):
//!    first `--alloc-warmup` seconds not counted (the service reaches its steady state: the
//!    dispatcher's Apple backlog builds up over the first seconds and the allocation rate
//!    falls to a plateau, whatever the webhooks), then eight segments of `--alloc-seconds / 4`
//!    each, alternately without any enabled endpoint and with 3 enabled endpoints on the local
//!    receiver subscribed to assignment events (order off, on, on, off, off, on, on, off, to
//!    cancel drift); allocations/s and p50/p99 of both modes, their ratio, and the deliveries
//!    that arrived during the segments with endpoints. Endpoints are switched with
//!    `PATCH {"enabled": …}` (disabling drops their queue) a second before each segment.
//!
//! Every message's signature is checked on arrival (HMAC-SHA256, the endpoint's secret).
//! Options: `--events N` (10000), `--endpoints N` (3), `--trickle-rate N` (200),
//! `--trickle-seconds N` (5), `--alloc-seconds N` per mode (20; 0 skips phase 3),
//! `--alloc-warmup N` (15), `--alloc-clients N` (16).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark program: any failure aborts the run with its message"
)]

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;
use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use serde_json::{Value, json};
use uuid::Uuid;
use vpp_broker::apple::types::ProductType;
use vpp_broker::apple_sim::{SeedAsset, SeedFile, SeedLocation, SimConfig, SimSettings, Simulator};
use vpp_broker::ledger::events::{self, NewEvent};

struct Received {
    /// (event id, endpoint index) → arrival.
    at: Mutex<HashMap<(Uuid, usize), Instant>>,
    count: AtomicU64,
    bad_signatures: AtomicU64,
    /// Signing keys per endpoint index.
    keys: Mutex<Vec<Vec<u8>>>,
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn start_receiver(state: Arc<Received>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::new(move || {
        let state = state.clone();
        App::new().route(
            "/hook/{n}",
            web::post().to(
                move |req: HttpRequest, path: web::Path<usize>, body: web::Bytes| {
                    let state = state.clone();
                    async move {
                        let now = Instant::now();
                        let n = path.into_inner();
                        let header = |name: &str| {
                            req.headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned()
                        };
                        let id = header("webhook-id");
                        let ts = header("webhook-timestamp");
                        let sig = header("webhook-signature");
                        let key = state
                            .keys
                            .lock()
                            .unwrap()
                            .get(n)
                            .cloned()
                            .unwrap_or_default();
                        let ts_num: i64 = ts.parse().unwrap_or(0);
                        let expected =
                            vpp_broker::webhooks::signing::sign(&key, &id, ts_num, &body);
                        if !sig.split(' ').any(|s| s == expected) {
                            state.bad_signatures.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Ok(id) = id.parse::<Uuid>() {
                            state.at.lock().unwrap().entry((id, n)).or_insert(now);
                        }
                        state.count.fetch_add(1, Ordering::Relaxed);
                        HttpResponse::NoContent().finish()
                    }
                },
            ),
        )
    })
    .workers(2)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    format!("http://{addr}")
}

/// Appends `n` events to the space in one transaction and notifies; returns their ids and the
/// commit instant.
async fn append(conn: &mut AsyncPgConnection, space: &str, n: usize) -> (Vec<Uuid>, Instant) {
    let new: Vec<NewEvent> = (0..n)
        .map(|i| NewEvent {
            space_id: space.to_owned(),
            id: Uuid::now_v7(),
            type_: "assignment.active".into(),
            occurred_at: Utc::now(),
            activity_id: None,
            data: json!({"assignment": Uuid::new_v4(), "state": "active", "version": i}),
        })
        .collect();
    let ids: Vec<Uuid> = new.iter().map(|e| e.id).collect();
    conn.transaction(async |c| {
        events::append(c, new).await?;
        c.batch_execute(&format!("NOTIFY vpp_events, '{space}'"))
            .await
    })
    .await
    .unwrap();
    (ids, Instant::now())
}

fn latencies(received: &Received, commits: &[(Uuid, Instant)], endpoints: usize) -> Vec<Duration> {
    let at = received.at.lock().unwrap();
    let mut out = Vec::with_capacity(commits.len() * endpoints);
    for (id, committed) in commits {
        for n in 0..endpoints {
            if let Some(t) = at.get(&(*id, n)) {
                out.push(t.saturating_duration_since(*committed));
            }
        }
    }
    out.sort();
    out
}

async fn wait_for(received: &Received, total: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while (received.at.lock().unwrap().len() as u64) < total {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

#[tokio::main]
async fn main() {
    let events_n = arg("--events", 10_000) as usize;
    let endpoints = arg("--endpoints", 3) as usize;
    let trickle_rate = arg("--trickle-rate", 200);
    let trickle_secs = arg("--trickle-seconds", 5);

    let (server, db_name, db_url) = common::fresh_database("webhook_bench").await;
    let received = Arc::new(Received {
        at: Mutex::new(HashMap::new()),
        count: AtomicU64::new(0),
        bad_signatures: AtomicU64::new(0),
        keys: Mutex::new(Vec::new()),
    });
    let receiver = start_receiver(received.clone());
    let http = common::http_client();
    let service = common::Service::start_with_env(
        &http,
        &db_url,
        "http://127.0.0.1:9/mdm/v2",
        &[
            ("VPP_WEBHOOK_ALLOW_PRIVATE", "true"),
            ("VPP_WORKERS", "0"),
            ("VPP_SYNC_WORKERS", "0"),
        ],
    )
    .await;
    let token = common::token();
    let space = "bench";
    common::create_space(&http, &service.base, &token, space).await;
    for n in 0..endpoints {
        let resp: Value = http
            .post(format!("{}/v1/spaces/{space}/webhooks", service.base))
            .bearer_auth(&token)
            .json(&json!({"url": format!("{receiver}/hook/{n}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let secret = resp["secret"].as_str().expect("secret");
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.trim_start_matches("whsec_"))
            .unwrap();
        received.keys.lock().unwrap().push(key);
    }
    let mut conn = AsyncPgConnection::establish(&db_url).await.unwrap();

    // 1. Burst.
    let started = Instant::now();
    let mut commits: Vec<(Uuid, Instant)> = Vec::with_capacity(events_n);
    let mut left = events_n;
    while left > 0 {
        let n = left.min(100);
        let (ids, at) = append(&mut conn, space, n).await;
        commits.extend(ids.into_iter().map(|id| (id, at)));
        left -= n;
    }
    let appended = started.elapsed();
    let total = (events_n * endpoints) as u64;
    let complete = wait_for(&received, total, Duration::from_secs(300)).await;
    let last = received
        .at
        .lock()
        .unwrap()
        .values()
        .max()
        .copied()
        .unwrap_or(started);
    let wall = last.saturating_duration_since(started);
    let burst = latencies(&received, &commits, endpoints);
    let (hwm, rss) = common::memory(service.pid());
    println!("webhook burst: {events_n} events × {endpoints} endpoints");
    println!("  appended in {:.2} s", appended.as_secs_f64());
    println!(
        "  delivered {} of {total} in {:.2} s: {:.0} deliveries/s{}",
        burst.len(),
        wall.as_secs_f64(),
        burst.len() as f64 / wall.as_secs_f64(),
        if complete { "" } else { " (INCOMPLETE)" }
    );
    println!(
        "  commit→delivery p50 {:.1} ms, p99 {:.1} ms",
        common::ms(common::percentile(&burst, 0.5)),
        common::ms(common::percentile(&burst, 0.99))
    );
    println!(
        "  serve RSS {:.1} MiB (peak {:.1} MiB)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );

    // 2. Trickle.
    let before = received.at.lock().unwrap().len() as u64;
    let mut trickle: Vec<(Uuid, Instant)> = Vec::new();
    let interval = Duration::from_secs_f64(1.0 / trickle_rate.max(1) as f64);
    let end = Instant::now() + Duration::from_secs(trickle_secs);
    let mut next = Instant::now();
    while Instant::now() < end {
        let (ids, at) = append(&mut conn, space, 1).await;
        trickle.extend(ids.into_iter().map(|id| (id, at)));
        next += interval;
        tokio::time::sleep_until(next.into()).await;
    }
    let want = before + (trickle.len() * endpoints) as u64;
    wait_for(&received, want, Duration::from_secs(60)).await;
    let lat = latencies(&received, &trickle, endpoints);
    let (hwm, _) = common::memory(service.pid());
    println!(
        "webhook trickle: {} events at {trickle_rate}/s: commit→delivery p50 {:.1} ms, p99 {:.1} ms; peak RSS {:.1} MiB",
        trickle.len(),
        common::ms(common::percentile(&lat, 0.5)),
        common::ms(common::percentile(&lat, 0.99)),
        hwm as f64 / 1024.0
    );
    println!(
        "requests received {} (duplicates {}), bad signatures {}",
        received.count.load(Ordering::Relaxed),
        received.count.load(Ordering::Relaxed) - received.at.lock().unwrap().len() as u64,
        received.bad_signatures.load(Ordering::Relaxed)
    );
    service.stop();
    drop(conn);
    common::drop_databases(&server, &[&db_name]).await;

    let alloc_secs = arg("--alloc-seconds", 20);
    let warmup = arg("--alloc-warmup", 15);
    if alloc_secs > 0 {
        let clients = arg("--alloc-clients", 16) as usize;
        allocations(&http, &received, &receiver, alloc_secs, warmup, clients).await;
    }
}

/// What is left to deliver at the end of a segment.
#[derive(diesel::QueryableByName)]
struct Backlog {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    queued: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    unsequenced: i64,
}

/// The apps of phase 3: `ALLOC_BASE + 0..ALLOC_ASSETS`.
const ALLOC_BASE: u64 = 600_000_000;
const ALLOC_ASSETS: u64 = 100;

fn alloc_pick(c: usize, n: usize) -> u64 {
    ALLOC_BASE + common::rand_index(c, n) % ALLOC_ASSETS
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Phase 3 (see the module doc).
async fn allocations(
    http: &reqwest::Client,
    received: &Received,
    receiver: &str,
    alloc_secs: u64,
    warmup: u64,
    clients: usize,
) {
    let (server, db_name, db_url) = common::fresh_database("webhook_bench_alloc").await;
    let assets: Vec<SeedAsset> = (0..ALLOC_ASSETS)
        .map(|i| SeedAsset {
            adam_id: (ALLOC_BASE + i).to_string(),
            product_type: Some(ProductType::App),
            total_count: 1_000_000,
            ..Default::default()
        })
        .collect();
    let sim = Simulator::start(SimConfig {
        workers: 1,
        settings: SimSettings {
            event_delay_ms: 100,
            ..SimSettings::default()
        },
        seed: Some(SeedFile {
            settings: None,
            locations: vec![SeedLocation {
                u_id: Some("4000000001".into()),
                name: "Bench Library".into(),
                assets,
                ..Default::default()
            }],
        }),
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    common::apple_latency(&sim, 200).await;
    let service = common::Service::start_with_env(
        http,
        &db_url,
        &sim.base_url(),
        &[
            ("VPP_WEBHOOK_ALLOW_PRIVATE", "true"),
            ("VPP_SYNC_WORKERS", "0"),
        ],
    )
    .await;
    let base = service.base.clone();
    let token = common::token();
    let space = "alloc";
    common::create_space(http, &base, &token, space).await;
    let status = http
        .post(format!("{base}/v1/spaces/{space}/accounts"))
        .bearer_auth(&token)
        .json(&json!({"name": "Bench", "stoken": sim.seeded()[0].s_token}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 201, "attach the account");

    // 3 endpoints on the receiver, subscribed to assignment events, created disabled.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let n = received.keys.lock().unwrap().len();
        let resp: Value = http
            .post(format!("{base}/v1/spaces/{space}/webhooks"))
            .bearer_auth(&token)
            .json(&json!({
                "url": format!("{receiver}/hook/{n}"),
                "event_types": ["assignment.allocated", "assignment.active",
                                "assignment.failed", "assignment.revoked"],
                "enabled": false,
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let secret = resp["secret"].as_str().expect("secret");
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.trim_start_matches("whsec_"))
            .unwrap();
        received.keys.lock().unwrap().push(key);
        ids.push(resp["id"].as_str().expect("id").to_owned());
    }
    let switch = async |enabled: bool| {
        for id in &ids {
            let status = http
                .patch(format!("{base}/v1/spaces/{space}/webhooks/{id}"))
                .bearer_auth(&token)
                .json(&json!({ "enabled": enabled }))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 200, "switch an endpoint");
        }
        // In-flight deliveries end, the dispatcher's backlog moves on.
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    println!(
        "allocations with and without webhooks: {clients} clients, {warmup} s warm-up, 8 segments of {:.1} s, load average before {}",
        alloc_secs as f64 / 4.0,
        load_average()
    );
    // Warm-up (not counted): connections, caches, and the dispatcher's Apple backlog, which
    // builds up over the first seconds (the allocation rate falls to a plateau).
    let (warm, warm_secs) = common::storm_for(
        http,
        &base,
        &token,
        space,
        clients,
        Duration::from_secs(warmup),
        "warm",
        alloc_pick,
    )
    .await;
    // What autovacuum's ANALYZE does within its first minute in a deployment (naptime 1 min):
    // without it, the plans serve's connections cached while the tables were empty (a
    // sequential scan of a table of a few rows) stay in use while the ledger grows by
    // thousands of rows a second, and the later segments measure those plans.
    let mut conn = AsyncPgConnection::establish(&db_url).await.unwrap();
    conn.batch_execute("ANALYZE").await.unwrap();
    println!(
        "  warm-up: {} allocations in {:.2} s = {:.0}/s",
        warm.len(),
        warm_secs.as_secs_f64(),
        warm.len() as f64 / warm_secs.as_secs_f64().max(1e-9)
    );
    let segment = Duration::from_secs_f64(alloc_secs as f64 / 4.0);
    // (latencies, seconds, deliveries, CPU seconds of serve / this process / the rest) per
    // mode: [without, with].
    let mut modes: [(Vec<Duration>, f64, u64, [f64; 3]); 2] = Default::default();
    let serve_pid = service.pid();
    let order = [false, true, true, false, false, true, true, false];
    for (i, on) in order.into_iter().enumerate() {
        switch(on).await;
        let before = received.count.load(Ordering::Relaxed);
        let ticks = (
            common::cpu_ticks(serve_pid),
            common::cpu_ticks(std::process::id()),
            common::machine_ticks(),
        );
        let (lat, elapsed) = common::storm_for(
            http,
            &base,
            &token,
            space,
            clients,
            segment,
            &format!("s{i}"),
            alloc_pick,
        )
        .await;
        let arrived = received.count.load(Ordering::Relaxed) - before;
        // Whether the pipeline kept up: deliveries still queued, and activity rows the event
        // sequencer has not turned into events yet (read before the switch drops the queue).
        let backlog: Backlog = diesel_async::RunQueryDsl::get_result(
            diesel::sql_query(
                "SELECT (SELECT count(*) FROM webhook_deliveries) AS queued,
                        (SELECT count(*) FROM activity_log l, event_watermark w
                          WHERE l.txid IS NOT NULL AND (l.txid, l.id) > (w.txid, w.activity_id))
                          AS unsequenced",
            ),
            &mut conn,
        )
        .await
        .unwrap();
        // CPU seconds of the segment: serve, this process (clients, receiver, simulator) and
        // the rest of the machine (PostgreSQL, mostly).
        let serve = common::cpu_ticks(serve_pid).saturating_sub(ticks.0) as f64 / 100.0;
        let own = common::cpu_ticks(std::process::id()).saturating_sub(ticks.1) as f64 / 100.0;
        let rest = common::machine_ticks().saturating_sub(ticks.2) as f64 / 100.0 - serve - own;
        println!(
            "  segment {} ({}): {} allocations in {:.2} s = {:.0}/s; deliveries arrived {arrived}; \
             CPU s serve {serve:.2}, benchmark {own:.2}, rest {rest:.2}; at its end {} deliveries \
             queued, {} activity rows not yet events",
            i + 1,
            if on { "3 endpoints" } else { "no endpoint" },
            lat.len(),
            elapsed.as_secs_f64(),
            lat.len() as f64 / elapsed.as_secs_f64(),
            backlog.queued,
            backlog.unsequenced
        );
        let mode = &mut modes[usize::from(on)];
        mode.0.extend(lat);
        mode.1 += elapsed.as_secs_f64();
        mode.2 += arrived;
        for (total, add) in mode.3.iter_mut().zip([serve, own, rest]) {
            *total += add;
        }
    }
    switch(false).await;
    let mut rate = [0.0f64; 2];
    for (on, (lat, secs, arrived, cpu)) in modes.iter_mut().enumerate() {
        lat.sort();
        rate[on] = lat.len() as f64 / *secs;
        let per = |s: f64| s * 1000.0 / lat.len().max(1) as f64;
        println!(
            "  {}: {:.0} allocations/s (p50 {:.1} ms, p99 {:.1} ms; CPU ms per allocation: \
             serve {:.2}, benchmark {:.2}, rest {:.2}){}",
            if on == 1 {
                "with 3 endpoints"
            } else {
                "without webhooks"
            },
            rate[on],
            common::ms(common::percentile(lat, 0.5)),
            common::ms(common::percentile(lat, 0.99)),
            per(cpu[0]),
            per(cpu[1]),
            per(cpu[2]),
            if on == 1 {
                format!(
                    ", deliveries arrived {arrived} ({:.0}/s)",
                    *arrived as f64 / *secs
                )
            } else {
                String::new()
            }
        );
    }
    println!(
        "  ratio with / without: {:.3}; load average after {}",
        rate[1] / rate[0],
        load_average()
    );
    service.stop();
    drop(sim);
    common::drop_databases(&server, &[&db_name]).await;
}
