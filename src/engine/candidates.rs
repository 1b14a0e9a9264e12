//! The accounts that own an asset in a space, in priority order, with what allocation needs to
//! know about each: counts, usability, distribution-list membership. One query.

use chrono::{DateTime, Utc};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::accounts::WhenUnusable;
use crate::accounts::status::{self, AccountStatus, StatusState};

#[derive(Clone, Debug, diesel::QueryableByName)]
pub struct Candidate {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub name: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub priority: i32,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub status: AccountStatus,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub status_reason: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    pub throttled_until: Option<DateTime<Utc>>,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub token_expires_at: DateTime<Utc>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub when_unusable: WhenUnusable,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub deleting: bool,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub apple_total: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub foreign_assigned: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub held: i32,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub device_assignable: bool,
    /// The account has a non-empty distribution list.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub has_list: bool,
    /// The subject is on it.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub listed: bool,
}

impl Candidate {
    /// Licenses free for this allocation, after `holdback` reserved for others.
    pub fn free(&self, holdback: i64) -> i64 {
        self.apple_total as i64 - self.foreign_assigned as i64 - self.held as i64 - holdback
    }

    /// The account's status now (time-driven transitions applied).
    pub fn effective_status(&self, now: DateTime<Utc>) -> StatusState {
        status::next(
            &StatusState {
                status: self.status,
                reason: self.status_reason.clone(),
                throttled_until: self.throttled_until,
            },
            self.token_expires_at,
            None,
            now,
        )
    }
}

/// Identities a distribution list may name for this subject.
pub struct ListKeys<'a> {
    pub serial: Option<&'a str>,
    pub users: &'a [String],
    pub groups: &'a [String],
}

pub async fn load(
    conn: &mut AsyncPgConnection,
    space: &str,
    adam_id: &str,
    pricing_param: &str,
    keys: &ListKeys<'_>,
) -> diesel::QueryResult<Vec<Candidate>> {
    diesel::sql_query(
        "SELECT a.id, a.name, a.priority, a.status, a.status_reason, a.throttled_until,
                a.token_expires_at, a.when_unusable, a.delete_requested_at IS NOT NULL AS deleting,
                s.apple_total, s.foreign_assigned, s.held, s.device_assignable,
                EXISTS (SELECT 1 FROM account_distribution_entries d WHERE d.account_id = a.id) AS has_list,
                EXISTS (SELECT 1 FROM account_distribution_entries d
                         WHERE d.account_id = a.id
                           AND ((d.kind = 'device' AND d.value = $4)
                             OR (d.kind = 'user' AND d.value = ANY($5))
                             OR (d.kind = 'group' AND d.value = ANY($6)))) AS listed
           FROM accounts a
           JOIN assets s ON s.account_id = a.id AND s.adam_id = $2 AND s.pricing_param = $3
          WHERE a.space_id = $1
          ORDER BY a.priority",
    )
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Text, _>(adam_id)
    .bind::<diesel::sql_types::Text, _>(pricing_param)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(keys.serial)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(keys.users)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(keys.groups)
    .load(conn)
    .await
}
