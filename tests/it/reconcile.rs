//! Keeping the ledger true to Apple, the allocation side (issue 13; docs/sync.md): a subject
//! Apple already lists is counted once at allocation (the double count), and Reconcile (T6)
//! lists the licenses no longer used and revokes them, against PostgreSQL and the simulator.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::json;
use uuid::Uuid;
use vpp_broker::apple::types::PricingParam;
use vpp_broker::apple_sim::{NewAssignments, SeedAssignment};
use vpp_broker::config::ReconcileArgs;
use vpp_broker::db::schema::{apple_assignments, assets, assignments};
use vpp_broker::dispatch::{Ctx, sync as workers};
use vpp_broker::domain::origin::Origin;
use vpp_broker::reconcile::{self, ReconcileCriterion};

use crate::support::app::fast_dispatch;
use crate::support::fixtures::{self, APP, account_activity, device, sim_serials};
use crate::support::sim::{self, app, location};
use crate::support::{TestApp, expect_problem};

const U1: &str = "2000000001";
const U2: &str = "2000000002";

/// `(held, foreign_assigned)` of [`APP`] in `account`.
async fn pool(app: &TestApp, account: Uuid) -> (i32, i32) {
    let mut conn = app.db.connect().await;
    assets::table
        .filter(assets::account_id.eq(account))
        .filter(assets::adam_id.eq(APP))
        .select((assets::held, assets::foreign_assigned))
        .first(&mut conn)
        .await
        .unwrap()
}

/// Runs every queued sync of `app` to its end (the server runs no sync worker).
async fn drain_syncs(app: &TestApp) -> usize {
    let ctx = Ctx::new(
        app.state.clone(),
        vpp_broker::dispatch::Settings {
            database_url: app.db.url.clone(),
            ..fast_dispatch("")
        },
    );
    workers::drain_syncs(&ctx, std::time::Duration::from_secs(60))
        .await
        .expect("syncs drain")
}

/// The targets the sync mirrored for `account`, sorted.
async fn mirrored(app: &TestApp, account: Uuid) -> Vec<String> {
    let mut conn = app.db.connect().await;
    apple_assignments::table
        .filter(apple_assignments::account_id.eq(account))
        .order(apple_assignments::target)
        .select(apple_assignments::target)
        .load(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_subject_apple_already_lists_is_counted_once_at_allocation() {
    // Two licenses at Apple; one is already X's (another MDM, before the account was attached).
    let sim = sim::start(vec![location(U1, "Library A", vec![app(APP, 2)])]).await;
    sim.add_assignments(
        U1,
        &NewAssignments {
            assignments: vec![SeedAssignment {
                adam_id: APP.into(),
                pricing_param: PricingParam::Stdq,
                serial_number: Some("X".into()),
                client_user_id: None,
            }],
            generated_assignments: Vec::new(),
        },
    )
    .await
    .unwrap();
    let app = TestApp::start_opts(crate::support::app::Options {
        apple_base_url: sim.base_url(),
        ..fixtures::dispatching(&sim)
    })
    .await;
    app.space("acme").await;
    let api = app.client("acme");
    let a = api.attach("A", &sim::stoken(&sim, U1)).await.id;
    // The full sync queued at attach reads Apple: it lists X; that license is not the ledger's.
    assert!(drain_syncs(&app).await >= 1);
    assert_eq!(mirrored(&app, a).await, ["X"]);
    assert_eq!(
        pool(&app, a).await,
        (0, 1),
        "the sync counted X's license elsewhere"
    );

    // X is served from the license it already has: no free license needed, none used.
    let x = api.allocated(&device("X")).await;
    assert_eq!(x.account_id, a);
    assert_eq!(pool(&app, a).await, (1, 0), "moved from elsewhere to held");
    let x_id = x.assignment.unwrap().id;
    assert_eq!(api.final_state(x_id).await.state.as_str(), "active");
    let activity = account_activity(&app, a).await;
    assert!(
        activity
            .iter()
            .any(|(action, d)| action == "assignment.allocated" && d["already_at_apple"] == true),
        "{activity:?}"
    );
    // Another device still gets the remaining license; a third finds none.
    let y = api.allocated(&device("Y")).await;
    assert_eq!(y.account_id, a);
    api.final_state(y.assignment.unwrap().id).await;
    assert_eq!(pool(&app, a).await, (2, 0));
    let refused = api.allocate(&device("Z")).await;
    expect_problem(refused, 409, "no-license-available").await;
    // Apple holds exactly the two licenses it owns: X's (re-associating it was a no-op) and Y's.
    assert_eq!(sim_serials(&sim, U1).await, ["X", "Y"]);
    let snapshot = sim.location(U1).await.unwrap();
    let asset = snapshot.assets.iter().find(|s| s.adam_id == APP).unwrap();
    assert_eq!(asset.assigned_count, Some(2), "{asset:?}");
}

/// Reconcile's world: account A (priority 1, 4 licenses) and B (priority 2, a distribution
/// list); D1, G1, G2, R1 hold A's licenses, F1 and F2 fall back to B.
struct World {
    w: fixtures::World,
    a: Uuid,
    b: Uuid,
    ids: std::collections::HashMap<&'static str, Uuid>,
}

async fn reconcile_world() -> World {
    let w = fixtures::world(
        vec![
            location(U1, "Library A", vec![app(APP, 4)]),
            location(U2, "Library B", vec![app(APP, 5)]),
        ],
        &[("A", U1), ("B", U2)],
    )
    .await;
    let (a, b) = (w.accounts[0], w.accounts[1]);
    let api = w.api();
    api.update_account(
        b,
        &json!({"distribution_list": [{"kind": "device", "value": "F1"}, {"kind": "group", "value": "fb"}]}),
    )
    .await;
    let mut ids = std::collections::HashMap::new();
    for (serial, groups) in [
        ("D1", vec!["teachers"]),
        ("G1", vec!["staff"]),
        ("G2", vec!["staff", "teachers"]),
        ("R1", vec![]),
        ("F1", vec!["teachers"]),
        ("F2", vec!["teachers", "fb"]),
    ] {
        let got = api
            .allocated(&json!({"asset": {"adam_id": APP},
                               "subject": {"kind": "device", "id": serial, "groups": groups}}))
            .await;
        let expected = if serial.starts_with('F') { b } else { a };
        assert_eq!(got.account_id, expected, "{serial}: {got:?}");
        let id = got.assignment.unwrap().id;
        api.final_state(id).await;
        ids.insert(serial, id);
    }
    World { w, a, b, ids }
}

fn settings(unseen_days: Option<u64>) -> ReconcileArgs {
    ReconcileArgs {
        reconcile_unseen_days: unseen_days,
        ..ReconcileArgs::default()
    }
}

#[tokio::test]
async fn t6_reconcile_lists_licenses_no_longer_used_by_criterion_in_order() {
    let World { w, a, b, ids } = reconcile_world().await;
    let api = w.api();
    let mut conn = w.app.db.connect().await;
    // Nothing changed since allocating: nothing to reconcile.
    let none = reconcile::candidates(&mut conn, "acme", None, &settings(Some(30)), 100)
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");

    // The policy now bans D1, limits FCFS licenses to teachers (G1 is staff only; G2 is a
    // teacher too) and reserves R1 (in no group: still allowed); B's list drops F1 (F2 stays
    // listed through its group).
    let resp = api
        .put_policy(
            APP,
            "STDQ",
            &json!({"disallowed": [{"kind": "device", "id": "D1"}],
                    "fcfs_groups": ["teachers"],
                    "reserved": [{"kind": "device", "id": "R1"}]}),
        )
        .await;
    assert!(resp.status().is_success(), "{}", resp.status());
    api.update_account(
        b,
        &json!({"distribution_list": [{"kind": "group", "value": "fb"}]}),
    )
    .await;
    // G2 was last seen 40 days ago; R1 too, but it is reserved.
    diesel::sql_query(
        "UPDATE subjects SET last_seen_at = now() - interval '40 days'
          WHERE space_id = 'acme' AND external_id IN ('G2', 'R1')",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    let found = reconcile::candidates(&mut conn, "acme", None, &settings(None), 100)
        .await
        .unwrap();
    let mut expected = vec![
        (ids["D1"], ReconcileCriterion::Disallowed),
        (ids["G1"], ReconcileCriterion::LeftGroup),
        (ids["F1"], ReconcileCriterion::NotOnDistributionList),
    ];
    expected.sort();
    let got: Vec<(Uuid, ReconcileCriterion)> = found
        .iter()
        .map(|c| (c.assignment_id, c.criterion))
        .collect();
    assert_eq!(got, expected, "{found:#?}");
    let f1 = found.iter().find(|c| c.target == "F1").unwrap();
    assert_eq!((f1.account_id, f1.adam_id.as_str()), (b, APP));
    assert_eq!(f1.license_type.as_str(), "device");

    // Not seen for 30 days: G2 too (its FCFS group still allows it).
    let (with_unseen, total) =
        reconcile::candidates_and_count(&mut conn, "acme", None, &settings(Some(30)), 100)
            .await
            .unwrap();
    assert_eq!(total, 4);
    let g2 = with_unseen.iter().find(|c| c.target == "G2").unwrap();
    assert_eq!(g2.criterion, ReconcileCriterion::NotSeen);
    assert!(!with_unseen.iter().any(|c| c.target == "R1"));

    // The limit cuts the same order; the count is of all; one account's only.
    let (first_two, total) =
        reconcile::candidates_and_count(&mut conn, "acme", None, &settings(None), 2)
            .await
            .unwrap();
    assert_eq!(total, 3);
    assert_eq!(
        first_two
            .iter()
            .map(|c| c.assignment_id)
            .collect::<Vec<_>>(),
        expected[..2].iter().map(|(id, _)| *id).collect::<Vec<_>>()
    );
    assert_eq!(
        reconcile::count(&mut conn, "acme", None, &settings(None))
            .await
            .unwrap(),
        3
    );
    let of_b = reconcile::candidates(&mut conn, "acme", Some(b), &settings(None), 100)
        .await
        .unwrap();
    assert_eq!(
        of_b.iter().map(|c| c.target.as_str()).collect::<Vec<_>>(),
        ["F1"]
    );
    let of_a = reconcile::count(&mut conn, "acme", Some(a), &settings(None))
        .await
        .unwrap();
    assert_eq!(of_a, 2);
}

#[tokio::test]
async fn t6_revoking_a_candidate_rechecks_it_and_releases_the_license() {
    let World { w, a, ids, .. } = reconcile_world().await;
    let api = w.api();
    let resp = api
        .put_policy(
            APP,
            "STDQ",
            &json!({"disallowed": [{"kind": "device", "id": "D1"}, {"kind": "device", "id": "G1"}]}),
        )
        .await;
    assert!(resp.status().is_success());
    let mut conn = w.app.db.connect().await;
    let origin = Origin::new("reconciler", Some("req-1".into()));
    let s = settings(None);

    // A criterion that does not hold (G2 is allowed; D1 is disallowed, not left a group):
    // nothing happens.
    for (serial, criterion) in [
        ("G2", ReconcileCriterion::Disallowed),
        ("D1", ReconcileCriterion::LeftGroup),
    ] {
        let done =
            reconcile::revoke_candidate(&mut conn, "acme", ids[serial], criterion, &s, &origin)
                .await
                .unwrap();
        assert!(!done, "{serial}");
    }
    // D1 is revoked: released at Apple, freed in the ledger, the reason and activity say why.
    let done = reconcile::revoke_candidate(
        &mut conn,
        "acme",
        ids["D1"],
        ReconcileCriterion::Disallowed,
        &s,
        &origin,
    )
    .await
    .unwrap();
    assert!(done);
    let reason: Option<String> = assignments::table
        .find(ids["D1"])
        .select(assignments::revocation_reason)
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(reason.as_deref(), Some("reconcile: disallowed"));
    assert_eq!(pool(&w.app, a).await.0, 3);
    let revoked = api.final_state(ids["D1"]).await;
    assert_eq!(revoked.state.as_str(), "revoked");
    assert!(!sim_serials(&w.sim, U1).await.contains(&"D1".to_string()));
    let activity = account_activity(&w.app, a).await;
    let reconciled: Vec<_> = activity
        .iter()
        .filter(|(action, _)| action == "assignment.reconciled")
        .collect();
    assert_eq!(reconciled.len(), 1, "{activity:?}");
    assert_eq!(reconciled[0].1["criterion"], "disallowed");
    // Once revoked it is no candidate any more: a second apply does nothing.
    let again = reconcile::revoke_candidate(
        &mut conn,
        "acme",
        ids["D1"],
        ReconcileCriterion::Disallowed,
        &s,
        &origin,
    )
    .await
    .unwrap();
    assert!(!again);
    let left = reconcile::candidates(&mut conn, "acme", None, &s, 100)
        .await
        .unwrap();
    assert_eq!(
        left.iter().map(|c| c.target.as_str()).collect::<Vec<_>>(),
        ["G1"]
    );
}
