//! Notifications (issue 15, rules N1, N2) against PostgreSQL, the Apple simulator and the API
//! over real HTTP: usage crossings up and down raise and clear each notification once (also
//! with several evaluations at once, as replicas run them); an exhausted asset and its return;
//! token notices on the simulator's revoked, not-owned, expired, throttled and expiring tokens,
//! each with its action; each raise and clear is an event of the feed; the notifier runs by
//! itself in `serve`; the list's filters, acknowledging, and bad input.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use diesel_async::RunQueryDsl;
use reqwest::Method;
use serde_json::Value;
use uuid::Uuid;
use vpp_broker::api::notifications::{Notification, NotificationPage};
use vpp_broker::apple::types::MdmInfo;
use vpp_broker::apple_sim::{FailRule, FaultsPatch, TokenStatus};
use vpp_broker::ledger::notices::NoticeRow;
use vpp_broker::notices::{self, Round};

use crate::support::app::{Options, fast_dispatch, token};
use crate::support::eventually::eventually;
use crate::support::fixtures::{self, APP, device};
use crate::support::sim::{app, location};
use crate::support::{Allocated, Client, TestApp, expect_problem, read};

const U1: &str = "3000000071";
const U2: &str = "3000000072";

/// One evaluation, as the notifier runs it (forecasts included).
async fn evaluate(app: &TestApp) -> Round {
    let mut conn = app.db.connect().await;
    notices::evaluate(&mut conn, chrono::Duration::minutes(15), true, Utc::now())
        .await
        .expect("evaluation")
}

async fn list(api: Client<'_>, query: &str) -> Vec<Notification> {
    let resp = api
        .req(Method::GET, &format!("/notifications?limit=200&{query}"))
        .send()
        .await
        .unwrap();
    read::<NotificationPage>(resp, 200).await.items
}

/// The open notifications as `(kind, scope, level)`.
async fn open(api: Client<'_>) -> Vec<(String, String, Option<i32>)> {
    let mut v: Vec<_> = list(api, "state=open")
        .await
        .into_iter()
        .map(|n| (n.kind.to_string(), n.scope.to_string(), n.level))
        .collect();
    v.sort();
    v
}

fn usage(scope: &str, levels: &[i32]) -> Vec<(String, String, Option<i32>)> {
    levels
        .iter()
        .map(|l| ("license.usage".to_owned(), scope.to_owned(), Some(*l)))
        .collect()
}

fn all_scopes(levels: &[i32]) -> Vec<(String, String, Option<i32>)> {
    let mut v = Vec::new();
    for scope in ["account", "asset", "space"] {
        v.extend(usage(scope, levels));
    }
    v
}

/// Every notification event of the feed, once at least `expected` arrived (the service's own
/// sequencer appends them once their transactions are older than every open one).
async fn notification_events(api: Client<'_>, expected: usize) -> Vec<Value> {
    eventually(
        "the notification events",
        async || {
            let resp = api
                .req(
                    Method::GET,
                    "/events?limit=1000&types=notification.raised,notification.cleared",
                )
                .send()
                .await
                .unwrap();
            let page: Value = read(resp, 200).await;
            page["events"].as_array().unwrap().clone()
        },
        |events| events.len() >= expected,
    )
    .await
}

#[tokio::test]
async fn n1_usage_crossings_up_and_down_raise_and_clear_once_each_across_concurrent_evaluations() {
    let w = fixtures::world(vec![location(U1, "Lib", vec![app(APP, 10)])], &[("A", U1)]).await;
    let api = w.api();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(api.allocated(&device(&format!("S{i}"))).await.id());
    }
    let first = evaluate(&w.app).await;
    assert_eq!((first.raised, first.cleared), (3, 0), "{first:?}");
    assert_eq!(open(api).await, all_scopes(&[50]));
    // The same usage again raises nothing.
    assert_eq!(evaluate(&w.app).await.raised, 0);

    // 90 %: three more thresholds per scope, lowest first, with their severities.
    for i in 5..9 {
        ids.push(api.allocated(&device(&format!("S{i}"))).await.id());
    }
    assert_eq!(evaluate(&w.app).await.raised, 9);
    let asset: HashMap<i32, Notification> = list(api, "state=open")
        .await
        .into_iter()
        .filter(|n| n.scope.as_str() == "asset")
        .map(|n| (n.level.unwrap(), n))
        .collect();
    assert_eq!(asset[&50].severity.as_str(), "info");
    assert_eq!(asset[&70].severity.as_str(), "warn");
    assert_eq!(asset[&80].severity.as_str(), "warn");
    assert_eq!(asset[&90].severity.as_str(), "alert");
    assert_eq!(asset[&90].figures["held"], 9);
    assert_eq!(asset[&90].figures["owned"], 10);
    assert!(asset[&90].message.contains("90 %"), "{:?}", asset[&90]);
    assert!(asset[&90].action.contains("buy"), "{:?}", asset[&90]);
    assert_eq!(asset[&90].asset.as_ref().unwrap().adam_id, APP);

    // 100 %: four replicas evaluate at once; each notification is raised once.
    ids.push(api.allocated(&device("S9")).await.id());
    let rounds = futures_util::future::join_all((0..4).map(|_| evaluate(&w.app))).await;
    let raised: usize = rounds.iter().map(|r| r.raised).sum();
    assert_eq!(raised, 4, "usage 100 % × 3 scopes + exhausted: {rounds:?}");
    // Even without the evaluation's lock, the store raises an open condition once: a
    // second insert of the same key changes nothing.
    let mut conn = w.app.db.connect().await;
    let open_now = vpp_broker::ledger::notices::open(&mut conn).await.unwrap();
    let again: Vec<NoticeRow> = list(api, "state=open&kinds=license.exhausted")
        .await
        .into_iter()
        .map(|n| {
            let mut row = NoticeRow::raised(
                &vpp_broker::domain::notices::Raise {
                    space: "acme".into(),
                    key: open_now
                        .iter()
                        .find(|o| o.id == n.id)
                        .map(|o| o.key.clone())
                        .unwrap(),
                    kind: n.kind,
                    severity: n.severity,
                    target: vpp_broker::domain::notices::Target::Space,
                    level: n.level,
                    message: n.message.clone(),
                    action: n.action.clone(),
                    details: n.figures.clone(),
                },
                Utc::now(),
            );
            row.id = Uuid::now_v7();
            row
        })
        .collect();
    assert_eq!(again.len(), 1);
    let inserted = vpp_broker::ledger::notices::insert(&mut conn, &again)
        .await
        .unwrap();
    assert!(inserted.is_empty(), "a second open row: {inserted:?}");
    let mut expected = all_scopes(&[50, 70, 80, 90, 100]);
    expected.push(("license.exhausted".into(), "asset".into(), None));
    expected.sort();
    assert_eq!(open(api).await, expected);

    // Down to 80 %: the asset is available again; the usage notifications stay open.
    for id in ids.drain(..2) {
        assert!(api.revoke(id, "").await.status().is_success());
    }
    let back = evaluate(&w.app).await;
    assert_eq!((back.raised, back.cleared), (1, 1), "{back:?}");
    let history = list(api, "kinds=license.exhausted").await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].state.as_str(), "cleared");
    assert_eq!(
        history[0].cleared_reason.map(|r| r.to_string()),
        Some("available_again".into())
    );
    assert_eq!(list(api, "kinds=license.available_again").await.len(), 1);

    // Below 50 %: everything clears, once.
    for id in ids.drain(..4) {
        assert!(api.revoke(id, "").await.status().is_success());
    }
    let low = evaluate(&w.app).await;
    assert_eq!((low.raised, low.cleared), (0, 16), "{low:?}");
    assert!(open(api).await.is_empty());
    assert_eq!(evaluate(&w.app).await, Round::default());

    // Each raise and each clear is one event, carrying the notification.
    let events = notification_events(api, 34).await;
    let raised: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "notification.raised")
        .collect();
    let cleared: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "notification.cleared")
        .collect();
    assert_eq!((raised.len(), cleared.len()), (17, 17), "{events:#?}");
    let mut once: Vec<&Value> = raised.iter().map(|e| &e["data"]["id"]).collect();
    once.sort_by_key(|v| v.to_string());
    once.dedup();
    assert_eq!(once.len(), 17, "a notification raised twice");
    let exhausted = raised
        .iter()
        .find(|e| e["data"]["kind"] == "license.exhausted")
        .unwrap();
    assert_eq!(exhausted["data"]["severity"], "alert");
    assert_eq!(exhausted["data"]["asset"]["adam_id"], APP);
    assert!(
        cleared
            .iter()
            .all(|e| e["data"]["cleared_reason"].is_string())
    );
}

#[tokio::test]
async fn n2_token_notices_follow_the_simulators_revoked_not_owned_expired_and_throttled_tokens() {
    let mut soon = location(U2, "Soon", vec![app(APP, 5)]);
    soon.token_exp_date = Some((Utc::now() + chrono::Duration::days(10)).to_rfc3339());
    let w = fixtures::world(
        vec![location(U1, "Lib", vec![app(APP, 5)]), soon],
        &[("Main", U1), ("Soon", U2)],
    )
    .await;
    let (sim, api) = (&w.sim, w.api());
    let (main, soon) = (w.accounts[0], w.accounts[1]);

    // Expiring in 10 days: the 30- and 14-day notices, not the 7-day one.
    evaluate(&w.app).await;
    let expiring: Vec<Notification> = list(api, &format!("state=open&account={soon}")).await;
    let mut levels: Vec<i32> = expiring.iter().filter_map(|n| n.level).collect();
    levels.sort();
    assert_eq!(levels, [14, 30], "{expiring:?}");
    assert!(expiring.iter().all(|n| n.kind.as_str() == "token.expiring"));
    assert!(
        expiring[0]
            .action
            .contains(&format!("/accounts/{soon}/stoken"))
    );
    assert!(list(api, &format!("account={main}")).await.is_empty());

    // Revoked at Apple: found by Test, raised with what to do; cleared once valid again.
    sim.set_location_token_status(U1, TokenStatus::Revoked)
        .await
        .unwrap();
    assert_eq!(
        api.test_account(main).await.report.status.as_str(),
        "revoked"
    );
    assert_eq!(evaluate(&w.app).await.raised, 1);
    let revoked = list(api, "state=open&kinds=token.revoked").await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].account_id, Some(main));
    assert_eq!(revoked[0].severity.as_str(), "alert");
    assert!(
        revoked[0].action.contains("upload a valid sToken"),
        "{revoked:?}"
    );
    sim.set_location_token_status(U1, TokenStatus::Valid)
        .await
        .unwrap();
    assert_eq!(
        api.test_account(main).await.report.status.as_str(),
        "active"
    );
    let healed = evaluate(&w.app).await;
    assert_eq!((healed.raised, healed.cleared), (0, 1));

    // Another MDM took the location: reclaim ownership.
    sim.overwrite_mdm_info(
        U1,
        &MdmInfo {
            id: "rival".into(),
            name: "Rival MDM".into(),
            metadata: "m".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        api.test_account(main).await.report.status.as_str(),
        "not_owned"
    );
    evaluate(&w.app).await;
    let stolen = list(api, "state=open&kinds=token.not_owned").await;
    assert_eq!(stolen.len(), 1);
    assert!(stolen[0].action.contains("/reclaim"), "{stolen:?}");
    assert!(stolen[0].message.contains("Rival MDM"), "{stolen:?}");

    // Expired: `token.expired` with its action; not-owned no longer shows.
    sim.set_location_token_status(U1, TokenStatus::Expired)
        .await
        .unwrap();
    assert_eq!(
        api.test_account(main).await.report.status.as_str(),
        "expired"
    );
    let round = evaluate(&w.app).await;
    assert_eq!((round.raised, round.cleared), (1, 1), "{round:?}");
    let expired = list(api, "state=open&kinds=token.expired").await;
    assert_eq!(expired.len(), 1);
    assert!(expired[0].action.contains("/stoken"));

    // Throttled for two minutes (Retry-After 120) on the other account.
    sim.set_faults(&FaultsPatch {
        fail_next: Some(FailRule {
            after: 0,
            count: 1,
            status: 503,
            error_number: 9729,
            retry_after_secs: Some(120),
            retry_after_http_date: false,
            location: None,
            endpoint: None,
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        api.test_account(soon).await.report.status.as_str(),
        "throttled"
    );
    evaluate(&w.app).await;
    let throttled = list(api, "state=open&kinds=token.throttled").await;
    assert_eq!(throttled.len(), 1, "{throttled:?}");
    assert_eq!(throttled[0].account_id, Some(soon));
    assert_eq!(throttled[0].severity.as_str(), "warn");
    // Each notification is raised once however often it is evaluated.
    assert_eq!(evaluate(&w.app).await.raised, 0);
}

#[tokio::test]
async fn n1_an_exhaustion_forecast_under_3_days_raises_warn_and_alert_once() {
    let w = fixtures::world(vec![location(U1, "Lib", vec![app(APP, 10)])], &[("A", U1)]).await;
    let api = w.api();
    // Eight licenses, one a day over the last eight days: about one a day, two left.
    for i in 0..8 {
        let id = api.allocated(&device(&format!("F{i}"))).await.id();
        let mut conn = w.app.db.connect().await;
        diesel::sql_query(format!(
            "UPDATE assignments SET created_at = now() - interval '{i} days' WHERE id = '{id}'"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let round = evaluate(&w.app).await;
    let forecasts = list(api, "state=open&kinds=license.exhaustion_forecast").await;
    let mut levels: Vec<(i32, String)> = forecasts
        .iter()
        .map(|n| (n.level.unwrap(), n.severity.to_string()))
        .collect();
    levels.sort();
    assert_eq!(
        levels,
        [(3, "alert".to_owned()), (14, "warn".to_owned())],
        "{round:?} {forecasts:?}"
    );
    let days = forecasts[0].figures["days_until_exhausted"]
        .as_f64()
        .unwrap();
    assert!((1.0..3.0).contains(&days), "about two days: {days}");
    assert!(forecasts[0].action.contains("before"), "{:?}", forecasts[0]);
    // Without the forecasts (the notifier computes them every 15 minutes) they stay open.
    let mut conn = w.app.db.connect().await;
    let quiet = notices::evaluate(&mut conn, chrono::Duration::minutes(15), false, Utc::now())
        .await
        .unwrap();
    assert_eq!((quiet.raised, quiet.cleared), (0, 0));
    // Revocations stop the consumption: the forecast clears.
    let live = api.assignments("adam_id=408709785&live=true").await;
    for a in live.items.iter().take(6) {
        assert!(api.revoke(a.id, "").await.status().is_success());
    }
    evaluate(&w.app).await;
    assert!(
        list(api, "state=open&kinds=license.exhaustion_forecast")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn the_notifier_runs_by_itself_in_the_service() {
    let w = fixtures::world_with(
        vec![location(U1, "Lib", vec![app(APP, 2)])],
        |_| Options {
            dispatcher: Some(vpp_broker::dispatch::Settings {
                notifications_every: Duration::from_millis(100),
                ..fast_dispatch("")
            }),
            ..Options::default()
        },
        &[("A", U1)],
    )
    .await;
    let api = w.api();
    api.allocated(&device("S1")).await;
    api.allocated(&device("S2")).await;
    let open = eventually(
        "the notifier raised the exhaustion",
        async || list(api, "state=open").await,
        |open| open.iter().any(|n| n.kind.as_str() == "license.exhausted"),
    )
    .await;
    assert_eq!(
        open.iter()
            .filter(|n| n.kind.as_str() == "license.usage")
            .count(),
        15,
        "{open:?}"
    );
}

#[tokio::test]
async fn the_list_filters_pages_and_acknowledges_and_refuses_bad_input() {
    let w = fixtures::world(vec![location(U1, "Lib", vec![app(APP, 2)])], &[("A", U1)]).await;
    let api = w.api();
    api.allocated(&device("S1")).await;
    api.allocated(&device("S2")).await;
    evaluate(&w.app).await;
    let all = list(api, "").await;
    assert_eq!(all.len(), 16, "{all:?}");
    // Newest first, paged by cursor without repeats.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/notifications?limit=5&cursor={c}"),
            None => "/notifications?limit=5".into(),
        };
        let page: NotificationPage =
            read(api.req(Method::GET, &q).send().await.unwrap(), 200).await;
        seen.extend(page.items.into_iter().map(|n| n.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, all.iter().map(|n| n.id).collect::<Vec<_>>());
    let alerts = list(api, "severities=alert").await;
    assert_eq!(alerts.len(), 7, "90 and 100 % × 3 scopes + exhausted");
    assert!(list(api, "state=cleared").await.is_empty());

    // Acknowledge: who and when, once; the notification stays open.
    let id = alerts[0].id;
    let path = format!("/v1/spaces/acme/notifications/{id}/acknowledge");
    let ack = |token: Option<String>| {
        match token {
            Some(t) => w.app.req_as(Method::POST, &path, &t),
            None => w.app.req(Method::POST, &path),
        }
        .send()
    };
    let first: Notification = read(ack(None).await.unwrap(), 200).await;
    assert_eq!(first.state.as_str(), "open");
    assert!(first.acknowledged_at.is_some());
    let again: Notification = read(ack(None).await.unwrap(), 200).await;
    assert_eq!(again.acknowledged_at, first.acknowledged_at);
    assert_eq!(list(api, "acknowledged=true").await.len(), 1);
    assert_eq!(list(api, "acknowledged=false").await.len(), 15);
    let reader = token("licenses:read", &["acme"]);
    expect_problem(ack(Some(reader)).await.unwrap(), 403, "forbidden").await;

    // Bad input: clear 4xx problems.
    for (query, field) in [
        ("state=bogus", "bogus"),
        (
            "kinds=license.usage,nope",
            "kinds: unknown value \\\"nope\\\"",
        ),
        ("severities=critical", "critical"),
        ("limit=0", "limit"),
        ("cursor=bm90LWEtY3Vyc29y", "cursor"),
        ("account=not-a-uuid", "invalid query parameter"),
        ("sort=x", "sort"),
    ] {
        let resp = api
            .req(Method::GET, &format!("/notifications?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{query}");
        assert_eq!(
            resp.headers()["content-type"],
            "application/problem+json",
            "{query}"
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            body["type"], "urn:vpp-broker:problem:invalid-parameter",
            "{query}: {body}"
        );
        assert!(
            body.to_string().contains(field),
            "{query}: the problem says {field}: {body}"
        );
    }
    let unknown = Uuid::now_v7();
    let resp = api
        .req(Method::GET, &format!("/notifications/{unknown}"))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not-found").await;
    let resp = api
        .req(
            Method::POST,
            &format!("/notifications/{unknown}/acknowledge"),
        )
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not-found").await;
    // Another space's caller does not see them.
    w.app.space("other").await;
    let resp = w
        .app
        .req(Method::GET, &format!("/v1/spaces/other/notifications/{id}"))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not-found").await;
}
