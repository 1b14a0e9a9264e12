//! `vpp-broker openapi`: print (or write) the OpenAPI document.

use std::path::PathBuf;

use clap::Args;

use super::CommandError;
use crate::http::openapi;

#[derive(Debug, Args)]
pub struct OpenapiArgs {
    /// Write to this file instead of standard output (e.g. openapi/openapi.json).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

pub fn run(args: OpenapiArgs) -> Result<(), CommandError> {
    let json = openapi::document_json(crate::api::configure);
    match args.output {
        Some(path) => {
            std::fs::write(&path, json).map_err(|source| CommandError::Write { path, source })
        }
        None => {
            print!("{json}");
            Ok(())
        }
    }
}
