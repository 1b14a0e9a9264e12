//! `vpp-broker serve`: the HTTP API (and, as later capabilities land, the background workers).

use std::net::TcpListener;
use std::sync::Arc;

use clap::Args;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::auth::jwt::Authenticator;
use crate::config::{AccountArgs, AppleArgs, AuthArgs, DbArgs, DispatchArgs, HttpArgs};
use crate::crypto::TokenCipher;
use crate::db::{self, migrate};
use crate::http::AppState;
use crate::http::server::{self, Parts};

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub apple: AppleArgs,
    #[command(flatten)]
    pub accounts: AccountArgs,
    #[command(flatten)]
    pub dispatch: DispatchArgs,
    /// Apply pending migrations before serving (under the same advisory lock as `migrate`).
    /// The Helm chart runs `migrate` as a hook instead.
    #[arg(long, env = "VPP_AUTO_MIGRATE", default_value_t = false)]
    pub auto_migrate: bool,
}

pub async fn run(args: ServeArgs) -> Result<(), String> {
    args.db.validate()?;
    args.auth.validate()?;
    args.apple.validate()?;
    args.accounts.validate()?;
    let cipher = match &args.accounts.token_keys {
        Some(spec) => Arc::new(TokenCipher::from_spec(spec.expose_secret())?),
        None => {
            return Err("VPP_TOKEN_KEYS is required: sTokens are stored encrypted and serve \
                        refuses to start without a key (generate one with `openssl rand -base64 32` \
                        and set VPP_TOKEN_KEYS=k1:<key>)"
                .into());
        }
    };
    if args.auto_migrate {
        let applied = migrate::run_pending(args.db.database_url.expose_secret())
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(applied = applied.len(), "auto-migrate finished");
    }
    let pool = db::connect(&args.db, "vpp-broker")?;
    let authenticator = Arc::new(Authenticator::from_args(&args.auth).await?);
    let cancel = CancellationToken::new();
    if let Some(jwks) = authenticator.jwks() {
        jwks.spawn_refresher(cancel.clone());
    }
    let listener = TcpListener::bind(args.http.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", args.http.listen))?;
    let state = Arc::new(AppState::build(pool, &args.apple, &args.accounts, cipher).await?);
    let dispatch = args.dispatch.settings(args.db.database_url.expose_secret());
    state.waiters.clone().spawn_listener(
        args.db.database_url.expose_secret().to_owned(),
        cancel.clone(),
    );
    let workers = crate::dispatch::spawn(
        crate::dispatch::Ctx::new(state.clone(), dispatch),
        cancel.clone(),
    );
    let server = server::start(
        Parts {
            state,
            authenticator,
        },
        &args.http,
        listener,
        true,
    )
    .map_err(|e| format!("cannot start the HTTP server: {e}"))?;
    tracing::info!(listen = %args.http.listen, "vpp-broker serving");
    let result = server.await.map_err(|e| format!("HTTP server failed: {e}"));
    cancel.cancel();
    // Let workers finish the Apple request in hand; their leases cover anything cut short.
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(args.http.shutdown_timeout_secs),
        futures_util::future::join_all(workers),
    )
    .await;
    tracing::info!("vpp-broker stopped");
    result
}
