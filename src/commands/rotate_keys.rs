//! `vpp-broker rotate-keys`: re-encrypts every stored sToken, and every webhook secret, with
//! the active key.
//!
//! Rotation: put the new key first in `VPP_TOKEN_KEYS` (keep the old one after it), roll the
//! deployment, run this command once, then remove the old key. Safe to run while replicas serve
//! and to re-run; each account is re-sealed in its own transaction under a row lock.

use std::sync::Arc;

use clap::Args;
use diesel_async::AsyncConnection;
use secrecy::{ExposeSecret, SecretString};

use super::CommandError;
use crate::accounts::AccountError;
use crate::config::DbArgs;
use crate::crypto::TokenCipher;
use crate::db;
use crate::ledger::accounts as store;

#[derive(Debug, Args)]
pub struct RotateKeysArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The keys, new active key first (same format as for `serve`).
    #[arg(long, env = "VPP_TOKEN_KEYS", hide_env_values = true)]
    pub token_keys: SecretString,
}

/// Why a rotation stopped (accounts re-sealed before it stay re-sealed; re-running continues).
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("cannot reach the database: {0}")]
    Database(#[source] deadpool::managed::PoolError<diesel_async::pooled_connection::PoolError>),
    #[error("cannot list the accounts to re-encrypt: {0}")]
    List(#[source] diesel::result::Error),
    #[error("webhook secrets: {0}")]
    Webhooks(#[source] crate::webhooks::WebhookError),
    #[error("account {id}: {source}")]
    Account {
        id: uuid::Uuid,
        #[source]
        source: AccountError,
    },
}

/// Re-seals every token not sealed with the active key; returns how many.
pub async fn rotate(pool: &db::Pool, cipher: &TokenCipher) -> Result<usize, RotateError> {
    let mut done = 0;
    let mut conn = pool.get().await.map_err(RotateError::Database)?;
    loop {
        let batch = store::sealed_with_other_keys(&mut conn, cipher.active_key_id(), 100)
            .await
            .map_err(RotateError::List)?;
        if batch.is_empty() {
            return Ok(done);
        }
        for row in batch {
            let id = row.id;
            let result: Result<(), AccountError> = conn
                .transaction(async |conn| {
                    let Some(locked) = store::find_locked(conn, &row.space_id, id).await? else {
                        return Ok(());
                    };
                    if locked.token_key_id == cipher.active_key_id() {
                        return Ok(());
                    }
                    let token = cipher.open(id.as_bytes(), &locked.sealed_token())?;
                    let sealed = cipher.seal(id.as_bytes(), token.expose());
                    Ok(store::reseal(conn, id, &sealed).await?)
                })
                .await;
            result.map_err(|source| RotateError::Account { id, source })?;
            done += 1;
        }
    }
}

pub async fn run(args: RotateKeysArgs) -> Result<(), CommandError> {
    args.db.validate()?;
    let cipher = Arc::new(TokenCipher::from_spec(args.token_keys.expose_secret())?);
    let pool = db::connect(&args.db, "vpp-broker-rotate-keys")?;
    let n = rotate(&pool, &cipher).await?;
    let mut conn = pool.get().await.map_err(RotateError::Database)?;
    let hooks = crate::webhooks::endpoints::reseal_all(&mut conn, &cipher)
        .await
        .map_err(RotateError::Webhooks)?;
    tracing::info!(
        webhooks = hooks,
        reencrypted = n,
        key = cipher.active_key_id(),
        "token keys rotated"
    );
    println!(
        "re-encrypted {n} sTokens and {hooks} webhook secrets with key {}",
        cipher.active_key_id()
    );
    Ok(())
}
