//! Distribution policies (rules A2, A3): replace or delete the policy of one asset of a space,
//! each in one transaction with its activity row, honouring the version the change was based on.
//! The statements are `ledger::policies`'; the HTTP layer, which also checks a policy's entries,
//! is `api::policies`.

use diesel_async::{AsyncConnection, AsyncPgConnection};
use uuid::Uuid;

use crate::domain::origin::Origin;
use crate::domain::records::EntryRow;
use crate::ledger::activity::{self, Activity};
use crate::ledger::policies::{self as store, PolicyRow};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{0} not found")]
    NotFound(String),
    /// The version the change was based on is not the current one.
    #[error("stale version")]
    Stale { current: i64 },
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

/// One asset of a space, whose policy is changed.
#[derive(Clone, Copy, Debug)]
pub struct AssetKey<'a> {
    pub space: &'a str,
    pub adam_id: &'a str,
    pub pricing_param: &'a str,
}

/// The accounts a policy of the asset may reserve from: the space's accounts, and those of them
/// that own the asset.
pub async fn reservable_accounts(
    conn: &mut AsyncPgConnection,
    asset: AssetKey<'_>,
) -> Result<(Vec<Uuid>, Vec<Uuid>), PolicyError> {
    let accounts: Vec<Uuid> = crate::ledger::accounts::list(conn, asset.space)
        .await?
        .into_iter()
        .map(|a| a.id)
        .collect();
    let owners =
        crate::ledger::assets::owners(conn, &accounts, asset.adam_id, asset.pricing_param).await?;
    Ok((accounts, owners))
}

/// A policy after [`replace`].
pub struct Replaced {
    pub policy: PolicyRow,
    pub entries: Vec<EntryRow>,
    /// The asset had no policy before.
    pub created: bool,
}

/// Creates or replaces the asset's policy with `new_entries` and its `wait_for_license`
/// setting (A12), if an existing policy's version is one of `versions` (any when `None`).
pub async fn replace(
    conn: &mut AsyncPgConnection,
    origin: &Origin,
    asset: AssetKey<'_>,
    versions: Option<&[i64]>,
    new_entries: &[EntryRow],
    wait_for_license: bool,
) -> Result<Replaced, PolicyError> {
    let AssetKey {
        space,
        adam_id,
        pricing_param: pricing,
    } = asset;
    let new_id = Uuid::now_v7();
    conn.transaction(async |conn| {
        if let Some(existing) = store::find_locked(conn, space, adam_id, pricing).await?
            && versions.is_some_and(|v| !v.contains(&existing.version))
        {
            return Err(PolicyError::Stale {
                current: existing.version,
            });
        }
        let row = store::replace(
            conn,
            space,
            adam_id,
            pricing,
            new_entries,
            wait_for_license,
            new_id,
        )
        .await?;
        // The upsert keeps an existing policy's id: the new id means it was inserted.
        let created = row.id == new_id;
        activity::record(
            conn,
            Activity {
                adam_id: Some(adam_id.to_owned()),
                pricing_param: Some(pricing.to_owned()),
                ..Activity::new(
                    origin,
                    if created {
                        "policy.created"
                    } else {
                        "policy.replaced"
                    },
                )
                .space(space)
                .details(serde_json::json!({"entries": new_entries.len(),
                                            "wait_for_license": wait_for_license}))
            },
        )
        .await?;
        let entries = store::entries_of(conn, &[row.id]).await?;
        Ok(Replaced {
            policy: row,
            entries,
            created,
        })
    })
    .await
}

/// Deletes the asset's policy if its version is one of `versions` (any when `None`).
pub async fn delete(
    conn: &mut AsyncPgConnection,
    origin: &Origin,
    asset: AssetKey<'_>,
    versions: Option<&[i64]>,
) -> Result<(), PolicyError> {
    let AssetKey {
        space,
        adam_id,
        pricing_param: pricing,
    } = asset;
    conn.transaction(async |conn| {
        let Some(existing) = store::find_locked(conn, space, adam_id, pricing).await? else {
            return Err(PolicyError::NotFound(format!(
                "policy for {adam_id}/{pricing}"
            )));
        };
        if versions.is_some_and(|v| !v.contains(&existing.version)) {
            return Err(PolicyError::Stale {
                current: existing.version,
            });
        }
        store::delete(conn, space, adam_id, pricing).await?;
        activity::record(
            conn,
            Activity {
                adam_id: Some(adam_id.to_owned()),
                pricing_param: Some(pricing.to_owned()),
                ..Activity::new(origin, "policy.deleted").space(space)
            },
        )
        .await?;
        Ok(())
    })
    .await
}
