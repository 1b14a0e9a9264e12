//! The simulator's drift knobs (issue 13, Simulator): what another MDM, an admin or a purchase
//! does at the location behind the service's back, with the versionIds moving as Apple's do.

use std::time::{Duration, Instant};

use vpp_broker::apple::types::{
    AssetKey, ClientConfigRequest, EventStatus, ManageAssetsRequest, NotificationAuthToken,
    NotificationPayload, NotificationResult, NotificationType, PricingParam,
};
use vpp_broker::apple::{AssetQuery, AssignmentQuery};
use vpp_broker::apple_sim::{
    Dataset, GeneratedAssignments, NewAssignments, SeedAsset, SeedAssignment, SeedLocation,
    SettingsPatch, SimError,
};

use super::support::{APP, Env, Receiver, env, raw};

fn devices(adam_id: &str, serials: &[&str]) -> NewAssignments {
    NewAssignments {
        assignments: serials
            .iter()
            .map(|s| SeedAssignment {
                adam_id: adam_id.into(),
                serial_number: Some((*s).into()),
                ..Default::default()
            })
            .collect(),
        generated_assignments: Vec::new(),
    }
}

async fn serials(env: &Env, query: &AssignmentQuery) -> (Vec<String>, String) {
    let listing = env.client.get_assignments(&env.token, query).await.unwrap();
    let mut serials: Vec<String> = listing
        .items
        .into_iter()
        .filter_map(|a| a.serial_number)
        .collect();
    serials.sort();
    (serials, listing.version_id.unwrap())
}

/// `(assigned, available, total)` of [`APP`] as `GET /assets` shows them.
async fn app_counts(env: &Env) -> (i64, i64, i64) {
    let assets = env
        .client
        .get_assets(
            &env.token,
            &AssetQuery {
                adam_id: Some(APP.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let app = &assets.items[0];
    (
        app.assigned_count.unwrap(),
        app.available_count.unwrap(),
        app.total_count.unwrap(),
    )
}

async fn subscribe(env: &Env, receiver: &Receiver, types: Vec<NotificationType>) {
    env.client
        .set_client_config(
            &env.token,
            &ClientConfigRequest {
                mdm_info: None,
                notification_types: Some(types),
                notification_url: Some(receiver.url.clone()),
                notification_auth_token: Some(NotificationAuthToken::new(
                    "drift_knobs_0123456789abcdefghij",
                )),
            },
        )
        .await
        .expect("subscription accepted");
    receiver.wait_for(1).await;
}

#[tokio::test]
async fn assignments_removed_behind_the_back_free_licenses_and_never_appear_in_deltas() {
    let env = env().await;
    let u_id = env.location.u_id.clone();
    env.sim
        .add_assignments(&u_id, &devices(APP, &["S1", "S2", "S3"]))
        .await
        .unwrap();
    let (listed, before) = serials(&env, &AssignmentQuery::default()).await;
    assert_eq!(listed, ["S1", "S2", "S3"]);
    assert_eq!(app_counts(&env).await, (3, 7, 10));
    let assets_before = env.sim.location(&u_id).await.unwrap().versions[&Dataset::Assets].clone();

    // S9 was never assigned: skipped, not an error (as Apple's disassociate).
    let removed = env
        .sim
        .remove_assignments(&u_id, &devices(APP, &["S2", "S9"]))
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert_eq!(
        app_counts(&env).await,
        (2, 8, 10),
        "the license is free again"
    );

    let delta = AssignmentQuery {
        since_version_id: Some(before.clone()),
        ..Default::default()
    };
    let (changed, after) = serials(&env, &delta).await;
    assert!(
        changed.is_empty(),
        "a removal is not in the delta: {changed:?}"
    );
    assert_ne!(after, before, "the assignments' versionId moved");
    let versions = env.sim.location(&u_id).await.unwrap().versions;
    assert_ne!(
        versions[&Dataset::Assets],
        assets_before,
        "counts changed: the assets' versionId moved"
    );
    let (listed, _) = serials(&env, &AssignmentQuery::default()).await;
    assert_eq!(listed, ["S1", "S3"], "a full read shows it gone");

    // Another MDM assigns: the delta since the last version shows exactly that addition.
    env.sim
        .add_assignments(&u_id, &devices(APP, &["S4"]))
        .await
        .unwrap();
    let delta = AssignmentQuery {
        since_version_id: Some(after),
        ..Default::default()
    };
    assert_eq!(serials(&env, &delta).await.0, ["S4"]);

    // Removing by generated serials works as adding does; a typo'd asset is refused, nothing
    // removed; an unknown location is 404.
    let generated = NewAssignments {
        assignments: Vec::new(),
        generated_assignments: vec![GeneratedAssignments {
            adam_id: APP.into(),
            pricing_param: PricingParam::Stdq,
            count: 2,
            serial_prefix: "G".into(),
        }],
    };
    env.sim.add_assignments(&u_id, &generated).await.unwrap();
    assert_eq!(app_counts(&env).await.0, 5);
    let err = env
        .sim
        .remove_assignments(&u_id, &devices("999", &["S1"]))
        .await
        .unwrap_err();
    assert!(matches!(err, SimError::Admin { status: 400, .. }), "{err}");
    assert_eq!(app_counts(&env).await.0, 5, "nothing removed");
    assert_eq!(
        env.sim.remove_assignments(&u_id, &generated).await.unwrap(),
        2
    );
    assert_eq!(
        serials(&env, &AssignmentQuery::default()).await.0,
        ["S1", "S3", "S4"]
    );
    let err = env
        .sim
        .remove_assignments("404", &devices(APP, &["S1"]))
        .await
        .unwrap_err();
    assert!(matches!(err, SimError::Admin { status: 404, .. }), "{err}");
    let bad = raw()
        .post(format!(
            "{}/locations/{u_id}/assignments/remove",
            env.sim.admin_url()
        ))
        .header("content-type", "application/json")
        .body(r#"{"assignments":[{"adamId":"408709785"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400, "an assignment without a target");
}

#[tokio::test]
async fn purchases_of_new_content_and_refunds_below_the_assigned_count() {
    let env = env().await;
    let u_id = env.location.u_id.clone();
    let receiver = Receiver::start().await;
    subscribe(&env, &receiver, vec![NotificationType::AssetCount]).await;
    let assets_before = env.sim.location(&u_id).await.unwrap().versions[&Dataset::Assets].clone();

    // A purchase of an app the location did not have: listed at once, ASSET_COUNT sent.
    env.sim
        .add_assets(
            &u_id,
            &[SeedAsset {
                adam_id: "1091189122".into(),
                total_count: 20,
                ..Default::default()
            }],
        )
        .await
        .unwrap();
    let received = receiver.wait_for(2).await;
    match received[1].envelope.payload().unwrap() {
        NotificationPayload::AssetCount(c) => {
            assert_eq!((c.adam_id.as_str(), c.count_delta), ("1091189122", 20));
        }
        other => panic!("unexpected {other:?}"),
    }
    let listed = env
        .client
        .get_assets(&env.token, &AssetQuery::default())
        .await
        .unwrap();
    assert!(
        listed
            .items
            .iter()
            .any(|a| a.adam_id == "1091189122" && a.total_count == Some(20))
    );
    assert_ne!(listed.version_id.as_deref(), Some(assets_before.as_str()));

    // Buying it again through this endpoint is a mistake (use the total): refused, nothing sent.
    let again = env
        .sim
        .add_assets(
            &u_id,
            &[
                SeedAsset {
                    adam_id: "2000000001".into(),
                    total_count: 5,
                    ..Default::default()
                },
                SeedAsset {
                    adam_id: "1091189122".into(),
                    total_count: 5,
                    ..Default::default()
                },
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(again, SimError::Admin { status: 400, .. }),
        "{again}"
    );
    let snapshot = env.sim.location(&u_id).await.unwrap();
    assert!(
        snapshot.assets.iter().all(|a| a.adam_id != "2000000001"),
        "all or nothing"
    );

    // A refund (or a transfer to another location) below what is assigned: the location is
    // over-committed, Apple shows it as total < assigned with nothing available.
    env.sim
        .add_assignments(&u_id, &devices(APP, &["A", "B", "C", "D"]))
        .await
        .unwrap();
    let delta = env
        .sim
        .set_asset_total(&u_id, &AssetKey::stdq(APP), 2)
        .await
        .unwrap();
    assert_eq!(delta, -8);
    assert_eq!(app_counts(&env).await, (4, 0, 2));
    let received = receiver.wait_for(3).await;
    match received[2].envelope.payload().unwrap() {
        NotificationPayload::AssetCount(c) => assert_eq!(c.count_delta, -8),
        other => panic!("unexpected {other:?}"),
    }
    // Nothing assignable until licenses come back; a transfer in brings them.
    env.sim
        .set_asset_total(&u_id, &AssetKey::stdq(APP), 6)
        .await
        .unwrap();
    assert_eq!(app_counts(&env).await, (4, 2, 6));
    receiver.stop().await;
}

#[tokio::test]
async fn serial_numbers_apple_never_saw_are_accepted_and_complete() {
    let env = env().await;
    let receiver = Receiver::start().await;
    subscribe(&env, &receiver, vec![NotificationType::AssetManagement]).await;
    // Apple keeps no device registry for this API: any serial number is a valid target.
    let event = env
        .client
        .associate(
            &env.token,
            &ManageAssetsRequest::devices(
                vec![AssetKey::stdq(APP)],
                vec!["NEVER-ENROLLED-0001".into(), "zz-not-a-real-serial".into()],
            ),
        )
        .await
        .unwrap();
    let status = env.settle(&event.event_id).await;
    assert_eq!(status.event_status, Some(EventStatus::Complete));
    assert_eq!(status.num_completed, Some(2));
    assert!(status.failures.is_empty());
    let received = receiver.wait_for(2).await;
    match received[1].envelope.payload().unwrap() {
        NotificationPayload::AssetManagement(n) => {
            assert_eq!(n.result, Some(NotificationResult::Success));
            assert_eq!(n.assignments.len(), 2);
        }
        other => panic!("unexpected {other:?}"),
    }
    let (listed, _) = serials(&env, &AssignmentQuery::default()).await;
    assert_eq!(listed, ["NEVER-ENROLLED-0001", "zz-not-a-real-serial"]);
    receiver.stop().await;
}

#[tokio::test]
async fn the_page_size_changes_at_runtime() {
    let env = env().await;
    let u_id = env.location.u_id.clone();
    let ten: Vec<String> = (0..10).map(|i| format!("P{i}")).collect();
    let refs: Vec<&str> = ten.iter().map(String::as_str).collect();
    env.sim
        .add_assignments(&u_id, &devices(APP, &refs))
        .await
        .unwrap();
    for (page_size, pages) in [(3, 4), (500, 1), (10, 1), (9, 2)] {
        env.sim
            .update_settings(&SettingsPatch {
                page_size: Some(page_size),
                ..Default::default()
            })
            .await
            .unwrap();
        let listing = env
            .client
            .get_assignments(&env.token, &AssignmentQuery::default())
            .await
            .unwrap();
        assert_eq!(listing.items.len(), 10, "page size {page_size}");
        assert_eq!(listing.pages, pages, "page size {page_size}");
    }
}

#[tokio::test]
async fn a_hundred_thousand_assignments_over_a_thousand_assets_seed_in_seconds() {
    let env = env().await;
    let assets: Vec<SeedAsset> = (0..1000)
        .map(|k| SeedAsset {
            adam_id: (600_000_000 + k).to_string(),
            total_count: 150,
            ..Default::default()
        })
        .collect();
    // 10,000 devices holding 10 apps each.
    let generated: Vec<GeneratedAssignments> = (0..1000)
        .map(|k| GeneratedAssignments {
            adam_id: (600_000_000 + k).to_string(),
            pricing_param: PricingParam::Stdq,
            count: 100,
            serial_prefix: format!("B{:03}-", k % 100),
        })
        .collect();
    let started = Instant::now();
    let added = env
        .sim
        .add_location(&SeedLocation {
            name: "Big".into(),
            assets,
            ..Default::default()
        })
        .await
        .unwrap();
    env.sim
        .add_assignments(
            &added.u_id,
            &NewAssignments {
                assignments: Vec::new(),
                generated_assignments: generated,
            },
        )
        .await
        .unwrap();
    let took = started.elapsed();
    // Debug build on a shared machine: the release build takes a fraction of a second.
    assert!(
        took < Duration::from_secs(20),
        "seeding took {took:?}, not seconds"
    );
    let summaries: serde_json::Value = raw()
        .get(format!("{}/locations", env.sim.admin_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let big = summaries
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["uId"] == added.u_id.as_str())
        .unwrap();
    assert_eq!(
        (big["assets"].as_u64(), big["assignments"].as_u64()),
        (Some(1000), Some(100_000))
    );
    // Page 0 at Apple's page size: 200 pages of 500.
    let page: serde_json::Value = raw()
        .get(format!("{}/assignments", env.sim.base_url()))
        .bearer_auth(&added.s_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["totalPages"], 200, "{}", page["totalPages"]);
    assert_eq!(page["assignments"].as_array().map(Vec::len), Some(500));
}
