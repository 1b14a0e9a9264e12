//! What the API shows of accounts beyond their rows: honest statuses (time-driven transitions
//! persisted first), distribution lists, license totals, and how many licenses a requested
//! deletion still waits for.

use std::collections::HashMap;

use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use super::{AccountError, checks};
use crate::ledger::accounts::{self as store, AccountRow, DistributionEntry};
use crate::ledger::assets::{self, Totals};

/// Accounts' rows after their time-driven status transitions (expiring, expired, end of
/// throttling) are persisted, in the order given.
pub async fn refreshed(
    conn: &mut AsyncPgConnection,
    rows: Vec<AccountRow>,
) -> Result<Vec<AccountRow>, AccountError> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(checks::refresh(conn, row).await?);
    }
    Ok(out)
}

/// The details of some accounts that are not in their rows.
pub struct Details {
    pub lists: Vec<DistributionEntry>,
    pub totals: Vec<Totals>,
    /// Per account whose deletion was requested: licenses Apple still holds or is releasing.
    pub releasing: HashMap<Uuid, i64>,
}

/// Loads the [`Details`] of `rows` (one query for lists, one for totals, one per account being
/// deleted).
pub async fn details(
    conn: &mut AsyncPgConnection,
    rows: &[AccountRow],
) -> Result<Details, diesel::result::Error> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let lists = store::distribution(conn, &ids).await?;
    let totals = assets::totals(conn, &ids).await?;
    let mut releasing = HashMap::new();
    for r in rows.iter().filter(|r| r.delete_requested_at.is_some()) {
        releasing.insert(
            r.id,
            crate::ledger::assignments::count_at_apple(conn, r.id).await?,
        );
    }
    Ok(Details {
        lists,
        totals,
        releasing,
    })
}
