//! The running service, assembled in one place: the database pool, the shared state, the HTTP
//! server and the dispatcher workers.
//!
//! `vpp-broker serve`, `vpp-broker dev` and the integration-test harness all call
//! [`Service::start`]; they differ only in the [`Settings`] they pass (where the keys come from,
//! whether SIGTERM is handled, whether a dispatcher runs in this process).

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use secrecy::ExposeSecret;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::jwt::Authenticator;
use crate::config::{
    AccountArgs, AppleArgs, AuthArgs, ConfigError, DbArgs, HttpArgs, ReconcileArgs, WebhookArgs,
};
use crate::crypto::{KeySpecError, TokenCipher};
use crate::db::pool::PoolError;
use crate::db::{self, Pool, migrate};
use crate::dispatch;
use crate::http::server::{self, Parts};
use crate::state::{AppState, StateError};

/// Everything [`Service::start`] needs.
pub struct Settings {
    pub db: DbArgs,
    /// `application_name` of this process's database sessions.
    pub application_name: String,
    pub http: HttpArgs,
    /// An already bound listener (tests bind port 0 first to learn their URL); `None` binds
    /// `http.listen`.
    pub listener: Option<TcpListener>,
    pub auth: AuthArgs,
    pub apple: AppleArgs,
    /// Identity, public URL and the sToken keys (`token_keys` is required).
    pub accounts: AccountArgs,
    /// The Apple dispatcher of this process; `None` runs none (its work waits for another one).
    pub dispatch: Option<dispatch::Settings>,
    /// Drift, plans and Reconcile (shared by the API and the workers).
    pub reconcile: ReconcileArgs,
    /// Webhooks: URL safety, delivery and its senders (`webhook_workers` of them here).
    pub webhooks: WebhookArgs,
    /// Apply pending migrations first, under the migration lock (`VPP_AUTO_MIGRATE`, `dev`).
    pub migrate: bool,
    /// SIGTERM / SIGINT stop the server gracefully (`serve`, `dev`); tests stop it themselves.
    pub handle_signals: bool,
}

/// Why the service did not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "VPP_TOKEN_KEYS is required: sTokens are stored encrypted and serve refuses to start \
         without a key (generate one with `openssl rand -base64 32` and set VPP_TOKEN_KEYS=k1:<key>)"
    )]
    NoTokenKeys,
    #[error(transparent)]
    TokenKeys(#[from] KeySpecError),
    #[error(transparent)]
    Migrate(#[from] migrate::MigrateError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The authenticator's set-up (JWT keys, JWKS URL).
    #[error(transparent)]
    Auth(#[from] crate::auth::jwt::AuthSetupError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot start the HTTP server: {0}")]
    StartServer(#[source] std::io::Error),
    #[error("HTTP server failed: {0}")]
    Server(#[source] std::io::Error),
    #[error("HTTP server task failed: {0}")]
    ServerTask(#[source] tokio::task::JoinError),
}

/// A started service. Dropping it cancels the background tasks (dispatcher, waiters' listener,
/// JWKS refresher); the HTTP server stops with [`stop`](Self::stop), a signal, or the runtime.
pub struct Service {
    addr: SocketAddr,
    state: Arc<AppState>,
    server: ServerHandle,
    task: Option<JoinHandle<std::io::Result<()>>>,
    workers: Vec<JoinHandle<()>>,
    cancel: CancellationToken,
    shutdown_timeout: Duration,
}

impl Service {
    /// Validates the settings, then builds the pool, the authenticator, the shared state, the
    /// dispatcher workers and the HTTP server, and starts them. Connections to PostgreSQL are
    /// opened lazily (except to read a stored instance id), so `/readyz` reports a database
    /// that is down.
    pub async fn start(settings: Settings) -> Result<Service, ServiceError> {
        let Settings {
            db,
            application_name,
            http,
            listener,
            auth,
            apple,
            accounts,
            dispatch,
            reconcile,
            webhooks,
            migrate,
            handle_signals,
        } = settings;
        db.validate()?;
        webhooks.validate()?;
        auth.validate()?;
        apple.validate()?;
        accounts.validate()?;
        let cipher = match &accounts.token_keys {
            Some(spec) => Arc::new(TokenCipher::from_spec(spec.expose_secret())?),
            None => return Err(ServiceError::NoTokenKeys),
        };
        let database_url = db.database_url.expose_secret();
        if migrate {
            let applied = migrate::run_pending(database_url).await?;
            tracing::info!(applied = applied.len(), "auto-migrate finished");
        }
        let pool = db::connect(&db, &application_name)?;
        let authenticator = Arc::new(
            Authenticator::from_args(&auth)
                .await
                .map_err(ServiceError::Auth)?,
        );
        let cancel = CancellationToken::new();
        if let Some(jwks) = authenticator.jwks() {
            jwks.spawn_refresher(cancel.clone());
        }
        let listener = match listener {
            Some(listener) => listener,
            None => TcpListener::bind(http.listen).map_err(|source| ServiceError::Listen {
                addr: http.listen,
                source,
            })?,
        };
        let addr = listener
            .local_addr()
            .map_err(|source| ServiceError::Listen {
                addr: http.listen,
                source,
            })?;
        let webhook_settings = crate::webhooks::Settings::from_args(&webhooks);
        let state = Arc::new(
            AppState::build(pool, &apple, &accounts, cipher, reconcile, webhook_settings).await?,
        );
        // One Apple request budget per token across replicas (T13), on a small pool of its own
        // so that a request storm holding the main pool does not delay Apple calls.
        let pace_db = crate::config::DbArgs {
            db_pool_size: 2,
            ..db.clone()
        };
        state
            .apple
            .share_pace(Arc::new(crate::ledger::apple_pace::PgPace::new(
                db::connect(&pace_db, &format!("{application_name} apple pace"))?,
            )));
        state
            .waiters
            .clone()
            .spawn_listener(database_url.to_owned(), cancel.clone());
        state
            .event_wakes
            .clone()
            .spawn_listener(database_url.to_owned(), cancel.clone());
        let runs_sequencer = dispatch.as_ref().is_some_and(|s| s.workers > 0);
        if !runs_sequencer {
            // No sequencer here: this process's activity hints go to the others' by NOTIFY.
            crate::events::wake::spawn_relay(state.pool.clone(), cancel.clone());
        }
        let mut workers = match dispatch {
            Some(settings) => {
                dispatch::spawn(dispatch::Ctx::new(state.clone(), settings), cancel.clone())
            }
            None => Vec::new(),
        };
        workers.extend(dispatch::webhooks::spawn(state.clone(), cancel.clone()));
        let server = server::start(
            Parts {
                state: state.clone(),
                authenticator,
            },
            crate::api::configure,
            &http,
            listener,
            handle_signals,
        )
        .map_err(ServiceError::StartServer)?;
        let handle = server.handle();
        let task = tokio::spawn(server);
        Ok(Service {
            addr,
            state,
            server: handle,
            task: Some(task),
            workers,
            cancel,
            shutdown_timeout: Duration::from_secs(http.shutdown_timeout_secs),
        })
    }

    /// The address the HTTP server listens on (the bound port when `:0` was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// What handlers and workers share (pool, Apple client, cipher, identity, waiters).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    pub fn pool(&self) -> &Pool {
        &self.state.pool
    }

    /// Stops the HTTP server gracefully and cancels the background tasks (without waiting for
    /// the dispatcher workers: their leases cover anything cut short).
    pub async fn stop(&self) {
        self.cancel.cancel();
        self.server.stop(true).await;
    }

    /// Runs until the HTTP server stops (a signal with `handle_signals`, or [`stop`](Self::stop)),
    /// then cancels the background tasks and gives the dispatcher workers the shutdown timeout to
    /// finish the Apple request in hand (their leases cover anything cut short).
    pub async fn wait(mut self) -> Result<(), ServiceError> {
        let result = match self.task.take() {
            Some(task) => match task.await {
                Ok(served) => served.map_err(ServiceError::Server),
                Err(e) => Err(ServiceError::ServerTask(e)),
            },
            None => Ok(()),
        };
        self.cancel.cancel();
        let workers = std::mem::take(&mut self.workers);
        let _ = tokio::time::timeout(
            self.shutdown_timeout,
            futures_util::future::join_all(workers),
        )
        .await;
        result
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
