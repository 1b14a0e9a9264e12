//! Asynchronous license writes: associate, disassociate, revoke, status, limits.

use vpp_broker::apple::types::{
    AssetKey, EventStatus, EventType, ManageAssetsRequest, RevokeAssetsRequest,
};
use vpp_broker::apple::{AssetQuery, AssignmentQuery, ErrorClass, ErrorOrigin};
use vpp_broker::apple_sim::{SeedAssignment, SeedUser, SettingsPatch};

use super::support::{APP, BOOK, env, env_with, raw, school, test_settings};

fn serials(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test]
async fn associate_is_pending_until_processed_then_complete() {
    let env = env().await;
    let event = env
        .client
        .associate(
            &env.token,
            &ManageAssetsRequest::devices(vec![AssetKey::stdq(APP)], serials("DEV", 2)),
        )
        .await
        .unwrap();
    assert!(!event.event_id.is_empty());
    assert_eq!(event.meta.u_id.as_deref(), Some(env.location.u_id.as_str()));

    let pending = env
        .client
        .event_status(&env.token, &event.event_id)
        .await
        .unwrap();
    assert_eq!(pending.event_status, Some(EventStatus::Pending));
    assert_eq!(pending.event_type, Some(EventType::Associate));
    assert_eq!(pending.num_requested, Some(2));
    assert!(pending.is_pending());

    let done = env.settle(&event.event_id).await;
    assert_eq!(done.event_status, Some(EventStatus::Complete));
    assert_eq!(done.num_completed, Some(2));
    assert!(done.is_success());

    let assignments = env
        .client
        .get_assignments(&env.token, &AssignmentQuery::default())
        .await
        .unwrap();
    assert_eq!(assignments.items.len(), 2);
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
    assert_eq!(assets.items[0].assigned_count, Some(2));
    assert_eq!(assets.items[0].available_count, Some(8));
}

#[tokio::test]
async fn events_complete_on_their_own_after_the_configured_delay() {
    let env = env_with(
        school(),
        vpp_broker::apple_sim::SimSettings {
            event_delay_ms: 50,
            ..test_settings()
        },
    )
    .await;
    let event = env
        .client
        .associate(
            &env.token,
            &ManageAssetsRequest::devices(vec![AssetKey::stdq(APP)], serials("D", 1)),
        )
        .await
        .unwrap();
    let status = super::eventually::eventually_within(
        std::time::Duration::from_secs(2),
        "the event finished",
        async || {
            env.client
                .event_status(&env.token, &event.event_id)
                .await
                .unwrap()
        },
        |s| s.is_finished(),
    )
    .await;
    assert!(status.is_success());
}

#[tokio::test]
async fn licenses_running_out_mid_batch_fail_the_rest_with_9709() {
    let mut location = school();
    location.assets[0].total_count = 3;
    let env = env_with(location, test_settings()).await;
    let event = env
        .client
        .associate(
            &env.token,
            &ManageAssetsRequest::devices(vec![AssetKey::stdq(APP)], serials("S", 5)),
        )
        .await
        .unwrap();
    let status = env.settle(&event.event_id).await;
    assert_eq!(status.event_status, Some(EventStatus::Failed));
    assert_eq!(status.num_requested, Some(5));
    assert_eq!(status.num_completed, Some(3));
    assert_eq!(status.failures.len(), 1, "grouped by error number");
    let failure = &status.failures[0];
    assert_eq!(failure.error_number, Some(9709));
    assert_eq!(
        failure.error_info.serial_numbers,
        ["S3", "S4"],
        "request order wins"
    );
    assert_eq!(failure.error_info.assets, [AssetKey::stdq(APP)]);
    assert!(!status.is_success());

    let snapshot = env.sim.location(&env.location.u_id).await.unwrap();
    let app = snapshot.assets.iter().find(|a| a.adam_id == APP).unwrap();
    assert_eq!(
        (app.assigned_count, app.available_count),
        (Some(3), Some(0))
    );
    assert_eq!(snapshot.assignments.len(), 3);
}

#[tokio::test]
async fn associating_to_an_unknown_user_fails_with_9609_in_the_status() {
    let mut location = school();
    location.users = vec![SeedUser {
        client_user_id: "known".into(),
        ..Default::default()
    }];
    let env = env_with(location, test_settings()).await;
    let event = env
        .client
        .associate(
            &env.token,
            &ManageAssetsRequest::users(
                vec![AssetKey::stdq(BOOK)],
                vec!["known".into(), "ghost".into()],
            ),
        )
        .await
        .unwrap();
    let status = env.settle(&event.event_id).await;
    assert_eq!(status.event_status, Some(EventStatus::Failed));
    assert_eq!(status.num_completed, Some(1));
    assert_eq!(status.failures[0].error_number, Some(9609));
    assert_eq!(status.failures[0].error_info.client_user_ids, ["ghost"]);
}

#[tokio::test]
async fn disassociate_and_revoke_release_licenses() {
    let mut location = school();
    location.assignments = ["S1", "S2"]
        .iter()
        .map(|s| SeedAssignment {
            adam_id: APP.into(),
            serial_number: Some((*s).into()),
            ..Default::default()
        })
        .collect();
    location.assets.push(vpp_broker::apple_sim::SeedAsset {
        adam_id: "555".into(),
        total_count: 1,
        ..Default::default()
    });
    location.assignments.push(SeedAssignment {
        adam_id: "555".into(),
        serial_number: Some("S2".into()),
        ..Default::default()
    });
    let env = env_with(location, test_settings()).await;

    let event = env
        .client
        .disassociate(
            &env.token,
            &ManageAssetsRequest::devices(vec![AssetKey::stdq(APP)], vec!["S1".into()]),
        )
        .await
        .unwrap();
    let status = env.settle(&event.event_id).await;
    assert_eq!(status.event_type, Some(EventType::Disassociate));
    assert!(status.is_success());

    // Revoke takes every revocable asset from the device.
    let event = env
        .client
        .revoke(
            &env.token,
            &RevokeAssetsRequest {
                serial_numbers: vec!["S2".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let status = env.settle(&event.event_id).await;
    assert_eq!(status.event_type, Some(EventType::Revoke));
    assert_eq!(status.num_requested, Some(2), "two assignments held by S2");
    assert!(status.is_success());

    let snapshot = env.sim.location(&env.location.u_id).await.unwrap();
    assert!(snapshot.assignments.is_empty());
    assert!(snapshot.assets.iter().all(|a| a.assigned_count == Some(0)));
}

#[tokio::test]
async fn re_associating_is_a_no_op_and_disassociating_nothing_succeeds() {
    let env = env().await;
    let request = ManageAssetsRequest::devices(vec![AssetKey::stdq(APP)], vec!["S1".into()]);
    for _ in 0..2 {
        let event = env.client.associate(&env.token, &request).await.unwrap();
        assert!(env.settle(&event.event_id).await.is_success());
    }
    let snapshot = env.sim.location(&env.location.u_id).await.unwrap();
    let app = snapshot.assets.iter().find(|a| a.adam_id == APP).unwrap();
    assert_eq!(app.assigned_count, Some(1), "no second license used");

    let event = env
        .client
        .disassociate(
            &env.token,
            &ManageAssetsRequest::devices(vec![AssetKey::stdq(APP)], vec!["NEVER".into()]),
        )
        .await
        .unwrap();
    assert!(env.settle(&event.event_id).await.is_success());
}

#[tokio::test]
async fn an_unknown_event_id_is_not_found() {
    let env = env().await;
    let err = env
        .client
        .event_status(&env.token, "ed3edfc3-e617-465e-b309-a17925266e14")
        .await
        .unwrap_err();
    assert_eq!(err.error_number, Some(9708));
    assert_eq!(err.http_status, Some(400));
    assert_eq!(err.class(), ErrorClass::NotFound);
}

#[tokio::test]
async fn the_client_refuses_requests_that_break_apples_rules() {
    let env = env().await;
    let cases = [
        (ManageAssetsRequest::devices(vec![], serials("S", 1)), 9718),
        (
            ManageAssetsRequest::devices(vec![AssetKey::stdq(APP)], vec![]),
            9719,
        ),
        (
            ManageAssetsRequest::devices(
                (0..26).map(|i| AssetKey::stdq(i.to_string())).collect(),
                serials("S", 1),
            ),
            9700,
        ),
        (
            ManageAssetsRequest::devices(vec![AssetKey::stdq(APP)], serials("S", 1001)),
            9702,
        ),
        (
            ManageAssetsRequest::users(
                vec![AssetKey::stdq(APP)],
                (0..1001).map(|i| format!("u{i}")).collect(),
            ),
            9701,
        ),
        (
            ManageAssetsRequest::devices(
                vec![AssetKey::stdq(APP), AssetKey::stdq(APP)],
                serials("S", 1),
            ),
            9703,
        ),
        (
            ManageAssetsRequest::devices(vec![AssetKey::stdq(APP)], vec!["A".into(), "A".into()]),
            9705,
        ),
        (
            ManageAssetsRequest {
                assets: vec![AssetKey::stdq(APP)],
                serial_numbers: vec!["S".into()],
                client_user_ids: vec!["u".into()],
            },
            9602,
        ),
    ];
    for (request, number) in cases {
        let err = env
            .client
            .associate(&env.token, &request)
            .await
            .unwrap_err();
        assert_eq!(err.origin, ErrorOrigin::Local, "{err}");
        assert_eq!(err.error_number, Some(number), "{err}");
        assert_eq!(err.class(), ErrorClass::Validation);
    }
    let err = env
        .client
        .revoke(
            &env.token,
            &RevokeAssetsRequest {
                serial_numbers: serials("S", 101),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.error_number, Some(9702));
    let counters = env.sim.counters().await.unwrap();
    assert!(
        !counters.keys().any(|k| k.starts_with("POST")),
        "nothing was sent: {counters:?}"
    );
}

#[tokio::test]
async fn the_simulator_enforces_the_same_limits_with_apples_numbers() {
    let env = env().await;
    // The client does not know these lower limits (it never fetched the service config).
    env.sim
        .update_settings(&SettingsPatch {
            limits: [
                ("maxAssets".to_owned(), 1),
                ("maxSerialNumbers".to_owned(), 2),
                ("maxRevokeSerialNumbers".to_owned(), 1),
                ("maxRevokeClientUserIds".to_owned(), 1),
            ]
            .into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let associate = |assets: Vec<AssetKey>, serials: Vec<String>| {
        let client = env.client.clone();
        let token = env.token.clone();
        async move {
            client
                .associate(&token, &ManageAssetsRequest::devices(assets, serials))
                .await
                .unwrap_err()
        }
    };
    let too_many_assets = associate(
        vec![AssetKey::stdq(APP), AssetKey::stdq(BOOK)],
        serials("S", 1),
    )
    .await;
    assert_eq!(
        (
            too_many_assets.origin,
            too_many_assets.error_number,
            too_many_assets.http_status
        ),
        (ErrorOrigin::Apple, Some(9700), Some(400))
    );
    let too_many_serials = associate(vec![AssetKey::stdq(APP)], serials("S", 3)).await;
    assert_eq!(too_many_serials.error_number, Some(9702));
    assert_eq!(too_many_serials.class(), ErrorClass::Validation);
    let book_to_device = associate(vec![AssetKey::stdq(BOOK)], serials("S", 1)).await;
    assert_eq!(book_to_device.error_number, Some(9707));
    assert_eq!(book_to_device.error_info.assets, [AssetKey::stdq(BOOK)]);
    let unknown_asset = associate(vec![AssetKey::stdq("999")], serials("S", 1)).await;
    assert_eq!(unknown_asset.error_number, Some(9602));
    assert_eq!(unknown_asset.error_info.assets, [AssetKey::stdq("999")]);

    let books_are_not_revocable = env
        .client
        .disassociate(
            &env.token,
            &ManageAssetsRequest::users(vec![AssetKey::stdq(BOOK)], vec!["u".into()]),
        )
        .await
        .unwrap_err();
    assert_eq!(books_are_not_revocable.error_number, Some(9706));

    let revoke = env
        .client
        .revoke(
            &env.token,
            &RevokeAssetsRequest {
                serial_numbers: serials("S", 2),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(revoke.error_number, Some(9702));

    // Checks clients skip: duplicates, mixed targets.
    let url = format!("{}/assets/associate", env.sim.base_url());
    let duplicate = raw()
        .post(&url)
        .bearer_auth(env.token.expose())
        .json(&serde_json::json!({
            "assets": [{"adamId": APP, "pricingParam": "STDQ"}],
            "serialNumbers": ["A", "A"]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(duplicate.status(), 400);
    let body: serde_json::Value = duplicate.json().await.unwrap();
    assert_eq!(body["errorNumber"], 9705);
    assert_eq!(body["errorInfo"]["serialNumbers"], serde_json::json!(["A"]));

    // Apple's own examples mix users and devices and omit pricingParam: accepted (STDQ).
    let mixed = raw()
        .post(&url)
        .bearer_auth(env.token.expose())
        .json(&serde_json::json!({"assets": [{"adamId": APP}], "serialNumbers": ["M1"], "clientUserIds": ["nobody"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(mixed.status(), 200);
    let event: serde_json::Value = mixed.json().await.unwrap();
    let status = env.settle(event["eventId"].as_str().unwrap()).await;
    assert_eq!(status.num_requested, Some(2));
    assert_eq!(
        status.num_completed,
        Some(1),
        "the device succeeds, the unknown user fails"
    );
    assert_eq!(env.count("POST /assets/associate").await, 6);
}
