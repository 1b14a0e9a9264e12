//! Assignments: the ledger rows of licenses (life cycle in design §4).

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::assignments;

/// All assignment rows of an account, finished ones included.
pub async fn count_for_account(conn: &mut AsyncPgConnection, account: Uuid) -> QueryResult<i64> {
    assignments::table
        .filter(assignments::account_id.eq(account))
        .count()
        .get_result(conn)
        .await
}

/// Live (license-holding) assignments of an account.
pub async fn count_live(conn: &mut AsyncPgConnection, account: Uuid) -> QueryResult<i64> {
    assignments::table
        .filter(assignments::account_id.eq(account))
        .filter(assignments::state.eq_any(["pending", "associating", "active"]))
        .count()
        .get_result(conn)
        .await
}

/// Assignments still holding or releasing a license at Apple (`associating`, `active`,
/// `revoking`).
pub async fn count_at_apple(conn: &mut AsyncPgConnection, account: Uuid) -> QueryResult<i64> {
    assignments::table
        .filter(assignments::account_id.eq(account))
        .filter(assignments::state.eq_any(["associating", "active", "revoking"]))
        .count()
        .get_result(conn)
        .await
}

#[derive(diesel::QueryableByName, Debug, Default, Clone, Copy)]
pub struct RevokeCounts {
    /// Pending assignments never sent to Apple: revoked at once.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub dropped: i64,
    /// Assignments Apple holds (or is associating): now `revoking`, for the dispatcher.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub revoking: i64,
}

/// Starts revocation of every live assignment of an account (V1 "all of an account's"): pending
/// ones (never sent) become `revoked`, the others `revoking`; the freed licenses return to the
/// pool at once (`held` drops in the same statement).
pub async fn revoke_all_of_account(
    conn: &mut AsyncPgConnection,
    account: Uuid,
) -> QueryResult<RevokeCounts> {
    diesel::sql_query(
        "WITH changed AS (
             UPDATE assignments
                SET state = CASE WHEN state = 'pending' THEN 'revoked' ELSE 'revoking' END,
                    version = version + 1,
                    updated_at = now()
              WHERE account_id = $1 AND state IN ('pending', 'associating', 'active')
          RETURNING adam_id, pricing_param, state
         ), released AS (
             UPDATE assets a
                SET held = a.held - c.n, updated_at = now()
               FROM (SELECT adam_id, pricing_param, count(*) AS n FROM changed
                      GROUP BY adam_id, pricing_param) c
              WHERE a.account_id = $1 AND a.adam_id = c.adam_id
                AND a.pricing_param = c.pricing_param
          RETURNING 1
         )
         SELECT count(*) FILTER (WHERE state = 'revoked') AS dropped,
                count(*) FILTER (WHERE state = 'revoking') AS revoking
           FROM changed",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .get_result(conn)
    .await
}
