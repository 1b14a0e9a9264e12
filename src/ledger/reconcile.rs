//! The reads of Reconcile ([`crate::reconcile`]), set-based: a page of live assignments that a
//! criterion could apply to (keyset on the assignment id), then, for the whole page, the
//! devices of its user licenses, the policies of its assets and the distribution-list entries
//! matching its subjects — four statements per page whatever its size.
//!
//! The page's filter keeps out what no criterion can apply to, so a space whose policies have
//! no disallowed or FCFS entries, without fallback licenses from listed accounts and without
//! the unseen criterion reads nothing: an assignment is read when its asset's policy has a
//! disallowed or FCFS entry, or it is a `fallback` license of an account with a list, or its
//! subject was last seen before the cutoff. Licenses of assets Apple does not take back (books,
//! once at Apple) are never candidates: revoking them only fails.

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::domain::model::{AssignmentState, LicenseType, Rule, SubjectKind};
use crate::domain::records::EntryRow;

/// A live assignment with its holder, as Reconcile judges it.
#[derive(Clone, Debug, diesel::QueryableByName)]
pub struct Live {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub account_id: Uuid,
    #[diesel(sql_type = Text)]
    pub adam_id: String,
    #[diesel(sql_type = Text)]
    pub pricing_param: String,
    #[diesel(sql_type = Text)]
    pub license_type: LicenseType,
    #[diesel(sql_type = Text)]
    pub state: AssignmentState,
    #[diesel(sql_type = Text)]
    pub rule: Rule,
    #[diesel(sql_type = Text)]
    pub subject_kind: SubjectKind,
    #[diesel(sql_type = Text)]
    pub external_id: String,
    #[diesel(sql_type = Array<Nullable<Text>>)]
    pub groups: Vec<Option<String>>,
    #[diesel(sql_type = Nullable<Text>)]
    pub user_external_id: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_seen_at: Option<DateTime<Utc>>,
    /// The account has a non-empty distribution list (read for `fallback` licenses only).
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub has_list: bool,
    /// The first account by priority owning the asset in the space (`fallback` licenses only).
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub first_owner: Option<Uuid>,
}

/// Which assignments a page reads.
pub struct PageFilter<'a> {
    pub space: &'a str,
    pub account: Option<Uuid>,
    /// Only this assignment (the re-check before revoking it).
    pub assignment: Option<Uuid>,
    /// Only these subjects' assignments (a lifecycle event re-deciding a subject's licenses).
    pub subjects: Option<&'a [Uuid]>,
    /// Keyset: ids after this one.
    pub after: Option<Uuid>,
    pub unseen_before: Option<DateTime<Utc>>,
    pub size: i64,
}

/// One page of the live assignments a criterion could apply to, in id order. With
/// `lock`, the rows are locked (`FOR UPDATE OF a`), the first step of the ledger's lock order.
pub async fn page(
    conn: &mut AsyncPgConnection,
    f: &PageFilter<'_>,
    lock: bool,
) -> diesel::QueryResult<Vec<Live>> {
    diesel::sql_query(format!(
        "SELECT a.id, a.account_id, a.adam_id, a.pricing_param, a.license_type, a.state, a.rule,
                sub.kind AS subject_kind, sub.external_id, sub.groups, sub.user_external_id,
                sub.last_seen_at,
                (a.rule = 'fallback' AND EXISTS (
                    SELECT 1 FROM account_distribution_entries d
                     WHERE d.account_id = a.account_id)) AS has_list,
                CASE WHEN a.rule = 'fallback' THEN (
                    SELECT o.id FROM accounts o
                      JOIN assets x ON x.account_id = o.id
                     WHERE o.space_id = a.space_id AND x.adam_id = a.adam_id
                       AND x.pricing_param = a.pricing_param
                     ORDER BY o.priority, o.id LIMIT 1) END AS first_owner
           FROM assignments a
           JOIN subjects sub ON sub.id = a.subject_id
           JOIN assets s ON s.account_id = a.account_id AND s.adam_id = a.adam_id
                        AND s.pricing_param = a.pricing_param
          WHERE a.space_id = $1 AND a.state IN ('pending', 'associating', 'active')
            AND ($2::uuid IS NULL OR a.account_id = $2)
            AND ($3::uuid IS NULL OR a.id = $3)
            AND ($4::uuid IS NULL OR a.id > $4)
            AND (s.revocable OR a.state = 'pending')
            AND (EXISTS (SELECT 1 FROM distribution_policies p
                           JOIN policy_entries e ON e.policy_id = p.id
                          WHERE p.space_id = a.space_id AND p.adam_id = a.adam_id
                            AND p.pricing_param = a.pricing_param
                            AND e.mode IN ('disallowed', 'fcfs'))
              OR (a.rule = 'fallback' AND EXISTS (
                    SELECT 1 FROM account_distribution_entries d
                     WHERE d.account_id = a.account_id))
              OR sub.last_seen_at < $5)
            AND ($7::uuid[] IS NULL OR a.subject_id = ANY($7))
          ORDER BY a.id
          LIMIT $6
          {}",
        if lock { "FOR UPDATE OF a" } else { "" }
    ))
    .bind::<Text, _>(f.space)
    .bind::<Nullable<SqlUuid>, _>(f.account)
    .bind::<Nullable<SqlUuid>, _>(f.assignment)
    .bind::<Nullable<SqlUuid>, _>(f.after)
    .bind::<Nullable<Timestamptz>, _>(f.unseen_before)
    .bind::<BigInt, _>(f.size)
    .bind::<Nullable<Array<SqlUuid>>, _>(f.subjects)
    .load(conn)
    .await
}

/// A device of one of the page's users, with its groups.
#[derive(Clone, Debug, diesel::QueryableByName)]
pub struct UserDevice {
    #[diesel(sql_type = Text)]
    pub user_external_id: String,
    #[diesel(sql_type = Text)]
    pub serial: String,
    #[diesel(sql_type = Array<Nullable<Text>>)]
    pub groups: Vec<Option<String>>,
}

/// The space's devices whose user is one of `users` (index `subjects_by_user`).
pub async fn devices_of(
    conn: &mut AsyncPgConnection,
    space: &str,
    users: &[&str],
) -> diesel::QueryResult<Vec<UserDevice>> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    diesel::sql_query(
        "SELECT user_external_id, external_id AS serial, groups FROM subjects
          WHERE space_id = $1 AND kind = 'device' AND user_external_id = ANY($2)",
    )
    .bind::<Text, _>(space)
    .bind::<Array<Text>, _>(users)
    .load(conn)
    .await
}

/// One entry of the policy of one of the page's assets.
#[derive(Clone, Debug, diesel::QueryableByName)]
pub struct AssetEntry {
    #[diesel(sql_type = Text)]
    pub adam_id: String,
    #[diesel(sql_type = Text)]
    pub pricing_param: String,
    #[diesel(sql_type = SqlUuid)]
    pub policy_id: Uuid,
    #[diesel(sql_type = Text)]
    pub target_kind: String,
    #[diesel(sql_type = Text)]
    pub target: String,
    #[diesel(sql_type = Text)]
    pub mode: String,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub account_id: Option<Uuid>,
}

impl AssetEntry {
    pub fn entry(&self) -> EntryRow {
        EntryRow {
            policy_id: self.policy_id,
            target_kind: self.target_kind.clone(),
            target: self.target.clone(),
            mode: self.mode.clone(),
            account_id: self.account_id,
        }
    }
}

/// The policy entries of the given assets (parallel arrays of adam id and pricing) in `space`.
pub async fn policy_entries(
    conn: &mut AsyncPgConnection,
    space: &str,
    adams: &[&str],
    pricings: &[&str],
) -> diesel::QueryResult<Vec<AssetEntry>> {
    if adams.is_empty() {
        return Ok(Vec::new());
    }
    diesel::sql_query(
        "SELECT p.adam_id, p.pricing_param, p.id AS policy_id, e.target_kind, e.target, e.mode,
                e.account_id
           FROM distribution_policies p
           JOIN policy_entries e ON e.policy_id = p.id
           JOIN unnest($2::text[], $3::text[]) AS want(adam_id, pricing_param)
             ON want.adam_id = p.adam_id AND want.pricing_param = p.pricing_param
          WHERE p.space_id = $1",
    )
    .bind::<Text, _>(space)
    .bind::<Array<Text>, _>(adams)
    .bind::<Array<Text>, _>(pricings)
    .load(conn)
    .await
}

/// A distribution-list entry matching one of the page's subjects.
#[derive(Clone, Debug, diesel::QueryableByName)]
pub struct ListEntry {
    #[diesel(sql_type = SqlUuid)]
    pub account_id: Uuid,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Text)]
    pub value: String,
}

/// The entries of the lists of `accounts` naming one of `serials`, `users` or `groups`.
pub async fn listed(
    conn: &mut AsyncPgConnection,
    accounts: &[Uuid],
    serials: &[&str],
    users: &[&str],
    groups: &[&str],
) -> diesel::QueryResult<Vec<ListEntry>> {
    if accounts.is_empty() {
        return Ok(Vec::new());
    }
    diesel::sql_query(
        "SELECT account_id, kind, value FROM account_distribution_entries
          WHERE account_id = ANY($1)
            AND ((kind = 'device' AND value = ANY($2)) OR (kind = 'user' AND value = ANY($3))
              OR (kind = 'group' AND value = ANY($4)))",
    )
    .bind::<Array<SqlUuid>, _>(accounts)
    .bind::<Array<Text>, _>(serials)
    .bind::<Array<Text>, _>(users)
    .bind::<Array<Text>, _>(groups)
    .load(conn)
    .await
}
