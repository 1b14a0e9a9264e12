//! Subjects: devices and users, with the group memberships the calling MDM reported.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::subjects;
use crate::domain::model::SubjectKind;
use crate::domain::records::SubjectRow;

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
