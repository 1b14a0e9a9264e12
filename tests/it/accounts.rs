//! Token accounts against the Apple simulator over real HTTP: rules T1, T2, T3, T8, T9, A5
//! (docs/rules.md).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;
use vpp_broker::api::accounts::Account;
use vpp_broker::api::assignments::Allocation;
use vpp_broker::apple::types::MdmInfo;
use vpp_broker::apple_sim::{FailRule, FaultsPatch, TokenStatus};
use vpp_broker::db::schema::{accounts, activity_log};

use crate::support::fixtures::{self, account_activity as actions};
use crate::support::sim::{self, app, location};
use crate::support::{Allocated, TestApp, expect_problem, read};

const U1: &str = "1000000001";
const U2: &str = "1000000002";
const U3: &str = "1000000003";

async fn world() -> (vpp_broker::apple_sim::SimHandle, TestApp) {
    let w = fixtures::world(
        vec![
            location(
                U1,
                "Main Library",
                vec![app("408709785", 10), app("377298193", 5)],
            ),
            location(U2, "Second Library", vec![app("408709785", 3)]),
            location(U3, "Third Library", vec![app("408709785", 1)]),
        ],
        &[],
    )
    .await;
    (w.sim, w.app)
}

async fn count_accounts(app: &TestApp) -> i64 {
    let mut conn = app.db.connect().await;
    accounts::table.count().get_result(&mut conn).await.unwrap()
}

async fn post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.req(Method::POST, path)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn t1_adding_an_account_learns_the_location_claims_it_and_imports_assets() {
    let (sim, app) = world().await;
    // Read raw first: the sToken must be absent on the wire.
    let raw = app.account("acme", "Main", &sim::stoken(&sim, U1)).await;
    assert!(raw.get("stoken").is_none());
    let account: Account = serde_json::from_value(raw).unwrap();
    assert_eq!(account.location.uid, U1);
    assert_eq!(account.location.name, "Main Library");
    assert_eq!(account.location.country, "DE");
    assert_eq!(account.organization, "Main Library");
    assert_eq!(account.priority, 1);
    assert_eq!(account.status.state.as_str(), "active");
    assert!(account.owned_by_this_deployment);
    assert_eq!(account.licenses.assets, 2);
    assert_eq!(account.licenses.total, 15);
    assert_eq!(account.licenses.available, 15);
    // Our identity is now in Apple's client config.
    let snapshot = sim.location(U1).await.unwrap();
    let mdm = snapshot.mdm_info.expect("mdmInfo written");
    assert_eq!(mdm.name, "vpp-broker test");
    assert_eq!(mdm.id, app.state.identity.instance_id);
    // The next account goes after it.
    let api = app.client("acme");
    let second = api.attach("Second", &sim::stoken(&sim, U2)).await;
    assert_eq!(second.priority, 2);
    let listed = api.accounts().await;
    let names: Vec<&str> = listed.items.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["Main", "Second"]);
    assert_eq!(actions(&app, account.id).await[0].0, "account.added");
}

#[tokio::test]
async fn t1_a_location_is_attached_once_per_deployment() {
    let (sim, app) = world().await;
    app.space("other").await;
    let token = sim::stoken(&sim, U1);
    app.account("acme", "Main", &token).await;
    let again = post(
        &app,
        "/v1/spaces/acme/accounts",
        json!({"name": "Again", "stoken": token}),
    )
    .await;
    let body = expect_problem(again, 409, "location-already-attached").await;
    assert!(body["detail"].as_str().unwrap().contains("this space"));
    // Another token of the same location, in another space: still refused, without naming it.
    let renewed = sim.add_token(U1, None).await.unwrap();
    let elsewhere = post(
        &app,
        "/v1/spaces/other/accounts",
        json!({"name": "Again", "stoken": renewed.expose()}),
    )
    .await;
    let body = expect_problem(elsewhere, 409, "location-already-attached").await;
    assert!(!body["detail"].as_str().unwrap().contains("acme"));
    assert_eq!(count_accounts(&app).await, 1);
}

#[tokio::test]
async fn t1_malformed_stokens_are_refused_and_nothing_is_stored_or_called() {
    let (sim, app) = world().await;
    sim.reset_counters().await.unwrap();
    let enc = |s: &str| STANDARD.encode(s);
    let cases = [
        ("not base64 at all!!", "base64"),
        (&enc("this is not json") as &str, "JSON"),
        (&enc(r#"{"token":"abc","orgName":"Org"}"#), "expDate"),
        (
            &enc(r#"{"expDate":"2030-11-08T22:33:22+0000","orgName":"Org"}"#),
            "token",
        ),
        (
            &enc(r#"{"token":"abc","expDate":"next tuesday","orgName":"Org"}"#),
            "date",
        ),
        (
            &enc(r#"{"token":"abc","expDate":"2020-01-01T00:00:00+0000","orgName":"Org"}"#),
            "expired",
        ),
    ];
    for (text, hint) in cases {
        let resp = post(
            &app,
            "/v1/spaces/acme/accounts",
            json!({"name": "Bad", "stoken": text}),
        )
        .await;
        let body = expect_problem(resp, 422, "invalid-stoken").await;
        let detail = body["detail"].as_str().unwrap().to_lowercase();
        assert!(detail.contains(&hint.to_lowercase()), "{hint}: {detail}");
        assert_eq!(body["errors"][0]["field"], "stoken");
    }
    for bad in [
        json!({"name": "x", "stoken": ""}),
        json!({"name": "", "stoken": "abc"}),
    ] {
        let resp = post(&app, "/v1/spaces/acme/accounts", bad).await;
        expect_problem(resp, 422, "validation-failed").await;
    }
    assert_eq!(count_accounts(&app).await, 0);
    let counters = sim.counters().await.unwrap();
    assert!(
        counters.values().all(|n| *n == 0),
        "Apple was called: {counters:?}"
    );
}

#[tokio::test]
async fn t1_tokens_apple_refuses_are_422_and_not_stored() {
    let (sim, app) = world().await;
    for (status, word) in [
        (TokenStatus::Revoked, "9625"),
        (TokenStatus::Invalid, "9622"),
        (TokenStatus::Expired, "9621"),
    ] {
        let token = sim.add_token(U3, None).await.unwrap();
        sim.set_token_status(&token, status).await.unwrap();
        let resp = post(
            &app,
            "/v1/spaces/acme/accounts",
            json!({"name": "x", "stoken": token.expose()}),
        )
        .await;
        let body = expect_problem(resp, 422, "stoken-rejected").await;
        assert!(body["detail"].as_str().unwrap().contains(word), "{body}");
    }
    assert_eq!(count_accounts(&app).await, 0);
}

#[tokio::test]
async fn t3_another_mdms_token_is_stored_not_owned_and_left_alone_until_reclaimed() {
    let mut other = location(U1, "Main Library", vec![app("408709785", 10)]);
    other.mdm_info = Some(MdmInfo {
        id: "other-mdm-id".into(),
        name: "Other MDM".into(),
        metadata: "v1".into(),
    });
    let fixtures::World { sim, app, .. } = fixtures::world(vec![other], &[]).await;
    let account = app
        .client("acme")
        .attach("Main", &sim::stoken(&sim, U1))
        .await;
    assert_eq!(account.status.state.as_str(), "not_owned");
    assert!(account.status.reason.contains("Other MDM"));
    assert!(!account.owned_by_this_deployment);
    // Nothing was overwritten at Apple.
    assert_eq!(
        sim.location(U1).await.unwrap().mdm_info.unwrap().id,
        "other-mdm-id"
    );

    // Reclaim Ownership, on explicit request.
    let id = account.id;
    let resp = post(
        &app,
        &format!("/v1/spaces/acme/accounts/{id}/reclaim"),
        json!({}),
    )
    .await;
    let reclaimed: Account = read(resp, 200).await;
    assert_eq!(reclaimed.status.state.as_str(), "active");
    assert!(reclaimed.owned_by_this_deployment);
    assert_eq!(
        sim.location(U1).await.unwrap().mdm_info.unwrap().id,
        app.state.identity.instance_id
    );
    let log = actions(&app, id).await;
    let reclaim = log
        .iter()
        .find(|(a, _)| a == "account.ownership_reclaimed")
        .expect("logged");
    assert_eq!(reclaim.1["previous_owner"]["name"], "Other MDM");
    let mut conn = app.db.connect().await;
    let actor: String = activity_log::table
        .filter(activity_log::action.eq("account.ownership_reclaimed"))
        .select(activity_log::actor)
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(actor, "test-caller");
}

#[tokio::test]
async fn t2_test_reports_every_status_driven_by_apple() {
    let (sim, app) = world().await;
    let api = app.client("acme");
    let id = api.attach("Main", &sim::stoken(&sim, U1)).await.id;
    let test = || api.test_account(id);
    let healthy = test().await.report;
    assert!(healthy.reachable);
    assert_eq!(healthy.status.as_str(), "active");
    assert!(healthy.owner.unwrap().is_this_deployment);

    // Throttled: 503 with Retry-After.
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
    let throttled = test().await;
    assert_eq!(throttled.report.status.as_str(), "throttled");
    assert!(throttled.account.status.throttled_until.is_some());
    // A healthy answer ends the throttle.
    assert_eq!(test().await.report.status.as_str(), "active");

    // Login required (9601).
    sim.set_faults(&FaultsPatch {
        fail_next: Some(FailRule {
            after: 0,
            count: 1,
            status: 401,
            error_number: 9601,
            retry_after_secs: None,
            retry_after_http_date: false,
            location: None,
            endpoint: None,
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(test().await.report.status.as_str(), "login_required");
    assert_eq!(test().await.report.status.as_str(), "active");

    // Another MDM overwrote the client config.
    sim.overwrite_mdm_info(
        U1,
        &MdmInfo {
            id: "x".into(),
            name: "Rival MDM".into(),
            metadata: "m".into(),
        },
    )
    .await
    .unwrap();
    let stolen = test().await.report;
    assert_eq!(stolen.status.as_str(), "not_owned");
    assert_eq!(stolen.owner.unwrap().name, "Rival MDM");

    for (status, expected) in [
        (TokenStatus::Expired, "expired"),
        (TokenStatus::Revoked, "revoked"),
        (TokenStatus::Invalid, "invalid"),
    ] {
        sim.set_location_token_status(U1, status).await.unwrap();
        let r = test().await;
        assert_eq!(r.report.status.as_str(), expected);
        assert!(!r.report.reachable);
        assert!(r.report.apple_error.is_some());
        assert!(!r.account.status.reason.is_empty(), "{r:?}");
    }
    // Every transition is in the activity log.
    let transitions: Vec<String> = actions(&app, id)
        .await
        .into_iter()
        .filter(|(a, _)| a == "account.status_changed")
        .map(|(_, d)| d["to"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        transitions,
        [
            "throttled",
            "active",
            "login_required",
            "active",
            "not_owned",
            "expired",
            "revoked",
            "invalid"
        ]
    );
}

#[tokio::test]
async fn t2_expiry_moves_accounts_to_expiring_then_expired() {
    let mut soon = location(U1, "Main Library", vec![app("408709785", 10)]);
    soon.token_exp_date = Some((chrono::Utc::now() + chrono::Duration::days(10)).to_rfc3339());
    let fixtures::World { sim, app, .. } = fixtures::world(vec![soon], &[]).await;
    let api = app.client("acme");
    let account = api.attach("Main", &sim::stoken(&sim, U1)).await;
    assert_eq!(account.status.state.as_str(), "expiring");
    assert!(account.status.reason.contains("replace it"));
    // Time passes (the token's date is moved into the past): the next read says expired.
    let id = account.id;
    let mut conn = app.db.connect().await;
    diesel::update(accounts::table.filter(accounts::id.eq(id)))
        .set(accounts::token_expires_at.eq(chrono::Utc::now() - chrono::Duration::hours(1)))
        .execute(&mut conn)
        .await
        .unwrap();
    let now = api.account(id).await;
    assert_eq!(now.status.state.as_str(), "expired");
    let log = actions(&app, id).await;
    assert!(
        log.iter()
            .any(|(a, d)| a == "account.status_changed" && d["to"] == "expired")
    );
}

#[tokio::test]
async fn a5_priorities_stay_dense_under_concurrent_reorders_and_never_move_licenses() {
    let (sim, app) = world().await;
    let api = app.client("acme");
    let mut ids: Vec<Uuid> = Vec::new();
    for (name, uid) in [("A", U1), ("B", U2), ("C", U3)] {
        ids.push(api.attach(name, &sim::stoken(&sim, uid)).await.id);
    }
    // A license held from account A.
    let alloc = post(
        &app,
        "/v1/spaces/acme/assignments",
        json!({"asset": {"adam_id": "408709785"}, "subject": {"kind": "device", "id": "SERIAL-1"}}),
    )
    .await;
    let alloc: Allocation = read(alloc, 201).await;
    assert_eq!(alloc.account_id, ids[0]);

    // 24 concurrent full reorders.
    let perms = [
        [0, 1, 2],
        [2, 1, 0],
        [1, 0, 2],
        [2, 0, 1],
        [0, 2, 1],
        [1, 2, 0],
    ];
    let mut tasks = Vec::new();
    for i in 0..24 {
        let order: Vec<Uuid> = perms[i % 6].iter().map(|&k| ids[k]).collect();
        let req = app
            .req(Method::PUT, "/v1/spaces/acme/account-order")
            .json(&json!({ "order": order }));
        tasks.push(tokio::spawn(async move {
            req.send().await.unwrap().status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let mut conn = app.db.connect().await;
    let mut priorities: Vec<i32> = accounts::table
        .select(accounts::priority)
        .load(&mut conn)
        .await
        .unwrap();
    priorities.sort();
    assert_eq!(priorities, [1, 2, 3], "dense and unique");

    // Explicit order, then a move.
    let list = api.reorder(&[ids[2], ids[1], ids[0]]).await;
    let order: Vec<Uuid> = list.items.iter().map(|a| a.id).collect();
    assert_eq!(order, [ids[2], ids[1], ids[0]]);
    let moved = app
        .req(
            Method::PATCH,
            &format!("/v1/spaces/acme/accounts/{}", ids[0]),
        )
        .json(&json!({"priority": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), 200);
    let order = api.account_order().await;
    assert_eq!(order.order, [ids[0], ids[2], ids[1]]);

    // Bad orders are refused.
    for bad in [
        json!({"order": [ids[0], ids[1]]}),
        json!({"order": [ids[0], ids[0], ids[1]]}),
    ] {
        let resp = app
            .req(Method::PUT, "/v1/spaces/acme/account-order")
            .json(&bad)
            .send()
            .await
            .unwrap();
        expect_problem(resp, 422, "validation-failed").await;
    }
    // The license never moved.
    let now = api.assignment(alloc.id()).await;
    // (Its version may have moved on meanwhile: the dispatcher takes it to Apple.)
    assert_eq!(now.account_id, ids[0]);
    assert_eq!(now.rule, alloc.assignment().rule);
    assert!(
        ["pending", "associating", "active"].contains(&now.state.as_str()),
        "{now:?}"
    );
}

#[tokio::test]
async fn updates_rename_change_settings_and_lists_with_if_match() {
    let (sim, app) = world().await;
    let api = app.client("acme");
    let account = api.attach("Main", &sim::stoken(&sim, U1)).await;
    let path = format!("/v1/spaces/acme/accounts/{}", account.id);
    let resp = app
        .req(Method::PATCH, &path)
        .header("if-match", "\"1\"")
        .json(&json!({
            "name": "Renamed",
            "settings": {"notify_on_removal": false, "when_unusable": "skip"},
            // A list is a set: an entry given twice (once with spaces) is kept once.
            "distribution_list": [{"kind": "group", "value": "staff"}, {"kind": "user", "value": "u1"},
                                  {"kind": "user", "value": " u1 "}]
        }))
        .send()
        .await
        .unwrap();
    let updated: Account = read(resp, 200).await;
    assert_eq!(updated.name, "Renamed");
    assert!(!updated.settings.notify_on_removal);
    assert_eq!(updated.settings.when_unusable.as_str(), "skip");
    assert!(updated.settings.new_assets_for_everyone);
    assert_eq!(updated.distribution_list.len(), 2);
    let stale = app
        .req(Method::PATCH, &path)
        .header("if-match", "\"1\"")
        .json(&json!({"name": "Lost"}))
        .send()
        .await
        .unwrap();
    expect_problem(stale, 412, "precondition-failed").await;
    let bad = app
        .req(Method::PATCH, &path)
        .json(&json!({"distribution_list": [{"kind": "planet", "value": "x"}]}))
        .send()
        .await
        .unwrap();
    expect_problem(bad, 422, "invalid-body").await;
    assert_eq!(api.account(account.id).await.name, "Renamed");
}

#[tokio::test]
async fn t9_replacing_the_token_keeps_the_ledger_for_the_same_location_only() {
    let (sim, app) = world().await;
    let api = app.client("acme");
    let id = api.attach("Main", &sim::stoken(&sim, U1)).await.id;
    let alloc = post(
        &app,
        "/v1/spaces/acme/assignments",
        json!({"asset": {"adam_id": "408709785"}, "subject": {"kind": "device", "id": "SERIAL-1"}}),
    )
    .await;
    let alloc: Allocation = read(alloc, 201).await;
    let alloc_id = alloc.id();
    let path = format!("/v1/spaces/acme/accounts/{id}/stoken");

    // A renewed token of the same location: the ledger stays.
    let renewed = sim
        .add_token(U1, Some(chrono::Utc::now() + chrono::Duration::days(300)))
        .await
        .unwrap();
    let resp = app
        .req(Method::PUT, &path)
        .json(&json!({"stoken": renewed.expose()}))
        .send()
        .await
        .unwrap();
    let after: Account = read(resp, 200).await;
    assert_eq!(after.licenses.held, 1);
    let listed = api.assignments("live=true").await;
    assert_eq!(listed.items.len(), 1);

    // Another location: refused with an explanation ...
    let resp = app
        .req(Method::PUT, &path)
        .json(&json!({"stoken": sim::stoken(&sim, U3)}))
        .send()
        .await
        .unwrap();
    let body = expect_problem(resp, 409, "location-mismatch").await;
    assert!(
        body["detail"].as_str().unwrap().contains("clear_ledger"),
        "{body}"
    );
    // ... unless the caller asks to clear the ledger.
    let resp = app
        .req(Method::PUT, &path)
        .json(&json!({"stoken": sim::stoken(&sim, U3), "clear_ledger": true}))
        .send()
        .await
        .unwrap();
    let switched: Account = read(resp, 200).await;
    assert_eq!(switched.location.uid, U3);
    assert_eq!(switched.licenses.total, 1);
    assert_eq!(switched.licenses.held, 0);
    let live = api.assignments("live=true").await;
    assert!(live.items.is_empty());
    // The forgotten license stays in the ledger's history, finished, saying why (H1).
    let listed = api.assignments("").await;
    let items = &listed.items;
    assert_eq!(items.len(), 1, "{listed:?}");
    assert_eq!(items[0].state.as_str(), "revoked");
    assert!(
        items[0]
            .revocation
            .as_ref()
            .unwrap()
            .reason
            .contains("clear_ledger"),
        "{listed:?}"
    );
    // The old location's queued Apple work went with its ledger.
    let old_assignment = alloc_id;
    let mut conn = app.db.connect().await;
    let left: i64 = vpp_broker::db::schema::jobs::table
        .filter(vpp_broker::db::schema::jobs::assignment_id.eq(old_assignment))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let log = actions(&app, id).await;
    let replaced: Vec<&Value> = log
        .iter()
        .filter(|(a, _)| a == "account.token_replaced")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(replaced.len(), 2);
    assert_eq!(replaced[1]["ledger_cleared"], true);
}

#[tokio::test]
async fn t8_delete_is_refused_while_a_policy_uses_the_account_unless_revoke_all() {
    let (sim, app) = world().await;
    let api = app.client("acme");
    let id = api.attach("Main", &sim::stoken(&sim, U1)).await.id;
    let resp = app
        .req(Method::PUT, "/v1/spaces/acme/policies/408709785/STDQ")
        .json(&json!({"reserved": [{"kind": "device", "id": "VIP", "account_id": id}]}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let before: vpp_broker::api::policies::Policy = resp.json().await.unwrap();
    let path = format!("/v1/spaces/acme/accounts/{id}");
    let resp = app.req(Method::DELETE, &path).send().await.unwrap();
    let body = expect_problem(resp, 409, "account-in-use").await;
    assert!(body["detail"].as_str().unwrap().contains("revoke_all"));
    assert_eq!(count_accounts(&app).await, 1);

    let resp = app
        .req(Method::DELETE, &format!("{path}?revoke_all=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(count_accounts(&app).await, 0);
    let policy = api.policy("408709785", "STDQ").await;
    assert!(policy.reserved.is_empty(), "the reservation went with it");
    assert!(
        policy.version > before.version,
        "the policy changed, so its version (ETag) changed: {policy:?}"
    );
    // An unused account is deleted at once.
    let other = api.attach("Second", &sim::stoken(&sim, U2)).await;
    let resp = app
        .req(
            Method::DELETE,
            &format!("/v1/spaces/acme/accounts/{}", other.id),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = app.req(Method::GET, &path).send().await.unwrap();
    expect_problem(resp, 404, "not-found").await;
}

#[tokio::test]
async fn stokens_never_leave_the_service() {
    let logs = crate::support::logs::capture();
    let (sim, app) = world().await;
    let token = sim::stoken(&sim, U1);
    let inner = {
        let json: Value = serde_json::from_slice(&STANDARD.decode(&token).unwrap()).unwrap();
        json["token"].as_str().unwrap().to_owned()
    };
    let mut seen = Vec::new();
    // Everything is read as text here: the test looks at what goes over the wire.
    let account = app.account("acme", "Main", &token).await;
    seen.push(account.to_string());
    let id = serde_json::from_value::<Account>(account).unwrap().id;
    for (method, path, body) in [
        (Method::GET, format!("/v1/spaces/acme/accounts/{id}"), None),
        (Method::GET, "/v1/spaces/acme/accounts".to_owned(), None),
        (
            Method::POST,
            format!("/v1/spaces/acme/accounts/{id}/test"),
            Some(json!({})),
        ),
        (
            Method::POST,
            "/v1/spaces/acme/accounts".to_owned(),
            Some(json!({"name": "dup", "stoken": token})),
        ),
        (
            Method::PUT,
            format!("/v1/spaces/acme/accounts/{id}/stoken"),
            Some(json!({"stoken": sim::stoken(&sim, U2)})),
        ),
    ] {
        let mut req = app.req(method, &path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        seen.push(req.send().await.unwrap().text().await.unwrap());
    }
    // An Apple failure path too.
    sim.set_location_token_status(U1, TokenStatus::Revoked)
        .await
        .unwrap();
    seen.push(
        post(
            &app,
            &format!("/v1/spaces/acme/accounts/{id}/test"),
            json!({}),
        )
        .await
        .text()
        .await
        .unwrap(),
    );
    let mut conn = app.db.connect().await;
    let activity: Vec<Value> = activity_log::table
        .select(activity_log::details)
        .load(&mut conn)
        .await
        .unwrap();
    seen.extend(activity.iter().map(Value::to_string));
    let stored: Vec<u8> = accounts::table
        .select(accounts::token_ciphertext)
        .first(&mut conn)
        .await
        .unwrap();
    seen.push(String::from_utf8_lossy(&stored).into_owned());
    seen.push(logs.text());
    for text in &seen {
        assert!(
            !text.contains(&token),
            "the sToken leaked into: {}",
            &text[..text.len().min(300)]
        );
        assert!(
            !text.contains(&inner),
            "the inner token leaked into: {}",
            &text[..text.len().min(300)]
        );
    }
    assert!(
        logs.text().contains("request finished"),
        "logs were captured"
    );
}

#[tokio::test]
async fn rotate_keys_reencrypts_every_token() {
    let (sim, app) = world().await;
    app.account("acme", "Main", &sim::stoken(&sim, U1)).await;
    app.account("acme", "Second", &sim::stoken(&sim, U2)).await;
    let rotated = vpp_broker::crypto::TokenCipher::from_spec(&format!(
        "t2:{},{}",
        STANDARD.encode([7u8; 32]),
        crate::support::app::TOKEN_KEYS
    ))
    .unwrap();
    let n = vpp_broker::commands::rotate_keys::rotate(&app.pool, &rotated)
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        vpp_broker::commands::rotate_keys::rotate(&app.pool, &rotated)
            .await
            .unwrap(),
        0
    );
    let mut conn = app.db.connect().await;
    let keys: Vec<String> = accounts::table
        .select(accounts::token_key_id)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys, ["t2", "t2"]);
    // The old key can go: the new one alone opens every token.
    let only_new =
        vpp_broker::crypto::TokenCipher::from_spec(&format!("t2:{}", STANDARD.encode([7u8; 32])))
            .unwrap();
    let rows = vpp_broker::ledger::accounts::list(&mut conn, "acme")
        .await
        .unwrap();
    for row in rows {
        assert!(
            only_new
                .open(row.id.as_bytes(), &row.sealed_token())
                .is_ok()
        );
    }
}
