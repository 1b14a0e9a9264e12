//! Measures the Apple client paging through 10,000 assignments served by the in-process Apple
//! simulator, and the simulator's request throughput. Figures go to docs/benchmarks.md.
//!
//! ```sh
//! cargo run --release --example apple_sim_bench
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark program: any failure aborts the run with its message"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vpp_broker::apple::types::PricingParam;
use vpp_broker::apple::{AppleClient, AssignmentQuery, SToken};
use vpp_broker::apple_sim::{
    GeneratedAssignments, SeedAsset, SeedFile, SeedLocation, SettingsPatch, SimConfig, SimHandle,
    SimSettings, Simulator,
};

const ASSIGNMENTS: usize = 10_000;
const RUNS: usize = 7;

fn seed() -> SeedFile {
    SeedFile {
        settings: None,
        locations: vec![SeedLocation {
            name: "Benchmark".into(),
            assets: vec![SeedAsset {
                adam_id: "408709785".into(),
                total_count: ASSIGNMENTS as i64,
                ..Default::default()
            }],
            generated_assignments: vec![GeneratedAssignments {
                adam_id: "408709785".into(),
                pricing_param: PricingParam::Stdq,
                count: ASSIGNMENTS,
                serial_prefix: "BENCH".into(),
            }],
            ..Default::default()
        }],
    }
}

/// Reads all assignments `RUNS` times; returns (median, best) and the pages per read.
async fn page_through(client: &AppleClient, token: &SToken) -> (Duration, Duration, u32) {
    let mut times = Vec::with_capacity(RUNS);
    let mut pages = 0;
    for _ in 0..RUNS {
        let started = Instant::now();
        let listing = client
            .get_assignments(token, &AssignmentQuery::default())
            .await
            .expect("listing");
        times.push(started.elapsed());
        assert_eq!(listing.items.len(), ASSIGNMENTS);
        pages = listing.pages;
        // Let the per-token rate window drain so runs do not slow each other down.
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    times.sort();
    (times[RUNS / 2], times[0], pages)
}

async fn scenario(sim: &SimHandle, token: &SToken, label: &str, page_size: usize, rate: i64) {
    sim.update_settings(&SettingsPatch {
        page_size: Some(page_size),
        limits: [("maxRequestPerSecond".to_owned(), rate)].into(),
        ..Default::default()
    })
    .await
    .expect("settings");
    // A fresh client that learns the advertised rate from the service config.
    let client = AppleClient::new(&sim.base_url(), Duration::from_secs(30)).expect("client");
    client.service_config().await.expect("service config");
    let (median, best, pages) = page_through(&client, token).await;
    println!(
        "| {label} | {page_size} | {pages} | {rate}/s | {:.0} ms | {:.0} ms |",
        median.as_secs_f64() * 1000.0,
        best.as_secs_f64() * 1000.0,
    );
}

/// `concurrency` loops of `GET /client/config` for `duration`; returns requests per second.
async fn throughput(
    sim: &SimHandle,
    token: &SToken,
    concurrency: usize,
    duration: Duration,
) -> f64 {
    let http = reqwest::Client::new();
    let url = format!("{}/client/config", sim.base_url());
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, url, done, token) = (http.clone(), url.clone(), done.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let response = http
                    .get(&url)
                    .bearer_auth(token.expose())
                    .send()
                    .await
                    .expect("request");
                assert!(response.status().is_success());
                response.bytes().await.expect("body");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    done.load(Ordering::Relaxed) as f64 / duration.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let sim = Simulator::start(SimConfig {
        settings: SimSettings::default(),
        seed: Some(seed()),
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let token = sim.seeded()[0].stoken();

    println!("Client paging through {ASSIGNMENTS} assignments ({RUNS} runs each)");
    println!();
    println!("| scenario | page size | pages | rate limit | median | best |");
    println!("|---|---|---|---|---|---|");
    scenario(&sim, &token, "Apple's default rate", 500, 15).await;
    scenario(&sim, &token, "Apple-sized pages", 1000, 15).await;
    scenario(&sim, &token, "rate limit raised", 500, 10_000).await;
    scenario(
        &sim,
        &token,
        "rate limit raised, pages of 1000",
        1000,
        10_000,
    )
    .await;
    println!();

    sim.update_settings(&SettingsPatch {
        limits: [("maxRequestPerSecond".to_owned(), 0)].into(),
        ..Default::default()
    })
    .await
    .expect("settings");
    for concurrency in [1, 16] {
        let rps = throughput(&sim, &token, concurrency, Duration::from_secs(5)).await;
        println!(
            "Simulator throughput, GET /client/config, {concurrency} concurrent: {rps:.0} requests/s"
        );
    }
    sim.stop().await;
}
