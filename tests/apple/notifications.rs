//! Notifications from the simulator to a real HTTP receiver.

use vpp_broker::apple::types::{
    AssetKey, ClientConfigRequest, EventType, ManageAssetsRequest, NotificationAuthToken,
    NotificationPayload, NotificationResult, NotificationType,
};
use vpp_broker::apple::{ErrorClass, ErrorOrigin};
use vpp_broker::apple_sim::{DeliveryOutcome, FaultsPatch};

use super::support::{APP, Env, Receiver, env, env_with, school, test_settings};

const SECRET: &str = "ztl_mdm_nat_0123456789abcdefghij";

fn subscription(receiver: &Receiver, types: Vec<NotificationType>) -> ClientConfigRequest {
    ClientConfigRequest {
        mdm_info: None,
        notification_types: Some(types),
        notification_url: Some(receiver.url.clone()),
        notification_auth_token: Some(NotificationAuthToken::new(SECRET)),
    }
}

async fn subscribe(env: &Env, receiver: &Receiver, types: Vec<NotificationType>) {
    env.client
        .set_client_config(&env.token, &subscription(receiver, types))
        .await
        .expect("subscription accepted");
}

fn all_types() -> Vec<NotificationType> {
    vec![
        NotificationType::AssetManagement,
        NotificationType::AssetCount,
        NotificationType::UserManagement,
        NotificationType::UserAssociated,
    ]
}

#[tokio::test]
async fn subscribing_sends_a_test_notification_with_the_bearer_token() {
    let env = env().await;
    let receiver = Receiver::start().await;
    let config = env
        .client
        .set_client_config(&env.token, &subscription(&receiver, all_types()))
        .await
        .unwrap();
    assert_eq!(
        config.notification_url.as_deref(),
        Some(receiver.url.as_str())
    );
    assert_eq!(config.subscribed_notification_types, all_types());
    assert_eq!(
        config.notification_auth_token.as_ref().map(|t| t.expose()),
        Some(SECRET),
        "Apple echoes the auth token"
    );
    assert!(
        !format!("{config:?}").contains(SECRET),
        "but it never prints"
    );

    let received = receiver.wait_for(1).await;
    let test = &received[0];
    assert_eq!(
        test.authorization.as_deref(),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert_eq!(test.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        test.envelope.notification_type,
        NotificationType::TestNotification
    );
    assert_eq!(
        test.envelope.u_id.as_deref(),
        Some(env.location.u_id.as_str())
    );
    assert_eq!(test.envelope.payload().unwrap(), NotificationPayload::Test);
    let stored = env.client.get_client_config(&env.token).await.unwrap();
    assert_eq!(
        stored.notification_url.as_deref(),
        Some(receiver.url.as_str())
    );
    receiver.stop().await;
}

#[tokio::test]
async fn an_unreachable_notification_url_is_refused_with_9728() {
    let env = env().await;
    let receiver = Receiver::start().await;
    receiver.fail_next(1);
    let err = env
        .client
        .set_client_config(&env.token, &subscription(&receiver, all_types()))
        .await
        .unwrap_err();
    assert_eq!((err.error_number, err.http_status), (Some(9728), Some(400)));
    assert_eq!(err.class(), ErrorClass::Validation);
    assert_eq!(receiver.attempts(), 1, "one synchronous attempt");

    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut nowhere = subscription(&receiver, all_types());
    nowhere.notification_url = Some(format!("http://127.0.0.1:{port}/notify"));
    let err = env
        .client
        .set_client_config(&env.token, &nowhere)
        .await
        .unwrap_err();
    assert_eq!(err.error_number, Some(9728));

    let stored = env.client.get_client_config(&env.token).await.unwrap();
    assert_eq!(
        stored.notification_url, None,
        "a refused configuration is not stored"
    );
    let log = env.sim.notifications().await.unwrap();
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|r| r.outcome == DeliveryOutcome::Failed));
    assert_eq!(log[0].http_status, Some(500));
    assert!(log[1].error.is_some());

    // URL without token is caught by the client before any request.
    let mut half = subscription(&receiver, all_types());
    half.notification_auth_token = None;
    let err = env
        .client
        .set_client_config(&env.token, &half)
        .await
        .unwrap_err();
    assert_eq!(
        (err.origin, err.error_number),
        (ErrorOrigin::Local, Some(9710))
    );
    receiver.stop().await;
}

#[tokio::test]
async fn a_partial_failure_sends_one_success_and_one_failure_notification() {
    let mut location = school();
    location.assets[0].total_count = 3;
    let env = env_with(location, test_settings()).await;
    let receiver = Receiver::start().await;
    subscribe(&env, &receiver, all_types()).await;
    receiver.wait_for(1).await;

    let serials: Vec<String> = (0..5).map(|i| format!("S{i}")).collect();
    let event = env
        .client
        .associate(
            &env.token,
            &ManageAssetsRequest::devices(vec![AssetKey::stdq(APP)], serials),
        )
        .await
        .unwrap();
    env.settle(&event.event_id).await;
    let received = receiver.wait_for(3).await;
    let mut payloads = Vec::new();
    for r in &received[1..] {
        assert_eq!(
            r.authorization.as_deref(),
            Some(format!("Bearer {SECRET}").as_str())
        );
        assert_eq!(
            r.envelope.notification_type,
            NotificationType::AssetManagement
        );
        let NotificationPayload::AssetManagement(p) = r.envelope.payload().unwrap() else {
            panic!("not an ASSET_MANAGEMENT payload");
        };
        assert_eq!(p.event_id.as_deref(), Some(event.event_id.as_str()));
        assert_eq!(p.kind, Some(EventType::Associate));
        payloads.push(p);
    }
    let success = payloads
        .iter()
        .find(|p| p.result == Some(NotificationResult::Success))
        .unwrap();
    assert_eq!(success.assignments.len(), 3);
    assert!(success.error.is_none());
    let failure = payloads
        .iter()
        .find(|p| p.result == Some(NotificationResult::Failure))
        .unwrap();
    assert_eq!(failure.error.as_ref().unwrap().error_number, Some(9709));
    let failed: Vec<_> = failure
        .assignments
        .iter()
        .map(|a| a.serial_number.clone().unwrap())
        .collect();
    assert_eq!(failed, ["S3", "S4"]);
    let ids: std::collections::HashSet<_> = received
        .iter()
        .map(|r| r.envelope.notification_id.clone())
        .collect();
    assert_eq!(ids.len(), 3, "fresh notificationId each");
    receiver.stop().await;
}

#[tokio::test]
async fn more_than_100_tasks_arrive_in_notifications_of_at_most_100() {
    let mut location = school();
    location.assets[0].total_count = 250;
    let env = env_with(location, test_settings()).await;
    let receiver = Receiver::start().await;
    subscribe(&env, &receiver, vec![NotificationType::AssetManagement]).await;
    let serials: Vec<String> = (0..250).map(|i| format!("S{i:03}")).collect();
    let event = env
        .client
        .associate(
            &env.token,
            &ManageAssetsRequest::devices(vec![AssetKey::stdq(APP)], serials),
        )
        .await
        .unwrap();
    assert!(env.settle(&event.event_id).await.is_success());
    let received = receiver.wait_for(4).await;
    let sizes: Vec<usize> = received[1..]
        .iter()
        .map(|r| match r.envelope.payload().unwrap() {
            NotificationPayload::AssetManagement(p) => p.assignments.len(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(sizes, [100, 100, 50]);
    receiver.stop().await;
}

#[tokio::test]
async fn failed_deliveries_are_retried() {
    let env = env().await;
    let receiver = Receiver::start().await;
    subscribe(&env, &receiver, all_types()).await;
    receiver.wait_for(1).await;
    receiver.fail_next(2);
    let delta = env
        .sim
        .set_asset_total(&env.location.u_id, &AssetKey::stdq(APP), 15)
        .await
        .unwrap();
    assert_eq!(delta, 5);
    let received = receiver.wait_for(2).await;
    assert_eq!(
        received[1].envelope.notification_type,
        NotificationType::AssetCount
    );
    assert_eq!(receiver.attempts(), 4, "TEST + 2 failures + 1 success");
    // The simulator logs an attempt once its answer is read, which may be after the receiver
    // counted it.
    let count_attempts = super::eventually::eventually_within(
        std::time::Duration::from_secs(5),
        "three attempts logged",
        async || {
            let log = env.sim.notifications().await.unwrap();
            log.iter()
                .filter(|r| r.notification_type == NotificationType::AssetCount)
                .map(|r| (r.attempt, r.outcome, r.http_status))
                .collect::<Vec<_>>()
        },
        |attempts| attempts.len() >= 3,
    )
    .await;
    assert_eq!(
        count_attempts,
        [
            (1, DeliveryOutcome::Failed, Some(500)),
            (2, DeliveryOutcome::Failed, Some(500)),
            (3, DeliveryOutcome::Delivered, Some(200)),
        ]
    );

    // Three failures: given up.
    receiver.fail_next(3);
    env.sim
        .set_asset_total(&env.location.u_id, &AssetKey::stdq(APP), 16)
        .await
        .unwrap();
    super::eventually::eventually_within(
        std::time::Duration::from_secs(5),
        "seven attempts",
        async || receiver.attempts(),
        |attempts| *attempts >= 7,
    )
    .await;
    // A check that nothing more happens: give a fourth attempt time to come.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(receiver.attempts(), 7, "no fourth attempt");
    assert_eq!(receiver.received().len(), 2);
    receiver.stop().await;
}

#[tokio::test]
async fn purchases_and_refunds_send_asset_count() {
    let env = env().await;
    let receiver = Receiver::start().await;
    subscribe(&env, &receiver, vec![NotificationType::AssetCount]).await;
    env.sim
        .set_asset_total(&env.location.u_id, &AssetKey::stdq(APP), 15)
        .await
        .unwrap();
    env.sim
        .set_asset_total(&env.location.u_id, &AssetKey::stdq(APP), 12)
        .await
        .unwrap();
    let received = receiver.wait_for(3).await;
    let deltas: Vec<i64> = received[1..]
        .iter()
        .map(|r| match r.envelope.payload().unwrap() {
            NotificationPayload::AssetCount(c) => {
                assert_eq!(c.adam_id, APP);
                c.count_delta
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(deltas, [5, -3]);
    let assets = env
        .client
        .get_assets(&env.token, &Default::default())
        .await
        .unwrap();
    let app = assets.items.iter().find(|a| a.adam_id == APP).unwrap();
    assert_eq!(app.total_count, Some(12));
    receiver.stop().await;
}

#[tokio::test]
async fn dropped_and_duplicated_notifications() {
    let env = env().await;
    let receiver = Receiver::start().await;
    subscribe(&env, &receiver, vec![NotificationType::AssetCount]).await;
    receiver.wait_for(1).await;
    env.sim
        .set_faults(&FaultsPatch {
            drop_notifications: Some(1),
            duplicate_notifications: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    for total in [11, 12] {
        env.sim
            .set_asset_total(&env.location.u_id, &AssetKey::stdq(APP), total)
            .await
            .unwrap();
    }
    let received = receiver.wait_for(3).await;
    assert_eq!(
        received[1].envelope.notification_id, received[2].envelope.notification_id,
        "the second purchase arrived twice (dedupe on notificationId)"
    );
    match received[1].envelope.payload().unwrap() {
        NotificationPayload::AssetCount(c) => assert_eq!(c.count_delta, 1, "from 11 to 12"),
        other => panic!("unexpected {other:?}"),
    }
    // The simulator logs a delivery once the receiver answered it, so the duplicate's entry
    // may trail its arrival: wait for it.
    let log = super::eventually::eventually_within(
        std::time::Duration::from_secs(10),
        "the duplicate delivery logged",
        async || env.sim.notifications().await.unwrap(),
        |log| log.iter().any(|r| r.duplicate),
    )
    .await;
    assert!(log.iter().any(|r| r.outcome == DeliveryOutcome::Dropped));
    assert!(log.iter().any(|r| r.duplicate));
    receiver.stop().await;
}

#[tokio::test]
async fn only_subscribed_types_are_sent_and_another_mdm_takes_the_endpoint() {
    let env = env().await;
    let receiver = Receiver::start().await;
    subscribe(&env, &receiver, vec![NotificationType::AssetCount]).await;
    let event = env
        .client
        .associate(
            &env.token,
            &ManageAssetsRequest::devices(vec![AssetKey::stdq(APP)], vec!["S1".into()]),
        )
        .await
        .unwrap();
    assert!(env.settle(&event.event_id).await.is_success());
    env.sim
        .set_asset_total(&env.location.u_id, &AssetKey::stdq(APP), 20)
        .await
        .unwrap();
    let received = receiver.wait_for(2).await;
    assert_eq!(
        received[1].envelope.notification_type,
        NotificationType::AssetCount
    );

    env.sim
        .overwrite_mdm_info(
            &env.location.u_id,
            &vpp_broker::apple::types::MdmInfo {
                id: "other".into(),
                name: "Other".into(),
                metadata: "x".into(),
            },
        )
        .await
        .unwrap();
    env.sim
        .set_asset_total(&env.location.u_id, &AssetKey::stdq(APP), 21)
        .await
        .unwrap();
    // A check that nothing arrives: give a notification time to come.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 2, "nothing after the takeover");
    receiver.stop().await;
}
