//! What every handler and worker shares: the ledger pool, the Apple client, the sToken cipher
//! and this deployment's identity.

use std::sync::Arc;

use crate::accounts::identity::Identity;
use crate::apple::client::AppleClient;
use crate::crypto::TokenCipher;
use crate::db::Pool;

pub struct AppState {
    pub pool: Pool,
    pub apple: AppleClient,
    pub cipher: Arc<TokenCipher>,
    pub identity: Identity,
    pub waiters: Arc<crate::waiters::Waiters>,
    /// Batches this process's concurrent allocations.
    pub combiner: Arc<crate::engine::combiner::Combiner>,
}

impl AppState {
    /// Assembles the shared state: the Apple client, and the identity (the configured instance
    /// id, else the one stored in the database at the first migration).
    pub async fn build(
        pool: Pool,
        apple: &crate::config::AppleArgs,
        accounts: &crate::config::AccountArgs,
        cipher: Arc<TokenCipher>,
    ) -> Result<AppState, String> {
        apple.validate()?;
        accounts.validate()?;
        let client = AppleClient::new(
            &apple.apple_base_url,
            std::time::Duration::from_secs(apple.apple_timeout_secs),
        )
        .map_err(|e| format!("cannot build the Apple client: {e}"))?;
        let instance_id = match &accounts.instance_id {
            Some(id) => id.clone(),
            None => {
                let mut conn = pool
                    .get()
                    .await
                    .map_err(|e| format!("cannot reach the database: {e}"))?;
                crate::ledger::deployment::instance_id(&mut conn)
                    .await
                    .map_err(|e| {
                        format!("cannot read the instance id (are migrations applied?): {e}")
                    })?
                    .to_string()
            }
        };
        let pool_for_combiner = pool.clone();
        Ok(AppState {
            pool,
            apple: client,
            cipher,
            identity: Identity {
                instance_id,
                instance_name: accounts.instance_name.clone(),
                public_url: accounts.public_base(),
            },
            waiters: Arc::new(crate::waiters::Waiters::default()),
            combiner: crate::engine::combiner::Combiner::start(pool_for_combiner, 2, 128),
        })
    }
}
