//! The service on a real port, in this process, against a fresh test database, started by
//! `Service::start` exactly as `vpp-broker serve` starts it (signals left to the test).

use std::net::TcpListener;
use std::sync::Arc;

use reqwest::{Method, RequestBuilder};
use vpp_broker::config::{AccountArgs, AppleArgs, AuthArgs, DbArgs, HttpArgs};
use vpp_broker::db::Pool;
use vpp_broker::http::AppState;
use vpp_broker::service::{Service, Settings};

use super::db::TestDb;
use super::keys;

/// Authentication settings the test server accepts: HS256 with the test secret by default.
pub fn hs256_auth() -> AuthArgs {
    AuthArgs {
        jwt_issuer: keys::ISSUER.into(),
        jwt_audience: keys::AUDIENCE.into(),
        jwt_hs256_secret: Some(keys::HS_SECRET.into()),
        jwt_public_keys_pem: None,
        jwt_jwks_url: None,
        jwt_jwks_refresh_secs: 300,
        jwt_leeway_secs: 5,
    }
}

pub fn db_args(url: &str) -> DbArgs {
    DbArgs {
        database_url: url.into(),
        db_pool_size: 8,
        db_timeout_secs: 5,
        db_statement_timeout_ms: 15_000,
    }
}

pub struct TestApp {
    pub base_url: String,
    pub pool: Pool,
    pub http: reqwest::Client,
    pub state: Arc<AppState>,
    service: Service,
    // Declared last: dropped after the service.
    pub db: TestDb,
}

/// Token encryption keys of the test server.
pub const TOKEN_KEYS: &str = "t1:MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=";

/// Options of a test server.
pub struct Options {
    pub auth: AuthArgs,
    pub body_limit: u64,
    /// Apple's base URL (the simulator's); by default a closed port, so a test that reaches
    /// Apple without meaning to fails loudly.
    pub apple_base_url: String,
    pub public_url: Option<String>,
    /// Subscribe to Apple notifications at this server's own URL (overrides `public_url`).
    pub notify_self: bool,
    pub token_keys: String,
    /// Run the Apple dispatcher in this process (fast test timings).
    pub dispatcher: Option<vpp_broker::dispatch::Settings>,
    /// Drift, plans and Reconcile settings.
    pub reconcile: vpp_broker::config::ReconcileArgs,
    /// Webhook settings; no sender runs unless a test asks (`webhook_workers`).
    pub webhooks: vpp_broker::config::WebhookArgs,
}

/// Dispatcher timings for tests: tiny batching windows and polls, so events finish in well
/// under a second.
pub fn fast_dispatch(database_url: &str) -> vpp_broker::dispatch::Settings {
    use std::time::Duration;
    vpp_broker::dispatch::Settings {
        database_url: database_url.to_owned(),
        workers: 2,
        idle_poll: Duration::from_millis(20),
        lease: Duration::from_secs(30),
        quiet: Duration::from_millis(30),
        max_wait: Duration::from_millis(300),
        concurrency: 4,
        first_poll: Duration::from_millis(100),
        max_poll: Duration::from_millis(400),
        max_backoff: Duration::from_secs(2),
        max_attempts: 100,
        max_claim: 5000,
        // Tests that sync ask for a worker (`sync_workers: 1`); the others see no sync run
        // behind their back (a sync reads Apple and would change the requests they count).
        sync_workers: 0,
        sync_incremental: Duration::from_secs(900),
        sync_full: Duration::from_secs(86_400),
        sync_schedule: Duration::from_secs(1),
        event_retention: Duration::from_secs(30 * 86_400),
        // Tests of notifications evaluate them themselves (or ask for the notifier); the
        // others see no notification event behind their back.
        notifications_every: Duration::ZERO,
    }
}

/// [`fast_dispatch`] whose status polls come too late for any test: only Apple's
/// notifications (or the test itself) can finish an event.
pub fn unpolled_dispatch() -> vpp_broker::dispatch::Settings {
    use std::time::Duration;
    vpp_broker::dispatch::Settings {
        first_poll: Duration::from_secs(120),
        max_poll: Duration::from_secs(120),
        ..fast_dispatch("")
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            auth: hs256_auth(),
            body_limit: 256 * 1024,
            apple_base_url: "http://127.0.0.1:9/mdm/v2".into(),
            public_url: None,
            notify_self: false,
            token_keys: TOKEN_KEYS.into(),
            dispatcher: None,
            reconcile: vpp_broker::config::ReconcileArgs::default(),
            webhooks: vpp_broker::config::WebhookArgs {
                webhook_workers: 0,
                ..vpp_broker::config::WebhookArgs::default()
            },
        }
    }
}

impl TestApp {
    pub async fn start() -> TestApp {
        TestApp::start_opts(Options::default()).await
    }

    /// A server whose Apple is the given simulator.
    pub async fn with_sim(sim: &vpp_broker::apple_sim::SimHandle) -> TestApp {
        TestApp::start_opts(Options {
            apple_base_url: sim.base_url(),
            dispatcher: Some(fast_dispatch("")),
            ..Options::default()
        })
        .await
    }

    /// Creates a space (as admin).
    pub async fn space(&self, id: &str) {
        let resp = self
            .req(Method::POST, "/v1/spaces")
            .json(&serde_json::json!({"id": id, "name": id}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "create space {id}");
    }

    /// Attaches an account by sToken; returns its JSON.
    pub async fn account(&self, space: &str, name: &str, stoken: &str) -> serde_json::Value {
        let resp = self
            .req(Method::POST, &format!("/v1/spaces/{space}/accounts"))
            .json(&serde_json::json!({"name": name, "stoken": stoken}))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(status, 201, "attach {name}: {body}");
        body
    }

    pub async fn start_with(auth: AuthArgs, body_limit: u64) -> TestApp {
        TestApp::start_opts(Options {
            auth,
            body_limit,
            ..Options::default()
        })
        .await
    }

    pub async fn start_opts(opts: Options) -> TestApp {
        let Options {
            auth,
            body_limit,
            apple_base_url,
            public_url,
            notify_self,
            token_keys,
            dispatcher,
            reconcile,
            webhooks,
        } = opts;
        super::logs::capture();
        let db = TestDb::new().await;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let public_url = if notify_self {
            Some(format!("http://{addr}"))
        } else {
            public_url
        };
        let service = Service::start(Settings {
            db: db_args(&db.url),
            application_name: "vpp-broker-test".into(),
            http: HttpArgs {
                listen: addr,
                http_workers: 1,
                body_limit_bytes: body_limit,
                shutdown_timeout_secs: 1,
            },
            listener: Some(listener),
            auth,
            apple: AppleArgs {
                apple_base_url,
                apple_timeout_secs: 10,
            },
            accounts: AccountArgs {
                token_keys: Some(token_keys.into()),
                instance_id: None,
                instance_name: "vpp-broker test".into(),
                public_url,
            },
            dispatch: dispatcher.map(|d| vpp_broker::dispatch::Settings {
                database_url: db.url.clone(),
                ..d
            }),
            reconcile,
            webhooks,
            migrate: false,
            handle_signals: false,
        })
        .await
        .expect("start the service");
        TestApp {
            base_url: format!("http://{addr}"),
            pool: service.pool().clone(),
            http: reqwest::Client::new(),
            state: service.state().clone(),
            service,
            db,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// A request with an admin token for every space.
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.req_as(method, path, &admin_token())
    }

    /// `GET path` as admin; asserts 200 and returns the JSON body.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let resp = self.req(Method::GET, path).send().await.unwrap();
        assert_eq!(resp.status(), 200, "GET {path}");
        resp.json().await.unwrap()
    }

    pub fn req_as(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(token)
    }

    pub async fn stop(&self) {
        self.service.stop().await;
    }
}

pub fn admin_token() -> String {
    keys::sign_hs256(&keys::claims("admin", &["*"]))
}

pub fn token(scope: &str, spaces: &[&str]) -> String {
    keys::sign_hs256(&keys::claims(scope, spaces))
}

/// Reads a problem response, asserting its status, media type and `type` slug.
pub async fn expect_problem(resp: reqwest::Response, status: u16, slug: &str) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "unexpected status");
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        ct.starts_with("application/problem+json"),
        "content type {ct:?} is not problem+json"
    );
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: serde_json::Value = resp.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(
        body["type"],
        format!("urn:vpp-broker:problem:{slug}"),
        "{body}"
    );
    assert!(body["title"].is_string(), "{body}");
    assert_eq!(body["request_id"].as_str(), request_id.as_deref(), "{body}");
    body
}
