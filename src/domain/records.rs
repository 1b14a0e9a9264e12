//! The ledger's records the rules read: assignments, subjects and distribution-policy entries.
//!
//! Plain data. They carry diesel's mapping derives (as the text enums of [`super::model`] do),
//! which name the tables of [`crate::db::schema`], a description of the tables with no I/O; the
//! statements that read and write them are the store's ([`crate::ledger`]).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::model::{AssignmentState, LicenseType, Rule, SubjectKind};
use crate::db::schema;

#[derive(Clone, Debug, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = schema::assignments)]
pub struct AssignmentRow {
    pub id: Uuid,
    pub space_id: String,
    pub account_id: Uuid,
    pub adam_id: String,
    pub pricing_param: String,
    pub subject_id: Uuid,
    pub license_type: LicenseType,
    pub state: AssignmentState,
    pub rule: Rule,
    pub decision: serde_json::Value,
    pub requested_by: String,
    pub reason: String,
    pub apple_event_id: Option<String>,
    pub batch_id: Option<Uuid>,
    pub error: Option<serde_json::Value>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Who asked for the revocation (JWT subject, or `system`); `None` until one was asked.
    pub revoked_by: Option<String>,
    pub revocation_reason: Option<String>,
    pub revocation_requested_at: Option<DateTime<Utc>>,
    pub revocation_request_id: Option<String>,
}

#[derive(Clone, Debug, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = schema::subjects)]
pub struct SubjectRow {
    pub id: Uuid,
    pub space_id: String,
    pub kind: SubjectKind,
    pub external_id: String,
    pub groups: Vec<Option<String>>,
    pub user_external_id: Option<String>,
    pub shared_ipad: bool,
}

impl SubjectRow {
    pub fn group_names(&self) -> Vec<String> {
        self.groups.iter().flatten().cloned().collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::policy_entries)]
pub struct EntryRow {
    pub policy_id: Uuid,
    pub target_kind: String,
    pub target: String,
    pub mode: String,
    pub account_id: Option<Uuid>,
}
