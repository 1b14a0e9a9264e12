//! The device and user views (`GET …/devices/{serial}`, `GET …/users/{client_user_id}`) over real
//! HTTP with the simulator: the stored facts as the allocation requests gave them, live and past
//! licenses with who asked, which rule decided and who revoked and why, the user's licenses that
//! cover a device (A7), the cap on past licenses, and the 400/403/404 answers.

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;
use vpp_broker::api::assignments::Allocation;
use vpp_broker::api::subjects::{Device, HeldLicense, User};
use vpp_broker::apple::types::{AssetKey, PricingParam};

use crate::support::app::Options;
use crate::support::fixtures::{self, APP, BOOK, World};
use crate::support::sim::{app, book, location};
use crate::support::{Allocated, expect_problem, read, token};

const U1: &str = "3000000001";
/// A second app, so a device can hold two live licenses.
const APP2: &str = "1000000002";

async fn world() -> World {
    fixtures::world(
        vec![location(
            U1,
            "Library",
            vec![app(APP, 10), app(APP2, 10), book(BOOK, 10)],
        )],
        &[("Main", U1)],
    )
    .await
}

/// A world whose dispatcher never runs: licenses stay `pending`, and revoking one drops it in
/// the ledger at once (no Apple call), so histories are quick to build.
async fn still_world() -> World {
    fixtures::world_with(
        vec![location(U1, "Library", vec![app(APP, 10)])],
        |_| Options::default(),
        &[("Main", U1)],
    )
    .await
}

async fn device_view(w: &World, serial: &str, query: &str) -> Device {
    w.api().get(&format!("/devices/{serial}{query}")).await
}

async fn user_view(w: &World, id: &str) -> User {
    w.api().get(&format!("/users/{id}")).await
}

fn assets(licenses: &[HeldLicense]) -> Vec<(&str, &str)> {
    licenses
        .iter()
        .map(|l| (l.asset.adam_id.as_str(), l.license_type.as_str()))
        .collect()
}

#[tokio::test]
async fn a_device_shows_its_facts_its_live_and_revoked_licenses_and_who_revoked_why() {
    let w = world().await;
    let api = w.api();
    let first = api
        .allocated(&json!({
            "asset": {"adam_id": APP},
            "subject": {"kind": "device", "id": "S1", "user": "u1", "groups": ["sales", "ipads"]},
            "reason": "enrolment"
        }))
        .await;
    assert_eq!(api.final_state(first.id()).await.state.as_str(), "active");
    let resp = api.revoke(first.id(), "?reason=device%20wiped").await;
    assert_eq!(resp.status(), 202);
    assert_eq!(api.final_state(first.id()).await.state.as_str(), "revoked");
    // The next request changes the stored facts: the view shows the last ones given.
    let again = api
        .allocated(&json!({
            "asset": {"adam_id": APP},
            "subject": {"kind": "device", "id": "S1", "user": "u1", "groups": ["sales"]},
            "reason": "re-enrolment"
        }))
        .await;
    let other = api
        .allocated(&json!({"asset": {"adam_id": APP2}, "subject": {"kind": "device", "id": "S1"}}))
        .await;

    let d = device_view(&w, "S1", "").await;
    assert_eq!(
        (d.serial.as_str(), d.space.as_str(), d.user.as_deref()),
        ("S1", "acme", Some("u1"))
    );
    assert_eq!(d.groups, ["sales"]);
    assert!(!d.shared_ipad);
    assert!(d.first_seen <= first.assignment().created_at, "{d:?}");
    // `updated_at` moved when the second request changed the groups, and stayed when the third
    // repeated the facts (it named no user or groups: the stored ones are kept).
    assert!(d.updated_at > first.assignment().created_at, "{d:?}");
    assert!(d.updated_at < other.assignment().created_at, "{d:?}");
    assert!(
        d.user_licenses.is_empty(),
        "u1 holds no user license: {d:?}"
    );

    // Live: both, oldest first, with asset, account, rule, who asked and why.
    let live = &d.licenses.live;
    assert_eq!(
        live.iter().map(|l| l.assignment_id).collect::<Vec<_>>(),
        [again.id(), other.id()]
    );
    let l = &live[0];
    assert_eq!(
        (l.asset.adam_id.as_str(), l.asset.pricing_param.as_str()),
        (APP, "STDQ")
    );
    assert_eq!(l.asset.product_type.as_deref(), Some("App"));
    assert_eq!(l.account.id, w.accounts[0]);
    assert_eq!(l.account.name.as_deref(), Some("Main"));
    assert_eq!(l.license_type.as_str(), "device");
    assert_eq!(l.rule.as_str(), "priority");
    assert_eq!(
        (l.requested_by.as_str(), l.reason.as_str()),
        ("test-caller", "re-enrolment")
    );
    assert!(l.revocation.is_none());
    assert!(["pending", "associating", "active"].contains(&l.state.as_str()));

    // Past: the revoked one, with who revoked, why and when.
    assert_eq!(d.licenses.past_total, 1);
    let p = &d.licenses.past[0];
    assert_eq!(p.assignment_id, first.id());
    assert_eq!(p.state.as_str(), "revoked");
    assert_eq!(
        (p.requested_by.as_str(), p.reason.as_str()),
        ("test-caller", "enrolment")
    );
    let r = p.revocation.as_ref().expect("revocation record");
    assert_eq!(
        (r.by.as_str(), r.reason.as_str()),
        ("test-caller", "device wiped")
    );
    assert!(
        r.requested_at >= p.created_at && r.requested_at <= p.updated_at,
        "{p:?}"
    );

    // It agrees with the assignment resource.
    let a = api.assignment(first.id()).await;
    assert_eq!((a.created_at, a.updated_at), (p.created_at, p.updated_at));
}

#[tokio::test]
async fn a_user_shows_its_licenses_and_devices_and_covers_its_devices_but_not_shared_ipads() {
    let w = world().await;
    let api = w.api();
    let app_license = api
        .allocated(&json!({
            "asset": {"adam_id": APP},
            "subject": {"kind": "user", "id": "u1", "groups": ["staff"]},
            "reason": "catalog install"
        }))
        .await;
    let book_license = api
        .allocated(&json!({"asset": {"adam_id": BOOK}, "subject": {"kind": "user", "id": "u1"}}))
        .await;
    // A7: the user's license covers the device; the device holds none of its own.
    let covered: Allocation = read(
        api.allocate(&json!({
            "asset": {"adam_id": APP},
            "subject": {"kind": "device", "id": "D1", "user": "u1"}
        }))
        .await,
        200,
    )
    .await;
    assert_eq!(covered.rule.as_str(), "user_license_covers_device");
    let ipad = api
        .allocated(&json!({
            "asset": {"adam_id": APP},
            "subject": {"kind": "device", "id": "IPAD", "user": "u1", "shared_ipad": true}
        }))
        .await;
    // Another user's device is not u1's.
    api.allocated(&json!({
        "asset": {"adam_id": APP2},
        "subject": {"kind": "device", "id": "D9", "user": "u9"}
    }))
    .await;

    let u = user_view(&w, "u1").await;
    assert_eq!((u.id.as_str(), u.space.as_str()), ("u1", "acme"));
    assert_eq!(u.groups, ["staff"]);
    assert_eq!(u.devices, ["D1", "IPAD"]);
    assert_eq!(u.devices_total, 2);
    assert_eq!(assets(&u.licenses.live), [(APP, "user"), (BOOK, "user")]);
    assert_eq!(u.licenses.live[0].assignment_id, app_license.id());
    assert_eq!(u.licenses.live[1].assignment_id, book_license.id());
    assert_eq!(u.licenses.live[0].reason, "catalog install");
    assert_eq!(
        u.licenses.live[1].asset.product_type.as_deref(),
        Some("Book")
    );
    assert_eq!((u.licenses.past.len(), u.licenses.past_total), (0, 0));

    let d1 = device_view(&w, "D1", "").await;
    assert!(d1.licenses.live.is_empty(), "{d1:?}");
    assert_eq!(assets(&d1.user_licenses), [(APP, "user"), (BOOK, "user")]);
    assert_eq!(d1.user_licenses[0].assignment_id, app_license.id());

    // A Shared iPad takes its own device license; its user's licenses do not cover it.
    let shared = device_view(&w, "IPAD", "").await;
    assert!(shared.shared_ipad);
    assert_eq!(shared.user.as_deref(), Some("u1"));
    assert!(shared.user_licenses.is_empty(), "{shared:?}");
    assert_eq!(assets(&shared.licenses.live), [(APP, "device")]);
    assert_eq!(shared.licenses.live[0].assignment_id, ipad.id());
}

#[tokio::test]
async fn past_licenses_are_capped_newest_first_with_the_total_and_the_list_has_them_all() {
    let w = still_world().await;
    let api = w.api();
    let mut revoked: Vec<Uuid> = Vec::new();
    for i in 0..102 {
        let id = api.allocated(&fixtures::device("S1")).await.id();
        let resp = api.revoke(id, &format!("?reason=round%20{i}")).await;
        // Still pending (no dispatcher): dropped in the ledger at once.
        assert_eq!(resp.status(), 200);
        revoked.push(id);
    }
    let live = api.allocated(&fixtures::device("S1")).await.id();
    let newest_first: Vec<Uuid> = revoked.iter().rev().copied().collect();

    let d = device_view(&w, "S1", "").await;
    assert_eq!(d.licenses.live.len(), 1);
    assert_eq!(d.licenses.live[0].assignment_id, live);
    assert_eq!(d.licenses.past_total, 102);
    let past: Vec<Uuid> = d.licenses.past.iter().map(|l| l.assignment_id).collect();
    assert_eq!(past, newest_first[..100]);
    assert_eq!(
        d.licenses.past[0].revocation.as_ref().unwrap().reason,
        "round 101"
    );

    let few = device_view(&w, "S1", "?past_limit=3").await;
    assert_eq!(
        few.licenses
            .past
            .iter()
            .map(|l| l.assignment_id)
            .collect::<Vec<_>>(),
        newest_first[..3]
    );
    assert_eq!(few.licenses.past_total, 102);
    let none = device_view(&w, "S1", "?past_limit=0").await;
    assert!(none.licenses.past.is_empty());
    assert_eq!(
        (none.licenses.past_total, none.licenses.live.len()),
        (102, 1)
    );
    let all = device_view(&w, "S1", "?past_limit=200").await;
    assert_eq!(all.licenses.past.len(), 102);

    // The assignment list pages through every one of the subject's licenses.
    let page = api
        .assignments("subject_kind=device&subject_id=S1&limit=200")
        .await;
    let mut listed: Vec<Uuid> = page.items.iter().map(|a| a.id).collect();
    listed.retain(|id| *id != live);
    assert_eq!(listed, revoked);
}

#[tokio::test]
async fn unknown_and_other_spaces_subjects_are_404_and_malformed_ids_400() {
    let w = world().await;
    w.api().allocated(&fixtures::device("S1")).await;
    w.api()
        .allocated(&json!({"asset": {"adam_id": BOOK}, "subject": {"kind": "user", "id": "u1"}}))
        .await;
    w.app.space("other").await;
    let get = |path: String, token: String| {
        let app = &w.app;
        async move { app.req_as(Method::GET, &path, &token).send().await.unwrap() }
    };
    let admin = crate::support::app::admin_token();
    // Never seen here, or seen only in another space.
    for path in [
        "/v1/spaces/acme/devices/NOPE",
        "/v1/spaces/acme/users/nobody",
        "/v1/spaces/other/devices/S1",
        "/v1/spaces/other/users/u1",
        // A device and a user are different subjects.
        "/v1/spaces/acme/users/S1",
        "/v1/spaces/acme/devices/u1",
    ] {
        let body = expect_problem(get(path.into(), admin.clone()).await, 404, "not-found").await;
        assert!(body["detail"].is_string(), "{path}: {body}");
    }
    // A caller granted only the other space: 404 for acme's subjects, as for any acme id.
    let outsider = token("licenses:read", &["other"]);
    for path in ["/v1/spaces/acme/devices/S1", "/v1/spaces/acme/users/u1"] {
        expect_problem(get(path.into(), outsider.clone()).await, 404, "not-found").await;
    }
    // Malformed ids (the allocation's rules: 1-256 characters, not blank) and parameters.
    let long = "X".repeat(257);
    for path in [
        "/v1/spaces/acme/devices/%20%20".to_owned(),
        format!("/v1/spaces/acme/devices/{long}"),
        "/v1/spaces/acme/users/%20".to_owned(),
        format!("/v1/spaces/acme/users/{long}"),
        "/v1/spaces/acme/devices/S1?past_limit=201".to_owned(),
        "/v1/spaces/acme/devices/S1?past_limit=-1".to_owned(),
        "/v1/spaces/acme/users/u1?sort=asset".to_owned(),
        "/v1/spaces/ACME/devices/S1".to_owned(),
    ] {
        expect_problem(
            get(path.clone(), admin.clone()).await,
            400,
            "invalid-parameter",
        )
        .await;
    }
    // 256 characters are fine (and unknown here).
    let longest = "X".repeat(256);
    expect_problem(
        get(format!("/v1/spaces/acme/devices/{longest}"), admin.clone()).await,
        404,
        "not-found",
    )
    .await;
}

#[tokio::test]
async fn reading_a_device_or_user_needs_the_licenses_read_scope() {
    let w = world().await;
    w.api().allocated(&fixtures::device("S1")).await;
    w.api()
        .allocated(&json!({"asset": {"adam_id": BOOK}, "subject": {"kind": "user", "id": "u1"}}))
        .await;
    let nobody = token("something:else", &["acme"]);
    let reader = token("licenses:read", &["acme"]);
    for path in ["/v1/spaces/acme/devices/S1", "/v1/spaces/acme/users/u1"] {
        let resp = w
            .app
            .req_as(Method::GET, path, &nobody)
            .send()
            .await
            .unwrap();
        let body = expect_problem(resp, 403, "forbidden").await;
        assert!(
            body["detail"].as_str().unwrap().contains("licenses:read"),
            "{body}"
        );
        let resp = w
            .app
            .req_as(Method::GET, path, &reader)
            .send()
            .await
            .unwrap();
        let v: Value = read(resp, 200).await;
        assert_eq!(
            v["licenses"]["live"].as_array().map(Vec::len),
            Some(1),
            "{v}"
        );
    }
    let resp = w
        .app
        .http
        .get(w.app.url("/v1/spaces/acme/devices/S1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

/// H1: a device's history outlives its account; the view then names the account by id only.
#[tokio::test]
async fn failed_licenses_show_apples_error_and_history_outlives_a_deleted_account() {
    let w = world().await;
    let api = w.api();
    let revoked = api.allocated(&fixtures::device("S1")).await.id();
    api.final_state(revoked).await;
    assert_eq!(api.revoke(revoked, "?reason=lost").await.status(), 202);
    assert_eq!(api.final_state(revoked).await.state.as_str(), "revoked");
    // Apple has no license left (9709) and no other account can serve: the next one fails.
    w.sim
        .set_asset_total(U1, &AssetKey::new(APP, PricingParam::Stdq), 0)
        .await
        .unwrap();
    let failed = api.allocated(&fixtures::device("S1")).await.id();
    assert_eq!(api.final_state(failed).await.state.as_str(), "failed");

    let d = device_view(&w, "S1", "").await;
    assert!(d.licenses.live.is_empty(), "{d:?}");
    let past: Vec<Uuid> = d.licenses.past.iter().map(|l| l.assignment_id).collect();
    assert_eq!(past, [failed, revoked], "newest first");
    assert_eq!(d.licenses.past_total, 2);
    let error = d.licenses.past[0].error.as_ref().expect("Apple's error");
    assert_eq!(error.number, Some(9709), "{error:?}");
    assert!(d.licenses.past[1].error.is_none());

    let resp = w
        .app
        .req(
            Method::DELETE,
            &format!("/v1/spaces/acme/accounts/{}", w.accounts[0]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let after = device_view(&w, "S1", "").await;
    assert_eq!(after.licenses.past_total, 2);
    for (before, after) in d.licenses.past.iter().zip(&after.licenses.past) {
        assert_eq!(after.assignment_id, before.assignment_id);
        assert_eq!(after.account.id, w.accounts[0]);
        assert_eq!(after.account.name, None, "the account is gone: {after:?}");
        assert_eq!(
            after.asset.product_type, None,
            "its asset rows too: {after:?}"
        );
        assert_eq!(
            (after.state, &after.revocation.as_ref().map(|r| &r.reason)),
            (before.state, &before.revocation.as_ref().map(|r| &r.reason))
        );
    }
}
