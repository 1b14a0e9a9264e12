//! The outermost middleware: request id, tracing span, access log, metrics, panic guard and the
//! problem+json safety net.
//!
//! For each request it
//! 1. takes a sane incoming `x-request-id` or makes one (UUIDv7), echoes it in the response;
//! 2. runs the rest of the stack inside a `request` span (so every log line has the id) and a
//!    task-local [`super::request::RequestInfo`] (so problem bodies carry it);
//! 3. turns a panic into a generic 500 problem (the panic is logged once, the client never sees
//!    a dropped connection);
//! 4. turns any error response that is not already `application/problem+json` into one;
//! 5. refuses a URL with a percent-encoded NUL (400 `invalid-parameter`; PostgreSQL stores no
//!    NUL in text, so no handler has to guard against it);
//! 6. adds the [`security_headers`] (`nosniff`, `no-store`, the docs' CSP) to every answer;
//! 7. records `http_requests_total` / `http_request_duration_seconds` by route pattern and logs
//!    one access line: method, route, status, latency. Headers are never logged, so
//!    `Authorization` never reaches the logs.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpResponse, ResponseError};
use futures_util::FutureExt;
use tracing::Instrument;

use super::problem::{self, ApiError};
use super::request::{REQUEST, REQUEST_ID_HEADER, RequestInfo};
use super::security_headers;
use crate::telemetry::metrics;

fn incoming_request_id(req: &ServiceRequest) -> Option<String> {
    let value = req.headers().get(REQUEST_ID_HEADER)?.to_str().ok()?;
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then(|| value.to_owned())
}

enum Outcome {
    Response(ServiceResponse<BoxBody>),
    Error(HttpResponse),
    Panic(HttpResponse),
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let started = Instant::now();
    let request_id = incoming_request_id(&req).unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    // A metrics label: arbitrary methods would make unbounded series.
    let method = match req.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => m.to_owned(),
        _ => "OTHER".to_owned(),
    };
    let path = req.path().to_owned();
    let span =
        tracing::info_span!("request", request_id = %request_id, method = %method, path = %path);
    let info = RequestInfo {
        request_id: request_id.clone(),
        path: path.clone(),
    };

    let outcome = REQUEST
        .scope(info, async move {
            if has_nul(&req) {
                // PostgreSQL refuses NUL in text: refused here, for every path and query value.
                return Outcome::Error(
                    ApiError::new(
                        &problem::types::INVALID_PARAMETER,
                        "the URL contains a NUL character (%00)",
                    )
                    .error_response(),
                );
            }
            match AssertUnwindSafe(next.call(req)).catch_unwind().await {
                Ok(Ok(res)) => {
                    let res = res.map_into_boxed_body();
                    if needs_problem_body(&res) {
                        let status = res.status();
                        let kind = problem::for_status(status);
                        let fixed =
                            ApiError::new(kind, status.canonical_reason().unwrap_or("error"))
                                .error_response();
                        let mut fixed = fixed;
                        *fixed.status_mut() = status;
                        copy_header(res.headers(), fixed.headers_mut(), header::ALLOW);
                        copy_header(res.headers(), fixed.headers_mut(), header::WWW_AUTHENTICATE);
                        copy_header(res.headers(), fixed.headers_mut(), header::RETRY_AFTER);
                        let (req, _) = res.into_parts();
                        Outcome::Response(ServiceResponse::new(req, fixed))
                    } else {
                        Outcome::Response(res)
                    }
                }
                Ok(Err(err)) => Outcome::Error(err.error_response()),
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic payload".into());
                    tracing::error!(panic = %message, "handler panicked");
                    Outcome::Panic(ApiError::bare(&problem::types::INTERNAL).error_response())
                }
            }
        })
        .instrument(span.clone())
        .await;
    if !matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS") {
        // The handler has finished, its transactions committed: wake the event sequencer
        // (docs/events.md). A request that wrote nothing costs it one empty round.
        crate::events::wake::activity_written();
    }

    let request_id_value = HeaderValue::from_str(&request_id).ok();
    let request_id_name = header::HeaderName::from_static(REQUEST_ID_HEADER);
    // The request cannot be cloned while the inner service runs (actix needs it unshared for
    // routing), so errors and panics are answered through `InternalError::from_response`.
    let (result, status, route) = match outcome {
        Outcome::Response(mut res) => {
            if let Some(v) = request_id_value {
                res.headers_mut().insert(request_id_name, v);
            }
            security_headers::apply(&path, res.headers_mut());
            let status = res.status().as_u16();
            let route = res
                .request()
                .match_pattern()
                .unwrap_or_else(|| "unmatched".to_owned());
            (Ok(res), status, route)
        }
        Outcome::Error(mut resp) | Outcome::Panic(mut resp) => {
            if let Some(v) = request_id_value {
                resp.headers_mut().insert(request_id_name, v);
            }
            security_headers::apply(&path, resp.headers_mut());
            let status = resp.status().as_u16();
            let err = actix_web::error::InternalError::from_response("request failed", resp);
            (Err(Error::from(err)), status, "unmatched".to_owned())
        }
    };
    let elapsed = started.elapsed();
    metrics::record_request(&method, &route, status, elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            status,
            route = %route,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request finished"
        );
    });
    result
}

/// Whether the path or query carries a percent-encoded NUL.
fn has_nul(req: &ServiceRequest) -> bool {
    let uri = req.uri();
    let has = |s: &str| s.as_bytes().windows(3).any(|w| w == b"%00");
    has(uri.path()) || uri.query().is_some_and(has)
}

fn needs_problem_body(res: &ServiceResponse<BoxBody>) -> bool {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return false;
    }
    !res.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/problem+json"))
}

fn copy_header(from: &header::HeaderMap, to: &mut header::HeaderMap, name: header::HeaderName) {
    if let Some(value) = from.get(&name) {
        to.insert(name, value.clone());
    }
}
