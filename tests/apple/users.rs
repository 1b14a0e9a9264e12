//! The user lifecycle: create, invite, accept, update, assign, retire, re-create.

use vpp_broker::apple::types::{
    AssetKey, EventStatus, EventType, ManageAssetsRequest, NotificationPayload, NotificationResult,
    NotificationType, RequestUser, UserStatus,
};
use vpp_broker::apple::{AssignmentQuery, ErrorClass, ErrorOrigin, UserQuery};

use super::support::{APP, BOOK, Receiver, env};

fn user(id: &str, email: Option<&str>, managed: Option<&str>) -> RequestUser {
    RequestUser {
        client_user_id: id.into(),
        email: email.map(Into::into),
        managed_apple_id: managed.map(Into::into),
    }
}

#[tokio::test]
async fn user_lifecycle_from_creation_to_retirement_and_back() {
    let env = env().await;
    let receiver = Receiver::start().await;
    env.client
        .set_client_config(
            &env.token,
            &vpp_broker::apple::types::ClientConfigRequest {
                notification_types: Some(vec![
                    NotificationType::UserManagement,
                    NotificationType::UserAssociated,
                ]),
                notification_url: Some(receiver.url.clone()),
                notification_auth_token: Some(
                    vpp_broker::apple::types::NotificationAuthToken::new("users-secret"),
                ),
                mdm_info: None,
            },
        )
        .await
        .unwrap();

    // Create: one by invitation, one with a Managed Apple Account.
    let event = env
        .client
        .create_users(
            &env.token,
            &[
                user("alice", Some("alice@school.example"), None),
                user(
                    "bob",
                    Some("bob@school.example"),
                    Some("bob@appleid.school.example"),
                ),
            ],
        )
        .await
        .unwrap();
    let status = env.settle(&event.event_id).await;
    assert_eq!(status.event_type, Some(EventType::Create));
    assert!(status.is_success());
    let users = env
        .client
        .get_users(&env.token, &UserQuery::default())
        .await
        .unwrap();
    let alice = users
        .items
        .iter()
        .find(|u| u.client_user_id == "alice")
        .unwrap();
    assert_eq!(alice.status, Some(UserStatus::Registered));
    assert!(alice.invite_code.is_some() && alice.id_hash.is_none());
    let bob = users
        .items
        .iter()
        .find(|u| u.client_user_id == "bob")
        .unwrap();
    assert_eq!(bob.status, Some(UserStatus::Associated));
    assert!(bob.id_hash.is_some() && bob.invite_code.is_none());
    let version_after_create = users.version_id.clone().unwrap();

    let received = receiver.wait_for(2).await;
    let NotificationPayload::UserManagement(created) = received[1].envelope.payload().unwrap()
    else {
        panic!("expected USER_MANAGEMENT");
    };
    assert_eq!(created.kind, Some(EventType::Create));
    assert_eq!(created.result, Some(NotificationResult::Success));
    assert_eq!(created.users.len(), 2);
    assert_eq!(
        received[1].authorization.as_deref(),
        Some("Bearer users-secret")
    );

    // Alice accepts her invitation.
    env.sim
        .accept_invitation(&env.location.u_id, "alice")
        .await
        .unwrap();
    let received = receiver.wait_for(3).await;
    let NotificationPayload::UserAssociated(associated) = received[2].envelope.payload().unwrap()
    else {
        panic!("expected USER_ASSOCIATED");
    };
    assert_eq!(associated.associated_users[0].client_user_id, "alice");
    assert_eq!(
        associated.associated_users[0].status,
        Some(UserStatus::Associated)
    );

    // Update and the delta since creation.
    let event = env
        .client
        .update_users(
            &env.token,
            &[user("alice", Some("a.smith@school.example"), None)],
        )
        .await
        .unwrap();
    assert!(env.settle(&event.event_id).await.is_success());
    let delta = env
        .client
        .get_users(
            &env.token,
            &UserQuery {
                since_version_id: Some(version_after_create),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(delta.items.len(), 1);
    assert_eq!(
        delta.items[0].email.as_deref(),
        Some("a.smith@school.example")
    );
    assert_eq!(delta.items[0].status, Some(UserStatus::Associated));

    // A user license, with the user's state.
    let event = env
        .client
        .associate(
            &env.token,
            &ManageAssetsRequest::users(vec![AssetKey::stdq(APP)], vec!["alice".into()]),
        )
        .await
        .unwrap();
    assert!(env.settle(&event.event_id).await.is_success());
    let with_state = env
        .client
        .get_assignments(
            &env.token,
            &AssignmentQuery {
                client_user_id: Some("alice".into()),
                include_user_state: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(with_state.items.len(), 1);
    assert_eq!(
        with_state.items[0].user_status,
        Some(UserStatus::Associated)
    );
    assert!(with_state.items[0].id_hash.is_some());

    // Retire: the user's revocable license is released.
    let event = env
        .client
        .retire_users(&env.token, &[RequestUser::new("alice")])
        .await
        .unwrap();
    assert_eq!(
        env.settle(&event.event_id).await.event_type,
        Some(EventType::Retire)
    );
    let assignments = env
        .client
        .get_assignments(&env.token, &AssignmentQuery::default())
        .await
        .unwrap();
    assert!(assignments.items.is_empty());

    // Re-create: a new record, the retired one stays.
    let event = env
        .client
        .create_users(&env.token, &[user("alice", None, None)])
        .await
        .unwrap();
    assert!(env.settle(&event.event_id).await.is_success());
    let history = env
        .client
        .get_users(
            &env.token,
            &UserQuery {
                client_user_id: Some("alice".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let statuses: Vec<_> = history
        .items
        .iter()
        .map(|u| u.status.clone().unwrap())
        .collect();
    assert_eq!(statuses, [UserStatus::Retired, UserStatus::Registered]);
    let active = env
        .client
        .get_users(
            &env.token,
            &UserQuery {
                active_only: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(active.items.len(), 2, "alice (new) and bob");
    let retired = env
        .client
        .get_users(
            &env.token,
            &UserQuery {
                retired_only: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(retired.items.len(), 1);
    receiver.stop().await;
}

#[tokio::test]
async fn asynchronous_user_failures_are_grouped_by_number() {
    let env = env().await;
    let event = env
        .client
        .create_users(&env.token, &[user("carol", None, None)])
        .await
        .unwrap();
    assert!(env.settle(&event.event_id).await.is_success());

    let event = env
        .client
        .create_users(
            &env.token,
            &[user("carol", None, None), user("dave", None, None)],
        )
        .await
        .unwrap();
    let status = env.settle(&event.event_id).await;
    assert_eq!(status.event_status, Some(EventStatus::Failed));
    assert_eq!(status.num_completed, Some(1));
    assert_eq!(status.failures[0].error_number, Some(9716));
    assert_eq!(status.failures[0].error_info.client_user_ids, ["carol"]);

    let event = env
        .client
        .retire_users(&env.token, &[RequestUser::new("nobody")])
        .await
        .unwrap();
    let status = env.settle(&event.event_id).await;
    assert_eq!(status.failures[0].error_number, Some(9609));

    // Books go to users, never devices.
    let event = env
        .client
        .associate(
            &env.token,
            &ManageAssetsRequest::users(vec![AssetKey::stdq(BOOK)], vec!["carol".into()]),
        )
        .await
        .unwrap();
    assert!(env.settle(&event.event_id).await.is_success());
}

#[tokio::test]
async fn user_requests_are_validated_locally_and_by_the_simulator() {
    let env = env().await;
    let local = |e: vpp_broker::apple::AppleError| (e.origin, e.error_number);
    let err = env.client.create_users(&env.token, &[]).await.unwrap_err();
    assert_eq!(local(err), (ErrorOrigin::Local, Some(9720)));
    let many: Vec<_> = (0..101)
        .map(|i| RequestUser::new(format!("u{i}")))
        .collect();
    let err = env
        .client
        .create_users(&env.token, &many)
        .await
        .unwrap_err();
    assert_eq!(local(err), (ErrorOrigin::Local, Some(9714)));
    let err = env
        .client
        .update_users(&env.token, &[RequestUser::new("x"), RequestUser::new("x")])
        .await
        .unwrap_err();
    assert_eq!(local(err), (ErrorOrigin::Local, Some(9715)));

    let err = env
        .client
        .create_users(&env.token, &[user("erin", Some("not an email"), None)])
        .await
        .unwrap_err();
    assert_eq!(
        (err.origin, err.error_number, err.http_status),
        (ErrorOrigin::Apple, Some(9717), Some(400))
    );
    assert_eq!(err.class(), ErrorClass::Validation);
    assert_eq!(err.error_info.client_user_ids, ["erin"]);
}
