//! Spaces: create, change and delete them, each change with its activity row in one
//! transaction. The statements are
//! `ledger::spaces`'; the HTTP layer is `api::spaces`.

use diesel_async::{AsyncConnection, AsyncPgConnection};

use crate::domain::origin::Origin;
use crate::ledger::activity::{self, Activity};
use crate::ledger::spaces::{self as store, NewSpace, SpaceChanges, SpaceRow};

#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    #[error("space {0} not found")]
    NotFound(String),
    /// The version the change was based on is not the current one.
    #[error("stale version")]
    Stale { current: i64 },
    /// A space that still has token accounts is not deleted.
    #[error("space {space} still has {accounts} token accounts")]
    HasAccounts { space: String, accounts: i64 },
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

/// Creates a space (a unique violation means the id is taken).
pub async fn create(
    conn: &mut AsyncPgConnection,
    origin: &Origin,
    new: NewSpace<'_>,
) -> Result<SpaceRow, diesel::result::Error> {
    conn.transaction(async |conn| {
        let row = store::insert(conn, new).await?;
        activity::record(conn, Activity::new(origin, "space.created").space(&row.id)).await?;
        Ok(row)
    })
    .await
}

/// Changes a space if its version is one of `versions` (any when `None`).
pub async fn update(
    conn: &mut AsyncPgConnection,
    origin: &Origin,
    id: &str,
    versions: Option<&[i64]>,
    changes: SpaceChanges<'_>,
) -> Result<SpaceRow, SpaceError> {
    conn.transaction(
        async |conn| match store::update(conn, id, versions, changes).await? {
            Some(row) => {
                activity::record(conn, Activity::new(origin, "space.updated").space(&row.id))
                    .await?;
                Ok(row)
            }
            None => Err(missing_or_stale(conn, id).await),
        },
    )
    .await
}

/// Deletes a space without token accounts, with its policies, subjects, finished assignments and
/// idempotency keys, if its version is one of `versions` (any when `None`).
pub async fn delete(
    conn: &mut AsyncPgConnection,
    origin: &Origin,
    id: &str,
    versions: Option<&[i64]>,
) -> Result<(), SpaceError> {
    conn.transaction(async |conn| {
        let Some(version) = store::lock_for_delete(conn, id).await? else {
            return Err(SpaceError::NotFound(id.to_owned()));
        };
        if versions.is_some_and(|v| !v.contains(&version)) {
            return Err(SpaceError::Stale { current: version });
        }
        let accounts = store::account_count(conn, id).await?;
        if accounts > 0 {
            return Err(SpaceError::HasAccounts {
                space: id.to_owned(),
                accounts,
            });
        }
        store::delete_contents(conn, id).await?;
        store::delete(conn, id, None).await?;
        activity::record(conn, Activity::new(origin, "space.deleted").space(id)).await?;
        Ok(())
    })
    .await
}

/// After a conditional write matched nothing: gone, or changed since.
async fn missing_or_stale(conn: &mut AsyncPgConnection, id: &str) -> SpaceError {
    match store::find(conn, id).await {
        Ok(Some(row)) => SpaceError::Stale {
            current: row.version,
        },
        Ok(None) => SpaceError::NotFound(id.to_owned()),
        Err(e) => e.into(),
    }
}
