//! vpp-broker: a headless service that allocates, revokes and reconciles Apple Apps and Books
//! (VPP) licenses across prioritized token accounts, with its ledger in PostgreSQL.
//!
//! Layout (see README "Architecture"):
//! - [`cli`], [`commands`], [`config`]: the binary's subcommands and their settings;
//! - [`http`]: transport (server, middleware, problem+json, OpenAPI, ops routes);
//! - [`auth`]: JWT caller authentication, scopes and space grants;
//! - [`api`]: the `/v1` resources;
//! - [`accounts`]: token accounts (attach, status machine, ownership, priorities, deletion);
//! - [`apple`]: the client of Apple's license API; [`apple_sim`]: a simulator of it;
//! - [`engine`]: allocation and revocation decisions, answered from the ledger;
//! - [`dispatch`]: background workers that batch Apple calls and follow Apple's events;
//! - [`waiters`]: bounded waits for an assignment's final state;
//! - [`crypto`]: sTokens encrypted at rest; [`state`]: what handlers and workers share;
//! - [`ledger`]: diesel models and queries; [`db`]: pool, migrations, schema;
//! - [`telemetry`]: logs and metrics; [`local_pg`]: finds or starts PostgreSQL for dev and tests.

pub mod accounts;
pub mod api;
pub mod apple;
pub mod apple_sim;
pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod db;
pub mod dispatch;
pub mod domain;
pub mod engine;
pub mod http;
pub mod ledger;
pub mod local_pg;
pub mod policies;
pub mod spaces;
pub mod state;
pub mod telemetry;
pub mod waiters;
