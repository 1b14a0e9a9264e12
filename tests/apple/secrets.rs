//! The sToken and the notification auth token never reach logs or error messages.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use tracing_subscriber::fmt::MakeWriter;
use vpp_broker::apple::types::{
    AssetKey, ClientConfigRequest, ManageAssetsRequest, NotificationAuthToken, NotificationType,
};
use vpp_broker::apple::{AppleClient, AppleError, AssignmentQuery};
use vpp_broker::apple_sim::{FailRule, FaultsPatch, TokenStatus};
use vpp_broker::config::{LogArgs, LogFormat};
use vpp_broker::telemetry::logging;

use super::support::{APP, Receiver, env};

/// Log output, collected in memory while `recording` is on.
#[derive(Clone, Default)]
struct Capture {
    buffer: Arc<Mutex<Vec<u8>>>,
    recording: Arc<AtomicBool>,
}

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.recording.load(Ordering::SeqCst) {
            self.buffer.lock().unwrap().extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap()).into_owned()
    }
}

/// The service's own log set-up (JSON lines, here at TRACE for every crate), installed as the
/// global subscriber of this test binary: a thread-local one misses lines when tests run on
/// many threads, because tracing caches callsite interest globally.
fn capture() -> Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let capture = Capture::default();
            logging::init_with_writer(
                &LogArgs {
                    log_format: LogFormat::Json,
                    log_level: "trace".into(),
                },
                capture.clone(),
            )
            .expect("logging set up");
            capture
        })
        .clone()
}

/// Runs Apple calls, successful and failing, with every log line at TRACE captured (the client,
/// reqwest, hyper, the simulator); none may contain the sToken (whole or its inner token), nor the
/// notification auth token.
#[tokio::test]
async fn secrets_never_appear_in_logs_or_errors() {
    let capture = capture();
    capture.recording.store(true, Ordering::SeqCst);

    let env = env().await;
    let token_text = env.token.expose().to_owned();
    let inner: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(&token_text)
            .unwrap(),
    )
    .unwrap();
    let inner_token = inner["token"].as_str().unwrap().to_owned();
    let notification_secret = "n0tif1cation-s3cret-value";
    let receiver = Receiver::start().await;

    let mut errors: Vec<AppleError> = Vec::new();
    env.client.get_client_config(&env.token).await.unwrap();
    env.client
        .set_client_config(
            &env.token,
            &ClientConfigRequest {
                notification_types: Some(vec![NotificationType::AssetManagement]),
                notification_url: Some(receiver.url.clone()),
                notification_auth_token: Some(NotificationAuthToken::new(notification_secret)),
                mdm_info: None,
            },
        )
        .await
        .unwrap();
    let event = env
        .client
        .associate(
            &env.token,
            &ManageAssetsRequest::devices(vec![AssetKey::stdq(APP)], vec!["S1".into()]),
        )
        .await
        .unwrap();
    env.settle(&event.event_id).await;
    receiver.wait_for(2).await;
    env.client
        .get_assignments(&env.token, &AssignmentQuery::default())
        .await
        .unwrap();

    // Failures of every kind, with the token attached to the request.
    env.sim
        .set_faults(&FaultsPatch {
            fail_next: Some(FailRule {
                after: 0,
                count: 1,
                status: 503,
                error_number: 9729,
                retry_after_secs: Some(5),
                retry_after_http_date: false,
                location: None,
                endpoint: None,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    errors.push(env.client.get_client_config(&env.token).await.unwrap_err());
    errors.push(
        env.client
            .associate(
                &env.token,
                &ManageAssetsRequest::devices(vec![AssetKey::stdq("nope")], vec!["S".into()]),
            )
            .await
            .unwrap_err(),
    );
    env.sim
        .set_token_status(&env.token, TokenStatus::Revoked)
        .await
        .unwrap();
    errors.push(env.client.get_client_config(&env.token).await.unwrap_err());
    env.sim
        .set_token_status(&env.token, TokenStatus::Invalid)
        .await
        .unwrap();
    errors.push(
        env.client
            .get_assignments(&env.token, &AssignmentQuery::default())
            .await
            .unwrap_err(),
    );
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let nowhere = AppleClient::new(
        &format!("http://127.0.0.1:{port}/mdm/v2"),
        Duration::from_secs(1),
    )
    .unwrap();
    errors.push(nowhere.get_client_config(&env.token).await.unwrap_err());
    env.sim
        .set_faults(&FaultsPatch {
            latency_ms: Some(800),
            ..Default::default()
        })
        .await
        .unwrap();
    let impatient = AppleClient::new(&env.sim.base_url(), Duration::from_millis(200)).unwrap();
    errors.push(impatient.get_client_config(&env.token).await.unwrap_err());

    // A caller logging the errors the usual way.
    for e in &errors {
        tracing::error!(error = %e, debug = ?e, class = ?e.class(), "apple call failed");
    }
    tracing::info!(token = %env.token, debug = ?env.token, "token as a caller might log it");

    capture.recording.store(false, Ordering::SeqCst);
    let logs = capture.text();
    assert!(
        logs.contains("apple request"),
        "client logs were captured:\n{logs}"
    );
    assert!(logs.contains("apple request failed"));
    assert!(logs.contains(r#""target":"vpp_broker::apple::client""#));
    assert!(logs.contains("Apple simulator listening"));
    assert!(logs.contains("SToken(***)"));
    for secret in [
        token_text.as_str(),
        inner_token.as_str(),
        notification_secret,
    ] {
        assert!(!logs.contains(secret), "a secret leaked into the logs");
        for e in &errors {
            assert!(!e.to_string().contains(secret), "Display of {e}");
            assert!(!format!("{e:?}").contains(secret), "Debug of {e}");
        }
    }
    assert_eq!(errors.len(), 6);
    assert!(
        errors
            .iter()
            .all(|e| e.class() != vpp_broker::apple::ErrorClass::Protocol)
    );
    receiver.stop().await;
}
