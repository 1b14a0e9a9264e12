//! Objects only where the contract says object, at every depth.
//!
//! serde's derived structs also accept a JSON array, filling the fields by position, and
//! `deny_unknown_fields` does not stop it: `{"subject": ["device", "S1"]}` would be read as a
//! subject. The top level is refused in [`super::extract`]; this module walks a body against
//! its request schema in the OpenAPI document (the same document clients are generated from)
//! and refuses an array wherever that schema expects an object. Bodies without an array (the
//! common case: a `[` byte is looked for first) cost nothing.

use std::borrow::Cow;

use serde_json::Value;

/// The request schema a body type is documented with, if it has one.
pub trait BodyShape {
    fn schema_name() -> Option<Cow<'static, str>>;
}

impl<T: utoipa::ToSchema> BodyShape for T {
    fn schema_name() -> Option<Cow<'static, str>> {
        Some(T::name())
    }
}

/// The OpenAPI document the server was started with, whose request schemas bodies are walked
/// against (registered as app data by [`super::server::start`]).
pub struct RequestSchemas(pub Value);

/// The path of the first array given where `schema` expects an object (`subject`,
/// `disallowed[0]`), or `None` when the body has the documented shape.
pub fn misplaced_array(doc: &Value, body: &[u8], schema: &str) -> Option<String> {
    if !body.contains(&b'[') {
        return None;
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    let root = doc.pointer(&format!("/components/schemas/{schema}"))?;
    walk(doc, &value, root, String::new(), 0)
}

/// Follows `$ref`s (a bounded number of times).
fn resolve<'a>(doc: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..16 {
        match schema["$ref"].as_str() {
            Some(target) => match target
                .strip_prefix('#')
                .and_then(|pointer| doc.pointer(pointer))
            {
                Some(next) => schema = next,
                None => return schema,
            },
            None => return schema,
        }
    }
    schema
}

fn types_of(schema: &Value) -> Vec<&str> {
    match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// The schemas a value may match: the schema itself, or the members of its `oneOf`/`anyOf`/
/// `allOf`.
fn alternatives<'a>(doc: &'a Value, schema: &'a Value) -> Vec<&'a Value> {
    let schema = resolve(doc, schema);
    let members: Vec<&Value> = ["oneOf", "anyOf", "allOf"]
        .iter()
        .filter_map(|k| schema[*k].as_array())
        .flatten()
        .map(|m| resolve(doc, m))
        .collect();
    if members.is_empty() {
        vec![schema]
    } else {
        members
    }
}

fn walk(doc: &Value, value: &Value, schema: &Value, path: String, depth: usize) -> Option<String> {
    if depth > 32 {
        return None;
    }
    let options = alternatives(doc, schema);
    let here = || {
        if path.is_empty() {
            "body".to_owned()
        } else {
            path.clone()
        }
    };
    match value {
        Value::Array(items) => {
            let arrays: Vec<&Value> = options
                .iter()
                .copied()
                .filter(|s| types_of(s).contains(&"array") || !s["items"].is_null())
                .collect();
            let objects = options
                .iter()
                .any(|s| types_of(s).contains(&"object") || s["properties"].is_object());
            if arrays.is_empty() {
                return objects.then(here);
            }
            for (i, item) in items.iter().enumerate() {
                for array in &arrays {
                    if let Some(found) = walk(
                        doc,
                        item,
                        &array["items"],
                        format!("{path}[{i}]"),
                        depth + 1,
                    ) {
                        return Some(found);
                    }
                }
            }
            None
        }
        Value::Object(fields) => {
            for (name, field) in fields {
                for option in &options {
                    let property = &option["properties"][name.as_str()];
                    let nested = if property.is_null() {
                        &option["additionalProperties"]
                    } else {
                        property
                    };
                    if !nested.is_object() {
                        continue;
                    }
                    let at = if path.is_empty() {
                        name.clone()
                    } else {
                        format!("{path}.{name}")
                    };
                    if let Some(found) = walk(doc, field, nested, at, depth + 1) {
                        return Some(found);
                    }
                }
            }
            None
        }
        _ => None,
    }
}
