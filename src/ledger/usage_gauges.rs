//! License usage per space for the Prometheus gauges of `GET /metrics`: one aggregate query over
//! the `assets` rows of the space's accounts, run at scrape time.
//!
//! Per asset row: `owned` = Apple's total as last synced, `held` = this ledger's live
//! assignments, `assigned_elsewhere` = licenses assigned at Apple that this instance did not
//! assign, `available` = `owned - assigned_elsewhere - held` (never below 0 per row: an
//! overcommitted asset does not hide another's free licenses). Every space is reported, with
//! zeros when it has no account yet, so a space's series exist from its creation on.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// A space's license figures, summed over its accounts and assets.
#[derive(Clone, Debug, PartialEq, Eq, QueryableByName)]
pub struct SpaceUsage {
    #[diesel(sql_type = Text)]
    pub space: String,
    #[diesel(sql_type = BigInt)]
    pub owned: i64,
    #[diesel(sql_type = BigInt)]
    pub held: i64,
    #[diesel(sql_type = BigInt)]
    pub assigned_elsewhere: i64,
    #[diesel(sql_type = BigInt)]
    pub available: i64,
}

/// Every space's figures, in space id order.
pub async fn per_space(conn: &mut AsyncPgConnection) -> QueryResult<Vec<SpaceUsage>> {
    diesel::sql_query(
        "SELECT sp.id AS space,
                COALESCE(SUM(s.apple_total), 0)::bigint AS owned,
                COALESCE(SUM(s.held), 0)::bigint AS held,
                COALESCE(SUM(s.foreign_assigned), 0)::bigint AS assigned_elsewhere,
                COALESCE(SUM(GREATEST(0, s.apple_total - s.foreign_assigned - s.held)), 0)::bigint
                    AS available
           FROM spaces sp
           LEFT JOIN accounts a ON a.space_id = sp.id
           LEFT JOIN assets s ON s.account_id = a.id
          GROUP BY sp.id
          ORDER BY sp.id",
    )
    .load(conn)
    .await
}
