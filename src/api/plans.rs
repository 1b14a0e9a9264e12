//! `/v1/spaces/{space}/plans`: Adopt, Clean Up, Repair and Reconcile, planned then applied
//! (rules T4, T6, T12; docs/sync.md, "Plans"). The plan *is* the dry run: it lists exactly what
//! applying changes. Planning and applying need `licenses:write`; reading needs
//! `licenses:read`.
//!
//! An expired plan answers **410** `plan-expired` (Gone: the plan exists but can no longer be
//! applied; a new plan is the way on), not 409: nothing about the ledger conflicts, the plan's
//! own time ran out.

use actix_web::http::header;
use actix_web::{HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{Scope, SpaceAccess, needs};
use crate::domain::model::LicenseType;
use crate::domain::reconciliation::{ItemOutcome, PlanAction, PlanChange, PlanState};
use crate::domain::validation::{FieldError, check_asset};
use crate::http::extract::Json;
use crate::http::problem::{ApiError, types};
use crate::plans::make::Excluded;
use crate::plans::{self, Plan, PlanError, PlanRequest, RepairChoice};
use crate::state::AppState;

/// Body of `POST …/plans`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"action": "adopt", "account_id": "0192f0c4-8a3e-7c1a-9d2b-6f1e2a3b4c5d", "limit": 100}))]
pub struct PlanBody {
    pub action: PlanAction,
    /// The account to act on; omit for every account of the space (each capped on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub account_id: Option<Uuid>,
    /// Only licenses of this Apple product id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "408709785")]
    pub adam_id: Option<String>,
    /// Only licenses of this pricing (`STDQ` or `PLUS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "STDQ")]
    pub pricing_param: Option<String>,
    /// Repair only: what to do with `ledger_only` licenses (default `reassociate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub repair: Option<RepairChoice>,
    /// At most this many items (1 to `VPP_PLAN_CAP_MAX`); the cap applies anyway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, minimum = 1)]
    pub limit: Option<u32>,
}

/// Candidates a plan left out, and why.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct PlanExcluded {
    /// Clean Up: rows of assets Apple does not take back (books).
    pub not_revocable: i64,
    /// Clean Up: rows Apple first listed less than an hour ago.
    pub too_recent: i64,
}

/// What the caller asked, as kept with the plan.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct PlanOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub adam_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub pricing_param: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub repair: Option<RepairChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub limit: Option<u32>,
}

/// What applying a plan did, in counts.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct PlanOutcome {
    pub applied: i64,
    pub skipped: i64,
}

/// One change of a plan.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PlanItem {
    /// Order of application, from 1.
    pub seq: i32,
    pub account_id: Uuid,
    pub change: PlanChange,
    #[schema(example = "408709785")]
    pub adam_id: String,
    #[schema(example = "STDQ")]
    pub pricing_param: String,
    pub license_type: LicenseType,
    /// `device:SERIAL` or `user:CLIENT_USER_ID`: the assignment's subject, or for a license
    /// the ledger does not hold yet, who Apple lists.
    #[schema(example = "device:C02XK0AAJGH5")]
    pub subject: String,
    /// The ledger's assignment (repairs, Reconcile; adopted and cleaned-up licenses once
    /// applied).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub assignment_id: Option<Uuid>,
    /// Why it is planned: the drift class (`apple_only`, `ledger_only`, `stuck`) or
    /// Reconcile's criterion.
    pub reason: String,
    /// Set once the plan is applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub outcome: Option<ItemOutcome>,
    /// Why the item was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub outcome_reason: Option<String>,
}

/// A plan: exactly what applying it changes (the dry run), then what applying did.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PlanView {
    pub id: Uuid,
    pub space: String,
    pub action: PlanAction,
    /// The account acted on; absent: every account of the space.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub account_id: Option<Uuid>,
    pub state: PlanState,
    pub options: PlanOptions,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    /// Applying is refused after this (410 `plan-expired`): an hour after `created_at`.
    pub expires_at: DateTime<Utc>,
    /// How many items the plan may hold (the accounts' caps, or `limit` when smaller).
    pub cap: i32,
    /// How many candidates there were.
    pub candidates: i32,
    /// Candidates were left out by the cap or `limit` (plan again after applying).
    pub capped: bool,
    pub excluded: PlanExcluded,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub applied_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub applied_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub outcome: Option<PlanOutcome>,
    pub items: Vec<PlanItem>,
}

impl From<Plan> for PlanView {
    fn from(plan: Plan) -> Self {
        let row = plan.row;
        let options: PlanOptions = serde_json::from_value(row.options.clone()).unwrap_or_default();
        let excluded: Excluded = row
            .options
            .get("excluded")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let items: Vec<PlanItem> = plan
            .items
            .into_iter()
            .map(|i| PlanItem {
                seq: i.seq,
                account_id: i.account_id,
                change: i.change,
                subject: i
                    .subject
                    .unwrap_or_else(|| format!("{}:{}", i.license_type, i.target)),
                adam_id: i.adam_id,
                pricing_param: i.pricing_param,
                license_type: i.license_type,
                assignment_id: i.assignment_id,
                reason: i.reason,
                outcome: i.outcome,
                outcome_reason: i.outcome_reason,
            })
            .collect();
        PlanView {
            id: row.id,
            space: row.space_id,
            action: row.action,
            account_id: row.account_id,
            state: row.state,
            options,
            created_at: row.created_at,
            created_by: row.created_by,
            expires_at: row.expires_at,
            cap: row.cap,
            candidates: row.candidates,
            capped: (row.candidates as usize) > items.len(),
            excluded: PlanExcluded {
                not_revocable: excluded.not_revocable,
                too_recent: excluded.too_recent,
            },
            applied_at: row.applied_at,
            applied_by: row.applied_by,
            outcome: row.outcome.and_then(|o| serde_json::from_value(o).ok()),
            items,
        }
    }
}

impl From<PlanError> for ApiError {
    fn from(err: PlanError) -> Self {
        match err {
            PlanError::NotFound(what) => ApiError::not_found(what),
            e @ PlanError::Expired(..) => ApiError::new(&types::PLAN_EXPIRED, e.to_string()),
            PlanError::CleanUpRefused(why) => ApiError::new(&types::CLEAN_UP_REFUSED, why),
            PlanError::Db(e) => e.into(),
        }
    }
}

fn validate(body: &PlanBody, cap_max: u64) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    if let Some(adam_id) = &body.adam_id {
        check_asset(&mut errors, "asset", adam_id, body.pricing_param.as_deref());
        // `check_asset` names the fields of an `asset` object; this body has them at the top.
        for e in &mut errors {
            e.field = e.field.trim_start_matches("asset.").to_owned();
        }
    } else if let Some(p) = &body.pricing_param
        && p != "STDQ"
        && p != "PLUS"
    {
        errors.push(FieldError {
            field: "pricing_param".into(),
            message: "must be STDQ or PLUS".into(),
        });
    }
    if body.repair.is_some() && body.action != PlanAction::Repair {
        errors.push(FieldError {
            field: "repair".into(),
            message: "only for action repair".into(),
        });
    }
    if let Some(limit) = body.limit
        && (limit == 0 || u64::from(limit) > cap_max)
    {
        errors.push(FieldError {
            field: "limit".into(),
            message: format!("must be 1 to {cap_max}"),
        });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

/// Plan an action: list exactly what applying it would change (the dry run).
///
/// `adopt` takes over licenses assigned at Apple but not by this deployment (`apple_only`
/// drift) as assignments of rule `adopted`, without calling Apple; `clean_up` revokes them at
/// Apple through the dispatcher (refused with 409 `clean-up-refused` unless the account is
/// owned by this deployment and was synced within the hour; rows of non-revocable assets and
/// rows first seen less than an hour ago are left out and counted in `excluded`); `repair`
/// queues the association of `ledger_only` licenses again (or marks them lost with
/// `repair: "mark_lost"`) and follows or resubmits `stuck` ones; `reconcile` revokes licenses
/// this deployment assigned that the allocation rules no longer allow (disallowed, left the
/// first-come-first-served groups, off the fallback account's list) or whose subject was not
/// seen for `VPP_RECONCILE_UNSEEN_DAYS`, re-checked when applied. Adopt, Clean Up and Repair
/// take their candidates from the drift report of the last sync. A plan holds at most
/// `VPP_PLAN_CAP_PERCENT` of each account's assignments (at most `VPP_PLAN_CAP_MAX`), fewer with
/// `limit`; `capped` says candidates were left out. Apply it within the hour.
#[utoipa::path(
    tag = "plans",
    operation_id = "create_plan",
    security(("bearer" = ["licenses:write"])),
    params(("space" = String, Path, description = "Space id")),
    request_body = PlanBody,
    responses(
        (status = 201, description = "The plan; `Location` is set", body = PlanView),
        (status = 404, description = "Unknown space or account"),
        (status = 409, description = "Clean Up refused: the account is not owned by this deployment or was not synced within the hour (`clean-up-refused`)"),
        (status = 403, description = "Clean Up needs `accounts:manage` (it revokes licenses other MDMs or admins assigned) (`forbidden`)"),
        (status = 422, description = "Invalid body (`invalid-body`, `validation-failed`)"),
    )
)]
#[post("/v1/spaces/{space}/plans")]
pub async fn create_plan(
    access: SpaceAccess<needs::LicensesWrite>,
    state: web::Data<AppState>,
    body: Json<PlanBody>,
) -> Result<HttpResponse, ApiError> {
    let (caller, space) = access.into_parts();
    let body = body.0;
    if body.action == PlanAction::CleanUp {
        caller.require(Scope::AccountsManage)?;
    }
    validate(&body, state.reconciliation.plan_cap_max)?;
    let request = PlanRequest {
        action: body.action,
        account: body.account_id,
        adam_id: body.adam_id,
        pricing_param: body.pricing_param,
        repair: body.repair.unwrap_or(RepairChoice::Reassociate),
        limit: body.limit,
    };
    let mut conn = state.pool.get().await?;
    let plan = plans::create(
        &mut conn,
        &space,
        &caller.origin(),
        &state.reconciliation,
        &request,
    )
    .await?;
    let view = PlanView::from(plan);
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("/v1/spaces/{space}/plans/{}", view.id),
        ))
        .json(view))
}

/// Get a plan, with its items (and, once applied, what applying did to each).
///
/// A plan stays readable after it expired or was applied: it is the record of what was
/// planned, by whom, and what applying did.
#[utoipa::path(
    tag = "plans",
    operation_id = "get_plan",
    security(("bearer" = ["licenses:read"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("plan" = Uuid, Path, description = "Plan id"),
    ),
    responses((status = 200, description = "The plan", body = PlanView))
)]
#[get("/v1/spaces/{space}/plans/{plan}")]
pub async fn get_plan(
    access: SpaceAccess<needs::LicensesRead, (String, Uuid)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (_, (space, id)) = access.into_parts();
    let mut conn = state.pool.get().await?;
    let plan = plans::get(&mut conn, &space, id).await?;
    Ok(HttpResponse::Ok().json(PlanView::from(plan)))
}

/// Apply a plan, once.
///
/// Every item is checked again first: what changed since the plan is `skipped`, with
/// `outcome_reason`. Applying an applied plan answers it again and changes nothing. A plan
/// older than an hour is refused with 410 `plan-expired` (nothing changes; plan again).
#[utoipa::path(
    tag = "plans",
    operation_id = "apply_plan",
    security(("bearer" = ["licenses:write"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("plan" = Uuid, Path, description = "Plan id"),
    ),
    responses(
        (status = 200, description = "The plan, applied, with each item's outcome", body = PlanView),
        (status = 403, description = "A Clean Up plan needs `accounts:manage` (`forbidden`)"),
        (status = 404, description = "Unknown space or plan"),
        (status = 409, description = "Clean Up refused: the account is no longer owned by this deployment or was not synced within the hour (`clean-up-refused`); nothing changed"),
        (status = 410, description = "The plan expired before it was applied (`plan-expired`); nothing changed"),
    )
)]
#[post("/v1/spaces/{space}/plans/{plan}/apply")]
pub async fn apply_plan(
    access: SpaceAccess<needs::LicensesWrite, (String, Uuid)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (caller, (space, id)) = access.into_parts();
    let mut conn = state.pool.get().await?;
    if plans::get(&mut conn, &space, id).await?.row.action == PlanAction::CleanUp {
        caller.require(Scope::AccountsManage)?;
    }
    let plan = plans::apply(
        &mut conn,
        &space,
        id,
        &caller.origin(),
        &state.reconciliation,
    )
    .await?;
    Ok(HttpResponse::Ok().json(PlanView::from(plan)))
}
