//! Operational routes (no authentication): `/livez`, `/readyz`, `/metrics`, `/openapi.json`,
//! and the docs UI at `/docs` (Swagger UI, embedded in the binary so it works offline).
//!
//! `/metrics` is served on the API port for simplicity; the Helm chart's Ingress exposes only
//! `/v1` and Apple's notification path, so metrics stay inside the cluster.

use std::time::Duration;

use actix_web::{HttpResponse, get, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::problem::{ApiError, Problem, types};
use crate::db::migrate;
use crate::ledger::usage_gauges::{self, SpaceUsage};
use crate::telemetry::metrics;

/// Liveness/readiness answer.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` (live) or `ready`.
    pub status: String,
}

/// Routes outside the OpenAPI document, for the 404/405 table.
pub const UNDOCUMENTED: &[(&str, &str)] = &[
    ("/openapi.json", "GET"),
    ("/docs", "GET"),
    ("/docs/{_:.*}", "GET"),
];

/// Liveness: the process is up. No I/O.
///
/// Answers 200 as long as the process runs; it does no I/O, so a slow database never restarts the
/// pod.
#[utoipa::path(
    tag = "operations",
    operation_id = "get_livez",
    security(()),
    responses((status = 200, description = "The process is alive", body = Health))
)]
#[get("/livez")]
pub async fn livez() -> web::Json<Health> {
    web::Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: the ledger database answers and every migration is applied.
///
/// 503 while the database does not answer or a migration is missing, so traffic goes to ready
/// replicas only.
#[utoipa::path(
    tag = "operations",
    operation_id = "get_readyz",
    security(()),
    responses(
        (status = 200, description = "Ready to serve", body = Health),
        (status = 503, description = "Database unreachable or migrations pending", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> Result<web::Json<Health>, ApiError> {
    let check = async {
        let mut conn = state.pool.get().await.map_err(|e| e.to_string())?;
        migrate::is_up_to_date(&mut conn)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(Duration::from_secs(3), check).await {
        Ok(Ok(true)) => Ok(web::Json(Health {
            status: "ready".into(),
        })),
        Ok(Ok(false)) => Err(ApiError::new(
            &types::UNAVAILABLE,
            "database migrations are pending; run `vpp-broker migrate`",
        )),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(ApiError::new(
                &types::UNAVAILABLE,
                "the ledger database is unreachable",
            ))
        }
        Err(_) => Err(ApiError::new(
            &types::UNAVAILABLE,
            "the ledger database did not answer within 3 s",
        )),
    }
}

/// Prometheus metrics in the text exposition format.
///
/// HTTP requests by route and status, database pool, Apple batches, and license usage per space
/// (`licenses_owned`, `licenses_held`, `licenses_assigned_elsewhere`, `licenses_available`,
/// label `space`). No authentication: expose it only inside the cluster.
#[utoipa::path(
    tag = "operations",
    operation_id = "get_metrics",
    security(()),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"))
)]
#[get("/metrics")]
pub async fn metrics_text(state: web::Data<AppState>) -> HttpResponse {
    metrics::record_pool(state.pool.status());
    let handle = metrics::handle();
    handle.run_upkeep();
    let mut body = handle.render();
    body.push_str(&license_usage(&state).await);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body)
}

/// The license usage gauges, read from the ledger at scrape time (one aggregate query over the
/// `assets` rows, bounded by [`USAGE_READ_TIMEOUT`]).
///
/// Decisions:
/// - Label `space` only, so the series number 4 × spaces. A per-asset (or per-account) label
///   would multiply that by every asset of every account: at 50 accounts × 1,000 assets per space
///   that is 50,000 series per gauge per space, more than a Prometheus server should take from
///   one target, and each scrape would have to ship them all. Per-asset figures are read from the
///   assets list instead (`GET /v1/spaces/{space}/assets`).
/// - Computed when scraped, not on a timer: no background task, the figures are as fresh as
///   the scrape, and a deleted space's series vanish at the next scrape (the recorder would keep
///   them). Each replica reports the same figures (they are the ledger's, not the replica's):
///   aggregate with `max by (space)`, not `sum`.
/// - When the ledger does not answer in time the gauges are left out of that scrape (the other
///   metrics still render) and `license_usage_read_failures_total` counts it.
async fn license_usage(state: &AppState) -> String {
    let read = async {
        let mut conn = state.pool.get().await.map_err(|e| e.to_string())?;
        usage_gauges::per_space(&mut conn)
            .await
            .map_err(|e| e.to_string())
    };
    let rows = match tokio::time::timeout(USAGE_READ_TIMEOUT, read).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => return usage_unavailable(&e),
        Err(_) => return usage_unavailable("timed out"),
    };
    let family = |pick: fn(&SpaceUsage) -> i64| -> Vec<(&str, i64)> {
        rows.iter().map(|r| (r.space.as_str(), pick(r))).collect()
    };
    [
        (
            "licenses_owned",
            "Licenses the space's accounts own at Apple (Apple's total as last synced).",
            family(|r| r.owned),
        ),
        (
            "licenses_held",
            "Licenses this service's ledger holds (pending, associating, active assignments).",
            family(|r| r.held),
        ),
        (
            "licenses_assigned_elsewhere",
            "Licenses assigned at Apple that this service did not assign.",
            family(|r| r.assigned_elsewhere),
        ),
        (
            "licenses_available",
            "Licenses neither held nor assigned elsewhere (owned - assigned elsewhere - held, per asset; reservations and accounts allocation skips are not subtracted: GET /assets has available_now).",
            family(|r| r.available),
        ),
    ]
    .iter()
    .map(|(name, help, samples)| metrics::render_gauge(name, help, "space", samples))
    .collect()
}

/// How long a scrape waits for the license usage figures.
pub const USAGE_READ_TIMEOUT: Duration = Duration::from_secs(2);

fn usage_unavailable(why: &str) -> String {
    tracing::warn!(error = %why, "license usage gauges not read");
    metrics::record_usage_read_failure();
    String::new()
}

/// `/docs` without the slash: the UI's relative asset paths need `/docs/`.
#[get("/docs")]
pub async fn docs_redirect() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((actix_web::http::header::LOCATION, "/docs/"))
        .finish()
}

/// The OpenAPI document (precomputed at start).
pub struct OpenApiJson(pub String);

#[get("/openapi.json")]
pub async fn openapi_json(doc: web::Data<OpenApiJson>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.0.clone())
}
