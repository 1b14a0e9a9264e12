//! `vpp-broker apple-sim`: the Apple license API simulator as a process (see
//! [`crate::apple_sim`] and docs/apple.md).
//!
//! Prints the base URL and the sToken of every seeded location on stdout. Those tokens are fake
//! (minted by the simulator), which is why printing them is fine here and nowhere else.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Args;

use super::CommandError;
use crate::apple_sim::{SeedFile, SimConfig, SimError, SimSettings, Simulator};

#[derive(Debug, Args)]
pub struct AppleSimArgs {
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "VPP_APPLE_SIM_PORT", default_value_t = 9090)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "VPP_APPLE_SIM_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// JSON seed file (locations, tokens, assets, users, assignments); see
    /// examples/apple-sim-seed.json.
    #[arg(long, env = "VPP_APPLE_SIM_SEED")]
    pub seed: Option<PathBuf>,
    /// Records per page of /assets, /assignments and /users.
    #[arg(long, env = "VPP_APPLE_SIM_PAGE_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub page_size: u32,
    /// Milliseconds from accepting an associate/revoke/users request to completing it.
    #[arg(long, env = "VPP_APPLE_SIM_EVENT_DELAY_MS", default_value_t = 100)]
    pub event_delay_ms: u64,
    /// HTTP worker threads.
    #[arg(long, env = "VPP_APPLE_SIM_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,
}

/// Why the simulator process stopped.
#[derive(Debug, thiserror::Error)]
pub enum AppleSimError {
    #[error("cannot read the seed file {}: {source}", path.display())]
    ReadSeed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the seed file {} is invalid: {source}", path.display())]
    InvalidSeed {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot start the Apple simulator: {0}")]
    Start(#[source] SimError),
    #[error("the Apple simulator failed: {0}")]
    Failed(#[source] std::io::Error),
}

pub async fn run(args: AppleSimArgs) -> Result<(), CommandError> {
    let seed = match &args.seed {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| AppleSimError::ReadSeed {
                path: path.clone(),
                source,
            })?;
            let file: SeedFile =
                serde_json::from_str(&text).map_err(|source| AppleSimError::InvalidSeed {
                    path: path.clone(),
                    source,
                })?;
            Some(file)
        }
        None => None,
    };
    let settings = SimSettings {
        page_size: args.page_size as usize,
        event_delay_ms: args.event_delay_ms,
        ..SimSettings::default()
    };
    let handle = Simulator::start(SimConfig {
        bind: SocketAddr::new(args.host, args.port),
        workers: args.workers as usize,
        settings,
        seed,
        handle_signals: true,
    })
    .await
    .map_err(AppleSimError::Start)?;

    println!();
    println!("Apple simulator (fake Apple license API v2), Ctrl-C stops it");
    println!("  client base URL: {}", handle.base_url());
    println!("  admin API:       {}", handle.admin_url());
    if handle.seeded().is_empty() {
        println!(
            "  no locations yet: POST {}/seed or --seed file.json",
            handle.admin_url()
        );
    }
    for location in handle.seeded() {
        println!("  location {} ({}), sToken:", location.u_id, location.name);
        println!("    {}", location.s_token);
    }
    println!();
    handle.wait().await.map_err(AppleSimError::Failed)?;
    Ok(())
}
