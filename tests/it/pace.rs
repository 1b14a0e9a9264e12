//! The Apple request budget per token that replicas share (rule T13; `ledger::apple_pace`),
//! against PostgreSQL: no more slots than the limit within a window however many callers race,
//! a dead holder's slot frees when its lease runs out (and its late release frees nothing), and
//! the budget fails open when the database cannot be reached. The three-process run against
//! the simulator is `multiprocess.rs::t13_…`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vpp_broker::apple::SharedPace;
use vpp_broker::ledger::apple_pace::PgPace;

use crate::support::app::db_args;
use crate::support::db::TestDb;

/// The pacing window of these tests.
const WINDOW: Duration = Duration::from_millis(300);

fn pace(url: &str) -> Arc<PgPace> {
    Arc::new(PgPace::new(
        vpp_broker::db::pool::connect(&db_args(url), "pace test").unwrap(),
    ))
}

/// Takes a slot, waiting as told; the slot and when it was had.
async fn slot(
    pace: &PgPace,
    key: [u8; 32],
    per_window: usize,
    lease: Duration,
) -> (vpp_broker::apple::pace::Slot, Instant) {
    loop {
        match pace.take(key, per_window, WINDOW, lease).await {
            Ok(Some(slot)) => return (slot, Instant::now()),
            Ok(None) => panic!("the budget failed open on a live database"),
            Err(wait) => tokio::time::sleep(wait).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t13_racing_callers_get_no_more_slots_than_the_limit_within_a_window() {
    let db = TestDb::new().await;
    let pace = pace(&db.url);
    let key = [7u8; 32];
    let (limit, window) = (3, WINDOW);
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let pace = pace.clone();
            tokio::spawn(async move {
                let (taken, at) = slot(&pace, key, limit, Duration::from_secs(10)).await;
                // The request ended at once: the slot frees a window after it was taken.
                pace.release(key, taken, window).await;
                at
            })
        })
        .collect();
    let mut times = Vec::new();
    for t in tasks {
        times.push(t.await.unwrap());
    }
    times.sort();
    assert_eq!(times.len(), 12, "every caller got a slot");
    // The 4th slot is had at least a window after the 1st (the database's clock frees them;
    // the margin covers the round trips between it and this process's clock).
    for pair in times.windows(limit + 1) {
        let apart = pair[limit] - pair[0];
        assert!(
            apart >= window - Duration::from_millis(40),
            "{} slots within {apart:?}",
            limit + 1
        );
    }
    // Released slots free a window after they were had, not when their 10 s lease runs out.
    assert!(
        times[times.len() - 1] - times[0] < Duration::from_secs(5),
        "slots waited for their leases"
    );
    // A different token has its own budget.
    let (_, at) = slot(&pace, [8u8; 32], limit, Duration::from_secs(10)).await;
    assert!(at.elapsed() < Duration::from_secs(5));
}

/// A slot if one is free now (or within a few short waits: a free slot may be locked by
/// another caller at the same moment).
async fn slot_now(
    pace: &PgPace,
    key: [u8; 32],
    lease: Duration,
) -> Option<vpp_broker::apple::pace::Slot> {
    for _ in 0..5 {
        match pace.take(key, 1, WINDOW, lease).await {
            Ok(slot) => return slot,
            Err(wait) => tokio::time::sleep(wait.min(Duration::from_millis(20))).await,
        }
    }
    None
}

#[tokio::test]
async fn t13_a_dead_holder_s_slot_frees_when_its_lease_runs_out() {
    let db = TestDb::new().await;
    let pace = pace(&db.url);
    let key = [9u8; 32];
    let lease = Duration::from_millis(400);
    // The holder "dies": it never releases its only slot.
    let (dead, _) = slot(&pace, key, 1, lease).await;
    let wait = pace
        .take(key, 1, WINDOW, lease)
        .await
        .expect_err("the only slot is held");
    // Held by a request in flight, whose end nobody knows: a short poll, not the lease.
    assert!(
        wait <= Duration::from_millis(50),
        "told to wait {wait:?} for a slot in flight"
    );
    let started = Instant::now();
    let (next, _) = slot(&pace, key, 1, Duration::from_secs(10)).await;
    assert!(started.elapsed() <= lease + Duration::from_millis(200));
    // The dead holder's late release does not free the new holder's slot.
    pace.release(key, dead, Duration::ZERO).await;
    assert!(
        pace.take(key, 1, WINDOW, lease).await.is_err(),
        "the slot is still held"
    );
    // The new holder's release does, after what it says is left of the window; the wait
    // says so (about a window, not a short poll).
    pace.release(key, next, WINDOW).await;
    let wait = pace
        .take(key, 1, WINDOW, lease)
        .await
        .expect_err("the slot frees a window after its release");
    assert!(
        wait > Duration::from_millis(150) && wait <= WINDOW,
        "told to wait {wait:?}"
    );
    tokio::time::sleep(wait).await;
    assert!(slot_now(&pace, key, lease).await.is_some());
}

#[tokio::test]
async fn t13_the_budget_fails_open_when_the_database_is_unreachable() {
    let pace = pace("postgres://postgres@127.0.0.1:1/nowhere");
    let started = Instant::now();
    assert_eq!(
        pace.take([1u8; 32], 15, WINDOW, Duration::from_secs(10))
            .await,
        Ok(None),
        "requests go with the local pacing alone"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
