//! Subjects: devices and users, with the group memberships the calling MDM reported.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::subjects;
use crate::engine::model::SubjectKind;

#[derive(Clone, Debug, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = subjects)]
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

pub async fn find(
    conn: &mut AsyncPgConnection,
    space: &str,
    kind: SubjectKind,
    external_id: &str,
) -> QueryResult<Option<SubjectRow>> {
    subjects::table
        .filter(subjects::space_id.eq(space))
        .filter(subjects::kind.eq(kind))
        .filter(subjects::external_id.eq(external_id))
        .select(SubjectRow::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn by_ids(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<SubjectRow>> {
    subjects::table
        .filter(subjects::id.eq_any(ids))
        .select(SubjectRow::as_select())
        .load(conn)
        .await
}
