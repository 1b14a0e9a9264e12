//! Test harness: real PostgreSQL (a database per test), the server on a real port, real JWTs.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

pub mod app;
pub mod db;
pub mod keys;
pub mod logs;
pub mod procs;
pub mod sim;

pub use app::{TestApp, admin_token, expect_problem, token};
