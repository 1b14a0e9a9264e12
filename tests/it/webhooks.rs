//! Signed webhooks (issue 15, rules N3, N6): a real HTTP receiver on a real port (actix, in this
//! process), the service on a real port with a webhook sender, events appended with
//! `ledger::events::append`, signatures checked by the independent `standardwebhooks` crate.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use chrono::Utc;
use diesel_async::RunQueryDsl;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::app::{Options, TestApp};
use crate::support::{eventually, expect_problem};
use vpp_broker::ledger::events::{self, NewEvent};

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Got {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    at: Instant,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// Verifies the signature with `secret` (the standardwebhooks crate, which also checks
    /// the timestamp is recent).
    fn verify(&self, secret: &str) -> Result<(), String> {
        let mut headers = reqwest::header::HeaderMap::new();
        for (n, v) in &self.headers {
            headers.insert(
                reqwest::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        standardwebhooks::Webhook::new(secret)
            .map_err(|e| format!("{e:?}"))?
            .verify(&self.body, &headers)
            .map_err(|e| format!("{e:?}"))
    }
}

/// The receiver's planned answers: status and `Retry-After`.
type Plan = Arc<Mutex<VecDeque<(u16, Option<&'static str>)>>>;

/// A webhook receiver: answers each request with the next planned `(status, Retry-After)`,
/// then with 200.
#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Got>>>,
    plan: Plan,
    always: Arc<Mutex<Option<u16>>>,
    /// How long each answer takes.
    delay: Arc<Mutex<Duration>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let got: Arc<Mutex<Vec<Got>>> = Arc::default();
        let plan: Plan = Arc::default();
        let always: Arc<Mutex<Option<u16>>> = Arc::default();
        let delay: Arc<Mutex<Duration>> = Arc::default();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (g, p, a, d) = (got.clone(), plan.clone(), always.clone(), delay.clone());
        let server = HttpServer::new(move || {
            let (g, p, a, d) = (g.clone(), p.clone(), a.clone(), d.clone());
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let (g, p, a, d) = (g.clone(), p.clone(), a.clone(), d.clone());
                async move {
                    let wait = *d.lock().unwrap();
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    g.lock().unwrap().push(Got {
                        headers: req
                            .headers()
                            .iter()
                            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
                            .collect(),
                        body: body.to_vec(),
                        at: Instant::now(),
                    });
                    let planned = p.lock().unwrap().pop_front();
                    let (status, retry_after) =
                        planned.unwrap_or((a.lock().unwrap().unwrap_or(200), None));
                    let mut resp =
                        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
                    if let Some(r) = retry_after {
                        resp.insert_header(("retry-after", r));
                    }
                    resp.body(format!("answer {status}"))
                }
            }))
        })
        .workers(2)
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        Receiver {
            url: format!("http://{addr}/hook"),
            got,
            plan,
            always,
            delay,
        }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    fn plan(&self, answers: &[(u16, Option<&'static str>)]) {
        self.plan.lock().unwrap().extend(answers.iter().copied());
    }

    fn always(&self, status: u16) {
        *self.always.lock().unwrap() = Some(status);
    }
}

/// Webhook settings for tests: a sender here, private addresses allowed, a fast poll, the
/// retry schedule shrunk a thousandfold (5 s → 5 ms, 5 min → 0.3 s, 30 min → 1.8 s).
fn test_webhooks() -> vpp_broker::config::WebhookArgs {
    vpp_broker::config::WebhookArgs {
        webhook_workers: 1,
        webhook_allow_private: true,
        webhook_poll_ms: 20,
        webhook_retry_scale: 0.001,
        ..vpp_broker::config::WebhookArgs::default()
    }
}

async fn app_with(webhooks: vpp_broker::config::WebhookArgs) -> TestApp {
    let app = TestApp::start_opts(Options {
        webhooks,
        ..Options::default()
    })
    .await;
    app.space("s1").await;
    app.space("s2").await;
    app
}

/// Creates an endpoint; returns its id and secret.
async fn create(app: &TestApp, space: &str, body: Value) -> (String, String) {
    let resp = app
        .req(Method::POST, &format!("/v1/spaces/{space}/webhooks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(status, 201, "{v}");
    let secret = v["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    (v["id"].as_str().unwrap().to_owned(), secret)
}

/// Appends events of `type_` to the space (as the event writer would); returns their ids.
async fn append(app: &TestApp, space: &str, types: &[&str]) -> Vec<Uuid> {
    let mut conn = app.pool.get().await.unwrap();
    let new: Vec<NewEvent> = types
        .iter()
        .enumerate()
        .map(|(i, t)| NewEvent {
            space_id: space.to_owned(),
            id: Uuid::now_v7(),
            type_: (*t).to_owned(),
            occurred_at: Utc::now(),
            activity_id: None,
            data: json!({"n": i, "version": 1}),
        })
        .collect();
    let ids = new.iter().map(|e| e.id).collect();
    use diesel_async::AsyncConnection;
    conn.transaction(async |c| events::append(c, new).await.map(|_| ()))
        .await
        .unwrap();
    ids
}

async fn deliveries(app: &TestApp, space: &str, id: &str) -> Vec<Value> {
    let v = app
        .get_json(&format!(
            "/v1/spaces/{space}/webhooks/{id}/deliveries?limit=200"
        ))
        .await;
    v["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn n6_deliveries_are_signed_and_verified_by_standardwebhooks() {
    let app = app_with(test_webhooks()).await;
    let rx = Receiver::start().await;
    let (all, secret) = create(&app, "s1", json!({"url": rx.url, "description": "all"})).await;
    let rx2 = Receiver::start().await;
    let (_only, secret2) = create(
        &app,
        "s1",
        json!({"url": rx2.url, "event_types": ["assignment.revoked"]}),
    )
    .await;
    let ids = append(
        &app,
        "s1",
        &[
            "assignment.allocated",
            "assignment.revoked",
            "assignment.active",
        ],
    )
    .await;
    // Another space's events reach neither.
    append(&app, "s2", &["assignment.allocated"]).await;
    eventually("three deliveries", async || rx.got().len(), |n| *n >= 3).await;
    eventually(
        "one filtered delivery",
        async || rx2.got().len(),
        |n| *n >= 1,
    )
    .await;
    let got = rx.got();
    let mut seen: Vec<String> = Vec::new();
    for g in &got {
        g.verify(&secret)
            .expect("standardwebhooks accepts the signature");
        assert!(
            g.verify(&secret2).is_err(),
            "another endpoint's secret does not verify"
        );
        let body = g.json();
        assert_eq!(
            g.header("webhook-id").unwrap(),
            body["id"].as_str().unwrap()
        );
        assert_eq!(g.header("content-type").unwrap(), "application/json");
        assert_eq!(body["space"], "s1");
        assert_eq!(body["api_version"], events::API_VERSION);
        assert!(body["sequence"].as_i64().unwrap() >= 1);
        assert!(body["occurred_at"].is_string());
        assert_eq!(body["data"]["version"], 1);
        seen.push(body["id"].as_str().unwrap().to_owned());
    }
    seen.sort();
    let mut want: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    want.sort();
    assert_eq!(seen, want, "each event once, none of s2's");
    let filtered = rx2.got();
    assert_eq!(filtered.len(), 1);
    filtered[0].verify(&secret2).unwrap();
    assert_eq!(filtered[0].json()["type"], "assignment.revoked");
    assert_eq!(filtered[0].json()["id"], ids[1].to_string());
    // The log: one delivered attempt per event, with status, latency and the answer's start.
    let log = eventually(
        "the log has three attempts",
        async || deliveries(&app, "s1", &all).await,
        |l| l.len() == 3,
    )
    .await;
    for a in &log {
        assert_eq!(a["delivered"], true);
        assert_eq!(a["status"], 200);
        assert_eq!(a["attempt"], 1);
        assert_eq!(a["response"], "answer 200");
        assert!(a["next_attempt_at"].is_null());
    }
    // Nothing is sent twice.
    tokio::time::sleep(Duration::from_millis(300)).await; // nothing to poll for
    assert_eq!(rx.got().len(), 3);
}

#[tokio::test]
async fn n6_a_failing_receiver_is_retried_on_the_schedule_with_the_same_webhook_id() {
    let app = app_with(test_webhooks()).await;
    let rx = Receiver::start().await;
    // 503 asking for 1 s, then two 500s, then 200.
    rx.plan(&[(503, Some("1")), (500, None), (500, None)]);
    let (id, secret) = create(&app, "s1", json!({"url": rx.url})).await;
    let ids = append(&app, "s1", &["assignment.failed"]).await;
    eventually("four attempts", async || rx.got().len(), |n| *n >= 4).await;
    let got = rx.got();
    assert_eq!(got.len(), 4);
    for g in &got {
        assert_eq!(g.header("webhook-id").unwrap(), ids[0].to_string());
        g.verify(&secret).unwrap();
    }
    // Retry-After (1 s) beat the schedule's 5 ms.
    assert!(got[1].at - got[0].at >= Duration::from_millis(950));
    // Then the schedule: 5 min × 0.001 ± 20 % ≥ 240 ms; 30 min × 0.001 ≥ 1.44 s.
    assert!(got[2].at - got[1].at >= Duration::from_millis(230));
    assert!(got[3].at - got[2].at >= Duration::from_millis(1400));
    let log = eventually(
        "four logged attempts",
        async || deliveries(&app, "s1", &id).await,
        |l| l.len() == 4,
    )
    .await;
    // Newest first.
    let attempts: Vec<i64> = log.iter().map(|a| a["attempt"].as_i64().unwrap()).collect();
    assert_eq!(attempts, [4, 3, 2, 1]);
    assert_eq!(log[0]["delivered"], true);
    for a in &log[1..] {
        assert_eq!(a["delivered"], false);
        assert!(a["next_attempt_at"].is_string());
    }
    assert_eq!(log[3]["status"], 503);
    // A success ends the failure streak.
    let w = app.get_json(&format!("/v1/spaces/s1/webhooks/{id}")).await;
    assert!(w["failing_since"].is_null());
    assert_eq!(w["enabled"], true);
}

#[tokio::test]
async fn n6_a_receiver_that_never_answers_2xx_gets_eight_attempts_then_none() {
    let app = app_with(vpp_broker::config::WebhookArgs {
        // 10 h × 0.00002 = 0.72 s: the whole schedule in about 2 s.
        webhook_retry_scale: 0.000_02,
        ..test_webhooks()
    })
    .await;
    let rx = Receiver::start().await;
    rx.always(500);
    let (id, _) = create(&app, "s1", json!({"url": rx.url})).await;
    append(&app, "s1", &["assignment.failed"]).await;
    eventually("eight attempts", async || rx.got().len(), |n| *n >= 8).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // nothing to poll for: no ninth
    assert_eq!(rx.got().len(), 8);
    let log = deliveries(&app, "s1", &id).await;
    assert_eq!(log.len(), 8);
    assert!(
        log[0]["next_attempt_at"].is_null(),
        "given up after the 8th"
    );
    let w = app.get_json(&format!("/v1/spaces/s1/webhooks/{id}")).await;
    assert!(w["failing_since"].is_string());
}

#[tokio::test]
async fn n6_a_receiver_down_for_an_hour_gets_everything_afterwards_within_the_scheduled_attempts() {
    // Scale 0.0005: an hour is 1.8 s; the schedule 0, 5 s, 5 min, 30 min, 2 h is 0, 2.5 ms,
    // 150 ms, 900 ms, 3.6 s (±20 %): four attempts fall within the hour, the fifth after it.
    let app = app_with(vpp_broker::config::WebhookArgs {
        webhook_retry_scale: 0.000_5,
        ..test_webhooks()
    })
    .await;
    let rx = Receiver::start().await;
    rx.always(503);
    let (_, secret) = create(&app, "s1", json!({"url": rx.url})).await;
    let types = vec!["assignment.active"; 20];
    let ids = append(&app, "s1", &types).await;
    tokio::time::sleep(Duration::from_millis(1800)).await; // the "hour" the receiver is down
    let back = Instant::now();
    *rx.always.lock().unwrap() = None;
    let delivered = |got: &[Got]| {
        ids.iter()
            .filter(|id| {
                got.iter().any(|g| {
                    g.at >= back && g.header("webhook-id") == Some(id.to_string().as_str())
                })
            })
            .count()
    };
    eventually(
        "every event delivered once the receiver is back",
        async || rx.got(),
        |got| delivered(got) == ids.len(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // nothing to poll for: no more sends
    let got = rx.got();
    for id in &ids {
        let attempts: Vec<&Got> = got
            .iter()
            .filter(|g| g.header("webhook-id") == Some(id.to_string().as_str()))
            .collect();
        assert!(
            (2..=5).contains(&attempts.len()),
            "{id}: {} attempts (the schedule has 4 within an hour, the 5th after it)",
            attempts.len()
        );
        // Answered 200 once back: exactly one attempt after the outage.
        assert_eq!(attempts.iter().filter(|g| g.at >= back).count(), 1, "{id}");
        attempts.last().unwrap().verify(&secret).unwrap();
    }
}

#[tokio::test]
async fn n6_410_disables_the_endpoint_and_says_so_in_the_activity_log() {
    let app = app_with(test_webhooks()).await;
    let rx = Receiver::start().await;
    rx.always(410);
    let (id, _) = create(&app, "s1", json!({"url": rx.url})).await;
    append(&app, "s1", &["assignment.active", "assignment.active"]).await;
    let w = eventually(
        "disabled",
        async || app.get_json(&format!("/v1/spaces/s1/webhooks/{id}")).await,
        |w| w["enabled"] == false,
    )
    .await;
    assert_eq!(w["disabled_reason"], "gone");
    let activity = app
        .get_json("/v1/spaces/s1/activity?action=webhook.disabled")
        .await;
    let items = activity["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{activity}");
    assert_eq!(items[0]["details"]["reason"], "gone");
    assert_eq!(items[0]["details"]["webhook"], id);
    // Nothing more goes to it.
    let n = rx.got().len();
    append(&app, "s1", &["assignment.active"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // nothing to poll for
    assert_eq!(rx.got().len(), n);
    // Re-enabling starts at the newest event.
    rx.always(200);
    let resp = app
        .req(Method::PATCH, &format!("/v1/spaces/s1/webhooks/{id}"))
        .json(&json!({"enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let new = append(&app, "s1", &["assignment.revoked"]).await;
    let got = eventually("the new event", async || rx.got(), |g| g.len() > n).await;
    assert_eq!(got.last().unwrap().json()["id"], new[0].to_string());
}

#[tokio::test]
async fn n6_five_days_of_failures_disable_the_endpoint() {
    let app = app_with(vpp_broker::config::WebhookArgs {
        webhook_retry_scale: 1.0,
        ..test_webhooks()
    })
    .await;
    let rx = Receiver::start().await;
    rx.always(500);
    let (id, _) = create(&app, "s1", json!({"url": rx.url})).await;
    append(&app, "s1", &["assignment.failed"]).await;
    eventually(
        "failing",
        async || app.get_json(&format!("/v1/spaces/s1/webhooks/{id}")).await,
        |w| w["failing_since"].is_string(),
    )
    .await;
    vpp_broker::dispatch::webhooks::housekeep_now(&app.state).await;
    let w = app.get_json(&format!("/v1/spaces/s1/webhooks/{id}")).await;
    assert_eq!(w["enabled"], true, "failing for seconds is not 5 days");
    // The streak began 5 days and a minute ago.
    let mut conn = app.pool.get().await.unwrap();
    diesel::sql_query(
        "UPDATE webhook_endpoints SET failing_since = now() - interval '5 days 1 minute'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    vpp_broker::dispatch::webhooks::housekeep_now(&app.state).await;
    let w = app.get_json(&format!("/v1/spaces/s1/webhooks/{id}")).await;
    assert_eq!(w["enabled"], false);
    assert_eq!(w["disabled_reason"], "failing");
    let activity = app
        .get_json("/v1/spaces/s1/activity?action=webhook.disabled")
        .await;
    assert_eq!(activity["items"][0]["details"]["reason"], "failing");
}

#[tokio::test]
async fn n6_after_a_rotation_both_secrets_sign_for_the_overlap_then_only_the_new_one() {
    let app = app_with(vpp_broker::config::WebhookArgs {
        webhook_secret_overlap_secs: 2,
        ..test_webhooks()
    })
    .await;
    let rx = Receiver::start().await;
    let (id, old) = create(&app, "s1", json!({"url": rx.url})).await;
    let resp = app
        .req(
            Method::POST,
            &format!("/v1/spaces/s1/webhooks/{id}/rotate-secret"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let new = v["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert!(v["previous_secret_signs_until"].is_string());
    append(&app, "s1", &["assignment.active"]).await;
    let got = eventually("delivered", async || rx.got(), |g| !g.is_empty()).await;
    let sig = got[0].header("webhook-signature").unwrap();
    assert_eq!(sig.split(' ').count(), 2, "two signatures: {sig}");
    got[0].verify(&old).expect("the old secret still verifies");
    got[0].verify(&new).expect("the new secret verifies");
    tokio::time::sleep(Duration::from_millis(2200)).await; // the overlap passes
    append(&app, "s1", &["assignment.active"]).await;
    let got = eventually("delivered again", async || rx.got(), |g| g.len() >= 2).await;
    let sig = got[1].header("webhook-signature").unwrap();
    assert_eq!(sig.split(' ').count(), 1);
    got[1].verify(&new).unwrap();
    assert!(
        got[1].verify(&old).is_err(),
        "the old secret no longer verifies"
    );
}

#[tokio::test]
async fn n6_private_and_http_urls_are_refused_without_the_setting() {
    let app = app_with(vpp_broker::config::WebhookArgs {
        webhook_allow_private: false,
        ..test_webhooks()
    })
    .await;
    for url in [
        "http://hooks.example.com/x",
        "https://127.0.0.1/x",
        "https://10.0.0.8/x",
        "https://192.168.1.1/x",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/x",
        "https://[::1]/x",
        "https://[fd00:ec2::254]/x",
        "https://[::ffff:127.0.0.1]/x",
        "https://localhost/x",
        "https://user:pw@hooks.example.com/x",
        "ftp://hooks.example.com/x",
        "not a url",
        "https://no-such-host.invalid/x",
    ] {
        let resp = app
            .req(Method::POST, "/v1/spaces/s1/webhooks")
            .json(&json!({"url": url}))
            .send()
            .await
            .unwrap();
        let p = expect_problem(resp, 422, "webhook-url-refused").await;
        assert_eq!(p["errors"][0]["field"], "url", "{url}: {p}");
    }
    let resp = app
        .req(Method::POST, "/v1/spaces/s1/webhooks")
        .json(&json!({"url": "https://hooks.example.com/x", "event_types": ["assignment.nope"]}))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 422, "unknown-event-type").await;
    for bad in [
        json!({"url": 5}),
        json!({"url": "https://hooks.example.com", "event_types": "all"}),
        json!({"url": "https://hooks.example.com", "secret": "whsec_mine"}),
        json!([]),
    ] {
        let resp = app
            .req(Method::POST, "/v1/spaces/s1/webhooks")
            .json(&bad)
            .send()
            .await
            .unwrap();
        expect_problem(resp, 422, "invalid-body").await;
    }
    let long = json!({"url": "https://hooks.example.com", "description": "x".repeat(1001)});
    let resp = app
        .req(Method::POST, "/v1/spaces/s1/webhooks")
        .json(&long)
        .send()
        .await
        .unwrap();
    expect_problem(resp, 422, "validation-failed").await;
    // Nothing was stored.
    let list = app.get_json("/v1/spaces/s1/webhooks").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    // Forged ids and cursors.
    let resp = app
        .req(
            Method::GET,
            &format!("/v1/spaces/s1/webhooks/{}", Uuid::new_v4()),
        )
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not-found").await;
    let resp = app
        .req(Method::GET, "/v1/spaces/s1/webhooks/not-a-uuid")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = app
        .req(Method::GET, "/v1/spaces/s1/webhooks?cursor=Zm9yZ2Vk")
        .send()
        .await
        .unwrap();
    expect_problem(resp, 400, "invalid-parameter").await;
    let resp = app
        .req(Method::POST, "/v1/spaces/nope/webhooks")
        .json(&json!({"url": "https://hooks.example.com"}))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not-found").await;
}

#[tokio::test]
async fn n6_a_name_that_resolves_to_a_private_address_at_delivery_time_gets_nothing() {
    // DNS rebinding: the endpoint was accepted while its name resolved to a public address;
    // now it resolves to loopback. Stored directly (the API would refuse it now).
    let app = app_with(vpp_broker::config::WebhookArgs {
        webhook_allow_private: false,
        ..test_webhooks()
    })
    .await;
    let rx = Receiver::start().await;
    let port = rx
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let url = format!("https://localhost:{port}/hook");
    let id = Uuid::now_v7();
    let sealed = app.state.cipher.seal(
        &vpp_broker::webhooks::aad(id),
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    );
    let now = Utc::now();
    let mut conn = app.pool.get().await.unwrap();
    vpp_broker::ledger::webhooks::insert(
        &mut conn,
        &vpp_broker::ledger::webhooks::EndpointRow {
            id,
            space_id: "s1".into(),
            url,
            event_types: vec![],
            description: String::new(),
            enabled: true,
            disabled_reason: None,
            disabled_at: None,
            secret_key_id: sealed.key_id,
            secret_nonce: sealed.nonce,
            secret_ciphertext: sealed.ciphertext,
            previous_key_id: None,
            previous_nonce: None,
            previous_ciphertext: None,
            previous_until: None,
            last_sequence: 0,
            failing_since: None,
            created_at: now,
            updated_at: now,
            deleted_at: None,
        },
    )
    .await
    .unwrap();
    drop(conn);
    append(&app, "s1", &["assignment.active"]).await;
    let log = eventually(
        "a refused attempt",
        async || deliveries(&app, "s1", &id.to_string()).await,
        |l| !l.is_empty(),
    )
    .await;
    assert_eq!(log[0]["delivered"], false);
    assert!(log[0]["status"].is_null());
    assert!(
        log[0]["error"].as_str().unwrap().contains("non-public"),
        "{}",
        log[0]
    );
    assert!(rx.got().is_empty(), "nothing reached the private address");
}

#[tokio::test]
async fn n3_the_secret_is_shown_once_and_never_listed_read_or_logged() {
    let app = app_with(test_webhooks()).await;
    let rx = Receiver::start().await;
    let (id, secret) = create(&app, "s1", json!({"url": rx.url, "description": "d"})).await;
    let b64 = secret.trim_start_matches("whsec_").to_owned();
    let list = app.get_json("/v1/spaces/s1/webhooks").await;
    let one = app.get_json(&format!("/v1/spaces/s1/webhooks/{id}")).await;
    let resp = app
        .req(Method::PATCH, &format!("/v1/spaces/s1/webhooks/{id}"))
        .json(&json!({"description": "changed", "event_types": ["assignment.active"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let patched: Value = resp.json().await.unwrap();
    assert_eq!(patched["description"], "changed");
    assert_eq!(patched["event_types"], json!(["assignment.active"]));
    append(&app, "s1", &["assignment.active"]).await;
    eventually("delivered", async || rx.got().len(), |n| *n >= 1).await;
    let resp = app
        .req(Method::POST, &format!("/v1/spaces/s1/webhooks/{id}/ping"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let activity = app.get_json("/v1/spaces/s1/activity").await;
    for (what, text) in [
        ("list", list.to_string()),
        ("get", one.to_string()),
        ("patch", patched.to_string()),
        ("activity", activity.to_string()),
        ("logs", crate::support::logs::capture().text()),
    ] {
        assert!(!text.contains(&b64), "the secret leaked into the {what}");
    }
    assert!(one.get("secret").is_none());
    assert_eq!(list["items"][0]["id"], id);
    // Stored sealed, not in clear.
    let mut conn = app.pool.get().await.unwrap();
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Bytea)]
        secret_ciphertext: Vec<u8>,
    }
    let row: Row = diesel::sql_query("SELECT secret_ciphertext FROM webhook_endpoints")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&row.secret_ciphertext).contains(&b64));
    // Deleting: gone from list and get; its log stays readable to nobody (404) but kept.
    let resp = app
        .req(Method::DELETE, &format!("/v1/spaces/s1/webhooks/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let list = app.get_json("/v1/spaces/s1/webhooks").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let n: N = diesel::sql_query("SELECT count(*) AS n FROM webhook_attempts")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert!(n.n >= 2, "the delivery log outlives the endpoint");
}

#[tokio::test]
async fn n3_redeliver_and_recover_send_again_with_the_same_webhook_id() {
    let app = app_with(test_webhooks()).await;
    let rx = Receiver::start().await;
    let before = Utc::now();
    let (id, secret) = create(&app, "s1", json!({"url": rx.url})).await;
    let ids = append(
        &app,
        "s1",
        &[
            "assignment.allocated",
            "assignment.active",
            "assignment.revoked",
        ],
    )
    .await;
    eventually("three", async || rx.got().len(), |n| *n >= 3).await;
    let resp = app
        .req(
            Method::POST,
            &format!(
                "/v1/spaces/s1/webhooks/{id}/deliveries/{}/redeliver",
                ids[1]
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let got = eventually("redelivered", async || rx.got(), |g| g.len() >= 4).await;
    assert_eq!(got[3].header("webhook-id").unwrap(), ids[1].to_string());
    got[3].verify(&secret).unwrap();
    // The redelivery is logged (and leaves the queue) after the receiver answered; a delivery
    // still queued is not queued twice, so recovering before that would skip it.
    eventually(
        "the redelivery logged",
        async || deliveries(&app, "s1", &id).await.len(),
        |n| *n >= 4,
    )
    .await;
    // Recover everything since before the events.
    let resp = app
        .req(
            Method::POST,
            &format!("/v1/spaces/s1/webhooks/{id}/recover"),
        )
        .json(&json!({"since": before}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["queued"], 3);
    let got = eventually("recovered", async || rx.got(), |g| g.len() >= 7).await;
    let mut again: Vec<String> = got[4..]
        .iter()
        .map(|g| g.header("webhook-id").unwrap().to_owned())
        .collect();
    again.sort();
    let mut want: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    want.sort();
    assert_eq!(again, want);
    // An event of another space, an unknown one, a future `since`, a wrong body.
    let other = append(&app, "s2", &["assignment.active"]).await;
    for event in [other[0], Uuid::new_v4()] {
        let resp = app
            .req(
                Method::POST,
                &format!("/v1/spaces/s1/webhooks/{id}/deliveries/{event}/redeliver"),
            )
            .send()
            .await
            .unwrap();
        expect_problem(resp, 404, "not-found").await;
    }
    let resp = app
        .req(
            Method::POST,
            &format!("/v1/spaces/s1/webhooks/{id}/recover"),
        )
        .json(&json!({"since": Utc::now() + chrono::Duration::hours(1)}))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 422, "validation-failed").await;
    let resp = app
        .req(
            Method::POST,
            &format!("/v1/spaces/s1/webhooks/{id}/recover"),
        )
        .json(&json!({"since": "yesterday"}))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 422, "invalid-body").await;
    // Another space's webhook id is not found in this one.
    let resp = app
        .req(
            Method::POST,
            &format!("/v1/spaces/s2/webhooks/{id}/recover"),
        )
        .json(&json!({"since": before}))
        .send()
        .await
        .unwrap();
    expect_problem(resp, 404, "not-found").await;
}

#[tokio::test]
async fn n3_a_ping_reaches_the_receiver_signed_and_is_logged() {
    let app = app_with(test_webhooks()).await;
    let rx = Receiver::start().await;
    let (id, secret) = create(&app, "s1", json!({"url": rx.url})).await;
    let resp = app
        .req(Method::POST, &format!("/v1/spaces/s1/webhooks/{id}/ping"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["delivered"], true);
    assert_eq!(v["status"], 200);
    let got = rx.got();
    assert_eq!(got.len(), 1);
    got[0].verify(&secret).unwrap();
    let body = got[0].json();
    assert_eq!(body["type"], "webhook.ping");
    assert!(body["sequence"].is_null());
    assert_eq!(body["id"], v["id"]);
    let log = deliveries(&app, "s1", &id).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["event_type"], "webhook.ping");
    // A receiver that refuses says so, without an error status of ours.
    rx.always(503);
    let resp = app
        .req(Method::POST, &format!("/v1/spaces/s1/webhooks/{id}/ping"))
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["delivered"], false);
    assert_eq!(v["status"], 503);
}

#[tokio::test]
async fn n6_a_lease_that_ends_sends_the_delivery_again_with_the_same_id() {
    // A sender killed mid-delivery leaves its leased rows behind: they come due again after
    // the lease and another sender delivers them (at least once, same webhook-id).
    let app = app_with(vpp_broker::config::WebhookArgs {
        webhook_workers: 0,
        ..test_webhooks()
    })
    .await;
    let rx = Receiver::start().await;
    let (id, secret) = create(&app, "s1", json!({"url": rx.url})).await;
    let ids = append(&app, "s1", &["assignment.active"]).await;
    let state = &app.state;
    let mut conn = app.pool.get().await.unwrap();
    vpp_broker::webhooks::delivery::fan_out(&mut conn)
        .await
        .unwrap();
    // "Killed" sender: it claimed, then died before writing anything.
    let claimed = vpp_broker::webhooks::delivery::claim(
        &state.webhooks,
        &state.cipher,
        &mut conn,
        "dead",
        10,
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), 1);
    let again = vpp_broker::webhooks::delivery::claim(
        &state.webhooks,
        &state.cipher,
        &mut conn,
        "other",
        10,
    )
    .await
    .unwrap();
    assert!(again.is_empty(), "leased rows are not claimed twice");
    // The lease ends (moved into the past instead of waiting a minute).
    diesel::sql_query("UPDATE webhook_deliveries SET run_at = now() - interval '1 second'")
        .execute(&mut conn)
        .await
        .unwrap();
    let retaken = vpp_broker::webhooks::delivery::claim(
        &state.webhooks,
        &state.cipher,
        &mut conn,
        "other",
        10,
    )
    .await
    .unwrap();
    assert_eq!(retaken.len(), 1);
    assert_eq!(retaken[0].attempt, 2, "the lost attempt counts");
    let sent = vpp_broker::webhooks::delivery::send(&state.webhooks, &retaken[0]).await;
    assert!(sent.delivered());
    let msg = retaken.into_iter().next().unwrap();
    vpp_broker::webhooks::delivery::settle(&state.webhooks, &mut conn, vec![(msg, sent)])
        .await
        .unwrap();
    let got = rx.got();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("webhook-id").unwrap(), ids[0].to_string());
    got[0].verify(&secret).unwrap();
    assert_eq!(
        vpp_broker::ledger::webhooks::queued(&mut conn, id.parse().unwrap())
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn rotate_keys_reseals_webhook_secrets_and_they_still_sign() {
    use base64::Engine;
    let app = app_with(test_webhooks()).await;
    let rx = Receiver::start().await;
    let (id, old) = create(&app, "s1", json!({"url": rx.url})).await;
    let resp = app
        .req(
            Method::POST,
            &format!("/v1/spaces/s1/webhooks/{id}/rotate-secret"),
        )
        .send()
        .await
        .unwrap();
    let new = resp.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let spec = format!(
        "t2:{}",
        base64::engine::general_purpose::STANDARD.encode([9u8; 32])
    );
    let both = vpp_broker::crypto::TokenCipher::from_spec(&format!(
        "{spec},{}",
        crate::support::app::TOKEN_KEYS
    ))
    .unwrap();
    let mut conn = app.pool.get().await.unwrap();
    let n = vpp_broker::webhooks::endpoints::reseal_all(&mut conn, &both)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        vpp_broker::webhooks::endpoints::reseal_all(&mut conn, &both)
            .await
            .unwrap(),
        0,
        "nothing left to re-seal"
    );
    // Only the new key from now on: both secrets still open and sign.
    let only_new = vpp_broker::crypto::TokenCipher::from_spec(&spec).unwrap();
    let row = vpp_broker::webhooks::endpoints::get(&mut conn, "s1", id.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(row.secret_key_id, "t2");
    let keys = vpp_broker::webhooks::delivery::keys(&only_new, &row, Utc::now()).unwrap();
    assert_eq!(keys.len(), 2);
    let ts = Utc::now().timestamp();
    let header = vpp_broker::webhooks::signing::signature_header(&keys, "msg", ts, b"{}");
    let got = Got {
        headers: vec![
            ("webhook-id".into(), "msg".into()),
            (
                "webhook-timestamp".into(),
                Utc::now().timestamp().to_string(),
            ),
            ("webhook-signature".into(), header),
        ],
        body: b"{}".to_vec(),
        at: Instant::now(),
    };
    got.verify(&old).unwrap();
    got.verify(&new).unwrap();
}

#[tokio::test]
async fn n6_three_replicas_and_a_sigkill_mid_delivery_lose_nothing() {
    use crate::support::procs::{ServeProcess, chart_env};
    let db = crate::support::db::TestDb::new().await;
    let mut env = chart_env(&db.url, "http://127.0.0.1:9/mdm/v2");
    env.extend(
        [
            ("VPP_WEBHOOK_ALLOW_PRIVATE", "true"),
            ("VPP_WEBHOOK_LEASE_SECS", "20"),
            ("VPP_WEBHOOK_POLL_MS", "20"),
            ("VPP_WEBHOOK_CONCURRENCY", "8"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let mut procs: Vec<ServeProcess> = (0..3).map(|_| ServeProcess::spawn(&env)).collect();
    let http = reqwest::Client::new();
    for p in &procs {
        p.wait_ready(&http).await;
    }
    let base = procs[1].base_url.clone();
    let resp = http
        .post(format!("{base}/v1/spaces"))
        .bearer_auth(crate::support::admin_token())
        .json(&json!({"id": "s1", "name": "s1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let rx = Receiver::start().await;
    *rx.delay.lock().unwrap() = Duration::from_millis(30);
    let resp = http
        .post(format!("{base}/v1/spaces/s1/webhooks"))
        .bearer_auth(crate::support::admin_token())
        .json(&json!({"url": rx.url}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let secret = resp.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut conn = db.connect().await;
    let mut ids: Vec<String> = Vec::new();
    for _ in 0..6 {
        let new: Vec<NewEvent> = (0..100)
            .map(|_| NewEvent {
                space_id: "s1".into(),
                id: Uuid::now_v7(),
                type_: "assignment.active".into(),
                occurred_at: Utc::now(),
                activity_id: None,
                data: json!({}),
            })
            .collect();
        ids.extend(new.iter().map(|e| e.id.to_string()));
        use diesel_async::AsyncConnection;
        conn.transaction(async |c| events::append(c, new).await.map(|_| ()))
            .await
            .unwrap();
    }
    // Kill one replica while deliveries are in flight.
    eventually(
        "deliveries under way",
        async || rx.got().len(),
        |n| *n >= 150,
    )
    .await;
    procs[0].signal(libc::SIGKILL);
    procs[0].wait_exit(Duration::from_secs(10)).await;
    let want: std::collections::BTreeSet<String> = ids.iter().cloned().collect();
    let got = crate::support::eventually_within(
        Duration::from_secs(90),
        "every event delivered",
        async || {
            rx.got()
                .iter()
                .map(|g| g.header("webhook-id").unwrap().to_owned())
                .collect::<std::collections::BTreeSet<String>>()
        },
        |seen| seen.is_superset(&want),
    )
    .await;
    assert_eq!(got, want, "nothing else was delivered");
    // The killed replica's leased deliveries come due after the lease and are finished by the
    // others: the queue empties, and every event has a delivered attempt in the log.
    #[derive(diesel::QueryableByName, Debug)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    crate::support::eventually_within(
        Duration::from_secs(60),
        "the queue is empty",
        async || {
            diesel::sql_query("SELECT count(*) AS n FROM webhook_deliveries")
                .get_result::<N>(&mut conn)
                .await
                .unwrap()
                .n
        },
        |n| *n == 0,
    )
    .await;
    let delivered: N = diesel::sql_query(
        "SELECT count(DISTINCT event_id) AS n FROM webhook_attempts WHERE delivered",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        delivered.n, 600,
        "every event has a delivered attempt (the killed replica's unlogged ones were resent)"
    );
    // A duplicate (sent by the killed replica, then again) carries the same webhook-id: every
    // message received is one of the events, and verifies.
    for g in rx.got() {
        assert!(want.contains(g.header("webhook-id").unwrap()));
        g.verify(&secret).unwrap();
    }
    drop(procs);
}

#[tokio::test]
async fn n3_deleting_a_space_deletes_its_webhooks() {
    let app = app_with(test_webhooks()).await;
    let rx = Receiver::start().await;
    create(&app, "s2", json!({"url": rx.url})).await;
    let resp = app
        .req(Method::DELETE, "/v1/spaces/s2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    app.space("s2").await;
    let list = app.get_json("/v1/spaces/s2/webhooks").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0, "{list}");
    append(&app, "s2", &["assignment.active"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // nothing to poll for
    assert!(rx.got().is_empty());
}

/// End to end (N3, N5): an allocation through the API reaches a receiver as signed
/// `assignment.allocated`, then `assignment.active` messages — the activity row its
/// transaction wrote, turned into events by the feed's sequencer, sent by the webhook worker.
#[tokio::test]
async fn n3_an_allocation_reaches_the_receiver_as_signed_events_in_order() {
    use crate::support::Allocated;
    use crate::support::fixtures::{self, device};
    use crate::support::sim::{app, location};
    const U1: &str = "3000000061";
    let w = fixtures::world_with(
        vec![location(U1, "Lib", vec![app(fixtures::APP, 5)])],
        |sim| Options {
            webhooks: test_webhooks(),
            ..fixtures::dispatching(sim)
        },
        &[("A", U1)],
    )
    .await;
    let rx = Receiver::start().await;
    let (_id, secret) = create(&w.app, "acme", json!({"url": rx.url})).await;
    let api = w.api();
    let assignment = api.allocated(&device("E2E-1")).await.id();
    api.final_state(assignment).await;
    let mine = |got: &[Got]| -> Vec<Value> {
        got.iter()
            .map(Got::json)
            .filter(|b| b["data"]["assignment_id"] == json!(assignment))
            .collect()
    };
    eventually(
        "the allocation's two events at the receiver",
        async || mine(&rx.got()).len(),
        |n| *n >= 2,
    )
    .await;
    for g in rx.got() {
        g.verify(&secret)
            .expect("standardwebhooks accepts the signature");
    }
    // Arrival order is not guaranteed (two deliveries claimed in one look go out at once, and
    // retries reorder anyway; docs/webhooks.md): `sequence` orders them.
    let mut bodies = mine(&rx.got());
    bodies.sort_by_key(|b| b["sequence"].as_i64());
    let types: Vec<&str> = bodies.iter().map(|b| b["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["assignment.allocated", "assignment.active"]);
    assert!(bodies[0]["sequence"].as_i64() < bodies[1]["sequence"].as_i64());
    assert!(bodies[0]["data"]["version"].as_i64() < bodies[1]["data"]["version"].as_i64());
    assert_eq!(bodies[0]["space"], "acme");
}

/// A slow endpoint holding most of the sender's slots does not hold up another endpoint's
/// events: the poll (here; a wake-up alike) looks with any free slot, only the re-look after a
/// full claim waits for half the slots. With 8 slots, 6 deliveries to a receiver answering
/// after 3 s are in flight when an event for a fast endpoint arrives; it is delivered before
/// any of the slow ones ends. (A slow endpoint with as many due deliveries as there are slots
/// still fills them all: there is no per-endpoint cap, docs/webhooks.md.)
#[tokio::test]
async fn n6_a_slow_endpoint_holding_most_slots_does_not_stall_another() {
    let app = app_with(vpp_broker::config::WebhookArgs {
        webhook_concurrency: 8,
        ..test_webhooks()
    })
    .await;
    let slow = Receiver::start().await;
    *slow.delay.lock().unwrap() = Duration::from_secs(3);
    let fast = Receiver::start().await;
    create(
        &app,
        "s1",
        json!({"url": slow.url, "event_types": ["assignment.allocated"]}),
    )
    .await;
    create(
        &app,
        "s1",
        json!({"url": fast.url, "event_types": ["assignment.revoked"]}),
    )
    .await;
    append(&app, "s1", &["assignment.allocated"; 6]).await;
    // The six are leased and sent (their queue rows are marked when claimed).
    #[derive(diesel::QueryableByName, Debug)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    eventually(
        "the six slow deliveries are in flight",
        async || {
            let mut conn = app.pool.get().await.unwrap();
            let n: N = diesel::sql_query(
                "SELECT count(*) AS n FROM webhook_deliveries WHERE locked_by IS NOT NULL",
            )
            .get_result(&mut conn)
            .await
            .unwrap();
            n.n
        },
        |n| *n == 6,
    )
    .await;
    let sent = Instant::now();
    append(&app, "s1", &["assignment.revoked"]).await;
    eventually(
        "the fast endpoint's event arrives",
        async || fast.got().len(),
        |n| *n == 1,
    )
    .await;
    let took = sent.elapsed();
    assert!(
        slow.got().is_empty(),
        "the fast endpoint's event waited for the slow deliveries ({took:?})"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    eventually(
        "the slow deliveries arrive",
        async || slow.got().len(),
        |n| *n == 6,
    )
    .await;
}
