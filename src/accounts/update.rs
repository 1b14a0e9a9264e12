//! Changing an account's name, settings, distribution list or priority in one transaction,
//! honouring the version the change was based on.

use diesel_async::{AsyncConnection, AsyncPgConnection};
use uuid::Uuid;

use super::{AccountError, ListEntry, order};
use crate::domain::account_status::WhenUnusable;
use crate::domain::origin::Origin;
use crate::ledger::accounts::{self as store, DetailsChange, DistributionEntry};
use crate::ledger::activity::{self, Activity};

/// What to change (`None`: leave as it is).
#[derive(Debug, Default)]
pub struct AccountChange {
    pub name: Option<String>,
    pub notify_on_removal: Option<bool>,
    pub new_assets_for_everyone: Option<bool>,
    pub when_unusable: Option<WhenUnusable>,
    /// Replaces the whole list.
    pub distribution_list: Option<Vec<ListEntry>>,
    /// Moves the account there (others shift; rule A5).
    pub priority: Option<i32>,
}

/// Applies `change` to account `id` of `space` if its version is one of `versions` (any when
/// `None`), and records it in the activity log.
pub async fn update(
    conn: &mut AsyncPgConnection,
    origin: &Origin,
    space: &str,
    id: Uuid,
    versions: Option<&[i64]>,
    change: &AccountChange,
) -> Result<(), AccountError> {
    conn.transaction(async |conn| {
        let current = store::find_locked(conn, space, id)
            .await?
            .ok_or_else(|| AccountError::NotFound(format!("account {id}")))?;
        if versions.is_some_and(|v| !v.contains(&current.version)) {
            return Err(AccountError::Stale {
                current: current.version,
            });
        }
        store::update_details(
            conn,
            id,
            DetailsChange {
                name: change.name.as_deref().map(str::trim),
                notify_on_removal: change.notify_on_removal,
                new_assets_for_everyone: change.new_assets_for_everyone,
                when_unusable: change.when_unusable,
            },
        )
        .await?;
        if let Some(list) = &change.distribution_list {
            let entries: Vec<DistributionEntry> = list
                .iter()
                .map(|e| DistributionEntry {
                    account_id: id,
                    kind: e.kind.as_str().to_owned(),
                    value: e.value.trim().to_owned(),
                })
                .collect();
            store::replace_distribution(conn, id, &entries).await?;
        }
        if let Some(priority) = change.priority {
            order::move_to(conn, origin, space, id, priority).await?;
        }
        activity::record(
            conn,
            Activity::new(origin, "account.updated")
                .space(space)
                .account(id)
                .details(serde_json::json!({
                    "name": change.name.is_some(),
                    "settings": true,
                    "distribution_list": change.distribution_list.as_ref().map(Vec::len),
                    "priority": change.priority,
                })),
        )
        .await?;
        Ok(())
    })
    .await
}
