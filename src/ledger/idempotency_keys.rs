//! Idempotency keys (the transport's `Idempotency-Key` header, rule A6): a key is claimed inside
//! the transaction of the change it guards, and the response is stored in the same transaction.

use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// What an earlier request with the key stored.
#[derive(diesel::QueryableByName)]
pub struct Stored {
    #[diesel(sql_type = diesel::sql_types::Bytea)]
    pub request_fingerprint: Vec<u8>,
    /// `None` while that request is still being processed.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Integer>)]
    pub status_code: Option<i32>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Jsonb>)]
    pub response_body: Option<serde_json::Value>,
}

/// Claims the key; false when a request already holds it (a concurrent holder's row lock
/// makes this wait until that request's transaction ends).
pub async fn claim(
    conn: &mut AsyncPgConnection,
    space: &str,
    caller: &str,
    key: &str,
    fingerprint: &[u8],
) -> diesel::QueryResult<bool> {
    let inserted = diesel::sql_query(
        "INSERT INTO idempotency_keys (space_id, caller, key, request_fingerprint)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Text, _>(caller)
    .bind::<diesel::sql_types::Text, _>(key)
    .bind::<diesel::sql_types::Bytea, _>(fingerprint)
    .execute(conn)
    .await?;
    Ok(inserted == 1)
}

/// What the key's first request stored.
pub async fn stored(
    conn: &mut AsyncPgConnection,
    space: &str,
    caller: &str,
    key: &str,
) -> diesel::QueryResult<Stored> {
    diesel::sql_query(
        "SELECT request_fingerprint, status_code, response_body FROM idempotency_keys
          WHERE space_id = $1 AND caller = $2 AND key = $3",
    )
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Text, _>(caller)
    .bind::<diesel::sql_types::Text, _>(key)
    .get_result(conn)
    .await
}

/// Stores the response of the key's request.
pub async fn keep_response(
    conn: &mut AsyncPgConnection,
    space: &str,
    caller: &str,
    key: &str,
    status: u16,
    body: &serde_json::Value,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "UPDATE idempotency_keys SET status_code = $4, response_body = $5
          WHERE space_id = $1 AND caller = $2 AND key = $3",
    )
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Text, _>(caller)
    .bind::<diesel::sql_types::Text, _>(key)
    .bind::<diesel::sql_types::Integer, _>(status as i32)
    .bind::<diesel::sql_types::Jsonb, _>(body)
    .execute(conn)
    .await
    .map(|_| ())
}
