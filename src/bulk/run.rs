//! Processing an operation, one chunk per transaction (see [`super`]).

use std::sync::OnceLock;

use diesel_async::{AsyncConnection, AsyncPgConnection};
use uuid::Uuid;

use super::BulkError;
use super::create::{by_item, item_key, item_request};
use crate::domain::allocation::{AllocationRequest, AssetRef};
use crate::domain::bulk::{
    BulkAction, BulkCounts, BulkItemError, BulkState, BulkSubject, ItemOutcome, MAX_ATTEMPTS,
    item_reason, merge_errors, refusal_problem,
};
use crate::domain::origin::Origin;
use crate::engine::allocate::{self, AllocationError};
use crate::ledger::activity::{self, Activity, ActivityAction};
use crate::ledger::bulk_operations::{self as store, BulkRow};
use crate::ledger::revocations;

/// How often a chunk's allocation batch is decided again after the ledger changed under it
/// ([`AllocationError::Overdrawn`]) before the attempt counts as failed.
const OVERDRAWN_RETRIES: usize = 3;

/// Processes the next chunk (at most `chunk` subjects) of the oldest unfinished operation no
/// other worker holds. Returns the operation and its state after the chunk, or `None` when no
/// operation is due. A failure rolls the chunk back and counts an attempt on the operation.
pub async fn run_next(
    conn: &mut AsyncPgConnection,
    chunk: usize,
) -> Result<Option<(Uuid, BulkState)>, BulkError> {
    let claimed: OnceLock<Uuid> = OnceLock::new();
    let result = conn
        .transaction(async |conn| {
            let Some(op) = store::claim_due(conn).await? else {
                return Ok(None);
            };
            let _ = claimed.set(op.id);
            process(conn, &op, chunk).await.map(Some)
        })
        .await;
    match (result, claimed.get().copied()) {
        (Err(e), Some(id)) => {
            tracing::warn!(operation = %id, error = %e, "bulk operation chunk failed");
            if let Some((BulkState::Failed, space)) =
                store::record_failure(conn, id, &e.to_string(), MAX_ATTEMPTS).await?
            {
                activity::record(
                    conn,
                    Activity::new(&Origin::system(), ActivityAction::BulkFinished.as_str())
                        .space(&space)
                        .details(serde_json::json!({
                            "operation": id,
                            "state": BulkState::Failed,
                            "error": e.to_string(),
                        })),
                )
                .await?;
            }
            Err(e)
        }
        (result, _) => result,
    }
}

/// One chunk of `op` (locked), with the operation's progress.
async fn process(
    conn: &mut AsyncPgConnection,
    op: &BulkRow,
    chunk: usize,
) -> Result<(Uuid, BulkState), BulkError> {
    let subjects = store::items(conn, op.id, op.next_index, chunk as i64).await?;
    let assets = op.asset_refs();
    let origin = Origin::new(op.requested_by.clone(), op.request_id.clone());
    let reason = item_reason(op.id, &op.reason);
    let mut counts = op.counts();
    let errors = match op.action {
        BulkAction::Allocate => {
            allocate_chunk(conn, op, &subjects, &assets, &origin, &reason, &mut counts).await?
        }
        BulkAction::Revoke => {
            revoke_chunk(conn, op, &subjects, &assets, &origin, &reason, &mut counts).await?
        }
    };
    let next = op.next_index + subjects.len() as i32;
    let state = if next >= op.subjects {
        BulkState::finished(counts.failed)
    } else {
        BulkState::Running
    };
    let sample: Vec<BulkItemError> = serde_json::from_value(op.errors.clone()).unwrap_or_default();
    let sample = serde_json::to_value(merge_errors(sample, errors)).unwrap_or_default();
    store::advance(conn, op.id, next, &counts, &sample, state).await?;
    if state.is_final() {
        activity::record(
            conn,
            Activity::new(&origin, ActivityAction::BulkFinished.as_str())
                .space(&op.space_id)
                .details(serde_json::json!({
                    "operation": op.id,
                    "state": state,
                    "counts": counts,
                })),
        )
        .await?;
    }
    Ok((op.id, state))
}

fn item_error(
    subject: &BulkSubject,
    asset: &AssetRef,
    problem: &str,
    detail: String,
) -> BulkItemError {
    BulkItemError {
        subject_kind: subject.kind,
        subject_id: subject.id.clone(),
        adam_id: asset.adam_id.clone(),
        pricing_param: asset.pricing_param.clone(),
        problem: problem.to_owned(),
        detail,
    }
}

/// Allocates every asset to every subject of the chunk in one batch. Returns the chunk's item
/// errors (all of them; the caller keeps a sample).
async fn allocate_chunk(
    conn: &mut AsyncPgConnection,
    op: &BulkRow,
    subjects: &[BulkSubject],
    assets: &[AssetRef],
    origin: &Origin,
    reason: &str,
    counts: &mut BulkCounts,
) -> Result<Vec<BulkItemError>, BulkError> {
    let reqs: Vec<AllocationRequest> = subjects
        .iter()
        .flat_map(|s| {
            assets
                .iter()
                .map(|a| item_request(&op.space_id, s, a, op.license_type, reason, origin, false))
        })
        .collect();
    if reqs.is_empty() {
        return Ok(Vec::new());
    }
    let refs: Vec<&AllocationRequest> = reqs.iter().collect();
    let mut attempt = 1;
    let results = loop {
        // A savepoint: a batch the ledger overdrew is undone alone and decided again.
        let result = conn
            .transaction(async |conn| {
                allocate::allocate_many_counted(conn, &op.space_id, &refs).await
            })
            .await;
        match result {
            Err(AllocationError::Overdrawn) if attempt < OVERDRAWN_RETRIES => attempt += 1,
            Err(e) => return Err(e.into()),
            Ok(results) => break results,
        }
    };
    let mut errors = Vec::new();
    let items = subjects
        .iter()
        .flat_map(|s| assets.iter().map(move |a| (s, a)));
    for ((subject, asset), result) in items.zip(results) {
        match result {
            Ok(o) if o.created => counts.add(ItemOutcome::Succeeded),
            Ok(_) => counts.add(ItemOutcome::Skipped),
            Err(AllocationError::Refused(r)) => {
                counts.add(ItemOutcome::Failed);
                let (slug, detail) = refusal_problem(&r);
                errors.push(item_error(subject, asset, slug, detail));
            }
            Err(e) => {
                counts.add(ItemOutcome::Failed);
                errors.push(item_error(subject, asset, "internal", e.to_string()));
            }
        }
    }
    Ok(errors)
}

/// Starts revoking the chunk's subjects' live licenses of the assets, in one statement.
async fn revoke_chunk(
    conn: &mut AsyncPgConnection,
    op: &BulkRow,
    subjects: &[BulkSubject],
    assets: &[AssetRef],
    origin: &Origin,
    reason: &str,
    counts: &mut BulkCounts,
) -> Result<Vec<BulkItemError>, BulkError> {
    if subjects.is_empty() {
        return Ok(Vec::new());
    }
    let held = store::held_licenses(conn, &op.space_id, subjects, assets, true).await?;
    let ids: Vec<Uuid> = held.iter().filter(|h| h.revocable).map(|h| h.id).collect();
    if !ids.is_empty() {
        revocations::start(conn, &op.space_id, &ids, origin, reason).await?;
    }
    let held = by_item(&held);
    let mut errors = Vec::new();
    for subject in subjects {
        for asset in assets {
            match held.get(&item_key(subject, asset)) {
                None => counts.add(ItemOutcome::Skipped),
                Some(mine) if mine.iter().any(|h| h.revocable) => {
                    counts.add(ItemOutcome::Succeeded)
                }
                Some(_) => {
                    counts.add(ItemOutcome::Failed);
                    errors.push(item_error(
                        subject,
                        asset,
                        "not-revocable",
                        format!(
                            "Apple does not take licenses of asset {}/{} back (error 9706); \
                             the license stays",
                            asset.adam_id, asset.pricing_param
                        ),
                    ));
                }
            }
        }
    }
    Ok(errors)
}
