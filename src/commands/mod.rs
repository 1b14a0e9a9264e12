//! One module per subcommand, and the error any of them stops with.

#[cfg(feature = "dev")]
pub mod apple_sim;
#[cfg(feature = "dev")]
pub mod dev;
pub mod migrate;
pub mod openapi;
pub mod rotate_keys;
pub mod serve;

use std::path::PathBuf;

/// Why a subcommand stopped. The binary prints it as `error: …`; sources are kept.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
    #[error(transparent)]
    Migrate(#[from] crate::db::migrate::MigrateError),
    #[error(transparent)]
    Pool(#[from] crate::db::pool::PoolError),
    #[error(transparent)]
    TokenKeys(#[from] crate::crypto::KeySpecError),
    #[error(transparent)]
    RotateKeys(#[from] rotate_keys::RotateError),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[cfg(feature = "dev")]
    #[error(transparent)]
    Dev(#[from] dev::DevError),
    #[cfg(feature = "dev")]
    #[error(transparent)]
    AppleSim(#[from] apple_sim::AppleSimError),
}
