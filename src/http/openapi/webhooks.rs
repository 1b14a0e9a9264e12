//! The document's `webhooks` section (OpenAPI 3.1; utoipa 5 does not generate one): one entry
//! per event type an endpoint can receive, each a POST of the event's envelope
//! (`WebhookEvent`) with the Standard Webhooks headers and the schema of its `data`
//! (`AssignmentEventData`, the API's `Notification`, `ChangeEventData`, `PingEventData`). Built
//! from the catalogue the API checks filters against ([`crate::webhooks::catalog`]), so the two
//! cannot drift.

use serde_json::{Map, Value, json};

use crate::webhooks::catalog;

/// Adds `components.schemas.WebhookEvent` (the envelope), the `data` schemas and the
/// `webhooks` section.
pub fn section(root: &mut Map<String, Value>) {
    let schemas = super::object(super::object(root, "components"), "schemas");
    schemas.insert("WebhookEvent".into(), envelope());
    schemas.insert("AssignmentEventData".into(), assignment_data());
    schemas.insert("ChangeEventData".into(), change_data());
    schemas.insert("PingEventData".into(), ping_data());
    let webhooks = super::object(root, "webhooks");
    for t in catalog::event_types().chain([catalog::PING]) {
        webhooks.insert(t.to_owned(), entry(t));
    }
}

fn envelope() -> Value {
    json!({
        "type": "object",
        "description": "The body of every webhook message: one event of the space, as the \
            feed has it. `id` is also the `webhook-id` header (stable across retries and \
            redeliveries: deduplicate on it); `data` carries the resource's version so a \
            receiver can drop stale events (messages may arrive out of order).",
        "required": ["id", "type", "api_version", "occurred_at", "sequence", "space", "data"],
        "properties": {
            "id": {"type": "string", "format": "uuid", "description": "The event id"},
            "type": {"type": "string", "description": "The event type (a key of the document's `webhooks`)"},
            "api_version": {"type": "string", "description": "The envelope's version (a date)"},
            "occurred_at": {"type": "string", "format": "date-time"},
            "sequence": {
                "type": ["integer", "null"],
                "format": "int64",
                "description": "Strictly increasing per space; null for the test ping"
            },
            "space": {"type": "string", "description": "The space id"},
            "data": {"type": "object", "description": "What happened (type-specific)"}
        }
    })
}

/// `data` of the events about one assignment (`assignment.*`; `events::mapping`).
fn assignment_data() -> Value {
    let nullable =
        |t: &str, description: &str| json!({"type": [t, "null"], "description": description});
    json!({
        "type": "object",
        "description": "An assignment's change. Keep the highest `version` seen per \
            `assignment_id` and drop an event with a lower one (messages may arrive out of order).",
        "required": ["assignment_id", "version", "state", "subject", "asset", "account_id", "actor",
                     "rule", "reason", "apple_event_id", "request_id", "details"],
        "properties": {
            "assignment_id": {"type": "string", "format": "uuid"},
            "version": {"type": ["integer", "null"], "format": "int64",
                        "description": "The assignment's version after the change"},
            "state": {"type": "string",
                      "enum": ["pending", "associating", "active", "failed", "revoking", "revoked", "waiting"],
                      "description": "The assignment's state after the change"},
            "subject": {
                "type": ["object", "null"],
                "required": ["kind", "id"],
                "properties": {
                    "kind": {"type": "string", "enum": ["device", "user"]},
                    "id": {"type": "string", "description": "Serial number or client user id"}
                }
            },
            "asset": {
                "type": ["object", "null"],
                "required": ["adam_id", "pricing_param"],
                "properties": {
                    "adam_id": {"type": "string"},
                    "pricing_param": {"type": "string", "enum": ["STDQ", "PLUS"]}
                }
            },
            "account_id": nullable("string", "The token account"),
            "actor": {"type": "string", "description": "Who caused it: the caller's JWT `sub`, or `system`"},
            "rule": nullable("string", "The rule that decided (allocations)"),
            "reason": nullable("string", "Why (a revocation's reason, why an allocation was queued, why a wait ended)"),
            "apple_event_id": nullable("string", "Apple's event id, once submitted"),
            "request_id": nullable("string", "The request that caused it"),
            "notify_on_removal": {"type": "boolean", "description": "Revocations (V4), when recorded: the account's license removal notification setting — tell the user"},
            "error": {"type": "object", "description": "Failures: Apple's (or the service's) error"},
            "reallocated_to": {"type": "string", "format": "uuid", "description": "`assignment.reallocated`: the assignment that serves the subject instead"},
            "details": {"type": "object", "description": "The activity row's details as recorded"}
        }
    })
}

/// `data` of the other space events (accounts, syncs, lifecycle events, bulk operations,
/// plans, webhooks).
fn change_data() -> Value {
    json!({
        "type": "object",
        "description": "A change that is not an assignment's: what it is about and the \
            activity row's details as recorded.",
        "required": ["account_id", "assignment_id", "actor", "request_id", "details"],
        "properties": {
            "account_id": {"type": ["string", "null"], "format": "uuid"},
            "assignment_id": {"type": ["string", "null"], "format": "uuid"},
            "actor": {"type": "string"},
            "request_id": {"type": ["string", "null"]},
            "details": {"type": "object", "description": "Type-specific (docs/events.md)"}
        }
    })
}

fn ping_data() -> Value {
    json!({
        "type": "object",
        "required": ["webhook"],
        "properties": {"webhook": {"type": "string", "format": "uuid", "description": "The endpoint pinged"}}
    })
}

/// The schema of an event type's `data`.
fn data_schema(t: &str) -> Value {
    let name = if t == catalog::PING {
        "PingEventData"
    } else if t.starts_with("assignment.") {
        "AssignmentEventData"
    } else if t.starts_with("notification.") {
        // The API's own schema: a notification event carries the notification.
        "Notification"
    } else {
        "ChangeEventData"
    };
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn entry(t: &str) -> Value {
    let description = if t == catalog::PING {
        "Sent by `POST /v1/spaces/{space}/webhooks/{id}/ping` to check an endpoint: not a \
         space event, `sequence` is null, never retried."
            .to_owned()
    } else {
        format!(
            "The space's `{t}` events, to endpoints whose `event_types` name it (or are \
             empty). Any 2xx answer within 15 s delivers it; otherwise it is retried 5 s, \
             5 min, 30 min, 2 h, 5 h, 10 h and 10 h later (±20 %; a later `Retry-After` \
             wins). 410 disables the endpoint."
        )
    };
    let header = |name: &str, description: &str| {
        json!({
            "name": name, "in": "header", "required": true,
            "description": description, "schema": {"type": "string"}
        })
    };
    json!({
        "post": {
            "operationId": format!("webhook_{}", t.replace('.', "_")),
            "summary": format!("{t} event"),
            "description": description,
            "tags": ["webhooks"],
            "security": [],
            "parameters": [
                header("webhook-id", "The event id: the same on every retry and redelivery"),
                header("webhook-timestamp", "Unix seconds when this attempt was signed; refuse old ones (5 min)"),
                header(
                    "webhook-signature",
                    "`v1,<base64 HMAC-SHA256 of \"{webhook-id}.{webhook-timestamp}.{body}\">`, keyed \
                     by the base64-decoded part of the endpoint's `whsec_` secret; two, \
                     space-separated, for 24 h after a rotation"
                ),
            ],
            "requestBody": {
                "required": true,
                "content": {"application/json": {"schema": {
                    "allOf": [
                        {"$ref": "#/components/schemas/WebhookEvent"},
                        {"type": "object", "properties": {"type": {"const": t}, "data": data_schema(t)}}
                    ]
                }}}
            },
            "responses": {
                "200": {"description": "Any 2xx: delivered"},
                "410": {"description": "Gone: the endpoint is disabled, nothing more is sent"}
            }
        }
    })
}
