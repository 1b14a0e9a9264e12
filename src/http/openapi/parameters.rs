//! Parameter formats shared by many operations, declared once: the space slug, Apple's product
//! id and pricing, page sizes, and the optional request headers (plain strings: absent, not
//! `null`). They mirror the checks the handlers make (`valid_space_id`, `check_asset`,
//! `PageQuery::limit`), so a generated client refuses what the server would refuse.

use serde_json::{Map, Value, json};

/// Space ids: lowercase letters, digits and dashes, 1–63, no leading or trailing dash.
pub const SPACE_PATTERN: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";
/// Apple's product ids: 1–20 digits.
pub const ADAM_ID_PATTERN: &str = "^[0-9]{1,20}$";

fn schema_for(name: &str, location: &str) -> Option<Value> {
    Some(match (name, location) {
        ("space", "path") => json!({"type": "string", "pattern": SPACE_PATTERN, "maxLength": 63}),
        ("adam_id", _) => json!({"type": "string", "pattern": ADAM_ID_PATTERN, "maxLength": 20}),
        ("pricing_param", _) => json!({"$ref": "#/components/schemas/PricingParam"}),
        ("limit", "query") => {
            json!({"type": "integer", "format": "int32", "minimum": 1, "maximum": 200, "default": 50})
        }
        ("If-Match" | "Idempotency-Key", "header") => json!({"type": "string", "maxLength": 255}),
        _ => return None,
    })
}

pub(super) fn complete(op: &mut Map<String, Value>) {
    let Some(Value::Array(parameters)) = op.get_mut("parameters") else {
        return;
    };
    for parameter in parameters.iter_mut() {
        let Some(parameter) = parameter.as_object_mut() else {
            continue;
        };
        let name = parameter.get("name").and_then(Value::as_str).unwrap_or("");
        let location = parameter.get("in").and_then(Value::as_str).unwrap_or("");
        if let Some(schema) = schema_for(name, location) {
            parameter.insert("schema".into(), schema);
        }
    }
}

/// The same formats on body members of the same name, and the `PricingParam` schema.
pub(super) fn schemas(schemas: &mut Map<String, Value>) {
    schemas.insert(
        "PricingParam".into(),
        json!({
            "type": "string",
            "enum": ["STDQ", "PLUS"],
            "description": "Apple's pricing of an asset: `STDQ` (standard) or `PLUS` (high quality).",
        }),
    );
    for schema in schemas.values_mut() {
        let Some(Value::Object(properties)) = schema.get_mut("properties") else {
            continue;
        };
        for (name, property) in properties.iter_mut() {
            let Some(property) = property.as_object_mut() else {
                continue;
            };
            let (string, nullable) = match property.get("type") {
                Some(Value::String(t)) => (t == "string", false),
                Some(Value::Array(ts)) => (
                    ts.iter().any(|t| t == "string"),
                    ts.iter().any(|t| t == "null"),
                ),
                _ => (false, false),
            };
            match name.as_str() {
                "adam_id" if string => {
                    property.insert("pattern".into(), json!(ADAM_ID_PATTERN));
                    property.insert("maxLength".into(), json!(20));
                }
                "pricing_param" if string => {
                    property.remove("type");
                    let pricing = json!({"$ref": "#/components/schemas/PricingParam"});
                    if nullable {
                        property.insert("anyOf".into(), json!([pricing, {"type": "null"}]));
                    } else if let Value::Object(r) = pricing {
                        property.extend(r);
                    }
                }
                "space" if string => {
                    property.insert("pattern".into(), json!(SPACE_PATTERN));
                    property.insert("maxLength".into(), json!(63));
                }
                _ => {}
            }
        }
    }
}
