//! Allocation benchmark: `cargo run --release --example bench` (docs/benchmarks.md).
//!
//! Starts the Apple simulator in this process with 500 ms added to every Apple call, a
//! `vpp-broker serve` child process (the release binary next to this example) on a fresh
//! database, attaches one account with 101 apps, then drives allocations through HTTP with JWT
//! auth from closed-loop clients:
//!
//! - `spread`: each allocation picks one of 100 assets at random;
//! - `hot`: every allocation is for the same asset;
//!
//! at 16 and 64 concurrent clients. It reports allocations/s, p50/p99 latency, Apple requests per
//! 1000 allocations against the minimum Apple's batch limits allow, and the service's peak RSS.
//! Finally it measures the PostgreSQL ceiling with pgbench running the same writes as one
//! statement (a pool update, an assignment insert, a job insert, an activity insert) at the same
//! concurrency, and prints the ratio.
//!
//! Before the storms it fills the ledger with `--ledger N` licenses (default 10,240) and runs
//! `VACUUM ANALYZE`, as autovacuum keeps a ledger that has been running a while.
//!
//! Options: `--requests-per-client N` (default 100), `--pgbench-seconds S` (default 8),
//! `--ledger N`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark program: any failure aborts the run with its message"
)]

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use vpp_broker::apple::types::ProductType;
use vpp_broker::apple_sim::{
    FaultsPatch, SeedAsset, SeedFile, SeedLocation, SimConfig, SimSettings, Simulator,
};

const SECRET: &str = "bench-secret-bench-secret-bench-secret-42";
const KEYS: &str = "b1:MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=";
const HOT: u64 = 499_999_999;
const SPREAD_BASE: u64 = 500_000_000;
const SPREAD_ASSETS: u64 = 100;

struct Args {
    per_client: usize,
    pgbench_seconds: u64,
    ledger: usize,
}

fn args() -> Args {
    let mut a = Args {
        per_client: 100,
        pgbench_seconds: 8,
        ledger: 10_240,
    };
    let argv: Vec<String> = std::env::args().collect();
    for w in argv.windows(2) {
        match w[0].as_str() {
            "--requests-per-client" => a.per_client = w[1].parse().expect("number"),
            "--pgbench-seconds" => a.pgbench_seconds = w[1].parse().expect("number"),
            "--ledger" => a.ledger = w[1].parse().expect("number"),
            _ => {}
        }
    }
    a
}

fn token() -> String {
    let now = chrono::Utc::now().timestamp();
    jsonwebtoken::encode(
        &Header::default(),
        &json!({"iss": "bench", "aud": "vpp-broker", "sub": "bench", "scope": "admin",
                "spaces": ["*"], "nbf": now - 10, "exp": now + 7200}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// `(VmHWM, VmRSS)` of a process, in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// (sum, count) of the service's `allocation_batch_size` metric.
async fn batch_sizes(http: &reqwest::Client, base: &str) -> (f64, f64) {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("allocation_batch_size_sum"),
        value("allocation_batch_size_count"),
    )
}

/// CPU seconds used so far by a process (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let after = text.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// CPU seconds of every PostgreSQL process on the machine.
fn postgres_cpu_seconds() -> f64 {
    let mut total = 0.0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.starts_with("postgres") {
                total += cpu_seconds(pid);
            }
        }
    }
    total
}

struct Run {
    scenario: &'static str,
    clients: usize,
    allocations: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
    apple_associates: u64,
    apple_minimum: u64,
    apple_total: u64,
    /// CPU seconds per 1000 allocations: the service, PostgreSQL, this load generator.
    cpu_service: f64,
    cpu_postgres: f64,
    cpu_client: f64,
    /// Average requests per allocation transaction.
    batch: f64,
}

async fn storm(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    scenario: &'static str,
    clients: usize,
    per_client: usize,
    tag: &str,
) -> (Vec<Duration>, Duration, BTreeMap<u64, u64>) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let http = http.clone();
        let url = format!("{base}/v1/spaces/bench/assignments");
        let auth = format!("Bearer {token}");
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            let mut assets: BTreeMap<u64, u64> = BTreeMap::new();
            for n in 0..per_client {
                let adam = if scenario == "hot" {
                    HOT
                } else {
                    SPREAD_BASE + (rand_index(c, n) % SPREAD_ASSETS)
                };
                let body = json!({
                    "asset": {"adam_id": adam.to_string()},
                    "subject": {"kind": "device", "id": format!("{tag}-{c}-{n}")},
                });
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
                latencies.push(t.elapsed());
                assert_eq!(status, 201, "allocation refused");
                *assets.entry(adam).or_default() += 1;
            }
            (latencies, assets)
        }));
    }
    let mut all = Vec::new();
    let mut per_asset: BTreeMap<u64, u64> = BTreeMap::new();
    for t in tasks {
        let (l, a) = t.await.expect("client");
        all.extend(l);
        for (k, v) in a {
            *per_asset.entry(k).or_default() += v;
        }
    }
    (all, started.elapsed(), per_asset)
}

/// A cheap, reproducible spread of assets per (client, request).
fn rand_index(c: usize, n: usize) -> u64 {
    let mut x = (c as u64) * 1_000_003 + n as u64 + 0x9E37_79B9;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

async fn drained(db_url: &str, timeout: Duration) {
    let mut conn = AsyncPgConnection::establish(db_url).await.expect("db");
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let deadline = Instant::now() + timeout;
    loop {
        let n: N = diesel::sql_query(
            "SELECT (SELECT count(*) FROM jobs) + (SELECT count(*) FROM assignments
                     WHERE state IN ('pending', 'associating')) AS n",
        )
        .get_result(&mut conn)
        .await
        .expect("count");
        if n.n == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not drained after {timeout:?}: {} left",
            n.n
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn associates(counters: &BTreeMap<String, u64>) -> (u64, u64) {
    let assoc = counters.get("POST /assets/associate").copied().unwrap_or(0);
    let total = counters.values().sum();
    (assoc, total)
}

fn pgbench_tps(db_url: &str, script: &str, clients: usize, seconds: u64) -> f64 {
    let path = std::env::temp_dir().join(format!("vpp-bench-{}.sql", std::process::id()));
    std::fs::write(&path, script).expect("script");
    let out = Command::new("pgbench")
        .args([
            "-n",
            "-r",
            "-j",
            "2",
            "-c",
            &clients.to_string(),
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(&path)
        .arg(db_url)
        .output()
        .expect("pgbench (install postgresql-contrib / PostgreSQL client tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("tps ="))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "pgbench failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

fn pgbench_script(account: &str, subject: &str, hot: bool) -> String {
    let asset = if hot {
        format!("'{HOT}'")
    } else {
        format!("({SPREAD_BASE} + :a)::text")
    };
    format!(
        "\\set a random(0, {last})
WITH take AS (
    UPDATE assets SET held = held + 1, updated_at = now()
     WHERE account_id = '{account}' AND adam_id = {asset} AND pricing_param = 'STDQ'
       AND held + foreign_assigned < apple_total
 RETURNING account_id, adam_id
), ins AS (
    INSERT INTO assignments (id, space_id, account_id, adam_id, pricing_param, subject_id,
                             license_type, state, rule, decision, requested_by, reason)
    SELECT gen_random_uuid(), 'bench', account_id, adam_id, 'STDQ', '{subject}', 'device',
           'revoked', 'priority', '{{}}', 'pgbench', '' FROM take
 RETURNING id, account_id, adam_id
), job AS (
    INSERT INTO jobs (kind, account_id, assignment_id) SELECT 'associate', account_id, id FROM ins
), act AS (
    INSERT INTO activity_log (space_id, actor, action, account_id, assignment_id, subject, adam_id,
                              pricing_param, rule, details)
    SELECT 'bench', 'pgbench', 'assignment.allocated', account_id, id, 'device:x', adam_id, 'STDQ',
           'priority', '{{}}' FROM ins
)
SELECT count(*) FROM ins;
",
        last = SPREAD_ASSETS - 1
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    let server = vpp_broker::local_pg::locate(std::env::var("DATABASE_URL").ok().as_deref())
        .await
        .expect("PostgreSQL");
    let db_name = format!("vpp_bench_{}", std::process::id());
    server.ensure_database(&db_name).await.expect("create db");
    let db_url = server.database_url(&db_name);
    vpp_broker::db::migrate::run_pending(&db_url)
        .await
        .expect("migrate");

    // Apple: one location owning 101 apps with plenty of licenses, 500 ms per call.
    let mut assets: Vec<SeedAsset> = (0..SPREAD_ASSETS)
        .map(|i| SPREAD_BASE + i)
        .chain(std::iter::once(HOT))
        .map(|adam| SeedAsset {
            adam_id: adam.to_string(),
            product_type: Some(ProductType::App),
            total_count: 200_000,
            ..Default::default()
        })
        .collect();
    assets.sort_by(|a, b| a.adam_id.cmp(&b.adam_id));
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
    sim.set_faults(&FaultsPatch {
        latency_ms: Some(500),
        ..Default::default()
    })
    .await
    .expect("latency");

    // The service, as its own process (so its memory is its own).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let exe = std::env::current_exe().expect("exe");
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("vpp-broker");
    let mut child = Command::new(&bin)
        .arg("serve")
        .env("DATABASE_URL", &db_url)
        .env("VPP_LISTEN", format!("127.0.0.1:{port}"))
        .env("VPP_JWT_ISSUER", "bench")
        .env("VPP_JWT_AUDIENCE", "vpp-broker")
        .env("VPP_JWT_HS256_SECRET", SECRET)
        .env("VPP_TOKEN_KEYS", KEYS)
        .env("VPP_APPLE_BASE_URL", sim.base_url())
        .env("VPP_PUBLIC_URL", &base)
        .env("VPP_LOG", "warn")
        .env("VPP_HTTP_WORKERS", "2")
        .env("VPP_DB_POOL_SIZE", "24")
        .env("VPP_EVENT_POLL_SECS", "30")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e} (build it with --release first)",
                bin.display()
            )
        });
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "service not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = token();
    let post = |path: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    assert_eq!(
        post("/v1/spaces", json!({"id": "bench", "name": "Bench"}))
            .await
            .unwrap()
            .status(),
        201
    );
    let account: Value = post(
        "/v1/spaces/bench/accounts",
        json!({"name": "Bench", "stoken": sim.seeded()[0].s_token}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let account_id = account["id"].as_str().expect("account").to_owned();

    // A ledger at rest: licenses already allocated (and analyzed, as autovacuum keeps a ledger
    // that has been running a while), so the storms measure a steady state, not the first
    // minute of a fresh database whose statistics still describe empty tables.
    println!("filling the ledger with {} licenses ...", args.ledger);
    storm(
        &http,
        &base,
        &token,
        "spread",
        64,
        args.ledger.div_ceil(64),
        "ledger",
    )
    .await;
    drained(&db_url, Duration::from_secs(300)).await;
    AsyncPgConnection::establish(&db_url)
        .await
        .expect("db")
        .batch_execute("VACUUM ANALYZE")
        .await
        .expect("vacuum analyze");

    let mut runs = Vec::new();
    for scenario in ["spread", "hot"] {
        for clients in [16usize, 64] {
            sim.reset_counters().await.unwrap();
            let tag = format!("{scenario}{clients}");
            let batches_before = batch_sizes(&http, &base).await;
            let cpu_before = (
                cpu_seconds(child.id()),
                postgres_cpu_seconds(),
                cpu_seconds(std::process::id()),
            );
            let (mut latencies, elapsed, per_asset) = storm(
                &http,
                &base,
                &token,
                scenario,
                clients,
                args.per_client,
                &tag,
            )
            .await;
            let cpu_after = (
                cpu_seconds(child.id()),
                postgres_cpu_seconds(),
                cpu_seconds(std::process::id()),
            );
            drained(&db_url, Duration::from_secs(300)).await;
            let (assoc, total) = associates(&sim.counters().await.unwrap());
            let batches_after = batch_sizes(&http, &base).await;
            latencies.sort();
            let allocations = latencies.len();
            runs.push(Run {
                scenario,
                clients,
                allocations,
                per_second: allocations as f64 / elapsed.as_secs_f64(),
                p50: percentile(&latencies, 0.50),
                p99: percentile(&latencies, 0.99),
                apple_associates: assoc,
                apple_minimum: per_asset.values().map(|n| n.div_ceil(1000)).sum(),
                apple_total: total,
                cpu_service: 1000.0 * (cpu_after.0 - cpu_before.0) / allocations as f64,
                cpu_postgres: 1000.0 * (cpu_after.1 - cpu_before.1) / allocations as f64,
                cpu_client: 1000.0 * (cpu_after.2 - cpu_before.2) / allocations as f64,
                batch: (batches_after.0 - batches_before.0)
                    / (batches_after.1 - batches_before.1).max(1.0),
            });
            let r = runs.last().unwrap();
            println!(
                "{scenario:>6} {clients:>3} clients: {:>7.0} alloc/s  p50 {:>6.1} ms  p99 {:>6.1} ms  \
                 Apple associate requests {} (minimum {})",
                r.per_second,
                r.p50.as_secs_f64() * 1000.0,
                r.p99.as_secs_f64() * 1000.0,
                r.apple_associates,
                r.apple_minimum
            );
        }
    }
    let (peak_kib, rss_kib) = memory(child.id());
    let _ = child.kill();
    let _ = child.wait();

    // The PostgreSQL ceiling: the same four writes as one statement, from pgbench.
    let pg_name = format!("vpp_pgbench_{}", std::process::id());
    server.ensure_database(&pg_name).await.expect("pgbench db");
    let pg_url = server.database_url(&pg_name);
    vpp_broker::db::migrate::run_pending(&pg_url)
        .await
        .expect("migrate");
    let mut conn = AsyncPgConnection::establish(&pg_url).await.expect("db");
    let subject = uuid::Uuid::now_v7();
    conn.batch_execute(&format!(
        "INSERT INTO spaces (id, name) VALUES ('bench', 'Bench');
         INSERT INTO accounts (id, space_id, name, priority, location_uid, token_ciphertext, token_nonce,
                               token_key_id, token_expires_at)
         VALUES ('{account_id}', 'bench', 'Bench', 1, 'pgbench', 'x', '123456789012', 'k', now() + interval '1 year');
         INSERT INTO subjects (id, space_id, kind, external_id) VALUES ('{subject}', 'bench', 'device', 'x');
         INSERT INTO assets (account_id, adam_id, pricing_param, apple_total)
         SELECT '{account_id}', a::text, 'STDQ', 100000000
           FROM (SELECT generate_series({SPREAD_BASE}, {last}) AS a UNION SELECT {HOT}) s;",
        last = SPREAD_BASE + SPREAD_ASSETS - 1
    ))
    .await
    .expect("pgbench fixtures");
    drop(conn);
    let mut ceilings = BTreeMap::new();
    for (scenario, hot) in [("spread", false), ("hot", true)] {
        for clients in [16usize, 64] {
            let tps = pgbench_tps(
                &pg_url,
                &pgbench_script(&account_id, &subject.to_string(), hot),
                clients,
                args.pgbench_seconds,
            );
            ceilings.insert((scenario, clients), tps);
        }
    }

    println!();
    println!(
        "| scenario | clients | allocations | alloc/s | p50 ms | p99 ms | pgbench tps | ratio | Apple associate req / 1000 | minimum / 1000 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &runs {
        let ceiling = ceilings[&(r.scenario, r.clients)];
        println!(
            "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.0} | {:.0}% | {:.1} | {:.1} |",
            r.scenario,
            r.clients,
            r.allocations,
            r.per_second,
            r.p50.as_secs_f64() * 1000.0,
            r.p99.as_secs_f64() * 1000.0,
            ceiling,
            100.0 * r.per_second / ceiling,
            1000.0 * r.apple_associates as f64 / r.allocations as f64,
            1000.0 * r.apple_minimum as f64 / r.allocations as f64,
        );
    }
    let total_apple: u64 = runs.iter().map(|r| r.apple_total).sum();
    let total_alloc: usize = runs.iter().map(|r| r.allocations).sum();
    println!();
    println!("CPU seconds per 1000 allocations (2 cores shared by all three):");
    println!(
        "| scenario | clients | service | PostgreSQL | load generator + simulator | allocations per transaction |"
    );
    println!("|---|---|---|---|---|---|");
    for r in &runs {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.1} |",
            r.scenario, r.clients, r.cpu_service, r.cpu_postgres, r.cpu_client, r.batch
        );
    }
    println!();
    println!(
        "Apple requests of every kind (associate, status, service config ...): {:.1} per 1000 allocations",
        1000.0 * total_apple as f64 / total_alloc as f64
    );
    println!(
        "service memory: peak RSS {:.1} MiB, RSS at end {:.1} MiB",
        peak_kib as f64 / 1024.0,
        rss_kib as f64 / 1024.0
    );

    sim.stop().await;
    let mut admin = AsyncPgConnection::establish(&server.admin_url)
        .await
        .expect("admin");
    for db in [&db_name, &pg_name] {
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await;
    }
    let _ = diesel::sql_query("SELECT 1").execute(&mut admin).await;
}
