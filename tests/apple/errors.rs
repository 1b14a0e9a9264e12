//! Every error class the client reports, produced by the simulator over HTTP.

use std::time::Duration;

use vpp_broker::apple::types::ClientConfig;
use vpp_broker::apple::{AppleClient, AppleError, AuthFailure, ErrorClass, ErrorOrigin, SToken};
use vpp_broker::apple_sim::{FailRule, FaultsPatch, SettingsPatch, TokenStatus};

use super::support::{Env, env, garbage_server, raw};

async fn config(env: &Env) -> Result<ClientConfig, AppleError> {
    env.client.get_client_config(&env.token).await
}

fn fail_next(
    count: u32,
    status: u16,
    error_number: i32,
    retry_after_secs: Option<u64>,
) -> FaultsPatch {
    FaultsPatch {
        fail_next: Some(FailRule {
            after: 0,
            count,
            status,
            error_number,
            retry_after_secs,
            retry_after_http_date: false,
            location: None,
            endpoint: None,
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_unknown_token_answers_http_200_with_9622() {
    let env = env().await;
    let stranger = vpp_broker::apple::stoken::build_stoken(
        "not-apples",
        chrono::Utc::now() + chrono::Duration::days(30),
        "Nobody",
    );
    let err = env.client.get_client_config(&stranger).await.unwrap_err();
    assert_eq!(err.http_status, Some(200), "Apple's observed behaviour");
    assert_eq!(err.error_number, Some(9622));
    assert_eq!(err.origin, ErrorOrigin::Apple);
    assert_eq!(err.class(), ErrorClass::Auth(AuthFailure::Invalid));
    assert!(err.is_auth());

    // The simulator can answer 401 instead.
    env.sim
        .update_settings(&SettingsPatch {
            invalid_token_status: Some(401),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = env.client.get_client_config(&stranger).await.unwrap_err();
    assert_eq!(err.http_status, Some(401));
    assert_eq!(err.class(), ErrorClass::Auth(AuthFailure::Invalid));
}

#[tokio::test]
async fn expired_revoked_and_invalidated_tokens_are_auth_failures() {
    let env = env().await;
    assert!(config(&env).await.is_ok());
    for (status, failure, number, http) in [
        (TokenStatus::Expired, AuthFailure::Expired, 9621, 401),
        (TokenStatus::Revoked, AuthFailure::Revoked, 9625, 401),
        (TokenStatus::Invalid, AuthFailure::Invalid, 9622, 200),
    ] {
        env.sim.set_token_status(&env.token, status).await.unwrap();
        let err = config(&env).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Auth(failure), "{status:?}");
        assert_eq!(
            (err.error_number, err.http_status),
            (Some(number), Some(http))
        );
    }
    env.sim
        .set_location_token_status(&env.location.u_id, TokenStatus::Valid)
        .await
        .unwrap();
    assert!(config(&env).await.is_ok(), "valid again");

    // A token whose expDate has passed is expired without any admin call.
    let old = env
        .sim
        .add_token(
            &env.location.u_id,
            Some(chrono::Utc::now() - chrono::Duration::hours(1)),
        )
        .await
        .unwrap();
    let err = env.client.get_client_config(&old).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Auth(AuthFailure::Expired));

    // A renewed token works alongside the old one.
    let renewed = env.sim.add_token(&env.location.u_id, None).await.unwrap();
    let config = env.client.get_client_config(&renewed).await.unwrap();
    assert_eq!(
        config.meta.u_id.as_deref(),
        Some(env.location.u_id.as_str())
    );
}

#[tokio::test]
async fn login_required_gone_and_forbidden_are_classified() {
    let env = env().await;
    for (status, number, class) in [
        (401, 9601, ErrorClass::Auth(AuthFailure::LoginRequired)),
        (410, 9634, ErrorClass::Gone),
        (403, 9637, ErrorClass::Forbidden),
        (403, 9647, ErrorClass::Forbidden),
        (503, 9644, ErrorClass::Transient { retry_after: None }),
    ] {
        env.sim
            .set_faults(&fail_next(1, status, number, None))
            .await
            .unwrap();
        let err = config(&env).await.unwrap_err();
        assert_eq!(err.class(), class, "{number}");
        assert_eq!(err.http_status, Some(status));
    }
    assert!(
        config(&env).await.is_ok(),
        "each rule failed exactly one request"
    );
}

#[tokio::test]
async fn unavailable_with_retry_after_seconds_is_transient() {
    let env = env().await;
    env.sim
        .set_faults(&fail_next(2, 503, 9729, Some(7)))
        .await
        .unwrap();
    for _ in 0..2 {
        let err = config(&env).await.unwrap_err();
        assert_eq!((err.http_status, err.error_number), (Some(503), Some(9729)));
        assert_eq!(
            err.class(),
            ErrorClass::Transient {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert!(err.class().is_retryable());
    }
    assert!(
        config(&env).await.is_ok(),
        "only the next 2 requests failed"
    );
    assert_eq!(
        env.count("GET /client/config").await,
        3,
        "the client did not retry"
    );
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_parsed() {
    let env = env().await;
    let mut patch = fail_next(1, 503, 9729, Some(30));
    patch.fail_next.as_mut().unwrap().retry_after_http_date = true;
    env.sim.set_faults(&patch).await.unwrap();
    let err = config(&env).await.unwrap_err();
    let wait = err.class().retry_after().expect("Retry-After parsed");
    assert!(
        (Duration::from_secs(25)..=Duration::from_secs(32)).contains(&wait),
        "{wait:?}"
    );
}

#[tokio::test]
async fn faults_scoped_to_another_location_leave_this_one_alone() {
    let env = env().await;
    let mut patch = fail_next(1, 503, 9729, Some(1));
    patch.fail_next.as_mut().unwrap().location = Some("1".into());
    env.sim.set_faults(&patch).await.unwrap();
    assert!(config(&env).await.is_ok());
    assert_eq!(
        env.sim.faults().await.unwrap().fail_next.len(),
        1,
        "still armed"
    );
}

#[tokio::test]
async fn too_many_requests_per_second_answer_429() {
    let env = env().await;
    // The simulator enforces 3/s; this client never fetched the service config, so it paces at
    // the documented 15/s and overruns.
    env.sim
        .update_settings(&SettingsPatch {
            limits: [("maxRequestPerSecond".to_owned(), 3)].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut limited = Vec::new();
    for _ in 0..6 {
        if let Err(e) = config(&env).await {
            limited.push(e);
        }
    }
    assert!(!limited.is_empty(), "some of 6 quick requests were refused");
    for e in &limited {
        assert_eq!((e.http_status, e.error_number), (Some(429), Some(9646)));
        assert_eq!(
            e.class(),
            ErrorClass::RateLimited {
                retry_after: Some(Duration::from_secs(1))
            }
        );
    }

    // A client that knows the limit paces itself and is never refused.
    let paced = AppleClient::new(&env.sim.base_url(), Duration::from_secs(5)).unwrap();
    assert_eq!(
        paced
            .service_config()
            .await
            .unwrap()
            .max_request_per_second(),
        3
    );
    // Let the one-second window the quick requests above used up pass (a wait for time, not
    // for background work).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..7 {
        paced.get_client_config(&env.token).await.unwrap();
    }
}

#[tokio::test]
async fn random_server_errors_are_transient() {
    let env = env().await;
    env.sim
        .set_faults(&FaultsPatch {
            error_rate: Some(1.0),
            error_rate_retry_after_secs: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = config(&env).await.unwrap_err();
    assert_eq!((err.http_status, err.error_number), (Some(500), Some(9603)));
    assert_eq!(
        err.class(),
        ErrorClass::Transient {
            retry_after: Some(Duration::from_secs(2))
        }
    );
    let err = env.client.service_config().await.unwrap_err();
    assert_eq!(err.error_number, Some(9603), "no token needed to fail");
    env.sim.clear_faults().await.unwrap();
    assert!(config(&env).await.is_ok());
}

#[tokio::test]
async fn timeouts_and_refused_connections_are_transient() {
    let env = env().await;
    env.sim
        .set_faults(&FaultsPatch {
            latency_ms: Some(1_500),
            ..Default::default()
        })
        .await
        .unwrap();
    let impatient = AppleClient::new(&env.sim.base_url(), Duration::from_millis(300)).unwrap();
    let err = impatient.get_client_config(&env.token).await.unwrap_err();
    assert_eq!(err.origin, ErrorOrigin::Timeout);
    assert_eq!(err.class(), ErrorClass::Transient { retry_after: None });

    // A port nobody listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let nowhere = AppleClient::new(
        &format!("http://127.0.0.1:{port}/mdm/v2"),
        Duration::from_secs(2),
    )
    .unwrap();
    let err = nowhere
        .get_client_config(&SToken::new("anything"))
        .await
        .unwrap_err();
    assert_eq!(err.origin, ErrorOrigin::Connection);
    assert!(err.class().is_retryable());
    let err = nowhere.service_config().await.unwrap_err();
    assert_eq!(err.origin, ErrorOrigin::Connection);
}

#[tokio::test]
async fn undecodable_answers_are_protocol_errors() {
    let (base, handle) = garbage_server().await;
    let client = AppleClient::new(&base, Duration::from_secs(2)).unwrap();
    let err = client
        .get_client_config(&SToken::new("anything"))
        .await
        .unwrap_err();
    assert_eq!(err.origin, ErrorOrigin::Decode);
    assert_eq!(err.class(), ErrorClass::Protocol);
    assert_eq!(err.http_status, Some(200));
    handle.stop(false).await;
}

#[tokio::test]
async fn unknown_paths_wrong_methods_content_types_and_headers_get_apples_answers() {
    let env = env().await;
    let base = env.sim.base_url();
    let token = env.token.expose();

    let wrong_method = raw()
        .delete(format!("{base}/assets"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    let body: serde_json::Value = wrong_method.json().await.unwrap();
    assert_eq!(body["errorNumber"], 9726);

    let wrong_type = raw()
        .post(format!("{base}/assets/associate"))
        .bearer_auth(token)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), 415);
    let body: serde_json::Value = wrong_type.json().await.unwrap();
    assert_eq!(body["errorNumber"], 9727);

    let not_json = raw()
        .post(format!("{base}/assets/associate"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    let body: serde_json::Value = not_json.json().await.unwrap();
    assert_eq!(body["errorNumber"], 9602);

    for header in [None, Some("Basic abc"), Some("Bearer ")] {
        let mut request = raw().get(format!("{base}/assets"));
        if let Some(h) = header {
            request = request.header("authorization", h);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{header:?}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["errorNumber"], 9722, "{header:?}");
    }

    // Service config takes no token but tolerates one (docs/apple.md conflict #11).
    let with_bearer = raw()
        .get(format!("{base}/service/config"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(with_bearer.status(), 200);

    let missing = raw()
        .get(format!("{base}/no/such/endpoint"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let counters = env.sim.counters().await.unwrap();
    assert_eq!(counters.get("DELETE /assets"), Some(&1));
    assert_eq!(counters.get("GET /no/such/endpoint"), Some(&1));
}
