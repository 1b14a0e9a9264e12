//! Extractor configuration: every way a body, path or query can be wrong becomes a problem.
//!
//! * body not JSON by content type → 415 `unsupported-media-type`
//! * body larger than the limit → 413 `payload-too-large`
//! * syntactically broken JSON → 400 `malformed-json`
//! * valid JSON that is not an object at the top (`[]`, `"x"`, `1`, `null`), or an array where
//!   the body's schema expects an object at any depth → 422 `invalid-body` (serde would
//!   otherwise fill a struct from an array by position, and `deny_unknown_fields` does not stop
//!   that; see [`super::body_shape`])
//! * wrong types, missing or unknown fields → 422 `invalid-body` (request types use
//!   `deny_unknown_fields`)
//! * a path segment or query parameter of the wrong shape → 400 `invalid-parameter`

use actix_web::dev::Payload;
use actix_web::error::{PathError, QueryPayloadError};
use actix_web::http::header;
use actix_web::web::{self, BytesMut, PathConfig, QueryConfig};
use actix_web::{FromRequest, HttpRequest, error};
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use super::body_shape::{self, BodyShape};
use super::problem::{ApiError, types};
use crate::domain::validation::FieldError;

/// Largest accepted body, in bytes (app data set by the server from `VPP_BODY_LIMIT_BYTES`).
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// A JSON request body. Unlike actix's `Json`, errors name the offending field by its path
/// (`accounts[2].priority: invalid type ...`) and are problems.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned + BodyShape + 'static> FromRequest for Json<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req
            .app_data::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(256 * 1024);
        let body = read::<T>(req, payload, limit);
        Box::pin(async move { body.await.map(Json) })
    }
}

/// Largest body a [`LargeJson`] accepts (or the configured limit, when that is larger): a
/// bulk operation lists up to 100,000 subjects (about 5 MiB of JSON).
pub const LARGE_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// A JSON request body that may be larger than `VPP_BODY_LIMIT_BYTES`, up to
/// [`LARGE_BODY_LIMIT`]: the body of a bulk operation. Otherwise exactly [`Json`].
#[derive(Debug)]
pub struct LargeJson<T>(pub T);

impl<T: DeserializeOwned + BodyShape + 'static> FromRequest for LargeJson<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req
            .app_data::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(0)
            .max(LARGE_BODY_LIMIT);
        let body = read::<T>(req, payload, limit);
        Box::pin(async move { body.await.map(LargeJson) })
    }
}

/// Reads and checks a JSON body of at most `limit` bytes (see the module documentation).
fn read<T: DeserializeOwned + BodyShape + 'static>(
    req: &HttpRequest,
    payload: &mut Payload,
    limit: usize,
) -> LocalBoxFuture<'static, Result<T, ApiError>> {
    let content_type_ok = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .is_some_and(|m| {
            m.type_() == mime::APPLICATION
                && (m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON))
        });
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let schemas = req
        .app_data::<web::Data<body_shape::RequestSchemas>>()
        .cloned();
    let mut payload = payload.take();
    Box::pin(async move {
        if !content_type_ok {
            return Err(ApiError::new(
                &types::UNSUPPORTED_MEDIA_TYPE,
                "the body must be JSON sent with Content-Type: application/json",
            ));
        }
        if let Some(length) = declared
            && length > limit
        {
            return Err(too_large(limit));
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::new(&types::BAD_REQUEST, format!("cannot read the body: {e}"))
            })?;
            if body.len() + chunk.len() > limit {
                return Err(too_large(limit));
            }
            body.extend_from_slice(&chunk);
        }
        let value = parse::<T>(&body)?;
        if let Some(schema) = T::schema_name()
            && let Some(schemas) = &schemas
            && let Some(field) = body_shape::misplaced_array(&schemas.0, &body, &schema)
        {
            let message = "must be a JSON object, not an array".to_owned();
            return Err(
                ApiError::new(&types::INVALID_BODY, format!("{field}: {message}"))
                    .with_errors(vec![FieldError { field, message }]),
            );
        }
        Ok(value)
    })
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        &types::PAYLOAD_TOO_LARGE,
        format!("the body exceeds the limit of {limit} bytes"),
    )
}

/// Parses JSON; errors say which field is wrong. A string holding a NUL character (`\u0000`)
/// is refused: PostgreSQL cannot store it, and it is never a meaningful name or id. A body that
/// is not a JSON object is refused before serde sees it (see the module documentation).
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    check_top_level_object(body)?;
    if has_nul_escape(body) {
        let message = "strings must not contain NUL characters (\\u0000)".to_owned();
        return Err(
            ApiError::new(&types::INVALID_BODY, message.clone()).with_errors(vec![FieldError {
                field: "body".into(),
                message,
            }]),
        );
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        deserialize_error(e.inner(), &path)
    })?;
    de.end().map_err(|e| deserialize_error(&e, "."))?;
    Ok(value)
}

/// 422 unless the body's first value is an object. Whitespace-only or broken text falls through
/// to the parser, which reports it as `malformed-json`.
fn check_top_level_object(body: &[u8]) -> Result<(), ApiError> {
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    match first {
        None | Some(b'{') => Ok(()),
        Some(_) => {
            if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                // Not JSON at all: a syntax error, named as such.
                return Err(deserialize_error(&e, "."));
            }
            let message = "the body must be a JSON object".to_owned();
            Err(
                ApiError::new(&types::INVALID_BODY, message.clone()).with_errors(vec![
                    FieldError {
                        field: "body".into(),
                        message,
                    },
                ]),
            )
        }
    }
}

/// Whether the JSON text has a `\u0000` escape (a `\` that is not itself escaped, then `u0000`).
fn has_nul_escape(body: &[u8]) -> bool {
    let mut backslashes = 0usize;
    for (i, &b) in body.iter().enumerate() {
        if b == b'\\' {
            backslashes += 1;
            continue;
        }
        if backslashes % 2 == 1 && b == b'u' && body.get(i + 1..i + 5) == Some(b"0000".as_slice()) {
            return true;
        }
        backslashes = 0;
    }
    false
}

pub fn path_config() -> PathConfig {
    PathConfig::default().error_handler(path_error)
}

pub fn query_config() -> QueryConfig {
    QueryConfig::default().error_handler(query_error)
}

/// Syntax errors are 400; data errors (types, unknown or missing fields) are 422 with the field.
fn deserialize_error(e: &serde_json::Error, path: &str) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => {
            let message = e.to_string();
            let field = match (field_of(&message), path) {
                // "unknown field `x`" / "missing field `y`": name the field inside `path`.
                (Some(name), ".") => name,
                (Some(name), p) if !p.ends_with(&name) => format!("{p}.{name}"),
                (_, ".") => "body".to_owned(),
                (_, p) => p.to_owned(),
            };
            let message = strip_position(&message);
            ApiError::new(&types::INVALID_BODY, format!("{field}: {message}"))
                .with_errors(vec![FieldError { field, message }])
        }
        _ => ApiError::new(
            &types::MALFORMED_JSON,
            format!("the body is not valid JSON: {e}"),
        ),
    }
}

/// serde names the offending field in backticks: "unknown field `x`", "missing field `y`".
fn field_of(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    let candidate = &message[start..end];
    (message.contains("field") && !candidate.is_empty()).then(|| candidate.to_owned())
}

fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

fn path_error(err: PathError, _req: &HttpRequest) -> error::Error {
    let PathError::Deserialize(e) = &err else {
        return ApiError::new(&types::INVALID_PARAMETER, err.to_string()).into();
    };
    ApiError::new(
        &types::INVALID_PARAMETER,
        format!("invalid path parameter: {e}"),
    )
    .into()
}

fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> error::Error {
    let QueryPayloadError::Deserialize(e) = &err else {
        return ApiError::new(&types::INVALID_PARAMETER, err.to_string()).into();
    };
    ApiError::new(
        &types::INVALID_PARAMETER,
        format!("invalid query parameter: {e}"),
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        items: Option<Vec<Item>>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        n: u32,
    }

    fn field(body: &str) -> (String, u16, String) {
        let err = parse::<Body>(body.as_bytes()).unwrap_err();
        let problem = err.to_problem();
        let field = problem
            .errors
            .first()
            .map(|e| e.field.clone())
            .unwrap_or_default();
        (field, problem.status, err.kind().slug.to_owned())
    }

    #[test]
    fn unknown_and_wrong_fields_name_the_field() {
        assert_eq!(
            field(r#"{"name":"a","extra":1}"#),
            ("extra".into(), 422, "invalid-body".into())
        );
        assert_eq!(field(r#"{}"#), ("name".into(), 422, "invalid-body".into()));
        assert_eq!(
            field(r#"{"name": 5}"#),
            ("name".into(), 422, "invalid-body".into())
        );
        assert_eq!(
            field(r#"{"name":"a","items":[{"n":1},{"n":"x"}]}"#),
            ("items[1].n".into(), 422, "invalid-body".into())
        );
        assert_eq!(
            field(r#"{"name":"a","items":[{"n":1,"m":2}]}"#),
            ("items[0].m".into(), 422, "invalid-body".into())
        );
    }

    #[test]
    fn nul_escapes_are_found_and_escaped_backslashes_are_not() {
        assert!(has_nul_escape(br#"{"a":"x\u0000"}"#));
        assert!(has_nul_escape(br#"{"a":"\\\u0000"}"#));
        assert!(
            !has_nul_escape(br#"{"a":"\\u0000"}"#),
            "an escaped backslash, then text"
        );
        assert!(!has_nul_escape(br#"{"a":"\u0001 u0000"}"#));
        assert_eq!(field(r#"{"name":"a\u0000"}"#).2, "invalid-body");
    }

    #[test]
    fn bodies_that_are_not_objects_are_invalid() {
        for body in [
            r#"[]"#,
            r#"["a", null]"#,
            r#" "a""#,
            "1",
            "null",
            "true",
            "\n[{\"n\":1}]",
        ] {
            assert_eq!(
                field(body),
                ("body".into(), 422, "invalid-body".into()),
                "{body}"
            );
        }
        assert_eq!(
            field("[1,").2,
            "malformed-json",
            "broken text stays malformed"
        );
        assert_eq!(field("  ").2, "malformed-json");
    }

    #[test]
    fn broken_json_is_malformed() {
        assert_eq!(field(r#"{"name": "#).2, "malformed-json");
        assert_eq!(field(r#"{"name": "a"} trailing"#).2, "malformed-json");
        assert_eq!(field("").2, "malformed-json");
    }
}
