//! Noticing another MDM taking a location from any Apple answer (rule T3 in docs/rules.md).
//!
//! Every Apple answer carries the location's `mdmInfo`. The dispatcher hands each answer's
//! metadata here (associate/disassociate acceptances, event status polls, count refreshes): when
//! it names another MDM, the account becomes `not_owned` at once, its Apple writes stop (A10: its
//! queued work waits until ownership is reclaimed), and the activity log records when and in
//! which answer it was noticed (`account.ownership_lost`). An answer without `mdmInfo` names no
//! other owner and changes nothing.

use chrono::Utc;
use diesel_async::AsyncConnection;
use uuid::Uuid;

use super::AccountError;
use super::identity::Identity;
use crate::apple::types::ResponseMeta;
use crate::db::Pool;
use crate::domain::account_status::{self as status, AccountStatus, Observation};
use crate::domain::origin::Origin;
use crate::ledger::accounts as store;
use crate::ledger::activity::{self, Activity};

/// Checks the owner an Apple answer for `account` reports against this deployment's
/// `identity`. True while the owner is this
/// deployment (or none is named); false when another MDM holds the location (recorded once).
pub async fn notice(
    pool: &Pool,
    identity: &Identity,
    account: Uuid,
    meta: &ResponseMeta,
    seen_in: &str,
) -> Result<bool, AccountError> {
    let Some(reported) = meta.mdm_info.as_ref() else {
        return Ok(true);
    };
    if identity.owns(Some(reported)) {
        return Ok(true);
    }
    let mut conn = pool.get().await?;
    conn.transaction(async |conn| {
        let Some(current) = store::by_id(conn, account).await? else {
            return Ok(false);
        };
        let Some(row) = store::find_locked(conn, &current.space_id, account).await? else {
            return Ok(false);
        };
        if row.status == AccountStatus::NotOwned
            && row.apple_mdm_id.as_deref() == Some(reported.id.as_str())
        {
            return Ok(false);
        }
        let next = status::next(
            &row.status_state(),
            row.token_expires_at,
            Some(&Observation::Healthy {
                owned: false,
                other_owner: Some(reported.name.clone()),
            }),
            Utc::now(),
        );
        store::set_observed(conn, account, None, None, None, Some(Some(&reported.id))).await?;
        store::save_status(conn, &row, &next, &Origin::system()).await?;
        activity::record(
            conn,
            Activity::new(&Origin::system(), "account.ownership_lost")
                .space(&row.space_id)
                .account(account)
                .details(serde_json::json!({
                    "owner": {"id": reported.id, "name": reported.name},
                    "noticed_in": seen_in,
                    "noticed_at": Utc::now(),
                })),
        )
        .await?;
        tracing::warn!(account = %account, owner = %reported.name, seen_in, "another MDM took the location; Apple writes stop");
        Ok::<bool, AccountError>(false)
    })
    .await
}
