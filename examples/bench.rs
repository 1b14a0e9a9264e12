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
//! - `mixed` (issue 10): at 64 clients, each client in turn allocates the hot asset for a new
//!   device and revokes one of its licenses of the same asset allocated (and made `active` at
//!   Apple) before the run; it reports both p99s, their ratio, and Apple's disassociate
//!   requests against the minimum (the revocations per asset cut at Apple's
//!   `maxSerialNumbers`).
//!
//! Before the storms it fills the ledger with `--ledger N` licenses (default 10,240) and runs
//! `VACUUM ANALYZE`, as autovacuum keeps a ledger that has been running a while.
//!
//! Options: `--requests-per-client N` (default 100), `--pgbench-seconds S` (default 8),
//! `--ledger N`, `--mixed-only` (only the mixed scenario, no pgbench).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark program: any failure aborts the run with its message"
)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use serde_json::{Value, json};
use vpp_broker::apple::types::ProductType;
use vpp_broker::apple_sim::{SeedAsset, SeedFile, SeedLocation, SimConfig, SimSettings, Simulator};

mod common;
use common::{
    Service, allocate_once, apple_latency, create_space, drop_databases, fresh_database,
    http_client, memory, percentile, rand_index, storm, token,
};

const HOT: u64 = 499_999_999;
const SPREAD_BASE: u64 = 500_000_000;
const SPREAD_ASSETS: u64 = 100;

struct Args {
    per_client: usize,
    pgbench_seconds: u64,
    ledger: usize,
    /// Only the mixed scenario (no spread/hot storms, no pgbench).
    mixed_only: bool,
}

fn args() -> Args {
    let mut a = Args {
        per_client: 100,
        pgbench_seconds: 8,
        ledger: 10_240,
        mixed_only: std::env::args().any(|a| a == "--mixed-only"),
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

/// What the mixed scenario measured.
struct Mixed {
    clients: usize,
    /// Sorted latencies.
    allocations: Vec<Duration>,
    revocations: Vec<Duration>,
    elapsed: Duration,
    disassociates: u64,
    disassociate_minimum: u64,
}

/// Allocates the hot asset for `per_client` new devices per client; the new assignments' ids,
/// per client.
async fn allocate_ids(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    clients: usize,
    per_client: usize,
    tag: &str,
) -> Vec<Vec<String>> {
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (http, url, auth, tag) = (
                http.clone(),
                format!("{base}/v1/spaces/bench/assignments"),
                format!("Bearer {token}"),
                tag.to_owned(),
            );
            tokio::spawn(async move {
                let mut ids = Vec::with_capacity(per_client);
                for n in 0..per_client {
                    let body = json!({
                        "asset": {"adam_id": HOT.to_string()},
                        "subject": {"kind": "device", "id": format!("{tag}-{c}-{n}")},
                    });
                    let resp = http
                        .post(&url)
                        .header("authorization", &auth)
                        .json(&body)
                        .send()
                        .await
                        .expect("request");
                    assert_eq!(resp.status(), 201, "allocation refused");
                    let v: Value = resp.json().await.expect("assignment");
                    ids.push(
                        v["assignment"]["id"]
                            .as_str()
                            .expect("assignment id")
                            .to_owned(),
                    );
                }
                ids
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("client"));
    }
    out
}

/// The `mixed` scenario: licenses of the hot asset are allocated and made active first; then
/// each of `clients` clients, `per_client` times, allocates the hot asset for a new device and
/// revokes one of its earlier licenses (`DELETE …/assignments/{id}`, 202 `revoking`).
async fn mixed(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    db_url: &str,
    sim: &vpp_broker::apple_sim::SimHandle,
    clients: usize,
    per_client: usize,
) -> Mixed {
    let earlier = allocate_ids(http, base, token, clients, per_client, "mixed-before").await;
    drained(db_url, Duration::from_secs(300)).await;
    sim.reset_counters().await.unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = earlier
        .into_iter()
        .enumerate()
        .map(|(c, ids)| {
            let (http, base, auth) = (http.clone(), base.to_owned(), format!("Bearer {token}"));
            tokio::spawn(async move {
                let url = format!("{base}/v1/spaces/bench/assignments");
                let (mut alloc, mut revoke) = (Vec::new(), Vec::new());
                for (n, id) in ids.iter().enumerate() {
                    let body = json!({
                        "asset": {"adam_id": HOT.to_string()},
                        "subject": {"kind": "device", "id": format!("mixed-{c}-{n}")},
                    });
                    alloc.push(allocate_once(&http, &url, &auth, &body).await);
                    let t = Instant::now();
                    let resp = http
                        .delete(format!("{url}/{id}"))
                        .header("authorization", &auth)
                        .send()
                        .await
                        .expect("request");
                    let status = resp.status();
                    let _ = resp.bytes().await;
                    revoke.push(t.elapsed());
                    assert_eq!(status, 202, "revocation of an active license");
                }
                (alloc, revoke)
            })
        })
        .collect();
    let (mut allocations, mut revocations) = (Vec::new(), Vec::new());
    for t in tasks {
        let (a, r) = t.await.expect("client");
        allocations.extend(a);
        revocations.extend(r);
    }
    let elapsed = started.elapsed();
    drained(db_url, Duration::from_secs(300)).await;
    let counters = sim.counters().await.unwrap();
    let disassociates = counters
        .get("POST /assets/disassociate")
        .copied()
        .unwrap_or(0);
    allocations.sort();
    revocations.sort();
    Mixed {
        clients,
        disassociate_minimum: (revocations.len() as u64).div_ceil(1000),
        allocations,
        revocations,
        elapsed,
        disassociates,
    }
}

/// Each allocation of the `spread` scenario: one of 100 assets at random.
fn spread(c: usize, n: usize) -> u64 {
    SPREAD_BASE + (rand_index(c, n) % SPREAD_ASSETS)
}

/// Each allocation of the `hot` scenario: the same asset.
fn hot(_: usize, _: usize) -> u64 {
    HOT
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
    let (server, db_name, db_url) = fresh_database("vpp_bench").await;

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
    apple_latency(&sim, 500).await;

    // The service, as its own process (so its memory is its own).
    let http = http_client();
    let service = Service::start(&http, &db_url, &sim.base_url()).await;
    let base = service.base.clone();
    let token = token();
    let post = |path: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    create_space(&http, &base, &token, "bench").await;
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
        "bench",
        64,
        args.ledger.div_ceil(64),
        "ledger",
        spread,
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
    let classic: &[&str] = if args.mixed_only {
        &[]
    } else {
        &["spread", "hot"]
    };
    for &scenario in classic {
        for clients in [16usize, 64] {
            sim.reset_counters().await.unwrap();
            let tag = format!("{scenario}{clients}");
            let batches_before = batch_sizes(&http, &base).await;
            let cpu_before = (
                cpu_seconds(service.pid()),
                postgres_cpu_seconds(),
                cpu_seconds(std::process::id()),
            );
            let pick = if scenario == "hot" { hot } else { spread };
            let (mut latencies, elapsed, per_asset) = storm(
                &http,
                &base,
                &token,
                "bench",
                clients,
                args.per_client,
                &tag,
                pick,
            )
            .await;
            let cpu_after = (
                cpu_seconds(service.pid()),
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
    let mixed = mixed(&http, &base, &token, &db_url, &sim, 64, args.per_client).await;
    let (peak_kib, rss_kib) = memory(service.pid());
    service.stop();

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
    let pgbench: &[(&str, bool)] = if args.mixed_only {
        &[]
    } else {
        &[("spread", false), ("hot", true)]
    };
    for &(scenario, hot) in pgbench {
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
        1000.0 * total_apple as f64 / total_alloc.max(1) as f64
    );
    println!();
    println!(
        "| mixed, {} clients | requests | req/s | p50 ms | p99 ms |",
        mixed.clients
    );
    println!("|---|---|---|---|---|");
    for (kind, l) in [
        ("allocations", &mixed.allocations),
        ("revocations", &mixed.revocations),
    ] {
        println!(
            "| {kind} | {} | {:.0} | {:.1} | {:.1} |",
            l.len(),
            l.len() as f64 / mixed.elapsed.as_secs_f64(),
            percentile(l, 0.50).as_secs_f64() * 1000.0,
            percentile(l, 0.99).as_secs_f64() * 1000.0,
        );
    }
    println!(
        "mixed: revocation p99 / allocation p99 = {:.2} (target <= 1.5); Apple disassociate \
         requests {} for {} releases (minimum {}, ratio {:.2}; target <= 1.05)",
        percentile(&mixed.revocations, 0.99).as_secs_f64()
            / percentile(&mixed.allocations, 0.99).as_secs_f64(),
        mixed.disassociates,
        mixed.revocations.len(),
        mixed.disassociate_minimum,
        mixed.disassociates as f64 / mixed.disassociate_minimum.max(1) as f64,
    );
    println!(
        "service memory: peak RSS {:.1} MiB, RSS at end {:.1} MiB",
        peak_kib as f64 / 1024.0,
        rss_kib as f64 / 1024.0
    );

    sim.stop().await;
    drop_databases(&server, &[&db_name, &pg_name]).await;
}
