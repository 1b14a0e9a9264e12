//! vpp-broker: a headless service that allocates, revokes and reconciles Apple Apps and Books
//! (VPP) licenses across prioritized token accounts, with its ledger in PostgreSQL.
//!
//! Doc comments cite the product's rules by id (A1, T7, …): `docs/rules.md` defines them.
//!
//! Layout (README "Architecture"); imports run one way, top to bottom, and
//! `tests/it/layering.rs` checks it:
//! - entry: [`cli`], [`commands`], [`service`] (the running service assembled once);
//! - transport: [`http`] (server, middleware, problem+json, OpenAPI, ops routes), [`auth`]
//!   (JWT callers, scopes, the space extractor), [`api`] (the `/v1` resources); and the worker
//!   loop [`dispatch`], which calls use cases as a handler does;
//! - use cases: [`engine`] (allocate, revoke), [`accounts`], [`policies`], [`spaces`],
//!   [`settle`] (Apple's results), [`lifecycle`] (the MDM's lifecycle events), [`bulk`] (bulk
//!   operations), [`events`] (the event feed's sequencer and reads), [`notices`] (the notifications),
//!   [`webhooks`], [`waiters`];
//! - below them: [`domain`] (vocabulary and rules, no I/O), the store [`ledger`] (every SQL
//!   statement) with [`db`] (pool, migrations, schema), and [`apple`] (Apple's API client);
//! - shared: the leaves [`config`], [`crypto`] (sTokens at rest) and [`telemetry`], and
//!   [`state`], the handles (pool, Apple client, cipher, identity, waiters, combiner) that
//!   handlers, workers and use cases receive;
//! - fixtures (feature `dev`): `apple_sim`, a simulator of Apple's API, and `local_pg`, which
//!   finds or starts PostgreSQL for `dev` and the tests.
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
pub mod bulk;
pub mod cli;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod db;
pub mod dispatch;
pub mod domain;
pub mod engine;
pub mod events;
pub mod http;
pub mod ledger;
pub mod lifecycle;
#[cfg(feature = "dev")]
pub mod local_pg;
pub mod notices;
pub mod plans;
pub mod policies;
pub mod reconcile;
pub mod service;
pub mod settle;
pub mod spaces;
pub mod state;
pub mod sync;
pub mod telemetry;
pub mod waiters;
pub mod webhooks;
