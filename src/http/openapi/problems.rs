//! Typed problems. Every error response is `application/problem+json` with a schema clients can
//! narrow on `type`: `ProblemType` enumerates every `type` URI of the catalogue
//! ([`crate::http::problem::types`]); the problems that carry members have their own schemas
//! (`ValidationProblem` with `errors`, `NoLicenseAvailableProblem` with `accounts`), offered
//! in a `oneOf` with `Problem` where they can occur (their `type` enums are disjoint). Each operation keeps the description of its
//! own errors; statuses it does not describe get the shared description below.

use serde_json::{Map, Value, json};

use super::Operation;
use crate::http::problem::{ProblemType, types};

/// Shared responses: status and description.
const SHARED: &[(&str, &str)] = &[
    (
        "400",
        "Malformed JSON, or a path or query parameter of the wrong shape (`malformed-json`, \
         `invalid-parameter`, `bad-request`)",
    ),
    (
        "401",
        "Missing, malformed, expired or otherwise unacceptable bearer token (`unauthorized`)",
    ),
    (
        "403",
        "The token lacks the scope this operation needs (`forbidden`)",
    ),
    (
        "404",
        "No such resource in a space the caller may see (`not-found`)",
    ),
    (
        "406",
        "The `Accept` header takes none of the operation's media types (`not-acceptable`; the \
         detail lists them)",
    ),
    ("409", "The request conflicts with the current state"),
    (
        "412",
        "If-Match does not match the current ETag (`precondition-failed`)",
    ),
    (
        "413",
        "The body exceeds the configured limit (`payload-too-large`)",
    ),
    (
        "415",
        "The body is not application/json (`unsupported-media-type`)",
    ),
    (
        "422",
        "The body does not match the schema (`invalid-body`) or a value is invalid \
         (`validation-failed`, with `errors` naming each field)",
    ),
    (
        "500",
        "Unexpected failure; the log has details under the request id (`internal`)",
    ),
    (
        "503",
        "The ledger database or the signing keys are unavailable; retry after `Retry-After` \
         seconds (`unavailable`)",
    ),
];

const VALIDATION: &[&ProblemType] = &[&types::INVALID_BODY, &types::VALIDATION_FAILED];

/// Problem types with a schema of their own (they carry members); `Problem` has the others, so
/// that a `type` names exactly one schema and clients narrow on it.
fn has_own_schema(kind: &ProblemType) -> bool {
    VALIDATION.contains(&kind) || *kind == types::NO_LICENSE_AVAILABLE
}

fn uris(kinds: &[&ProblemType]) -> Vec<Value> {
    kinds.iter().map(|k| json!(k.type_uri())).collect()
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The members every problem has.
fn base_properties(type_schema: Value) -> Map<String, Value> {
    let mut props = Map::new();
    props.insert("type".into(), type_schema);
    props.insert(
        "title".into(),
        json!({"type": "string", "description": "Short summary of the kind of failure."}),
    );
    props.insert(
        "status".into(),
        json!({"type": "integer", "format": "int32", "minimum": 400, "maximum": 599,
               "description": "HTTP status code."}),
    );
    props.insert(
        "detail".into(),
        json!({"type": "string", "description": "What went wrong with this request."}),
    );
    props.insert(
        "instance".into(),
        json!({"type": "string", "description": "The request path."}),
    );
    props.insert(
        "request_id".into(),
        json!({"type": "string", "description":
            "The request id (also in the `x-request-id` response header and every log line)."}),
    );
    props
}

fn problem_schema(
    description: &str,
    type_schema: Value,
    members: &[(&str, Value)],
    example: Value,
) -> Value {
    let mut props = base_properties(type_schema);
    let mut required = vec![json!("type"), json!("title"), json!("status")];
    for (name, schema) in members {
        props.insert((*name).to_owned(), schema.clone());
        required.push(json!(name));
    }
    json!({
        "type": "object",
        "description": description,
        "properties": props,
        "required": required,
        "additionalProperties": true,
        "examples": [example],
    })
}

pub(super) fn schemas(schemas: &mut Map<String, Value>) {
    let plain: Vec<&ProblemType> = types::ALL
        .iter()
        .copied()
        .filter(|k| !has_own_schema(k))
        .collect();
    let catalogue = plain
        .iter()
        .map(|k| format!("`{}` ({}): {}", k.slug, k.status, k.title))
        .collect::<Vec<_>>()
        .join("; ");
    schemas.insert(
        "ProblemType".into(),
        json!({
            "type": "string",
            "enum": uris(&plain),
            "description": format!(
                "Stable identifier of a kind of failure (`urn:vpp-broker:problem:<slug>`). \
                 {catalogue}. The problems that carry members have schemas of their own: \
                 `invalid-body` and `validation-failed` (422, `ValidationProblem`), \
                 `no-license-available` (409, `NoLicenseAvailableProblem`)."
            ),
        }),
    );
    schemas.insert(
        "Problem".into(),
        problem_schema(
            "An RFC 9457 problem document. Problems with members of their own have their own \
             schemas (`ValidationProblem`, `NoLicenseAvailableProblem`).",
            schema_ref("ProblemType"),
            &[],
            json!({
                "type": types::NOT_FOUND.type_uri(),
                "title": types::NOT_FOUND.title,
                "status": 404,
                "detail": "account 0190c1d2-7f3e-7cc1-8a55-3b4a1f2e9d10 not found",
                "instance": "/v1/spaces/demo/accounts/0190c1d2-7f3e-7cc1-8a55-3b4a1f2e9d10",
                "request_id": "0190c1d2-8a00-7000-8000-000000000001"
            }),
        ),
    );
    schemas.insert(
        "ValidationProblem".into(),
        problem_schema(
            "The body does not match the operation's schema (`invalid-body`) or a value is not \
             acceptable (`validation-failed`); `errors` names each field.",
            json!({"type": "string", "enum": uris(VALIDATION)}),
            &[(
                "errors",
                json!({"type": "array", "items": schema_ref("FieldError"),
                       "description": "The invalid fields."}),
            )],
            json!({
                "type": types::VALIDATION_FAILED.type_uri(),
                "title": types::VALIDATION_FAILED.title,
                "status": 422,
                "detail": "name: must be 1 to 200 characters and not blank",
                "errors": [{"field": "name", "message": "must be 1 to 200 characters and not blank"}]
            }),
        ),
    );
    schemas.insert(
        "NoLicenseAvailableProblem".into(),
        problem_schema(
            "No account of the space can serve the subject (rule A9); `accounts` says why, per \
             account, in priority order.",
            json!({"type": "string", "enum": [types::NO_LICENSE_AVAILABLE.type_uri()]}),
            &[(
                "accounts",
                json!({"type": "array", "items": schema_ref("Skip"),
                       "description": "Every account tried, and why it could not serve."}),
            )],
            json!({
                "type": types::NO_LICENSE_AVAILABLE.type_uri(),
                "title": types::NO_LICENSE_AVAILABLE.title,
                "status": 409,
                "detail": "no account of this space can serve this subject; see `accounts` (1 tried)",
                "accounts": [{
                    "account_id": "0190c1d2-7f3e-7cc1-8a55-3b4a1f2e9d10",
                    "account_name": "HQ",
                    "priority": 1,
                    "reason": "no_free_license",
                    "detail": "10 owned, 10 held, 0 assigned elsewhere"
                }]
            }),
        ),
    );
}

/// A problem schema offered for `status`, with its specialised variants where they occur.
fn content_schema(op: &Operation, status: &str) -> Value {
    let special = match status {
        "422" if op.has_body => Some("ValidationProblem"),
        "409" if op.id == "allocate_license" => Some("NoLicenseAvailableProblem"),
        _ => None,
    };
    let Some(name) = special else {
        return schema_ref("Problem");
    };
    // No `discriminator`: each schema's `type` is an enum of its own URIs, so exactly one
    // member of the `oneOf` matches and clients narrow on `type` alone. A discriminator mapping
    // several URIs to the shared `Problem` makes openapi-typescript rewrite `Problem.type`
    // globally to the last mapping's URIs (seen with 7.13), which breaks every other status.
    json!({ "oneOf": [schema_ref(name), schema_ref("Problem")] })
}

/// The statuses every operation of this kind can answer besides its own.
fn shared_applies(op: &Operation, status: &str) -> bool {
    match status {
        "400" | "500" => true,
        "401" | "403" | "404" | "503" => op.authenticated,
        "413" | "415" | "422" => op.has_body,
        // 406, 409 and 412 only where the operation declares them.
        _ => false,
    }
}

pub(super) fn responses(op: &Operation, map: &mut Map<String, Value>) {
    let responses = super::object(map, "responses");
    for (status, description) in SHARED {
        if shared_applies(op, status) && !responses.contains_key(*status) {
            responses.insert((*status).to_owned(), json!({ "description": description }));
        }
    }
    for (status, response) in responses.iter_mut() {
        if !(status.starts_with('4') || status.starts_with('5')) {
            continue;
        }
        let Some(response) = response.as_object_mut() else {
            continue;
        };
        response.remove("content");
        response.insert(
            "content".into(),
            json!({ "application/problem+json": { "schema": content_schema(op, status) } }),
        );
    }
}
