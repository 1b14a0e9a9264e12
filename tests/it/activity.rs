//! `GET /v1/spaces/{space}/activity` over real HTTP: every filter returns exactly the rows of the
//! whole log it matches, a license's rows (allocation, Apple's answer, revocation) all carry its
//! subject, pages run newest first without gaps or duplicates, `since`/`until` hold at their
//! edges even when stamps and ids disagree a little, the action vocabulary covers every writer,
//! and bad input is a 400 (another space's log a 404).

use std::collections::HashSet;

use diesel_async::RunQueryDsl;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;
use vpp_broker::api::activity::{ActivityItem, ActivityPage};
use vpp_broker::api::assignments::Allocation;
use vpp_broker::ledger::activity::ActivityAction;

use crate::support::fixtures::{self, APP, device};
use crate::support::sim::{app, location};
use crate::support::{Allocated, Client, TestApp, expect_problem, read, token};

const U1: &str = "3000000041";

/// Every page of `GET …/activity?{query}` with `limit`, in order; asserts ids strictly fall
/// (newest first, no duplicates) and that only the last page lacks a cursor.
async fn walk(api: Client<'_>, query: &str, limit: u32) -> Vec<ActivityItem> {
    let mut items: Vec<ActivityItem> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/activity?limit={limit}");
        if !query.is_empty() {
            path = format!("{path}&{query}");
        }
        if let Some(c) = &cursor {
            path = format!("{path}&cursor={c}");
        }
        let page: ActivityPage = api.get(&path).await;
        assert!(page.items.len() <= limit as usize);
        items.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    for pair in items.windows(2) {
        assert!(pair[0].id > pair[1].id, "not newest first: {pair:?}");
    }
    items
}

fn ids(items: &[ActivityItem]) -> Vec<i64> {
    items.iter().map(|i| i.id).collect()
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

#[tokio::test]
async fn activity_filters_return_exactly_the_matching_rows_and_a_subject_its_whole_story() {
    let w = fixtures::world(
        vec![location(U1, "Library", vec![app(APP, 5)])],
        &[("A", U1)],
    )
    .await;
    let (api, account) = (w.api(), w.accounts[0]);
    let s1 = allocate(&w.app, device("S1"), "req-s1").await;
    let s2 = allocate(
        &w.app,
        json!({"asset": {"adam_id": APP}, "subject": {"kind": "user", "id": "u-7"}}),
        "req-u7",
    )
    .await;
    assert_eq!(api.final_state(s1).await.state.as_str(), "active");
    assert_eq!(api.final_state(s2).await.state.as_str(), "active");
    let resp = api
        .req(
            Method::DELETE,
            &format!("/assignments/{s1}?reason=device%20wiped"),
        )
        .header("x-request-id", "req-revoke")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(api.final_state(s1).await.state.as_str(), "revoked");

    let all = walk(api, "", 200).await;
    assert_eq!(
        ids(&walk(api, "", 2).await),
        ids(&all),
        "small pages, same log"
    );

    // The subject filter finds the license's whole story, newest first.
    let story = walk(api, "subject_kind=device&subject_id=S1", 50).await;
    let actions: Vec<&str> = story.iter().map(|i| i.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "assignment.revoked",
            "assignment.revoke_requested",
            "assignment.activated",
            "assignment.allocated"
        ],
        "{story:?}"
    );
    for item in &story {
        let subject = item.subject.as_ref().unwrap();
        assert_eq!(
            (subject.kind.as_str(), subject.id.as_str()),
            ("device", "S1")
        );
        assert_eq!(item.assignment_id, Some(s1));
        assert_eq!(item.account_id, Some(account));
        assert_eq!(item.adam_id.as_deref(), Some(APP));
    }
    let allocated = &story[3];
    assert_eq!(allocated.rule.as_deref(), Some("priority"));
    assert_eq!(allocated.request_id.as_deref(), Some("req-s1"));
    assert_eq!(allocated.actor, "test-caller");
    assert!(allocated.details.get("skipped").is_some(), "{allocated:?}");
    assert_eq!(story[1].details["reason"], "device wiped");
    assert_eq!(story[1].request_id.as_deref(), Some("req-revoke"));
    assert_eq!(story[0].actor, "system");
    assert!(story[0].apple_event_id.is_some(), "{:?}", story[0]);

    // Each filter: exactly the rows of the whole log it matches.
    type Pred = Box<dyn Fn(&ActivityItem) -> bool>;
    let subject_is = |kind: &'static str, id: &'static str| -> Pred {
        Box::new(move |i: &ActivityItem| {
            i.subject
                .as_ref()
                .is_some_and(|s| s.kind.as_str() == kind && s.id == id)
        })
    };
    let cases: Vec<(String, Pred)> = vec![
        (
            format!("account_id={account}"),
            Box::new(move |i| i.account_id == Some(account)),
        ),
        (
            format!("adam_id={APP}"),
            Box::new(|i| i.adam_id.as_deref() == Some(APP)),
        ),
        (
            "pricing_param=STDQ".into(),
            Box::new(|i| i.pricing_param.as_deref() == Some("STDQ")),
        ),
        (
            format!("adam_id={APP}&pricing_param=PLUS"),
            Box::new(|_| false),
        ),
        (
            "subject_kind=user&subject_id=u-7".into(),
            subject_is("user", "u-7"),
        ),
        (
            "subject_kind=device&subject_id=never-seen".into(),
            Box::new(|_| false),
        ),
        (
            "action=assignment.allocated".into(),
            Box::new(|i| i.action == "assignment.allocated"),
        ),
        (
            "action=account.added".into(),
            Box::new(|i| i.action == "account.added"),
        ),
        ("actor=system".into(), Box::new(|i| i.actor == "system")),
        (
            "actor=test-caller".into(),
            Box::new(|i| i.actor == "test-caller"),
        ),
        (
            "request_id=req-u7".into(),
            Box::new(|i| i.request_id.as_deref() == Some("req-u7")),
        ),
        (
            format!("actor=system&account_id={account}&action=assignment.activated"),
            Box::new(move |i| {
                i.actor == "system"
                    && i.account_id == Some(account)
                    && i.action == "assignment.activated"
            }),
        ),
    ];
    for (query, pred) in cases {
        let got = walk(api, &query, 2).await;
        let want: Vec<i64> = all.iter().filter(|i| pred(i)).map(|i| i.id).collect();
        assert_eq!(ids(&got), want, "{query}");
    }
    // The filters are not vacuous here.
    assert_eq!(walk(api, "request_id=req-u7", 50).await.len(), 1);
    assert_eq!(walk(api, "action=account.added", 50).await.len(), 1);
    assert_eq!(walk(api, "action=assignment.allocated", 50).await.len(), 2);
}

/// Apple's 9709 on an association: the failure, the re-allocation from the next account and
/// the replacement's activation are all found by the device's subject.
#[tokio::test]
async fn activity_of_a_reallocated_license_is_found_by_its_subject() {
    use vpp_broker::apple::types::{AssetKey, PricingParam};
    const U2: &str = "3000000042";
    let w = fixtures::world(
        vec![
            location(U1, "Library A", vec![app(APP, 10)]),
            location(U2, "Library B", vec![app(APP, 10)]),
        ],
        &[("A", U1), ("B", U2)],
    )
    .await;
    let api = w.api();
    // Apple has none of A's licenses left (a refund the ledger has not seen yet).
    w.sim
        .set_asset_total(U1, &AssetKey::new(APP, PricingParam::Stdq), 0)
        .await
        .unwrap();
    let resp = api
        .req(Method::POST, "/assignments?wait=20")
        .json(&device("W1"))
        .send()
        .await
        .unwrap();
    let body: Allocation = read(resp, 201).await;
    let live = body.id();
    let failed = body.replaces.expect("re-allocated after 9709");
    let story = walk(api, "subject_kind=device&subject_id=W1", 50).await;
    let of = |id: Uuid| -> Vec<&str> {
        story
            .iter()
            .filter(|i| i.assignment_id == Some(id))
            .map(|i| i.action.as_str())
            .collect()
    };
    assert!(of(failed).contains(&"assignment.allocated"), "{story:?}");
    assert!(of(failed).contains(&"assignment.reallocated"), "{story:?}");
    assert_eq!(
        of(live),
        ["assignment.activated", "assignment.allocated"],
        "{story:?}"
    );
    assert!(
        story
            .iter()
            .all(|i| i.subject.as_ref().is_some_and(|s| s.id == "W1"))
    );
    let reallocated = story
        .iter()
        .find(|i| i.action == "assignment.reallocated")
        .unwrap();
    assert_eq!(reallocated.account_id, Some(w.accounts[0]));
    assert!(reallocated.apple_event_id.is_some(), "{reallocated:?}");
    // Every row about either assignment is in the story.
    let all = walk(api, "", 200).await;
    let about: Vec<i64> = all
        .iter()
        .filter(|i| i.assignment_id == Some(failed) || i.assignment_id == Some(live))
        .map(|i| i.id)
        .collect();
    assert_eq!(ids(&story), about);
}

/// Inserts `n` rows into space `space`'s log, one a minute from now on, each but every seventh
/// stamped up to 100 s off its place: ids and stamps disagree a little, as when transactions
/// overlap (by less than `CLOCK_SLACK`, which the time range relies on).
async fn insert_rows(app: &TestApp, space: &str, n: i32) {
    let mut conn = app.db.connect().await;
    diesel::sql_query(
        "INSERT INTO activity_log (space_id, actor, action, occurred_at, details)
         SELECT $1, 'gen-' || (i % 3), 'space.updated',
                now() + i * interval '1 minute'
                  + CASE WHEN i % 7 = 0 THEN interval '0' ELSE (i % 5 - 2) * interval '50 seconds' END,
                jsonb_build_object('i', i)
           FROM generate_series(1, $2) AS i ORDER BY i",
    )
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Integer, _>(n)
    .execute(&mut conn)
    .await
    .unwrap();
}

#[tokio::test]
async fn activity_pages_newest_first_without_gaps_and_time_ranges_hold_at_their_edges() {
    let app = TestApp::start().await;
    app.space("acme").await;
    app.space("other").await;
    insert_rows(&app, "acme", 150).await;
    insert_rows(&app, "other", 40).await;
    let api = app.client("acme");

    let all = walk(api, "", 200).await;
    // 150 generated rows and the space's creation.
    assert_eq!(all.len(), 151);
    assert!(all.iter().all(|i| i.details.is_object()));
    for limit in [1, 7, 50] {
        assert_eq!(ids(&walk(api, "", limit).await), ids(&all), "limit {limit}");
    }
    let distinct: HashSet<i64> = ids(&all).into_iter().collect();
    assert_eq!(distinct.len(), all.len());

    // Edges on row stamps: `since` inclusive, `until` exclusive; a stamp out of id order is
    // still in or out by its stamp.
    let stamps: Vec<_> = all.iter().map(|i| i.occurred_at).collect();
    let mut sorted = stamps.clone();
    sorted.sort();
    let (a, b) = (sorted[20], sorted[90]);
    let enc =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    for (query, lo, hi) in [
        (
            format!("since={}&until={}", enc(a), enc(b)),
            Some(a),
            Some(b),
        ),
        (format!("since={}", enc(a)), Some(a), None),
        (format!("until={}", enc(b)), None, Some(b)),
        (format!("since={0}&until={0}", enc(a)), Some(a), Some(a)),
        (
            "since=2030-01-01T00:00:00Z".to_owned(),
            Some("2030-01-01T00:00:00Z".parse().unwrap()),
            None,
        ),
        (
            "until=2020-01-01T00:00:00%2B02:00".to_owned(),
            None,
            Some("2020-01-01T00:00:00+02:00".parse().unwrap()),
        ),
    ] {
        let want: Vec<i64> = all
            .iter()
            .filter(|i| lo.is_none_or(|lo| i.occurred_at >= lo))
            .filter(|i| hi.is_none_or(|hi| i.occurred_at < hi))
            .map(|i| i.id)
            .collect();
        assert_eq!(ids(&walk(api, &query, 9).await), want, "{query}");
    }
    let window = walk(api, &format!("since={}&until={}", enc(a), enc(b)), 200).await;
    assert_eq!(window.len(), 70, "stamps are distinct: 70 rows in [a, b)");
    let gen1 = walk(api, &format!("actor=gen-1&since={}", enc(a)), 4).await;
    assert!(!gen1.is_empty());
    assert!(
        gen1.iter()
            .all(|i| i.actor == "gen-1" && i.occurred_at >= a)
    );
}

#[tokio::test]
async fn activity_rejects_bad_input_and_hides_other_spaces() {
    let app = TestApp::start().await;
    app.space("acme").await;
    app.space("other").await;
    insert_rows(&app, "other", 5).await;
    let get = async |path: &str| {
        app.req(Method::GET, &format!("/v1/spaces/acme/activity{path}"))
            .send()
            .await
            .unwrap()
    };
    let other: ActivityPage = app.get_as("/v1/spaces/other/activity?limit=2").await;
    let other_cursor = other.next_cursor.expect("a full page has a cursor");

    for bad in [
        "?foo=1".to_owned(),
        "?subject=device:S1".to_owned(),
        "?since=yesterday".to_owned(),
        "?until=2026-13-01T00:00:00Z".to_owned(),
        "?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z".to_owned(),
        "?cursor=%25%25%25".to_owned(),
        "?cursor=eyJsIjoiYWN0aXZpdHk6YWNtZSIsImsiOiJ4In0".to_owned(),
        format!("?cursor={other_cursor}"),
        "?subject_kind=device".to_owned(),
        "?subject_id=S1".to_owned(),
        "?subject_kind=tablet&subject_id=S1".to_owned(),
        "?action=assignment.exploded".to_owned(),
        "?account_id=not-a-uuid".to_owned(),
        "?adam_id=Keynote".to_owned(),
        "?pricing_param=stdq".to_owned(),
        "?limit=0".to_owned(),
        "?limit=201".to_owned(),
    ] {
        let problem = expect_problem(get(&bad).await, 400, "invalid-parameter").await;
        assert!(problem["detail"].is_string(), "{bad}: {problem}");
    }
    // The bad cursor is the one that base64url-decodes to the right list with a string key.
    assert_eq!(
        String::from_utf8(
            base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                "eyJsIjoiYWN0aXZpdHk6YWNtZSIsImsiOiJ4In0"
            )
            .unwrap()
        )
        .unwrap(),
        r#"{"l":"activity:acme","k":"x"}"#
    );

    // A caller granted only acme does not see that other exists; no one sees a missing space.
    let acme_only = token("licenses:read", &["acme"]);
    let resp = app
        .req_as(Method::GET, "/v1/spaces/other/activity", &acme_only)
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not-found").await;
    let resp = app
        .req(Method::GET, "/v1/spaces/nowhere/activity")
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not-found").await;
    // The caller's own space answers, and holds none of other's rows.
    let resp = app
        .req_as(Method::GET, "/v1/spaces/acme/activity", &acme_only)
        .send()
        .await
        .unwrap();
    let page: ActivityPage = read(resp, 200).await;
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].action, "space.created");
}

/// Rows written before every writer named the subject get it from their assignment when the
/// migration runs (its `up.sql` is idempotent, so running it again here replays the backfill).
#[tokio::test]
async fn activity_migration_backfills_the_subject_of_older_license_rows() {
    use diesel_async::SimpleAsyncConnection;
    let app = TestApp::start().await;
    app.space("acme").await;
    let mut conn = app.db.connect().await;
    conn.batch_execute(
        "INSERT INTO subjects (id, space_id, kind, external_id)
         VALUES ('00000000-0000-0000-0000-0000000000a1', 'acme', 'device', 'OLD-1');
         INSERT INTO assignments (id, space_id, account_id, adam_id, pricing_param, subject_id,
                                  license_type, rule, requested_by)
         VALUES ('00000000-0000-0000-0000-0000000000b1', 'acme',
                 '00000000-0000-0000-0000-000000000001', '408709785', 'STDQ',
                 '00000000-0000-0000-0000-0000000000a1', 'device', 'priority', 'mdm');
         INSERT INTO activity_log (space_id, actor, action, assignment_id, subject, adam_id,
                                   pricing_param)
         VALUES ('acme', 'mdm', 'assignment.allocated', '00000000-0000-0000-0000-0000000000b1',
                 'device:OLD-1', '408709785', 'STDQ'),
                ('acme', 'system', 'assignment.activated',
                 '00000000-0000-0000-0000-0000000000b1', NULL, '408709785', 'STDQ'),
                ('acme', 'mdm', 'assignment.revoke_requested',
                 '00000000-0000-0000-0000-0000000000b1', NULL, '408709785', 'STDQ');",
    )
    .await
    .unwrap();
    let api = app.client("acme");
    let query = "subject_kind=device&subject_id=OLD-1";
    assert_eq!(
        walk(api, query, 50).await.len(),
        1,
        "before: only the allocation"
    );
    conn.batch_execute(include_str!(
        "../../migrations/2026-12-06-000403_activity_subjects/up.sql"
    ))
    .await
    .unwrap();
    let story = walk(api, query, 50).await;
    let actions: Vec<&str> = story.iter().map(|i| i.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "assignment.revoke_requested",
            "assignment.activated",
            "assignment.allocated"
        ]
    );
    // A row about no assignment keeps no subject.
    let created = walk(api, "action=space.created", 50).await;
    assert_eq!(created.len(), 1);
    assert!(created[0].subject.is_none());
}

/// The action vocabulary is the closed list of what the code writes: every action literal in
/// `Activity::new(…)` calls, in `INSERT INTO activity_log` statements and in the settlement
/// log calls is an [`ActivityAction`], and every [`ActivityAction`] is written somewhere (as a
/// literal, or named by its variant outside its definition).
#[test]
fn activity_actions_cover_every_writer() {
    let known: HashSet<&str> = ActivityAction::ALL.iter().map(|a| a.as_str()).collect();
    let by_variant: std::collections::HashMap<String, &str> = ActivityAction::ALL
        .iter()
        .map(|a| (format!("{a:?}"), a.as_str()))
        .collect();
    let mut written = HashSet::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![root];
    let prefixes = [
        "space.",
        "account.",
        "accounts.",
        "policy.",
        "apple.",
        "assignment.",
        "sync.",
        "asset.",
        "plan.",
        "webhook.",
    ];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("ledger/activity.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Writers that name the action by its variant (`ActivityAction::SyncFinished`).
            for (at, _) in text.match_indices("ActivityAction::") {
                let rest = &text[at + "ActivityAction::".len()..];
                let len = rest
                    .find(|c: char| !c.is_ascii_alphanumeric())
                    .unwrap_or(rest.len());
                if let Some(action) = by_variant.get(&rest[..len]) {
                    written.insert((*action).to_owned());
                }
            }
            if !text.contains("Activity::new(") && !text.contains("INSERT INTO activity_log") {
                continue;
            }
            // Quoted literals ('…' in SQL, "…" in Rust) that look like actions.
            let bytes = text.as_bytes();
            for (start, &open) in bytes.iter().enumerate() {
                if open != b'"' && open != b'\'' {
                    continue;
                }
                let rest = &text[start + 1..];
                let len = rest
                    .find(|c: char| !(c.is_ascii_lowercase() || c == '.' || c == '_'))
                    .unwrap_or(rest.len());
                let literal = &rest[..len];
                if rest.as_bytes().get(len) == Some(&open)
                    && prefixes.iter().any(|p| literal.starts_with(p))
                {
                    written.insert(literal.to_owned());
                }
            }
        }
    }
    let unknown: Vec<_> = written
        .iter()
        .filter(|w| !known.contains(w.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "actions missing from ActivityAction: {unknown:?}"
    );
    let unwritten: Vec<_> = known.iter().filter(|k| !written.contains(**k)).collect();
    assert!(
        unwritten.is_empty(),
        "ActivityAction values no writer uses: {unwritten:?}"
    );
}
