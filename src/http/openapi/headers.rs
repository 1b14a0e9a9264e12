//! Headers, as the server really sends and reads them (the contract scenario in
//! `scripts/contract/` and `tests/it/openapi.rs` check them over HTTP):
//!
//! - every response: `x-request-id` (the caller's, or a generated one);
//! - 401: `WWW-Authenticate` (RFC 6750 challenge); 503: `Retry-After` (seconds);
//! - 2xx answers that carry a space, an account or a policy: `ETag` (its `version`, strong);
//! - 201: `Location` of the created resource;
//! - the allocation's answers: `Idempotent-Replayed: true` when an `Idempotency-Key` replayed it;
//! - lists that also answer CSV and NDJSON (`crate::http::export`): `Vary: Accept`, and on an
//!   export `Content-Disposition` (the download's file name);
//! - every operation reads an optional `x-request-id`.

use serde_json::{Map, Value, json};

use super::Operation;

/// Resources whose representation carries a `version` sent as the `ETag`.
const VERSIONED: &[&str] = &["Space", "Account", "Policy"];

fn header(description: &str, schema: Value, required: bool) -> Value {
    json!({ "description": description, "schema": schema, "required": required })
}

fn request_id_schema() -> Value {
    json!({"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$", "maxLength": 128})
}

/// The `$ref` name of a response's JSON body schema, if it has one.
fn body_schema(response: &Map<String, Value>) -> Option<&str> {
    response
        .get("content")?
        .get("application/json")?
        .get("schema")?
        .get("$ref")?
        .as_str()?
        .rsplit('/')
        .next()
}

pub(super) fn complete(op: &Operation, map: &mut Map<String, Value>) {
    let parameters = map
        .entry("parameters")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = parameters {
        list.push(json!({
            "name": "x-request-id",
            "in": "header",
            "required": false,
            "description": "Your id for this request (1–128 of `A-Z a-z 0-9 . _ : -`); echoed in \
                the response, in problems and on every log line. One is generated when absent or \
                malformed.",
            "schema": request_id_schema(),
        }));
    }
    let Some(responses) = map.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    for (status, response) in responses.iter_mut() {
        let Some(response) = response.as_object_mut() else {
            continue;
        };
        let mut headers = Map::new();
        headers.insert(
            "x-request-id".into(),
            header(
                "The request id (the caller's `x-request-id`, or a generated one).",
                request_id_schema(),
                true,
            ),
        );
        let success = status.starts_with('2');
        if success && body_schema(response).is_some_and(|s| VERSIONED.contains(&s)) {
            headers.insert(
                "ETag".into(),
                header(
                    "The representation's `version` as a strong entity tag (`\"<version>\"`); \
                     send it back in `If-Match` to edit only that version.",
                    json!({"type": "string", "pattern": "^\"[0-9]+\"$"}),
                    true,
                ),
            );
        }
        // 202 of `sync_account`: the sync run to poll; of `allocate_license`: the waiting
        // assignment (A12).
        if status == "201"
            || (status == "202" && (op.id == "sync_account" || op.id == "allocate_license"))
        {
            headers.insert(
                "Location".into(),
                header(
                    "Path of the created resource (for a 202, of the resource to poll).",
                    json!({"type": "string", "format": "uri-reference"}),
                    true,
                ),
            );
        }
        if success && op.id == "allocate_license" {
            headers.insert(
                "Idempotent-Replayed".into(),
                header(
                    "`true` when this answer replays the first answer to the same \
                     `Idempotency-Key`; absent otherwise.",
                    json!({"type": "string", "enum": ["true"]}),
                    false,
                ),
            );
        }
        let exports = response
            .get("content")
            .and_then(|c| c.get("text/csv"))
            .is_some();
        if success && exports {
            headers.insert(
                "Vary".into(),
                header(
                    "`Accept`: the answer's media type depends on it (JSON page or export).",
                    json!({"type": "string"}),
                    true,
                ),
            );
            headers.insert(
                "Content-Disposition".into(),
                header(
                    "On an export: `attachment` with the file name (`assignments.csv`).",
                    json!({"type": "string"}),
                    false,
                ),
            );
        }
        if status == "401" && op.authenticated {
            headers.insert(
                "WWW-Authenticate".into(),
                header(
                    "RFC 6750 bearer challenge.",
                    json!({"type": "string"}),
                    true,
                ),
            );
        }
        if status == "503" {
            headers.insert(
                "Retry-After".into(),
                header(
                    "Seconds to wait before retrying.",
                    json!({"type": "integer", "minimum": 0}),
                    false,
                ),
            );
        }
        response.insert("headers".into(), Value::Object(headers));
    }
}
