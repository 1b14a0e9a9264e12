//! H1 (docs/rules.md): a license ledger keeps its history. Revoked and failed assignments and the
//! activity log stay readable after their account is deleted, or after a token replacement cleared
//! the account's ledger. Over real HTTP with the simulator and the dispatcher.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use reqwest::Method;
use serde_json::{Value, json};
use vpp_broker::apple::types::{AssetKey, PricingParam};
use vpp_broker::db::schema::activity_log;

use crate::support::TestApp;
use crate::support::sim::{self, app, location};

const U1: &str = "4000000001";
const U2: &str = "4000000002";
const U3: &str = "4000000003";
const APP: &str = "408709785";

struct World {
    sim: vpp_broker::apple_sim::SimHandle,
    app: TestApp,
    a: String,
}

async fn world() -> World {
    let sim = sim::start(vec![
        location(U1, "Library A", vec![app(APP, 5)]),
        location(U2, "Library B", vec![app(APP, 5)]),
        location(U3, "Library C", vec![app(APP, 5)]),
    ])
    .await;
    let app = TestApp::with_sim(&sim).await;
    app.space("acme").await;
    let a = app.account("acme", "A", &sim::stoken(&sim, U1)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    World { sim, app, a }
}

fn device(serial: &str) -> Value {
    json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": serial}})
}

async fn allocated(app: &TestApp, serial: &str) -> String {
    let resp = app
        .req(Method::POST, "/v1/spaces/acme/assignments")
        .json(&device(serial))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    body["assignment"]["id"].as_str().unwrap().to_owned()
}

async fn final_state(app: &TestApp, id: &str) -> Value {
    let v = app
        .get_json(&format!("/v1/spaces/acme/assignments/{id}?wait=20"))
        .await;
    assert!(
        ["active", "failed", "revoked"].contains(&v["state"].as_str().unwrap()),
        "not final after 20 s: {v}"
    );
    v
}

async fn actions_of(app: &TestApp, assignment: &str) -> Vec<String> {
    let mut conn = app.db.connect().await;
    let id: uuid::Uuid = assignment.parse().unwrap();
    activity_log::table
        .filter(activity_log::assignment_id.eq(id))
        .order(activity_log::id)
        .select(activity_log::action)
        .load(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn revoked_and_failed_assignments_and_their_activity_outlive_a_deleted_account() {
    let w = world().await;
    let revoked = allocated(&w.app, "S1").await;
    final_state(&w.app, &revoked).await;
    let resp = w
        .app
        .req(
            Method::DELETE,
            &format!("/v1/spaces/acme/assignments/{revoked}?reason=lost"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(final_state(&w.app, &revoked).await["state"], "revoked");
    // A failed one: Apple has no license left (9709) and no other account can serve.
    w.sim
        .set_asset_total(U1, &AssetKey::new(APP, PricingParam::Stdq), 0)
        .await
        .unwrap();
    let failed = allocated(&w.app, "S2").await;
    assert_eq!(final_state(&w.app, &failed).await["state"], "failed");
    let before_revoked = w
        .app
        .get_json(&format!("/v1/spaces/acme/assignments/{revoked}"))
        .await;
    let before_failed = w
        .app
        .get_json(&format!("/v1/spaces/acme/assignments/{failed}"))
        .await;
    let revoked_log = actions_of(&w.app, &revoked).await;
    let failed_log = actions_of(&w.app, &failed).await;
    assert!(revoked_log.len() >= 2 && !failed_log.is_empty());

    // Nothing is live: the account goes at once.
    let resp = w
        .app
        .req(Method::DELETE, &format!("/v1/spaces/acme/accounts/{}", w.a))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = w
        .app
        .req(Method::GET, &format!("/v1/spaces/acme/accounts/{}", w.a))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "the account is gone");

    // Its history is not: by id, in the listing with its filters, and in the activity log.
    for (id, before) in [(&revoked, &before_revoked), (&failed, &before_failed)] {
        let after = w
            .app
            .get_json(&format!("/v1/spaces/acme/assignments/{id}"))
            .await;
        assert_eq!(&after, before, "unchanged after the account went");
    }
    assert_eq!(before_revoked["revocation"]["reason"], "lost");
    assert_eq!(before_failed["error"]["number"], 9709, "{before_failed}");
    let listed = w
        .app
        .get_json(&format!("/v1/spaces/acme/assignments?account_id={}", w.a))
        .await;
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![revoked.as_str(), failed.as_str()]);
    for (state, id) in [("revoked", &revoked), ("failed", &failed)] {
        let listed = w
            .app
            .get_json(&format!(
                "/v1/spaces/acme/assignments?state={state}&adam_id={APP}&subject_kind=device&subject_id={}",
                if id == &revoked { "S1" } else { "S2" }
            ))
            .await;
        assert_eq!(listed["items"][0]["id"], id.as_str(), "{listed}");
    }
    assert_eq!(actions_of(&w.app, &revoked).await, revoked_log);
    assert_eq!(actions_of(&w.app, &failed).await, failed_log);
    let mut conn = w.app.db.connect().await;
    let account: uuid::Uuid = w.a.parse().unwrap();
    let deleted: i64 = activity_log::table
        .filter(activity_log::account_id.eq(account))
        .filter(activity_log::action.eq("account.deleted"))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(deleted, 1);

    // The space itself can still be deleted on purpose (its history goes with it; the
    // activity log stays).
    let resp = w
        .app
        .req(Method::DELETE, "/v1/spaces/acme")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(actions_of(&w.app, &revoked).await, revoked_log);
}

#[tokio::test]
async fn a_deletion_with_revoke_all_keeps_the_revoked_licenses_once_apple_released_them() {
    let w = world().await;
    let active = allocated(&w.app, "S1").await;
    final_state(&w.app, &active).await;
    let resp = w
        .app
        .req(
            Method::DELETE,
            &format!("/v1/spaces/acme/accounts/{}?revoke_all=true", w.a),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = w
            .app
            .req(Method::GET, &format!("/v1/spaces/acme/accounts/{}", w.a))
            .send()
            .await
            .unwrap();
        if r.status() == 404 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "account not removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = w
        .app
        .get_json(&format!("/v1/spaces/acme/assignments/{active}"))
        .await;
    assert_eq!(after["state"], "revoked", "{after}");
    assert_eq!(after["revocation"]["reason"], "account deleted");
    assert_eq!(after["revocation"]["by"], "test-caller");
    let log = actions_of(&w.app, &active).await;
    assert!(
        log.contains(&"assignment.revoked".to_owned()),
        "Apple's release is in the log: {log:?}"
    );
}

#[tokio::test]
async fn clearing_a_replaced_tokens_ledger_finishes_its_licenses_and_keeps_them_readable() {
    let w = world().await;
    let active = allocated(&w.app, "S1").await;
    final_state(&w.app, &active).await;
    let resp = w
        .app
        .req(
            Method::PUT,
            &format!("/v1/spaces/acme/accounts/{}/stoken", w.a),
        )
        .header("x-request-id", "req-replace-1")
        .json(&json!({"stoken": sim::stoken(&w.sim, U3), "clear_ledger": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let after = w
        .app
        .get_json(&format!("/v1/spaces/acme/assignments/{active}"))
        .await;
    assert_eq!(after["state"], "revoked", "{after}");
    assert_eq!(after["revocation"]["by"], "test-caller");
    assert_eq!(after["revocation"]["request_id"], "req-replace-1");
    assert!(
        after["revocation"]["reason"]
            .as_str()
            .unwrap()
            .contains("stays assigned at the old location"),
        "{after}"
    );
    assert_eq!(
        actions_of(&w.app, &active).await.last().map(String::as_str),
        Some("assignment.forgotten")
    );
    // The device is free to get a license from the account's new location.
    let again = allocated(&w.app, "S1").await;
    assert_ne!(again, active);
    assert_eq!(final_state(&w.app, &again).await["state"], "active");
    let listed = w
        .app
        .get_json(&format!("/v1/spaces/acme/assignments?account_id={}", w.a))
        .await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed}");
}
