//! `vpp-broker serve`: the HTTP API and the Apple dispatcher (background workers), started by
//! [`Service::start`] until SIGTERM / SIGINT.

use clap::Args;
use secrecy::ExposeSecret;

use super::CommandError;
use crate::config::{
    AccountArgs, AppleArgs, AuthArgs, DbArgs, DispatchArgs, HttpArgs, ReconcileArgs,
};
use crate::service::{Service, Settings};

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
    #[command(flatten)]
    pub reconcile: ReconcileArgs,
    #[command(flatten)]
    pub webhooks: crate::config::WebhookArgs,
    /// Apply pending migrations before serving (under the same advisory lock as `migrate`).
    /// The Helm chart runs `migrate` as a hook instead.
    #[arg(long, env = "VPP_AUTO_MIGRATE", default_value_t = false)]
    pub auto_migrate: bool,
}

pub async fn run(args: ServeArgs) -> Result<(), CommandError> {
    let ServeArgs {
        db,
        http,
        auth,
        apple,
        accounts,
        dispatch,
        reconcile,
        webhooks,
        auto_migrate,
    } = args;
    let dispatch = crate::dispatch::Settings::from_args(&dispatch, db.database_url.expose_secret());
    let listen = http.listen;
    let service = Service::start(Settings {
        db,
        application_name: "vpp-broker".into(),
        http,
        listener: None,
        auth,
        apple,
        accounts,
        dispatch: Some(dispatch),
        reconcile,
        webhooks,
        migrate: auto_migrate,
        handle_signals: true,
    })
    .await?;
    tracing::info!(listen = %listen, "vpp-broker serving");
    let result = service.wait().await;
    tracing::info!("vpp-broker stopped");
    Ok(result?)
}
