//! The `vpp-broker` command line: one binary, one subcommand per role.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands;
use crate::config::{LogArgs, LogFormat};
use crate::telemetry::logging;

#[derive(Debug, Parser)]
#[command(
    name = "vpp-broker",
    version,
    about = "Allocates, revokes and reconciles Apple Apps and Books (VPP) licenses across prioritized token accounts",
    long_about = None,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API and the background workers.
    Serve(Box<commands::serve::ServeArgs>),
    /// Apply pending database migrations (safe to run from several replicas at once).
    Migrate(commands::migrate::MigrateArgs),
    /// Print the OpenAPI document (the committed openapi/openapi.json is this output).
    Openapi(commands::openapi::OpenapiArgs),
    /// Start a complete local service with no set-up: PostgreSQL (found or started), migrations,
    /// a demo space and a development JWT.
    #[cfg(feature = "dev")]
    Dev(commands::dev::DevArgs),
    /// Re-encrypt every stored sToken with the first (active) key of VPP_TOKEN_KEYS.
    RotateKeys(commands::rotate_keys::RotateKeysArgs),
    /// Run the Apple license API simulator (fake Apple for tests and the quick start).
    #[cfg(feature = "dev")]
    AppleSim(commands::apple_sim::AppleSimArgs),
}

impl Cli {
    /// `dev` and `apple-sim` run in a terminal: they log text lines unless `VPP_LOG_FORMAT` says
    /// otherwise.
    fn wants_text_logs(&self) -> bool {
        #[cfg(feature = "dev")]
        if matches!(self.command, Command::Dev(_) | Command::AppleSim(_)) {
            return std::env::var_os("VPP_LOG_FORMAT").is_none();
        }
        false
    }
}

/// Parses the command line, sets up logging and runs the subcommand on a tokio runtime.
pub fn main() -> ExitCode {
    let mut cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let hint = env_hint(&e);
            let _ = e.print();
            if let Some(hint) = hint {
                eprintln!("note: {hint}");
            }
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    if cli.wants_text_logs() {
        cli.log.log_format = LogFormat::Text;
    }
    if let Err(e) = logging::init(&cli.log) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => commands::serve::run(*args).await,
            Command::Migrate(args) => commands::migrate::run(args).await,
            Command::Openapi(args) => commands::openapi::run(args),
            #[cfg(feature = "dev")]
            Command::Dev(args) => commands::dev::run(args).await,
            Command::RotateKeys(args) => commands::rotate_keys::run(args).await,
            #[cfg(feature = "dev")]
            Command::AppleSim(args) => commands::apple_sim::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "vpp-broker stopped");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// For a bad option value, names the environment variable it may have come from.
fn env_hint(err: &clap::Error) -> Option<String> {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue};
    let ContextValue::String(arg) = err.get(ContextKind::InvalidArg)? else {
        return None;
    };
    let long = arg.split_whitespace().next()?.trim_start_matches("--");
    let root = Cli::command();
    let commands = std::iter::once(&root).chain(root.get_subcommands());
    for command in commands {
        for a in command.get_arguments() {
            if a.get_long() == Some(long)
                && let Some(env) = a.get_env()
            {
                return Some(format!(
                    "--{long} is also read from the environment variable {}",
                    env.to_string_lossy()
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
