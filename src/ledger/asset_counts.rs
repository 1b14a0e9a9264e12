//! An account's license counts per asset as Apple's results and notifications move them:
//! licenses given back to the pool, licenses that stay consumed at Apple, counts re-read from
//! Apple.

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// `given_back` licenses return to the pool (their associations failed) and `still_at_apple`
/// count as assigned elsewhere (Apple refused to release them).
pub async fn settle(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    adam_id: &str,
    pricing_param: &str,
    given_back: i32,
    still_at_apple: i32,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "UPDATE assets SET held = held - $4, foreign_assigned = foreign_assigned + $5, updated_at = now()
          WHERE account_id = $1 AND adam_id = $2 AND pricing_param = $3 AND ($4 > 0 OR $5 > 0)",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .bind::<diesel::sql_types::Text, _>(adam_id)
    .bind::<diesel::sql_types::Text, _>(pricing_param)
    .bind::<diesel::sql_types::Integer, _>(given_back)
    .bind::<diesel::sql_types::Integer, _>(still_at_apple)
    .execute(conn)
    .await
    .map(|_| ())
}

/// The asset's counts as Apple reports them (`total`, `assigned`). Licenses assigned beyond
/// what the ledger holds at Apple count as assigned elsewhere: the ledger holds at Apple its
/// active and revoking assignments and those of events in flight other than `except_event`.
pub async fn refresh(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    adam_id: &str,
    pricing_param: &str,
    total: i32,
    assigned: i32,
    except_event: &str,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "UPDATE assets s SET apple_total = $4, apple_assigned = $5,
                foreign_assigned = GREATEST(0, $5 - (SELECT count(*) FROM assignments a
                     WHERE a.account_id = s.account_id AND a.adam_id = s.adam_id
                       AND a.pricing_param = s.pricing_param
                       AND (a.state IN ('active', 'revoking')
                            OR (a.state = 'associating' AND a.apple_event_id <> $6)))),
                synced_at = now(), updated_at = now()
          WHERE account_id = $1 AND adam_id = $2 AND pricing_param = $3",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .bind::<diesel::sql_types::Text, _>(adam_id)
    .bind::<diesel::sql_types::Text, _>(pricing_param)
    .bind::<diesel::sql_types::Integer, _>(total)
    .bind::<diesel::sql_types::Integer, _>(assigned)
    .bind::<diesel::sql_types::Text, _>(except_event)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Apple's total for the asset changed by `delta` (kept within 0 and `i32::MAX`).
pub async fn add_to_total(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    adam_id: &str,
    pricing_param: &str,
    delta: i64,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "UPDATE assets
            SET apple_total = LEAST(GREATEST(0, apple_total::bigint + $4), 2147483647)::int,
                updated_at = now()
          WHERE account_id = $1 AND adam_id = $2 AND pricing_param = $3",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .bind::<diesel::sql_types::Text, _>(adam_id)
    .bind::<diesel::sql_types::Text, _>(pricing_param)
    .bind::<diesel::sql_types::BigInt, _>(delta)
    .execute(conn)
    .await
    .map(|_| ())
}
