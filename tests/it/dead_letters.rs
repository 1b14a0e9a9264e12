//! Dead letters (issue 10): an Apple job that keeps failing is set aside after
//! `VPP_JOB_MAX_ATTEMPTS` attempts instead of being retried forever, listed per space with its
//! last error, counted in the metrics, and retried by hand, after which its work goes on.

use reqwest::Method;
use serde_json::Value;
use vpp_broker::apple_sim::{FailRule, FaultsPatch};

use crate::support::app::{Options, fast_dispatch};
use crate::support::fixtures::{self, APP, device};
use crate::support::sim::{app, location};
use crate::support::{Allocated, eventually, expect_problem, token};

const U1: &str = "3000000091";

/// One account of 5 licenses, the fast dispatcher with a dead letter after three failures.
async fn world_failing_after_three() -> fixtures::World {
    fixtures::world_with(
        vec![location(U1, "Lib", vec![app(APP, 5)])],
        |_| Options {
            dispatcher: Some(vpp_broker::dispatch::Settings {
                max_attempts: 3,
                ..fast_dispatch("")
            }),
            ..Options::default()
        },
        &[("A", U1)],
    )
    .await
}

/// Apple answers the next `count` association requests with `status` and `number` (and a
/// Retry-After of `retry_after` seconds).
async fn fail_associations(
    w: &fixtures::World,
    count: u32,
    status: u16,
    number: i32,
    retry_after: Option<u64>,
) {
    w.sim
        .set_faults(&FaultsPatch {
            fail_next: Some(FailRule {
                after: 0,
                count,
                status,
                error_number: number,
                retry_after_secs: retry_after,
                retry_after_http_date: false,
                location: Some(U1.into()),
                endpoint: Some("assets/associate".into()),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn t10_a_job_that_keeps_failing_becomes_a_dead_letter_until_retried() {
    let w = world_failing_after_three().await;
    let api = w.api();
    // Apple fails every association with a transient error (HTTP 500, 9603).
    fail_associations(&w, 1_000, 500, 9603, None).await;
    let assignment = api.allocated(&device("DEAD1")).await.id();
    let page = eventually(
        "the association set aside after three failed attempts",
        async || w.app.get_json("/v1/spaces/acme/dead-letters").await,
        |page: &Value| page["items"].as_array().is_some_and(|i| !i.is_empty()),
    )
    .await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{page}");
    let dead = &items[0];
    assert_eq!(dead["kind"], "associate");
    assert_eq!(dead["state"], "dead");
    assert_eq!(dead["assignment_id"], assignment.to_string());
    assert_eq!(dead["account_id"], w.accounts[0].to_string());
    assert_eq!(dead["adam_id"], APP);
    assert_eq!(dead["failures"], 3);
    assert!(dead["dead_at"].is_string(), "{dead}");
    let error = dead["last_error"].as_str().unwrap();
    assert!(error.contains("9603"), "{error}");
    // No further attempt is made: three requests reached Apple, no more.
    let associates = |counters: &std::collections::BTreeMap<String, u64>| {
        counters.get("POST /assets/associate").copied().unwrap_or(0)
    };
    let before = associates(&w.sim.counters().await.unwrap());
    assert_eq!(before, 3);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(associates(&w.sim.counters().await.unwrap()), before);
    // Its work waits: the license stays held, the assignment pending.
    assert_eq!(api.assignment(assignment).await.state.as_str(), "pending");

    // One dead letter by id; the metrics count it.
    let id = dead["id"].as_i64().unwrap();
    let one = w
        .app
        .get_json(&format!("/v1/spaces/acme/dead-letters/{id}"))
        .await;
    assert_eq!(one["id"], id);
    let ctx = vpp_broker::dispatch::Ctx::new(
        w.app.state.clone(),
        vpp_broker::dispatch::Settings {
            database_url: w.app.db.url.clone(),
            ..fast_dispatch("")
        },
    );
    vpp_broker::dispatch::maintenance::once(&ctx).await.unwrap();
    let metrics = w
        .app
        .http
        .get(w.app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("apple_jobs_dead_lettered_total{kind=\"associate\"}"),
        "the counter"
    );
    assert!(
        metrics.contains("apple_jobs_dead{kind=\"associate\"}"),
        "the gauge"
    );

    // Bad input: another space, a read-only caller retrying, an id that is no number.
    w.app.space("other").await;
    let resp = w
        .app
        .req(Method::GET, &format!("/v1/spaces/other/dead-letters/{id}"))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not-found").await;
    let reader = token("licenses:read", &["acme"]);
    let resp = w
        .app
        .req_as(
            Method::POST,
            &format!("/v1/spaces/acme/dead-letters/{id}/retry"),
            &reader,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = w
        .app
        .req(Method::GET, "/v1/spaces/acme/dead-letters/forty-two")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());
    let resp = w
        .app
        .req(Method::GET, "/v1/spaces/acme/dead-letters?cursor=forged")
        .send()
        .await
        .unwrap();
    expect_problem(resp, 400, "invalid-parameter").await;

    // Apple works again; the dead letter is retried and its work goes on.
    w.sim.clear_faults().await.unwrap();
    let resp = w
        .app
        .req(
            Method::POST,
            &format!("/v1/spaces/acme/dead-letters/{id}/retry"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let retried: Value = resp.json().await.unwrap();
    assert_eq!(retried["state"], "queued");
    assert_eq!(retried["failures"], 0);
    assert_eq!(api.final_state(assignment).await.state.as_str(), "active");
    let page = w.app.get_json("/v1/spaces/acme/dead-letters").await;
    assert_eq!(page["items"], serde_json::json!([]));
    // Retrying again: nothing to retry.
    let resp = w
        .app
        .req(
            Method::POST,
            &format!("/v1/spaces/acme/dead-letters/{id}/retry"),
        )
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not-found").await;
}

#[tokio::test]
async fn t10_an_account_s_waits_never_make_a_dead_letter() {
    // Only failed attempts count: Apple throttling the account (503 with Retry-After, T7) four
    // times in a row pauses the work, and with a limit of three failures it is still no dead
    // letter — the work resumes by itself and ends active.
    let w = world_failing_after_three().await;
    let api = w.api();
    fail_associations(&w, 4, 503, 9729, Some(1)).await;
    let assignment = api.allocated(&device("WAITS1")).await.id();
    assert_eq!(api.final_state(assignment).await.state.as_str(), "active");
    let counters = w.sim.counters().await.unwrap();
    assert!(
        counters.get("POST /assets/associate").copied().unwrap_or(0) >= 5,
        "four throttled attempts, then the one that went through: {counters:?}"
    );
    let page = w.app.get_json("/v1/spaces/acme/dead-letters").await;
    assert_eq!(page["items"], serde_json::json!([]));
}

#[tokio::test]
async fn t10_a_dead_letter_whose_work_is_no_longer_needed_goes_away() {
    // The association failed for good; the license is then revoked: nothing waits for that
    // association any more, so it is no dead letter either (the alert on `apple_jobs_dead`
    // clears).
    let w = world_failing_after_three().await;
    let api = w.api();
    fail_associations(&w, 1_000, 500, 9603, None).await;
    let assignment = api.allocated(&device("GONE1")).await.id();
    eventually(
        "the association set aside",
        async || w.app.get_json("/v1/spaces/acme/dead-letters").await,
        |page: &Value| page["items"].as_array().is_some_and(|i| i.len() == 1),
    )
    .await;
    assert_eq!(api.revoke(assignment, "").await.status(), 200);
    let ctx = vpp_broker::dispatch::Ctx::new(
        w.app.state.clone(),
        vpp_broker::dispatch::Settings {
            database_url: w.app.db.url.clone(),
            ..fast_dispatch("")
        },
    );
    vpp_broker::dispatch::maintenance::once(&ctx).await.unwrap();
    let page = w.app.get_json("/v1/spaces/acme/dead-letters").await;
    assert_eq!(page["items"], serde_json::json!([]));
    assert_eq!(api.assignment(assignment).await.state.as_str(), "revoked");
}
