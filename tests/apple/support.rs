//! Shared set-up: a simulator with one seeded location, a client pointed at it, a notification
//! receiver, and small waiting helpers. Everything talks real HTTP on 127.0.0.1.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use vpp_broker::apple::types::{NotificationEnvelope, StatusResponse};
use vpp_broker::apple::{AppleClient, SToken};
use vpp_broker::apple_sim::{
    SeedAsset, SeedFile, SeedLocation, SeededLocation, SimConfig, SimHandle, SimSettings, Simulator,
};

/// The adamIds every default location owns.
pub const APP: &str = "408709785";
pub const BOOK: &str = "377298193";

/// A simulator, a client for it and the seeded location.
pub struct Env {
    pub sim: SimHandle,
    pub client: AppleClient,
    pub location: SeededLocation,
    pub token: SToken,
}

/// A location owning 10 licenses of [`APP`] and 5 of [`BOOK`].
pub fn school() -> SeedLocation {
    SeedLocation {
        name: "Test school".into(),
        org_name: Some("ORG12345".into()),
        assets: vec![
            SeedAsset {
                adam_id: APP.into(),
                total_count: 10,
                ..Default::default()
            },
            SeedAsset {
                adam_id: BOOK.into(),
                product_type: Some(vpp_broker::apple::types::ProductType::Book),
                total_count: 5,
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

/// Settings for tests: events wait for [`SimHandle::flush_events`] (or 60 s), fast retries.
pub fn test_settings() -> SimSettings {
    SimSettings {
        event_delay_ms: 60_000,
        notification_retry_delay_ms: 50,
        notification_timeout_ms: 2_000,
        ..SimSettings::default()
    }
}

/// Starts a simulator with `location` and a client (5 s timeout) for it.
pub async fn env_with(location: SeedLocation, settings: SimSettings) -> Env {
    let sim = Simulator::start(SimConfig {
        settings,
        seed: Some(SeedFile {
            settings: None,
            locations: vec![location],
        }),
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts");
    let client = AppleClient::new(&sim.base_url(), Duration::from_secs(5)).expect("client");
    let location = sim.seeded()[0].clone();
    let token = location.stoken();
    Env {
        sim,
        client,
        location,
        token,
    }
}

/// [`school`] with [`test_settings`].
pub async fn env() -> Env {
    env_with(school(), test_settings()).await
}

impl Env {
    /// Completes queued events, then reads the event's status.
    pub async fn settle(&self, event_id: &str) -> StatusResponse {
        self.sim.flush_events().await.expect("flush");
        self.client
            .event_status(&self.token, event_id)
            .await
            .expect("status")
    }

    /// Requests the simulator counted for `key` (e.g. `GET /assignments`).
    pub async fn count(&self, key: &str) -> u64 {
        self.sim
            .counters()
            .await
            .expect("counters")
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

/// One notification as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub envelope: NotificationEnvelope,
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    fail_next: AtomicU32,
    attempts: AtomicU32,
}

/// A tiny MDM notification endpoint (actix on 127.0.0.1:0). It answers 500 while `fail_next`
/// is positive, else records the notification and answers 200.
pub struct Receiver {
    pub url: String,
    state: Arc<ReceiverState>,
    handle: ServerHandle,
}

async fn receive(
    state: web::Data<ReceiverState>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    state.attempts.fetch_add(1, Ordering::SeqCst);
    if state
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return HttpResponse::InternalServerError().finish();
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let Ok(envelope) = serde_json::from_slice::<NotificationEnvelope>(&body) else {
        return HttpResponse::BadRequest().finish();
    };
    state.received.lock().unwrap().push(Received {
        authorization: header("authorization"),
        content_type: header("content-type"),
        envelope,
    });
    HttpResponse::Ok().finish()
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ReceiverState::default());
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::post().to(receive))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Receiver {
            url: format!("http://{addr}/notify"),
            state,
            handle,
        }
    }

    /// The next `n` requests answer 500.
    pub fn fail_next(&self, n: u32) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    /// Requests seen, failed ones included.
    pub fn attempts(&self) -> u32 {
        self.state.attempts.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` notifications arrived; returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        super::eventually::eventually_within(
            Duration::from_secs(10),
            &format!("{n} notifications"),
            async || self.received(),
            |received| received.len() >= n,
        )
        .await
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// A server that answers 200 with a body that is not JSON, for protocol errors.
pub async fn garbage_server() -> (String, ServerHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::new(|| {
        App::new().default_service(web::to(|| async {
            HttpResponse::Ok()
                .content_type("text/html")
                .body("<html>maintenance</html>")
        }))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (format!("http://{addr}/mdm/v2"), handle)
}

/// A raw request to the simulator (for what the client never sends).
pub fn raw() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}
