//! Assembles the actix application and runs the HTTP server.
//!
//! Middleware order, outermost first: [`context::middleware`] (request id, span, panic guard,
//! problem safety net, metrics, access log) → routing. Everything under `/v1` authenticates
//! through the `Caller` extractor rather than a middleware, so each handler states its scope.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use utoipa::OpenApi as _;
use utoipa_actix_web::AppExt;
use utoipa_swagger_ui::{Config, SwaggerUi};

use super::body_shape::RequestSchemas;
use super::extract::{self, BodyLimit};
use super::fallback::{self, RouteTable};
use super::openapi::{self, BaseDoc};
use super::ops::{self, OpenApiJson};
use super::{AppState, context};
use crate::auth::jwt::Authenticator;
use crate::config::HttpArgs;

/// Everything the server needs besides its configuration.
pub struct Parts {
    pub state: Arc<AppState>,
    pub authenticator: Arc<Authenticator>,
}

/// Starts the server on `listener`. With `handle_signals`, SIGTERM/SIGINT stop it gracefully
/// (in-flight requests get `shutdown_timeout_secs`); tests pass `false` and stop it themselves.
pub fn start(
    parts: Parts,
    routes: openapi::Routes,
    http: &HttpArgs,
    listener: TcpListener,
    handle_signals: bool,
) -> std::io::Result<Server> {
    // Install the metrics recorder before the first request is recorded.
    crate::telemetry::metrics::handle();
    let doc = openapi::document(routes);
    let table = web::Data::new(RouteTable::new(&doc, ops::UNDOCUMENTED));
    let complete = openapi::document_value(routes);
    let doc_json = web::Data::new(OpenApiJson(openapi::json_text(&complete)));
    let schemas = web::Data::new(RequestSchemas(complete));
    let state = web::Data::from(parts.state);
    let authenticator = web::Data::from(parts.authenticator);
    let body_limit = BodyLimit(http.body_limit_bytes as usize);

    let mut server = HttpServer::new(move || {
        let (app, _) = App::new()
            .into_utoipa_app()
            .openapi(BaseDoc::openapi())
            .configure(routes)
            .split_for_parts();
        app.app_data(state.clone())
            .app_data(schemas.clone())
            .app_data(authenticator.clone())
            .app_data(table.clone())
            .app_data(doc_json.clone())
            .app_data(body_limit)
            .app_data(extract::path_config())
            .app_data(extract::query_config())
            .service(ops::openapi_json)
            .service(ops::docs_redirect)
            .service(
                // No validator badge: it is an image from validator.swagger.io, which the
                // docs' Content-Security-Policy does not allow (see `security_headers`).
                SwaggerUi::new("/docs/{_:.*}")
                    .config(Config::from("/openapi.json").validator_url("none")),
            )
            .default_service(web::to(fallback::not_routed))
            .wrap(from_fn(context::middleware))
    })
    .shutdown_timeout(http.shutdown_timeout_secs)
    .client_request_timeout(Duration::from_secs(30))
    .listen(listener)?;
    if http.http_workers > 0 {
        server = server.workers(http.http_workers);
    }
    if !handle_signals {
        server = server.disable_signals();
    }
    Ok(server.run())
}
