//! H1 (docs/rules.md): a license ledger keeps its history. Revoked and failed assignments and the
//! activity log stay readable after their account is deleted, or after a token replacement cleared
//! the account's ledger. Over real HTTP with the simulator and the dispatcher.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;
use vpp_broker::api::assignments::Assignment;
use vpp_broker::apple::types::{AssetKey, PricingParam};
use vpp_broker::db::schema::activity_log;

use crate::support::fixtures::{self, APP, device};
use crate::support::sim::{self, app, location};
use crate::support::{Allocated, TestApp};

const U1: &str = "4000000001";
const U2: &str = "4000000002";
const U3: &str = "4000000003";

struct World {
    sim: vpp_broker::apple_sim::SimHandle,
    app: TestApp,
    a: Uuid,
}

impl World {
    fn api(&self) -> crate::support::Client<'_> {
        self.app.client("acme")
    }
}

async fn world() -> World {
    let w = fixtures::world(
        vec![
            location(U1, "Library A", vec![app(APP, 5)]),
            location(U2, "Library B", vec![app(APP, 5)]),
            location(U3, "Library C", vec![app(APP, 5)]),
        ],
        &[("A", U1)],
    )
    .await;
    World {
        sim: w.sim,
        app: w.app,
        a: w.accounts[0],
    }
}

/// Allocates `APP` for a device; returns the assignment id.
async fn allocated(app: &TestApp, serial: &str) -> Uuid {
    app.client("acme").allocated(&device(serial)).await.id()
}

async fn actions_of(app: &TestApp, assignment: Uuid) -> Vec<String> {
    fixtures::assignment_activity(app, assignment)
        .await
        .into_iter()
        .map(|(action, ..)| action)
        .collect()
}

#[tokio::test]
async fn revoked_and_failed_assignments_and_their_activity_outlive_a_deleted_account() {
    let w = world().await;
    let api = w.api();
    let revoked = allocated(&w.app, "S1").await;
    api.final_state(revoked).await;
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
    assert_eq!(api.final_state(revoked).await.state.as_str(), "revoked");
    // A failed one: Apple has no license left (9709) and no other account can serve.
    w.sim
        .set_asset_total(U1, &AssetKey::new(APP, PricingParam::Stdq), 0)
        .await
        .unwrap();
    let failed = allocated(&w.app, "S2").await;
    assert_eq!(api.final_state(failed).await.state.as_str(), "failed");
    let before_revoked = w
        .app
        .get_json(&format!("/v1/spaces/acme/assignments/{revoked}"))
        .await;
    let before_failed = w
        .app
        .get_json(&format!("/v1/spaces/acme/assignments/{failed}"))
        .await;
    let revoked_log = actions_of(&w.app, revoked).await;
    let failed_log = actions_of(&w.app, failed).await;
    assert!(revoked_log.len() >= 2 && !failed_log.is_empty());

    // Nothing is live: the account goes at once.
    let resp = w
        .app
        .req(Method::DELETE, &format!("/v1/spaces/acme/accounts/{}", w.a))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(
        api.status_of(&format!("/accounts/{}", w.a)).await,
        404,
        "the account is gone"
    );

    // Its history is not: by id, in the listing with its filters, and in the activity log.
    // (Unchanged is compared on the wire, as JSON.)
    for (id, before) in [(&revoked, &before_revoked), (&failed, &before_failed)] {
        let after = w
            .app
            .get_json(&format!("/v1/spaces/acme/assignments/{id}"))
            .await;
        assert_eq!(&after, before, "unchanged after the account went");
    }
    let before_revoked: Assignment = serde_json::from_value(before_revoked).unwrap();
    let before_failed: Assignment = serde_json::from_value(before_failed).unwrap();
    assert_eq!(before_revoked.revocation.as_ref().unwrap().reason, "lost");
    assert_eq!(
        before_failed.error.as_ref().unwrap().number,
        Some(9709),
        "{before_failed:?}"
    );
    let listed = api.assignments(&format!("account_id={}", w.a)).await;
    let ids: Vec<Uuid> = listed.items.iter().map(|i| i.id).collect();
    assert_eq!(ids, vec![revoked, failed]);
    for (state, id) in [("revoked", revoked), ("failed", failed)] {
        let listed = api
            .assignments(&format!(
                "state={state}&adam_id={APP}&subject_kind=device&subject_id={}",
                if id == revoked { "S1" } else { "S2" }
            ))
            .await;
        assert_eq!(listed.items[0].id, id, "{listed:?}");
    }
    assert_eq!(actions_of(&w.app, revoked).await, revoked_log);
    assert_eq!(actions_of(&w.app, failed).await, failed_log);
    let mut conn = w.app.db.connect().await;
    let deleted: i64 = activity_log::table
        .filter(activity_log::account_id.eq(w.a))
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
    assert_eq!(actions_of(&w.app, revoked).await, revoked_log);
}

#[tokio::test]
async fn a_deletion_with_revoke_all_keeps_the_revoked_licenses_once_apple_released_them() {
    let w = world().await;
    let api = w.api();
    let active = allocated(&w.app, "S1").await;
    api.final_state(active).await;
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
    api.account_removed(w.a).await;
    let after = api.assignment(active).await;
    assert_eq!(after.state.as_str(), "revoked", "{after:?}");
    let revocation = after.revocation.as_ref().unwrap();
    assert_eq!(revocation.reason, "account deleted");
    assert_eq!(revocation.by, "test-caller");
    let log = actions_of(&w.app, active).await;
    assert!(
        log.contains(&"assignment.revoked".to_owned()),
        "Apple's release is in the log: {log:?}"
    );
}

#[tokio::test]
async fn clearing_a_replaced_tokens_ledger_finishes_its_licenses_and_keeps_them_readable() {
    let w = world().await;
    let api = w.api();
    let active = allocated(&w.app, "S1").await;
    api.final_state(active).await;
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
    let after = api.assignment(active).await;
    assert_eq!(after.state.as_str(), "revoked", "{after:?}");
    let revocation = after.revocation.as_ref().unwrap();
    assert_eq!(revocation.by, "test-caller");
    assert_eq!(revocation.request_id.as_deref(), Some("req-replace-1"));
    assert!(
        revocation
            .reason
            .contains("stays assigned at the old location"),
        "{after:?}"
    );
    assert_eq!(
        actions_of(&w.app, active).await.last().map(String::as_str),
        Some("assignment.forgotten")
    );
    // The device is free to get a license from the account's new location.
    let again = allocated(&w.app, "S1").await;
    assert_ne!(again, active);
    assert_eq!(api.final_state(again).await.state.as_str(), "active");
    let listed = api.assignments(&format!("account_id={}", w.a)).await;
    assert_eq!(listed.items.len(), 2, "{listed:?}");
}
