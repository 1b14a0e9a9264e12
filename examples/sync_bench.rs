//! Sync benchmark: `cargo run --release --example sync_bench` (docs/benchmarks.md, Sync).
//!
//! Starts the Apple simulator in this process (on threads of its own in Linux's idle scheduling
//! class: Apple's CPU is not the service's) with one location owning 1,000 apps and 100,000
//! device assignments (10,000 devices holding 10 apps each) plus one app with no assignment for
//! the allocation load, Apple's page size (500) and 200 ms added to every Apple call; then a
//! `vpp-broker serve` child process (the release binary next to this example) on a fresh
//! database, and attaches the account. It measures, all in the same run:
//!
//! 1. the first full sync (queued by the attach: it inserts the 100,000 mirror rows);
//! 2. a manual full sync (`POST …/sync`, polled until it ends): Apple requests made against the
//!    minimum (pages of assignments + pages of assets + the client config), wall time against the
//!    bound Apple's 15 requests/s sets (5 parallel pages at 200 ms would allow 25/s), the serve
//!    process's CPU seconds, PostgreSQL's CPU seconds and serve's peak RSS;
//! 3. an incremental sync with nothing changed (requests; target ≤ 3), then one after another
//!    MDM added and removed assignments;
//! 4. allocation latency: 20 allocations/s (open loop) for 30 s on the free app without a sync,
//!    then the same while full syncs run back to back (each polled every 500 ms, so up to half a
//!    second passes between two); the p99 of both and their ratio, and where the slowest 1 %
//!    during syncs started (an apply, a read, between runs);
//! 5. the sync scheduler's cost with 3,000 idle accounts: the scheduler's statement, timed and
//!    its PostgreSQL CPU measured, per cycle and per account.
//!
//! CPU: the serve process's utime + stime from `/proc/<pid>/stat`; PostgreSQL's is the sum over
//! the backends connected to the benchmark's database (`pg_stat_activity`), sampled every
//! 200 ms so that a backend ending mid-phase is counted up to its last sample
//! (`pg_stat_statements` is not loaded on the benchmark machine; background processes such as
//! the WAL writer serve every database and are not counted). Peak RSS is `VmHWM`, reset
//! (`/proc/<pid>/clear_refs` = 5) before each phase so each phase shows its own peak.
//!
//! Options: `--assignments N` (100000), `--assets N` (1000), `--latency-ms N` (200),
//! `--page-size N` (500), `--alloc-rate N` per second (20), `--alloc-seconds N` (30),
//! `--idle-accounts N` (3000), `--scheduler-cycles N` (50).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark program: any failure aborts the run with its message"
)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Integer, Nullable, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use serde_json::{Value, json};
use vpp_broker::apple::types::PricingParam;
use vpp_broker::apple_sim::{
    GeneratedAssignments, NewAssignments, SeedAsset, SeedAssignment, SeedFile, SeedLocation,
    SimConfig, SimHandle, SimSettings, Simulator,
};
use vpp_broker::ledger::sync_runs::{self, Schedule};

mod common;
use common::{
    Service, apple_latency, create_space, drop_databases, fresh_database, http_client, memory, ms,
    percentile, token,
};

/// The apps with assignments are `ASSET_BASE + k`; allocations go to `FREE_APP`.
const ASSET_BASE: u64 = 600_000_000;
const FREE_APP: u64 = 699_999_999;
/// Apple's rate per token, which the service's pacer keeps to.
const APPLE_RATE: f64 = 15.0;

struct Args {
    assignments: usize,
    assets: usize,
    latency_ms: u64,
    page_size: usize,
    alloc_rate: u64,
    alloc_seconds: u64,
    idle_accounts: usize,
    scheduler_cycles: usize,
}

fn args() -> Args {
    let mut a = Args {
        assignments: 100_000,
        assets: 1_000,
        latency_ms: 200,
        page_size: 500,
        alloc_rate: 20,
        alloc_seconds: 30,
        idle_accounts: 3_000,
        scheduler_cycles: 50,
    };
    let argv: Vec<String> = std::env::args().collect();
    for w in argv.windows(2) {
        let n = || w[1].parse::<usize>().expect("a number");
        match w[0].as_str() {
            "--assignments" => a.assignments = n(),
            "--assets" => a.assets = n(),
            "--latency-ms" => a.latency_ms = n() as u64,
            "--page-size" => a.page_size = n(),
            "--alloc-rate" => a.alloc_rate = n() as u64,
            "--alloc-seconds" => a.alloc_seconds = n() as u64,
            "--idle-accounts" => a.idle_accounts = n(),
            "--scheduler-cycles" => a.scheduler_cycles = n(),
            _ => {}
        }
    }
    a
}

fn seconds(ticks: u64) -> f64 {
    ticks as f64 / 100.0
}

/// Resets a process's `VmHWM` to its current RSS.
fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

#[derive(diesel::QueryableByName)]
struct Pid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

/// The CPU ticks of every backend of one database, sampled in the background: the last value
/// seen per backend pid, so a backend that ends keeps its last sample.
#[derive(Clone)]
struct PgCpu {
    seen: Arc<Mutex<HashMap<u32, u64>>>,
}

impl PgCpu {
    async fn start(db_url: &str, db_name: &str) -> PgCpu {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let mut conn = AsyncPgConnection::establish(db_url).await.expect("db");
        let query = format!(
            "SELECT pid FROM pg_stat_activity WHERE datname = '{db_name}' AND pid <> pg_backend_pid()"
        );
        let cpu = PgCpu { seen: seen.clone() };
        tokio::spawn(async move {
            loop {
                let pids: Vec<Pid> = diesel::sql_query(&query)
                    .load(&mut conn)
                    .await
                    .unwrap_or_default();
                {
                    let mut seen = seen.lock().unwrap();
                    for p in pids {
                        let ticks = common::cpu_ticks(p.pid as u32);
                        if ticks > 0 {
                            seen.insert(p.pid as u32, ticks);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        cpu
    }

    /// Every backend's ticks now (after one more sample).
    async fn snapshot(&self) -> HashMap<u32, u64> {
        tokio::time::sleep(Duration::from_millis(450)).await;
        self.seen.lock().unwrap().clone()
    }

    fn since(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> u64 {
        after
            .iter()
            .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
            .sum()
    }
}

/// The serve process's and PostgreSQL's CPU over a phase.
struct Meter {
    serve_pid: u32,
    pg: PgCpu,
    serve_before: u64,
    pg_before: HashMap<u32, u64>,
}

impl Meter {
    async fn start(serve_pid: u32, pg: &PgCpu) -> Meter {
        reset_peak_rss(serve_pid);
        Meter {
            serve_pid,
            pg: pg.clone(),
            serve_before: common::cpu_ticks(serve_pid),
            pg_before: pg.snapshot().await,
        }
    }

    /// (serve CPU s, PostgreSQL CPU s, serve peak RSS MiB) since the start.
    async fn stop(&self) -> (f64, f64, f64) {
        let serve = common::cpu_ticks(self.serve_pid).saturating_sub(self.serve_before);
        let pg = PgCpu::since(&self.pg_before, &self.pg.snapshot().await);
        let (peak_kib, _) = memory(self.serve_pid);
        (seconds(serve), seconds(pg), peak_kib as f64 / 1024.0)
    }
}

#[derive(diesel::QueryableByName, Debug, Clone)]
struct RunRow {
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Integer)]
    requests: i32,
    #[diesel(sql_type = Integer)]
    pages_read: i32,
    #[diesel(sql_type = Nullable<BigInt>)]
    run_ms: Option<i64>,
    #[diesel(sql_type = Text)]
    stats: String,
    #[diesel(sql_type = Nullable<Text>)]
    error: Option<String>,
}

const RUN_COLUMNS: &str = "kind, state, requests, pages_read,
    (extract(epoch FROM finished_at - started_at) * 1000)::bigint AS run_ms,
    stats::text, error::text";

/// The account's latest run (or `id`'s).
async fn run_row(conn: &mut AsyncPgConnection, account: &str, id: Option<&str>) -> Option<RunRow> {
    let filter = match id {
        Some(id) => format!("id = '{id}'"),
        None => format!("account_id = '{account}'"),
    };
    diesel::sql_query(format!(
        "SELECT {RUN_COLUMNS} FROM sync_runs WHERE {filter} ORDER BY requested_at DESC LIMIT 1"
    ))
    .get_result(conn)
    .await
    .ok()
}

/// Waits until the run ends; its row and the wall time from `since`.
async fn finished(
    conn: &mut AsyncPgConnection,
    account: &str,
    id: Option<&str>,
    since: Instant,
) -> (RunRow, Duration) {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if let Some(row) = run_row(conn, account, id).await
            && matches!(row.state.as_str(), "succeeded" | "failed")
        {
            let took = since.elapsed();
            assert_eq!(row.state, "succeeded", "the sync failed: {:?}", row.error);
            return (row, took);
        }
        assert!(Instant::now() < deadline, "no sync ended in 15 minutes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `POST …/sync` (a manual, full sync): the run's address (`Location`) from the answer.
async fn request_sync(http: &reqwest::Client, base: &str, token: &str, account: &str) -> String {
    let resp = http
        .post(format!("{base}/v1/spaces/bench/accounts/{account}/sync"))
        .bearer_auth(token)
        .send()
        .await
        .expect("sync request");
    let status = resp.status();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 202, "sync refused: {body}");
    location.unwrap_or_else(|| panic!("no Location in the answer: {body}"))
}

/// Polls the run (`GET` its address every `every`) until it ends: the run and the wall time
/// from `since`.
async fn polled(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    location: &str,
    since: Instant,
    every: Duration,
) -> (Value, Duration) {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let run: Value = http
            .get(format!("{base}{location}"))
            .bearer_auth(token)
            .send()
            .await
            .expect("run")
            .json()
            .await
            .expect("run JSON");
        match run["state"].as_str() {
            Some("succeeded") => return (run, since.elapsed()),
            Some("failed") => panic!("the sync failed: {run}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "no sync ended in 15 minutes");
        tokio::time::sleep(every).await;
    }
}

/// Milliseconds from the run's start to its end, as the run reports them.
fn run_ms(run: &Value) -> i64 {
    let at = |k: &str| {
        run[k]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    match (at("started_at"), at("finished_at")) {
        (Some(a), Some(b)) => (b - a).num_milliseconds(),
        _ => -1,
    }
}

/// Apple requests since the last reset, by `METHOD /path`, and their sum.
async fn apple_requests(sim: &SimHandle) -> (BTreeMap<String, u64>, u64) {
    let counters = sim.counters().await.expect("counters");
    let total = counters.values().sum();
    (counters, total)
}

/// Starts the simulator on threads of its own in the idle scheduling class (`SCHED_IDLE`), its
/// own runtime included. Apple's CPU is not the service's: on this 2-core machine the
/// simulator's page listings (each a scan of the 100,000 assignments; about as much CPU as the
/// service's sync) would otherwise take cores from the service and PostgreSQL and count as the
/// sync's cost to allocations. At nice 10 (until 2026-12-08) the simulator still held a core
/// for a scheduler time slice when an allocation woke up; an idle-class thread gives way at
/// once. Linux keeps the scheduling class per thread, and the threads the simulator starts
/// (its HTTP workers) inherit it.
fn simulator_apart(config: SimConfig) -> SimHandle {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: a plain system call on this thread (pid 0) with a parameter it only reads.
        let lowered = unsafe {
            let param = libc::sched_param { sched_priority: 0 };
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &param)
        };
        assert_eq!(lowered, 0, "moving the simulator thread to the idle class");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("simulator runtime");
        let sim = runtime
            .block_on(Simulator::start(config))
            .expect("simulator");
        tx.send(sim).expect("simulator handle");
        runtime.block_on(std::future::pending::<()>());
    });
    rx.recv().expect("simulator thread")
}

/// Open-loop allocations: one every `1/rate` s for `secs` s, each for a new device; every
/// latency. The load runs on a runtime of its own, on its own thread: the benchmark's own
/// runtime (sync polling, CPU sampling) would otherwise delay the polling of the timed
/// requests and count as the service's latency.
/// One allocation's start (wall clock) and latency.
type Sample = (chrono::DateTime<chrono::Utc>, Duration);

async fn allocations(base: &str, token: &str, tag: &str, rate: u64, secs: u64) -> Vec<Sample> {
    let (base, token, tag) = (base.to_owned(), token.to_owned(), tag.to_owned());
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("load runtime");
        // A client of that runtime: a client's connections belong to the runtime that made them.
        let http = reqwest::Client::new();
        let latencies = runtime.block_on(timed_allocations(&http, &base, &token, &tag, rate, secs));
        let _ = tx.send(latencies);
    });
    rx.await.expect("load thread")
}

async fn timed_allocations(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    tag: &str,
    rate: u64,
    secs: u64,
) -> Vec<Sample> {
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    for n in 0..rate * secs {
        ticker.tick().await;
        let http = http.clone();
        let url = format!("{base}/v1/spaces/bench/assignments");
        let auth = format!("Bearer {token}");
        let body = json!({
            "asset": {"adam_id": FREE_APP.to_string()},
            "subject": {"kind": "device", "id": format!("{tag}-{n}")},
        });
        tasks.push(tokio::spawn(async move {
            let at = chrono::Utc::now();
            let t = Instant::now();
            let resp = http
                .post(&url)
                .header("authorization", &auth)
                .json(&body)
                .send()
                .await
                .expect("request");
            let status = resp.status();
            let _ = resp.bytes().await;
            assert_eq!(status, 201, "allocation refused");
            (at, t.elapsed())
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.push(t.await.expect("allocation"));
    }
    samples
}

/// The sorted latencies of samples.
fn latencies(samples: &[Sample]) -> Vec<Duration> {
    let mut l: Vec<Duration> = samples.iter().map(|s| s.1).collect();
    l.sort();
    l
}

/// Where the slowest 1 % of the samples taken during syncs started: in a run's apply (from
/// `finished_at - stats.apply_ms` to `finished_at`, widened by 50 ms either side), while a run
/// read Apple, or between runs. Tells which part of a sync costs the allocations their p99.
fn attribute(samples: &[Sample], runs: &[Value]) -> String {
    let at = |run: &Value, k: &str| {
        run[k]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    let margin = chrono::Duration::milliseconds(50);
    let windows: Vec<_> = runs
        .iter()
        .filter_map(|r| {
            let (start, end) = (at(r, "started_at")?, at(r, "finished_at")?);
            let apply =
                chrono::Duration::milliseconds(r["stats"]["apply_ms"].as_i64().unwrap_or(0));
            Some((start, end - apply, end))
        })
        .collect();
    let mut slow: Vec<&Sample> = samples.iter().collect();
    slow.sort_by_key(|s| std::cmp::Reverse(s.1));
    slow.truncate((samples.len() / 100).max(1));
    let (mut applying, mut reading, mut between) = (0, 0, 0);
    for (t, _) in &slow {
        if windows
            .iter()
            .any(|(_, from, to)| *t >= *from - margin && *t <= *to + margin)
        {
            applying += 1;
        } else if windows.iter().any(|(start, _, end)| t >= start && t <= end) {
            reading += 1;
        } else {
            between += 1;
        }
    }
    // Per run: the apply, and of it the mirror's and the counts' transactions (ms).
    let apply_ms: Vec<(i64, i64, i64)> = runs
        .iter()
        .map(|r| {
            let ms = |k: &str| r["stats"][k].as_i64().unwrap_or(-1);
            (ms("apply_ms"), ms("mirror_ms"), ms("counts_ms"))
        })
        .collect();
    format!(
        "the {} slowest allocations during syncs started: {applying} in an apply (± 50 ms), \
         {reading} while reading Apple, {between} between runs; per run (apply, mirror, counts) ms {apply_ms:?}",
        slow.len()
    )
}

fn location(args: &Args) -> SeedLocation {
    let mut assets: Vec<SeedAsset> = (0..args.assets as u64)
        .map(|k| SeedAsset {
            adam_id: (ASSET_BASE + k).to_string(),
            total_count: (args.assignments / args.assets.max(1)) as i64 * 3 / 2 + 10,
            ..Default::default()
        })
        .collect();
    assets.push(SeedAsset {
        adam_id: FREE_APP.to_string(),
        total_count: 1_000_000,
        ..Default::default()
    });
    SeedLocation {
        u_id: Some("4100000001".into()),
        name: "Sync Bench District".into(),
        assets,
        ..Default::default()
    }
}

/// The assignments of the location: `assignments / assets` per app, to serials shared by ten
/// apps each (10,000 devices holding 10 apps with the defaults).
fn generated(args: &Args) -> NewAssignments {
    let per_asset = args.assignments / args.assets.max(1);
    NewAssignments {
        assignments: Vec::new(),
        generated_assignments: (0..args.assets)
            .map(|k| GeneratedAssignments {
                adam_id: (ASSET_BASE + k as u64).to_string(),
                pricing_param: PricingParam::Stdq,
                count: per_asset,
                serial_prefix: format!("B{:04}-", k % (args.assets / 10).max(1)),
            })
            .collect(),
    }
}

/// Another MDM's work between two syncs: 50 new assignments and 50 removed.
fn other_mdm(first_asset: u64) -> (NewAssignments, NewAssignments) {
    let list = |prefix: &str, asset: u64| NewAssignments {
        assignments: (0..50)
            .map(|i| SeedAssignment {
                adam_id: asset.to_string(),
                serial_number: Some(format!("{prefix}{i:06}")),
                ..Default::default()
            })
            .collect(),
        generated_assignments: Vec::new(),
    };
    (
        list("OTHER-MDM-", first_asset),
        list(&format!("B{:04}-", 1), ASSET_BASE + 1),
    )
}

/// The minimum Apple requests of a full sync: every page of assignments and assets, the
/// client config (no user licenses: no `/users`).
fn minimum_full(assignments: usize, assets: usize, page: usize) -> u64 {
    (assignments.div_ceil(page).max(1) + assets.div_ceil(page).max(1) + 1) as u64
}

/// Inserts `n` idle accounts (usable, synced a minute ago) in space `idle`, as SQL.
async fn insert_idle_accounts(conn: &mut AsyncPgConnection, n: usize) {
    conn.batch_execute(&format!(
        "INSERT INTO spaces (id, name) VALUES ('idle', 'Idle') ON CONFLICT DO NOTHING;
         INSERT INTO accounts (id, space_id, name, priority, location_uid, token_ciphertext,
                               token_nonce, token_key_id, token_expires_at, last_full_sync_at,
                               last_incremental_sync_at, last_sync_attempt_at,
                               assignments_version_id, assets_version_id)
         SELECT gen_random_uuid(), 'idle', 'Idle ' || i, i, (5000000000 + i)::text, 'x',
                '123456789012', 'k', now() + interval '1 year', now() - interval '1 minute',
                now() - interval '1 minute', now() - interval '1 minute', 'v', 'v'
           FROM generate_series(1, {n}) AS i;
         ANALYZE accounts;"
    ))
    .await
    .expect("idle accounts");
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn count(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
    let c: Count = diesel::sql_query(sql).get_result(conn).await.expect(sql);
    c.n
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    let (server, db_name, db_url) = fresh_database("vpp_sync_bench").await;
    let mut conn = AsyncPgConnection::establish(&db_url).await.expect("db");
    let pg = PgCpu::start(&db_url, &db_name).await;

    // Apple: the location, its 100,000 assignments, Apple's page size, 200 ms per call.
    let sim = simulator_apart(SimConfig {
        workers: 2,
        settings: SimSettings {
            page_size: args.page_size,
            event_delay_ms: 100,
            ..SimSettings::default()
        },
        seed: Some(SeedFile {
            settings: None,
            locations: vec![location(&args)],
        }),
        ..SimConfig::default()
    });
    let u_id = sim.seeded()[0].u_id.clone();
    let t = Instant::now();
    sim.add_assignments(&u_id, &generated(&args))
        .await
        .expect("assignments");
    println!(
        "simulator: {} assignments over {} apps seeded in {:.2} s; page size {}, latency {} ms",
        args.assignments,
        args.assets,
        t.elapsed().as_secs_f64(),
        args.page_size,
        args.latency_ms
    );
    apple_latency(&sim, args.latency_ms).await;

    // The service: one sync worker, no scheduled sync during the run.
    let http = http_client();
    let service = Service::start_with_env(
        &http,
        &db_url,
        &sim.base_url(),
        &[
            ("VPP_SYNC_WORKERS", "1"),
            ("VPP_SYNC_INCREMENTAL_MINUTES", "600"),
            ("VPP_SYNC_FULL_HOURS", "24"),
            ("VPP_SYNC_SCHEDULE_SECS", "3600"),
        ],
    )
    .await;
    let base = service.base.clone();
    let token = token();
    create_space(&http, &base, &token, "bench").await;
    let assets_total = args.assets + 1;
    let minimum = minimum_full(args.assignments, assets_total, args.page_size);
    let bound = Duration::from_secs_f64(minimum as f64 / APPLE_RATE);

    // 1. The first full sync: queued by the attach.
    sim.reset_counters().await.unwrap();
    let meter = Meter::start(service.pid(), &pg).await;
    let started = Instant::now();
    let account: Value = http
        .post(format!("{base}/v1/spaces/bench/accounts"))
        .bearer_auth(&token)
        .json(&json!({"name": "Bench", "stoken": sim.seeded()[0].s_token}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let account = account["id"].as_str().expect("account").to_owned();
    let (first, first_wall) = finished(&mut conn, &account, None, started).await;
    let (first_serve, first_pg, first_peak) = meter.stop().await;
    let (_, first_requests) = apple_requests(&sim).await;
    let mirror = count(&mut conn, "SELECT count(*) AS n FROM apple_assignments").await;
    println!(
        "first full sync (attach): {first_requests} Apple requests (attach included; the run: \
         {} requests, {} pages, {} ms from start to end), {:.1} s from the attach, serve \
         {first_serve:.2} s CPU, PostgreSQL {first_pg:.2} s CPU, peak RSS {first_peak:.1} MiB, \
         mirror rows {mirror}",
        first.requests,
        first.pages_read,
        first.run_ms.unwrap_or(-1),
        first_wall.as_secs_f64()
    );
    assert_eq!(first.kind, "full");
    assert_eq!(
        mirror as usize, args.assignments,
        "the mirror holds every assignment"
    );

    // 2. A manual full sync.
    sim.reset_counters().await.unwrap();
    let meter = Meter::start(service.pid(), &pg).await;
    let started = Instant::now();
    let run = request_sync(&http, &base, &token, &account).await;
    let (full, full_wall) = polled(
        &http,
        &base,
        &token,
        &run,
        started,
        Duration::from_millis(25),
    )
    .await;
    let (full_serve, full_pg, full_peak) = meter.stop().await;
    let (full_counters, full_requests) = apple_requests(&sim).await;
    println!(
        "manual full sync: {full_requests} Apple requests (minimum {minimum}), {:.2} s \
         (bound {:.2} s, ratio {:.2}), serve {full_serve:.2} s CPU, PostgreSQL {full_pg:.2} s CPU, \
         peak RSS {full_peak:.1} MiB; {full_counters:?}; the run: {} requests, {} pages, \
         {} ms from start to end, stats {}",
        full_wall.as_secs_f64(),
        bound.as_secs_f64(),
        full_wall.as_secs_f64() / bound.as_secs_f64(),
        full["requests"],
        full["pages_read"],
        run_ms(&full),
        full["stats"]
    );

    // 3. Incremental syncs: nothing changed, then another MDM's work. Queued as the scheduler
    // queues them (a run and its job in one transaction).
    let incremental = async |conn: &mut AsyncPgConnection, sim: &SimHandle| {
        sim.reset_counters().await.unwrap();
        let run = uuid::Uuid::now_v7();
        let started = Instant::now();
        conn.batch_execute(&format!(
            "BEGIN;
             INSERT INTO sync_runs (id, space_id, account_id, kind, trigger, requested_by)
             VALUES ('{run}', 'bench', '{account}', 'incremental', 'schedule', 'bench');
             INSERT INTO jobs (kind, account_id, payload)
             VALUES ('sync', '{account}', '{{\"run_id\": \"{run}\"}}');
             COMMIT;"
        ))
        .await
        .expect("queue an incremental sync");
        let (row, wall) = finished(conn, &account, Some(&run.to_string()), started).await;
        let (counters, total) = apple_requests(sim).await;
        (row, wall, counters, total)
    };
    let (quiet, quiet_wall, quiet_counters, quiet_requests) = incremental(&mut conn, &sim).await;
    println!(
        "incremental sync, nothing changed: {quiet_requests} Apple requests (target <= 3), \
         {:.2} s ({} ms from start to end); {quiet_counters:?}; kind {}",
        quiet_wall.as_secs_f64(),
        quiet.run_ms.unwrap_or(-1),
        quiet.kind
    );
    let (added, removed) = other_mdm(ASSET_BASE);
    sim.add_assignments(&u_id, &added).await.unwrap();
    let gone = sim.remove_assignments(&u_id, &removed).await.unwrap();
    let (changed, changed_wall, changed_counters, changed_requests) =
        incremental(&mut conn, &sim).await;
    println!(
        "incremental sync after another MDM added 50 and removed {gone}: {changed_requests} \
         Apple requests, {:.2} s; {changed_counters:?}; stats {}",
        changed_wall.as_secs_f64(),
        changed.stats
    );

    // 4. Allocation latency without and with a full sync running.
    println!(
        "allocations: {} per second for {} s, without a sync ...",
        args.alloc_rate, args.alloc_seconds
    );
    let quiet_latencies =
        latencies(&allocations(&base, &token, "quiet", args.alloc_rate, args.alloc_seconds).await);
    println!("... and while full syncs run back to back");
    let syncing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let syncs = {
        let (http, base, token, account) =
            (http.clone(), base.clone(), token.clone(), account.clone());
        let syncing = syncing.clone();
        tokio::spawn(async move {
            let mut runs = Vec::new();
            while std::sync::atomic::AtomicBool::load(&syncing, std::sync::atomic::Ordering::SeqCst)
            {
                let started = Instant::now();
                let run = request_sync(&http, &base, &token, &account).await;
                // Polled as a caller would (every half second), not every 25 ms: forty
                // authenticated requests a second would be load only this phase has.
                let (run, wall) = polled(
                    &http,
                    &base,
                    &token,
                    &run,
                    started,
                    Duration::from_millis(500),
                )
                .await;
                runs.push((run, wall));
            }
            runs
        })
    };
    // Let the first sync pass page 0 before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy_samples =
        allocations(&base, &token, "busy", args.alloc_rate, args.alloc_seconds).await;
    let busy_latencies = latencies(&busy_samples);
    syncing.store(false, std::sync::atomic::Ordering::SeqCst);
    let (sync_runs, sync_walls): (Vec<Value>, Vec<Duration>) =
        syncs.await.expect("syncs").into_iter().unzip();
    println!("{}", attribute(&busy_samples, &sync_runs));
    let (quiet_p50, quiet_p99) = (
        percentile(&quiet_latencies, 0.5),
        percentile(&quiet_latencies, 0.99),
    );
    let (busy_p50, busy_p99) = (
        percentile(&busy_latencies, 0.5),
        percentile(&busy_latencies, 0.99),
    );
    println!(
        "allocation p50/p99 without a sync {:.1}/{:.1} ms, during {} full syncs ({:?}) \
         {:.1}/{:.1} ms: p99 ratio {:.2} (target <= 1.25)",
        ms(quiet_p50),
        ms(quiet_p99),
        sync_walls.len(),
        sync_walls
            .iter()
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>(),
        ms(busy_p50),
        ms(busy_p99),
        ms(busy_p99) / ms(quiet_p99)
    );
    service.stop();

    // 5. The scheduler with idle accounts (the service stopped: nothing else runs).
    insert_idle_accounts(&mut conn, args.idle_accounts).await;
    let (sched_wall, sched_cpu, sched_queued) =
        scheduler_cost(&db_url, args.scheduler_cycles).await;
    let accounts = count(&mut conn, "SELECT count(*) AS n FROM accounts").await;
    println!(
        "scheduler, {accounts} accounts ({} idle), {} cycles: {:.2} ms per cycle, PostgreSQL CPU \
         {:.3} ms per cycle = {:.5} ms per account (target <= 1); runs queued {sched_queued}",
        args.idle_accounts,
        args.scheduler_cycles,
        ms(sched_wall),
        sched_cpu * 1000.0,
        sched_cpu * 1000.0 / accounts as f64
    );

    println!();
    println!("| measure | figure | target |");
    println!("|---|---|---|");
    println!("| full sync: Apple requests | {full_requests} | the minimum, {minimum} |");
    println!(
        "| full sync: wall time (POST to seen succeeded; the run's own start to end) | {:.2} s ({:.2} s) | <= 1.1 x {:.2} s = {:.2} s |",
        full_wall.as_secs_f64(),
        run_ms(&full) as f64 / 1000.0,
        bound.as_secs_f64(),
        1.1 * bound.as_secs_f64()
    );
    println!("| full sync: serve CPU | {full_serve:.2} s | <= 2 s |");
    println!("| full sync: PostgreSQL CPU | {full_pg:.2} s | <= 3 s |");
    println!("| full sync: serve peak RSS | {full_peak:.1} MiB | <= 96 MiB |");
    println!(
        "| first full sync (attach, {mirror} mirror rows inserted): wall / serve CPU / PostgreSQL CPU / peak RSS | {:.2} s / {first_serve:.2} s / {first_pg:.2} s / {first_peak:.1} MiB | |",
        first_wall.as_secs_f64()
    );
    println!("| incremental sync, nothing changed: Apple requests | {quiet_requests} | <= 3 |");
    println!(
        "| incremental sync, 50 added + {gone} removed elsewhere: Apple requests | {changed_requests} | |"
    );
    println!(
        "| allocation p99 without / during a full sync | {:.1} / {:.1} ms (x{:.2}) | <= 1.25 x |",
        ms(quiet_p99),
        ms(busy_p99),
        ms(busy_p99) / ms(quiet_p99)
    );
    println!(
        "| scheduler: PostgreSQL CPU per account per cycle ({accounts} accounts; {:.2} ms wall per cycle) | {:.5} ms | <= 1 ms |",
        ms(sched_wall),
        sched_cpu * 1000.0 / accounts as f64
    );

    sim.stop().await;
    drop(conn);
    drop_databases(&server, &[&db_name]).await;
}

/// The sync scheduler (`ledger::sync_runs::schedule` with serve's default intervals, 15 min
/// and 24 h) `cycles` times on a connection of its own: (wall time per cycle, PostgreSQL CPU
/// seconds per cycle from that backend's `/proc` ticks, runs it queued).
async fn scheduler_cost(db_url: &str, cycles: usize) -> (Duration, f64, usize) {
    let mut own = AsyncPgConnection::establish(db_url).await.expect("db");
    let backend: Pid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result(&mut own)
        .await
        .expect("backend pid");
    let pid = backend.pid as u32;
    let timing = Schedule {
        incremental: Duration::from_secs(15 * 60),
        full: Duration::from_secs(24 * 3600),
    };
    // Warm the backend's caches and plans once.
    let mut queued = sync_runs::schedule(&mut own, timing)
        .await
        .expect("schedule")
        .expect("the advisory lock is free");
    let cycles = cycles.max(1);
    let ticks_before = common::cpu_ticks(pid);
    let started = Instant::now();
    for _ in 0..cycles {
        queued += sync_runs::schedule(&mut own, timing)
            .await
            .expect("schedule")
            .expect("the advisory lock is free");
    }
    let wall = started.elapsed() / cycles as u32;
    let cpu = seconds(common::cpu_ticks(pid).saturating_sub(ticks_before)) / cycles as f64;
    (wall, cpu, queued)
}
