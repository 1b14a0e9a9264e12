//! Test (rule T2 in docs/rules.md), Reclaim Ownership (rule T3), and keeping stored status in step
//! with the clock.

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{AccountError, observe_error};
use crate::domain::account_status::{self as status, AccountStatus, Observation};
use crate::domain::origin::Origin;
use crate::ledger::accounts::{self as store, AccountRow};
use crate::ledger::activity::{self, Activity};
use crate::state::AppState;

/// The owner Apple reports for a location.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Owner {
    pub id: String,
    pub name: String,
    /// Whether the owner is this deployment.
    pub is_this_deployment: bool,
}

/// What a Test found.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TestReport {
    pub checked_at: DateTime<Utc>,
    /// Whether Apple answered the token at all.
    pub reachable: bool,
    pub status: AccountStatus,
    /// Why, and what to do.
    pub reason: String,
    /// The owner in the token's client config, if any.
    #[schema(required = true)]
    pub owner: Option<Owner>,
    /// Apple's error, when the call failed (never contains the token).
    #[schema(required = true)]
    pub apple_error: Option<String>,
}

/// Persists time-driven transitions (expiring, expired, end of throttling) that happened since
/// the status was last stored. Cheap, idempotent, safe to call on every read.
pub async fn refresh(
    conn: &mut AsyncPgConnection,
    account: AccountRow,
) -> Result<AccountRow, AccountError> {
    let next = status::next(
        &account.status_state(),
        account.token_expires_at,
        None,
        Utc::now(),
    );
    if store::save_status(conn, &account, &next, &Origin::system()).await? {
        return store::find(conn, &account.space_id, account.id)
            .await?
            .ok_or_else(|| AccountError::NotFound(format!("account {}", account.id)));
    }
    Ok(account)
}

/// Calls Apple now with the account's token and records what it says.
pub async fn test(
    state: &AppState,
    actor: &Origin,
    space: &str,
    id: Uuid,
) -> Result<(AccountRow, TestReport), AccountError> {
    let mut conn = state.pool.get().await?;
    let account = store::find(&mut conn, space, id)
        .await?
        .ok_or_else(|| AccountError::NotFound(format!("account {id}")))?;
    let token = super::attach::open_token(state, &account)?;
    let now = Utc::now();
    let (observation, owner, apple_error, expires_at) =
        match state.apple.get_client_config(&token).await {
            Ok(config) => {
                let reported = config.meta.mdm_info.clone();
                let owned = state.identity.owns(reported.as_ref());
                store::set_observed(
                    &mut conn,
                    id,
                    config.location_name.as_deref(),
                    config.country_iso2a_code.as_deref(),
                    config.meta.token_expiration_date,
                    Some(reported.as_ref().map(|m| m.id.as_str())),
                )
                .await?;
                let owner = reported.map(|m| Owner {
                    is_this_deployment: m.id == state.identity.instance_id,
                    id: m.id,
                    name: m.name,
                });
                let obs = Observation::Healthy {
                    owned,
                    other_owner: owner
                        .as_ref()
                        .filter(|o| !o.is_this_deployment)
                        .map(|o| o.name.clone()),
                };
                (
                    Some(obs),
                    owner,
                    None,
                    config
                        .meta
                        .token_expiration_date
                        .unwrap_or(account.token_expires_at),
                )
            }
            Err(err) => (
                observe_error(&err, now),
                None,
                Some(err.to_string()),
                account.token_expires_at,
            ),
        };
    let next = status::next(
        &account.status_state(),
        expires_at,
        observation.as_ref(),
        now,
    );
    store::save_status(&mut conn, &account, &next, actor).await?;
    activity::record(
        &mut conn,
        Activity::new(actor, "account.tested")
            .space(space)
            .account(id)
            .details(serde_json::json!({
                "status": next.status,
                "reachable": apple_error.is_none(),
            })),
    )
    .await?;
    let row = store::find(&mut conn, space, id)
        .await?
        .ok_or_else(|| AccountError::NotFound(format!("account {id}")))?;
    let report = TestReport {
        checked_at: now,
        reachable: apple_error.is_none(),
        status: row.status,
        reason: row.status_reason.clone(),
        owner,
        apple_error,
    };
    Ok((row, report))
}

/// Overwrites another MDM's identity with ours after an explicit request; the account becomes
/// usable again and the activity log records who did it and whom it displaced.
pub async fn reclaim(
    state: &AppState,
    actor: &Origin,
    space: &str,
    id: Uuid,
) -> Result<AccountRow, AccountError> {
    let mut conn = state.pool.get().await?;
    let account = store::find(&mut conn, space, id)
        .await?
        .ok_or_else(|| AccountError::NotFound(format!("account {id}")))?;
    let token = super::attach::open_token(state, &account)?;
    let now = Utc::now();
    let previous = match state.apple.get_client_config(&token).await {
        Ok(config) => config.meta.mdm_info,
        Err(err) => return Err(record_failure(state, &mut conn, &account, err, actor, now).await),
    };
    let (request, hash) = state.identity.client_config(id);
    if let Err(err) = state.apple.set_client_config(&token, &request).await {
        return Err(record_failure(state, &mut conn, &account, err, actor, now).await);
    }
    store::set_observed(
        &mut conn,
        id,
        None,
        None,
        None,
        Some(Some(&state.identity.instance_id)),
    )
    .await?;
    if hash.is_some() {
        store::set_notification_hash(&mut conn, id, hash.as_deref()).await?;
    }
    let next = status::next(
        &account.status_state(),
        account.token_expires_at,
        Some(&Observation::Healthy {
            owned: true,
            other_owner: None,
        }),
        now,
    );
    store::save_status(&mut conn, &account, &next, actor).await?;
    activity::record(
        &mut conn,
        Activity::new(actor, "account.ownership_reclaimed")
            .space(space)
            .account(id)
            .details(serde_json::json!({
                "previous_owner": previous.map(|m| serde_json::json!({"id": m.id, "name": m.name})),
            })),
    )
    .await?;
    store::find(&mut conn, space, id)
        .await?
        .ok_or_else(|| AccountError::NotFound(format!("account {id}")))
}

/// Records what an Apple failure says about the account, and returns the error to answer.
async fn record_failure(
    _state: &AppState,
    conn: &mut AsyncPgConnection,
    account: &AccountRow,
    err: crate::apple::error::AppleError,
    actor: &Origin,
    now: DateTime<Utc>,
) -> AccountError {
    if let Some(obs) = observe_error(&err, now) {
        let next = status::next(
            &account.status_state(),
            account.token_expires_at,
            Some(&obs),
            now,
        );
        if let Err(e) = store::save_status(conn, account, &next, actor).await {
            return e.into();
        }
    }
    AccountError::from_apple(err)
}
