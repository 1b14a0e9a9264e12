//! vpp-broker: a headless service that allocates, revokes and reconciles Apple Apps and Books
//! (VPP) licenses across prioritized token accounts, with its ledger in PostgreSQL.
//!
//! Layout (see README "Architecture"):
//! - [`cli`], [`commands`], [`config`]: the binary's subcommands and their settings;
//! - [`http`]: transport (server, middleware, problem+json, OpenAPI, ops routes);
//! - [`auth`]: JWT caller authentication, scopes and space grants;
//! - [`api`]: the `/v1` resources;
//! - [`ledger`]: diesel models and queries; [`db`]: pool, migrations, schema;
//! - [`telemetry`]: logs and metrics; [`local_pg`]: finds or starts PostgreSQL for dev and tests.

pub mod api;
pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod db;
pub mod http;
pub mod ledger;
pub mod local_pg;
pub mod telemetry;
