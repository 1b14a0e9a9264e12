//! Integration tests: real PostgreSQL (one database per test, cloned from a migrated template),
//! the HTTP server on a real port, JWTs really signed and verified.
//! A test that proves a rule of `docs/rules.md` starts with its id (`a9_…`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is how a test (or its fixture) fails"
)]

mod accounts;
mod activity;
mod allocation;
mod assets;
mod auth;
mod bulk;
mod chaos;
mod cli;
mod dead_letters;
mod docs;
mod drift;
mod events;
mod exports;
mod history;
mod hostile_input;
mod layering;
mod lifecycle;
mod migrations;
mod multiprocess;
mod notices;
mod notification_input;
mod notifications;
mod openapi;
mod ops;
mod outages;
mod pace;
mod plans;
mod policies;
mod problems;
mod reconcile;
mod revocations;
mod security_headers;
mod spaces;
mod subjects;
mod support;
mod sync;
mod usage_gauges;
mod waitlist;
mod webhooks;
