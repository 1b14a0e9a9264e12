//! What the decisions of one batch of allocations read ([`super::decide`]): filled by the store
//! ([`crate::ledger::allocation_load`]) in a fixed number of queries, with the asset rows locked.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::account_status::{self as status, AccountStatus, StatusState, WhenUnusable};
use super::allocation::AssetRef;
use super::model::{LicenseType, SubjectKind};
use super::policy::Policy;
use super::records::{AssignmentRow, SubjectRow};

/// One account owning one asset, with what allocation needs to know.
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
    /// The account's setting: `false` serves an asset only once the space has a distribution
    /// policy for it.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub new_assets_for_everyone: bool,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub adam_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub pricing_param: String,
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
}

impl Candidate {
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

/// Everything the decisions of one batch read.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub subjects: HashMap<(SubjectKind, String), SubjectRow>,
    /// Live assignments of the batch's subjects for the batch's assets.
    pub existing: Vec<AssignmentRow>,
    /// A12: how many wait in line for each of the batch's assets (the whole space's line, not
    /// only the batch's subjects); empty for the wait-list's own re-decisions.
    pub lines: HashMap<AssetRef, i64>,
    /// Waiting assignments (A12) of the batch's subjects for the batch's assets, by holder
    /// and asset (a wait-list run decides thousands of them at once).
    pub waiting: HashMap<(Uuid, AssetRef), AssignmentRow>,
    pub policies: HashMap<AssetRef, Policy>,
    /// Reservations whose subject holds no license yet, per asset and account (`None`: the
    /// reservation names no account).
    pub outstanding: HashMap<AssetRef, HashMap<Option<Uuid>, i64>>,
    /// Accounts owning each asset, in priority order.
    pub candidates: HashMap<AssetRef, Vec<Candidate>>,
    /// Distribution-list entries matching the batch's subjects: (account, kind, value).
    pub listed: HashSet<(Uuid, String, String)>,
    /// Licenses Apple already lists (the sync's mirror, `apple_assignments`) for the batch's
    /// subjects and assets: (account, asset, license type, serial / client user id). Such a
    /// license is counted in the account's `foreign_assigned`; allocating it to the same
    /// subject moves it to `held` instead of taking a free one (the double count, issue 13).
    pub at_apple: HashSet<AtApple>,
}

/// One license Apple lists: (account, asset, license type, serial / client user id).
pub type AtApple = (Uuid, AssetRef, LicenseType, String);
