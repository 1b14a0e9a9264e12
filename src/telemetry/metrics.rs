//! Prometheus metrics: one process-wide recorder, rendered by `GET /metrics`.
//!
//! Names: `http_requests_total` and `http_request_duration_seconds` (labels `method`, `route`,
//! `status`), `db_pool_connections` (label `state`: `size`, `available`, `waiting`, `max`),
//! `license_usage_read_failures_total`; the license usage gauges per space are rendered at
//! scrape time by [`render_gauge`] (see `http::ops`).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus handle; installs the recorder on first use.
#[expect(
    clippy::expect_used,
    reason = "set_buckets_for_metric fails only on an empty bucket list; LATENCY_BUCKETS is a non-empty constant"
)]
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)
            .expect("static bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed in tests that embed the library; then
        // this handle renders nothing but still works.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Records one finished HTTP request.
pub fn record_request(method: &str, route: &str, status: u16, seconds: f64) {
    let labels = [
        ("method", method.to_owned()),
        ("route", route.to_owned()),
        ("status", status.to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(seconds);
}

/// Publishes the state of a database pool.
pub fn record_pool(status: deadpool::Status) {
    metrics::gauge!("db_pool_connections", "state" => "size").set(status.size as f64);
    metrics::gauge!("db_pool_connections", "state" => "available").set(status.available as f64);
    metrics::gauge!("db_pool_connections", "state" => "waiting").set(status.waiting as f64);
    metrics::gauge!("db_pool_connections", "state" => "max").set(status.max_size as f64);
}

/// Counts a scrape whose license usage gauges could not be read from the ledger.
pub fn record_usage_read_failure() {
    metrics::counter!("license_usage_read_failures_total").increment(1);
}

/// One gauge family in the text exposition format, a sample per `(label value, value)` under the
/// label `label`: for figures computed at scrape time, which the recorder would keep after their
/// subject is gone (a deleted space's series would linger until the process restarts).
pub fn render_gauge(name: &str, help: &str, label: &str, samples: &[(&str, i64)]) -> String {
    let mut out = format!("# HELP {name} {help}\n# TYPE {name} gauge\n");
    for (value_of_label, value) in samples {
        out.push_str(&format!(
            "{name}{{{label}=\"{}\"}} {value}\n",
            escape_label(value_of_label)
        ));
    }
    out
}

/// A label value escaped as the text format wants (backslash, double quote, line feed).
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_render_in_the_text_format_with_escaped_labels() {
        let text = render_gauge(
            "licenses_held",
            "Licenses held.",
            "space",
            &[("acme", 3), ("we\"ird\\\n", 0)],
        );
        assert_eq!(
            text,
            "# HELP licenses_held Licenses held.\n# TYPE licenses_held gauge\n\
             licenses_held{space=\"acme\"} 3\nlicenses_held{space=\"we\\\"ird\\\\\\n\"} 0\n"
        );
    }
}
