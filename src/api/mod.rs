//! The `/v1` resources. [`configure`] is the single route registration: the server mounts it
//! and the OpenAPI document is generated from it.

pub mod accounts;
pub mod activity;
pub mod apple_notifications;
pub mod assets;
pub mod assignments;
pub mod bulk;
pub mod dead_letters;
pub mod drift;
pub mod events;
pub mod lifecycle;
pub mod notifications;
pub mod plans;
pub mod policies;
pub mod spaces;
pub mod subjects;
pub mod sync;
pub mod webhooks;

use utoipa_actix_web::service_config::ServiceConfig;

use crate::http::ops;

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(ops::livez)
        .service(ops::readyz)
        .service(ops::metrics_text)
        .service(spaces::list_spaces)
        .service(spaces::create_space)
        .service(spaces::get_space)
        .service(spaces::update_space)
        .service(spaces::delete_space)
        .service(accounts::list_accounts)
        .service(accounts::create_account)
        .service(accounts::get_account)
        .service(accounts::update_account)
        .service(accounts::delete_account)
        .service(accounts::test_account)
        .service(accounts::reclaim_account)
        .service(accounts::replace_account_token)
        .service(accounts::get_account_order)
        .service(accounts::set_account_order)
        .service(sync::sync_account)
        .service(sync::list_sync_runs)
        .service(sync::get_sync_run)
        .service(assignments::allocate_license)
        .service(assignments::list_assignments)
        .service(assignments::get_assignment)
        .service(assignments::revoke_assignment)
        .service(assignments::create_revocation)
        .service(assets::list_assets)
        .service(assets::get_asset)
        .service(assets::list_account_assets)
        .service(subjects::get_device)
        .service(subjects::get_user)
        .service(subjects::put_device)
        .service(subjects::put_user)
        .service(lifecycle::send_lifecycle_events)
        .service(lifecycle::get_lifecycle_event)
        .service(lifecycle::get_lifecycle_settings)
        .service(lifecycle::put_lifecycle_settings)
        .service(policies::list_policies)
        .service(policies::get_policy)
        .service(policies::put_policy)
        .service(policies::delete_policy)
        .service(activity::list_activity)
        .service(events::list_events)
        .service(notifications::list_notifications)
        .service(notifications::get_notification)
        .service(notifications::acknowledge_notification)
        .service(dead_letters::list_dead_letters)
        .service(dead_letters::get_dead_letter)
        .service(dead_letters::retry_dead_letter)
        .service(drift::get_account_drift)
        .service(drift::get_space_drift)
        .service(plans::create_plan)
        .service(plans::get_plan)
        .service(plans::apply_plan)
        .service(bulk::create_bulk_operation)
        .service(bulk::list_bulk_operations)
        .service(bulk::get_bulk_operation)
        .service(bulk::cancel_bulk_operation)
        .service(webhooks::create_webhook)
        .service(webhooks::list_webhooks)
        .service(webhooks::get_webhook)
        .service(webhooks::update_webhook)
        .service(webhooks::delete_webhook)
        .service(webhooks::rotate_webhook_secret)
        .service(webhooks::ping_webhook)
        .service(webhooks::list_webhook_deliveries)
        .service(webhooks::redeliver_webhook_event)
        .service(webhooks::recover_webhook)
        .service(apple_notifications::receive_apple_notification);
}
