//! Service config and client config.

use std::time::Duration;

use vpp_broker::apple::types::{ClientConfigRequest, MdmInfo, NotificationType};
use vpp_broker::apple::{AppleClient, AssignmentQuery, ErrorClass, ErrorOrigin};
use vpp_broker::apple_sim::SettingsPatch;

use super::support::{env, raw};

fn our_mdm() -> MdmInfo {
    MdmInfo {
        id: "4f0d1b9e-vpp-broker".into(),
        name: "vpp-broker".into(),
        metadata: "broker.example.com".into(),
    }
}

#[tokio::test]
async fn service_config_is_served_without_a_token_and_cached() {
    let env = env().await;
    let first = env.client.service_config().await.unwrap();
    let second = env.client.service_config().await.unwrap();
    assert_eq!(first.max_assets(), 25);
    assert_eq!(first.max_serial_numbers(), 1000);
    assert_eq!(first.max_request_per_second(), 15);
    assert!(
        first
            .error_codes
            .iter()
            .any(|c| c.error_number == Some(9709))
    );
    assert!(
        first
            .notification_types
            .contains(&NotificationType::AssetCount)
    );
    assert_eq!(
        first.urls.get("getAssets"),
        Some(&format!("{}/assets", env.sim.base_url()))
    );
    assert_eq!(first, second);
    assert_eq!(
        env.count("GET /service/config").await,
        1,
        "the second call hit the cache"
    );
}

#[tokio::test]
async fn fetched_limits_drive_client_side_pre_validation() {
    let env = env().await;
    env.sim
        .update_settings(&SettingsPatch {
            limits: [("maxSerialNumbers".to_owned(), 2)].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let config = env.client.service_config().await.unwrap();
    assert_eq!(config.max_serial_numbers(), 2);
    assert_eq!(env.client.known_service_config().max_serial_numbers(), 2);

    let request = vpp_broker::apple::types::ManageAssetsRequest::devices(
        vec![vpp_broker::apple::types::AssetKey::stdq(
            super::support::APP,
        )],
        vec!["A".into(), "B".into(), "C".into()],
    );
    let err = env
        .client
        .associate(&env.token, &request)
        .await
        .unwrap_err();
    assert_eq!(err.origin, ErrorOrigin::Local);
    assert_eq!(err.error_number, Some(9702));
    assert_eq!(err.class(), ErrorClass::Validation);
    assert_eq!(
        env.count("POST /assets/associate").await,
        0,
        "refused before sending"
    );
}

#[tokio::test]
async fn client_config_describes_the_location_and_claims_it() {
    let env = env().await;
    let config = env.client.get_client_config(&env.token).await.unwrap();
    assert_eq!(config.location_name.as_deref(), Some("Test school"));
    assert_eq!(config.country_iso2a_code.as_deref(), Some("US"));
    assert_eq!(config.default_platform.as_deref(), Some("volumestore"));
    assert_eq!(
        config.website_url.as_deref(),
        Some("https://business.apple.com")
    );
    assert_eq!(
        config.meta.u_id.as_deref(),
        Some(env.location.u_id.as_str())
    );
    assert!(config.meta.token_expiration_date.unwrap() > chrono::Utc::now());
    assert_eq!(config.meta.mdm_info, None, "nobody claimed the token yet");
    assert_eq!(config.notification_url, None);

    let claimed = env
        .client
        .set_client_config(
            &env.token,
            &ClientConfigRequest {
                mdm_info: Some(our_mdm()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(claimed.meta.mdm_info, Some(our_mdm()));
    // Every later response carries it.
    let assignments = env
        .client
        .get_assignments(&env.token, &AssignmentQuery::default())
        .await
        .unwrap();
    assert_eq!(assignments.meta.mdm_info, Some(our_mdm()));
    let snapshot = env.sim.location(&env.location.u_id).await.unwrap();
    assert_eq!(snapshot.mdm_info, Some(our_mdm()));
}

#[tokio::test]
async fn another_mdm_overwriting_mdm_info_shows_in_responses() {
    let env = env().await;
    env.client
        .set_client_config(
            &env.token,
            &ClientConfigRequest {
                mdm_info: Some(our_mdm()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let other = MdmInfo {
        id: "other-mdm".into(),
        name: "Other MDM".into(),
        metadata: "9.9".into(),
    };
    env.sim
        .overwrite_mdm_info(&env.location.u_id, &other)
        .await
        .unwrap();
    let event = env
        .client
        .revoke(
            &env.token,
            &vpp_broker::apple::types::RevokeAssetsRequest {
                serial_numbers: vec!["X".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(event.meta.mdm_info.map(|m| m.id), Some("other-mdm".into()));
}

#[tokio::test]
async fn client_config_rules_are_enforced_by_the_client_and_the_simulator() {
    let env = env().await;
    // The client refuses an incomplete mdmInfo without calling Apple.
    let err = env
        .client
        .set_client_config(
            &env.token,
            &ClientConfigRequest {
                mdm_info: Some(MdmInfo {
                    id: "x".into(),
                    name: String::new(),
                    metadata: "m".into(),
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        (err.origin, err.error_number),
        (ErrorOrigin::Local, Some(9723))
    );
    assert_eq!(env.count("POST /client/config").await, 0);

    // The simulator enforces the same rules for clients that do not.
    let url = format!("{}/client/config", env.sim.base_url());
    let long = "x".repeat(101);
    let cases = [
        (
            serde_json::json!({"mdmInfo": {"id": "x", "name": "n"}}),
            9723,
        ),
        (
            serde_json::json!({"mdmInfo": {"id": long, "name": "n", "metadata": "m"}}),
            9724,
        ),
        (
            serde_json::json!({"mdmInfo": {"id": "x", "name": long, "metadata": "m"}}),
            9725,
        ),
        (
            serde_json::json!({"mdmInfo": {"id": "x", "name": "n", "metadata": "m".repeat(256)}}),
            9713,
        ),
        (
            serde_json::json!({"notificationUrl": "https://mdm.example/notify"}),
            9710,
        ),
        (
            serde_json::json!({"notificationUrl": "ftp://mdm.example", "notificationAuthToken": "s"}),
            9712,
        ),
        (
            serde_json::json!({"notificationUrl": format!("https://{}", "a".repeat(600)), "notificationAuthToken": "s"}),
            9711,
        ),
        (
            serde_json::json!({"notificationTypes": ["NOT_A_TYPE"]}),
            9602,
        ),
    ];
    for (body, number) in cases {
        let response = raw()
            .post(&url)
            .bearer_auth(env.token.expose())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["errorNumber"], number, "{body}");
    }
    // Nothing was stored.
    let snapshot = env.sim.location(&env.location.u_id).await.unwrap();
    assert_eq!(snapshot.mdm_info, None);
    assert_eq!(snapshot.notification_url, None);
}

#[tokio::test]
async fn the_client_refuses_unusable_base_urls_and_timeouts() {
    assert!(AppleClient::new("vpp.itunes.apple.com", Duration::from_secs(1)).is_err());
    assert!(AppleClient::new("https://vpp.itunes.apple.com/mdm/v2", Duration::ZERO).is_err());
    let client = AppleClient::new(
        vpp_broker::apple::client::APPLE_BASE_URL,
        Duration::from_secs(1),
    )
    .unwrap();
    assert_eq!(client.base_url(), "https://vpp.itunes.apple.com/mdm/v2");
}
