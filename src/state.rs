//! What every handler and worker shares: the ledger pool, the Apple client, the sToken cipher
//! and this deployment's identity.

use std::sync::Arc;

use crate::accounts::identity::Identity;
use crate::apple::AppleError;
use crate::apple::client::AppleClient;
use crate::config::ConfigError;
use crate::crypto::TokenCipher;
use crate::db::Pool;
use crate::engine::allocate::Allocations;
use crate::engine::combiner::Combiner;
use crate::engine::revoke::Revocations;

/// Why the shared state could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot build the Apple client: {0}")]
    AppleClient(#[source] AppleError),
    #[error("cannot reach the database: {0}")]
    Database(#[source] deadpool::managed::PoolError<diesel_async::pooled_connection::PoolError>),
    #[error("cannot read the instance id (are migrations applied?): {0}")]
    InstanceId(#[source] diesel::result::Error),
    #[error("cannot build the webhook client: {0}")]
    WebhookClient(#[source] reqwest::Error),
}

pub struct AppState {
    pub pool: Pool,
    pub apple: AppleClient,
    pub cipher: Arc<TokenCipher>,
    pub identity: Identity,
    pub waiters: Arc<crate::waiters::Waiters>,
    /// Wakes the event feed's long polls when their space has new events.
    pub event_wakes: Arc<crate::events::wake::EventWakes>,
    /// Batches this process's concurrent allocations.
    pub combiner: Arc<Combiner<Allocations>>,
    /// Batches this process's concurrent revocations of one assignment.
    pub revocations: Arc<Combiner<Revocations>>,
    /// Exports running at once in this process: each holds a pool connection (and a snapshot)
    /// for as long as it streams, so at most a quarter of the pool (at least one) goes to
    /// them and allocations keep the rest.
    pub exports: Arc<tokio::sync::Semaphore>,
    /// Drift, plans and Reconcile settings.
    pub reconciliation: crate::config::ReconcileArgs,
    /// Webhook settings and the delivery client.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
}

impl AppState {
    /// Assembles the shared state: the Apple client, and the identity (the configured instance
    /// id, else the one stored in the database at the first migration).
    pub async fn build(
        pool: Pool,
        apple: &crate::config::AppleArgs,
        accounts: &crate::config::AccountArgs,
        cipher: Arc<TokenCipher>,
        reconciliation: crate::config::ReconcileArgs,
        webhooks: crate::webhooks::Settings,
    ) -> Result<AppState, StateError> {
        let webhooks =
            crate::webhooks::Webhooks::new(webhooks).map_err(StateError::WebhookClient)?;
        apple.validate()?;
        accounts.validate()?;
        let client = AppleClient::new(
            &apple.apple_base_url,
            std::time::Duration::from_secs(apple.apple_timeout_secs),
        )
        .map_err(StateError::AppleClient)?;
        let instance_id = match &accounts.instance_id {
            Some(id) => id.clone(),
            None => {
                let mut conn = pool.get().await.map_err(StateError::Database)?;
                crate::ledger::deployment::instance_id(&mut conn)
                    .await
                    .map_err(StateError::InstanceId)?
                    .to_string()
            }
        };
        let exports = (pool.status().max_size / 4).max(1);
        let combiner = Combiner::start(pool.clone(), 2, 128);
        let revocations = Combiner::start(pool.clone(), 2, 128);
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
            event_wakes: Arc::new(crate::events::wake::EventWakes::default()),
            combiner,
            revocations,
            exports: Arc::new(tokio::sync::Semaphore::new(exports)),
            reconciliation,
            webhooks: Arc::new(webhooks),
        })
    }
}
