//! Users registered with Apple per account (`users/create`): user-based licenses need the
//! user's `clientUserId` registered at that location first. A `user.deleted` lifecycle event
//! retires the user at each of them (`users/retire`): queued here as `retire_user` jobs,
//! `retiring` while Apple works on it, then `retired` (a later user license registers the user
//! again: only `registered` rows count as registered).

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::prepared::Prepare;
use crate::db::schema::apple_users;
use crate::ledger::jobs::JobKind;

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
            apple_users::event_id.eq(Some(event_id)),
            apple_users::retired_at.eq(None::<chrono::DateTime<chrono::Utc>>),
            apple_users::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
        .map(|_| ())
}

#[derive(diesel::QueryableByName)]
struct AccountId {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    account_id: Uuid,
}

/// Queues the retirement of `client_user_id` at every account of `space` where Apple has it
/// registered (or a retirement of it is under way), one `retire_user` job per account (a job
/// already queued for the same account and user is not doubled). Returns those accounts. Call
/// inside the transaction that revoked the user's licenses.
pub async fn queue_retirements(
    conn: &mut AsyncPgConnection,
    space: &str,
    client_user_id: &str,
) -> QueryResult<Vec<Uuid>> {
    let rows: Vec<AccountId> = diesel::sql_query(
        "INSERT INTO jobs (kind, account_id, payload, dedupe_key)
         SELECT $3, u.account_id, jsonb_build_object('client_user_id', u.client_user_id),
                $3 || ':' || u.account_id || ':' || u.client_user_id
           FROM apple_users u JOIN accounts a ON a.id = u.account_id
          WHERE a.space_id = $1 AND u.client_user_id = $2
            AND u.status IN ('registered', 'retiring')
          ORDER BY u.account_id
             ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL AND state = 'queued' DO NOTHING
      RETURNING account_id",
    )
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Text, _>(client_user_id)
    .bind::<diesel::sql_types::Text, _>(JobKind::RetireUser)
    .prepared()
    .load(conn)
    .await?;
    let mut accounts: Vec<Uuid> = rows.into_iter().map(|r| r.account_id).collect();
    if accounts.is_empty() {
        // Already queued for every account (the dedupe key): still name them.
        accounts = apple_users::table
            .inner_join(
                crate::db::schema::accounts::table
                    .on(crate::db::schema::accounts::id.eq(apple_users::account_id)),
            )
            .filter(crate::db::schema::accounts::space_id.eq(space))
            .filter(apple_users::client_user_id.eq(client_user_id))
            .filter(apple_users::status.eq_any(["registered", "retiring"]))
            .select(apple_users::account_id)
            .order(apple_users::account_id)
            .load(conn)
            .await?;
    }
    Ok(accounts)
}

/// Where a queued retirement stands (see [`retirements`]).
#[derive(Clone, Debug, diesel::QueryableByName)]
pub struct Retirement {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub job_id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub client_user_id: String,
    /// A license of the user at the job's account is still being released at Apple: the
    /// retirement waits (Apple must see the release first).
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub releasing: bool,
    /// The user got a user license at the account after the retirement was queued: it is in
    /// use again and is not retired.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub licensed_again: bool,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub queued_at: chrono::DateTime<chrono::Utc>,
}

/// The retirement jobs of `job_ids` (kind `retire_user`) and where each stands.
pub async fn retirements(
    conn: &mut AsyncPgConnection,
    job_ids: &[i64],
) -> QueryResult<Vec<Retirement>> {
    diesel::sql_query(
        "SELECT j.id AS job_id, j.payload->>'client_user_id' AS client_user_id,
                EXISTS (SELECT 1 FROM assignments x JOIN subjects s ON s.id = x.subject_id
                         WHERE x.account_id = j.account_id AND s.kind = 'user'
                           AND s.space_id = a.space_id
                           AND s.external_id = j.payload->>'client_user_id'
                           AND x.license_type = 'user' AND x.state = 'revoking') AS releasing,
                EXISTS (SELECT 1 FROM assignments x JOIN subjects s ON s.id = x.subject_id
                         WHERE x.account_id = j.account_id AND s.kind = 'user'
                           AND s.space_id = a.space_id
                           AND s.external_id = j.payload->>'client_user_id'
                           AND x.license_type = 'user'
                           AND x.state IN ('pending', 'associating', 'active')
                           -- Any live license Apple would take back, whenever it was made:
                           -- one allocated after the deletion, and one whose allocation
                           -- committed just after the deletion's revocations (its transaction
                           -- began before) and so was not revoked. A book (not revocable)
                           -- the deletion had to leave does not stop the retirement.
                           AND EXISTS (SELECT 1 FROM assets r
                                        WHERE r.account_id = x.account_id
                                          AND r.adam_id = x.adam_id
                                          AND r.pricing_param = x.pricing_param
                                          AND r.revocable)) AS licensed_again,
                j.created_at AS queued_at
           FROM jobs j JOIN accounts a ON a.id = j.account_id
          WHERE j.id = ANY($1) AND j.kind = $2 AND j.payload ? 'client_user_id'
          ORDER BY j.id",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(job_ids)
    .bind::<diesel::sql_types::Text, _>(JobKind::RetireUser)
    .load(conn)
    .await
}

#[derive(diesel::QueryableByName)]
struct Backlog {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    releasing: bool,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    newest: Option<chrono::DateTime<chrono::Utc>>,
}

/// All the queued retirements of `account` (claimed or not): whether any still waits for a
/// release, and when the newest was queued. A burst of deletions is retired together once both
/// are over.
pub async fn retirement_backlog(
    conn: &mut AsyncPgConnection,
    account: Uuid,
) -> QueryResult<(bool, Option<chrono::DateTime<chrono::Utc>>)> {
    let b: Backlog = diesel::sql_query(
        "SELECT COALESCE(bool_or(EXISTS (
                    SELECT 1 FROM assignments x JOIN subjects s ON s.id = x.subject_id
                     WHERE x.account_id = j.account_id AND s.kind = 'user'
                       AND s.space_id = a.space_id
                       AND s.external_id = j.payload->>'client_user_id'
                       AND x.license_type = 'user' AND x.state = 'revoking')), false) AS releasing,
                max(j.created_at) AS newest
           FROM jobs j JOIN accounts a ON a.id = j.account_id
          WHERE j.account_id = $1 AND j.kind = $2 AND j.state = 'queued'",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .bind::<diesel::sql_types::Text, _>(JobKind::RetireUser)
    .get_result(conn)
    .await?;
    Ok((b.releasing, b.newest))
}

/// Apple accepted the retirement of `users` at `account` as event `event_id`.
pub async fn mark_retiring(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    users: &[String],
    event_id: &str,
) -> QueryResult<usize> {
    diesel::update(
        apple_users::table
            .filter(apple_users::account_id.eq(account))
            .filter(apple_users::client_user_id.eq_any(users))
            .filter(apple_users::status.eq_any(["registered", "retiring"])),
    )
    .set((
        apple_users::status.eq("retiring"),
        apple_users::event_id.eq(Some(event_id)),
        apple_users::updated_at.eq(diesel::dsl::now),
    ))
    .execute(conn)
    .await
}

/// Apple finished retiring `users` at `account` (event `event_id`): those whose row still names
/// that event are `retired` (a sync may have seen them registered meanwhile; a user registered
/// again by `users/create` names the creation's event and stays registered). Returns them.
pub async fn mark_retired(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    users: &[String],
    event_id: &str,
) -> QueryResult<Vec<String>> {
    diesel::update(
        apple_users::table
            .filter(apple_users::account_id.eq(account))
            .filter(apple_users::client_user_id.eq_any(users))
            .filter(apple_users::status.eq_any(["retiring", "registered"]))
            .filter(apple_users::event_id.eq(event_id)),
    )
    .set((
        apple_users::status.eq("retired"),
        apple_users::retired_at.eq(diesel::dsl::now),
        apple_users::updated_at.eq(diesel::dsl::now),
    ))
    .returning(apple_users::client_user_id)
    .get_results(conn)
    .await
}

/// Apple did not retire `users` at `account` (event `event_id`): they are `registered` again.
pub async fn unmark_retiring(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    users: &[String],
    event_id: &str,
) -> QueryResult<usize> {
    diesel::update(
        apple_users::table
            .filter(apple_users::account_id.eq(account))
            .filter(apple_users::client_user_id.eq_any(users))
            .filter(apple_users::status.eq("retiring"))
            .filter(apple_users::event_id.eq(event_id)),
    )
    .set((
        apple_users::status.eq("registered"),
        apple_users::updated_at.eq(diesel::dsl::now),
    ))
    .execute(conn)
    .await
}
