//! Users registered with Apple per account (`users/create`): user-based licenses need the
//! user's `clientUserId` registered at that location first.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::apple_users;

/// Those of `users` already registered at `account`.
pub async fn registered_among(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    users: &[String],
) -> QueryResult<Vec<String>> {
    apple_users::table
        .filter(apple_users::account_id.eq(account))
        .filter(apple_users::client_user_id.eq_any(users))
        .filter(apple_users::status.eq("registered"))
        .select(apple_users::client_user_id)
        .load(conn)
        .await
}

/// Remembers `users` as registered at `account` by Apple's event `event_id`.
pub async fn save_registered(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    users: &[&str],
    event_id: &str,
) -> QueryResult<()> {
    if users.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = users
        .iter()
        .map(|u| {
            (
                apple_users::account_id.eq(account),
                apple_users::client_user_id.eq(*u),
                apple_users::status.eq("registered"),
                apple_users::event_id.eq(Some(event_id)),
            )
        })
        .collect();
    diesel::insert_into(apple_users::table)
        .values(rows)
        .on_conflict((apple_users::account_id, apple_users::client_user_id))
        .do_update()
        .set((
            apple_users::status.eq("registered"),
            apple_users::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
        .map(|_| ())
}
