//! Attaching an Apple location (rule T1 in docs/rules.md) and replacing an account's sToken (T9).
//!
//! Attach: parse the sToken (nothing is stored for a bad file) → learn the location from Apple's
//! client config → refuse a location attached anywhere in the deployment (409) → write our
//! `mdmInfo` unless another MDM's is present (then the account is stored `not_owned` and
//! nothing is overwritten) → import the location's assets with counts → store the account with
//! the sToken encrypted. Apple is called before the ledger transaction; the unique constraint
//! on the location settles races between concurrent attaches. A usable account gets a full sync
//! queued in the same transaction (T5), as does a token replacement.

use chrono::Utc;
use uuid::Uuid;

use super::identity::Identity;
use super::{AccountError, ListEntry};
use crate::apple::client::AssetQuery;
use crate::apple::stoken::{ParsedSToken, SToken, parse_stoken};
use crate::apple::types::ClientConfig;
use crate::domain::account_status::{
    self as status, AccountStatus, Observation, StatusState, WhenUnusable,
};
use crate::domain::origin::Origin;
use crate::domain::reconciliation::{SyncKind, SyncTrigger};
use crate::ledger::accounts::{self as store, AccountRow, DistributionEntry, NewAccount};
use crate::ledger::activity::{self, Activity};
use crate::ledger::assets::{self, AppleAsset};
use crate::ledger::sync_runs;
use crate::state::AppState;
use diesel_async::AsyncConnection;

/// A request to attach a location.
pub struct NewAccountInput {
    pub name: String,
    pub stoken: String,
    pub priority: Option<i32>,
    pub notify_on_removal: bool,
    pub new_assets_for_everyone: bool,
    pub when_unusable: WhenUnusable,
    pub distribution_list: Vec<ListEntry>,
}

/// What Apple told us about a token.
struct Learned {
    parsed: ParsedSToken,
    config: ClientConfig,
    uid: String,
    owned: bool,
}

impl Learned {
    /// When the token expires: Apple's word if it gave one, else the date inside the token.
    fn expires_at(&self) -> chrono::DateTime<Utc> {
        self.config
            .meta
            .token_expiration_date
            .unwrap_or(self.parsed.exp_date)
    }
}

async fn learn(state: &AppState, text: &str) -> Result<Learned, AccountError> {
    let parsed = parse_stoken(text)?;
    let config = state
        .apple
        .get_client_config(&parsed.raw)
        .await
        .map_err(AccountError::from_apple)?;
    let uid = config
        .meta
        .u_id
        .clone()
        .filter(|u| !u.is_empty())
        .ok_or(AccountError::NoLocation)?;
    let owned = state.identity.owns(config.meta.mdm_info.as_ref());
    Ok(Learned {
        parsed,
        config,
        uid,
        owned,
    })
}

/// Writes our identity into the location's client config; returns the notification token hash.
async fn claim(
    state: &AppState,
    identity: &Identity,
    token: &SToken,
    account: Uuid,
) -> Result<Option<Vec<u8>>, AccountError> {
    let (request, hash) = identity.client_config(account);
    state
        .apple
        .set_client_config(token, &request)
        .await
        .map_err(AccountError::from_apple)?;
    Ok(hash)
}

async fn fetch_assets(state: &AppState, token: &SToken) -> Result<Vec<AppleAsset>, AccountError> {
    let listing = state
        .apple
        .get_assets(token, &AssetQuery::default())
        .await
        .map_err(AccountError::from_apple)?;
    Ok(listing.items.iter().map(AppleAsset::from_apple).collect())
}

fn other_owner(learned: &Learned) -> Option<String> {
    learned
        .config
        .meta
        .mdm_info
        .as_ref()
        .filter(|_| !learned.owned)
        .map(|m| m.name.clone())
}

fn entries(account: Uuid, list: &[ListEntry]) -> Vec<DistributionEntry> {
    list.iter()
        .map(|e| DistributionEntry {
            account_id: account,
            kind: e.kind.as_str().to_owned(),
            value: e.value.trim().to_owned(),
        })
        .collect()
}

pub async fn add(
    state: &AppState,
    actor: &Origin,
    space: &str,
    input: NewAccountInput,
) -> Result<AccountRow, AccountError> {
    {
        let mut conn = state.pool.get().await?;
        if crate::ledger::spaces::find(&mut conn, space)
            .await?
            .is_none()
        {
            return Err(AccountError::NotFound(format!("space {space}")));
        }
    }
    let learned = learn(state, &input.stoken).await?;
    {
        let mut conn = state.pool.get().await?;
        if let Some((_, owner_space)) = store::by_location(&mut conn, &learned.uid).await? {
            return Err(AccountError::LocationTaken {
                here: owner_space == space,
            });
        }
    }
    let id = Uuid::now_v7();
    let token = &learned.parsed.raw;
    let notification_hash = if learned.owned {
        claim(state, &state.identity, token, id).await?
    } else {
        None
    };
    let list = fetch_assets(state, token).await?;
    let now = Utc::now();
    let expires_at = learned.expires_at();
    let initial = StatusState {
        status: AccountStatus::Active,
        reason: String::new(),
        throttled_until: None,
    };
    let status = status::next(
        &initial,
        expires_at,
        Some(&Observation::Healthy {
            owned: learned.owned,
            other_owner: other_owner(&learned),
        }),
        now,
    );
    let sealed = state.cipher.seal(id.as_bytes(), token.expose());
    let apple_mdm_id = if learned.owned {
        Some(state.identity.instance_id.clone())
    } else {
        learned.config.meta.mdm_info.as_ref().map(|m| m.id.clone())
    };

    let mut conn = state.pool.get().await?;
    let row = conn
        .transaction(async |conn| {
            if store::lock_space(conn, space).await?.is_none() {
                return Err(AccountError::NotFound(format!("space {space}")));
            }
            let existing = store::list(conn, space).await?;
            store::insert(
                conn,
                NewAccount {
                    id,
                    space_id: space,
                    name: input.name.trim(),
                    priority: existing.len() as i32 + 1,
                    location_uid: &learned.uid,
                    location_name: learned.config.location_name.as_deref().unwrap_or(""),
                    country_code: learned.config.country_iso2a_code.as_deref().unwrap_or(""),
                    website_url: learned.config.website_url.as_deref().unwrap_or(""),
                    org_name: &learned.parsed.org_name,
                    token_ciphertext: &sealed.ciphertext,
                    token_nonce: &sealed.nonce,
                    token_key_id: &sealed.key_id,
                    token_expires_at: expires_at,
                    status: status.status,
                    status_reason: &status.reason,
                    apple_mdm_id: apple_mdm_id.as_deref(),
                    notification_token_hash: notification_hash.as_deref(),
                    notify_on_removal: input.notify_on_removal,
                    new_assets_for_everyone: input.new_assets_for_everyone,
                    when_unusable: input.when_unusable,
                    // Attaching reads the assets, not the assignments: the account counts as
                    // synced once the full sync queued below has run.
                    last_full_sync_at: None,
                },
            )
            .await
            .map_err(location_taken_elsewhere)?;
            if let Some(p) = input.priority {
                let mut order: Vec<Uuid> = existing.iter().map(|a| a.id).collect();
                let at = (p.max(1) as usize - 1).min(order.len());
                order.insert(at, id);
                store::write_order(conn, &order).await?;
            }
            store::replace_distribution(conn, id, &entries(id, &input.distribution_list)).await?;
            let imported = assets::import_new(conn, id, &list, now).await?;
            // T5: a full sync right after attach (Apple's assignments, the double count).
            if status.status.allows_apple_calls() {
                sync_runs::request(conn, space, id, SyncKind::Full, SyncTrigger::Attach, actor)
                    .await?;
            }
            activity::record(
                conn,
                Activity::new(actor, "account.added")
                    .space(space)
                    .account(id)
                    .details(serde_json::json!({
                        "location_uid": learned.uid,
                        "status": status.status,
                        "owned": learned.owned,
                        "assets_imported": imported,
                    })),
            )
            .await?;
            store::find(conn, space, id)
                .await?
                .ok_or_else(|| AccountError::NotFound(format!("account {id}")))
        })
        .await?;
    Ok(row)
}

/// Replaces an account's sToken. The same Apple location keeps the ledger; a different location
/// is refused (409) unless `clear_ledger`, which forgets the account's assets and assignments
/// (licenses assigned at the old location stay assigned there) and imports the new location's.
pub async fn replace_token(
    state: &AppState,
    actor: &Origin,
    space: &str,
    id: Uuid,
    text: &str,
    clear_ledger: bool,
) -> Result<AccountRow, AccountError> {
    let current = {
        let mut conn = state.pool.get().await?;
        store::find(&mut conn, space, id)
            .await?
            .ok_or_else(|| AccountError::NotFound(format!("account {id}")))?
    };
    let learned = learn(state, text).await?;
    let same_location = learned.uid == current.location_uid;
    if !same_location {
        if !clear_ledger {
            return Err(AccountError::LocationMismatch(format!(
                "the new sToken belongs to Apple location {:?} ({}), but this account manages {:?} ({}); \
                 its licenses and assignments belong to that location. Upload a token of the same \
                 location, or pass clear_ledger=true to forget this account's ledger and switch",
                learned.config.location_name.as_deref().unwrap_or(""),
                learned.uid,
                current.location_name,
                current.location_uid
            )));
        }
        let mut conn = state.pool.get().await?;
        if let Some((_, owner_space)) = store::by_location(&mut conn, &learned.uid).await? {
            return Err(AccountError::LocationTaken {
                here: owner_space == space,
            });
        }
    }
    let token = &learned.parsed.raw;
    let notification_hash = if learned.owned {
        claim(state, &state.identity, token, id).await?
    } else {
        None
    };
    let list = if same_location {
        Vec::new()
    } else {
        fetch_assets(state, token).await?
    };
    let now = Utc::now();
    let expires_at = learned.expires_at();
    let sealed = state.cipher.seal(id.as_bytes(), token.expose());

    let mut conn = state.pool.get().await?;
    conn.transaction(async |conn| {
        let locked = store::find_locked(conn, space, id)
            .await?
            .ok_or_else(|| AccountError::NotFound(format!("account {id}")))?;
        let cleared = if same_location {
            0
        } else {
            let n = assets::forget_location(conn, id, actor).await?;
            assets::import_new(conn, id, &list, now).await?;
            n
        };
        store::set_token(
            conn,
            id,
            store::TokenUpdate {
                location_uid: &learned.uid,
                location_name: learned.config.location_name.as_deref().unwrap_or(""),
                country_code: learned.config.country_iso2a_code.as_deref().unwrap_or(""),
                website_url: learned.config.website_url.as_deref().unwrap_or(""),
                org_name: &learned.parsed.org_name,
                sealed: &sealed,
                expires_at,
                apple_mdm_id: if learned.owned {
                    Some(state.identity.instance_id.as_str())
                } else {
                    learned.config.meta.mdm_info.as_ref().map(|m| m.id.as_str())
                },
                notification_token_hash: notification_hash.as_deref(),
            },
        )
        .await
        .map_err(location_taken_elsewhere)?;
        let refreshed = store::find(conn, space, id)
            .await?
            .ok_or_else(|| AccountError::NotFound(format!("account {id}")))?;
        let next = status::next(
            &StatusState {
                // A new token starts from a clean slate: earlier refusals were about the old one.
                status: AccountStatus::Active,
                reason: String::new(),
                throttled_until: locked.throttled_until,
            },
            expires_at,
            Some(&Observation::Healthy {
                owned: learned.owned,
                other_owner: other_owner(&learned),
            }),
            now,
        );
        store::save_status(conn, &refreshed, &next, actor).await?;
        // T5: a full sync after a token replacement (a queued incremental one becomes full).
        if next.status.allows_apple_calls() {
            sync_runs::request(
                conn,
                space,
                id,
                SyncKind::Full,
                SyncTrigger::TokenReplaced,
                actor,
            )
            .await?;
        }
        activity::record(
            conn,
            Activity::new(actor, "account.token_replaced")
                .space(space)
                .account(id)
                .details(serde_json::json!({
                    "same_location": same_location,
                    "location_uid": learned.uid,
                    "previous_location_uid": current.location_uid,
                    "ledger_cleared": !same_location,
                    "assignments_forgotten": cleared,
                })),
        )
        .await?;
        Ok::<(), AccountError>(())
    })
    .await?;
    let mut conn = state.pool.get().await?;
    store::find(&mut conn, space, id)
        .await?
        .ok_or_else(|| AccountError::NotFound(format!("account {id}")))
}

/// Used by tests and `dev`: the decrypted token of an account (never leaves the process).
pub fn open_token(state: &AppState, account: &AccountRow) -> Result<SToken, AccountError> {
    Ok(state
        .cipher
        .open(account.id.as_bytes(), &account.sealed_token())?)
}

/// The unique location constraint tripped: another space attached the location meanwhile.
fn location_taken_elsewhere(e: diesel::result::Error) -> AccountError {
    match e {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            ref info,
        ) if info.constraint_name() == Some("accounts_location_unique") => {
            AccountError::LocationTaken { here: false }
        }
        other => other.into(),
    }
}
