//! The document's `webhooks` section (OpenAPI 3.1; utoipa 5 does not generate one): one entry
//! per event type an endpoint can receive, each a POST of the event's envelope
//! (`WebhookEvent`) with the Standard Webhooks headers. Built from the catalogue the API checks
//! filters against ([`crate::webhooks::catalog`]), so the two cannot drift.

use serde_json::{Map, Value, json};

use crate::webhooks::catalog;

/// Adds `components.schemas.WebhookEvent` and the `webhooks` section.
pub fn section(root: &mut Map<String, Value>) {
    let schemas = super::object(super::object(root, "components"), "schemas");
    schemas.insert("WebhookEvent".into(), envelope());
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
                        {"type": "object", "properties": {"type": {"const": t}}}
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
