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
    let doc = vpp_broker::http::openapi::document_value(vpp_broker::api::configure);
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
            assert!(
                op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{where_}: no summary"
            );
            for p in op["parameters"].as_array().into_iter().flatten() {
                assert!(
                    p["description"].as_str().is_some_and(|s| !s.is_empty()),
                    "{where_}: parameter {} has no description",
                    p["name"]
                );
                assert!(
                    !p["schema"].to_string().contains("null"),
                    "{where_}: parameter {} is nullable; absent is how a parameter is omitted",
                    p["name"]
                );
            }
            let responses = op["responses"].as_object().unwrap();
            for (status, response) in responses {
                assert!(
                    response["headers"]["x-request-id"].is_object(),
                    "{where_} {status}: x-request-id not documented"
                );
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &response["content"]["application/problem+json"]["schema"];
                    assert!(
                        schema.to_string().contains("#/components/schemas/Problem"),
                        "{where_} {status}: not a problem"
                    );
                    assert!(
                        response["description"]
                            .as_str()
                            .is_some_and(|d| !d.is_empty()),
                        "{where_} {status}: no description"
                    );
                }
            }
            for status in ["400", "500"] {
                assert!(responses.contains_key(status), "{where_}: no {status}");
            }
            if path.starts_with("/v1/") {
                let security = op["security"].to_string();
                assert!(
                    security.contains("oauth2"),
                    "{where_}: not protected by the callers' scheme"
                );
                let scopes = op["security"][0]["oauth2"].as_array().unwrap();
                assert_eq!(scopes.len(), 1, "{where_}: one scope expected");
                let declared = &doc["components"]["securitySchemes"]["oauth2"]["flows"]["clientCredentials"]
                    ["scopes"];
                assert!(
                    declared.get(scopes[0].as_str().unwrap()).is_some(),
                    "{where_}: undeclared scope {}",
                    scopes[0]
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

/// Every string enum in the document lists exactly what the service writes and reads: the
/// values come from serde (the wire), not from the schema generator. A schema with an `enum` that
/// is not listed here fails the test, so a new enum cannot drift unnoticed.
/// Whether a property schema admits `null` (`type: [.., "null"]` or a `null` member of a
/// `oneOf`/`anyOf`).
fn admits_null(property: &Value) -> bool {
    let in_type = match &property["type"] {
        Value::Array(types) => types.iter().any(|t| t == "null"),
        t => t == "null",
    };
    let in_union = ["oneOf", "anyOf"].iter().any(|k| {
        property[*k]
            .as_array()
            .is_some_and(|members| members.iter().any(|m| m["type"] == "null"))
    });
    in_type || in_union
}

/// One convention for "no value", so generated clients get one type for it: a property that may
/// be missing is never `null` (the code skips `None` when it writes), and a property that may be
/// `null` is always present. Before this, `next_cursor` and friends were optional *and* nullable,
/// so a generated client had to test for both (`str | None | Unset`).
#[test]
fn a_property_is_either_optional_or_nullable_never_both() {
    let doc = vpp_broker::http::openapi::document_value(vpp_broker::api::configure);
    let mut both = Vec::new();
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for (property, definition) in schema["properties"].as_object().into_iter().flatten() {
            if admits_null(definition) && !required.contains(&property.as_str()) {
                both.push(format!("{name}.{property}"));
            }
        }
    }
    assert!(
        both.is_empty(),
        "optional and nullable (add `#[schema(nullable = false)]` with \
         `skip_serializing_if`, or `#[schema(required = true)]`): {both:?}"
    );
}

#[test]
fn documented_enums_are_spelled_as_on_the_wire() {
    use vpp_broker::accounts::ListKind;
    use vpp_broker::api::policies::TargetKind;
    use vpp_broker::domain::account_status::AccountStatus;
    use vpp_broker::domain::account_status::WhenUnusable;
    use vpp_broker::domain::inventory::AssetProductType;
    use vpp_broker::domain::model::{
        AssignmentState, LicenseType, LicenseWish, Rule, SkipReason, SubjectKind,
    };

    fn wire<T: serde::Serialize + serde::de::DeserializeOwned>(all: &[T]) -> Vec<String> {
        all.iter()
            .map(|v| {
                let value = serde_json::to_value(v).unwrap();
                // What the service writes, it also reads back.
                serde_json::from_value::<T>(value.clone()).unwrap();
                value.as_str().unwrap().to_owned()
            })
            .collect()
    }
    // Every problem type is documented exactly once: in `ProblemType` (the plain `Problem`), or
    // as the `type` of the problem schema that carries its members.
    use vpp_broker::http::problem::types;
    let own = [
        (
            "ValidationProblem",
            vec![&types::INVALID_BODY, &types::VALIDATION_FAILED],
        ),
        (
            "NoLicenseAvailableProblem",
            vec![&types::NO_LICENSE_AVAILABLE],
        ),
    ];
    let problem_types: Vec<String> = types::ALL
        .iter()
        .filter(|t| !own.iter().any(|(_, kinds)| kinds.contains(t)))
        .map(|t| t.type_uri())
        .collect();
    let doc = vpp_broker::http::openapi::document_value(vpp_broker::api::configure);
    for (schema, kinds) in &own {
        let uris: Vec<String> = kinds.iter().map(|t| t.type_uri()).collect();
        assert_eq!(
            doc["components"]["schemas"][*schema]["properties"]["type"]["enum"],
            serde_json::json!(uris),
            "{schema}"
        );
    }
    let known: Vec<(&str, Vec<String>)> = vec![
        ("AccountStatus", wire(AccountStatus::ALL)),
        (
            "ActivityAction",
            wire(vpp_broker::ledger::activity::ActivityAction::ALL),
        ),
        ("AssetProductType", wire(AssetProductType::ALL)),
        (
            "AssetSort",
            wire(vpp_broker::domain::inventory::AssetSort::ALL),
        ),
        ("AssignmentState", wire(AssignmentState::ALL)),
        (
            "DriftClass",
            wire(vpp_broker::domain::reconciliation::DriftClass::ALL),
        ),
        ("LicenseType", wire(LicenseType::ALL)),
        ("LicenseWish", wire(LicenseWish::ALL)),
        ("ListKind", wire(ListKind::ALL)),
        ("Rule", wire(Rule::ALL)),
        ("SkipReason", wire(SkipReason::ALL)),
        ("SubjectKind", wire(SubjectKind::ALL)),
        (
            "SuggestedAction",
            wire(vpp_broker::domain::reconciliation::SuggestedAction::ALL),
        ),
        (
            "SyncKind",
            wire(vpp_broker::domain::reconciliation::SyncKind::ALL),
        ),
        (
            "SyncState",
            wire(vpp_broker::domain::reconciliation::SyncState::ALL),
        ),
        (
            "SyncTrigger",
            wire(vpp_broker::domain::reconciliation::SyncTrigger::ALL),
        ),
        ("TargetKind", wire(TargetKind::ALL)),
        ("WhenUnusable", wire(WhenUnusable::ALL)),
        (
            "PlanAction",
            wire(vpp_broker::domain::reconciliation::PlanAction::ALL),
        ),
        (
            "PlanChange",
            wire(vpp_broker::domain::reconciliation::PlanChange::ALL),
        ),
        (
            "PlanState",
            wire(vpp_broker::domain::reconciliation::PlanState::ALL),
        ),
        (
            "ItemOutcome",
            wire(vpp_broker::domain::reconciliation::ItemOutcome::ALL),
        ),
        ("RepairChoice", wire(vpp_broker::plans::RepairChoice::ALL)),
        (
            "EventType",
            wire(vpp_broker::domain::lifecycle::EventType::ALL),
        ),
        ("Effect", wire(vpp_broker::domain::lifecycle::Effect::ALL)),
        (
            "EventState",
            wire(vpp_broker::domain::lifecycle::EventState::ALL),
        ),
        (
            "EventSubject",
            wire(vpp_broker::domain::lifecycle::EventSubject::ALL),
        ),
        (
            "MoveOutcome",
            wire(vpp_broker::domain::lifecycle::MoveOutcome::ALL),
        ),
        (
            "BatchStatus",
            wire(vpp_broker::api::lifecycle::BatchStatus::ALL),
        ),
        (
            "ReconcileCriterion",
            wire(vpp_broker::domain::reconciliation::ReconcileCriterion::ALL),
        ),
        (
            "BulkAction",
            wire(vpp_broker::domain::bulk::BulkAction::ALL),
        ),
        ("BulkState", wire(vpp_broker::domain::bulk::BulkState::ALL)),
        (
            "BulkPlanOutcome",
            wire(vpp_broker::domain::bulk::BulkPlanOutcome::ALL),
        ),
        (
            "FeedEventType",
            wire(vpp_broker::events::mapping::FeedEventType::ALL),
        ),
        (
            "NoticeKind",
            wire(vpp_broker::domain::notices::NoticeKind::ALL),
        ),
        ("Severity", wire(vpp_broker::domain::notices::Severity::ALL)),
        (
            "NoticeScope",
            wire(vpp_broker::domain::notices::NoticeScope::ALL),
        ),
        (
            "ClearReason",
            wire(vpp_broker::domain::notices::ClearReason::ALL),
        ),
        (
            "NoticeState",
            wire(vpp_broker::domain::notices::NoticeState::ALL),
        ),
        (
            "NoticeStateFilter",
            wire(vpp_broker::domain::notices::NoticeStateFilter::ALL),
        ),
        ("JobKind", wire(vpp_broker::ledger::jobs::JobKind::ALL)),
        (
            "DeadLetterState",
            wire(vpp_broker::ledger::dead_letters::DeadLetterState::ALL),
        ),
        ("ProblemType", problem_types),
        ("PricingParam", vec!["STDQ".into(), "PLUS".into()]),
    ];
    let doc = vpp_broker::http::openapi::document_value(vpp_broker::api::configure);
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for (name, values) in &known {
        let documented: Vec<String> = schemas[*name]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has no enum"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            &documented, values,
            "{name}: documented values differ from the wire"
        );
    }
    for (name, schema) in schemas {
        if schema.get("enum").is_some() {
            assert!(
                known.iter().any(|(k, _)| k == name),
                "{name} is a documented enum this test does not compare with the wire; add it"
            );
        }
    }
}

/// The document's promises about each answer, checked against real answers: the status is
/// documented for the operation, the content type is the documented one, and every header the
/// document marks `required` is sent.
struct Contract {
    doc: Value,
}

impl Contract {
    fn new() -> Self {
        Contract {
            doc: vpp_broker::http::openapi::document_value(vpp_broker::api::configure),
        }
    }

    async fn check(&self, method: &str, template: &str, resp: reqwest::Response) -> Value {
        let status = resp.status().as_u16().to_string();
        let op = &self.doc["paths"][template][method];
        assert!(op.is_object(), "{method} {template} is not documented");
        let documented = &op["responses"][&status];
        assert!(
            documented.is_object(),
            "{method} {template} answered {status}, which is not documented"
        );
        for (name, header) in documented["headers"].as_object().into_iter().flatten() {
            if header["required"] == true {
                assert!(
                    resp.headers().contains_key(name.as_str()),
                    "{method} {template} {status}: documented header {name} missing"
                );
            }
        }
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        match documented["content"].as_object() {
            Some(content) => {
                let ct = content_type.unwrap_or_default();
                assert!(
                    content.keys().any(|k| ct.starts_with(k.as_str())),
                    "{method} {template} {status}: content type {ct} not documented"
                );
            }
            None => assert!(
                content_type.is_none() || status == "204",
                "{method} {template} {status}: undocumented body"
            ),
        }
        resp.json().await.unwrap_or(Value::Null)
    }
}

#[tokio::test]
async fn answers_keep_the_documents_promises_on_status_content_and_headers() {
    use crate::support::sim::{self, app, location};
    use reqwest::Method;
    use serde_json::json;

    let c = Contract::new();
    let sim = sim::start(vec![location(
        "3000000001",
        "Library",
        vec![app("408709785", 1)],
    )])
    .await;
    let t = TestApp::with_sim(&sim).await;
    let s = "/v1/spaces/{space}";
    let space = c
        .check(
            "post",
            "/v1/spaces",
            t.req(Method::POST, "/v1/spaces")
                .json(&json!({"id": "acme", "name": "Acme"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(space["id"], "acme");
    let get = |path: &str| t.req(Method::GET, path).send();
    c.check("get", "/v1/spaces", get("/v1/spaces").await.unwrap())
        .await;
    c.check("get", s, get("/v1/spaces/acme").await.unwrap())
        .await;
    c.check(
        "patch",
        s,
        t.req(Method::PATCH, "/v1/spaces/acme")
            .header("if-match", "\"999\"")
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    c.check(
        "get",
        s,
        t.req_as(Method::GET, "/v1/spaces/acme", "not-a-jwt")
            .send()
            .await
            .unwrap(),
    )
    .await;
    c.check(
        "post",
        "/v1/spaces",
        t.req(Method::POST, "/v1/spaces")
            .json(&json!({"id": "Bad Id", "name": ""}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let account = c
        .check(
            "post",
            "/v1/spaces/{space}/accounts",
            t.req(Method::POST, "/v1/spaces/acme/accounts")
                .json(&json!({"name": "Main", "stoken": sim::stoken(&sim, "3000000001")}))
                .send()
                .await
                .unwrap(),
        )
        .await;
    let account_id = account["id"].as_str().unwrap();
    c.check(
        "get",
        "/v1/spaces/{space}/accounts",
        get("/v1/spaces/acme/accounts?limit=1").await.unwrap(),
    )
    .await;
    c.check(
        "get",
        "/v1/spaces/{space}/accounts/{account}",
        get(&format!("/v1/spaces/acme/accounts/{account_id}"))
            .await
            .unwrap(),
    )
    .await;
    let allocate = |serial: &str| {
        t.req(Method::POST, "/v1/spaces/acme/assignments")
            .header("idempotency-key", format!("k-{serial}"))
            .json(&json!({"asset": {"adam_id": "408709785"}, "subject": {"kind": "device", "id": serial}}))
            .send()
    };
    let path = "/v1/spaces/{space}/assignments";
    let first = c.check("post", path, allocate("D1").await.unwrap()).await;
    let replay = allocate("D1").await.unwrap();
    assert_eq!(
        replay.headers()["idempotent-replayed"],
        "true",
        "documented as sent on a replay"
    );
    c.check("post", path, replay).await;
    let exhausted = c.check("post", path, allocate("D2").await.unwrap()).await;
    assert_eq!(
        exhausted["type"],
        "urn:vpp-broker:problem:no-license-available"
    );
    assert!(exhausted["accounts"].is_array());
    c.check(
        "get",
        path,
        get("/v1/spaces/acme/assignments").await.unwrap(),
    )
    .await;
    let id = first["assignment"]["id"].as_str().unwrap();
    c.check(
        "get",
        "/v1/spaces/{space}/assignments/{assignment}",
        get(&format!("/v1/spaces/acme/assignments/{id}?wait=5"))
            .await
            .unwrap(),
    )
    .await;
    let policy_path = "/v1/spaces/{space}/policies/{adam_id}/{pricing_param}";
    c.check(
        "put",
        policy_path,
        t.req(Method::PUT, "/v1/spaces/acme/policies/408709785/STDQ")
            .json(&json!({"disallowed": [{"kind": "device", "id": "BAD"}]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    c.check(
        "get",
        policy_path,
        get("/v1/spaces/acme/policies/408709785/STDQ")
            .await
            .unwrap(),
    )
    .await;
    let refused = c
        .check(
            "post",
            path,
            t.req(Method::POST, "/v1/spaces/acme/assignments")
                .json(&json!({"asset": {"adam_id": "408709785"}, "subject": {"kind": "device", "id": "BAD"}}))
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(refused["type"], "urn:vpp-broker:problem:subject-disallowed");
    c.check(
        "get",
        "/v1/spaces/{space}/policies",
        get("/v1/spaces/acme/policies").await.unwrap(),
    )
    .await;
    c.check(
        "delete",
        "/v1/spaces/{space}/assignments/{assignment}",
        t.req(Method::DELETE, &format!("/v1/spaces/acme/assignments/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    c.check(
        "post",
        "/v1/spaces/{space}/revocations",
        t.req(Method::POST, "/v1/spaces/acme/revocations")
            .json(&json!({"asset": {"adam_id": "408709785"}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
}

/// utoipa names a schema after its Rust type and keeps only one of two types with the same
/// name: the other's references then silently point at the wrong schema (two `Licenses` did
/// that once, and only the generated clients noticed). Every `ToSchema` type's schema name
/// (its `#[schema(as = …)]` if it has one) must be unique across `src/`.
#[test]
fn schema_names_are_unique() {
    let mut seen: std::collections::BTreeMap<String, String> = Default::default();
    let mut count = 0;
    for (rel, text) in crate::layering::src_files() {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !(line.trim_start().starts_with("#[derive(") && line.contains("ToSchema")) {
                continue;
            }
            let mut renamed = None;
            let declared = lines[i + 1..].iter().find_map(|l| {
                let l = l.trim_start();
                if let Some(rest) = l.strip_prefix("#[schema(as = ") {
                    renamed = rest.split(')').next().map(str::to_owned);
                }
                let rest = l.strip_prefix("pub ").unwrap_or(l);
                let rest = rest
                    .strip_prefix("struct ")
                    .or_else(|| rest.strip_prefix("enum "))?;
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                Some(name)
            });
            let Some(name) = renamed.or(declared).filter(|n| !n.is_empty()) else {
                continue;
            };
            count += 1;
            if let Some(other) = seen.insert(name.clone(), rel.clone()) {
                panic!("two schemas are named {name}: in {other} and in {rel}");
            }
        }
    }
    assert!(count > 40, "found only {count} ToSchema types");
}
