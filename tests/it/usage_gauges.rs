//! The license usage gauges of `GET /metrics` (issue 12, "Exports and metrics"): per space, with
//! the label `space` only, computed from the ledger at scrape time.

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::json;
use vpp_broker::apple::types::PricingParam;
use vpp_broker::apple_sim::SeedAssignment;

use crate::support::fixtures::{self, APP, BOOK, device};
use crate::support::sim::{self, app, book, location};
use crate::support::{Allocated, TestApp, eventually};

const U1: &str = "3000000001";
const U2: &str = "3000000002";

/// The samples of the license gauges: (metric, space) → value. Panics on a sample with another
/// label than `space`.
async fn license_gauges(app: &TestApp) -> BTreeMap<(String, String), i64> {
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("licenses_")) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = series.split_once('{').unwrap();
        let space = labels
            .strip_prefix("space=\"")
            .and_then(|l| l.strip_suffix("\"}"))
            .unwrap_or_else(|| panic!("a label other than `space`: {line}"));
        out.insert((name.to_owned(), space.to_owned()), value.parse().unwrap());
    }
    assert!(
        text.contains("# TYPE licenses_available gauge"),
        "no gauge family in:\n{text}"
    );
    out
}

/// (owned, held, assigned elsewhere, available) of a space, as scraped.
fn figures(g: &BTreeMap<(String, String), i64>, space: &str) -> [i64; 4] {
    ["owned", "held", "assigned_elsewhere", "available"].map(|f| {
        *g.get(&(format!("licenses_{f}"), space.to_owned()))
            .unwrap_or_else(|| panic!("no licenses_{f} for {space}: {g:?}"))
    })
}

#[tokio::test]
async fn license_usage_gauges_per_space_follow_allocations_and_revocations() {
    let mut acme_location = location(U1, "Library", vec![app(APP, 10), book(BOOK, 5)]);
    // Two licenses another MDM assigned: owned but not available, not held by this service.
    acme_location.assignments = ["OTHER-1", "OTHER-2"]
        .map(|serial| SeedAssignment {
            adam_id: APP.into(),
            pricing_param: PricingParam::Stdq,
            serial_number: Some(serial.into()),
            client_user_id: None,
        })
        .to_vec();
    let w = fixtures::world(
        vec![acme_location, location(U2, "Branch", vec![app(APP, 4)])],
        &[("Main", U1)],
    )
    .await;
    w.app.space("beta").await;
    w.app.space("empty").await;
    w.app
        .client("beta")
        .attach("Branch", &sim::stoken(&w.sim, U2))
        .await;

    // Before any allocation: what the accounts own, less what others assigned.
    let g = license_gauges(&w.app).await;
    assert_eq!(figures(&g, "acme"), [15, 0, 2, 13]);
    assert_eq!(figures(&g, "beta"), [4, 0, 0, 4]);
    assert_eq!(figures(&g, "empty"), [0, 0, 0, 0]);
    let spaces: Vec<&str> = g.keys().map(|(_, s)| s.as_str()).collect();
    assert!(
        spaces.iter().all(|s| ["acme", "beta", "empty"].contains(s)),
        "{spaces:?}"
    );

    // Five device licenses and a user's book in acme, one device license revoked; one in beta.
    let api = w.api();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(api.allocated(&device(&format!("D{i}"))).await.id());
    }
    api.allocated(&json!({"asset": {"adam_id": BOOK}, "subject": {"kind": "user", "id": "u1"}}))
        .await;
    let resp = api.revoke(ids[0], "?reason=retired").await;
    assert!([200, 202].contains(&resp.status().as_u16()));
    w.app.client("beta").allocated(&device("B1")).await;

    let g = license_gauges(&w.app).await;
    assert_eq!(figures(&g, "acme"), [15, 5, 2, 8]);
    assert_eq!(figures(&g, "beta"), [4, 1, 0, 3]);
    assert_eq!(figures(&g, "empty"), [0, 0, 0, 0]);
    // The ledger says the same: live assignments of acme.
    let live = api.assignments("live=true&limit=200").await.items.len() as i64;
    assert_eq!(live, 5);

    // Once Apple confirmed everything, the figures stand (the sync re-reads Apple's counts).
    for id in &ids[1..] {
        api.final_state(*id).await;
    }
    eventually(
        "acme's figures after Apple settled",
        async || figures(&license_gauges(&w.app).await, "acme"),
        |f| *f == [15, 5, 2, 8],
    )
    .await;

    // A deleted space's series go with it.
    let resp = w
        .app
        .req(Method::DELETE, "/v1/spaces/empty")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let g = license_gauges(&w.app).await;
    assert!(
        !g.keys().any(|(_, space)| space == "empty"),
        "deleted space still reported: {g:?}"
    );
}
