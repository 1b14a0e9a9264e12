//! Distribution policies as a resource: create, read, list, replace and delete, validated, with
//! `ETag`/`If-Match` (the rules they drive, A2/A3 in docs/rules.md, are tested in `allocation`).

use reqwest::Method;
use serde_json::json;

use uuid::Uuid;
use vpp_broker::api::policies::Policy;

use crate::support::fixtures::{self, APP};
use crate::support::sim::{app, location};
use crate::support::{TestApp, expect_problem, read};

const U1: &str = "3000000001";

async fn world() -> (vpp_broker::apple_sim::SimHandle, TestApp, Uuid) {
    let w = fixtures::world(
        vec![location(U1, "Library", vec![app(APP, 10)])],
        &[("Main", U1)],
    )
    .await;
    w.app.space("other").await;
    (w.sim, w.app, w.accounts[0])
}

#[tokio::test]
async fn policies_are_created_read_replaced_and_deleted_with_if_match() {
    let (_sim, app, account) = world().await;
    let path = format!("/v1/spaces/acme/policies/{APP}/STDQ");
    let body = json!({
        "reserved": [{"kind": "device", "id": "VIP-1", "account_id": account}, {"kind": "user", "id": "ceo"}],
        "fcfs_groups": ["staff"],
        "disallowed": [{"kind": "group", "id": "interns"}]
    });
    let resp = app
        .req(Method::PUT, &path)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "a new policy is created");
    assert_eq!(resp.headers()["location"].to_str().unwrap(), path);
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    let created: Policy = read(resp, 201).await;
    assert_eq!(created.reserved.len(), 2);
    assert_eq!(created.fcfs_groups, ["staff"]);
    assert_eq!(created.disallowed[0].id, "interns");

    let resp = app.req(Method::GET, &path).send().await.unwrap();
    assert_eq!(resp.headers()["etag"].to_str().unwrap(), etag);
    let listed = app.client("acme").policies().await;
    assert_eq!(listed.items.len(), 1);

    // Replace with the current ETag; a stale one is refused and changes nothing.
    let resp = app
        .req(Method::PUT, &path)
        .header("if-match", &etag)
        .json(&json!({"disallowed": [{"kind": "device", "id": "LOST"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "an existing policy is replaced");
    let replaced: Policy = read(resp, 200).await;
    assert!(replaced.reserved.is_empty());
    let stale = app
        .req(Method::PUT, &path)
        .header("if-match", &etag)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    expect_problem(stale, 412, "precondition-failed").await;
    let stale = app
        .req(Method::DELETE, &path)
        .header("if-match", &etag)
        .send()
        .await
        .unwrap();
    expect_problem(stale, 412, "precondition-failed").await;
    let now: Policy = app.get_as(&path).await;
    assert_eq!(now.disallowed[0].id, "LOST");

    let current = format!("\"{}\"", now.version);
    let resp = app
        .req(Method::DELETE, &path)
        .header("if-match", &current)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    expect_problem(
        app.req(Method::GET, &path).send().await.unwrap(),
        404,
        "not-found",
    )
    .await;
    expect_problem(
        app.req(Method::DELETE, &path).send().await.unwrap(),
        404,
        "not-found",
    )
    .await;
}

#[tokio::test]
async fn bad_policies_are_refused_and_change_nothing() {
    let (_sim, app, account) = world().await;
    let path = format!("/v1/spaces/acme/policies/{APP}/STDQ");
    let foreign = uuid::Uuid::now_v7();
    for (body, field) in [
        // The same subject in two modes.
        (
            json!({"reserved": [{"kind": "device", "id": "D1"}], "disallowed": [{"kind": "device", "id": "D1"}]}),
            "disallowed[0].id",
        ),
        // A reservation from an account outside the space.
        (
            json!({"reserved": [{"kind": "device", "id": "D1", "account_id": foreign}]}),
            "reserved[0].account_id",
        ),
        (json!({"fcfs_groups": [""]}), "fcfs_groups[0]"),
    ] {
        let resp = app
            .req(Method::PUT, &path)
            .json(&body)
            .send()
            .await
            .unwrap();
        let problem = expect_problem(resp, 422, "validation-failed").await;
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    // A reservation from an account of the space that does not own the asset holds nothing back.
    let resp = app
        .req(Method::PUT, "/v1/spaces/acme/policies/999999/STDQ")
        .json(&json!({"reserved": [{"kind": "device", "id": "D1", "account_id": account}]}))
        .send()
        .await
        .unwrap();
    let problem = expect_problem(resp, 422, "validation-failed").await;
    assert_eq!(problem["errors"][0]["field"], "reserved[0].account_id");
    assert!(
        problem["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("does not own"),
        "{problem}"
    );
    let resp = app
        .req(Method::GET, "/v1/spaces/acme/policies/999999/STDQ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "nothing was stored");
    // Reservations name individuals: a group cannot be reserved.
    let resp = app
        .req(Method::PUT, &path)
        .json(&json!({"reserved": [{"kind": "group", "id": "staff"}]}))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 422, "invalid-body").await;
    for bad in [
        "/v1/spaces/acme/policies/not-a-number/STDQ",
        "/v1/spaces/acme/policies/408709785/GOLD",
    ] {
        let resp = app
            .req(Method::PUT, bad)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        expect_problem(resp, 400, "invalid-parameter").await;
    }
    // Another space's account cannot be named either, and nothing was stored.
    let resp = app
        .req(
            Method::PUT,
            &format!("/v1/spaces/other/policies/{APP}/STDQ"),
        )
        .json(&json!({"reserved": [{"kind": "device", "id": "D1", "account_id": account}]}))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 422, "validation-failed").await;
    let listed = app.client("acme").policies().await;
    assert!(listed.items.is_empty());
}
