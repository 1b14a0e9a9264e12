//! The OpenAPI 3.1 document: utoipa collects every operation from the same route registration
//! the server uses ([`crate::api::configure`]); [`document_json`] then completes it with what
//! every operation shares, in one place instead of 28 annotations:
//!
//! - `security`: an OAuth 2.0 client-credentials scheme declaring the four scopes (what the
//!   JWT's `scope` claim must hold), so every operation's requirement is checkable by tools;
//! - `problems`: typed RFC 9457 problems (`ProblemType` enum of every `type` URI, and their own
//!   schemas for the problems that carry members) on every error response, keeping each
//!   operation's own description of its errors;
//! - `headers`: the headers the server really sends (`x-request-id`, `ETag`, `Location`,
//!   `Idempotent-Replayed`, `Retry-After`, `WWW-Authenticate`) and the request headers it reads;
//! - `parameters`: the path parameters' formats (space slug, UUIDs, adam id, pricing);
//! - `webhooks`: the OpenAPI 3.1 `webhooks` section, one entry per event type a webhook
//!   endpoint receives (utoipa 5 cannot declare it).
//!
//! Conventions: operation id = handler name (`verb_resource`), one tag per resource, explicit
//! `security` on every operation (scopes listed; none for the anonymous operational routes).
//! The document is tested from outside: `scripts/contract/` lints it (redocly, spectral) and runs
//! generated Python and TypeScript clients against a real server.

mod headers;
mod parameters;
mod problems;
mod security;
mod webhooks;

use actix_web::App;
use serde_json::{Map, Value};
use utoipa::OpenApi as _;
use utoipa::openapi::OpenApi;
use utoipa_actix_web::AppExt;

use crate::domain::inventory::AssetSort;
use crate::domain::notices::NoticeStateFilter;
use crate::domain::validation::FieldError;

/// Name of the callers' security scheme.
pub const CALLERS: &str = "oauth2";
/// Name of the scheme of Apple's notifications.
pub const APPLE_NOTIFICATION: &str = "apple_notification";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "vpp-broker",
        description = "Allocates, revokes and reconciles Apple Apps and Books (VPP) licenses across \
            prioritized token accounts. Every /v1 operation needs a bearer JWT whose `scope` claim \
            holds the listed scope and whose `spaces` claim grants the space. Errors are RFC 9457 \
            `application/problem+json` documents with a stable `type`.",
        license(name = "MIT", identifier = "MIT"),
        contact(name = "vpp-broker maintainers")
    ),
    servers((url = "/", description = "This server")),
    components(schemas(FieldError, AssetSort, NoticeStateFilter)),
    tags(
        (name = "spaces", description = "Isolated partitions of a deployment (tenants, sites, teams)"),
        (name = "accounts", description = "Token accounts: one Apple location (sToken) each, ordered by priority"),
        (name = "assignments", description = "Allocate and revoke licenses; the ledger of who holds what"),
        (name = "assets", description = "The license inventory: Apple's counts and the ledger's per asset and account, usage, exhaustion forecast"),
        (name = "subjects", description = "Devices and users: the facts the space holds and the licenses each holds and held"),
        (name = "activity", description = "The activity log: every decision and state change, newest first"),
        (name = "events", description = "The event feed: each space's state changes in order (assignments allocated, active, failed, revoked; accounts' status; syncs, lifecycle events, bulk operations, plans; notifications raised and cleared), with a cursor, an optional long poll and 30 days' retention"),
        (name = "notifications", description = "Notifications: license usage crossing 50/70/80/90/100 %, assets exhausted and available again, exhaustion forecasts, token problems (expiring, expired, revoked, invalid, login required, not owned, throttled, not synced), each with the action to take; open ones, history, acknowledge"),
        (name = "drift", description = "The drift report: what the last sync found different between the ledger and Apple, with the action each difference suggests"),
        (name = "plans", description = "Adopt, Clean Up, Repair and Reconcile: planned (the dry run), then applied by id within the hour"),
        (name = "policies", description = "Distribution policies per asset: reserved, first-come-first-served, disallowed"),
        (name = "lifecycle", description = "Lifecycle events from other MDM components (devices retired, wiped, moved; users deleted; group changes; apps removed) and what each space does about them"),
        (name = "bulk", description = "Bulk operations: allocate or revoke assets for up to 100,000 subjects (listed, a group, an asset's holders) as one operation with progress, dry run and cancel"),
        (name = "webhooks", description = "Signed webhooks: endpoints that receive the space's events (Standard Webhooks signatures, retries, delivery log, redelivery); the payloads are in the document's `webhooks` section"),
        (name = "apple", description = "Endpoints Apple calls (notifications); not for MDM callers"),
        (name = "operations", description = "Health, readiness and metrics (no authentication)"),
    )
)]
pub struct BaseDoc;

/// The route registration a document is generated from (`api::configure`): the transport's
/// machinery takes it as a value, so it never names the resources.
pub type Routes = fn(&mut utoipa_actix_web::service_config::ServiceConfig);

/// The operations as utoipa collects them (used for the route table of metrics labels).
pub fn document(routes: Routes) -> OpenApi {
    let (_, api) = App::new()
        .into_utoipa_app()
        .openapi(BaseDoc::openapi())
        .configure(routes)
        .split_for_parts();
    api
}

/// The complete document (see the module doc), as a JSON value.
pub fn document_value(routes: Routes) -> Value {
    let mut doc = serde_json::to_value(document(routes)).unwrap_or_default();
    complete(&mut doc);
    doc
}

/// The document as sorted, pretty JSON with a trailing newline: what `/openapi.json` serves and
/// `openapi/openapi.json` commits.
pub fn document_json(routes: Routes) -> String {
    json_text(&document_value(routes))
}

/// A complete document ([`document_value`]) as sorted, pretty JSON with a trailing newline.
pub fn json_text(doc: &Value) -> String {
    // serde_json's default map is a BTreeMap, so every object comes out sorted.
    let mut text = serde_json::to_string_pretty(doc).unwrap_or_default();
    text.push('\n');
    text
}

fn complete(doc: &mut Value) {
    let Some(root) = doc.as_object_mut() else {
        return;
    };
    let components = object(root, "components");
    security::schemes(object(components, "securitySchemes"));
    problems::schemas(object(components, "schemas"));
    parameters::schemas(object(components, "schemas"));
    webhooks::section(root);
    let Some(paths) = root.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for op in item.values_mut() {
            let Some(op) = op.as_object_mut() else {
                continue;
            };
            let ctx = Operation::new(path, op);
            security::requirement(op);
            parameters::complete(op);
            problems::responses(&ctx, op);
            headers::complete(&ctx, op);
        }
    }
}

/// What the completion steps need to know about one operation.
pub(crate) struct Operation {
    pub id: String,
    /// Under `/v1/`: authenticated with a caller JWT.
    pub authenticated: bool,
    pub has_body: bool,
}

impl Operation {
    fn new(path: &str, op: &Map<String, Value>) -> Self {
        Operation {
            id: op
                .get("operationId")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            authenticated: path.starts_with("/v1/"),
            has_body: op.contains_key("requestBody"),
        }
    }
}

/// `map[key]` as an object, created when missing.
pub(crate) fn object<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = map
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}
