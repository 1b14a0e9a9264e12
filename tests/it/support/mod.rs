//! Test harness: real PostgreSQL (a database per test), the server on a real port, real JWTs.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

pub mod app;
pub mod client;
pub mod db;
pub mod eventually;
pub mod fixtures;
pub mod keys;
pub mod logs;
pub mod procs;
pub mod sim;

pub use app::{TestApp, admin_token, expect_problem, token};
pub use client::{Allocated, Client, read};
pub use eventually::{eventually, eventually_within};
