//! The statements of bulk operations ([`crate::bulk`], rule V6): the operations
//! (`bulk_operations`: what was asked, state, counts, error sample, the index of the next
//! subject) and their subjects (`bulk_operation_items`, one row per subject in the order given,
//! written with the operation in one statement).
//!
//! The worker claims an unfinished operation with `FOR UPDATE SKIP LOCKED` inside the
//! transaction that processes its next chunk and advances `next_index` and the counts: the row
//! stays locked until the chunk's effects and the operation's progress commit together, so
//! replicas never process a chunk twice, and a process killed mid-chunk leaves the operation as
//! it was before the chunk. Cancelling updates the same row, so it waits for the chunk in hand
//! and takes effect before the next one.
//!
//! Also here: resolving a selector (a group's members, an asset's holders), which assets a
//! space owns, and the live assignments a chunk of a revoking operation releases.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::{bulk_operation_items, bulk_operations};
use crate::domain::allocation::AssetRef;
use crate::domain::bulk::{BulkAction, BulkCounts, BulkState, BulkSubject};
use crate::domain::model::{LicenseWish, SubjectKind};

/// One operation as stored.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = bulk_operations, check_for_backend(diesel::pg::Pg))]
pub struct BulkRow {
    pub id: Uuid,
    pub space_id: String,
    pub action: BulkAction,
    pub assets: serde_json::Value,
    pub selector: Option<serde_json::Value>,
    pub license_type: LicenseWish,
    pub reason: String,
    pub state: BulkState,
    pub subjects: i32,
    pub total: i32,
    pub succeeded: i32,
    pub failed: i32,
    pub skipped: i32,
    pub next_index: i32,
    pub errors: serde_json::Value,
    pub cancelled_by: Option<String>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub requested_by: String,
    pub request_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl BulkRow {
    pub fn counts(&self) -> BulkCounts {
        BulkCounts {
            total: self.total as i64,
            succeeded: self.succeeded as i64,
            failed: self.failed as i64,
            skipped: self.skipped as i64,
        }
    }

    /// The assets as stored.
    pub fn asset_refs(&self) -> Vec<AssetRef> {
        self.assets
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                Some(AssetRef {
                    adam_id: a.get("adam_id")?.as_str()?.to_owned(),
                    pricing_param: a.get("pricing_param")?.as_str()?.to_owned(),
                })
            })
            .collect()
    }
}

/// A new operation.
#[derive(Clone, Debug, Insertable)]
#[diesel(table_name = bulk_operations)]
pub struct NewOperation {
    pub id: Uuid,
    pub space_id: String,
    pub action: BulkAction,
    pub assets: serde_json::Value,
    pub selector: Option<serde_json::Value>,
    pub license_type: LicenseWish,
    pub reason: String,
    pub subjects: i32,
    pub total: i32,
    pub requested_by: String,
    pub request_id: Option<String>,
}

/// Stores the operation and its subjects (in the order given); returns the stored row.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    new: &NewOperation,
    subjects: &[BulkSubject],
) -> QueryResult<BulkRow> {
    let row = diesel::insert_into(bulk_operations::table)
        .values(new)
        .returning(BulkRow::as_returning())
        .get_result(conn)
        .await?;
    if !subjects.is_empty() {
        let idx: Vec<i32> = (0..subjects.len() as i32).collect();
        let kinds: Vec<&str> = subjects.iter().map(|s| s.kind.as_str()).collect();
        let ids: Vec<&str> = subjects.iter().map(|s| s.id.as_str()).collect();
        diesel::sql_query(
            "INSERT INTO bulk_operation_items (operation_id, idx, subject_kind, subject_id)
             SELECT $1, i, k, s FROM unnest($2::int4[], $3::text[], $4::text[]) AS t(i, k, s)",
        )
        .bind::<diesel::sql_types::Uuid, _>(new.id)
        .bind::<diesel::sql_types::Array<diesel::sql_types::Int4>, _>(&idx)
        .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&kinds)
        .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&ids)
        .execute(conn)
        .await?;
    }
    Ok(row)
}

pub async fn find(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
) -> QueryResult<Option<BulkRow>> {
    bulk_operations::table
        .filter(bulk_operations::space_id.eq(space))
        .filter(bulk_operations::id.eq(id))
        .select(BulkRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// A page of the space's operations, newest first (keyset on `(created_at, id)`).
pub async fn list(
    conn: &mut AsyncPgConnection,
    space: &str,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> QueryResult<Vec<BulkRow>> {
    let mut q = bulk_operations::table
        .filter(bulk_operations::space_id.eq(space))
        .select(BulkRow::as_select())
        .order((
            bulk_operations::created_at.desc(),
            bulk_operations::id.desc(),
        ))
        .limit(limit)
        .into_boxed();
    if let Some((at, id)) = after {
        q = q.filter(
            bulk_operations::created_at
                .lt(at)
                .or(bulk_operations::created_at
                    .eq(at)
                    .and(bulk_operations::id.lt(id))),
        );
    }
    q.load(conn).await
}

/// Locks and returns the oldest unfinished operation no other transaction holds. Run inside
/// the transaction that processes its next chunk.
pub async fn claim_due(conn: &mut AsyncPgConnection) -> QueryResult<Option<BulkRow>> {
    bulk_operations::table
        .filter(bulk_operations::state.eq_any([BulkState::Queued, BulkState::Running]))
        .order((bulk_operations::created_at, bulk_operations::id))
        .select(BulkRow::as_select())
        .for_update()
        .skip_locked()
        .first(conn)
        .await
        .optional()
}

/// The subjects of operation `id` from index `from`, at most `limit`, in order.
pub async fn items(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    from: i32,
    limit: i64,
) -> QueryResult<Vec<BulkSubject>> {
    let rows: Vec<(String, String)> = bulk_operation_items::table
        .filter(bulk_operation_items::operation_id.eq(id))
        .filter(bulk_operation_items::idx.ge(from))
        .order(bulk_operation_items::idx)
        .limit(limit)
        .select((
            bulk_operation_items::subject_kind,
            bulk_operation_items::subject_id,
        ))
        .load(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(kind, id)| BulkSubject {
            kind: kind.parse().unwrap_or(SubjectKind::Device),
            id,
        })
        .collect())
}

/// Records a processed chunk: the next index, the counts, the error sample and the state
/// (`finished_at` when it is final; `started_at` the first time).
pub async fn advance(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    next_index: i32,
    counts: &BulkCounts,
    errors: &serde_json::Value,
    state: BulkState,
) -> QueryResult<BulkRow> {
    let now = Utc::now();
    diesel::update(bulk_operations::table.filter(bulk_operations::id.eq(id)))
        .set((
            bulk_operations::next_index.eq(next_index),
            bulk_operations::succeeded.eq(counts.succeeded as i32),
            bulk_operations::failed.eq(counts.failed as i32),
            bulk_operations::skipped.eq(counts.skipped as i32),
            bulk_operations::errors.eq(errors),
            bulk_operations::state.eq(state),
            bulk_operations::attempts.eq(0),
            bulk_operations::started_at.eq(diesel::dsl::sql::<
                diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
            >("COALESCE(started_at, now())")),
            bulk_operations::finished_at.eq(state.is_final().then_some(now)),
            bulk_operations::updated_at.eq(now),
        ))
        .returning(BulkRow::as_returning())
        .get_result(conn)
        .await
}

/// Cancels operation `id` of `space` if it is not finished; waits for the chunk in hand (its
/// row lock). Returns the cancelled row, or `None` when it is unknown or already finished.
pub async fn cancel(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
    by: &str,
) -> QueryResult<Option<BulkRow>> {
    let now = Utc::now();
    diesel::update(
        bulk_operations::table
            .filter(bulk_operations::space_id.eq(space))
            .filter(bulk_operations::id.eq(id))
            .filter(bulk_operations::state.eq_any([BulkState::Queued, BulkState::Running])),
    )
    .set((
        bulk_operations::state.eq(BulkState::Cancelled),
        bulk_operations::cancelled_by.eq(by),
        bulk_operations::finished_at.eq(Some(now)),
        bulk_operations::updated_at.eq(now),
    ))
    .returning(BulkRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// Counts a failed attempt at the operation's next chunk; after `max_attempts` the operation
/// is `failed`. Returns its state then, and its space.
pub async fn record_failure(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    error: &str,
    max_attempts: i32,
) -> QueryResult<Option<(BulkState, String)>> {
    diesel::sql_query(
        "UPDATE bulk_operations
            SET attempts = attempts + 1, last_error = $2, updated_at = now(),
                state = CASE WHEN attempts + 1 >= $3 THEN 'failed' ELSE state END,
                finished_at = CASE WHEN attempts + 1 >= $3 THEN now() ELSE finished_at END
          WHERE id = $1 AND state IN ('queued', 'running')
      RETURNING state, space_id",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .bind::<diesel::sql_types::Text, _>(error)
    .bind::<diesel::sql_types::Int4, _>(max_attempts)
    .get_result::<StateRow>(conn)
    .await
    .optional()
    .map(|r| r.map(|r| (r.state, r.space_id)))
}

#[derive(QueryableByName)]
struct StateRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    state: BulkState,
    #[diesel(sql_type = diesel::sql_types::Text)]
    space_id: String,
}

#[derive(QueryableByName)]
struct SubjectKey {
    #[diesel(sql_type = diesel::sql_types::Text)]
    kind: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    external_id: String,
}

impl From<SubjectKey> for BulkSubject {
    fn from(k: SubjectKey) -> Self {
        BulkSubject {
            kind: k.kind.parse().unwrap_or(SubjectKind::Device),
            id: k.external_id,
        }
    }
}

/// The devices and users of `space` whose stored groups include `group`, at most `limit`, by
/// kind and id.
pub async fn group_members(
    conn: &mut AsyncPgConnection,
    space: &str,
    group: &str,
    limit: i64,
) -> QueryResult<Vec<BulkSubject>> {
    let rows: Vec<SubjectKey> = diesel::sql_query(
        "SELECT kind, external_id FROM subjects
          WHERE space_id = $1 AND $2 = ANY(groups)
          ORDER BY kind, external_id
          LIMIT $3",
    )
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Text, _>(group)
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(BulkSubject::from).collect())
}

/// The subjects of `space` holding a live license (pending, associating, active) of `asset`,
/// at most `limit`, by kind and id.
pub async fn holders_of(
    conn: &mut AsyncPgConnection,
    space: &str,
    asset: &AssetRef,
    limit: i64,
) -> QueryResult<Vec<BulkSubject>> {
    let rows: Vec<SubjectKey> = diesel::sql_query(
        "SELECT DISTINCT s.kind, s.external_id FROM assignments a
           JOIN subjects s ON s.id = a.subject_id
          WHERE a.space_id = $1 AND a.adam_id = $2 AND a.pricing_param = $3
            AND a.state IN ('pending', 'associating', 'active')
          ORDER BY s.kind, s.external_id
          LIMIT $4",
    )
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Text, _>(&asset.adam_id)
    .bind::<diesel::sql_types::Text, _>(&asset.pricing_param)
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(BulkSubject::from).collect())
}

#[derive(QueryableByName)]
struct AssetKeyRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    adam_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pricing_param: String,
}

/// Which of `assets` an account of `space` owns (has an asset row for).
pub async fn owned_assets(
    conn: &mut AsyncPgConnection,
    space: &str,
    assets: &[AssetRef],
) -> QueryResult<Vec<AssetRef>> {
    let adams: Vec<&str> = assets.iter().map(|a| a.adam_id.as_str()).collect();
    let pricings: Vec<&str> = assets.iter().map(|a| a.pricing_param.as_str()).collect();
    let rows: Vec<AssetKeyRow> = diesel::sql_query(
        "SELECT DISTINCT s.adam_id, s.pricing_param FROM assets s
           JOIN accounts a ON a.id = s.account_id
           JOIN unnest($2::text[], $3::text[]) AS want(adam_id, pricing_param)
             ON want.adam_id = s.adam_id AND want.pricing_param = s.pricing_param
          WHERE a.space_id = $1",
    )
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&adams)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&pricings)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(AssetKeyRow::into_ref).collect())
}

impl AssetKeyRow {
    fn into_ref(self) -> AssetRef {
        AssetRef {
            adam_id: self.adam_id,
            pricing_param: self.pricing_param,
        }
    }
}

/// A live license a revoking operation found for one of its (subject, asset) items.
#[derive(Clone, Debug, QueryableByName)]
pub struct HeldLicense {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub account_id: Uuid,
    /// Its asset is revocable, or it is still `pending` (it never reached Apple).
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub revocable: bool,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub subject_kind: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub subject_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub adam_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub pricing_param: String,
}

/// The live assignments of `space` held by `subjects` for `assets`; with `lock`, locked in id
/// order (the ledger's lock order: assignment rows, then asset rows, which
/// [`super::revocations::start`] locks next).
pub async fn held_licenses(
    conn: &mut AsyncPgConnection,
    space: &str,
    subjects: &[BulkSubject],
    assets: &[AssetRef],
    lock: bool,
) -> QueryResult<Vec<HeldLicense>> {
    let kinds: Vec<&str> = subjects.iter().map(|s| s.kind.as_str()).collect();
    let ids: Vec<&str> = subjects.iter().map(|s| s.id.as_str()).collect();
    let adams: Vec<&str> = assets.iter().map(|a| a.adam_id.as_str()).collect();
    let pricings: Vec<&str> = assets.iter().map(|a| a.pricing_param.as_str()).collect();
    diesel::sql_query(format!(
        "SELECT a.id, a.account_id, (s.revocable OR a.state = 'pending') AS revocable,
                sub.kind AS subject_kind, sub.external_id AS subject_id,
                a.adam_id, a.pricing_param
           FROM unnest($2::text[], $3::text[]) AS want(kind, external_id)
           JOIN subjects sub ON sub.space_id = $1 AND sub.kind = want.kind
                            AND sub.external_id = want.external_id
           JOIN assignments a ON a.subject_id = sub.id
           JOIN unnest($4::text[], $5::text[]) AS asset(adam_id, pricing_param)
             ON asset.adam_id = a.adam_id AND asset.pricing_param = a.pricing_param
           JOIN assets s ON s.account_id = a.account_id AND s.adam_id = a.adam_id
                        AND s.pricing_param = a.pricing_param
          WHERE a.space_id = $1 AND a.state IN ('pending', 'associating', 'active')
          ORDER BY a.id
          {}",
        if lock { "FOR UPDATE OF a" } else { "" }
    ))
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&kinds)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&ids)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&adams)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&pricings)
    .load(conn)
    .await
}

/// Deletes the operations of `space` and their subjects (a space being deleted).
pub async fn delete_space(conn: &mut AsyncPgConnection, space: &str) -> QueryResult<()> {
    let ids = bulk_operations::table
        .filter(bulk_operations::space_id.eq(space))
        .select(bulk_operations::id);
    diesel::delete(
        bulk_operation_items::table.filter(bulk_operation_items::operation_id.eq_any(ids)),
    )
    .execute(conn)
    .await?;
    diesel::delete(bulk_operations::table.filter(bulk_operations::space_id.eq(space)))
        .execute(conn)
        .await?;
    Ok(())
}
