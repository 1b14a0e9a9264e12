//! Exports (`Accept: text/csv`, `Accept: application/x-ndjson`) of the assignments list, over
//! HTTP against PostgreSQL: parsed back, each must equal the JSON list walked page by page under
//! the same filters; a text field with a comma, a quote and a newline round-trips; a formula-like
//! cell is neutralised; an export larger than one internal chunk is complete and in order;
//! content negotiation answers 406 for types not offered and 400 for paging an export.

use diesel_async::SimpleAsyncConnection;
use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE, VARY};
use serde_json::{Value, json};
use uuid::Uuid;
use vpp_broker::api::activity::ActivityItem;
use vpp_broker::api::assets::{AccountAsset, AssetInventory};
use vpp_broker::api::assignments::{Assignment, AssignmentPage};
use vpp_broker::http::export::{CHUNK_ROWS, ExportRow, uncovered_paths};

use crate::support::fixtures::{self, APP, World, device};
use crate::support::sim::{app, location};
use crate::support::{Client, expect_problem, read};

const TRICKY: &str = "broke, then said \"hi\"\nand left";
const FORMULA: &str = "=HYPERLINK(\"http://evil\",\"click\")";
/// More than two internal chunks.
const SEEDED: i64 = 2 * CHUNK_ROWS + 500;

/// A world with one account of [`APP`], three allocations through the API (one revoked, with
/// awkward text) and [`SEEDED`] assignments written with SQL (in several states, for the
/// filters).
async fn seeded() -> World {
    let w = fixtures::world(
        vec![location("3000000001", "HQ", vec![app(APP, 100)])],
        &[("HQ", "3000000001")],
    )
    .await;
    let api = w.api();
    let mut body = device("TRICKY-1");
    body["reason"] = json!(TRICKY);
    let tricky = api.allocated(&body).await.assignment.unwrap().id;
    let mut body = device("FORMULA-1");
    body["reason"] = json!(FORMULA);
    let formula = api.allocated(&body).await.assignment.unwrap().id;
    let plain = api
        .allocated(&device("PLAIN-1"))
        .await
        .assignment
        .unwrap()
        .id;
    api.final_state(tricky).await;
    let resp = api
        .revoke(tricky, "?reason=-1%2C%20%40once%3B%20%27quoted%27")
        .await;
    assert!(resp.status().is_success(), "{}", resp.status());
    // Nothing moves while the lists are compared.
    for id in [tricky, formula, plain] {
        api.final_state(id).await;
    }

    let account = w.accounts[0];
    let mut conn = w.app.db.connect().await;
    conn.batch_execute(&format!(
        "INSERT INTO subjects (id, space_id, kind, external_id)
           SELECT gen_random_uuid(), 'acme', 'device', 'SEED-' || lpad(i::text, 5, '0')
           FROM generate_series(1, {SEEDED}) AS i;
         INSERT INTO assignments (id, space_id, account_id, adam_id, pricing_param, subject_id,
                                  license_type, state, rule, decision, requested_by, reason,
                                  created_at, updated_at)
           SELECT (lpad(to_hex(1900000000000 + i), 12, '0') || '-7000-8000-' ||
                   lpad(to_hex(i), 12, '0'))::uuid,
                  'acme', '{account}', '{APP}', 'STDQ', s.id, 'device',
                  (ARRAY['active', 'failed', 'revoked'])[1 + i % 3], 'priority',
                  '{{\"skipped\": [{{\"account_id\": \"{account}\", \"account_name\": \"HQ\",
                     \"priority\": 1, \"reason\": \"no_free_license\", \"detail\": \"x, y\"}}]}}',
                  'seeder', 'seed ' || i,
                  now() - interval '1 day', now()
           FROM generate_series(1, {SEEDED}) AS i
           JOIN subjects s ON s.external_id = 'SEED-' || lpad(i::text, 5, '0');"
    ))
    .await
    .unwrap();
    w
}

/// The JSON list under `query`, walked page by page.
async fn walk(api: &Client<'_>, query: &str) -> Vec<Value> {
    walk_list(api, "/assignments", query).await
}

/// The JSON list at `path` (under the space) under `query`, walked page by page.
async fn walk_list(api: &Client<'_>, path: &str, query: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = format!("{query}&limit=200");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let page: Value = api.get(&format!("{path}?{q}")).await;
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return items,
        }
    }
}

/// `GET …/assignments?{query}` with `Accept: {accept}`: asserts 200 and the content type.
async fn export(api: &Client<'_>, query: &str, accept: &str, content_type: &str) -> String {
    export_list(api, "/assignments", query, accept, content_type).await
}

/// `GET {path}?{query}` (under the space) with `Accept: {accept}`: asserts 200 and the content
/// type.
async fn export_list(
    api: &Client<'_>,
    path: &str,
    query: &str,
    accept: &str,
    content_type: &str,
) -> String {
    let resp = api
        .req(Method::GET, &format!("{path}?{query}"))
        .header(ACCEPT, accept)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{query} as {accept}");
    let got = resp.headers()[CONTENT_TYPE].to_str().unwrap().to_owned();
    assert!(got.starts_with(content_type), "{got}");
    assert_eq!(resp.headers()[VARY], "Accept");
    resp.text().await.unwrap()
}

/// The CSV cell the module doc promises for one JSON value (written independently of the
/// server's code): empty for absent or null, text as it is, anything else as compact JSON.
fn expected_cell(item: &Value, column: &str) -> String {
    let value = column.split('.').try_fold(item, |v, key| v.get(key));
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// A text cell read back: one leading `'` (the formula guard) removed.
fn unguard(cell: &str) -> &str {
    cell.strip_prefix('\'').unwrap_or(cell)
}

/// Asserts that the CSV `text` holds exactly `items`, in order, in the documented shape.
fn assert_csv(text: &str, items: &[Value]) {
    assert_csv_records(text, Assignment::COLUMNS, items)
}

/// Asserts that the CSV `text` has the header `columns` and holds exactly `records`, in order.
fn assert_csv_records(text: &str, columns: &[&str], items: &[Value]) {
    assert!(
        text.starts_with(&format!("{}\r\n", columns.join(","))),
        "header row with CRLF: {:?}",
        &text[..text.len().min(200)]
    );
    assert!(!text.replace("\r\n", "").contains('\r'));
    let mut reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(header, columns);
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), items.len(), "one record per item");
    for (record, item) in records.iter().zip(items) {
        for (cell, column) in record.iter().zip(columns) {
            assert_eq!(
                unguard(cell),
                expected_cell(item, column),
                "{column} of {item}"
            );
        }
    }
}

/// Asserts that the NDJSON `text` holds exactly `items`, in order, one per line.
fn assert_ndjson(text: &str, items: &[Value]) {
    assert!(text.is_empty() || text.ends_with('\n'));
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), items.len(), "one line per item");
    assert!(
        lines.iter().zip(items).all(|(a, b)| a == b),
        "NDJSON differs from the JSON list"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_exports_equal_the_json_list_under_every_filter() {
    let w = seeded().await;
    let api = w.api();
    let account = w.accounts[0];
    let filters = [
        String::new(),
        "state=failed".to_owned(),
        "live=true".to_owned(),
        format!("account_id={account}&adam_id={APP}&pricing_param=STDQ"),
        "subject_kind=device&subject_id=TRICKY-1".to_owned(),
        "subject_kind=device&subject_id=NEVER-SEEN".to_owned(),
        format!("account_id={}", Uuid::nil()),
    ];
    let mut sizes = Vec::new();
    for query in &filters {
        let items = walk(&api, query).await;
        let csv = export(&api, query, "text/csv", "text/csv").await;
        assert_csv(&csv, &items);
        let ndjson = export(&api, query, "application/x-ndjson", "application/x-ndjson").await;
        assert_ndjson(&ndjson, &items);
        sizes.push(items.len());
    }
    // The filters really filter, and the whole list spans several internal chunks.
    let all = sizes[0];
    assert_eq!(all as i64, SEEDED + 3);
    let seeded_in = |r: i64| (1..=SEEDED).filter(|i| i % 3 == r).count();
    assert_eq!(sizes[1], seeded_in(1), "failed");
    assert_eq!(
        sizes[2],
        seeded_in(0) + 2,
        "live: seeded active ones and two allocated"
    );
    assert_eq!(sizes[3], all);
    assert_eq!((sizes[4], sizes[5], sizes[6]), (1, 0, 0));

    // Complete and in order: every id once, ascending, as the JSON list has them.
    let ndjson = export(&api, "", "application/x-ndjson", "application/x-ndjson").await;
    let ids: Vec<Uuid> = ndjson
        .lines()
        .map(|l| serde_json::from_str::<Assignment>(l).unwrap().id)
        .collect();
    assert_eq!(ids.len(), all);
    assert!(ids.windows(2).all(|p| p[0] < p[1]), "ascending ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_round_trips_awkward_text_and_neutralises_formulas() {
    let w = seeded().await;
    let api = w.api();
    let csv = export(
        &api,
        "subject_kind=device&subject_id=TRICKY-1",
        "text/csv",
        "text/csv",
    )
    .await;
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let column = |name: &str| Assignment::COLUMNS.iter().position(|c| *c == name).unwrap();
    let record = reader.records().next().unwrap().unwrap();
    assert_eq!(
        &record[column("reason")],
        TRICKY,
        "comma, quote and newline round-trip"
    );
    assert!(
        csv.contains("\"broke, then said \"\"hi\"\"\nand left\""),
        "RFC 4180 quoting"
    );
    assert_eq!(&record[column("revocation.reason")], "'-1, @once; 'quoted'");
    assert_eq!(&record[column("state")], "revoked");
    assert_eq!(&record[column("subject.id")], "TRICKY-1");
    assert!(record[column("revocation.requested_at")].ends_with('Z'));
    assert_eq!(&record[column("decision.skipped")], "[]", "arrays are JSON");

    let csv = export(
        &api,
        "subject_kind=device&subject_id=FORMULA-1",
        "text/csv",
        "text/csv",
    )
    .await;
    let record = csv::Reader::from_reader(csv.as_bytes())
        .records()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(&record[column("reason")], format!("'{FORMULA}"));
    assert!(
        record[column("version")].parse::<i64>().unwrap() >= 1,
        "numbers as JSON writes them"
    );
    assert_eq!(&record[column("revocation.by")], "", "absent: empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiation_refuses_types_not_offered_and_paged_exports() {
    let w = fixtures::world(
        vec![location("3000000001", "HQ", vec![app(APP, 10)])],
        &[("HQ", "3000000001")],
    )
    .await;
    let api = w.api();
    api.allocated(&device("D-1")).await;
    let get = |query: &'static str, accept: Option<&'static str>| {
        let mut req = api.req(Method::GET, &format!("/assignments{query}"));
        if let Some(accept) = accept {
            req = req.header(ACCEPT, accept);
        }
        req.send()
    };

    let problem = expect_problem(
        get("", Some("application/xml")).await.unwrap(),
        406,
        "not-acceptable",
    )
    .await;
    let detail = problem["detail"].as_str().unwrap();
    for offered in ["application/json", "text/csv", "application/x-ndjson"] {
        assert!(detail.contains(offered), "{detail}");
    }
    expect_problem(
        get("", Some("text/csv;q=0")).await.unwrap(),
        406,
        "not-acceptable",
    )
    .await;

    for accept in [
        None,
        Some("*/*"),
        Some("application/*"),
        Some("text/csv, application/json"),
    ] {
        let resp = get("", accept).await.unwrap();
        assert!(
            resp.headers()[CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{accept:?}"
        );
        let page: AssignmentPage = read(resp, 200).await;
        assert_eq!(page.items.len(), 1, "{accept:?}");
    }
    let resp = get("", Some("text/csv;q=0.5, application/x-ndjson"))
        .await
        .unwrap();
    assert_eq!(resp.headers()[CONTENT_TYPE], "application/x-ndjson");
    let resp = get("", Some("text/*;q=0.9, application/json;q=0.1"))
        .await
        .unwrap();
    assert!(
        resp.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(
        resp.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("assignments.csv")
    );

    // An export is the whole list: paging it is refused; the other checks still apply.
    for query in ["?limit=10", "?cursor=abc"] {
        let problem = expect_problem(
            get(query, Some("text/csv")).await.unwrap(),
            400,
            "invalid-parameter",
        )
        .await;
        assert!(
            problem["detail"].as_str().unwrap().contains("whole"),
            "{problem}"
        );
    }
    expect_problem(
        get("?colour=red", Some("text/csv")).await.unwrap(),
        400,
        "invalid-parameter",
    )
    .await;
    let other = api
        .app
        .req(Method::GET, "/v1/spaces/nowhere/assignments")
        .header(ACCEPT, "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_export_frees_its_connection() {
    let w = seeded().await;
    let api = w.api();
    // More abandoned exports than the pool has connections (8 in tests): each must give its
    // connection (and its place among the two exports a pool of 8 allows) back when the client
    // goes away. The server notices a departure at its next send, so the next export may find
    // both places taken for a moment (503): it is asked again until admitted.
    for _ in 0..12 {
        let mut resp = crate::support::eventually::eventually(
            "an abandoned export gives its place back",
            async || {
                api.req(Method::GET, "/assignments")
                    .header(ACCEPT, "application/x-ndjson")
                    .send()
                    .await
                    .unwrap()
            },
            |resp| resp.status() != 503,
        )
        .await;
        assert_eq!(resp.status(), 200);
        let first = resp.chunk().await.unwrap().unwrap();
        assert!(!first.is_empty());
        drop(resp);
    }
    let page: AssignmentPage = api.get("/assignments?limit=5").await;
    assert_eq!(page.items.len(), 5);
}

#[test]
fn every_field_of_an_assignment_has_a_csv_column() {
    // Every optional member present: a field added to `Assignment` without a column fails here.
    let full = json!({
        "id": Uuid::nil(), "space": "acme", "account_id": Uuid::nil(),
        "asset": {"adam_id": APP, "pricing_param": "STDQ"},
        "subject": {"kind": "device", "id": "S"},
        "license_type": "device", "state": "failed", "rule": "priority",
        "decision": {"skipped": [], "queued_because": "q", "replaces": Uuid::nil()},
        "requested_by": "me", "reason": "r",
        "revocation": {"by": "me", "reason": "r", "requested_at": "2026-12-06T00:00:00Z",
                       "request_id": "x"},
        "apple_event_id": "e",
        "error": {"number": 9709, "message": "m", "action": "a", "reallocated_to": Uuid::nil(),
                  "reallocated_account_id": Uuid::nil(), "reallocation": "none",
                  "errors": {"u-1": {"number": 1, "message": "m"}}},
        "version": 2, "created_at": "2026-12-06T00:00:00Z", "updated_at": "2026-12-06T00:00:00Z"
    });
    let assignment: Assignment = serde_json::from_value(full).unwrap();
    let item = serde_json::to_value(&assignment).unwrap();
    assert_eq!(
        uncovered_paths(&item, Assignment::COLUMNS),
        Vec::<String>::new()
    );
    let columns: Vec<&str> = Assignment::COLUMNS.to_vec();
    let mut unique = columns.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), columns.len(), "column names are unique");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_exports_equal_the_json_log_under_filters() {
    let w = seeded().await;
    let api = w.api();
    let filters = [
        "",
        "actor=system",
        "action=assignment.allocated",
        "subject_kind=device&subject_id=TRICKY-1",
        "subject_kind=device&subject_id=NEVER-SEEN",
    ];
    let mut sizes = Vec::new();
    for query in filters {
        let items = walk_list(&api, "/activity", query).await;
        let csv = export_list(&api, "/activity", query, "text/csv", "text/csv").await;
        assert_csv_records(&csv, ActivityItem::COLUMNS, &items);
        let ndjson = export_list(
            &api,
            "/activity",
            query,
            "application/x-ndjson",
            "application/x-ndjson",
        )
        .await;
        assert_ndjson(&ndjson, &items);
        sizes.push(items.len());
    }
    assert!(sizes[0] > sizes[1] && sizes[1] > 0, "{sizes:?}");
    assert_eq!(sizes[2], 3, "three allocations through the API");
    assert!(sizes[3] >= 3 && sizes[4] == 0, "{sizes:?}");
    // Newest first, as the JSON log.
    let ndjson = export_list(
        &api,
        "/activity",
        "",
        "application/x-ndjson",
        "application/x",
    )
    .await;
    let ids: Vec<i64> = ndjson
        .lines()
        .map(|l| serde_json::from_str::<ActivityItem>(l).unwrap().id)
        .collect();
    assert!(ids.windows(2).all(|p| p[0] > p[1]), "descending ids");
    expect_problem(
        api.req(Method::GET, "/activity?limit=5")
            .header(ACCEPT, "application/x-ndjson")
            .send()
            .await
            .unwrap(),
        400,
        "invalid-parameter",
    )
    .await;
    let full = json!({"id": 1, "occurred_at": "2026-12-06T00:00:00Z", "actor": "a",
        "action": "assignment.allocated", "account_id": Uuid::nil(), "assignment_id": Uuid::nil(),
        "subject": {"kind": "device", "id": "S"}, "adam_id": APP, "pricing_param": "STDQ",
        "rule": "priority", "apple_event_id": "e", "request_id": "r", "details": {"x": [1]}});
    let item: ActivityItem = serde_json::from_value(full).unwrap();
    let item = serde_json::to_value(&item).unwrap();
    assert!(uncovered_paths(&item, ActivityItem::COLUMNS).is_empty());
}

/// The CSV records of an asset: one per account, the asset's fields beside the account's.
fn asset_records(item: &Value) -> Vec<Value> {
    let mut asset = item.as_object().unwrap().clone();
    asset.remove("totals");
    let accounts = asset.remove("accounts").unwrap();
    accounts
        .as_array()
        .unwrap()
        .iter()
        .map(|account| {
            let mut record = asset.clone();
            record.extend(account.as_object().unwrap().clone());
            Value::Object(record)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asset_exports_equal_the_json_inventory_under_sorts_and_filters() {
    let (w, _) = crate::assets::catalog().await;
    let api = w.api();
    let spare = w.accounts[1];
    let filters = [
        String::new(),
        "sort=usage".to_owned(),
        "sort=available&product_type=App".to_owned(),
        format!("account_id={spare}&sort=usage"),
        "exhausted=true".to_owned(),
    ];
    for query in &filters {
        let items = walk_list(&api, "/assets", query).await;
        assert!(!items.is_empty(), "{query}");
        let records: Vec<Value> = items.iter().flat_map(asset_records).collect();
        assert!(records.len() >= items.len());
        let csv = export_list(&api, "/assets", query, "text/csv", "text/csv").await;
        assert_csv_records(&csv, AssetInventory::COLUMNS, &records);
        let ndjson = export_list(
            &api,
            "/assets",
            query,
            "application/x-ndjson",
            "application/x-ndjson",
        )
        .await;
        assert_ndjson(&ndjson, &items);
    }
    // One account's assets: one record per asset.
    let path = format!("/accounts/{spare}/assets");
    let items = walk_list(&api, &path, "sort=available").await;
    assert!(!items.is_empty());
    let csv = export_list(&api, &path, "sort=available", "text/csv", "text/csv").await;
    assert_csv_records(&csv, AccountAsset::COLUMNS, &items);
    let ndjson = export_list(
        &api,
        &path,
        "sort=available",
        "application/x-ndjson",
        "application/x-ndjson",
    )
    .await;
    assert_ndjson(&ndjson, &items);
    // Every field has a column.
    let item = &walk_list(&api, "/assets", "").await[0];
    for record in asset_records(item) {
        assert_eq!(
            uncovered_paths(&record, AssetInventory::COLUMNS),
            Vec::<String>::new()
        );
    }
    assert_eq!(
        uncovered_paths(&items[0], AccountAsset::COLUMNS),
        Vec::<String>::new()
    );
    // An unknown account is still a 404 problem, not a broken stream.
    let missing = api
        .req(Method::GET, &format!("/assets?account_id={}", Uuid::nil()))
        .header(ACCEPT, "text/csv")
        .send()
        .await
        .unwrap();
    expect_problem(missing, 404, "not-found").await;
    expect_problem(
        api.req(Method::GET, "/assets")
            .header(ACCEPT, "application/xml")
            .send()
            .await
            .unwrap(),
        406,
        "not-acceptable",
    )
    .await;
}

/// A process runs at most a quarter of its pool as exports (2 of the tests' 8 connections): a
/// third while two stream is a 503 with `Retry-After`, and JSON pages still answer; when one
/// ends, the next export is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_beyond_a_quarter_of_the_pool_answer_503_until_one_ends() {
    let w = seeded().await;
    let api = w.api();
    let mut conn = w.app.db.connect().await;
    // Enough rows (tens of MB of NDJSON) that an unread export stays blocked on its client.
    conn.batch_execute(
        "INSERT INTO assignments (id, space_id, account_id, adam_id, pricing_param, subject_id,
                                  license_type, state, rule, decision, requested_by, reason)
           SELECT gen_random_uuid(), 'acme', a.account_id, a.adam_id, a.pricing_param,
                  a.subject_id, 'device', 'revoked', 'priority', a.decision, 'seeder',
                  repeat('x', 400) || i
             FROM generate_series(1, 40000) AS i,
                  (SELECT * FROM assignments WHERE space_id = 'acme' LIMIT 1) AS a;
         ANALYZE assignments;",
    )
    .await
    .unwrap();
    let open = async || {
        api.req(Method::GET, "/assignments")
            .header(ACCEPT, "application/x-ndjson")
            .send()
            .await
            .unwrap()
    };
    let mut first = open().await;
    assert_eq!(first.status(), 200);
    assert!(!first.chunk().await.unwrap().unwrap().is_empty());
    let mut second = open().await;
    assert_eq!(second.status(), 200);
    assert!(!second.chunk().await.unwrap().unwrap().is_empty());

    let refused = open().await;
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("5")
    );
    let problem = expect_problem(refused, 503, "unavailable").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("exports"),
        "{problem}"
    );
    let page: AssignmentPage = api.get("/assignments?limit=5").await;
    assert_eq!(page.items.len(), 5, "JSON pages keep answering");

    drop(first);
    let mut third =
        crate::support::eventually::eventually("an ended export frees its place", open, |resp| {
            resp.status() != 503
        })
        .await;
    assert_eq!(third.status(), 200);
    assert!(!third.chunk().await.unwrap().unwrap().is_empty());
    drop(second);
    drop(third);
}

/// The space's inventory is exported a hundred assets per chunk (each carries a row per
/// account): 250 assets cross two chunk boundaries under every sort, and the export still
/// equals the JSON pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asset_exports_span_several_chunks() {
    let (w, _) = crate::assets::catalog().await;
    let api = w.api();
    let account = w.accounts[0];
    let mut conn = w.app.db.connect().await;
    conn.batch_execute(&format!(
        "INSERT INTO assets (account_id, adam_id, pricing_param, product_type, device_assignable,
                             revocable, supported_platforms, apple_total, apple_assigned, held)
           SELECT '{account}', (900000000 + i)::text, 'STDQ', 'App', true, true, '{{iOS}}',
                  10 + i % 7, i % 5, i % 5
             FROM generate_series(1, 250) AS i;"
    ))
    .await
    .unwrap();
    for query in ["", "sort=usage", "sort=available"] {
        let items = walk_list(&api, "/assets", query).await;
        assert!(items.len() > 250, "{query}: {}", items.len());
        let ndjson = export_list(
            &api,
            "/assets",
            query,
            "application/x-ndjson",
            "application/x-ndjson",
        )
        .await;
        assert_ndjson(&ndjson, &items);
        let records: Vec<Value> = items.iter().flat_map(asset_records).collect();
        let csv = export_list(&api, "/assets", query, "text/csv", "text/csv").await;
        assert_csv_records(&csv, AssetInventory::COLUMNS, &records);
    }
}
