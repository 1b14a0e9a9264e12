//! Apple's notifications with bad input: out-of-range numbers and undecodable payloads are
//! refused (422) and recorded, never a 500; ids are deduplicated per account and required.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};
use uuid::Uuid;
use vpp_broker::db::schema::{activity_log, assets};

use crate::support::app::Options;
use crate::support::sim::{self, app, location};
use crate::support::{TestApp, expect_problem};

const U1: &str = "5000000001";
const U2: &str = "5000000002";
const APP: &str = "408709785";

struct Notified {
    _sim: vpp_broker::apple_sim::SimHandle,
    app: TestApp,
    /// (account id, notification path, bearer token) per location.
    accounts: Vec<(Uuid, String, String)>,
}

/// Two subscribed accounts (U1 in `acme`, U2 in `beta`), each owning 10 licenses of APP; no
/// dispatcher, so only notifications change the counts.
async fn notified() -> Notified {
    let sim = sim::start(vec![
        location(U1, "Library A", vec![app(APP, 10)]),
        location(U2, "Library B", vec![app(APP, 10)]),
    ])
    .await;
    let app = TestApp::start_opts(Options {
        apple_base_url: sim.base_url(),
        notify_self: true,
        dispatcher: None,
        ..Options::default()
    })
    .await;
    let mut accounts = Vec::new();
    for (space, u_id) in [("acme", U1), ("beta", U2)] {
        app.space(space).await;
        let stoken = sim::stoken(&sim, u_id);
        let id = app.client(space).attach(space, &stoken).await.id;
        let config = app
            .state
            .apple
            .get_client_config(&vpp_broker::apple::stoken::SToken::new(stoken))
            .await
            .unwrap();
        let token = config.notification_auth_token.expect("subscribed");
        accounts.push((
            id,
            format!("/apple/notifications/{id}"),
            token.expose().to_owned(),
        ));
    }
    Notified {
        _sim: sim,
        app,
        accounts,
    }
}

impl Notified {
    async fn post_raw(&self, account: usize, body: String) -> reqwest::Response {
        let (_, path, token) = &self.accounts[account];
        self.app
            .http
            .post(self.app.url(path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn post(&self, account: usize, body: Value) -> reqwest::Response {
        self.post_raw(account, body.to_string()).await
    }

    async fn total(&self, account: usize) -> i32 {
        let mut conn = self.app.db.connect().await;
        assets::table
            .filter(assets::account_id.eq(self.accounts[account].0))
            .filter(assets::adam_id.eq(APP))
            .select(assets::apple_total)
            .first(&mut conn)
            .await
            .unwrap()
    }

    /// `details` of the `apple.notification_rejected` activity rows of an account.
    async fn rejections(&self, account: usize) -> Vec<Value> {
        let mut conn = self.app.db.connect().await;
        activity_log::table
            .filter(activity_log::action.eq("apple.notification_rejected"))
            .filter(activity_log::account_id.eq(self.accounts[account].0))
            .order(activity_log::id)
            .select(activity_log::details)
            .load(&mut conn)
            .await
            .unwrap()
    }
}

fn asset_count(id: &str, u_id: &str, delta: &str) -> String {
    format!(
        r#"{{"notificationId": "{id}", "notificationType": "ASSET_COUNT", "uId": "{u_id}",
            "notification": {{"adamId": "{APP}", "pricingParam": "STDQ", "countDelta": {delta}}}}}"#
    )
}

#[tokio::test]
async fn out_of_range_asset_counts_are_refused_recorded_and_refused_again_on_retry() {
    let n = notified().await;
    // (id, countDelta as JSON text, problem slug)
    let cases = [
        ("max", i64::MAX.to_string(), "validation-failed"),
        ("min", i64::MIN.to_string(), "validation-failed"),
        (
            "int-plus-one",
            (i32::MAX as i64 + 1).to_string(),
            "validation-failed",
        ),
        (
            "beyond-i64",
            "18446744073709551616".to_owned(),
            "invalid-body",
        ),
        ("fraction", "1.5".to_owned(), "invalid-body"),
        ("text", "\"12\"".to_owned(), "invalid-body"),
    ];
    for (id, delta, slug) in &cases {
        // Apple retries what is not acknowledged: every delivery gets the same answer.
        for delivery in 0..2 {
            let resp = n.post_raw(0, asset_count(id, U1, delta)).await;
            let problem = expect_problem(resp, 422, slug).await;
            let field = problem["errors"][0]["field"].as_str().unwrap().to_owned();
            if *slug == "validation-failed" {
                assert_eq!(
                    field, "notification.countDelta",
                    "{id} #{delivery}: {problem}"
                );
                assert!(
                    problem["detail"].as_str().unwrap().contains(delta.as_str()),
                    "{problem}"
                );
            } else {
                assert_eq!(field, "notification", "{id} #{delivery}: {problem}");
            }
        }
    }
    assert_eq!(n.total(0).await, 10, "no count changed");
    let recorded = n.rejections(0).await;
    assert_eq!(
        recorded.len(),
        cases.len(),
        "one record per notification: {recorded:?}"
    );
    for ((id, _, _), details) in cases.iter().zip(&recorded) {
        assert_eq!(details["notification_id"], *id, "{details}");
        assert_eq!(details["notification_type"], "ASSET_COUNT");
        assert!(!details["reason"].as_str().unwrap().is_empty());
    }

    // Counts in range still apply, the largest one included (the total is capped).
    let resp = n.post_raw(0, asset_count("ok", U1, "-3")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(n.total(0).await, 7);
    let resp = n
        .post_raw(0, asset_count("largest", U1, &i32::MAX.to_string()))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(n.total(0).await, i32::MAX);
}

#[tokio::test]
async fn notification_ids_are_deduplicated_per_account_and_required() {
    let n = notified().await;
    // Without an id (or with an empty one) a retry cannot be recognised: refused, nothing stored.
    for body in [
        json!({"notificationType": "ASSET_COUNT", "uId": U1,
               "notification": {"adamId": APP, "pricingParam": "STDQ", "countDelta": 1}}),
        json!({"notificationId": "", "notificationType": "ASSET_COUNT", "uId": U1,
               "notification": {"adamId": APP, "pricingParam": "STDQ", "countDelta": 1}}),
        json!({"notificationId": "   ", "notificationType": "ASSET_COUNT", "uId": U1,
               "notification": {"adamId": APP, "pricingParam": "STDQ", "countDelta": 1}}),
    ] {
        let problem = expect_problem(n.post(0, body).await, 422, "invalid-body").await;
        assert_eq!(problem["errors"][0]["field"], "notificationId", "{problem}");
    }
    assert_eq!(n.total(0).await, 10);
    let mut conn = n.app.db.connect().await;
    let stored: i64 = vpp_broker::db::schema::apple_notifications::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, 0, "id-less notifications leave no dedupe row");

    // The same id from two accounts is two notifications; from one account twice, one.
    let resp = n.post_raw(0, asset_count("same-id", U1, "1")).await;
    assert_eq!(resp.status(), 200);
    let resp = n.post_raw(1, asset_count("same-id", U2, "2")).await;
    assert_eq!(resp.status(), 200);
    let resp = n.post_raw(0, asset_count("same-id", U1, "1")).await;
    assert_eq!(resp.status(), 200, "a duplicate is acknowledged");
    assert_eq!(n.total(0).await, 11, "applied once for A");
    assert_eq!(
        n.total(1).await,
        12,
        "B's notification was not taken for A's"
    );

    // A refusal for one account does not answer the other's notification of the same id.
    let resp = n
        .post_raw(0, asset_count("shared", U1, &i64::MAX.to_string()))
        .await;
    expect_problem(resp, 422, "validation-failed").await;
    let resp = n.post_raw(1, asset_count("shared", U2, "5")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(n.total(1).await, 17);
}
