//! User-based licenses need the user registered with Apple at that account (`users/create`).
//! Registration is done on demand, just before the first association of a user, and remembered
//! in `apple_users`. Its answers carry `mdmInfo` like every Apple answer: another MDM named
//! there stops the registration (and the association behind it) at once (rule T3 in docs/rules.md).

use std::collections::HashMap;
use std::time::Duration;

use uuid::Uuid;

use super::DispatchError;
use crate::accounts::ownership;
use crate::apple::stoken::SToken;
use crate::apple::types::RequestUser;
use crate::ledger::apple_users;
use crate::state::AppState;

/// Apple's error number for "a registered user already exists with this clientUserId".
const ALREADY_REGISTERED: i32 = 9716;

/// What registering users came to.
#[derive(Debug)]
pub enum Registration {
    /// Every user is registered but these, which Apple refused (number, message).
    Done(HashMap<String, (i32, String)>),
    /// An answer named another MDM as the location's owner: the account is now `not_owned`
    /// (recorded by [`ownership::notice`]); nothing more is sent for it.
    NotOwned,
}

/// Registers the users of `users` not yet registered at `account`.
pub async fn ensure_registered(
    state: &AppState,
    account: Uuid,
    token: &SToken,
    users: &[String],
) -> Result<Registration, DispatchError> {
    let mut refused = HashMap::new();
    let known: Vec<String> = {
        let mut conn = state.pool.get().await?;
        apple_users::registered_among(&mut conn, account, users).await?
    };
    let missing: Vec<&String> = users.iter().filter(|u| !known.contains(u)).collect();
    if missing.is_empty() {
        return Ok(Registration::Done(refused));
    }
    let max = state.apple.service_config().await?.max_users().max(1);
    for chunk in missing.chunks(max) {
        let request: Vec<RequestUser> =
            chunk.iter().map(|u| RequestUser::new(u.as_str())).collect();
        let event = state.apple.create_users(token, &request).await?;
        if !ownership::notice(
            &state.pool,
            &state.identity,
            account,
            &event.meta,
            "POST /users/create",
        )
        .await?
        {
            return Ok(Registration::NotOwned);
        }
        // User creation is quick; wait for it here rather than split the association in two.
        let mut status = state.apple.event_status(token, &event.event_id).await?;
        let mut waited = Duration::ZERO;
        while status.is_pending() && waited < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            waited += Duration::from_millis(300);
            status = state.apple.event_status(token, &event.event_id).await?;
        }
        let mut failed_here: HashMap<String, (i32, String)> = HashMap::new();
        for failure in &status.failures {
            let number = failure.error_number.unwrap_or(0);
            if number == ALREADY_REGISTERED {
                continue;
            }
            for user in &failure.error_info.client_user_ids {
                failed_here.insert(
                    user.clone(),
                    (number, failure.error_message.clone().unwrap_or_default()),
                );
            }
        }
        if status.is_pending() {
            // Not Apple's refusal: the chunk is retried later like any transient failure
            // (failing the users' assignments for good would lose them).
            return Err(DispatchError::Apple(
                crate::apple::error::AppleError::timeout("GET /status (users/create)"),
            ));
        }
        let registered: Vec<&str> = chunk
            .iter()
            .filter(|u| !failed_here.contains_key(u.as_str()))
            .map(|u| u.as_str())
            .collect();
        if !registered.is_empty() {
            let mut conn = state.pool.get().await?;
            apple_users::save_registered(&mut conn, account, &registered, &event.event_id).await?;
        }
        refused.extend(failed_here);
        if !ownership::notice(
            &state.pool,
            &state.identity,
            account,
            &status.meta,
            "GET /status (users/create)",
        )
        .await?
        {
            return Ok(Registration::NotOwned);
        }
    }
    Ok(Registration::Done(refused))
}
