//! Creating a bulk operation, and its dry run (see [`super`]).

use diesel_async::{AsyncConnection, AsyncPgConnection};
use uuid::Uuid;

use super::BulkError;
use crate::domain::allocation::{AllocationRequest, AssetRef, SubjectInput};
use crate::domain::bulk::{
    BulkAction, BulkPlan, BulkPlanOutcome, BulkSubject, CHUNK, MAX_SUBJECTS, Selector,
    dedup_subjects, item_reason, refusal_problem,
};
use crate::domain::decide::Tally;
use crate::domain::model::{LicenseWish, SubjectKind};
use crate::domain::origin::Origin;
use crate::engine::allocate::{self, AllocationError};
use crate::ledger::activity::{self, Activity, ActivityAction};
use crate::ledger::bulk_operations::{self as store, BulkRow, NewOperation};
use crate::ledger::spaces;

/// Who an operation is for.
#[derive(Clone, Debug)]
pub enum Who {
    /// Listed by the caller (repeats count once).
    Subjects(Vec<BulkSubject>),
    /// Matched by a selector when the operation is created; the selector as given is kept
    /// with the operation.
    Selector(Selector, serde_json::Value),
}

/// What the caller asks (checked by the transport for shape and sizes).
#[derive(Clone, Debug)]
pub struct Request {
    pub space: String,
    pub action: BulkAction,
    pub assets: Vec<AssetRef>,
    pub who: Who,
    pub license_type: LicenseWish,
    pub reason: String,
    pub origin: Origin,
}

/// Checks the space and the assets and resolves the subjects.
async fn resolve(
    conn: &mut AsyncPgConnection,
    req: &Request,
) -> Result<Vec<BulkSubject>, BulkError> {
    if spaces::find(conn, &req.space).await?.is_none() {
        return Err(BulkError::NotFound(format!("space {}", req.space)));
    }
    let owned = store::owned_assets(conn, &req.space, &req.assets).await?;
    let unknown: Vec<String> = req
        .assets
        .iter()
        .filter(|a| !owned.contains(a))
        .map(|a| format!("{}/{}", a.adam_id, a.pricing_param))
        .collect();
    if !unknown.is_empty() {
        return Err(BulkError::UnknownAssets(format!(
            "no account of space {} owns asset {}",
            req.space,
            unknown.join(", ")
        )));
    }
    let limit = MAX_SUBJECTS as i64 + 1;
    let subjects = match &req.who {
        Who::Subjects(list) => list.clone(),
        Who::Selector(Selector::Group(group), _) => {
            store::group_members(conn, &req.space, group, limit).await?
        }
        Who::Selector(Selector::HoldersOf(asset), _) => {
            store::holders_of(conn, &req.space, asset, limit).await?
        }
    };
    let subjects = dedup_subjects(subjects);
    if subjects.len() > MAX_SUBJECTS {
        return Err(BulkError::TooManySubjects(format!(
            "the selector matches more than {MAX_SUBJECTS} subjects; an operation takes at most \
             {MAX_SUBJECTS}"
        )));
    }
    Ok(subjects)
}

/// Stores a new `queued` operation with its subjects (one transaction, with its `bulk.created`
/// activity row).
pub async fn create(conn: &mut AsyncPgConnection, req: &Request) -> Result<BulkRow, BulkError> {
    conn.transaction(async |conn| {
        let subjects = resolve(conn, req).await?;
        let assets = serde_json::Value::Array(
            req.assets
                .iter()
                .map(
                    |a| serde_json::json!({"adam_id": a.adam_id, "pricing_param": a.pricing_param}),
                )
                .collect(),
        );
        let selector = match &req.who {
            Who::Subjects(_) => None,
            Who::Selector(_, given) => Some(given.clone()),
        };
        let new = NewOperation {
            id: Uuid::now_v7(),
            space_id: req.space.clone(),
            action: req.action,
            assets: assets.clone(),
            selector: selector.clone(),
            license_type: req.license_type,
            reason: req.reason.clone(),
            subjects: subjects.len() as i32,
            total: (subjects.len() * req.assets.len()) as i32,
            requested_by: req.origin.actor.clone(),
            request_id: req.origin.request_id.clone(),
        };
        let row = store::insert(conn, &new, &subjects).await?;
        activity::record(
            conn,
            Activity::new(&req.origin, ActivityAction::BulkCreated.as_str())
                .space(&req.space)
                .details(serde_json::json!({
                    "operation": row.id,
                    "action": req.action,
                    "assets": assets,
                    "selector": selector,
                    "subjects": row.subjects,
                    "total": row.total,
                })),
        )
        .await?;
        Ok(row)
    })
    .await
}

/// The allocation request of one item of an operation (or of its dry run).
pub(super) fn item_request(
    space: &str,
    subject: &BulkSubject,
    asset: &AssetRef,
    wish: LicenseWish,
    reason: &str,
    origin: &Origin,
    dry_run: bool,
) -> AllocationRequest {
    AllocationRequest {
        space: space.to_owned(),
        asset: asset.clone(),
        // Facts not given keep what is stored (groups, the device's user, Shared iPad).
        subject: match subject.kind {
            SubjectKind::Device => SubjectInput::Device {
                serial: subject.id.clone(),
                user: None,
                shared_ipad: None,
                groups: None,
            },
            SubjectKind::User => SubjectInput::User {
                id: subject.id.clone(),
                groups: None,
            },
        },
        wish,
        reason: reason.to_owned(),
        origin: origin.clone(),
        dry_run,
        exclude_accounts: Vec::new(),
        replaces: None,
        wait_until: None,
        // A bulk item never joins a wait-list, whatever the asset's policy says: an operation
        // ends, and an item with no license left is counted `failed` with the problem.
        policy_wait_until: None,
        serves: None,
        serves_holder: None,
    }
}

/// The dry run: what the operation would do now, decided by the same rules, writing nothing.
pub async fn plan(conn: &mut AsyncPgConnection, req: &Request) -> Result<BulkPlan, BulkError> {
    let subjects = resolve(conn, req).await?;
    let mut plan = BulkPlan::new(req.action, subjects.len(), &req.assets);
    let reason = item_reason(Uuid::nil(), &req.reason);
    match req.action {
        BulkAction::Allocate => {
            let mut tally = Tally::default();
            for chunk in subjects.chunks(CHUNK) {
                let reqs: Vec<AllocationRequest> = chunk
                    .iter()
                    .flat_map(|s| {
                        req.assets.iter().map(|a| {
                            item_request(
                                &req.space,
                                s,
                                a,
                                req.license_type,
                                &reason,
                                &req.origin,
                                true,
                            )
                        })
                    })
                    .collect();
                let refs: Vec<&AllocationRequest> = reqs.iter().collect();
                let results = allocate::plan_many(conn, &req.space, &refs, &mut tally).await?;
                let items = chunk
                    .iter()
                    .flat_map(|s| (0..req.assets.len()).map(move |i| (s, i)));
                for ((subject, asset), result) in items.zip(results) {
                    match result {
                        Ok(o) if o.created => plan.record(
                            subject,
                            asset,
                            BulkPlanOutcome::Allocate,
                            Some(o.account_id),
                            None,
                        ),
                        Ok(o) => plan.record(
                            subject,
                            asset,
                            BulkPlanOutcome::AlreadyHeld,
                            Some(o.account_id),
                            None,
                        ),
                        Err(AllocationError::Refused(r)) => plan.record(
                            subject,
                            asset,
                            BulkPlanOutcome::Refused,
                            None,
                            Some(refusal_problem(&r)),
                        ),
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        BulkAction::Revoke => {
            for chunk in subjects.chunks(CHUNK) {
                let held =
                    store::held_licenses(conn, &req.space, chunk, &req.assets, false).await?;
                let held = by_item(&held);
                for subject in chunk {
                    for (i, asset) in req.assets.iter().enumerate() {
                        let (outcome, account) = match held.get(&item_key(subject, asset)) {
                            None => (BulkPlanOutcome::NotHeld, None),
                            Some(mine) => match mine.iter().find(|h| h.revocable) {
                                Some(h) => (BulkPlanOutcome::Revoke, Some(h.account_id)),
                                None => (BulkPlanOutcome::NotRevocable, None),
                            },
                        };
                        plan.record(subject, i, outcome, account, None);
                    }
                }
            }
        }
    }
    Ok(plan)
}

/// An item's key: (subject kind, subject id, adam id, pricing).
pub(super) type ItemKey<'a> = (&'a str, &'a str, &'a str, &'a str);

pub(super) fn item_key<'a>(subject: &'a BulkSubject, asset: &'a AssetRef) -> ItemKey<'a> {
    (
        subject.kind.as_str(),
        subject.id.as_str(),
        asset.adam_id.as_str(),
        asset.pricing_param.as_str(),
    )
}

/// The live licenses found for a chunk, by item.
pub(super) fn by_item(
    held: &[store::HeldLicense],
) -> std::collections::HashMap<ItemKey<'_>, Vec<&store::HeldLicense>> {
    let mut map: std::collections::HashMap<ItemKey<'_>, Vec<&store::HeldLicense>> =
        std::collections::HashMap::new();
    for h in held {
        map.entry((
            h.subject_kind.as_str(),
            h.subject_id.as_str(),
            h.adam_id.as_str(),
            h.pricing_param.as_str(),
        ))
        .or_default()
        .push(h);
    }
    map
}
