//! The license inventory over real HTTP (issue 12): `GET …/assets` (figures per account and
//! summed, filters, sorts, pages), one asset's detail (policy summary, daily movement, the
//! exhaustion forecast from a backdated history written into the test database), one account's
//! assets, and bad input.

use std::collections::HashSet;

use diesel_async::RunQueryDsl;
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;
use vpp_broker::api::assets::{AccountAssetPage, AssetDetail, AssetInventory, AssetInventoryPage};
use vpp_broker::api::assignments::AssignmentPage;
use vpp_broker::apple::types::PricingParam;

use crate::support::app::Options;
use crate::support::eventually::eventually;
use crate::support::fixtures::{self, APP, BOOK, device};
use crate::support::sim::{self, app, book, location};
use crate::support::{Allocated, TestApp, expect_problem};

const U1: &str = "3100000001";
const U2: &str = "3100000002";
const U3: &str = "3100000003";

fn figures(item: &AssetInventory, account: Uuid) -> &vpp_broker::api::assets::AccountFigures {
    item.accounts
        .iter()
        .find(|a| a.account_id == account)
        .unwrap_or_else(|| panic!("account {account} not in {item:?}"))
}

async fn asset(app: &TestApp, adam: &str) -> AssetDetail {
    app.get_as(&format!("/v1/spaces/acme/assets/{adam}/STDQ"))
        .await
}

#[tokio::test]
async fn assets_show_held_by_state_reservations_and_what_the_simulator_holds() {
    let w = fixtures::world(
        vec![
            location(U1, "Main", vec![app(APP, 5), book(BOOK, 3)]),
            location(U2, "Spare", vec![app(APP, 4)]),
        ],
        &[("Main", U1), ("Spare", U2)],
    )
    .await;
    let (a, b) = (w.accounts[0], w.accounts[1]);
    let api = w.api();
    let mut ids = Vec::new();
    for serial in ["D1", "D2", "D3"] {
        let id = api.allocated(&device(serial)).await.assignment().id;
        assert_eq!(api.final_state(id).await.state.as_str(), "active");
        ids.push(id);
    }
    let resp = api.revoke(ids[2], "").await;
    assert_eq!(resp.status(), 202, "an active license is released at Apple");
    // While Apple releases it, the license is back in the pool already.
    let seen = asset(&w.app, APP).await;
    let main = figures(&seen.asset, a);
    assert_eq!(main.ledger.held, 2, "{main:?}");
    eventually(
        "the revocation finished",
        async || api.assignment(ids[2]).await.state,
        |s| s.as_str() == "revoked",
    )
    .await;

    let seen = asset(&w.app, APP).await;
    let item = &seen.asset;
    assert_eq!(
        (
            item.product_type.as_str(),
            item.device_assignable,
            item.revocable
        ),
        ("App", true, true)
    );
    assert!(!item.has_policy);
    let main = figures(item, a);
    assert_eq!(main.priority, 1);
    assert_eq!(main.account_status.as_str(), "active");
    assert!(main.allocatable);
    assert_eq!(main.apple.total, 5);
    assert_eq!(main.ledger.held, 2);
    assert_eq!(main.ledger.held_by_state.active, 2);
    assert_eq!(main.ledger.held_by_state.pending, 0);
    assert_eq!(main.ledger.held_by_state.revoking, 0);
    assert_eq!(main.ledger.assigned_elsewhere, 0);
    assert_eq!(main.ledger.available_now, 3);
    assert_eq!(main.ledger.usage_percent, Some(40.0));
    // What the simulator holds: two APP licenses at Main, none at Spare.
    assert_eq!(fixtures::sim_serials(&w.sim, U1).await, ["D1", "D2"]);
    assert_eq!(
        fixtures::sim_serials(&w.sim, U1).await.len() as i64,
        main.ledger.held_by_state.active
    );
    let spare = figures(item, b);
    assert_eq!((spare.apple.total, spare.ledger.available_now), (4, 4));
    assert_eq!(item.totals.apple.total, 9);
    assert_eq!(item.totals.ledger.held, 2);
    assert_eq!(item.totals.ledger.available_now, 7);

    // Reservations hold back: one naming no account from the first owner (Main), one from Spare.
    let resp = api
        .put_policy(
            APP,
            "STDQ",
            &json!({"reserved": [
                {"kind": "device", "id": "VIP-A"},
                {"kind": "device", "id": "VIP-B", "account_id": b},
            ], "fcfs_groups": ["staff"], "disallowed": [{"kind": "device", "id": "LOST"}]}),
        )
        .await;
    assert_eq!(resp.status(), 201);
    let seen = asset(&w.app, APP).await;
    assert!(seen.asset.has_policy);
    let policy = seen.policy.as_ref().expect("policy summary");
    assert_eq!(
        (
            policy.reserved,
            policy.reserved_outstanding,
            policy.fcfs_groups,
            policy.disallowed
        ),
        (2, 2, 1, 1)
    );
    assert_eq!(policy.version, 1);
    let main = figures(&seen.asset, a);
    assert_eq!((main.ledger.held_back, main.ledger.available_now), (1, 2));
    let spare = figures(&seen.asset, b);
    assert_eq!((spare.ledger.held_back, spare.ledger.available_now), (1, 3));
    assert_eq!(seen.asset.totals.ledger.held_back, 2);
    // Seen from one account, a reservation naming none still holds back from the first owner.
    for (account, held_back) in [(a, 1), (b, 1)] {
        let page: AssetInventoryPage = w
            .app
            .get_as(&format!(
                "/v1/spaces/acme/assets?account_id={account}&product_type=App"
            ))
            .await;
        assert_eq!(
            page.items[0].totals.ledger.held_back, held_back,
            "{account}"
        );
    }
    // Once VIP-A holds its license, nothing is held back for it.
    let vip = api.allocated(&device("VIP-A")).await;
    assert_eq!(vip.account_id, a);
    let seen = asset(&w.app, APP).await;
    let main = figures(&seen.asset, a);
    assert_eq!(
        (
            main.ledger.held,
            main.ledger.held_back,
            main.ledger.available_now
        ),
        (3, 0, 2)
    );
    assert_eq!(seen.policy.unwrap().reserved_outstanding, 1);

    // The daily movement counts today's allocations (4) and revocation (1).
    let today = seen.daily.last().unwrap();
    assert_eq!(seen.daily.len(), 30);
    assert_eq!(today.day, chrono::Utc::now().date_naive());
    assert_eq!((today.allocations, today.revocations), (4, 1));
    assert_eq!(seen.forecast.days_until_exhausted, None);
    assert!(seen.forecast.reason.as_deref().unwrap().contains("7 days"));

    // One account's assets, flat.
    let page: AccountAssetPage = w
        .app
        .get_as(&format!("/v1/spaces/acme/accounts/{a}/assets"))
        .await;
    let adams: Vec<&str> = page.items.iter().map(|i| i.adam_id.as_str()).collect();
    assert_eq!(adams, [BOOK, APP]);
    assert_eq!(page.items[1].ledger.held, 3);
    assert_eq!(page.items[0].product_type.as_str(), "Book");
    assert!(!page.items[0].device_assignable);
}

/// A ledger of 14 assets across two accounts with different usage, no dispatcher (allocations
/// stay pending).
pub(crate) async fn catalog() -> (fixtures::World, Vec<String>) {
    let adams: Vec<String> = (1..=12).map(|i| format!("5000000{i:03}")).collect();
    let mut main: Vec<_> = adams
        .iter()
        .enumerate()
        .map(|(i, adam)| app(adam, (i % 5) as i64 + 1))
        .collect();
    main.push(book(BOOK, 2));
    main.push(vpp_broker::apple_sim::SeedAsset {
        pricing_param: PricingParam::Plus,
        ..app(&adams[0], 3)
    });
    let spare: Vec<_> = adams.iter().take(6).map(|adam| app(adam, 2)).collect();
    let w = fixtures::world_with(
        vec![
            location(U1, "Main", main),
            location(U2, "Spare", spare),
            location(U3, "Elsewhere", vec![app(APP, 1)]),
        ],
        |_| Options::default(),
        &[("Main", U1), ("Spare", U2)],
    )
    .await;
    // Allocate i licenses of the i-th asset (at most 4, and at most what the space owns).
    for (i, adam) in adams.iter().enumerate() {
        let owned = i % 5 + 1 + if i < 6 { 2 } else { 0 };
        for n in 0..i.min(4).min(owned) {
            w.api()
                .allocated(&json!({"asset": {"adam_id": adam},
                                   "subject": {"kind": "device", "id": format!("S{i}-{n}")}}))
                .await;
        }
    }
    (w, adams)
}

/// Every page of `path` (a list URL with a query), following `next_cursor`.
async fn walk(app: &TestApp, path: &str) -> Vec<AssetInventory> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}&cursor={c}"),
            None => path.to_owned(),
        };
        let page: AssetInventoryPage = app.get_as(&url).await;
        all.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(all.len() < 100, "paging does not end");
    }
    all
}

fn keys(items: &[AssetInventory]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|i| (i.adam_id.clone(), i.pricing_param.clone()))
        .collect()
}

#[tokio::test]
async fn assets_list_pages_sorts_and_filters() {
    let (w, adams) = catalog().await;
    let base = "/v1/spaces/acme/assets";
    // Default order: asset ascending, every asset once, across pages of 4.
    let all = walk(&w.app, &format!("{base}?limit=4")).await;
    let got = keys(&all);
    let mut expected: Vec<(String, String)> = adams
        .iter()
        .map(|a| (a.clone(), "STDQ".to_owned()))
        .chain([
            (BOOK.to_owned(), "STDQ".to_owned()),
            (adams[0].clone(), "PLUS".to_owned()),
        ])
        .collect();
    expected.sort();
    assert_eq!(got, expected, "every asset once, in order");
    let one: AssetInventoryPage = w.app.get_as(&format!("{base}?limit=200")).await;
    assert_eq!(keys(&one.items), expected);
    assert!(one.next_cursor.is_none());
    // Figures: the space sums the accounts.
    for item in &all {
        let total: i64 = item.accounts.iter().map(|a| a.apple.total).sum();
        let held: i64 = item.accounts.iter().map(|a| a.ledger.held).sum();
        let pending: i64 = item
            .accounts
            .iter()
            .map(|a| a.ledger.held_by_state.pending)
            .sum();
        assert_eq!(item.totals.apple.total, total);
        assert_eq!(item.totals.ledger.held, held);
        assert_eq!(pending, held, "nothing moved: every license is pending");
        assert_eq!(
            item.totals.ledger.available_now,
            total - held,
            "no reservation, no foreign licenses: {item:?}"
        );
    }
    let first = all.iter().find(|i| i.adam_id == adams[3]).unwrap();
    assert_eq!(first.totals.ledger.held, 3);

    // Usage: highest first, every asset once.
    let by_usage = walk(&w.app, &format!("{base}?limit=3&sort=usage")).await;
    assert_eq!(by_usage.len(), expected.len());
    assert_eq!(
        keys(&by_usage).into_iter().collect::<HashSet<_>>().len(),
        expected.len()
    );
    let usages: Vec<f64> = by_usage
        .iter()
        .map(|i| i.totals.ledger.usage_percent.unwrap_or(-1.0))
        .collect();
    assert!(usages.windows(2).all(|p| p[0] >= p[1]), "{usages:?}");
    assert!(usages[0] > 0.0);
    // Available: fewest first.
    let by_available = walk(&w.app, &format!("{base}?limit=5&sort=available")).await;
    assert_eq!(by_available.len(), expected.len());
    assert_eq!(
        keys(&by_available)
            .into_iter()
            .collect::<HashSet<_>>()
            .len(),
        expected.len()
    );
    let available: Vec<i64> = by_available
        .iter()
        .map(|i| i.totals.ledger.available_now)
        .collect();
    assert!(available.windows(2).all(|p| p[0] <= p[1]), "{available:?}");

    // Filters.
    let books = walk(&w.app, &format!("{base}?limit=5&product_type=Book")).await;
    assert_eq!(keys(&books), [(BOOK.to_owned(), "STDQ".to_owned())]);
    let exhausted = walk(&w.app, &format!("{base}?limit=5&exhausted=true")).await;
    assert!(!exhausted.is_empty());
    assert!(exhausted.iter().all(|i| i.totals.ledger.available_now == 0));
    let open = walk(
        &w.app,
        &format!("{base}?limit=5&exhausted=false&sort=available"),
    )
    .await;
    assert!(open.iter().all(|i| i.totals.ledger.available_now > 0));
    assert_eq!(exhausted.len() + open.len(), expected.len());
    let busy = walk(&w.app, &format!("{base}?limit=2&min_usage=50&sort=usage")).await;
    assert!(!busy.is_empty());
    assert!(
        busy.iter()
            .all(|i| i.totals.ledger.usage_percent.unwrap() >= 50.0)
    );
    let spare = w.accounts[1];
    let spares = walk(&w.app, &format!("{base}?limit=4&account_id={spare}")).await;
    assert_eq!(spares.len(), 6, "Spare owns six assets");
    for item in &spares {
        assert_eq!(item.accounts.len(), 1);
        assert_eq!(item.accounts[0].account_id, spare);
        assert_eq!(item.totals.apple.total, item.accounts[0].apple.total);
    }
    // The account's own list holds the same rows.
    let flat: AccountAssetPage = w
        .app
        .get_as(&format!(
            "/v1/spaces/acme/accounts/{spare}/assets?limit=200"
        ))
        .await;
    assert_eq!(flat.items.len(), 6);
    for (row, item) in flat.items.iter().zip(&spares) {
        assert_eq!(row.adam_id, item.adam_id);
        assert_eq!(row.ledger.held, item.accounts[0].ledger.held);
    }
    let flat_exhausted: AccountAssetPage = w
        .app
        .get_as(&format!(
            "/v1/spaces/acme/accounts/{spare}/assets?exhausted=true&sort=usage"
        ))
        .await;
    assert!(
        flat_exhausted
            .items
            .iter()
            .all(|r| r.ledger.available_now == 0)
    );
}

#[tokio::test]
async fn assets_refuse_bad_input_and_other_spaces_ids() {
    let (w, adams) = catalog().await;
    w.app.space("other").await;
    let elsewhere = w
        .app
        .client("other")
        .attach("Elsewhere", &sim::stoken(&w.sim, U3))
        .await
        .id;
    let base = "/v1/spaces/acme/assets";
    let page: AssetInventoryPage = w.app.get_as(&format!("{base}?limit=2")).await;
    let asset_cursor = page.next_cursor.unwrap();
    let page: AssetInventoryPage = w.app.get_as(&format!("{base}?limit=2&sort=usage")).await;
    let usage_cursor = page.next_cursor.unwrap();
    let assignments: AssignmentPage = w.app.get_as("/v1/spaces/acme/assignments?limit=1").await;
    let assignment_cursor = assignments.next_cursor.unwrap();
    let spare = w.accounts[1];
    let forged = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"l":"assets:acme:usage","k":["1e400","1","STDQ"]}"#)
    };
    for query in [
        "foo=1".to_owned(),
        "sort=price".to_owned(),
        "min_usage=101".to_owned(),
        "min_usage=-1".to_owned(),
        "limit=0".to_owned(),
        "product_type=Movie".to_owned(),
        "exhausted=maybe".to_owned(),
        "cursor=%%%".to_owned(),
        format!("cursor={usage_cursor}"),
        format!("sort=available&cursor={asset_cursor}"),
        format!("cursor={assignment_cursor}"),
        format!("sort=usage&cursor={forged}"),
    ] {
        let resp = w
            .app
            .req(Method::GET, &format!("{base}?{query}"))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert_eq!(status, 400, "{query}");
        let problem: serde_json::Value = resp.json().await.unwrap();
        assert!(
            problem["type"].as_str().unwrap().contains("invalid"),
            "{query}: {problem}"
        );
    }
    // The account list's cursor is bound to its account.
    let acct_page: AccountAssetPage = w
        .app
        .get_as(&format!("/v1/spaces/acme/accounts/{spare}/assets?limit=1"))
        .await;
    let resp = w
        .app
        .req(
            Method::GET,
            &format!(
                "/v1/spaces/acme/accounts/{}/assets?cursor={}",
                w.accounts[0],
                acct_page.next_cursor.unwrap()
            ),
        )
        .send()
        .await
        .unwrap();
    expect_problem(resp, 400, "invalid-parameter").await;

    for path in [
        format!("{base}/100000000/STDQ"),
        format!("{base}/{}/PLUS", adams[1]),
        format!("{base}/{APP}/STDQ"),
        format!("{base}?account_id={elsewhere}"),
        format!("/v1/spaces/acme/accounts/{elsewhere}/assets"),
        format!("/v1/spaces/acme/accounts/{}/assets", Uuid::now_v7()),
        "/v1/spaces/nowhere/assets".to_owned(),
    ] {
        let resp = w.app.req(Method::GET, &path).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }
    for path in [
        format!("{base}/not-a-number/STDQ"),
        format!("{base}/{}/GOLD", adams[1]),
    ] {
        let resp = w.app.req(Method::GET, &path).send().await.unwrap();
        expect_problem(resp, 400, "invalid-parameter").await;
    }
    // The other space sees its own asset, not acme's.
    let other: AssetInventoryPage = w.app.get_as("/v1/spaces/other/assets").await;
    assert_eq!(keys(&other.items), [(APP.to_owned(), "STDQ".to_owned())]);
    let detail: AssetDetail = w
        .app
        .get_as(&format!("/v1/spaces/acme/assets/{}/PLUS", adams[0]))
        .await;
    assert_eq!(detail.asset.totals.apple.total, 3);
}

/// Writes `per_day` active assignments of `adam` for each of the last `days` days (today
/// included) straight into the ledger, with their subjects and the asset row's `held`.
async fn backdate(app: &TestApp, account: Uuid, adam: &str, days: i32, per_day: i32) {
    let mut conn = app.db.connect().await;
    diesel::sql_query(
        "WITH s AS (
             INSERT INTO subjects (id, space_id, kind, external_id)
             SELECT gen_random_uuid(), 'acme', 'device', $2 || '-' || g
               FROM generate_series(0, $3 * $4 - 1) g
          RETURNING id, external_id
         )
         INSERT INTO assignments (id, space_id, account_id, adam_id, pricing_param, subject_id,
                                  license_type, state, rule, requested_by, created_at, updated_at)
         SELECT gen_random_uuid(), 'acme', $1, $2, 'STDQ', s.id, 'device', 'active', 'priority',
                'test', now() - ((split_part(s.external_id, '-', 2)::int / $4) * interval '1 day'),
                now()
           FROM s",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .bind::<diesel::sql_types::Text, _>(adam)
    .bind::<diesel::sql_types::Integer, _>(days)
    .bind::<diesel::sql_types::Integer, _>(per_day)
    .execute(&mut conn)
    .await
    .unwrap();
    diesel::sql_query("UPDATE assets SET held = held + $3 WHERE account_id = $1 AND adam_id = $2")
        .bind::<diesel::sql_types::Uuid, _>(account)
        .bind::<diesel::sql_types::Text, _>(adam)
        .bind::<diesel::sql_types::Integer, _>(days * per_day)
        .execute(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn asset_detail_forecasts_exhaustion_from_the_daily_history() {
    const STEADY: &str = "6000000001";
    const NEW: &str = "6000000002";
    const QUIET: &str = "6000000003";
    let w = fixtures::world_with(
        vec![location(
            U1,
            "Main",
            vec![app(STEADY, 1000), app(NEW, 100), app(QUIET, 10)],
        )],
        |_| Options::default(),
        &[("Main", U1)],
    )
    .await;
    let a = w.accounts[0];
    // 5 a day for 20 days: a flat rate of 5, 900 left, 180 days.
    backdate(&w.app, a, STEADY, 20, 5).await;
    let d = asset(&w.app, STEADY).await;
    assert_eq!(d.asset.totals.ledger.held, 100);
    assert_eq!(d.asset.totals.ledger.held_by_state.active, 100);
    assert_eq!(d.asset.totals.ledger.available_now, 900);
    assert_eq!(d.daily.len(), 30);
    let moved: Vec<i64> = d.daily.iter().map(|x| x.allocations).collect();
    assert_eq!(&moved[10..], &[5; 20], "{moved:?}");
    assert_eq!(&moved[..10], &[0; 10]);
    let f = &d.forecast;
    assert_eq!(f.history_days, 20);
    assert_eq!(f.net_rate_per_day, Some(5.0));
    assert_eq!(f.days_until_exhausted, Some(180.0), "{f:?}");
    assert_eq!(
        f.exhausted_on,
        Some(chrono::Utc::now().date_naive() + chrono::Duration::days(180))
    );
    assert!(f.reason.is_none());

    // Three days of history are not enough.
    backdate(&w.app, a, NEW, 3, 4).await;
    let d = asset(&w.app, NEW).await;
    assert_eq!(d.forecast.history_days, 3);
    assert_eq!(d.forecast.days_until_exhausted, None);
    assert!(d.forecast.reason.as_deref().unwrap().contains("7 days"));

    // No history at all; then revocations keeping up with allocations.
    let d = asset(&w.app, QUIET).await;
    assert_eq!(
        (d.forecast.history_days, d.forecast.net_rate_per_day),
        (0, None)
    );
    assert!(d.forecast.reason.is_some());
    backdate(&w.app, a, QUIET, 8, 1).await;
    let mut conn = w.app.db.connect().await;
    diesel::sql_query(
        "UPDATE assignments SET state = 'revoked', revocation_requested_at = created_at,
                revoked_by = 'test', revocation_reason = 'test'
          WHERE adam_id = $1",
    )
    .bind::<diesel::sql_types::Text, _>(QUIET)
    .execute(&mut conn)
    .await
    .unwrap();
    diesel::sql_query("UPDATE assets SET held = 0 WHERE adam_id = $1")
        .bind::<diesel::sql_types::Text, _>(QUIET)
        .execute(&mut conn)
        .await
        .unwrap();
    let d = asset(&w.app, QUIET).await;
    assert_eq!(d.forecast.history_days, 8);
    assert_eq!(d.forecast.net_rate_per_day, Some(0.0));
    assert_eq!(d.forecast.days_until_exhausted, None);
    assert!(
        d.forecast
            .reason
            .as_deref()
            .unwrap()
            .contains("not positive")
    );
    let revoked: i64 = d.daily.iter().map(|x| x.revocations).sum();
    assert_eq!(revoked, 8);
}

#[tokio::test]
async fn assets_counts_match_the_simulator_after_a_storm_of_allocations_and_revocations() {
    let w = fixtures::world(
        vec![
            location(U1, "Main", vec![app(APP, 12)]),
            location(U2, "Spare", vec![app(APP, 10)]),
        ],
        &[("Main", U1), ("Spare", U2)],
    )
    .await;
    let api = w.api();
    // 18 allocations at once, then 7 revocations at once.
    let mut tasks = Vec::new();
    for i in 0..18 {
        let (url, token) = (
            w.app.url("/v1/spaces/acme/assignments"),
            crate::support::app::admin_token(),
        );
        let http = w.app.http.clone();
        tasks.push(tokio::spawn(async move {
            let resp = http
                .post(url)
                .bearer_auth(token)
                .json(&device(&format!("STORM-{i:02}")))
                .send()
                .await
                .unwrap();
            crate::support::read::<vpp_broker::api::assignments::Allocation>(resp, 201).await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().assignment().id);
    }
    for id in &ids {
        assert_eq!(api.final_state(*id).await.state.as_str(), "active");
    }
    let mut revocations = Vec::new();
    for id in ids.iter().take(7) {
        let (url, token) = (
            w.app.url(&format!("/v1/spaces/acme/assignments/{id}")),
            crate::support::app::admin_token(),
        );
        let http = w.app.http.clone();
        revocations.push(tokio::spawn(async move {
            http.delete(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for r in revocations {
        assert_eq!(r.await.unwrap(), 202);
    }
    for id in ids.iter().take(7) {
        eventually(
            "the revocation finished",
            async || api.assignment(*id).await.state,
            |s| s.as_str() == "revoked",
        )
        .await;
    }
    let seen = asset(&w.app, APP).await;
    assert_eq!(seen.asset.totals.ledger.held, 11);
    assert_eq!(seen.asset.totals.ledger.held_by_state.active, 11);
    assert_eq!(seen.asset.totals.ledger.held_by_state.revoking, 0);
    assert_eq!(seen.asset.totals.ledger.available_now, 22 - 11);
    for (account, u_id) in w.accounts.iter().zip([U1, U2]) {
        let mine = figures(&seen.asset, *account);
        let at_apple = w.sim.location(u_id).await.unwrap();
        let held_there = at_apple
            .assignments
            .iter()
            .filter(|a| a.adam_id == APP)
            .count() as i64;
        assert_eq!(mine.ledger.held_by_state.active, held_there, "{u_id}");
        assert_eq!(mine.ledger.held, held_there, "{u_id}");
        let asset_there = at_apple.assets.iter().find(|a| a.adam_id == APP).unwrap();
        assert_eq!(Some(mine.apple.total), asset_there.total_count, "{u_id}");
        assert_eq!(
            mine.ledger.available_now,
            asset_there.total_count.unwrap() - held_there,
            "{u_id}"
        );
    }
    let today = seen.daily.last().unwrap();
    assert_eq!((today.allocations, today.revocations), (18, 7));
}

#[tokio::test]
async fn accounts_allocation_skips_have_nothing_available_now() {
    const OWNED: &str = "7000000001";
    let w = fixtures::world_with(
        vec![
            location(U1, "Main", vec![app(OWNED, 5)]),
            location(U2, "Spare", vec![app(OWNED, 4)]),
            location(U3, "Third", vec![app(OWNED, 3)]),
        ],
        |_| Options::default(),
        &[("Main", U1), ("Spare", U2), ("Third", U3)],
    )
    .await;
    let (main, spare, third) = (w.accounts[0], w.accounts[1], w.accounts[2]);
    let mut conn = w.app.db.connect().await;
    // Spare's token expired and it skips when unusable; Third serves only assets with a policy.
    diesel::sql_query(
        "UPDATE accounts SET token_expires_at = now() - interval '1 day', when_unusable = 'skip'
          WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(spare)
    .execute(&mut conn)
    .await
    .unwrap();
    diesel::sql_query("UPDATE accounts SET new_assets_for_everyone = false WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(third)
        .execute(&mut conn)
        .await
        .unwrap();
    let d = asset(&w.app, OWNED).await;
    let s = figures(&d.asset, spare);
    assert_eq!(s.account_status.as_str(), "expired");
    assert!(!s.allocatable);
    assert!(
        s.not_allocatable_reason
            .as_deref()
            .unwrap()
            .contains("expired")
    );
    assert_eq!((s.apple.total, s.ledger.available_now), (4, 0));
    let t = figures(&d.asset, third);
    assert!(!t.allocatable);
    assert!(
        t.not_allocatable_reason
            .as_deref()
            .unwrap()
            .contains("policy")
    );
    assert_eq!(t.ledger.available_now, 0);
    assert_eq!(figures(&d.asset, main).ledger.available_now, 5);
    assert_eq!(d.asset.totals.ledger.available_now, 5);
    // The store's filter agrees with the figures shown.
    let open: AssetInventoryPage = w
        .app
        .get_as(&format!(
            "/v1/spaces/acme/assets?exhausted=false&account_id={main}"
        ))
        .await;
    assert_eq!(open.items.len(), 1);
    let none: AssetInventoryPage = w
        .app
        .get_as(&format!(
            "/v1/spaces/acme/assets?exhausted=true&account_id={spare}"
        ))
        .await;
    assert_eq!(keys(&none.items), [(OWNED.to_owned(), "STDQ".to_owned())]);
    let none: AssetInventoryPage = w
        .app
        .get_as(&format!(
            "/v1/spaces/acme/assets?exhausted=true&account_id={third}"
        ))
        .await;
    assert_eq!(none.items.len(), 1, "no policy: Third serves nothing");
    // With a policy, Third serves the asset.
    let resp = w
        .api()
        .put_policy(OWNED, "STDQ", &json!({"fcfs_groups": ["staff"]}))
        .await;
    assert_eq!(resp.status(), 201);
    let d = asset(&w.app, OWNED).await;
    let t = figures(&d.asset, third);
    assert!(t.allocatable);
    assert_eq!(t.ledger.available_now, 3);
    assert_eq!(d.asset.totals.ledger.available_now, 8);
    let open: AssetInventoryPage = w
        .app
        .get_as(&format!(
            "/v1/spaces/acme/assets?exhausted=false&account_id={third}"
        ))
        .await;
    assert_eq!(open.items.len(), 1);
}
