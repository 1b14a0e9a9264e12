//! Revocations over real HTTP with the simulator and the dispatcher: each leaves a record (who,
//! why, when, which request) on the assignment and in the activity log; a non-revocable asset's
//! license is refused up front; a finished assignment is answered as it is. Also: allocations
//! record the request id although the combiner decides them on a task of its own.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;
use vpp_broker::api::assignments::{Allocation, Assignment, Revocation};
use vpp_broker::apple::types::{AssetKey, PricingParam};
use vpp_broker::db::schema::{activity_log, assets, jobs};

use crate::support::fixtures::{self, APP, BOOK, assignment_activity as activity_of, device};
use crate::support::sim::{app, book, location};
use crate::support::{Allocated, TestApp, expect_problem, read};

/// A revocation record as a comparable tuple: (by, reason, requested at, request id).
fn record(
    a: &Assignment,
) -> (
    String,
    String,
    chrono::DateTime<chrono::Utc>,
    Option<String>,
) {
    let r = a
        .revocation
        .as_ref()
        .unwrap_or_else(|| panic!("no revocation record: {a:?}"));
    (
        r.by.clone(),
        r.reason.clone(),
        r.requested_at,
        r.request_id.clone(),
    )
}

const U1: &str = "3000000001";

async fn world() -> (vpp_broker::apple_sim::SimHandle, TestApp, Uuid) {
    let w = fixtures::world(
        vec![location(U1, "Library", vec![app(APP, 5), book(BOOK, 5)])],
        &[("A", U1)],
    )
    .await;
    (w.sim, w.app, w.accounts[0])
}

/// Allocates with an `x-request-id`; returns the assignment id.
async fn allocate(app: &TestApp, body: Value, request_id: &str) -> Uuid {
    let resp = app
        .client("acme")
        .req(Method::POST, "/assignments")
        .header("x-request-id", request_id)
        .json(&body)
        .send()
        .await
        .unwrap();
    read::<Allocation>(resp, 201).await.id()
}

fn user_book(user: &str) -> Value {
    json!({"asset": {"adam_id": BOOK}, "subject": {"kind": "user", "id": user}})
}

#[tokio::test]
async fn a_revocation_records_who_why_when_and_the_request_on_the_assignment_and_in_the_log() {
    let (_sim, app, _account) = world().await;
    // No Idempotency-Key: the combiner decides it, and the request id still reaches the log.
    let id = allocate(&app, device("S1"), "req-allocate-1").await;
    app.client("acme").final_state(id).await;
    let log = activity_of(&app, id).await;
    assert_eq!(
        (log[0].0.as_str(), log[0].2.as_deref()),
        ("assignment.allocated", Some("req-allocate-1")),
        "{log:?}"
    );

    let before = chrono::Utc::now();
    let resp = app
        .req(
            Method::DELETE,
            &format!("/v1/spaces/acme/assignments/{id}?reason=device%20wiped"),
        )
        .header("x-request-id", "req-revoke-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let revoking: Assignment = resp.json().await.unwrap();
    assert_eq!(revoking.state.as_str(), "revoking");
    let first = record(&revoking);
    let (by, reason, at, request_id) = &first;
    assert_eq!(by, "test-caller", "{revoking:?}");
    assert_eq!(reason, "device wiped");
    assert_eq!(request_id.as_deref(), Some("req-revoke-1"));
    assert!(*at >= before - chrono::Duration::seconds(5), "{first:?}");

    // It stays on the finished assignment, and the log says the same.
    let revoked = app.client("acme").final_state(id).await;
    assert_eq!(revoked.state.as_str(), "revoked");
    assert_eq!(record(&revoked), first);
    let log = activity_of(&app, id).await;
    let requested = log
        .iter()
        .find(|(action, ..)| action == "assignment.revoke_requested")
        .expect("revocation logged");
    assert_eq!(requested.1, "test-caller");
    assert_eq!(requested.2.as_deref(), Some("req-revoke-1"));
    assert_eq!(requested.3["reason"], "device wiped");

    // A bulk revocation records its body's reason on each assignment.
    let two = allocate(&app, device("S2"), "req-allocate-2").await;
    let resp = app
        .req(Method::POST, "/v1/spaces/acme/revocations")
        .header("x-request-id", "req-bulk-1")
        .json(&json!({"asset": {"adam_id": APP}, "reason": "app retired"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    // The whole record, compared on the wire: exactly these fields.
    let bulk = app
        .get_json(&format!("/v1/spaces/acme/assignments/{two}"))
        .await;
    assert_eq!(
        bulk["revocation"],
        json!({"by": "test-caller", "reason": "app retired", "request_id": "req-bulk-1",
               "requested_at": bulk["revocation"]["requested_at"]}),
        "{bulk}"
    );

    // A live assignment carries no revocation record.
    let three = allocate(&app, device("S3"), "req-allocate-3").await;
    // Absent on the wire: read raw.
    let live = app
        .get_json(&format!("/v1/spaces/acme/assignments/{three}"))
        .await;
    assert!(live.get("revocation").is_none(), "{live}");

    // A reason longer than 1000 characters is refused.
    let long = "x".repeat(1001);
    let resp = app
        .req(
            Method::DELETE,
            &format!("/v1/spaces/acme/assignments/{three}?reason={long}"),
        )
        .send()
        .await
        .unwrap();
    expect_problem(resp, 400, "invalid-parameter").await;
    let resp = app
        .req(Method::POST, "/v1/spaces/acme/revocations")
        .json(&json!({"asset": {"adam_id": APP}, "reason": long}))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 422, "validation-failed").await;
    let live = app.client("acme").assignment(three).await;
    assert_ne!(
        live.state.as_str(),
        "revoking",
        "refused requests change nothing"
    );
    assert_ne!(
        live.state.as_str(),
        "revoked",
        "refused requests change nothing"
    );
}

async fn ledger_of_book(app: &TestApp, id: Uuid) -> (i32, i32, i64) {
    let mut conn = app.db.connect().await;
    let (held, foreign): (i32, i32) = assets::table
        .filter(assets::account_id.eq(id))
        .filter(assets::adam_id.eq(BOOK))
        .select((assets::held, assets::foreign_assigned))
        .first(&mut conn)
        .await
        .unwrap();
    let queued: i64 = jobs::table
        .filter(jobs::account_id.eq(id))
        .filter(jobs::kind.eq("disassociate"))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    (held, foreign, queued)
}

#[tokio::test]
async fn revoking_a_license_of_a_non_revocable_asset_is_refused_and_changes_nothing() {
    let (_sim, app, account) = world().await;
    let id = allocate(&app, user_book("reader-1"), "req-book-1").await;
    assert_eq!(
        app.client("acme").final_state(id).await.state.as_str(),
        "active"
    );
    let app_id = allocate(
        &app,
        json!({"asset": {"adam_id": APP}, "subject": {"kind": "user", "id": "reader-1"}}),
        "req-app-1",
    )
    .await;
    app.client("acme").final_state(app_id).await;
    let before = ledger_of_book(&app, account).await;
    assert_eq!(before, (1, 0, 0));

    let resp = app
        .req(Method::DELETE, &format!("/v1/spaces/acme/assignments/{id}"))
        .send()
        .await
        .unwrap();
    let problem = expect_problem(resp, 409, "not-revocable").await;
    assert!(
        problem["detail"].as_str().unwrap().contains(BOOK),
        "{problem}"
    );
    // "All of the book" is refused the same way, with or without pricing.
    for asset in [
        json!({"adam_id": BOOK}),
        json!({"adam_id": BOOK, "pricing_param": "STDQ"}),
    ] {
        let resp = app
            .req(Method::POST, "/v1/spaces/acme/revocations")
            .json(&json!({"asset": asset}))
            .send()
            .await
            .unwrap();
        expect_problem(resp, 409, "not-revocable").await;
    }
    // Absent on the wire: read raw.
    let after = app
        .get_json(&format!("/v1/spaces/acme/assignments/{id}"))
        .await;
    assert_eq!(after["state"], "active");
    assert!(after.get("revocation").is_none(), "{after}");
    assert_eq!(ledger_of_book(&app, account).await, before);

    // All of the user's: the app is revoked, the book kept and counted.
    let resp = app
        .req(Method::POST, "/v1/spaces/acme/revocations")
        .json(&json!({"subject": {"kind": "user", "id": "reader-1"}}))
        .send()
        .await
        .unwrap();
    let r: Revocation = read(resp, 202).await;
    assert_eq!((r.dropped + r.revoking, r.not_revocable), (1, 1), "{r:?}");
    assert_eq!(
        app.client("acme").final_state(app_id).await.state.as_str(),
        "revoked"
    );
    // Give the dispatcher time to do anything it would (it must not touch the book): a check
    // that nothing happens, so a sleep and not a poll.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let book = app.client("acme").assignment(id).await;
    assert_eq!(book.state.as_str(), "active");
    assert_eq!(ledger_of_book(&app, account).await, before);
}

#[tokio::test]
async fn deleting_an_assignment_that_is_already_revoked_or_failed_answers_200_as_it_is() {
    let (sim, app, _account) = world().await;
    let id = allocate(&app, device("S1"), "req-1").await;
    app.client("acme").final_state(id).await;
    let path = format!("/v1/spaces/acme/assignments/{id}");
    let first = app.req(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(first.status(), 202);
    let revoked = app.client("acme").final_state(id).await;
    assert_eq!(revoked.state.as_str(), "revoked");
    let again = app
        .req(Method::DELETE, &format!("{path}?reason=again"))
        .send()
        .await
        .unwrap();
    let body: Assignment = read(again, 200).await;
    assert_eq!(body.state.as_str(), "revoked");
    assert_eq!(body.version, revoked.version, "unchanged");
    assert_eq!(record(&body), record(&revoked), "the first record stays");

    // A failed assignment (Apple has no license left: 9709, no other account): as it is, too.
    sim.set_asset_total(U1, &AssetKey::new(APP, PricingParam::Stdq), 0)
        .await
        .unwrap();
    let failed = allocate(&app, device("S2"), "req-2").await;
    let failed_view = app.client("acme").final_state(failed).await;
    assert_eq!(failed_view.state.as_str(), "failed", "{failed_view:?}");
    let resp = app
        .req(
            Method::DELETE,
            &format!("/v1/spaces/acme/assignments/{failed}"),
        )
        .send()
        .await
        .unwrap();
    // Absent on the wire: read raw.
    let body: Value = read(resp, 200).await;
    assert!(body.get("revocation").is_none(), "{body}");
    let body: Assignment = serde_json::from_value(body).unwrap();
    assert_eq!(body.state.as_str(), "failed");
    assert_eq!(body.version, failed_view.version, "unchanged");

    let unknown = uuid::Uuid::now_v7();
    let resp = app
        .req(
            Method::DELETE,
            &format!("/v1/spaces/acme/assignments/{unknown}"),
        )
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not-found").await;
}

#[tokio::test]
async fn activity_rows_of_handlers_carry_the_callers_request_id() {
    let (_sim, app, _account) = world().await;
    let resp = app
        .req(Method::PUT, &format!("/v1/spaces/acme/policies/{APP}/STDQ"))
        .header("x-request-id", "req-policy-1")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let mut conn = app.db.connect().await;
    let rows: Vec<(String, String, Option<String>)> = activity_log::table
        .filter(activity_log::action.eq_any(["policy.created", "account.added"]))
        .order(activity_log::id)
        .select((
            activity_log::action,
            activity_log::actor,
            activity_log::request_id,
        ))
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].0, "account.added");
    assert!(rows[0].2.is_some(), "the attach request's id: {rows:?}");
    assert_eq!(
        rows[1],
        (
            "policy.created".to_owned(),
            "test-caller".to_owned(),
            Some("req-policy-1".to_owned())
        )
    );
}

/// A license still `pending` (in the ledger, never sent to Apple) is dropped by DELETE in the
/// ledger alone: the answer is final (200, `revoked`), not 202, and that holds for a book too,
/// since nothing reached Apple that it would refuse to take back.
#[tokio::test]
async fn deleting_a_pending_license_drops_it_at_once_with_200_books_included() {
    // No dispatcher: every allocation stays `pending`.
    let w = fixtures::world_with(
        vec![location(U1, "Library", vec![app(APP, 5), book(BOOK, 5)])],
        |_| crate::support::app::Options::default(),
        &[("A", U1)],
    )
    .await;
    let (app, account) = (&w.app, w.accounts[0]);
    let api = w.api();
    for (body, request_id) in [
        (user_book("reader-9"), "req-pending-book"),
        (
            json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": "P1"}}),
            "req-pending-app",
        ),
    ] {
        let id = allocate(app, body, request_id).await;
        let before = api.assignment(id).await;
        assert_eq!(before.state.as_str(), "pending", "{before:?}");
        let resp = app
            .req(
                Method::DELETE,
                &format!("/v1/spaces/acme/assignments/{id}?reason=changed+my+mind"),
            )
            .send()
            .await
            .unwrap();
        let after: Assignment = read(resp, 200).await;
        assert_eq!(after.state.as_str(), "revoked", "{after:?}");
        assert_eq!(record(&after).1, "changed my mind", "{after:?}");
    }
    // The book's license is free again in the ledger, and nothing waits to go to Apple.
    assert_eq!(ledger_of_book(app, account).await, (0, 0, 0));
}

/// Rule V1 under concurrency: "all of an asset" is refused whole when Apple keeps some of it,
/// judged on the rows the revocation locks. A book license that leaves `pending` (Apple now has
/// it) while the revocation waits for its row makes the request 409, and the other license of
/// the book is left as it was (it was revoked, and the first one counted, when the check read
/// the rows before locking them).
#[tokio::test]
async fn v1_an_asset_revocation_judges_the_rows_it_locks() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
    // No dispatcher: allocations stay `pending` until the test moves them.
    let w = fixtures::world_with(
        vec![location(U1, "Library", vec![app(APP, 5), book(BOOK, 5)])],
        |_| crate::support::app::Options::default(),
        &[("A", U1)],
    )
    .await;
    let first = allocate(&w.app, user_book("reader-1"), "req-race-1").await;
    let second = allocate(&w.app, user_book("reader-2"), "req-race-2").await;
    let mut holder = AsyncPgConnection::establish(&w.app.db.url).await.unwrap();
    holder.batch_execute("BEGIN").await.unwrap();
    diesel::sql_query("SELECT 1 FROM assignments WHERE id = $1 FOR UPDATE")
        .bind::<diesel::sql_types::Uuid, _>(first)
        .execute(&mut holder)
        .await
        .unwrap();
    let request = w
        .app
        .req(Method::POST, "/v1/spaces/acme/revocations")
        .json(&json!({"asset": {"adam_id": BOOK}, "reason": "race"}));
    let answer = tokio::spawn(async move { request.send().await });
    let mut watcher = AsyncPgConnection::establish(&w.app.db.url).await.unwrap();
    crate::support::eventually(
        "the revocation waiting for the held row",
        async || {
            #[derive(diesel::QueryableByName, Debug)]
            struct Waiting {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                n: i64,
            }
            diesel::sql_query(
                "SELECT count(*) AS n FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .get_result::<Waiting>(&mut watcher)
            .await
            .map(|w| w.n)
            .unwrap_or(0)
        },
        |n| *n > 0,
    )
    .await;
    // Apple takes the first license meanwhile (as the dispatcher records it).
    diesel::sql_query("UPDATE assignments SET state = 'associating' WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(first)
        .execute(&mut holder)
        .await
        .unwrap();
    holder.batch_execute("COMMIT").await.unwrap();
    let resp = answer.await.unwrap().unwrap();
    let problem = expect_problem(resp, 409, "not-revocable").await;
    assert!(
        problem["detail"].as_str().unwrap().contains(BOOK),
        "{problem}"
    );
    let api = w.app.client("acme");
    assert_eq!(api.assignment(second).await.state.as_str(), "pending");
    assert_eq!(api.assignment(first).await.state.as_str(), "associating");
}

/// Revocations of one assignment decided together (`engine::revoke::revoke_many`, what the
/// revocation combiner runs): each caller is answered as alone — its own license `revoking`
/// with its own record, a book refused for its caller only, an id named twice answered alike,
/// an unknown id not found — and the ledger frees exactly the licenses released.
#[tokio::test]
async fn v1_revocations_decided_in_one_batch_answer_each_caller_as_alone() {
    use diesel_async::AsyncConnection;
    use vpp_broker::domain::origin::Origin;
    use vpp_broker::engine::revoke::{OneRevocation, RevocationError, revoke_many};

    let (_sim, app, account) = world().await;
    let apps: Vec<Uuid> = {
        let mut ids = Vec::new();
        for n in 0..3 {
            ids.push(allocate(&app, device(&format!("BATCH{n}")), &format!("a{n}")).await);
        }
        ids
    };
    let book_id = allocate(&app, user_book("reader-9"), "b1").await;
    for id in apps.iter().chain([&book_id]) {
        assert_eq!(
            app.client("acme").final_state(*id).await.state.as_str(),
            "active"
        );
    }
    let held_before = fixtures::held(&app, account).await;
    let one = |id: Uuid, who: &str| OneRevocation {
        space: "acme".into(),
        id,
        origin: Origin::new(who, Some(format!("req-{who}"))),
        reason: format!("asked by {who}"),
    };
    let unknown = Uuid::now_v7();
    let reqs = [
        one(apps[0], "alice"),
        one(book_id, "bob"),
        one(apps[1], "carol"),
        one(apps[0], "dave"),
        one(unknown, "erin"),
        one(apps[2], "frank"),
    ];
    let refs: Vec<&OneRevocation> = reqs.iter().collect();
    let mut conn = app.db.connect().await;
    let answers = conn
        .transaction(async |c| revoke_many(c, "acme", &refs).await)
        .await
        .unwrap();
    assert_eq!(answers.len(), reqs.len());
    for (i, who) in [(0, "alice"), (2, "carol"), (3, "dave"), (5, "frank")] {
        let row = answers[i].as_ref().unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(row.state.as_str(), "revoking", "{who}");
    }
    // The first caller naming an assignment acts: its record is alice's, not dave's.
    assert_eq!(answers[3].as_ref().unwrap().id, apps[0]);
    let first = app.client("acme").assignment(apps[0]).await;
    assert_eq!(record(&first).3.as_deref(), Some("req-alice"), "{first:?}");
    let third = app.client("acme").assignment(apps[2]).await;
    assert_eq!(record(&third).0, "frank");
    assert_eq!(record(&third).1, "asked by frank");
    assert!(
        matches!(&answers[1], Err(RevocationError::NotRevocable(why)) if why.contains(BOOK)),
        "{:?}",
        answers[1]
    );
    assert!(
        matches!(&answers[4], Err(RevocationError::NotFound(_))),
        "{:?}",
        answers[4]
    );
    assert_eq!(fixtures::held(&app, account).await, held_before - 3);
    assert_eq!(
        ledger_of_book(&app, account).await.0,
        1,
        "the book still held"
    );
    assert_eq!(
        app.client("acme").assignment(book_id).await.state.as_str(),
        "active",
        "the book untouched"
    );
    for id in &apps {
        assert_eq!(
            app.client("acme").final_state(*id).await.state.as_str(),
            "revoked"
        );
    }
}

/// Concurrent `DELETE`s of one asset's licenses go through the revocation combiner: every
/// caller gets 202 and its own revocation record (its request id), the ledger frees each
/// license once, and Apple releases them all.
#[tokio::test]
async fn v1_concurrent_revocations_each_keep_their_callers_record() {
    let w = fixtures::world(
        vec![location(U1, "Library", vec![app(APP, 40)])],
        &[("A", U1)],
    )
    .await;
    let app = &w.app;
    let mut ids = Vec::new();
    for n in 0..30 {
        ids.push(allocate(app, device(&format!("C{n}")), &format!("alloc-{n}")).await);
    }
    for id in &ids {
        app.client("acme").final_state(*id).await;
    }
    assert_eq!(fixtures::held(app, w.accounts[0]).await, 30);
    let answers = futures_util::future::join_all(ids.iter().enumerate().map(|(n, id)| {
        app.req(Method::DELETE, &format!("/v1/spaces/acme/assignments/{id}"))
            .header("x-request-id", format!("revoke-{n}"))
            .send()
    }))
    .await;
    for resp in answers {
        let a: Assignment = read(resp.unwrap(), 202).await;
        assert_eq!(a.state.as_str(), "revoking");
    }
    assert_eq!(fixtures::held(app, w.accounts[0]).await, 0);
    for (n, id) in ids.iter().enumerate() {
        let a = app.client("acme").final_state(*id).await;
        assert_eq!(a.state.as_str(), "revoked");
        assert_eq!(record(&a).3, Some(format!("revoke-{n}")));
    }
    let at_apple = w.sim.location(U1).await.unwrap().assignments.len();
    assert_eq!(at_apple, 0, "Apple released every license");
}
