//! Subjects: devices and users, with the group memberships the calling MDM reported.

use crate::db::prepared::Prepare;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::subjects;
use crate::engine::model::SubjectKind;

#[derive(Clone, Debug, Queryable, Selectable)]
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

/// What a caller says about a subject; `None` fields keep what is stored.
pub struct SubjectFacts<'a> {
    pub kind: SubjectKind,
    pub external_id: &'a str,
    pub groups: Option<&'a [String]>,
    pub user_external_id: Option<&'a str>,
    pub shared_ipad: Option<bool>,
}

/// Creates or updates a subject and returns it.
pub async fn upsert(
    conn: &mut AsyncPgConnection,
    space: &str,
    facts: &SubjectFacts<'_>,
) -> QueryResult<SubjectRow> {
    let groups: Option<Vec<Option<String>>> =
        facts.groups.map(|g| g.iter().cloned().map(Some).collect());
    diesel::sql_query(
        "INSERT INTO subjects (id, space_id, kind, external_id, groups, user_external_id, shared_ipad)
         VALUES ($1, $2, $3, $4, COALESCE($5, '{}'), $6, COALESCE($7, false))
         ON CONFLICT (space_id, kind, external_id) DO UPDATE SET
             groups = COALESCE($5, subjects.groups),
             user_external_id = COALESCE($6, subjects.user_external_id),
             shared_ipad = COALESCE($7, subjects.shared_ipad),
             updated_at = CASE WHEN ($5 IS NOT NULL AND $5 IS DISTINCT FROM subjects.groups)
                                 OR ($6 IS NOT NULL AND $6 IS DISTINCT FROM subjects.user_external_id)
                                 OR ($7 IS NOT NULL AND $7 IS DISTINCT FROM subjects.shared_ipad)
                               THEN now() ELSE subjects.updated_at END
         RETURNING id, space_id, kind, external_id, groups, user_external_id, shared_ipad",
    )
    .bind::<diesel::sql_types::Uuid, _>(Uuid::now_v7())
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Text, _>(facts.kind)
    .bind::<diesel::sql_types::Text, _>(facts.external_id)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Array<diesel::sql_types::Nullable<diesel::sql_types::Text>>>, _>(groups)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(facts.user_external_id)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Bool>, _>(facts.shared_ipad)
    .prepared()
    .get_result::<SubjectSql>(conn)
    .await
    .map(Into::into)
}

#[derive(QueryableByName)]
struct SubjectSql {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Text)]
    space_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    kind: SubjectKind,
    #[diesel(sql_type = diesel::sql_types::Text)]
    external_id: String,
    #[diesel(sql_type = diesel::sql_types::Array<diesel::sql_types::Nullable<diesel::sql_types::Text>>)]
    groups: Vec<Option<String>>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    user_external_id: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    shared_ipad: bool,
}

impl From<SubjectSql> for SubjectRow {
    fn from(s: SubjectSql) -> Self {
        SubjectRow {
            id: s.id,
            space_id: s.space_id,
            kind: s.kind,
            external_id: s.external_id,
            groups: s.groups,
            user_external_id: s.user_external_id,
            shared_ipad: s.shared_ipad,
        }
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
