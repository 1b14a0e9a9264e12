//! `vpp-broker migrate`: apply pending migrations under an advisory lock.

use clap::Args;
use secrecy::ExposeSecret;

use super::CommandError;
use crate::config::DbArgs;
use crate::db::migrate;

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub db: DbArgs,
}

pub async fn run(args: MigrateArgs) -> Result<(), CommandError> {
    args.db.validate()?;
    let applied = migrate::run_pending(args.db.database_url.expose_secret()).await?;
    if applied.is_empty() {
        tracing::info!("database schema is up to date");
    } else {
        tracing::info!(applied = ?applied, "migrations applied");
    }
    Ok(())
}
