//! Structured logs (tracing-subscriber) and Prometheus metrics.
pub mod logging;
pub mod metrics;
