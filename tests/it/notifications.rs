//! Apple's notifications reach the service (rule T10 in docs/rules.md): the receiver authenticates
//! them with the per-account bearer token, ignores duplicates, and moves assignments without
//! waiting for a status poll; ASSET_COUNT adjusts counts.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use reqwest::Method;
use serde_json::json;
use vpp_broker::api::assignments::{Allocation, Assignment};
use vpp_broker::apple::types::{AssetKey, NotificationType, PricingParam};
use vpp_broker::apple_sim::FaultsPatch;
use vpp_broker::db::schema::assets;

use crate::support::app::{Options, unpolled_dispatch};
use crate::support::sim::{self, app, location};
use crate::support::{Allocated, TestApp, eventually, eventually_within, expect_problem, read};

const U1: &str = "5000000001";
const APP: &str = "408709785";

/// A server subscribed to Apple's notifications whose dispatcher never polls in a test.
async fn notified_app(sim: &vpp_broker::apple_sim::SimHandle) -> TestApp {
    TestApp::start_opts(Options {
        apple_base_url: sim.base_url(),
        notify_self: true,
        dispatcher: Some(unpolled_dispatch()),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn t10_notifications_complete_assignments_without_polling() {
    let sim = sim::start(vec![location(U1, "Library", vec![app(APP, 10)])]).await;
    // Polls so late that only a notification can finish the event within the test.
    let app = notified_app(&sim).await;
    app.space("acme").await;
    // Attaching subscribed the location; Apple's TEST_NOTIFICATION got through.
    let account = app
        .client("acme")
        .attach("Main", &sim::stoken(&sim, U1))
        .await;
    let snapshot = sim.location(U1).await.unwrap();
    let url = snapshot.notification_url.expect("subscribed");
    assert_eq!(
        url,
        format!("{}/apple/notifications/{}", app.base_url, account.id)
    );
    assert!(
        snapshot
            .notification_types
            .contains(&NotificationType::AssetManagement)
    );

    sim.set_faults(&FaultsPatch {
        duplicate_notifications: Some(5),
        ..Default::default()
    })
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let resp = app
        .req(Method::POST, "/v1/spaces/acme/assignments?wait=15")
        .json(&json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": "S1"}}))
        .send()
        .await
        .unwrap();
    let body: Allocation = resp.json().await.unwrap();
    assert_eq!(body.assignment().state.as_str(), "active", "{body:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "finished by notification, not by a poll"
    );
    // Every delivery (the duplicate too, which may trail the original) was accepted.
    let management = eventually_within(
        Duration::from_secs(10),
        "a duplicate sent",
        async || {
            let deliveries = sim.notifications().await.unwrap();
            deliveries
                .into_iter()
                .filter(|d| d.notification_type == NotificationType::AssetManagement)
                .collect::<Vec<_>>()
        },
        |management| management.iter().any(|d| d.duplicate),
    )
    .await;
    assert!(
        management.iter().all(|d| d.http_status == Some(200)),
        "{management:?}"
    );

    // ASSET_COUNT: a purchase raises the total in the ledger.
    sim.set_asset_total(U1, &AssetKey::new(APP, PricingParam::Stdq), 25)
        .await
        .unwrap();
    let id = account.id;
    eventually_within(
        Duration::from_secs(10),
        "ASSET_COUNT applied (the ledger's total)",
        async || {
            let mut conn = app.db.connect().await;
            assets::table
                .filter(assets::account_id.eq(id))
                .filter(assets::adam_id.eq(APP))
                .select(assets::apple_total)
                .first::<i32>(&mut conn)
                .await
                .unwrap()
        },
        |total| *total == 25,
    )
    .await;
}

#[tokio::test]
async fn forged_notifications_are_refused() {
    let sim = sim::start(vec![location(U1, "Library", vec![app(APP, 10)])]).await;
    let app = TestApp::start_opts(Options {
        apple_base_url: sim.base_url(),
        notify_self: true,
        ..Options::default()
    })
    .await;
    app.space("acme").await;
    let account = app
        .client("acme")
        .attach("Main", &sim::stoken(&sim, U1))
        .await;
    let path = format!("/apple/notifications/{}", account.id);
    let envelope = json!({
        "notificationId": "n-1", "notificationType": "ASSET_COUNT", "uId": U1,
        "notification": {"adamId": APP, "pricingParam": "STDQ", "countDelta": 1000}
    });
    for auth in [None, Some("Bearer not-the-token")] {
        let mut req = app.http.post(app.url(&path)).json(&envelope);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        expect_problem(req.send().await.unwrap(), 401, "unauthorized").await;
    }
    let unknown = app
        .http
        .post(app.url("/apple/notifications/00000000-0000-0000-0000-000000000000"))
        .header("authorization", "Bearer x")
        .json(&envelope)
        .send()
        .await
        .unwrap();
    expect_problem(unknown, 404, "not-found").await;
    let mut conn = app.db.connect().await;
    let total: i32 = assets::table
        .select(assets::apple_total)
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(total, 10, "nothing changed");
}

/// The receiver authenticates a notification for one account; that must never reach another
/// account's ledger. Whoever holds space A's sToken can read A's notification token from
/// Apple's client config, so A's token posting space B's event id (or B's location) changes
/// nothing in B.
#[tokio::test]
async fn a_notification_of_one_account_never_settles_another_accounts_assignments() {
    const U2: &str = "5000000002";
    let sim = sim::start(vec![
        location(U1, "Library A", vec![app(APP, 10)]),
        location(U2, "Library B", vec![app(APP, 10)]),
    ])
    .await;
    // No poll within the test: only a notification could finish B's event.
    let app = notified_app(&sim).await;
    app.space("alpha").await;
    app.space("beta").await;
    let a = app
        .client("alpha")
        .attach("A", &sim::stoken(&sim, U1))
        .await;
    app.account("beta", "B", &sim::stoken(&sim, U2)).await;
    // Apple's notifications are dropped, so B's assignment waits for its event.
    sim.set_faults(&FaultsPatch {
        drop_notifications: Some(1000),
        ..Default::default()
    })
    .await
    .unwrap();
    let resp = app
        .req(Method::POST, "/v1/spaces/beta/assignments")
        .json(&json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": "B-1"}}))
        .send()
        .await
        .unwrap();
    let assignment = read::<Allocation>(resp, 201).await.id();
    let beta = app.client("beta");
    let event = eventually(
        "the association sent to Apple",
        async || beta.assignment(assignment).await.apple_event_id,
        Option::is_some,
    )
    .await
    .unwrap();

    // A's notification token, as Apple's client config shows it to A's sToken holder.
    let config = app
        .state
        .apple
        .get_client_config(&vpp_broker::apple::stoken::SToken::new(sim::stoken(
            &sim, U1,
        )))
        .await
        .unwrap();
    let a_token = config.notification_auth_token.expect("subscribed");
    let a_path = format!("/apple/notifications/{}", a.id);
    for (n, uid) in [("forged-1", U1), ("forged-2", U2)] {
        let forged = json!({
            "notificationId": n, "notificationType": "ASSET_MANAGEMENT", "uId": uid,
            "notification": {
                "eventId": event, "type": "ASSOCIATE", "result": "FAILURE",
                "error": {"errorNumber": 9610, "errorMessage": "forged"},
                "assignments": [{"adamId": APP, "pricingParam": "STDQ", "serialNumber": "B-1"}]
            }
        });
        let resp = app
            .http
            .post(app.url(&a_path))
            .header("authorization", format!("Bearer {}", a_token.expose()))
            .json(&forged)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "acknowledged, so Apple does not retry");
    }
    let now: Assignment = beta.assignment(assignment).await;
    assert_eq!(now.state.as_str(), "associating", "{now:?}");
    assert!(now.error.is_none(), "{now:?}");
}
