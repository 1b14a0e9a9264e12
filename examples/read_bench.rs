//! Read-side benchmark (issue 12, "Performance"): `cargo run --release --example read_bench`
//! (build first: `cargo build --release --example read_bench --bin vpp-broker`; docs/benchmarks.md).
//!
//! The ledger: one space `bench`, `--accounts` (50) Apple locations × `--assets` (1,000) apps,
//! `--assignments` (1,000,000) licenses and `--activity` (2,000,000) activity rows.
//!
//! - The simulator (in this process) is seeded with the locations and their assets, and every
//!   account is attached through the API, so tokens, locations, statuses and asset rows are what
//!   attaching writes. The accounts share a catalogue: each app is owned by 10 of the accounts
//!   (5,000 distinct apps, 50,000 asset rows), as organisations with several locations buy the
//!   same apps; the assets list then has 5,000 rows with a 10-account breakdown each.
//! - Everything else is SQL (`SEED_SQL`, generate_series; attaching a million licenses through
//!   Apple's simulated 500 ms calls would take hours): ~200,000 device subjects; the assignments
//!   (75 % active, 2 % pending, 1 % associating, 1 % revoking, 18 % revoked, 3 % failed, created
//!   over the last 60 days, revocations 0 to 30 days after allocation); per asset row `held` = its
//!   live assignments, `apple_assigned` = those at Apple plus `foreign_assigned`, `apple_total` =
//!   held + foreign + a spare that leaves 10 % of the rows exhausted (the 100 apps the allocation
//!   storm uses have 20,000 spare); the activity log (allocations, activations, revocations,
//!   failures, account and policy events, oldest first so ids grow with time) for the space.
//!   Ids and hashes come from the row number, so two runs seed the same ledger. The simulator
//!   does not know the seeded licenses (it only serves the allocations of step 3), and no job is
//!   queued for the seeded pending ones, so the dispatcher leaves them alone.
//!   Then `VACUUM ANALYZE`.
//!
//! Measured over HTTP with a signed `licenses:read` JWT, sequentially, `--requests` (200) times
//! each after 5 warm-up requests: the assignments list (exists before issue 12, for comparison),
//! the assets list's first and last page (the last page's cursor found by walking `next_cursor`
//! once) and first page by usage, one asset's detail with forecast, the activity log's first page,
//! page 10,000 (cursor built from the id at that depth, see src/http/pagination.rs), filtered by
//! subject and by asset, a device's detail. Then the CSV and NDJSON exports of every assignment
//! (rows/s; the service's VmRSS sampled every 50 ms, the maximum reported). Last, the allocation
//! storm (64 closed-loop clients over 100 apps, 500 ms per Apple call, as in `bench`) alone and
//! with a reader issuing 20 reads/s cycling over the read endpoints, alternating (2 rounds), and
//! the ratio of the mean throughputs.
//!
//! An endpoint that does not answer 200 (not built yet: 404) is reported as `n/a (status)` and
//! left out of the reader's cycle; an export answered with something other than the asked type is
//! `n/a`.
//!
//! Options: `--accounts N --assets N --assignments N --activity N` (ledger size),
//! `--requests N` (per read endpoint), `--clients N --requests-per-client N --rounds N`
//! (allocation storm: 64 clients, 300 each, 2 rounds of alone then with reads), `--keep` (keep the database and print its URL),
//! `--only exports` (seed, then only the exports: no reads, no storm), `--export-runs N` (download
//! each export N times, 1). A quick run:
//! `cargo run --release --example read_bench -- --assignments 50000 --activity 100000`; the
//! exports alone: `-- --only exports --activity 1000 --export-runs 2`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark program: any failure aborts the run with its message"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{
    Service, apple_latency, create_space, drop_databases, fresh_database, http_client, memory, ms,
    percentile, rand_index, storm, token, token_for,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use serde_json::{Value, json};
use vpp_broker::apple::types::ProductType;
use vpp_broker::apple_sim::{SeedAsset, SeedFile, SeedLocation, SimConfig, Simulator};

const SPACE: &str = "bench";
/// Catalogue app `d` is adam id `ADAM_BASE + d`.
const ADAM_BASE: u64 = 600_000_000;
/// The allocation storm spreads over catalogue apps 0..100.
const STORM_ASSETS: u64 = 100;
/// Location `k` has uId `UID_BASE + k`.
const UID_BASE: u64 = 4_100_000_000;
/// Each app is owned by this many accounts (fewer when there are fewer accounts).
const OWNERS: u64 = 10;

struct Args {
    accounts: u64,
    assets: u64,
    assignments: u64,
    activity: u64,
    requests: usize,
    clients: usize,
    per_client: usize,
    rounds: usize,
    keep: bool,
    /// `--only exports`: seed, then only the exports (no reads, no allocation storm).
    exports_only: bool,
    /// Times each export is downloaded (`--export-runs`, 1).
    export_runs: usize,
}

fn args() -> Args {
    let mut a = Args {
        accounts: 50,
        assets: 1_000,
        assignments: 1_000_000,
        activity: 2_000_000,
        requests: 200,
        clients: 64,
        per_client: 300,
        rounds: 2,
        keep: false,
        exports_only: false,
        export_runs: 1,
    };
    let argv: Vec<String> = std::env::args().collect();
    for (i, w) in argv.iter().enumerate() {
        let next = || -> u64 {
            argv.get(i + 1)
                .and_then(|v| v.replace('_', "").parse().ok())
                .unwrap_or_else(|| panic!("{w} needs a number"))
        };
        match w.as_str() {
            "--accounts" => a.accounts = next(),
            "--assets" => a.assets = next(),
            "--assignments" => a.assignments = next(),
            "--activity" => a.activity = next(),
            "--requests" => a.requests = next() as usize,
            "--clients" => a.clients = next() as usize,
            "--requests-per-client" => a.per_client = next() as usize,
            "--rounds" => a.rounds = next() as usize,
            "--keep" => a.keep = true,
            "--export-runs" => a.export_runs = (next() as usize).max(1),
            "--only" => match argv.get(i + 1).map(String::as_str) {
                Some("exports") => a.exports_only = true,
                other => panic!("--only takes `exports`, not {other:?}"),
            },
            _ => {}
        }
    }
    assert!(a.accounts >= 1 && a.assets >= 1 && a.assignments >= 1);
    a
}

/// How the accounts share the catalogue: each app is owned by `owners` accounts; account `k`
/// owns apps `(k × step + j) mod catalogue` for `j < assets`.
#[derive(Clone, Copy)]
struct Shape {
    accounts: u64,
    owners: u64,
    step: u64,
    catalogue: u64,
    devices: u64,
}

impl Shape {
    fn new(a: &Args) -> Shape {
        let owners = (1..=OWNERS.min(a.accounts))
            .rev()
            .find(|o| a.assets.is_multiple_of(*o))
            .unwrap_or(1);
        let step = a.assets / owners;
        let catalogue = a.accounts * step;
        // Each app's licenses go to distinct devices: a device per round over the catalogue.
        let devices = (a.assignments / 5).max(a.assignments.div_ceil(catalogue) + 1);
        Shape {
            accounts: a.accounts,
            owners,
            step,
            catalogue,
            devices,
        }
    }

    /// The catalogue indices location `k` owns.
    fn owned(&self, k: u64, assets: u64) -> Vec<u64> {
        let mut v: Vec<u64> = (0..assets)
            .map(|j| (k * self.step + j) % self.catalogue)
            .collect();
        v.sort();
        v
    }
}

/// Seeds subjects, assignments, asset counts and the activity log (see the module doc). One
/// session; `{…}` are filled in by [`seed_sql`]. `h(x)` is a hash of a bigint in 0..2^32.
const SEED_SQL: &str = "
SET synchronous_commit = off;
SET maintenance_work_mem = '128MB';
CREATE TEMP TABLE bench_accounts AS
    SELECT (location_uid::bigint - {uid_base})::int AS k, id FROM accounts WHERE space_id = '{space}';
CREATE FUNCTION pg_temp.h(x bigint) RETURNS bigint LANGUAGE sql IMMUTABLE
    AS 'SELECT hashint8(x)::bigint + 2147483648';
-- Assignment ids grow with their insertion, as the service's UUIDv7 ids do (a time prefix), so
-- the id-ordered reads of the lists and exports meet the heap in the order production does.
CREATE FUNCTION pg_temp.aid(x bigint) RETURNS uuid LANGUAGE sql IMMUTABLE
    AS 'SELECT (lpad(to_hex(x), 12, ''0'') || ''7'' || substr(md5(''bench-assignment-'' || x), 1, 19))::uuid';
CREATE TEMP TABLE bench_ids AS SELECT array_agg(id ORDER BY k) AS ids FROM bench_accounts;

-- Devices: BENCH00000000 … with groups; a third of them with a user.
INSERT INTO subjects (id, space_id, kind, external_id, groups, user_external_id, created_at, updated_at)
SELECT md5('bench-subject-' || g)::uuid, '{space}', 'device', 'BENCH' || lpad(g::text, 8, '0'),
       ARRAY['grade-' || (g % 12), 'site-' || (g % 7)],
       CASE WHEN g % 3 = 0 THEN 'user-' || g END,
       now() - interval '90 days', now() - interval '90 days'
  FROM generate_series(0, {devices} - 1) g;

-- Assignment i: app d = i mod catalogue, round r = i / catalogue, device (r + 7919 d) mod devices
-- (distinct per app), account: the (r mod owners)-th owner of d.
INSERT INTO assignments (id, space_id, account_id, adam_id, pricing_param, subject_id,
                         license_type, state, rule, decision, requested_by, reason, apple_event_id,
                         error, created_at, updated_at, revoked_by, revocation_reason,
                         revocation_requested_at, revocation_request_id)
SELECT pg_temp.aid(i), '{space}', ids[(k + 1)::int], ({adam_base} + d)::text, 'STDQ',
       md5('bench-subject-' || s)::uuid, 'device', st,
       CASE WHEN h % 10 = 0 THEN 'reservation' ELSE 'priority' END,
       jsonb_build_object('skipped', '[]'::jsonb), 'mdm-sync', '',
       CASE WHEN st <> 'pending' THEN 'bench-event-' || (i / 500) END,
       CASE WHEN st = 'failed' THEN jsonb_build_object('code', 9610, 'message', 'Serial number not found') END,
       created, COALESCE(revoked_at, created),
       CASE WHEN revoked_at IS NOT NULL THEN 'bench-admin' END,
       CASE WHEN revoked_at IS NOT NULL THEN 'device retired' END,
       revoked_at,
       CASE WHEN revoked_at IS NOT NULL THEN 'req-revoke-' || i END
  FROM (
    SELECT i, d, s, k, h, st, ids,
           CASE WHEN st IN ('pending', 'associating') THEN now() - interval '1 hour' - (i % 3600) * interval '1 second'
                ELSE now() - interval '2 hours' - (pg_temp.h(i * 31 + 7) % 5184000) * interval '1 second'
           END AS created,
           CASE WHEN st = 'revoking' THEN now() - interval '1 hour' - (i % 3600) * interval '1 second'
                WHEN st = 'revoked' THEN LEAST(now() - interval '2 hours'
                                               - (pg_temp.h(i * 31 + 7) % 5184000) * interval '1 second'
                                               + (h % 30) * interval '1 day' + interval '1 hour', now())
           END AS revoked_at
      FROM (
        SELECT i, d, (i / {catalogue} + d * 7919) % {devices} AS s,
               (d / {step} - (i / {catalogue}) % {owners} + {accounts}) % {accounts} AS k,
               h,
               CASE WHEN h % 1000 < 750 THEN 'active' WHEN h % 1000 < 770 THEN 'pending'
                    WHEN h % 1000 < 780 THEN 'associating' WHEN h % 1000 < 790 THEN 'revoking'
                    WHEN h % 1000 < 970 THEN 'revoked' ELSE 'failed' END AS st
          FROM (SELECT i, i % {catalogue} AS d, pg_temp.h(i) AS h
                  FROM generate_series(0::bigint, {assignments} - 1) i) g
      ) x, bench_ids
  ) y;

-- Counts consistent with the ledger.
UPDATE assets s
   SET held = c.live, foreign_assigned = c.foreign, apple_assigned = c.at_apple + c.foreign,
       apple_total = c.live + c.foreign + CASE
           WHEN s.adam_id::bigint - {adam_base} < {storm_assets} THEN 20000
           WHEN c.h % 100 < 10 THEN 0
           WHEN c.h % 100 < 50 THEN 1 + c.h % 3 + c.live * (c.h % 10) / 50
           ELSE 1 + c.h % 5 + c.live * (c.h % 100 - 40) / 20 END,
       synced_at = now() - interval '1 hour'
  FROM (SELECT a.account_id, a.adam_id, a.pricing_param,
               count(x.id) FILTER (WHERE x.state IN ('pending', 'associating', 'active')) AS live,
               count(x.id) FILTER (WHERE x.state IN ('active', 'revoking')) AS at_apple,
               CASE WHEN pg_temp.h(a.adam_id::bigint * 7 + b.k) % 5 = 0
                    THEN pg_temp.h(a.adam_id::bigint) % 7 ELSE 0 END AS foreign,
               pg_temp.h(a.adam_id::bigint * 13 + b.k) AS h
          FROM assets a JOIN bench_accounts b ON b.id = a.account_id
          LEFT JOIN assignments x ON x.account_id = a.account_id AND x.adam_id = a.adam_id
                                 AND x.pricing_param = a.pricing_param
         GROUP BY a.account_id, a.adam_id, a.pricing_param, b.k) c
 WHERE s.account_id = c.account_id AND s.adam_id = c.adam_id AND s.pricing_param = c.pricing_param;

-- Activity row j at time now - 60 days + j × (60 days / rows), about assignment i = h(j) mod n.
INSERT INTO activity_log (occurred_at, space_id, actor, action, account_id, assignment_id, subject,
                          adam_id, pricing_param, rule, apple_event_id, request_id, details)
SELECT occurred, '{space}',
       CASE WHEN action IN ('assignment.activated', 'assignment.revoked', 'assignment.failed',
                            'account.status_changed') THEN 'system'
            WHEN action LIKE 'assignment.%' THEN 'mdm-sync' ELSE 'admin@example.com' END,
       action, ids[(k + 1)::int],
       CASE WHEN action LIKE 'assignment.%' THEN pg_temp.aid(i) END,
       CASE WHEN action LIKE 'assignment.%' THEN 'device:BENCH' || lpad(s::text, 8, '0') END,
       CASE WHEN action <> 'account.status_changed' THEN ({adam_base} + d)::text END,
       CASE WHEN action <> 'account.status_changed' THEN 'STDQ' END,
       CASE WHEN action = 'assignment.allocated' THEN 'priority' END,
       CASE WHEN action IN ('assignment.activated', 'assignment.revoked', 'assignment.failed')
            THEN 'bench-event-' || (i / 500) END,
       CASE WHEN action IN ('assignment.allocated', 'assignment.revoke_requested', 'policy.replaced')
            THEN 'req-' || j END,
       CASE action
            WHEN 'assignment.allocated' THEN jsonb_build_object('license_type', 'device', 'skipped', 0, 'queued_because', NULL)
            WHEN 'assignment.revoke_requested' THEN jsonb_build_object('reason', 'device retired', 'state', 'active', 'notify_user', true)
            WHEN 'assignment.failed' THEN jsonb_build_object('code', 9610, 'message', 'Serial number not found')
            WHEN 'account.status_changed' THEN jsonb_build_object('from', 'active', 'to', 'throttled')
            ELSE '{}'::jsonb END
  FROM (
    SELECT j, i, i % {catalogue} AS d, (i / {catalogue} + (i % {catalogue}) * 7919) % {devices} AS s,
           ((i % {catalogue}) / {step} - (i / {catalogue}) % {owners} + {accounts}) % {accounts} AS k,
           now() - interval '60 days' + j * (5184000.0 / {activity}) * interval '1 second' AS occurred,
           CASE WHEN a < 45 THEN 'assignment.allocated' WHEN a < 83 THEN 'assignment.activated'
                WHEN a < 89 THEN 'assignment.revoke_requested' WHEN a < 95 THEN 'assignment.revoked'
                WHEN a < 97 THEN 'assignment.failed' WHEN a < 98 THEN 'account.status_changed'
                ELSE 'policy.replaced' END AS action
      FROM (SELECT j, pg_temp.h(j * 17 + 3) % {assignments} AS i, pg_temp.h(j * 5 + 1) % 100 AS a
              FROM generate_series(0::bigint, {activity} - 1) j) g
  ) x, bench_ids
 ORDER BY j;
";

fn seed_sql(a: &Args, shape: &Shape) -> String {
    let mut sql = SEED_SQL.to_owned();
    for (key, value) in [
        ("space", SPACE.to_owned()),
        ("uid_base", UID_BASE.to_string()),
        ("adam_base", ADAM_BASE.to_string()),
        ("storm_assets", STORM_ASSETS.to_string()),
        ("catalogue", shape.catalogue.to_string()),
        ("step", shape.step.to_string()),
        ("owners", shape.owners.to_string()),
        ("accounts", shape.accounts.to_string()),
        ("devices", shape.devices.to_string()),
        ("assignments", a.assignments.to_string()),
        ("activity", a.activity.max(1).to_string()),
    ] {
        sql = sql.replace(&format!("{{{key}}}"), &value);
    }
    sql
}

#[derive(diesel::QueryableByName)]
struct N {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

async fn count(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
    // Here only: its `load` would shadow the atomics' `load` elsewhere.
    use diesel_async::RunQueryDsl;
    let n: N = diesel::sql_query(sql).get_result(conn).await.expect(sql);
    n.n
}

/// Waits until the allocations of the storms are settled at Apple: no job left and none of this
/// run's assignments (`requested_by` = the JWT subject `bench`) pending or associating.
async fn drained(db_url: &str, timeout: Duration) {
    let mut conn = AsyncPgConnection::establish(db_url).await.expect("db");
    let deadline = Instant::now() + timeout;
    loop {
        let n = count(
            &mut conn,
            "SELECT (SELECT count(*) FROM jobs) + (SELECT count(*) FROM assignments
                     WHERE state IN ('pending', 'associating') AND requested_by = 'bench') AS n",
        )
        .await;
        if n == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "not drained after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One read endpoint: a name, a path (with query) and its p99 target in ms.
#[derive(Clone)]
struct Read {
    name: &'static str,
    path: String,
    target_ms: Option<f64>,
}

enum Outcome {
    Measured {
        p50: Duration,
        p99: Duration,
        max: Duration,
        /// What the answer holds: `items` of a page, or the bytes of one resource.
        holds: String,
    },
    NotAvailable(u16),
}

async fn get(http: &reqwest::Client, base: &str, token: &str, path: &str) -> (u16, Vec<u8>) {
    let resp = http
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.bytes().await.expect("body").to_vec())
}

async fn measure(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    read: &Read,
    n: usize,
) -> Outcome {
    let (status, body) = get(http, base, token, &read.path).await;
    if status != 200 {
        return Outcome::NotAvailable(status);
    }
    let holds = match serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["items"].as_array().map(Vec::len))
    {
        Some(items) => format!("{items} items"),
        None => format!("{} bytes", body.len()),
    };
    for _ in 0..5 {
        get(http, base, token, &read.path).await;
    }
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let (status, _) = get(http, base, token, &read.path).await;
        latencies.push(t.elapsed());
        assert_eq!(status, 200, "{} answered {status}", read.name);
    }
    latencies.sort();
    Outcome::Measured {
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        max: *latencies.last().unwrap(),
        holds,
    }
}

/// The cursor of the assets list's last page, by walking `next_cursor` from the first page.
async fn last_page_cursor(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    path: &str,
) -> Option<(String, usize)> {
    // A full last page still carries a `next_cursor`, to an empty page: the last page with
    // items is then the one before.
    let mut cursor: Option<String> = None;
    let mut previous: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}?cursor={c}"),
            None => path.to_owned(),
        };
        let (status, body) = get(http, base, token, &url).await;
        if status != 200 {
            return None;
        }
        pages += 1;
        let page: Value = serde_json::from_slice(&body).ok()?;
        let empty = page["items"]
            .as_array()
            .is_none_or(|items| items.is_empty());
        match page["next_cursor"].as_str() {
            Some(next) => previous = cursor.replace(next.to_owned()),
            None if empty && pages > 1 => {
                return Some((previous.unwrap_or_default(), pages - 1));
            }
            None => return Some((cursor.unwrap_or_default(), pages)),
        }
    }
}

/// A page cursor of the activity log (src/http/pagination.rs): after activity id `id`.
fn activity_cursor(id: i64) -> String {
    URL_SAFE_NO_PAD.encode(json!({"l": format!("activity:{SPACE}"), "k": id}).to_string())
}

struct Export {
    rows: u64,
    elapsed: Duration,
    peak_rss_kib: u64,
    rss_before_kib: u64,
}

/// Downloads the whole assignments list as `accept`, sampling the service's VmRSS every 50 ms.
/// `None` when the service answers anything else than 200 with that content type.
async fn export(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    pid: u32,
    accept: &str,
    header_rows: u64,
) -> Result<Export, String> {
    let rss_before_kib = memory(pid).1;
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(rss_before_kib));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(memory(pid).1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let t = Instant::now();
    let result = async {
        let mut resp = http
            .get(format!("{base}/v1/spaces/{SPACE}/assignments"))
            .bearer_auth(token)
            .header("accept", accept)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if status != 200 || !content_type.starts_with(accept) {
            return Err(format!("{status} {content_type}"));
        }
        let mut lines = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        }
        Ok(lines.saturating_sub(header_rows))
    }
    .await;
    let elapsed = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    Ok(Export {
        rows: result?,
        elapsed,
        peak_rss_kib: peak.load(Ordering::Relaxed),
        rss_before_kib,
    })
}

/// Each allocation of the storm: one of the first 100 catalogue apps at random.
fn storm_pick(c: usize, n: usize) -> u64 {
    ADAM_BASE + (rand_index(c, n) % STORM_ASSETS)
}

/// Issues `per_second` reads per second, cycling over `reads`, until `stop`; each read in its
/// own task so a slow answer does not lower the rate. Returns (reads done, reads not 200).
async fn reader(
    http: reqwest::Client,
    base: String,
    token: String,
    reads: Vec<Read>,
    per_second: u64,
    stop: Arc<AtomicBool>,
) -> (u64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / per_second));
    let mut tasks = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let read = reads[i % reads.len()].clone();
        i += 1;
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        let (done, failed) = (done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let (status, _) = get(&http, &base, &token, &read.path).await;
            done.fetch_add(1, Ordering::Relaxed);
            if status != 200 {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    let shape = Shape::new(&args);
    let (server, db_name, db_url) = fresh_database("vpp_read_bench").await;

    // Apple: one location per account, owning its share of the catalogue.
    let locations = (0..args.accounts)
        .map(|k| SeedLocation {
            u_id: Some((UID_BASE + k).to_string()),
            name: format!("Bench Library {k}"),
            assets: shape
                .owned(k, args.assets)
                .into_iter()
                .map(|d| SeedAsset {
                    adam_id: (ADAM_BASE + d).to_string(),
                    product_type: Some(ProductType::App),
                    total_count: 100_000,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    let sim = Simulator::start(SimConfig {
        workers: 1,
        seed: Some(SeedFile {
            settings: None,
            locations,
        }),
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let http = http_client();
    let service = Service::start(&http, &db_url, &sim.base_url()).await;
    let base = service.base.clone();
    let admin = token();
    create_space(&http, &base, &admin, SPACE).await;
    let t = Instant::now();
    for (k, location) in sim.seeded().iter().enumerate() {
        let resp = http
            .post(format!("{base}/v1/spaces/{SPACE}/accounts"))
            .bearer_auth(&admin)
            .json(&json!({"name": format!("Bench {k}"), "stoken": location.s_token}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "attach: {}", resp.text().await.unwrap());
    }
    println!(
        "attached {} accounts × {} assets through the API in {:.1} s",
        args.accounts,
        args.assets,
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let mut conn = AsyncPgConnection::establish(&db_url).await.expect("db");
    conn.batch_execute(&seed_sql(&args, &shape))
        .await
        .expect("seed");
    conn.batch_execute("VACUUM ANALYZE").await.expect("vacuum");
    println!(
        "seeded {} devices, {} assignments, {} activity rows (+ VACUUM ANALYZE) in {:.1} s",
        shape.devices,
        args.assignments,
        args.activity,
        t.elapsed().as_secs_f64()
    );
    let asset_rows = count(&mut conn, "SELECT count(*) AS n FROM assets").await;
    let activity_rows = count(
        &mut conn,
        &format!("SELECT count(*) AS n FROM activity_log WHERE space_id = '{SPACE}'"),
    )
    .await;
    // The cursor of page 10,000: the id of the last row of page 9,999 (newest first).
    let depth = (9_999i64 * 50).min((activity_rows - 51).max(0));
    let deep_id = count(
        &mut conn,
        &format!(
            "SELECT id AS n FROM activity_log WHERE space_id = '{SPACE}'
              ORDER BY id DESC OFFSET {} LIMIT 1",
            depth.saturating_sub(1)
        ),
    )
    .await;
    let deep_page = depth / 50 + 1;
    drop(conn);

    // The reads.
    let reader_token = token_for("bench-reader", "licenses:read", &[SPACE]);
    let sp = format!("/v1/spaces/{SPACE}");
    let assets_path = format!("{sp}/assets");
    let last = if args.exports_only {
        None
    } else {
        last_page_cursor(&http, &base, &reader_token, &assets_path).await
    };
    let detail_adam = ADAM_BASE + 150 % shape.catalogue;
    let serial = format!("BENCH{:08}", 42 % shape.devices);
    let mut reads = vec![Read {
        name: "assignments list, first page (before issue 12)",
        path: format!("{sp}/assignments"),
        target_ms: None,
    }];
    reads.push(Read {
        name: "assets list, first page",
        path: assets_path.clone(),
        target_ms: Some(25.0),
    });
    match &last {
        Some((cursor, pages)) => {
            println!("assets list: {pages} pages of 50");
            reads.push(Read {
                name: "assets list, last page",
                path: if cursor.is_empty() {
                    assets_path.clone()
                } else {
                    format!("{assets_path}?cursor={cursor}")
                },
                target_ms: Some(25.0),
            });
        }
        None => reads.push(Read {
            name: "assets list, last page",
            path: assets_path.clone(),
            target_ms: Some(25.0),
        }),
    }
    reads.extend([
        Read {
            name: "assets list by usage, first page",
            path: format!("{assets_path}?sort=usage"),
            target_ms: Some(25.0),
        },
        Read {
            name: "asset detail with forecast",
            path: format!("{assets_path}/{detail_adam}/STDQ"),
            target_ms: Some(25.0),
        },
        Read {
            name: "activity, first page",
            path: format!("{sp}/activity"),
            target_ms: Some(20.0),
        },
        Read {
            name: "activity, deep page",
            path: format!("{sp}/activity?cursor={}", activity_cursor(deep_id)),
            target_ms: Some(20.0),
        },
        Read {
            name: "activity by subject",
            path: format!("{sp}/activity?subject_kind=device&subject_id={serial}"),
            target_ms: Some(20.0),
        },
        Read {
            name: "activity by asset",
            path: format!("{sp}/activity?adam_id={detail_adam}&pricing_param=STDQ"),
            target_ms: Some(20.0),
        },
        Read {
            name: "device detail",
            path: format!("{sp}/devices/{serial}"),
            target_ms: None,
        },
    ]);

    println!(
        "ledger: {asset_rows} asset rows, {} assignments, {activity_rows} activity rows; \
         deep activity page = page {deep_page}",
        args.assignments
    );
    println!();
    println!("| read | answer | p50 ms | p99 ms | max ms | target p99 | |");
    println!("|---|---|---|---|---|---|---|");
    let mut available = Vec::new();
    let mut summary: Vec<(String, String, String, &'static str)> = Vec::new();
    for read in reads.iter().filter(|_| !args.exports_only) {
        let outcome = measure(&http, &base, &reader_token, read, args.requests).await;
        let target = read
            .target_ms
            .map(|t| format!("≤ {t:.0} ms"))
            .unwrap_or_else(|| "—".into());
        match outcome {
            Outcome::Measured {
                p50,
                p99,
                max,
                holds,
            } => {
                let ok = read.target_ms.is_none_or(|t| ms(p99) <= t);
                let mark = if read.target_ms.is_some() {
                    verdict(ok)
                } else {
                    ""
                };
                println!(
                    "| {} | {holds} | {:.1} | {:.1} | {:.1} | {target} | {mark} |",
                    read.name,
                    ms(p50),
                    ms(p99),
                    ms(max)
                );
                summary.push((
                    format!("{} p99", read.name),
                    format!("{:.1} ms", ms(p99)),
                    target,
                    mark,
                ));
                available.push(read.clone());
            }
            Outcome::NotAvailable(status) => {
                println!("| {} | | n/a ({status}) | | | {target} | |", read.name);
                summary.push((
                    format!("{} p99", read.name),
                    format!("n/a ({status})"),
                    target,
                    "",
                ));
            }
        }
    }

    // Exports.
    println!();
    let exports = (0..args.export_runs)
        .flat_map(|_| [("text/csv", 1), ("application/x-ndjson", 0)])
        .collect::<Vec<_>>();
    for (accept, header_rows) in exports {
        match export(
            &http,
            &base,
            &reader_token,
            service.pid(),
            accept,
            header_rows,
        )
        .await
        {
            Ok(e) => {
                let rate = e.rows as f64 / e.elapsed.as_secs_f64();
                let peak = e.peak_rss_kib as f64 / 1024.0;
                println!(
                    "export {accept}: {} rows in {:.1} s = {rate:.0} rows/s; service RSS {:.1} MiB \
                     before, peak {peak:.1} MiB",
                    e.rows,
                    e.elapsed.as_secs_f64(),
                    e.rss_before_kib as f64 / 1024.0,
                );
                if e.rows != args.assignments {
                    println!("  (expected {} rows)", args.assignments);
                }
                summary.push((
                    format!("assignments export {accept}"),
                    format!("{rate:.0} rows/s"),
                    "≥ 100,000 rows/s".into(),
                    verdict(rate >= 100_000.0),
                ));
                summary.push((
                    format!("service peak RSS during {accept} export"),
                    format!("{peak:.1} MiB"),
                    "≤ 64 MiB".into(),
                    verdict(peak <= 64.0),
                ));
            }
            Err(answer) => {
                println!("export {accept}: n/a (answered {answer})");
                summary.push((
                    format!("assignments export {accept}"),
                    format!("n/a ({answer})"),
                    "≥ 100,000 rows/s".into(),
                    "",
                ));
            }
        }
    }

    // Allocation throughput alone and with 20 reads/s (not with `--only exports`).
    let rounds = if args.exports_only {
        0
    } else {
        args.rounds.max(1)
    };
    apple_latency(&sim, 500).await;
    println!();
    let reads_per_second = 20;
    // Alternating, so a neighbour's load on the shared machine falls on both modes alike.
    let mut rates = [Vec::new(), Vec::new()];
    for (round, with_reads) in (0..rounds).flat_map(|r| [(r, false), (r, true)]) {
        let stop = Arc::new(AtomicBool::new(false));
        let background = with_reads.then(|| {
            tokio::spawn(reader(
                http.clone(),
                base.clone(),
                reader_token.clone(),
                available.clone(),
                reads_per_second,
                stop.clone(),
            ))
        });
        // Every run allocates to new devices.
        let mode = if with_reads { "with-reads" } else { "alone" };
        let tag = format!("{mode}-{round}");
        let (mut latencies, elapsed, _) = storm(
            &http,
            &base,
            &admin,
            SPACE,
            args.clients,
            args.per_client,
            &tag,
            storm_pick,
        )
        .await;
        stop.store(true, Ordering::Relaxed);
        let read_counts = match background {
            Some(task) => Some(task.await.expect("reader")),
            None => None,
        };
        drained(&db_url, Duration::from_secs(600)).await;
        latencies.sort();
        let rate = latencies.len() as f64 / elapsed.as_secs_f64();
        println!(
            "allocation {tag:>12}: {} allocations by {} clients in {:.1} s = {rate:.0} alloc/s, \
             p50 {:.1} ms, p99 {:.1} ms{}",
            latencies.len(),
            args.clients,
            elapsed.as_secs_f64(),
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            read_counts
                .map(|(done, failed)| format!(
                    "; {done} reads ({:.1}/s), {failed} not 200",
                    done as f64 / elapsed.as_secs_f64()
                ))
                .unwrap_or_default()
        );
        rates[usize::from(with_reads)].push(rate);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (alone, with_reads) = (mean(&rates[0]), mean(&rates[1]));
    let ratio = 100.0 * with_reads / alone;
    if rounds > 0 {
        summary.push((
            format!("allocation throughput with {reads_per_second} reads/s vs alone"),
            format!(
                "{ratio:.0} % ({with_reads:.0} / {alone:.0} alloc/s, mean of {} runs each)",
                rates[0].len()
            ),
            "≥ 90 %".into(),
            verdict(ratio >= 90.0),
        ));
    }

    println!();
    println!("| measure | figure | target | |");
    println!("|---|---|---|---|");
    for (what, figure, target, mark) in &summary {
        println!("| {what} | {figure} | {target} | {mark} |");
    }
    let (hwm, rss) = memory(service.pid());
    println!();
    println!(
        "service memory over the whole run: peak RSS (VmHWM) {:.1} MiB, RSS at end {:.1} MiB",
        hwm as f64 / 1024.0,
        rss as f64 / 1024.0
    );

    service.stop();
    sim.stop().await;
    if args.keep {
        println!("database kept: {db_url}");
    } else {
        drop_databases(&server, &[&db_name]).await;
    }
}
