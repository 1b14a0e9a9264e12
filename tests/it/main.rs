//! Integration tests: real PostgreSQL (one database per test, cloned from a migrated template),
//! the HTTP server on a real port, JWTs really signed and verified.

mod accounts;
mod allocation;
mod auth;
mod cli;
mod history;
mod migrations;
mod multiprocess;
mod notifications;
mod openapi;
mod ops;
mod policies;
mod problems;
mod revocations;
mod spaces;
mod support;
