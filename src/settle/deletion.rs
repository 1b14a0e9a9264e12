//! Finishing an account's deletion: an account whose deletion was requested while Apple still
//! held some of its licenses is removed once the last of them is released.

use diesel_async::AsyncConnection;
use uuid::Uuid;

use super::SettleError;
use crate::db::Pool;
use crate::domain::origin::Origin;
use crate::ledger::activity::{self, Activity};
use crate::ledger::{accounts, assignments};

/// Removes `account` if its deletion was requested and Apple holds nothing of it any more.
pub async fn finish_account_deletion(pool: &Pool, account: Uuid) -> Result<(), SettleError> {
    let mut conn = pool.get().await?;
    let Some(row) = accounts::by_id(&mut conn, account).await? else {
        return Ok(());
    };
    if row.delete_requested_at.is_none() {
        return Ok(());
    }
    let space = row.space_id;
    conn.transaction(async |conn| {
        if accounts::lock_space(conn, &space).await?.is_none() {
            return Ok(());
        }
        if assignments::count_at_apple(conn, account).await? > 0 {
            return Ok(());
        }
        accounts::remove(conn, &space, account).await?;
        activity::record(
            conn,
            Activity::new(&Origin::system(), "account.deleted")
                .space(&space)
                .account(account),
        )
        .await?;
        tracing::info!(account = %account, "account removed after its licenses were released");
        Ok::<(), SettleError>(())
    })
    .await
}
