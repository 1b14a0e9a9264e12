//! What the benchmark examples share (`bench`, `read_bench`, `sync_bench`): a fresh database, signed JWTs,
//! percentiles, the service's memory, the `vpp-broker serve` child process on a given database and
//! Apple base URL, and the closed-loop allocation storm. Each example compiles this module on its own, so a
//! helper one of them does not use is not dead code for the other.

#![allow(dead_code, reason = "each example uses its own part of this module")]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use vpp_broker::apple_sim::{FaultsPatch, SimHandle};

pub const SECRET: &str = "bench-secret-bench-secret-bench-secret-42";
pub const KEYS: &str = "b1:MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=";

/// A JWT for subject `sub` with `scope` on `spaces` (`["*"]` for every space), valid two hours.
pub fn token_for(sub: &str, scope: &str, spaces: &[&str]) -> String {
    let now = chrono::Utc::now().timestamp();
    jsonwebtoken::encode(
        &Header::default(),
        &json!({"iss": "bench", "aud": "vpp-broker", "sub": sub, "scope": scope,
                "spaces": spaces, "nbf": now - 10, "exp": now + 7200}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

/// An admin JWT for every space (subject `bench`).
pub fn token() -> String {
    token_for("bench", "admin", &["*"])
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `(VmHWM, VmRSS)` of a process, in KiB.
pub fn memory(pid: u32) -> (u64, u64) {
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

/// The release `vpp-broker serve` child process (so its memory is its own), ready to serve.
pub struct Service {
    pub child: Child,
    pub base: String,
}

impl Service {
    /// Starts `vpp-broker serve` (the binary next to this example) on `db_url`, calling Apple at
    /// `apple_base_url`, and waits until `/readyz` answers 200.
    pub async fn start(http: &reqwest::Client, db_url: &str, apple_base_url: &str) -> Service {
        Self::start_with_env(http, db_url, apple_base_url, &[]).await
    }

    /// [`Service::start`] with more environment variables (e.g. `VPP_SYNC_WORKERS`).
    pub async fn start_with_env(
        http: &reqwest::Client,
        db_url: &str,
        apple_base_url: &str,
        env: &[(&str, &str)],
    ) -> Service {
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
        let child = Command::new(&bin)
            .arg("serve")
            .env("DATABASE_URL", db_url)
            .env("VPP_LISTEN", format!("127.0.0.1:{port}"))
            .env("VPP_JWT_ISSUER", "bench")
            .env("VPP_JWT_AUDIENCE", "vpp-broker")
            .env("VPP_JWT_HS256_SECRET", SECRET)
            .env("VPP_TOKEN_KEYS", KEYS)
            .env("VPP_APPLE_BASE_URL", apple_base_url)
            .env("VPP_PUBLIC_URL", &base)
            .env("VPP_LOG", "warn")
            .env("VPP_HTTP_WORKERS", "2")
            .env("VPP_DB_POOL_SIZE", "24")
            .env("VPP_EVENT_POLL_SECS", "30")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (build it with --release first)",
                    bin.display()
                )
            });
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
        Service { child, base }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh, migrated database `{prefix}_{pid}` on the local PostgreSQL (or `DATABASE_URL`'s
/// server): the server, the database's name and its URL.
pub async fn fresh_database(prefix: &str) -> (vpp_broker::local_pg::Server, String, String) {
    let server = vpp_broker::local_pg::locate(std::env::var("DATABASE_URL").ok().as_deref())
        .await
        .expect("PostgreSQL");
    let db_name = format!("{prefix}_{}", std::process::id());
    server.ensure_database(&db_name).await.expect("create db");
    let db_url = server.database_url(&db_name);
    vpp_broker::db::migrate::run_pending(&db_url)
        .await
        .expect("migrate");
    (server, db_name, db_url)
}

/// Drops the databases a run created.
pub async fn drop_databases(server: &vpp_broker::local_pg::Server, names: &[&str]) {
    let mut admin = AsyncPgConnection::establish(&server.admin_url)
        .await
        .expect("admin");
    for db in names {
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await;
    }
}

/// The load generator's HTTP client (enough idle connections for 64 clients and a reader).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()
        .unwrap()
}

/// Adds `ms` milliseconds to every Apple call of the simulator.
pub async fn apple_latency(sim: &SimHandle, ms: u64) {
    sim.set_faults(&FaultsPatch {
        latency_ms: Some(ms),
        ..Default::default()
    })
    .await
    .expect("latency");
}

/// Creates space `id` (answer 201) with an admin token.
pub async fn create_space(http: &reqwest::Client, base: &str, token: &str, id: &str) {
    let status = http
        .post(format!("{base}/v1/spaces"))
        .bearer_auth(token)
        .json(&json!({"id": id, "name": "Bench"}))
        .send()
        .await
        .expect("create space")
        .status();
    assert_eq!(status, 201, "create space");
}

/// A cheap, reproducible spread of assets per (client, request).
pub fn rand_index(c: usize, n: usize) -> u64 {
    let mut x = (c as u64) * 1_000_003 + n as u64 + 0x9E37_79B9;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

/// Closed-loop allocation clients: `clients` tasks each POST `per_client` allocations in
/// `space`, for the adam id `pick(client, n)`, each for a new device `{tag}-{client}-{n}`.
/// Returns every latency, the elapsed time and the allocations per adam id.
#[allow(clippy::too_many_arguments, reason = "a benchmark driver")]
pub async fn storm(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    space: &str,
    clients: usize,
    per_client: usize,
    tag: &str,
    pick: fn(usize, usize) -> u64,
) -> (Vec<Duration>, Duration, BTreeMap<u64, u64>) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let http = http.clone();
        let url = format!("{base}/v1/spaces/{space}/assignments");
        let auth = format!("Bearer {token}");
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            let mut assets: BTreeMap<u64, u64> = BTreeMap::new();
            for n in 0..per_client {
                let adam = pick(c, n);
                let body = json!({
                    "asset": {"adam_id": adam.to_string()},
                    "subject": {"kind": "device", "id": format!("{tag}-{c}-{n}")},
                });
                latencies.push(allocate_once(&http, &url, &auth, &body).await);
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

/// One allocation POST (asserts 201); returns its latency.
pub async fn allocate_once(
    http: &reqwest::Client,
    url: &str,
    auth: &str,
    body: &serde_json::Value,
) -> Duration {
    let t = Instant::now();
    let resp = http
        .post(url)
        .header("authorization", auth)
        .json(body)
        .send()
        .await
        .expect("request");
    let status = resp.status();
    let _ = resp.bytes().await;
    let took = t.elapsed();
    assert_eq!(status, 201, "allocation refused");
    took
}

/// Closed-loop allocation clients for a fixed time: `clients` tasks each POST allocations in
/// `space` until `duration` passed, for the adam id `pick(client, n)`, each for a new device
/// `{tag}-{client}-{n}`. Returns every latency and the elapsed time (to the last answer).
#[allow(clippy::too_many_arguments, reason = "a benchmark driver")]
pub async fn storm_for(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    space: &str,
    clients: usize,
    duration: Duration,
    tag: &str,
    pick: fn(usize, usize) -> u64,
) -> (Vec<Duration>, Duration) {
    let started = Instant::now();
    let end = started + duration;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let http = http.clone();
        let url = format!("{base}/v1/spaces/{space}/assignments");
        let auth = format!("Bearer {token}");
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0;
            while Instant::now() < end {
                let body = json!({
                    "asset": {"adam_id": pick(c, n).to_string()},
                    "subject": {"kind": "device", "id": format!("{tag}-{c}-{n}")},
                });
                latencies.push(allocate_once(&http, &url, &auth, &body).await);
                n += 1;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client"));
    }
    (all, started.elapsed())
}

/// CPU ticks (1/100 s) used so far by a process (user + system); 0 when it is gone.
pub fn cpu_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let after = text.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// CPU ticks (1/100 s) the whole machine used so far (every CPU's user, nice, system, irq and
/// softirq time of `/proc/stat`; not steal, the hypervisor's time for other machines).
pub fn machine_ticks() -> u64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    [0, 1, 2, 5, 6].iter().filter_map(|&i| v.get(i)).sum()
}
