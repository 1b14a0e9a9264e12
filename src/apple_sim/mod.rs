//! A stateful simulator of Apple's license API v2, for tests, benchmarks and the quick start
//! (`docs/apple.md`, The simulator). Subcommand: `vpp-broker apple-sim --port 9090 --seed
//! file.json`; in-process: [`Simulator::start`].
//!
//! It serves Apple's own paths under `/mdm/v2` (switching to Apple is only the client's base URL)
//! and an admin API under `/_sim` (see [`admin`]) for seeding, fault injection, counters and
//! assertions. `docs/apple.md` documents both.
//!
//! Decisions where Apple is silent or sources conflict (numbered as in `docs/apple.md`):
//! - unknown/invalidated tokens answer 9622 with HTTP 200 (conflict #3; setting
//!   `invalidTokenStatus`);
//! - `tokenExpirationDate` in every response (conflict #1; setting `tokenExpirationDate`);
//! - associate accepts serial numbers and clientUserIds in one request (Apple's examples,
//!   conflict #2); tasks are assets × (users, then serials), in request order, and run in that
//!   order: licenses running out fail the rest with 9709;
//! - re-associating an existing assignment succeeds without using a license; disassociating an
//!   absent one succeeds; an unknown `adamId` is refused synchronously with 9602 and `errorInfo`;
//! - 9609 (unknown user) is reported asynchronously, in `failures` and notifications (conflict #5);
//! - revoke expands its targets into their revocable assignments when accepted; `numRequested` is
//!   that number of assignments; over-limit revokes answer 9701/9702;
//! - retiring a user releases its revocable licenses (v1 behaviour; setting
//!   `retireReleasesLicenses`); no ASSET_MANAGEMENT notification is sent for those;
//! - `POST /client/config`: absent fields keep their stored values; `notificationTypes` replaces;
//!   `http://` notification URLs are accepted (setting `allowHttpNotificationUrl`; Apple requires
//!   https) because tests run on localhost;
//! - pages: zero-based, `pageSize` records (default 500), an empty result is one empty page,
//!   `nextPageIndex` only when another page follows; `unlimitedAssets` come on page 0;
//! - 429 carries `Retry-After: 1`;
//! - `GET /users?activeOnly=true` excludes Retired/Deleted records (conflict #7).
//!
//! State lives behind one mutex (simple and correct; no handler awaits while holding it). Two
//! background tasks run on the runtime that called [`Simulator::start`]: the event worker (runs
//! due events in submission order) and the notification sender.

pub mod admin;
mod api;
mod events;
mod listing;
pub mod notify;
pub mod seed;
pub mod settings;
pub mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::apple::dates;
use crate::apple::stoken::SToken;
use crate::apple::types::{AssetKey, MdmInfo};
pub use admin::{AssetTotal, NewAssignments, NewToken, TokenStatusChange};
pub use api::THROTTLED;
pub use events::NOT_ENOUGH;
pub use notify::{DeliveryOutcome, DeliveryRecord};
pub use seed::{
    GeneratedAssignments, SeedAsset, SeedAssignment, SeedFile, SeedLocation, SeedUser,
    SeededLocation, TokenStatus,
};
pub use settings::{
    ChurnRule, Dataset, FailRule, Faults, FaultsPatch, SettingsPatch, SimSettings,
    TokenExpirationMode,
};
pub use state::{LocationSnapshot, TokenSnapshot};

use notify::Outgoing;
use state::State;

/// Shared by handlers and background tasks.
pub(crate) struct Sim {
    state: Mutex<State>,
    outbox: mpsc::UnboundedSender<Outgoing>,
    /// Wakes the event worker when an event is queued.
    wake: Notify,
    /// For notifications.
    http: reqwest::Client,
}

impl Sim {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, outgoing: Vec<Outgoing>) {
        for o in outgoing {
            // The receiver lives as long as the simulator.
            let _ = self.outbox.send(o);
        }
    }

    fn seed(&self, file: &SeedFile) -> Result<Vec<SeededLocation>, String> {
        let mut state = self.lock();
        if let Some(patch) = &file.settings {
            state.settings.apply(patch);
        }
        file.locations
            .iter()
            .map(|l| {
                state
                    .add_location(l)
                    .map_err(|e| format!("location {:?}: {e}", l.name))
            })
            .collect()
    }
}

/// Runs due events, in order, until aborted.
async fn run_events(sim: Arc<Sim>) {
    loop {
        let (outgoing, next) = sim.lock().process_due(Instant::now(), false);
        sim.send(outgoing);
        match next {
            Some(due) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(due)) => {}
                    _ = sim.wake.notified() => {}
                }
            }
            None => sim.wake.notified().await,
        }
    }
}

/// How to start a simulator.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Listen address; port 0 picks a free port.
    pub bind: SocketAddr,
    /// actix worker threads.
    pub workers: usize,
    pub settings: SimSettings,
    /// Seeded before the first request.
    pub seed: Option<SeedFile>,
    /// Stop on SIGINT/SIGTERM (the subcommand); tests stop the handle themselves.
    pub handle_signals: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: 2,
            settings: SimSettings::default(),
            seed: None,
            handle_signals: false,
        }
    }
}

/// Why the simulator could not start or an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot listen: {0}")]
    Bind(#[from] std::io::Error),
    #[error("invalid seed: {0}")]
    Seed(String),
    #[error("admin call failed: {0}")]
    Http(String),
    #[error("admin call answered {status}: {message}")]
    Admin { status: u16, message: String },
}

/// The simulator.
pub struct Simulator;

impl Simulator {
    /// Binds, seeds and starts serving. Must be called inside a tokio runtime, which then runs
    /// the event worker and the notification sender.
    pub async fn start(config: SimConfig) -> Result<SimHandle, SimError> {
        let listener = std::net::TcpListener::bind(config.bind)?;
        let addr = listener.local_addr()?;
        let http = reqwest::Client::builder()
            .user_agent(concat!(
                "apple-sim (vpp-broker/",
                env!("CARGO_PKG_VERSION"),
                ")"
            ))
            .build()
            .map_err(|e| SimError::Http(e.to_string()))?;
        let (outbox, outbox_rx) = mpsc::unbounded_channel();
        let sim = Arc::new(Sim {
            state: Mutex::new(State::new(config.settings.clone())),
            outbox,
            wake: Notify::new(),
            http: http.clone(),
        });
        let seeded = match &config.seed {
            Some(file) => sim.seed(file).map_err(SimError::Seed)?,
            None => Vec::new(),
        };
        let data = web::Data::from(sim.clone());
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(8 * 1024 * 1024))
                .configure(api::configure)
                .configure(admin::configure)
                .default_service(web::to(api::not_found))
        })
        .workers(config.workers.max(1))
        .shutdown_timeout(1)
        .listen(listener)?;
        if !config.handle_signals {
            server = server.disable_signals();
        }
        let server = server.run();
        let handle = server.handle();
        let tasks = vec![
            tokio::spawn(run_events(sim.clone())),
            tokio::spawn(notify::run_sender(sim.clone(), outbox_rx)),
        ];
        let server_task = tokio::spawn(server);
        tracing::info!(%addr, locations = seeded.len(), "Apple simulator listening");
        Ok(SimHandle {
            addr,
            server: handle,
            server_task: Some(server_task),
            tasks,
            admin: http,
            seeded,
        })
    }
}

/// A running simulator: its URLs and typed access to the admin API.
pub struct SimHandle {
    addr: SocketAddr,
    server: ServerHandle,
    server_task: Option<JoinHandle<std::io::Result<()>>>,
    tasks: Vec<JoinHandle<()>>,
    admin: reqwest::Client,
    seeded: Vec<SeededLocation>,
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL for the client: `http://127.0.0.1:<port>/mdm/v2`.
    pub fn base_url(&self) -> String {
        format!("http://{}/mdm/v2", self.addr)
    }

    /// Admin API root: `http://127.0.0.1:<port>/_sim`.
    pub fn admin_url(&self) -> String {
        format!("http://{}/_sim", self.addr)
    }

    /// Locations seeded at start.
    pub fn seeded(&self) -> &[SeededLocation] {
        &self.seeded
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, SimError> {
        let mut request = self
            .admin
            .request(method, format!("{}{path}", self.admin_url()))
            .timeout(Duration::from_secs(30));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(serde_json::to_vec(body).map_err(|e| SimError::Http(e.to_string()))?);
        }
        let response = request
            .send()
            .await
            .map_err(|e| SimError::Http(e.to_string()))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| SimError::Http(e.to_string()))?;
        if !(200..300).contains(&status) {
            return Err(SimError::Admin {
                status,
                message: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(bytes).map_err(|e| SimError::Http(format!("bad admin answer: {e}")))
    }

    /// Adds locations (and applies the file's settings).
    pub async fn seed(&self, file: &SeedFile) -> Result<Vec<SeededLocation>, SimError> {
        self.call(reqwest::Method::POST, "/seed", Some(file)).await
    }

    /// Adds one location; its sToken is in the answer.
    pub async fn add_location(&self, location: &SeedLocation) -> Result<SeededLocation, SimError> {
        self.call(reqwest::Method::POST, "/locations", Some(location))
            .await
    }

    /// The full state of a location.
    pub async fn location(&self, u_id: &str) -> Result<LocationSnapshot, SimError> {
        self.call(
            reqwest::Method::GET,
            &format!("/locations/{u_id}"),
            None::<&()>,
        )
        .await
    }

    /// Mints another token for a location (e.g. a renewed one).
    pub async fn add_token(
        &self,
        u_id: &str,
        exp_date: Option<DateTime<Utc>>,
    ) -> Result<SToken, SimError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            s_token: String,
        }
        let body = NewToken {
            token_exp_date: exp_date.map(|d| dates::format(&d)),
            ..Default::default()
        };
        let answer: Answer = self
            .call(
                reqwest::Method::POST,
                &format!("/locations/{u_id}/tokens"),
                Some(&body),
            )
            .await?;
        Ok(SToken::new(answer.s_token))
    }

    /// Marks one token expired / revoked / invalid / valid.
    pub async fn set_token_status(
        &self,
        token: &SToken,
        status: TokenStatus,
    ) -> Result<(), SimError> {
        let body = TokenStatusChange {
            s_token: Some(token.expose().to_owned()),
            location: None,
            status,
        };
        let _: serde_json::Value = self
            .call(reqwest::Method::POST, "/tokens/status", Some(&body))
            .await?;
        Ok(())
    }

    /// Marks every token of a location.
    pub async fn set_location_token_status(
        &self,
        u_id: &str,
        status: TokenStatus,
    ) -> Result<(), SimError> {
        let body = TokenStatusChange {
            s_token: None,
            location: Some(u_id.to_owned()),
            status,
        };
        let _: serde_json::Value = self
            .call(reqwest::Method::POST, "/tokens/status", Some(&body))
            .await?;
        Ok(())
    }

    /// Adds assets (a purchase of content the location did not have; ASSET_COUNT for each).
    pub async fn add_assets(&self, u_id: &str, assets: &[SeedAsset]) -> Result<(), SimError> {
        self.call(
            reqwest::Method::POST,
            &format!("/locations/{u_id}/assets"),
            Some(assets),
        )
        .await
    }

    /// Purchase or refund: sets the total and sends ASSET_COUNT; returns the delta.
    pub async fn set_asset_total(
        &self,
        u_id: &str,
        asset: &AssetKey,
        total_count: i64,
    ) -> Result<i64, SimError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            count_delta: i64,
        }
        let answer: Answer = self
            .call(
                reqwest::Method::PUT,
                &format!(
                    "/locations/{u_id}/assets/{}/{}/total",
                    asset.adam_id, asset.pricing_param
                ),
                Some(&AssetTotal { total_count }),
            )
            .await?;
        Ok(answer.count_delta)
    }

    /// Adds assignments directly (as if another tool assigned them).
    pub async fn add_assignments(&self, u_id: &str, body: &NewAssignments) -> Result<(), SimError> {
        self.call(
            reqwest::Method::POST,
            &format!("/locations/{u_id}/assignments"),
            Some(body),
        )
        .await
    }

    /// Removes assignments directly (another MDM or an admin revoked them behind the service's
    /// back); returns how many were there. They never appear in a delta.
    pub async fn remove_assignments(
        &self,
        u_id: &str,
        body: &NewAssignments,
    ) -> Result<usize, SimError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            removed: usize,
        }
        let answer: Answer = self
            .call(
                reqwest::Method::POST,
                &format!("/locations/{u_id}/assignments/remove"),
                Some(body),
            )
            .await?;
        Ok(answer.removed)
    }

    /// Another MDM writes its mdmInfo into the token (and replaces the notification endpoint).
    pub async fn overwrite_mdm_info(&self, u_id: &str, info: &MdmInfo) -> Result<(), SimError> {
        self.call(
            reqwest::Method::PUT,
            &format!("/locations/{u_id}/mdm-info"),
            Some(info),
        )
        .await
    }

    /// The user accepts the invitation (→ Associated, USER_ASSOCIATED).
    pub async fn accept_invitation(
        &self,
        u_id: &str,
        client_user_id: &str,
    ) -> Result<(), SimError> {
        self.call(
            reqwest::Method::POST,
            &format!("/locations/{u_id}/users/{client_user_id}/accept"),
            None::<&()>,
        )
        .await
    }

    pub async fn settings(&self) -> Result<SimSettings, SimError> {
        self.call(reqwest::Method::GET, "/settings", None::<&()>)
            .await
    }

    pub async fn update_settings(&self, patch: &SettingsPatch) -> Result<SimSettings, SimError> {
        self.call(reqwest::Method::PUT, "/settings", Some(patch))
            .await
    }

    pub async fn faults(&self) -> Result<Faults, SimError> {
        self.call(reqwest::Method::GET, "/faults", None::<&()>)
            .await
    }

    pub async fn set_faults(&self, patch: &FaultsPatch) -> Result<Faults, SimError> {
        self.call(reqwest::Method::PUT, "/faults", Some(patch))
            .await
    }

    pub async fn clear_faults(&self) -> Result<(), SimError> {
        let _: Faults = self
            .call(reqwest::Method::DELETE, "/faults", None::<&()>)
            .await?;
        Ok(())
    }

    /// Completes every queued event now; returns how many.
    pub async fn flush_events(&self) -> Result<usize, SimError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            processed: usize,
        }
        let answer: Answer = self
            .call(reqwest::Method::POST, "/events/flush", None::<&()>)
            .await?;
        Ok(answer.processed)
    }

    /// Requests by `METHOD /path` (path relative to `/mdm/v2`) since start or the last reset.
    pub async fn counters(&self) -> Result<std::collections::BTreeMap<String, u64>, SimError> {
        self.call(reqwest::Method::GET, "/counters", None::<&()>)
            .await
    }

    pub async fn reset_counters(&self) -> Result<(), SimError> {
        self.call(reqwest::Method::DELETE, "/counters", None::<&()>)
            .await
    }

    /// Notification delivery attempts, oldest first.
    pub async fn notifications(&self) -> Result<Vec<DeliveryRecord>, SimError> {
        self.call(reqwest::Method::GET, "/notifications", None::<&()>)
            .await
    }

    /// Stops serving and the background tasks.
    pub async fn stop(mut self) {
        self.server.stop(true).await;
        if let Some(task) = self.server_task.take() {
            let _ = task.await;
        }
        for task in &self.tasks {
            task.abort();
        }
    }

    /// Serves until the server stops (SIGINT/SIGTERM when `handle_signals`).
    pub async fn wait(mut self) -> std::io::Result<()> {
        let result = match self.server_task.take() {
            Some(task) => task
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string()))),
            None => Ok(()),
        };
        for task in &self.tasks {
            task.abort();
        }
        result
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if self.server_task.is_some() {
            // Sends the stop command now; the server finishes on its own.
            drop(self.server.stop(false));
        }
    }
}
