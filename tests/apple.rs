//! Contract tests of the Apple client against the in-process Apple simulator, over real HTTP
//! (no mocks): every endpoint, every error class, paging, events, notifications, users, secrets.
//!
//! Each test starts its own simulator on 127.0.0.1:0, so tests run in parallel.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is how a test (or its fixture) fails"
)]

mod apple {
    /// The `eventually` helper the integration tests use too.
    #[path = "../it/support/eventually.rs"]
    #[allow(dead_code)]
    pub mod eventually;
    pub mod support;

    mod config;
    mod drift;
    mod errors;
    mod events;
    mod notifications;
    mod paging;
    mod secrets;
    mod simulator;
    mod users;
}
