//! The event feed (issue 15, rule N5) over real HTTP, against PostgreSQL, the Apple simulator
//! and the service's own sequencer: an allocation's `assignment.allocated` then
//! `assignment.active`, in order, with the assignment's versions; revocations with who, why
//! and `notify_on_removal` (V4); sequences gapless as served; a reader following the feed
//! while allocations run never skips an event; long polls; a transaction held open delays its
//! event (and every later one) without losing it; 410 after retention; bad cursors and
//! parameters are 400s; the types filter.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;
use vpp_broker::api::assignments::Allocation;
use vpp_broker::api::events::{Event, EventPage};

use crate::support::eventually::eventually;
use crate::support::fixtures::{self, APP, device};
use crate::support::sim::{app, location};
use crate::support::{Allocated, Client, expect_problem, read};

const U1: &str = "3000000061";

/// `GET …/events?{query}` (asserts 200).
async fn page(api: Client<'_>, query: &str) -> EventPage {
    let resp = api
        .req(Method::GET, &format!("/events?{query}"))
        .send()
        .await
        .unwrap();
    read(resp, 200).await
}

/// Every event after `after` (none: from the oldest kept) up to the end, in pages of
/// `limit`; returns them and the cursor at the end.
async fn read_to_end(
    api: Client<'_>,
    after: Option<&str>,
    extra: &str,
    limit: u32,
) -> (Vec<Event>, String) {
    let mut events = Vec::new();
    let mut cursor = after.map(str::to_owned);
    loop {
        let mut query = format!("limit={limit}{extra}");
        if let Some(c) = &cursor {
            query.push_str(&format!("&after={c}"));
        }
        let p = page(api, &query).await;
        let n = p.events.len();
        events.extend(p.events);
        let same = cursor.as_deref() == Some(p.next.as_str());
        cursor = Some(p.next);
        if n < limit as usize || (n == 0 && same) {
            return (events, cursor.unwrap_or_default());
        }
    }
}

fn of(events: &[Event], assignment: Uuid) -> Vec<&Event> {
    events
        .iter()
        .filter(|e| e.data["assignment_id"] == json!(assignment))
        .collect()
}

fn types(events: &[&Event]) -> Vec<String> {
    events.iter().map(|e| e.type_.clone()).collect()
}

/// Sequences strictly increase by one (gapless as served) from the first.
fn assert_gapless(events: &[Event]) {
    for pair in events.windows(2) {
        assert_eq!(
            pair[1].sequence,
            pair[0].sequence + 1,
            "a gap or a disorder: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
}

#[tokio::test]
async fn an_allocation_is_allocated_then_active_in_order_with_its_versions() {
    let w = fixtures::world(vec![location(U1, "Lib", vec![app(APP, 5)])], &[("A", U1)]).await;
    let api = w.api();
    let id = api.allocated(&device("S1")).await.id();
    api.final_state(id).await;
    let (events, _) = eventually(
        "the allocation's events",
        async || read_to_end(api, None, "", 100).await,
        |(events, _)| of(events, id).len() >= 2,
    )
    .await;
    assert_gapless(&events);
    assert_eq!(events[0].sequence, 1, "the feed starts at 1: {events:?}");
    let mine = of(&events, id);
    assert_eq!(
        types(&mine),
        ["assignment.allocated", "assignment.active"],
        "{mine:?}"
    );
    let (allocated, active) = (mine[0], mine[1]);
    assert!(allocated.sequence < active.sequence);
    assert_eq!(allocated.space, "acme");
    assert_eq!(allocated.api_version, "2026-12-07");
    assert_eq!(allocated.data["state"], "pending");
    assert_eq!(allocated.data["version"], 1);
    assert_eq!(
        allocated.data["subject"],
        json!({"kind": "device", "id": "S1"})
    );
    assert_eq!(allocated.data["asset"]["adam_id"], APP);
    assert_eq!(allocated.data["account_id"], json!(w.accounts[0]));
    assert_eq!(active.data["state"], "active");
    let current = api.assignment(id).await;
    assert_eq!(
        active.data["version"],
        json!(current.version),
        "the active event carries the version of the change that made it active"
    );
    assert!(active.data["version"].as_i64() > allocated.data["version"].as_i64());
    let ids: HashSet<Uuid> = events.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), events.len(), "event ids are unique");
}

#[tokio::test]
async fn a_revocation_says_who_why_and_whether_to_notify_the_user() {
    let w = fixtures::world(vec![location(U1, "Lib", vec![app(APP, 5)])], &[("A", U1)]).await;
    let api = w.api();
    let first = api.allocated(&device("S1")).await.id();
    let second = api.allocated(&device("S2")).await.id();
    api.final_state(first).await;
    api.final_state(second).await;
    let resp = api
        .req(
            Method::DELETE,
            &format!("/assignments/{first}?reason=device%20wiped"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    api.final_state(first).await;
    // The account stops notifying users; the next revocation says so.
    api.update_account(
        w.accounts[0],
        &json!({"settings": {"notify_on_removal": false}}),
    )
    .await;
    let resp = api
        .req(
            Method::DELETE,
            &format!("/assignments/{second}?reason=left"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    api.final_state(second).await;
    let (events, _) = eventually(
        "both revocations' events",
        async || read_to_end(api, None, "", 100).await,
        |(events, _)| of(events, first).len() >= 4 && of(events, second).len() >= 4,
    )
    .await;
    assert_gapless(&events);
    for (id, reason, notify) in [(first, "device wiped", true), (second, "left", false)] {
        let mine = of(&events, id);
        assert_eq!(
            types(&mine),
            [
                "assignment.allocated",
                "assignment.active",
                "assignment.revoking",
                "assignment.revoked"
            ],
            "{mine:?}"
        );
        for e in &mine[2..] {
            assert_eq!(e.data["reason"], reason, "{e:?}");
            assert_eq!(e.data["notify_on_removal"], notify, "{e:?}");
            assert_eq!(e.data["actor"], "test-caller", "who asked: {e:?}");
        }
        assert_eq!(mine[2].data["state"], "revoking");
        assert_eq!(mine[3].data["state"], "revoked");
        let versions: Vec<i64> = mine
            .iter()
            .map(|e| e.data["version"].as_i64().unwrap())
            .collect();
        assert!(
            versions.windows(2).all(|v| v[0] < v[1]),
            "versions grow: {versions:?}"
        );
    }
    // Every activity row about an assignment recorded the version its change set.
    #[derive(diesel::QueryableByName, Debug)]
    struct Missing {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = w.app.db.connect().await;
    let missing: Missing = diesel::sql_query(
        "SELECT count(*) AS n FROM activity_log WHERE assignment_id IS NOT NULL AND version IS NULL",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(missing.n, 0);
}

#[tokio::test]
async fn a_reader_following_the_feed_during_concurrent_allocations_never_skips_an_event() {
    const TASKS: usize = 8;
    const EACH: usize = 15;
    let w = fixtures::world(vec![location(U1, "Lib", vec![app(APP, 500)])], &[("A", U1)]).await;
    let api = w.api();
    let done = Arc::new(AtomicBool::new(false));
    // The reader: reads to the end again and again, from where it stopped, while the
    // allocations run; then once more after they finished.
    let reader = {
        let base = w.app.base_url.clone();
        let http = w.app.http.clone();
        let done = done.clone();
        let token = crate::support::admin_token();
        tokio::spawn(async move {
            let mut seen: Vec<Event> = Vec::new();
            let mut cursor: Option<String> = None;
            let mut last_round = false;
            loop {
                let mut url = format!("{base}/v1/spaces/acme/events?limit=7");
                if let Some(c) = &cursor {
                    url.push_str(&format!("&after={c}"));
                }
                let p: EventPage = read(
                    http.get(&url).bearer_auth(&token).send().await.unwrap(),
                    200,
                )
                .await;
                let n = p.events.len();
                seen.extend(p.events);
                cursor = Some(p.next);
                if n < 7 {
                    if last_round {
                        return seen;
                    }
                    if AtomicBool::load(&done, Ordering::SeqCst) {
                        last_round = true;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let base = w.app.base_url.clone();
        let http = w.app.http.clone();
        let token = crate::support::admin_token();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..EACH {
                let resp = http
                    .post(format!("{base}/v1/spaces/acme/assignments"))
                    .bearer_auth(&token)
                    .json(&device(&format!("T{t}-{i}")))
                    .send()
                    .await
                    .unwrap();
                ids.push(read::<Allocation>(resp, 201).await.id());
            }
            ids
        }));
    }
    let mut allocated: HashSet<Uuid> = HashSet::new();
    for t in tasks {
        allocated.extend(t.await.unwrap());
    }
    // Every allocation's event is in the feed before the reader takes its last look.
    eventually(
        "every allocation's event",
        async || {
            read_to_end(api, None, "&types=assignment.allocated", 1000)
                .await
                .0
                .len()
        },
        |n| *n >= TASKS * EACH,
    )
    .await;
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();
    let (full, _) = read_to_end(api, None, "", 1000).await;
    assert_gapless(&full);
    assert!(seen.len() <= full.len());
    let seen_ids: Vec<(i64, Uuid)> = seen.iter().map(|e| (e.sequence, e.id)).collect();
    let full_ids: Vec<(i64, Uuid)> = full.iter().map(|e| (e.sequence, e.id)).collect();
    assert_eq!(
        seen_ids,
        full_ids[..seen_ids.len()],
        "the reader saw exactly a prefix of the final feed: same ids, same order, no gap, \
         no duplicate"
    );
    let allocated_seen: HashSet<Uuid> = seen
        .iter()
        .filter(|e| e.type_ == "assignment.allocated")
        .map(|e| e.data["assignment_id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(allocated_seen, allocated, "the reader saw every allocation");
}

#[tokio::test]
async fn a_long_poll_answers_when_an_event_arrives_and_times_out_empty_otherwise() {
    let w = fixtures::world(vec![location(U1, "Lib", vec![app(APP, 5)])], &[("A", U1)]).await;
    let api = w.api();
    // Let the setup's own events (the account's) reach the feed: nothing to poll for.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, end) = read_to_end(api, None, "", 100).await;
    // Nothing happens: the poll waits its time and answers an empty page at the same place.
    let started = Instant::now();
    let quiet = page(api, &format!("after={end}&wait=1")).await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(quiet.events.is_empty(), "{:?}", quiet.events);
    assert_eq!(quiet.next, end, "an empty page keeps the position");

    let poll = {
        let url = format!(
            "{}/v1/spaces/acme/events?after={end}&wait=25",
            w.app.base_url
        );
        let http = w.app.http.clone();
        let token = crate::support::admin_token();
        tokio::spawn(async move {
            let started = Instant::now();
            let resp = http.get(&url).bearer_auth(&token).send().await.unwrap();
            let p: EventPage = read(resp, 200).await;
            (p, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = api.allocated(&device("S1")).await.id();
    let (p, took) = poll.await.unwrap();
    assert!(
        took < Duration::from_secs(10),
        "the poll answered when the event came, not at its end: {took:?}"
    );
    assert_eq!(p.events[0].type_, "assignment.allocated", "{:?}", p.events);
    assert_eq!(p.events[0].data["assignment_id"], json!(id));
    assert_ne!(p.next, end);
}

#[tokio::test]
async fn a_transaction_held_open_delays_its_event_and_every_later_one_but_loses_none() {
    let w = fixtures::world(vec![location(U1, "Lib", vec![app(APP, 5)])], &[("A", U1)]).await;
    let api = w.api();
    let (_, end) = read_to_end(api, None, "", 100).await;
    // A change whose transaction stays open (its xid is older than the allocation's).
    let mut held = w.app.db.connect().await;
    held.batch_execute(
        "BEGIN; INSERT INTO activity_log (space_id, actor, action, details)
                VALUES ('acme', 'held', 'account.status_changed', '{\"to\": \"held\"}')",
    )
    .await
    .unwrap();
    let id = api.allocated(&device("S1")).await.id();
    // Nothing to poll for: the point is that nothing appears while the transaction is open.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (waited, _) = read_to_end(api, Some(&end), "", 100).await;
    assert!(
        of(&waited, id).is_empty(),
        "an event was served before an older transaction finished: {waited:?}"
    );
    held.batch_execute("COMMIT").await.unwrap();
    let (events, _) = eventually(
        "both events after the commit",
        async || read_to_end(api, Some(&end), "", 100).await,
        |(events, _)| {
            !of(events, id).is_empty() && events.iter().any(|e| e.data["actor"] == "held")
        },
    )
    .await;
    let held_at = events
        .iter()
        .position(|e| e.type_ == "account.status_changed" && e.data["actor"] == "held")
        .expect("the held transaction's event, once it committed");
    let allocated_at = events
        .iter()
        .position(|e| e.type_ == "assignment.allocated" && e.data["assignment_id"] == json!(id))
        .expect("the allocation's event");
    assert!(
        held_at < allocated_at,
        "the older transaction's event comes first: {events:?}"
    );
}

#[tokio::test]
async fn a_change_whose_writer_gave_no_hint_still_becomes_an_event() {
    // The sequencer waits for hints that writers give after their commits; a row written by a
    // transaction that gave none (here: plain SQL, not the service) is found by its fallback
    // round.
    let w = fixtures::world(vec![location(U1, "Lib", vec![app(APP, 5)])], &[("A", U1)]).await;
    let api = w.api();
    let (_, end) = read_to_end(api, None, "", 100).await;
    let mut conn = w.app.db.connect().await;
    conn.batch_execute(
        "INSERT INTO activity_log (space_id, actor, action, details)
              VALUES ('acme', 'unhinted', 'account.status_changed', '{\"to\": \"x\"}')",
    )
    .await
    .unwrap();
    eventually(
        "the unhinted change's event",
        async || read_to_end(api, Some(&end), "", 100).await,
        |(events, _)| events.iter().any(|e| e.data["actor"] == "unhinted"),
    )
    .await;
}

#[tokio::test]
async fn a_cursor_retention_passed_answers_410_with_where_to_resume() {
    let w = fixtures::world(vec![location(U1, "Lib", vec![app(APP, 5)])], &[("A", U1)]).await;
    let api = w.api();
    for serial in ["S1", "S2", "S3"] {
        api.allocated(&device(serial)).await;
    }
    let (events, end) = eventually(
        "the allocations' events",
        async || read_to_end(api, None, "&types=assignment.allocated", 100).await,
        |(events, _)| events.len() >= 3,
    )
    .await;
    let early = page(api, "limit=1").await.next;
    // Retention forgets the first two allocations' events (and everything numbered before).
    let mut conn = w.app.db.connect().await;
    diesel::sql_query(format!(
        "UPDATE events SET recorded_at = now() - interval '31 days' WHERE sequence <= {}",
        events[1].sequence
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let forgotten = vpp_broker::events::forget_old(&mut conn, Duration::from_secs(30 * 86_400))
        .await
        .unwrap();
    assert_eq!(forgotten as i64, events[1].sequence);

    let resp = api
        .req(Method::GET, &format!("/events?after={early}"))
        .send()
        .await
        .unwrap();
    let problem = expect_problem(resp, 410, "cursor-expired").await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("current state"), "{detail}");
    let resume = problem["cursor"]
        .as_str()
        .expect("the problem gives a cursor");
    // Resuming from the problem's cursor works (the current end: nothing before it again).
    let from_resume = page(api, &format!("after={resume}")).await;
    assert!(
        from_resume
            .events
            .iter()
            .all(|e| e.sequence > events[2].sequence),
        "{:?}",
        from_resume.events
    );
    // A cursor at or after the oldest kept still reads (`page` asserts 200); so does a read
    // from the start, which begins at the oldest kept.
    page(api, &format!("after={end}")).await;
    let from_start = page(api, "").await;
    assert_eq!(from_start.events[0].sequence, events[1].sequence + 1);
}

#[tokio::test]
async fn the_types_filter_serves_only_those_types_and_moves_past_the_others() {
    let w = fixtures::world(vec![location(U1, "Lib", vec![app(APP, 5)])], &[("A", U1)]).await;
    let api = w.api();
    let id = api.allocated(&device("S1")).await.id();
    api.final_state(id).await;
    let (active, next) = eventually(
        "the active event",
        async || read_to_end(api, None, "&types=assignment.active,assignment.failed", 100).await,
        |(events, _)| !events.is_empty(),
    )
    .await;
    assert_eq!(
        types(&active.iter().collect::<Vec<_>>()),
        ["assignment.active"]
    );
    assert_eq!(active[0].data["assignment_id"], json!(id));
    // The filtered reader's position is past the allocation it skipped: an unfiltered read
    // from there finds nothing older.
    let rest = page(api, &format!("after={next}")).await;
    assert!(
        rest.events.iter().all(|e| e.sequence > active[0].sequence),
        "{:?}",
        rest.events
    );
}

#[tokio::test]
async fn bad_cursors_types_limits_and_waits_are_400s() {
    let w = fixtures::world(vec![location(U1, "Lib", vec![app(APP, 5)])], &[("A", U1)]).await;
    let api = w.api();
    w.app.space("other").await;
    let other = w.app.client("other");
    let other_cursor = page(other, "").await.next;
    let forged = |key: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!(r#"{{"l":"events:acme","k":{key}}}"#))
    };
    for query in [
        format!("after={other_cursor}"),
        "after=not-a-cursor".into(),
        format!("after={}", forged("999999")),
        format!("after={}", forged("-1")),
        format!("after={}", forged("\"1\"")),
        "types=assignment.allocated,nope".into(),
        "types=".into(),
        "limit=0".into(),
        "limit=1001".into(),
        "wait=31".into(),
        "wait=-1".into(),
        "limit=ten".into(),
        "since=yesterday".into(),
    ] {
        let resp = api
            .req(Method::GET, &format!("/events?{query}"))
            .send()
            .await
            .unwrap();
        expect_problem(resp, 400, "invalid-parameter").await;
    }
    // The cursor of an empty feed is usable.
    let empty_next = page(other, "").await.next;
    assert_eq!(
        page(other, &format!("after={empty_next}")).await.next,
        empty_next
    );
    // Another space's feed needs a grant for it.
    let token = crate::support::token("licenses:read", &["other"]);
    let resp = w
        .app
        .req_as(Method::GET, "/v1/spaces/acme/events", &token)
        .send()
        .await
        .unwrap();
    assert!(
        [403, 404].contains(&resp.status().as_u16()),
        "{}",
        resp.status()
    );
}

#[tokio::test]
async fn one_sequencer_at_a_time_across_replicas_and_each_change_is_one_event() {
    let w = fixtures::world(vec![location(U1, "Lib", vec![app(APP, 5)])], &[("A", U1)]).await;
    let api = w.api();
    // Another replica's sequencer holds the lock (a session lock here, for as long as the test
    // says): this process's rounds find it busy and append nothing.
    let mut other = w.app.db.connect().await;
    diesel::sql_query(format!(
        "SELECT pg_advisory_lock({})",
        vpp_broker::ledger::outbox::SEQUENCER_LOCK
    ))
    .execute(&mut other)
    .await
    .unwrap();
    let (_, end) = read_to_end(api, None, "", 100).await;
    let id = api.allocated(&device("S1")).await.id();
    let mut conn = w.app.db.connect().await;
    let round = vpp_broker::events::sequence_once(&mut conn).await.unwrap();
    assert!(round.busy, "{round:?}");
    // Nothing to poll for: while the lock is held elsewhere no event may appear.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (during, _) = read_to_end(api, Some(&end), "", 100).await;
    assert!(of(&during, id).is_empty(), "{during:?}");
    diesel::sql_query(format!(
        "SELECT pg_advisory_unlock({})",
        vpp_broker::ledger::outbox::SEQUENCER_LOCK
    ))
    .execute(&mut other)
    .await
    .unwrap();
    // Both sequencers (the service's and this one) now race for the rows: each row becomes
    // one event.
    for _ in 0..5 {
        vpp_broker::events::sequence_once(&mut conn).await.unwrap();
    }
    api.final_state(id).await;
    let (events, _) = eventually(
        "the allocation's events",
        async || read_to_end(api, Some(&end), "", 100).await,
        |(events, _)| of(events, id).len() >= 2,
    )
    .await;
    assert_eq!(
        types(&of(&events, id)),
        ["assignment.allocated", "assignment.active"]
    );
    #[derive(diesel::QueryableByName, Debug)]
    struct Twice {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let twice: Twice = diesel::sql_query(
        "SELECT count(*) AS n FROM (SELECT activity_id FROM events
          GROUP BY activity_id HAVING count(*) > 1) d",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(twice.n, 0, "an activity row became two events");
}

#[tokio::test]
async fn an_event_reaches_a_waiting_reader_soon_after_its_commit() {
    let w = fixtures::world(vec![location(U1, "Lib", vec![app(APP, 50)])], &[("A", U1)]).await;
    let api = w.api();
    let mut latencies = Vec::new();
    for i in 0..10 {
        let (_, end) = read_to_end(api, None, "&types=assignment.allocated", 1000).await;
        let poll = {
            let url = format!(
                "{}/v1/spaces/acme/events?after={end}&types=assignment.allocated&wait=20",
                w.app.base_url
            );
            let http = w.app.http.clone();
            let token = crate::support::admin_token();
            tokio::spawn(async move {
                let resp = http.get(&url).bearer_auth(&token).send().await.unwrap();
                let page: EventPage = read(resp, 200).await;
                (page, Instant::now())
            })
        };
        // Let the poll park first (nothing to poll for).
        tokio::time::sleep(Duration::from_millis(100)).await;
        api.allocated(&device(&format!("L{i}"))).await;
        let committed = Instant::now();
        let (page, arrived) = poll.await.unwrap();
        assert_eq!(page.events.len(), 1, "{:?}", page.events);
        latencies.push(arrived.saturating_duration_since(committed));
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    eprintln!("commit → event at a waiting reader: p50 {p50:?}, all {latencies:?}");
    // The sequencer idles 30 ms between rounds: alone, p50 is about 25-50 ms (debug build,
    // busy 2-core machine). But the horizon is the *cluster's* oldest running transaction, and
    // the other tests' databases share the cluster (the held-transaction test, migrations,
    // storms): run among them, p50 reached 700 ms. The bound says "woken by the event, not by
    // the poll's 20 s end"; docs/events.md gives the figure measured alone.
    assert!(p50 < Duration::from_secs(3), "p50 {p50:?}: {latencies:?}");
    assert!(
        latencies.iter().all(|l| *l < Duration::from_secs(15)),
        "{latencies:?}"
    );
}

#[tokio::test]
async fn waiting_for_a_license_is_waiting_then_wait_served_or_wait_ended() {
    let w = fixtures::world(vec![location(U1, "Lib", vec![app(APP, 1)])], &[("A", U1)]).await;
    let api = w.api();
    let holder = api.allocated(&device("S1")).await.id();
    api.final_state(holder).await;
    let wait = |serial: &str| {
        json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": serial},
               "wait_for_license": true})
    };
    let first: Allocation = read(api.allocate(&wait("W1")).await, 202).await;
    let second: Allocation = read(api.allocate(&wait("W2")).await, 202).await;
    let (first, second) = (first.id(), second.id());
    // W2 gives up; then S1's license frees and W1 is served.
    let resp = api.revoke(second, "?reason=gave%20up").await;
    assert_eq!(resp.status(), 200);
    let resp = api.revoke(holder, "?reason=left").await;
    assert_eq!(resp.status(), 202);
    let (events, _) = eventually(
        "the wait-list's events",
        async || read_to_end(api, None, "", 100).await,
        |(events, _)| of(events, first).len() >= 3 && of(events, second).len() >= 2,
    )
    .await;
    assert_gapless(&events);
    let served = of(&events, first);
    assert_eq!(
        types(&served)[..3],
        [
            "assignment.waiting",
            "assignment.wait_served",
            "assignment.active"
        ],
        "{served:?}"
    );
    assert_eq!(served[0].data["state"], "waiting");
    assert_eq!(served[1].data["state"], "pending");
    assert!(served[1].data["version"].as_i64() > served[0].data["version"].as_i64());
    let ended = of(&events, second);
    assert_eq!(
        types(&ended),
        ["assignment.waiting", "assignment.wait_ended"],
        "{ended:?}"
    );
    assert_eq!(ended[1].data["state"], "revoked");
    assert_eq!(ended[1].data["reason"], "gave up");
}
