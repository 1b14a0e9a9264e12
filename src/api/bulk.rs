//! `/v1/spaces/{space}/bulk-operations`: allocate or revoke assets for many subjects as one
//! operation resource (rule V6, issue 14). The use case is [`crate::bulk`], whose documentation
//! says how an operation runs.
//!
//! Decisions:
//! - The body names an `action` (`allocate` or `revoke`), 1 to 20 `assets`, and either
//!   `subjects` (1 to 100,000 `{kind, id}`, ids checked as `POST …/assignments` checks them;
//!   repeats count once) or a `selector` (`{"group": "…"}` or `{"holders_of": {asset}}`),
//!   never both. More than 100,000 subjects is 413 `payload-too-large`; the body may be up to
//!   16 MiB (`VPP_BODY_LIMIT_BYTES` applies to every other operation). A selector matching more
//!   than 100,000 subjects is 422. An asset no account of the space owns is 404
//!   `asset-not-found`. Nothing is stored when a request is refused.
//! - `dry_run: true` answers 200 with the plan (per asset: what would be allocated, already
//!   held, refused and why, revoked; per account; a sample of items), writing nothing.
//!   Otherwise 202 with the `queued` operation and its `Location`.
//! - `license_type` (allocate) is the allocation's (`auto` by default); `reason` (at most 1000
//!   characters) is recorded on every license with the operation's id.
//! - Creating and cancelling need `licenses:write` (what allocating and revoking need);
//!   reading `licenses:read`.
//! - `POST …/{id}/cancel`: 200 with the `cancelled` operation (the chunks done stay done; the
//!   counts say how far it went); 409 `conflict` when it is already finished.
//! - The list is newest first, keyset-paged on `(created_at, id)` (cursor list
//!   `bulk-operations:{space}`).

use actix_web::http::header;
use actix_web::{HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::api::assignments::Asset;
use crate::auth::{SpaceAccess, needs};
use crate::bulk::{self as usecase, BulkError, Request, Who};
use crate::domain::allocation::AssetRef;
use crate::domain::bulk::{
    BulkAction, BulkCounts, BulkItemError, BulkPlan, BulkState, BulkSubject, MAX_ASSETS,
    MAX_SUBJECTS, Selector,
};
use crate::domain::model::{LicenseWish, SubjectKind};
use crate::domain::validation::{FieldError, check_asset, check_id, check_reason};
use crate::http::extract::LargeJson;
use crate::http::pagination::{PageQuery, next_cursor};
use crate::http::problem::{ApiError, types};
use crate::ledger::bulk_operations::BulkRow;
use crate::state::AppState;

impl From<BulkError> for ApiError {
    fn from(err: BulkError) -> Self {
        match err {
            BulkError::NotFound(what) => ApiError::not_found(what),
            BulkError::UnknownAssets(why) => ApiError::new(&types::ASSET_NOT_FOUND, why),
            BulkError::TooManySubjects(why) => ApiError::field("selector", why),
            e @ BulkError::Finished { .. } => ApiError::new(&types::CONFLICT, e.to_string()),
            BulkError::Allocation(e) => e.into(),
            BulkError::Db(e) => e.into(),
        }
    }
}

/// Body of `POST …/bulk-operations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "action": "allocate",
    "assets": [{"adam_id": "361309726", "pricing_param": "STDQ"}],
    "subjects": [{"kind": "device", "id": "C02XK0AAJGH5"}, {"kind": "user", "id": "u-1842"}],
    "reason": "school year 2027 roll-out"
}))]
pub struct BulkOperationBody {
    pub action: BulkAction,
    /// 1 to 20 assets; every subject gets (or loses) each.
    #[schema(min_items = 1, max_items = 20)]
    pub assets: Vec<Asset>,
    /// 1 to 100,000 subjects (repeats count once). Give this or `selector`.
    #[serde(default)]
    #[schema(nullable = false, min_items = 1, max_items = 100000)]
    pub subjects: Option<Vec<BulkSubjectRef>>,
    /// Who, resolved when the operation is created (a snapshot). Give this or `subjects`.
    #[serde(default)]
    #[schema(nullable = false)]
    pub selector: Option<BulkSelector>,
    /// Allocate: the license type wanted (`auto` by default, as on `POST …/assignments`).
    #[serde(default = "auto")]
    pub license_type: LicenseWish,
    /// Why (recorded on every license with the operation's id), at most 1000 characters.
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub reason: String,
    /// Answer the plan (200) instead of starting the operation; nothing is written.
    #[serde(default)]
    pub dry_run: bool,
}

fn auto() -> LicenseWish {
    LicenseWish::Auto
}

/// One subject of a bulk operation.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkSubjectRef {
    pub kind: SubjectKind,
    /// Serial number (devices) or client user id (users), 1–256 characters.
    #[schema(min_length = 1, max_length = 256)]
    pub id: String,
}

/// Who a bulk operation is for, instead of a list: exactly one member.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkSelector {
    /// Every device and user of the space whose stored groups include this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, min_length = 1, max_length = 256)]
    pub group: Option<String>,
    /// Every subject holding a live license of this asset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub holders_of: Option<Asset>,
}

/// A bulk operation and how far it went.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BulkOperation {
    pub id: Uuid,
    pub space: String,
    pub action: BulkAction,
    pub assets: Vec<Asset>,
    /// The selector as given, when the subjects were matched by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub selector: Option<BulkSelector>,
    pub license_type: LicenseWish,
    pub reason: String,
    pub state: BulkState,
    /// Distinct subjects.
    pub subjects: i64,
    /// Items (subjects × assets) by outcome so far.
    pub counts: BulkCounts,
    /// Subjects processed so far (in the order given).
    pub processed_subjects: i64,
    /// The first failed items (at most 20), each with its problem type.
    pub errors: Vec<BulkItemError>,
    /// Who cancelled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub cancelled_by: Option<String>,
    /// The last database failure of a chunk (retried; `failed` after 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub last_error: Option<String>,
    /// The caller's JWT subject.
    pub requested_by: String,
    /// The `x-request-id` of the request that created it: every license the operation
    /// allocated or revoked carries it in the activity log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub request_id: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When its first chunk was processed.
    #[schema(required = true)]
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final state.
    #[schema(required = true)]
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// One page of bulk operations.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BulkOperationPage {
    pub items: Vec<BulkOperation>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next_cursor: Option<String>,
}

fn view(r: BulkRow) -> BulkOperation {
    let counts = r.counts();
    let assets = r
        .asset_refs()
        .into_iter()
        .map(|a| Asset {
            adam_id: a.adam_id,
            pricing_param: a.pricing_param,
        })
        .collect();
    BulkOperation {
        id: r.id,
        space: r.space_id,
        action: r.action,
        assets,
        selector: r.selector.and_then(|s| serde_json::from_value(s).ok()),
        license_type: r.license_type,
        reason: r.reason,
        state: r.state,
        subjects: r.subjects as i64,
        counts,
        processed_subjects: r.next_index as i64,
        errors: serde_json::from_value(r.errors).unwrap_or_default(),
        cancelled_by: r.cancelled_by,
        last_error: r.last_error,
        requested_by: r.requested_by,
        request_id: r.request_id,
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        updated_at: r.updated_at,
    }
}

fn location(space: &str, id: Uuid) -> String {
    format!("/v1/spaces/{space}/bulk-operations/{id}")
}

/// Checks the body; returns who the operation is for. 413 over 100,000 subjects, 422 for any
/// other bad value (each named).
fn check(body: &BulkOperationBody) -> Result<(Vec<AssetRef>, Who), ApiError> {
    if let Some(subjects) = &body.subjects
        && subjects.len() > MAX_SUBJECTS
    {
        return Err(ApiError::new(
            &types::PAYLOAD_TOO_LARGE,
            format!(
                "{} subjects: an operation takes at most {MAX_SUBJECTS}",
                subjects.len()
            ),
        ));
    }
    let mut errors = Vec::new();
    if body.assets.is_empty() || body.assets.len() > MAX_ASSETS {
        errors.push(FieldError {
            field: "assets".into(),
            message: format!("give 1 to {MAX_ASSETS} assets"),
        });
    }
    let mut assets: Vec<AssetRef> = Vec::with_capacity(body.assets.len());
    for (i, a) in body.assets.iter().enumerate() {
        check_asset(
            &mut errors,
            &format!("assets[{i}]"),
            &a.adam_id,
            Some(&a.pricing_param),
        );
        let asset = AssetRef {
            adam_id: a.adam_id.clone(),
            pricing_param: a.pricing_param.clone(),
        };
        if assets.contains(&asset) {
            errors.push(FieldError {
                field: format!("assets[{i}]"),
                message: "named twice".into(),
            });
        }
        assets.push(asset);
    }
    check_reason(&mut errors, "reason", &body.reason);
    if body.action == BulkAction::Revoke && body.license_type != LicenseWish::Auto {
        errors.push(FieldError {
            field: "license_type".into(),
            message: "only an allocation chooses a license type".into(),
        });
    }
    let who = match (&body.subjects, &body.selector) {
        (Some(_), Some(_)) | (None, None) => {
            errors.push(FieldError {
                field: "body".into(),
                message: "give either subjects or selector".into(),
            });
            None
        }
        (Some(list), None) => {
            if list.is_empty() {
                errors.push(FieldError {
                    field: "subjects".into(),
                    message: format!("give 1 to {MAX_SUBJECTS} subjects"),
                });
            }
            let before = errors.len();
            for (i, s) in list.iter().enumerate() {
                check_id(&mut errors, &format!("subjects[{i}].id"), &s.id);
                // A body with thousands of bad ids names the first few.
                if errors.len() - before >= 20 {
                    break;
                }
            }
            Some(Who::Subjects(
                list.iter()
                    .map(|s| BulkSubject {
                        kind: s.kind,
                        id: s.id.clone(),
                    })
                    .collect(),
            ))
        }
        (None, Some(sel)) => {
            let given = serde_json::to_value(sel).unwrap_or_default();
            match (&sel.group, &sel.holders_of) {
                (Some(group), None) => {
                    check_id(&mut errors, "selector.group", group);
                    Some(Who::Selector(Selector::Group(group.clone()), given))
                }
                (None, Some(a)) => {
                    check_asset(
                        &mut errors,
                        "selector.holders_of",
                        &a.adam_id,
                        Some(&a.pricing_param),
                    );
                    Some(Who::Selector(
                        Selector::HoldersOf(AssetRef {
                            adam_id: a.adam_id.clone(),
                            pricing_param: a.pricing_param.clone(),
                        }),
                        given,
                    ))
                }
                _ => {
                    errors.push(FieldError {
                        field: "selector".into(),
                        message: "give exactly one of group, holders_of".into(),
                    });
                    None
                }
            }
        }
    };
    match who {
        Some(who) if errors.is_empty() => Ok((assets, who)),
        _ => Err(ApiError::validation(errors)),
    }
}

/// Allocate or revoke assets for many subjects (V6): a list of up to 100,000 subjects or a
/// selector (a group's members, an asset's holders).
///
/// Answers 202 with the `queued` operation (`Location`); a background worker processes it
/// 1,000 subjects per transaction with the allocation rules (or the revocation's), sending
/// Apple as few requests as its limits allow while interactive allocations go first. Poll
/// `GET …/bulk-operations/{id}` for the state and counts (`succeeded`, `failed`, `skipped` of
/// `total` subject × asset items) and a sample of errors; `POST …/{id}/cancel` stops it
/// between chunks. `dry_run: true` answers 200 with the plan instead (per asset and account:
/// allocated, already held, refused and why, revoked), writing nothing. A selector is resolved
/// now: subjects that match later are not included.
#[utoipa::path(
    tag = "bulk",
    operation_id = "create_bulk_operation",
    security(("bearer" = ["licenses:write"])),
    params(("space" = String, Path, description = "Space id")),
    request_body = BulkOperationBody,
    responses(
        (status = 200, description = "Dry run: the plan; nothing was written", body = BulkPlan),
        (status = 202, description = "The queued operation; `Location` names it", body = BulkOperation),
        (status = 404, description = "Unknown space, or an asset no account of the space owns (`asset-not-found`)"),
        (status = 413, description = "More than 100,000 subjects, or a body over 16 MiB"),
        (status = 422, description = "Not an operation's body, or a value refused (each named in `errors`)"),
    )
)]
#[post("/v1/spaces/{space}/bulk-operations")]
pub async fn create_bulk_operation(
    access: SpaceAccess<needs::LicensesWrite>,
    state: web::Data<AppState>,
    body: LargeJson<BulkOperationBody>,
) -> Result<HttpResponse, ApiError> {
    let (caller, space) = access.into_parts();
    let body = body.0;
    let (assets, who) = check(&body)?;
    let req = Request {
        space: space.clone(),
        action: body.action,
        assets,
        who,
        license_type: body.license_type,
        reason: body.reason,
        origin: caller.origin(),
    };
    let mut conn = state.pool.get().await?;
    if body.dry_run {
        let plan = usecase::plan(&mut conn, &req).await?;
        return Ok(HttpResponse::Ok().json(plan));
    }
    let row = usecase::create(&mut conn, &req).await?;
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, location(&space, row.id)))
        .json(view(row)))
}

/// The space's bulk operations, newest first.
///
/// Every operation with its state and counts, newest first; `limit` (1 to 200, default 50) and
/// `cursor` (the `next_cursor` of the page before) page through them.
#[utoipa::path(
    tag = "bulk",
    operation_id = "list_bulk_operations",
    security(("bearer" = ["licenses:read"])),
    params(("space" = String, Path, description = "Space id"), PageQuery),
    responses(
        (status = 200, description = "A page of bulk operations, newest first", body = BulkOperationPage),
        (status = 404, description = "Unknown space"),
    )
)]
#[get("/v1/spaces/{space}/bulk-operations")]
pub async fn list_bulk_operations(
    access: SpaceAccess<needs::LicensesRead>,
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<web::Json<BulkOperationPage>, ApiError> {
    let space = access.path;
    let list = format!("bulk-operations:{space}");
    let limit = query.limit()?;
    let after: Option<(DateTime<Utc>, Uuid)> = query.after(&list)?;
    let mut conn = state.pool.get().await?;
    let rows = usecase::list(&mut conn, &space, after, limit).await?;
    let next = next_cursor(
        &list,
        rows.len(),
        limit,
        rows.last().map(|r| (r.created_at, r.id)),
    );
    Ok(web::Json(BulkOperationPage {
        items: rows.into_iter().map(view).collect(),
        next_cursor: next,
    }))
}

/// One bulk operation: state, counts, a sample of errors.
///
/// What a poller needs to follow an operation: `state` (`queued`, `running`, then
/// `succeeded`, `completed_with_errors`, `cancelled` or `failed`), the subjects processed so
/// far, the counts per subject × asset item and the first 20 errors with their problem type.
#[utoipa::path(
    tag = "bulk",
    operation_id = "get_bulk_operation",
    security(("bearer" = ["licenses:read"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("id" = Uuid, Path, description = "Bulk operation id"),
    ),
    responses(
        (status = 200, description = "The operation", body = BulkOperation),
        (status = 404, description = "Unknown space or operation"),
    )
)]
#[get("/v1/spaces/{space}/bulk-operations/{id}")]
pub async fn get_bulk_operation(
    access: SpaceAccess<needs::LicensesRead, (String, Uuid)>,
    state: web::Data<AppState>,
) -> Result<web::Json<BulkOperation>, ApiError> {
    let (space, id) = access.path;
    let mut conn = state.pool.get().await?;
    Ok(web::Json(view(usecase::get(&mut conn, &space, id).await?)))
}

/// Cancel a bulk operation.
///
/// No chunk runs after this (the chunk in hand finishes first); what the chunks before did
/// stays done, and the counts say how far it went. A finished operation answers 409.
#[utoipa::path(
    tag = "bulk",
    operation_id = "cancel_bulk_operation",
    security(("bearer" = ["licenses:write"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("id" = Uuid, Path, description = "Bulk operation id"),
    ),
    responses(
        (status = 200, description = "The cancelled operation", body = BulkOperation),
        (status = 404, description = "Unknown space or operation"),
        (status = 409, description = "The operation is already finished (`conflict`)"),
    )
)]
#[post("/v1/spaces/{space}/bulk-operations/{id}/cancel")]
pub async fn cancel_bulk_operation(
    access: SpaceAccess<needs::LicensesWrite, (String, Uuid)>,
    state: web::Data<AppState>,
) -> Result<web::Json<BulkOperation>, ApiError> {
    let (caller, (space, id)) = access.into_parts();
    let mut conn = state.pool.get().await?;
    Ok(web::Json(view(
        usecase::cancel(&mut conn, &space, id, &caller.origin()).await?,
    )))
}
