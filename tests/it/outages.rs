//! Issue 10 (the storm): the ledger database failing under a request — a statement cancelled
//! by an operator (or a timeout) and a connection terminated by the server mid-allocation
//! answer 503 problem+json with Retry-After, never a 500, and leave the ledger as it was; the
//! service serves the next request on a fresh connection; an allocation batch whose connection
//! died is retried on a fresh one. And housekeeping forgets Apple events
//! finished more than 30 days ago (the table grew forever), never pending ones.

use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::Integer;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

use crate::support::eventually::eventually;
use crate::support::fixtures::{self, APP, device};
use crate::support::sim::{app, location};
use crate::support::{Allocated, TestApp};

const U1: &str = "3000000081";

#[derive(Debug, QueryableByName)]
struct Pid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

/// The backend of this test's database waiting for a row lock (the blocked allocation).
async fn blocked_backend(app: &TestApp) -> i32 {
    eventually(
        "an allocation waits for the asset's row lock",
        async || {
            let mut conn = app.db.connect().await;
            diesel::sql_query(
                "SELECT pid FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .load::<Pid>(&mut conn)
            .await
            .unwrap()
        },
        |pids| pids.len() == 1,
    )
    .await[0]
        .pid
}

/// Holds the asset rows' lock in an open transaction until the connection is dropped or rolls
/// back.
async fn lock_assets(app: &TestApp) -> AsyncPgConnection {
    let mut conn = app.db.connect().await;
    conn.batch_execute("BEGIN; SELECT 1 FROM assets FOR UPDATE")
        .await
        .unwrap();
    conn
}

#[tokio::test]
async fn t10_a_cancelled_statement_and_a_terminated_connection_answer_503_and_change_nothing() {
    let w = fixtures::world(vec![location(U1, "Lib", vec![app(APP, 5)])], &[("A", U1)]).await;
    let api = w.api();

    for (serial, kill) in [
        ("CANCELLED", "pg_cancel_backend"),
        ("TERMINATED", "pg_terminate_backend"),
    ] {
        let mut lock = lock_assets(&w.app).await;
        let body = device(serial);
        let request = tokio::spawn({
            let req = api.req(reqwest::Method::POST, "/assignments").json(&body);
            async move { req.send().await.unwrap() }
        });
        let pid = blocked_backend(&w.app).await;
        let mut conn = w.app.db.connect().await;
        diesel::sql_query(format!("SELECT {kill}({pid})"))
            .execute(&mut conn)
            .await
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(20), request)
            .await
            .expect("an answer, not a hang")
            .unwrap();
        let status = resp.status();
        let retry_after = resp.headers().get("retry-after").cloned();
        let content_type = resp.headers().get("content-type").cloned();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 503, "{kill}: {text}");
        assert!(retry_after.is_some(), "{kill}: Retry-After");
        assert_eq!(
            content_type.unwrap(),
            "application/problem+json",
            "{kill}: {text}"
        );
        assert!(text.contains("unavailable"), "{kill}: {text}");
        lock.batch_execute("ROLLBACK").await.unwrap();

        // Nothing was allocated.
        let held = api
            .assignments(&format!("subject_kind=device&subject_id={serial}"))
            .await;
        assert!(held.items.is_empty(), "{kill}: {held:?}");
    }
    assert_eq!(fixtures::held(&w.app, w.accounts[0]).await, 0);

    // The service goes on, on fresh connections.
    let allocated = api.allocated(&device("AFTER")).await;
    assert_eq!(allocated.id(), api.assignment(allocated.id()).await.id);
}

/// An allocation of [`APP`] for device `serial`, as the HTTP layer would ask.
fn request(serial: &str) -> vpp_broker::domain::allocation::AllocationRequest {
    use vpp_broker::domain::allocation::{AllocationRequest, AssetRef, SubjectInput};
    AllocationRequest {
        space: "acme".into(),
        asset: AssetRef {
            adam_id: APP.into(),
            pricing_param: "STDQ".into(),
        },
        subject: SubjectInput::Device {
            serial: serial.into(),
            user: None,
            shared_ipad: None,
            groups: None,
        },
        wish: vpp_broker::domain::model::LicenseWish::Auto,
        reason: String::new(),
        origin: vpp_broker::domain::origin::Origin::new("outage test", None),
        dry_run: false,
        exclude_accounts: Vec::new(),
        replaces: None,
        wait_until: None,
        policy_wait_until: None,
        serves: None,
        serves_holder: None,
    }
}

async fn terminate(app: &TestApp, pid: i32) {
    let mut conn = app.db.connect().await;
    diesel::sql_query(format!("SELECT pg_terminate_backend({pid})"))
        .execute(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn t10_a_batch_whose_connection_died_is_retried_on_a_fresh_connection() {
    use vpp_broker::engine::allocate::Allocations;
    use vpp_broker::engine::combiner::Combiner;
    let w = fixtures::world(vec![location(U1, "Lib", vec![app(APP, 10)])], &[("A", U1)]).await;
    // One executor: the requests queued behind a blocked one become its next batch.
    let combiner = Combiner::<Allocations>::start(w.app.pool.clone(), 1, 128);
    let mut lock = lock_assets(&w.app).await;
    let first = tokio::spawn({
        let c = combiner.clone();
        async move { c.submit(request("ALONE")).await }
    });
    let alone = blocked_backend(&w.app).await;
    let batch: Vec<_> = (0..4)
        .map(|i| {
            let c = combiner.clone();
            tokio::spawn(async move { c.submit(request(&format!("BATCH{i}"))).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    terminate(&w.app, alone).await;
    // A batch of one is not retried: its caller hears the connection's failure (503
    // `unavailable`, the test above) and retries.
    let alone_result = first.await.unwrap();
    assert!(
        matches!(
            alone_result,
            Err(vpp_broker::engine::allocate::AllocationError::Db(_))
        ),
        "{alone_result:?}"
    );
    // The batch of four waits for the lock in its turn; its connection dies too.
    let batch_backend = eventually(
        "the batch of four waits for the lock",
        async || blocked_backend(&w.app).await,
        |pid| *pid != alone,
    )
    .await;
    terminate(&w.app, batch_backend).await;
    // Retried one by one on a fresh connection: the first retry waits for the lock anew.
    eventually(
        "a retry waits for the lock on another connection",
        async || blocked_backend(&w.app).await,
        |pid| *pid != batch_backend && *pid != alone,
    )
    .await;
    lock.batch_execute("ROLLBACK").await.unwrap();
    for (i, t) in batch.into_iter().enumerate() {
        let outcome = t
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("BATCH{i} failed after its retry: {e}"));
        assert!(outcome.created, "BATCH{i}");
    }
    assert_eq!(fixtures::held(&w.app, w.accounts[0]).await, 4);
}

#[tokio::test]
async fn t10_housekeeping_forgets_apple_events_finished_over_30_days_ago_and_keeps_the_rest() {
    let w = fixtures::world(vec![location(U1, "Lib", vec![app(APP, 5)])], &[("A", U1)]).await;
    let account = w.accounts[0];
    let mut conn = w.app.db.connect().await;
    diesel::sql_query(format!(
        "INSERT INTO apple_events (event_id, account_id, kind, status, submitted_at, finished_at)
         VALUES ('old-done', '{account}', 'associate', 'complete', now() - interval '40 days',
                 now() - interval '31 days'),
                ('old-failed', '{account}', 'disassociate', 'failed', now() - interval '40 days',
                 now() - interval '35 days'),
                ('recent-done', '{account}', 'associate', 'complete', now() - interval '2 days',
                 now() - interval '1 day'),
                ('old-pending', '{account}', 'associate', 'pending', now() - interval '40 days',
                 NULL)"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let ctx = vpp_broker::dispatch::Ctx::new(
        w.app.state.clone(),
        vpp_broker::dispatch::Settings {
            database_url: w.app.db.url.clone(),
            ..crate::support::app::fast_dispatch("")
        },
    );
    vpp_broker::dispatch::maintenance::once(&ctx).await.unwrap();
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::Text)]
        event_id: String,
    }
    let left: Vec<String> = diesel::sql_query(
        "SELECT event_id FROM apple_events
          WHERE event_id IN ('old-done', 'old-failed', 'recent-done', 'old-pending')
          ORDER BY event_id",
    )
    .load::<Id>(&mut conn)
    .await
    .unwrap()
    .into_iter()
    .map(|r| r.event_id)
    .collect();
    assert_eq!(left, ["old-pending", "recent-done"]);
}
