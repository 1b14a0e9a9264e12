//! The activity log: every decision and state change, with who asked, which account, which
//! rule and which Apple event. Written in the same transaction as the change it describes.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::activity_log;
use crate::domain::origin::Origin;

/// One activity row, built fluently: `Activity::new(&origin, "space.created").space(id)`.
#[derive(Debug, Default, Insertable)]
#[diesel(table_name = activity_log)]
pub struct Activity {
    pub space_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub account_id: Option<Uuid>,
    pub assignment_id: Option<Uuid>,
    pub subject: Option<String>,
    pub adam_id: Option<String>,
    pub pricing_param: Option<String>,
    pub rule: Option<String>,
    pub apple_event_id: Option<String>,
    pub request_id: Option<String>,
    pub details: serde_json::Value,
}

impl Activity {
    /// `origin`: the caller's JWT `sub` (or `system` for background work) and the request id.
    pub fn new(origin: &Origin, action: &str) -> Self {
        Activity {
            actor: origin.actor.clone(),
            action: action.to_owned(),
            request_id: origin.request_id.clone(),
            details: serde_json::json!({}),
            ..Default::default()
        }
    }

    pub fn space(mut self, space: &str) -> Self {
        self.space_id = Some(space.to_owned());
        self
    }

    pub fn account(mut self, account: Uuid) -> Self {
        self.account_id = Some(account);
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

pub async fn record(conn: &mut AsyncPgConnection, activity: Activity) -> QueryResult<()> {
    diesel::insert_into(activity_log::table)
        .values(activity)
        .execute(conn)
        .await
        .map(|_| ())
}
