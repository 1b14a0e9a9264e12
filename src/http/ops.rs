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
/// HTTP requests by route and status, database pool, Apple batches. No authentication: expose it
/// only inside the cluster.
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
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render())
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
