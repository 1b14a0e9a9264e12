//! vpp-broker: a headless service that allocates, revokes and reconciles Apple Apps and Books
//! (VPP) licenses across prioritized token accounts, with its ledger in PostgreSQL.
//!
//! Doc comments cite the product's rules by id (A1, T7, …): `docs/rules.md` defines them.
//!
//! Layout (see README "Architecture"):
//! - [`cli`], [`commands`], [`config`]: the binary's subcommands and their settings;
//! - [`http`]: transport (server, middleware, problem+json, OpenAPI, ops routes);
//! - [`auth`]: JWT caller authentication, scopes and space grants;
//! - [`api`]: the `/v1` resources;
//! - [`accounts`]: token accounts (attach, status machine, ownership, priorities, deletion);
//! - [`apple`]: the client of Apple's license API; `apple_sim`: a simulator of it (feature
//!   `dev`);
//! - [`engine`]: allocation and revocation decisions, answered from the ledger;
//! - [`dispatch`]: background workers that batch Apple calls and follow Apple's events;
//! - [`settle`]: settling Apple's results (event polls and notifications): final states,
//!   re-allocation, finishing deletions;
//! - [`waiters`]: bounded waits for an assignment's final state;
//! - [`service`]: the running service (pool, state, HTTP server, dispatcher) in one place;
//! - [`crypto`]: sTokens encrypted at rest; [`state`]: what handlers and workers share;
//! - [`ledger`]: diesel models and queries; [`db`]: pool, migrations, schema;
//! - [`telemetry`]: logs and metrics; `local_pg`: finds or starts PostgreSQL for dev and tests
//!   (feature `dev`).
//!
//! The `dev` cargo feature (off by default, on in tests, examples and benchmarks) adds the
//! development fixtures: the Apple simulator, the local PostgreSQL finder and the `dev` and
//! `apple-sim` subcommands. A production build ships neither the simulator's unauthenticated
//! admin API nor code that starts a database.

pub mod accounts;
pub mod api;
pub mod apple;
#[cfg(feature = "dev")]
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
#[cfg(feature = "dev")]
pub mod local_pg;
pub mod policies;
pub mod service;
pub mod settle;
pub mod spaces;
pub mod state;
pub mod telemetry;
pub mod waiters;
