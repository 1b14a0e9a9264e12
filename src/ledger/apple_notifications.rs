//! Apple notifications already received, per account: Apple may deliver one more than once,
//! and each `notificationId` is processed once. A notification refused for its content keeps
//! its refusal, so Apple's retries get the same answer.

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// Remembers the notification; false when it was received before.
pub async fn remember(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    notification_id: &str,
) -> diesel::QueryResult<bool> {
    let inserted = diesel::sql_query(
        "INSERT INTO apple_notifications (account_id, notification_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .bind::<diesel::sql_types::Text, _>(notification_id)
    .execute(conn)
    .await?;
    Ok(inserted != 0)
}

#[derive(diesel::QueryableByName)]
struct StoredRejection {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Jsonb>)]
    rejection: Option<serde_json::Value>,
}

/// The refusal kept for an already-received notification, if it was refused.
pub async fn rejection(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    notification_id: &str,
) -> diesel::QueryResult<Option<serde_json::Value>> {
    let rows: Vec<StoredRejection> = diesel::sql_query(
        "SELECT rejection FROM apple_notifications WHERE account_id = $1 AND notification_id = $2",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .bind::<diesel::sql_types::Text, _>(notification_id)
    .load(conn)
    .await?;
    Ok(rows.into_iter().find_map(|r| r.rejection))
}

/// Keeps the refusal of a received notification.
pub async fn set_rejection(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    notification_id: &str,
    rejection: &serde_json::Value,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "UPDATE apple_notifications SET rejection = $3 WHERE account_id = $1 AND notification_id = $2",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .bind::<diesel::sql_types::Text, _>(notification_id)
    .bind::<diesel::sql_types::Jsonb, _>(rejection)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Forgets a notification, so that Apple's next delivery of it is processed.
pub async fn forget(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    notification_id: &str,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "DELETE FROM apple_notifications WHERE account_id = $1 AND notification_id = $2",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .bind::<diesel::sql_types::Text, _>(notification_id)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Forgets the notifications received more than a day ago; returns how many.
pub async fn forget_older_than_a_day(conn: &mut AsyncPgConnection) -> diesel::QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM apple_notifications WHERE received_at < now() - interval '1 day'",
    )
    .execute(conn)
    .await
}
