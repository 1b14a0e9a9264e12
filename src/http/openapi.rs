//! The OpenAPI 3.1 document: utoipa collects every operation from the same route registration
//! the server uses ([`crate::api::configure`]); [`finish`] then adds what every operation shares
//! (the bearer security scheme and the problem responses), so handlers declare only their own.
//!
//! Conventions: operation id = handler name (`verb_resource`), one tag per resource, explicit
//! `security` on every operation (scopes listed; `()` for the anonymous operational routes).

use actix_web::App;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi as _};
use utoipa_actix_web::AppExt;

use super::problem::{FieldError, Problem};

pub const BEARER: &str = "bearer";
pub const APPLE_NOTIFICATION: &str = "apple_notification";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "vpp-broker",
        description = "Allocates, revokes and reconciles Apple Apps and Books (VPP) licenses across \
            prioritized token accounts. Every /v1 operation needs a bearer JWT whose `scope` claim \
            holds the listed scope and whose `spaces` claim grants the space. Errors are RFC 9457 \
            `application/problem+json` documents with a stable `type`."
    ),
    servers((url = "/", description = "This server")),
    modifiers(&SecurityAddon),
    components(schemas(Problem, FieldError)),
    tags(
        (name = "spaces", description = "Isolated partitions of a deployment (tenants, sites, teams)"),
        (name = "accounts", description = "Token accounts: one Apple location (sToken) each, ordered by priority"),
        (name = "assignments", description = "Allocate and revoke licenses; the ledger of who holds what"),
        (name = "policies", description = "Distribution policies per asset: reserved, first-come-first-served, disallowed"),
        (name = "apple", description = "Endpoints Apple calls (notifications); not for MDM callers"),
        (name = "operations", description = "Health, readiness and metrics (no authentication)"),
    )
)]
pub struct BaseDoc;

struct SecurityAddon;

impl Modify for SecurityAddon {
    fn modify(&self, api: &mut OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "JWT with iss, aud, exp, nbf, sub, scope (space-separated) and spaces (array; \"*\" = all)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            APPLE_NOTIFICATION,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The notification auth token this service gave Apple for the account",
                    ))
                    .build(),
            ),
        );
    }
}

/// Shared responses: (status, component name, description).
const SHARED: &[(&str, &str, &str)] = &[
    (
        "400",
        "BadRequest",
        "Malformed JSON, or a path or query parameter of the wrong shape",
    ),
    (
        "401",
        "Unauthorized",
        "Missing, malformed, expired or otherwise unacceptable bearer token",
    ),
    (
        "403",
        "Forbidden",
        "The token lacks the scope this operation needs",
    ),
    (
        "404",
        "NotFound",
        "No such resource in a space the caller may see",
    ),
    (
        "409",
        "Conflict",
        "The request conflicts with the current state",
    ),
    (
        "412",
        "PreconditionFailed",
        "If-Match does not match the current ETag",
    ),
    (
        "413",
        "PayloadTooLarge",
        "The body exceeds the configured limit",
    ),
    (
        "415",
        "UnsupportedMediaType",
        "The body is not application/json",
    ),
    (
        "422",
        "UnprocessableContent",
        "The body does not match the schema or a value is invalid",
    ),
    (
        "500",
        "InternalError",
        "Unexpected failure; the log has details under the request id",
    ),
    (
        "503",
        "Unavailable",
        "The ledger database or the signing keys are unavailable; retry later",
    ),
];

fn problem_ref(name: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::Ref(Ref::from_response_name(name))
}

fn operations_mut(item: &mut utoipa::openapi::PathItem) -> Vec<&mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.options.as_mut(),
        item.head.as_mut(),
        item.patch.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Adds the shared problem responses to every authenticated operation.
pub fn finish(api: &mut OpenApi) {
    let components = api.components.get_or_insert_with(Default::default);
    for (_, name, description) in SHARED {
        components.responses.insert(
            (*name).to_owned(),
            RefOr::T(
                ResponseBuilder::new()
                    .description(*description)
                    .content(
                        "application/problem+json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("Problem")))
                            .build(),
                    )
                    .build(),
            ),
        );
    }
    for (path, item) in api.paths.paths.iter_mut() {
        let authenticated = path.starts_with("/v1/");
        for op in operations_mut(item) {
            let has_body = op.request_body.is_some();
            let declared: Vec<String> = op.responses.responses.keys().cloned().collect();
            for (status, name, _) in SHARED {
                let wanted = match *status {
                    "400" | "500" => true,
                    "401" | "403" | "404" | "503" => authenticated,
                    "413" | "415" | "422" => has_body,
                    // 409 and 412 only where the handler declares them.
                    _ => false,
                };
                let declared_here = declared.iter().any(|s| s == status);
                if wanted || declared_here {
                    op.responses
                        .responses
                        .insert((*status).to_owned(), problem_ref(name));
                }
            }
        }
    }
}

/// The whole document, as served at `/openapi.json` and committed at `openapi/openapi.json`.
pub fn document() -> OpenApi {
    let (_, mut api) = App::new()
        .into_utoipa_app()
        .openapi(BaseDoc::openapi())
        .configure(crate::api::configure)
        .split_for_parts();
    finish(&mut api);
    api
}

/// The document as sorted, pretty JSON with a trailing newline (the committed file's form).
pub fn document_json() -> String {
    let value = serde_json::to_value(document()).unwrap_or_default();
    // serde_json's default map is a BTreeMap, so converting to a Value sorts every object.
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}
