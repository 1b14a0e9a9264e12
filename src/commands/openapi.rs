//! `vpp-broker openapi`: print (or write) the OpenAPI document.

use std::path::PathBuf;

use clap::Args;

use crate::http::openapi;

#[derive(Debug, Args)]
pub struct OpenapiArgs {
    /// Write to this file instead of standard output (e.g. openapi/openapi.json).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

pub fn run(args: OpenapiArgs) -> Result<(), String> {
    let json = openapi::document_json();
    match args.output {
        Some(path) => {
            std::fs::write(&path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))
        }
        None => {
            print!("{json}");
            Ok(())
        }
    }
}
