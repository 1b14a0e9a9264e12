//! The committed openapi/openapi.json is what the code generates, and every operation follows
//! the conventions (operation id, tag, security, problem responses).
//!
//! After an API change: `cargo run -- openapi -o openapi/openapi.json` (or run this test with
//! `UPDATE_OPENAPI=1`).

use serde_json::Value;

use crate::support::TestApp;

fn committed_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json")
}

#[tokio::test]
async fn served_document_matches_the_committed_file() {
    let app = TestApp::start().await;
    let served = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(committed_path(), &served).unwrap();
    }
    let committed = std::fs::read_to_string(committed_path()).unwrap_or_default();
    assert!(
        served == committed,
        "openapi/openapi.json is out of date; regenerate it with \
         `cargo run -- openapi -o openapi/openapi.json` (or UPDATE_OPENAPI=1 cargo test openapi)"
    );
    let doc: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
}

#[test]
fn every_operation_follows_the_conventions() {
    let doc: Value = serde_json::to_value(vpp_broker::http::openapi::document()).unwrap();
    let mut operation_ids = std::collections::HashSet::new();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.contains_key("/v1/spaces"));
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let where_ = format!("{method} {path}");
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{where_}: no operationId"));
            assert!(
                operation_ids.insert(id.to_owned()),
                "{where_}: duplicate operationId {id}"
            );
            assert!(
                !op["tags"].as_array().map(Vec::is_empty).unwrap_or(true),
                "{where_}: no tag"
            );
            assert!(
                op["security"].is_array(),
                "{where_}: no security requirement"
            );
            let responses = op["responses"].as_object().unwrap();
            for status in ["400", "500"] {
                assert!(responses.contains_key(status), "{where_}: no {status}");
            }
            if path.starts_with("/v1/") {
                let security = op["security"].to_string();
                assert!(
                    security.contains("bearer"),
                    "{where_}: not bearer-protected"
                );
                for status in ["401", "403", "404"] {
                    assert!(responses.contains_key(status), "{where_}: no {status}");
                }
            }
            if op.get("requestBody").is_some() {
                for status in ["413", "415", "422"] {
                    assert!(responses.contains_key(status), "{where_}: no {status}");
                }
            }
        }
    }
}
