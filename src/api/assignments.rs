//! `/v1/spaces/{space}/assignments` and `/revocations`: allocate and revoke licenses
//! (rules A1–A10, V1 in docs/rules.md).
//!
//! Allocation answers from the ledger at database speed; Apple is never called on the request
//! path. `?wait=N` (0–30 s) optionally holds the answer until Apple confirmed or refused.
//! Allocating and revoking need `licenses:write`; reading needs `licenses:read`.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, delete, get, post, web};
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::spaces::require_space;
use crate::auth::{SpaceAccess, needs};
use crate::domain::allocation::{AllocationRequest, AssetRef, Refusal, SubjectInput};
use crate::domain::model::{
    AssignmentState, Decision, LicenseType, LicenseWish, Rule, SubjectKind,
};
use crate::domain::origin::Origin;
use crate::domain::records::{AssignmentRow, SubjectRow};
use crate::domain::validation::{FieldError, check_asset, check_id, check_reason};
use crate::engine::allocate::{self, AllocationError, Outcome};
use crate::engine::revoke::{self as revocations, Matching, RevocationError, Revoked};
use crate::http::export::{self, Chunk, ExportRow};
use crate::http::extract::Json;
use crate::http::idempotency::{self, Begin};
use crate::http::pagination::{MAX_LIMIT, next_cursor};
use crate::http::problem::{ApiError, Problem, types};
use crate::ledger::assignments::{self as store, ListFilter};
use crate::ledger::subjects;
use crate::state::AppState;

/// An asset: Apple product id and pricing.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Asset {
    /// Apple's product id (digits).
    #[schema(example = "408709785")]
    pub adam_id: String,
    /// `STDQ` (standard) or `PLUS` (high quality); default `STDQ`.
    #[serde(default = "stdq")]
    #[schema(example = "STDQ")]
    pub pricing_param: String,
}

fn stdq() -> String {
    "STDQ".into()
}

/// Who the license is for.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubjectRef {
    pub kind: SubjectKind,
    /// Serial number (devices) or client user id (users), 1–256 characters.
    #[schema(min_length = 1, max_length = 256)]
    pub id: String,
    /// Devices: the client user id of the device's user (for user-based licenses and rule A7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 256, nullable = false)]
    pub user: Option<String>,
    /// Devices: a Shared iPad always gets a device-based license. Omit to keep what was stored
    /// before (a new device is not a Shared iPad).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub shared_ipad: Option<bool>,
    /// The subject's group memberships, as the MDM knows them (stored; used by policies and
    /// distribution lists). Omit to keep what was stored before. At most 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 100, nullable = false)]
    pub groups: Option<Vec<String>>,
}

/// Body of `POST …/assignments`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "asset": {"adam_id": "361309726", "pricing_param": "STDQ"},
    "subject": {"kind": "device", "id": "C02XK0AAJGH5", "user": "u-1842", "groups": ["sales"]},
    "license_type": "auto",
    "reason": "enrolment of a new iPad"
}))]
pub struct AllocateBody {
    pub asset: Asset,
    pub subject: SubjectRef,
    /// `auto` (default): device-based for device-assignable assets, else user-based.
    #[serde(default = "auto")]
    pub license_type: LicenseWish,
    /// Why the license is wanted (recorded in the activity log), at most 1000 characters.
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub reason: String,
    /// Explain the decision without taking a license.
    #[serde(default)]
    pub dry_run: bool,
    /// A12: when no license is left anywhere for this subject, wait in line instead of the
    /// 409: the answer is 202 with a `waiting` assignment and its place in line, served (it
    /// becomes `pending`) the moment a license frees, or `failed` once
    /// `VPP_WAIT_EXPIRY_HOURS` passed. Refusals other than "no license left" are answered as
    /// without it; a dry run never waits. Absent: the asset's distribution policy decides
    /// (its `wait_for_license`, default `false`); `false` never waits, whatever the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub wait_for_license: Option<bool>,
}

fn auto() -> LicenseWish {
    LicenseWish::Auto
}

/// One license held (or once held) by a subject.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Assignment {
    pub id: Uuid,
    pub space: String,
    pub account_id: Uuid,
    pub asset: Asset,
    pub subject: AssignmentSubject,
    pub license_type: LicenseType,
    pub state: AssignmentState,
    /// The rule that decided this allocation.
    pub rule: Rule,
    /// Accounts skipped before this one, and why.
    pub decision: Decision,
    pub requested_by: String,
    pub reason: String,
    /// Who asked for this license's revocation, why, when and in which request; absent until
    /// a revocation was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub revocation: Option<RevocationRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub apple_event_id: Option<String>,
    /// Apple's error and what the service did about it (failed assignments).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<FailureView>,
    /// A12: the assignment's place in line while it is `waiting`; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub waiting: Option<WaitingPlace>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Where a `waiting` assignment stands in its asset's line (A12).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct WaitingPlace {
    /// 1 is served next: reserved subjects first (A2), then first come.
    #[schema(minimum = 1, example = 3)]
    pub position: i64,
    /// The subject is reserved by the asset's policy (ahead of everyone who is not).
    pub reserved: bool,
    /// When the wait ends without a license (`failed`) unless one frees before.
    pub expires_at: DateTime<Utc>,
}

/// The record of a revocation: who asked, why, when, in which request.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RevocationRecord {
    /// The caller's JWT subject, or `system` (background work).
    pub by: String,
    /// The reason given with the request (`reason`); empty when none was given.
    pub reason: String,
    /// When the revocation was asked (the assignment's `updated_at` says when it finished).
    pub requested_at: DateTime<Utc>,
    /// The `x-request-id` of the request that asked; absent for background work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub request_id: Option<String>,
}

/// Why an assignment failed at Apple, and what the service did about it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[schema(as = AppleError)]
pub struct FailureView {
    /// Apple's error number (e.g. 9709: not enough licenses), when Apple gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = 9709, nullable = false)]
    pub number: Option<i64>,
    /// Apple's message, or the service's when Apple's answer had none.
    #[serde(default)]
    pub message: String,
    /// What the service did about it, in words (e.g. the license stays assigned at Apple).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub action: Option<String>,
    /// On 9709: the assignment that replaced this one, from the next eligible account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reallocated_to: Option<Uuid>,
    /// On 9709: the account of the replacement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reallocated_account_id: Option<Uuid>,
    /// On 9709 without a replacement: why no other account could serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reallocation: Option<String>,
    /// User registration refused by Apple: Apple's error per client user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub errors: Option<std::collections::BTreeMap<String, UserRefusal>>,
}

/// Apple's refusal to register one user.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct UserRefusal {
    /// Apple's error number.
    #[serde(default)]
    pub number: i64,
    /// Apple's message.
    #[serde(default)]
    pub message: String,
}

/// The license holder of an assignment.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AssignmentSubject {
    pub kind: SubjectKind,
    pub id: String,
}

/// Answer of an allocation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Allocation {
    /// The assignment (absent for a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub assignment: Option<Assignment>,
    /// True when this request created the assignment; false when it existed (A6, A7).
    pub created: bool,
    pub rule: Rule,
    pub account_id: Uuid,
    pub license_type: LicenseType,
    pub decision: Decision,
    pub dry_run: bool,
    /// Set when the answer waited (`?wait=`) and Apple refused the license this request first
    /// allocated (9709: the account had fewer licenses than the ledger believed), so the service
    /// re-allocated it from another account: the id of that failed assignment. `assignment`,
    /// `account_id`, `rule` and `decision` then describe the live replacement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub replaces: Option<Uuid>,
}

/// One page of assignments.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AssignmentPage {
    pub items: Vec<Assignment>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Seconds (0–30) to hold the answer until Apple confirmed or refused.
    #[param(minimum = 0, maximum = 30)]
    pub wait: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only this account's assignments.
    pub account_id: Option<Uuid>,
    /// Only this asset's (Apple product id).
    pub adam_id: Option<String>,
    /// With `adam_id`: only this pricing (`STDQ` or `PLUS`).
    pub pricing_param: Option<String>,
    /// With `subject_id`: `device` or `user`.
    pub subject_kind: Option<SubjectKind>,
    /// Only this subject's (a serial number or client user id; with `subject_kind`).
    pub subject_id: Option<String>,
    /// Only assignments in this state.
    pub state: Option<AssignmentState>,
    /// Only license-holding assignments (pending, associating, active).
    pub live: Option<bool>,
}

/// Body of `POST …/revocations`: which live assignments to revoke (at least one filter).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"asset": {"adam_id": "361309726"}, "reason": "app retired from the catalog"}))]
pub struct RevocationBody {
    /// Only this account's (all of an account's: give only this).
    #[schema(nullable = false)]
    pub account_id: Option<Uuid>,
    /// Only this asset's (omit `pricing_param` for both pricings).
    #[schema(nullable = false)]
    pub asset: Option<RevokeAsset>,
    /// Only this subject's.
    #[schema(nullable = false)]
    pub subject: Option<RevokeSubject>,
    /// Why (recorded on each assignment and in the activity log), at most 1000 characters.
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub reason: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RevokeQuery {
    /// Why the license is revoked (recorded on the assignment and in the activity log), at most
    /// 1000 characters.
    #[param(max_length = 1000)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeAsset {
    pub adam_id: String,
    #[schema(nullable = false)]
    pub pricing_param: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeSubject {
    pub kind: SubjectKind,
    pub id: String,
}

/// What a revocation started.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Revocation {
    /// Pending assignments revoked before reaching Apple.
    pub dropped: i64,
    /// Assignments now `revoking`; Apple is asked to release them.
    pub revoking: i64,
    /// Matching licenses of assets Apple does not let revoke (books), left as they are. Only
    /// without an `asset` filter: naming such an asset is refused (409 `not-revocable`).
    pub not_revocable: i64,
    /// Waiting assignments (A12) of the asset or subject named, cancelled (now `revoked`;
    /// they held no license). A revocation naming only an account cancels none.
    pub cancelled: i64,
}

fn not_revocable(what: String) -> ApiError {
    ApiError::new(
        &types::NOT_REVOCABLE,
        format!(
            "{what}: Apple does not take licenses of this asset back (error 9706; books stay \
             with the user). Nothing was changed"
        ),
    )
}

fn validate(body: &AllocateBody) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    check_asset(
        &mut errors,
        "asset",
        &body.asset.adam_id,
        Some(&body.asset.pricing_param),
    );
    check_id(&mut errors, "subject.id", &body.subject.id);
    if let Some(user) = &body.subject.user {
        check_id(&mut errors, "subject.user", user);
        if body.subject.kind == SubjectKind::User {
            errors.push(FieldError {
                field: "subject.user".into(),
                message: "only devices have a user".into(),
            });
        }
    }
    if body.subject.shared_ipad == Some(true) && body.subject.kind == SubjectKind::User {
        errors.push(FieldError {
            field: "subject.shared_ipad".into(),
            message: "only devices can be Shared iPads".into(),
        });
    }
    if let Some(groups) = &body.subject.groups {
        if groups.len() > 100 {
            errors.push(FieldError {
                field: "subject.groups".into(),
                message: "at most 100 groups".into(),
            });
        }
        for (i, g) in groups.iter().enumerate() {
            check_id(&mut errors, &format!("subject.groups[{i}]"), g);
        }
    }
    if body.reason.chars().count() > 1000 {
        errors.push(FieldError {
            field: "reason".into(),
            message: "at most 1000 characters".into(),
        });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

/// 422 unless the revocation names at least one filter and every value is acceptable.
fn validate_revocation(body: &RevocationBody) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    if body.account_id.is_none() && body.asset.is_none() && body.subject.is_none() {
        errors.push(FieldError {
            field: "body".into(),
            message: "give at least one of account_id, asset, subject".into(),
        });
    }
    if let Some(a) = &body.asset {
        check_asset(&mut errors, "asset", &a.adam_id, a.pricing_param.as_deref());
    }
    if let Some(s) = &body.subject {
        check_id(&mut errors, "subject.id", &s.id);
    }
    check_reason(&mut errors, "reason", &body.reason);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

impl From<AllocationError> for ApiError {
    fn from(err: AllocationError) -> Self {
        match err {
            AllocationError::Refused(refusal @ Refusal::UnknownAsset { .. }) => {
                ApiError::new(&types::ASSET_NOT_FOUND, refusal.to_string())
            }
            AllocationError::Refused(Refusal::Disallowed(why)) => {
                ApiError::new(&types::SUBJECT_DISALLOWED, why)
            }
            AllocationError::Refused(Refusal::Incompatible(why) | Refusal::HolderChanged(why)) => {
                ApiError::new(&types::LICENSE_TYPE_UNAVAILABLE, why)
            }
            AllocationError::Refused(Refusal::Exhausted { skipped }) => ApiError::new(
                &types::NO_LICENSE_AVAILABLE,
                format!(
                    "no account of this space can serve this subject; see `accounts` ({} tried)",
                    skipped.len()
                ),
            )
            .with_extensions(serde_json::json!({ "accounts": skipped })),
            AllocationError::Refused(Refusal::UnknownSpace(space)) => {
                ApiError::not_found(format!("space {space}"))
            }
            AllocationError::Db(e) => e.into(),
            AllocationError::Pool(e) => e.into(),
            AllocationError::Overdrawn => ApiError::new(
                &types::UNAVAILABLE,
                "the ledger kept changing while the allocation was decided; retry",
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1")),
            e @ AllocationError::Unavailable { .. } => {
                tracing::warn!(error = %e, "allocation unavailable");
                ApiError::new(
                    &types::UNAVAILABLE,
                    "the ledger database is unavailable; retry later",
                )
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
            }
        }
    }
}

/// The problem each revocation failure answers with.
impl From<RevocationError> for ApiError {
    fn from(err: RevocationError) -> Self {
        match err {
            RevocationError::NotFound(what) => ApiError::not_found(what),
            RevocationError::NotRevocable(what) => not_revocable(what),
            RevocationError::Db(e) => e.into(),
            e @ RevocationError::Unavailable { .. } => {
                tracing::warn!(error = %e, "revocation unavailable");
                ApiError::new(
                    &types::UNAVAILABLE,
                    "the ledger database is unavailable; retry later",
                )
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
            }
        }
    }
}

/// Builds the views of assignments (one query for their subjects' kinds and ids).
pub async fn views(
    conn: &mut diesel_async::AsyncPgConnection,
    rows: Vec<AssignmentRow>,
) -> Result<Vec<Assignment>, ApiError> {
    let mut ids: Vec<Uuid> = rows.iter().map(|r| r.subject_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let subjects: HashMap<Uuid, (SubjectKind, String)> = subjects::names_by_ids(conn, &ids)
        .await?
        .into_iter()
        .map(|(id, kind, external_id)| (id, (kind, external_id)))
        .collect();
    let waiting: Vec<Uuid> = rows
        .iter()
        .filter(|r| r.state == AssignmentState::Waiting)
        .map(|r| r.id)
        .collect();
    let places = waiting_places(conn, &waiting).await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let subject = subjects
                .get(&r.subject_id)
                .map(|(kind, id)| AssignmentSubject {
                    kind: *kind,
                    id: id.clone(),
                });
            let place = places.get(&r.id).cloned();
            let mut view = view_with(r, subject);
            view.waiting = place;
            view
        })
        .collect())
}

/// The places in line of the waiting assignments `ids` (one query; none when `ids` is empty).
async fn waiting_places(
    conn: &mut diesel_async::AsyncPgConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, WaitingPlace>, ApiError> {
    Ok(crate::ledger::waitlist::places(conn, ids)
        .await?
        .into_iter()
        .map(|p| {
            (
                p.assignment_id,
                WaitingPlace {
                    position: p.position,
                    reserved: p.reserved,
                    expires_at: p.expires_at,
                },
            )
        })
        .collect())
}

fn view(r: AssignmentRow, subject: Option<&SubjectRow>) -> Assignment {
    let subject = subject.map(|s| AssignmentSubject {
        kind: s.kind,
        id: s.external_id.clone(),
    });
    view_with(r, subject)
}

fn view_with(r: AssignmentRow, subject: Option<AssignmentSubject>) -> Assignment {
    let subject = subject.unwrap_or(AssignmentSubject {
        kind: match r.license_type {
            LicenseType::Device => SubjectKind::Device,
            LicenseType::User => SubjectKind::User,
        },
        id: String::new(),
    });
    Assignment {
        id: r.id,
        space: r.space_id,
        account_id: r.account_id,
        asset: Asset {
            adam_id: r.adam_id,
            pricing_param: r.pricing_param,
        },
        subject,
        license_type: r.license_type,
        state: r.state,
        rule: r.rule,
        decision: serde_json::from_value(r.decision).unwrap_or_default(),
        requested_by: r.requested_by,
        reason: r.reason,
        revocation: match (r.revoked_by, r.revocation_requested_at) {
            (Some(by), Some(requested_at)) => Some(RevocationRecord {
                by,
                reason: r.revocation_reason.unwrap_or_default(),
                requested_at,
                request_id: r.revocation_request_id,
            }),
            _ => None,
        },
        apple_event_id: r.apple_event_id,
        error: r
            .error
            .map(|e| serde_json::from_value(e).unwrap_or_default()),
        waiting: None,
        version: r.version,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

async fn one_view(
    conn: &mut diesel_async::AsyncPgConnection,
    row: AssignmentRow,
) -> Result<Assignment, ApiError> {
    views(conn, vec![row])
        .await?
        .pop()
        .ok_or_else(|| ApiError::internal(std::io::Error::other("assignment view missing")))
}

/// The answer to an allocation, typed until it is written.
enum Answer {
    /// 201 when this request created the assignment, else 200. `replay`: the stored answer of
    /// an idempotency key, written back as it was stored unless `?wait=` changed the answer.
    Allocation {
        status: u16,
        body: Box<Allocation>,
        replay: Option<serde_json::Value>,
    },
    /// A refusal, answered as a problem (4xx).
    Refusal { status: u16, body: Problem },
    /// A stored answer replayed for an idempotency key that is not an allocation this version
    /// can read (a refusal, as stored).
    Stored {
        status: u16,
        body: serde_json::Value,
    },
}

impl Answer {
    /// A stored answer: an allocation (typed again, so `?wait=` can follow it) or, for a refusal,
    /// the stored problem.
    fn stored(status: u16, body: serde_json::Value) -> Answer {
        if status < 300
            && let Ok(allocation) = serde_json::from_value::<Allocation>(body.clone())
        {
            return Answer::Allocation {
                status,
                body: Box::new(allocation),
                replay: Some(body),
            };
        }
        Answer::Stored { status, body }
    }

    fn status(&self) -> u16 {
        match self {
            Answer::Allocation { status, .. }
            | Answer::Refusal { status, .. }
            | Answer::Stored { status, .. } => *status,
        }
    }

    /// The body as stored for an idempotency key.
    fn to_value(&self) -> serde_json::Value {
        match self {
            Answer::Allocation { body, .. } => serde_json::to_value(body),
            Answer::Refusal { body, .. } => serde_json::to_value(body),
            Answer::Stored { body, .. } => Ok(body.clone()),
        }
        .unwrap_or_default()
    }

    fn respond(&self, replayed: bool) -> HttpResponse {
        let status = self.status();
        let mut builder =
            HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::OK));
        if status >= 400 {
            builder.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        }
        if replayed {
            builder.insert_header((idempotency::REPLAYED, HeaderValue::from_static("true")));
        }
        match self {
            Answer::Allocation { body, replay, .. } => {
                if (status == 201 || status == 202)
                    && let Some(a) = &body.assignment
                {
                    builder.insert_header((
                        header::LOCATION,
                        format!("/v1/spaces/{}/assignments/{}", a.space, a.id),
                    ));
                }
                match replay {
                    Some(stored) => builder.json(stored),
                    None => builder.json(body),
                }
            }
            Answer::Refusal { body, .. } => builder.json(body),
            Answer::Stored { body, .. } => builder.json(body),
        }
    }
}

/// Allocate a license for a subject (or explain what would be allocated with `dry_run`).
///
/// Decides in one transaction from the ledger and answers at database speed; Apple is called later
/// by the dispatcher. The answer says which account served, the rule that decided (`existing`,
/// `user_license_covers_device`, `reservation`, `priority`, `fallback`, `reallocation`) and which
/// accounts were skipped and why. `Idempotency-Key` replays the first answer (24 h); `?wait=` holds
/// the answer until Apple confirmed or refused the association. When Apple refused it for want of
/// licenses (9709) and the service re-allocated from another account, the waited answer is the
/// live replacement, and `replaces` names the failed assignment.
///
/// With `wait_for_license: true` (or without it, when the asset's distribution policy says
/// `wait_for_license`; `false` never waits), "no license left anywhere" is not a 409 but a place in line
/// (A12): 202 with the assignment in state `waiting` and `waiting.position` (reserved subjects
/// first, then first come). It is served the moment a license frees (a revocation, a purchase
/// found by Apple's `ASSET_COUNT` notification or a sync) under the same rules as any
/// allocation, and becomes `pending` (same id); `DELETE` cancels it; it fails once
/// `VPP_WAIT_EXPIRY_HOURS` passed. Asking again while waiting answers the waiting assignment
/// (202); `?wait=` does not hold a waiting answer.
#[utoipa::path(
    tag = "assignments",
    operation_id = "allocate_license",
    security(("bearer" = ["licenses:write"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same key (24 h, per caller)"),
        WaitQuery,
    ),
    request_body = AllocateBody,
    responses(
        (status = 201, description = "A license was allocated; `decision` explains the choice", body = Allocation),
        (status = 202, description = "A12: no license was left and `wait_for_license` was asked, or left out and the asset's policy says `wait_for_license` (or the subject already waits for the asset): the assignment is `waiting`, with its place in line (`assignment.waiting`); `Location` names it", body = Allocation),
        (status = 200, description = "The subject already holds a license for the asset (A6/A7), or a dry run", body = Allocation),
        (status = 403, description = "The asset's policy disallows the subject (`subject-disallowed`)"),
        (status = 404, description = "Unknown space, or no account of the space owns the asset (`asset-not-found`)"),
        (status = 409, description = "No license available anywhere (`no-license-available`, with `accounts` listing why per account)"),
        (status = 422, description = "Invalid body, license type impossible for this subject or asset, or Idempotency-Key reused for another request"),
    )
)]
#[post("/v1/spaces/{space}/assignments")]
pub async fn allocate_license(
    access: SpaceAccess<needs::LicensesWrite>,
    state: web::Data<AppState>,
    query: web::Query<WaitQuery>,
    req: HttpRequest,
    body: Json<AllocateBody>,
) -> Result<HttpResponse, ApiError> {
    let (caller, space) = access.into_parts();
    let wait = wait_seconds(query.wait)?;
    let body = body.0;
    validate(&body)?;
    // Absent: the asset's policy decides (A12), with the same expiry.
    let expiry =
        Utc::now() + chrono::Duration::hours(state.reconciliation.wait_expiry_hours as i64);
    let (wait_until, policy_wait_until) = match body.wait_for_license {
        Some(true) => (Some(expiry), None),
        Some(false) => (None, None),
        None => (None, Some(expiry)),
    };
    let request = allocation_request(
        &space,
        &body,
        caller.origin(),
        wait_until,
        policy_wait_until,
    );
    let key = idempotency::key(&req)?;
    let (mut answer, replayed) = match key {
        // The common path: decided together with this process's concurrent allocations.
        None if !body.dry_run => (render(state.combiner.submit(request).await, false)?, false),
        None => {
            let mut conn = state.pool.get().await?;
            (
                render(allocate::allocate(&mut conn, &request).await, true)?,
                false,
            )
        }
        Some(key) => {
            let fingerprint =
                idempotency::fingerprint(&req, &serde_json::to_vec(&body).unwrap_or_default());
            let mut conn = state.pool.get().await?;
            once(&mut conn, &caller.subject, &key, &fingerprint, &request).await?
        }
    };
    if let Some(wait) = wait {
        follow(&state, &space, &mut answer, wait).await?;
    }
    place_in_line(&state, &mut answer).await?;
    Ok(answer.respond(replayed))
}

/// A fresh answer with a `waiting` assignment (A12) says where it stands in line (a replayed
/// one says what it said first).
async fn place_in_line(state: &AppState, answer: &mut Answer) -> Result<(), ApiError> {
    let Answer::Allocation {
        body, replay: None, ..
    } = answer
    else {
        return Ok(());
    };
    let Some(a) = body.assignment.as_mut() else {
        return Ok(());
    };
    if a.state != AssignmentState::Waiting {
        return Ok(());
    }
    let mut conn = state.pool.get().await?;
    a.waiting = waiting_places(&mut conn, &[a.id]).await?.remove(&a.id);
    Ok(())
}

/// The engine's request for an allocation body.
fn allocation_request(
    space: &str,
    body: &AllocateBody,
    origin: Origin,
    wait_until: Option<DateTime<Utc>>,
    policy_wait_until: Option<DateTime<Utc>>,
) -> AllocationRequest {
    AllocationRequest {
        space: space.to_owned(),
        asset: AssetRef {
            adam_id: body.asset.adam_id.clone(),
            pricing_param: body.asset.pricing_param.clone(),
        },
        subject: match body.subject.kind {
            SubjectKind::Device => SubjectInput::Device {
                serial: body.subject.id.clone(),
                user: body.subject.user.clone(),
                shared_ipad: body.subject.shared_ipad,
                groups: body.subject.groups.clone(),
            },
            SubjectKind::User => SubjectInput::User {
                id: body.subject.id.clone(),
                groups: body.subject.groups.clone(),
            },
        },
        wish: body.license_type,
        reason: body.reason.clone(),
        origin,
        dry_run: body.dry_run,
        exclude_accounts: Vec::new(),
        replaces: None,
        wait_until,
        policy_wait_until,
        serves: None,
        serves_holder: None,
    }
}

/// Allocates under an `Idempotency-Key`: the first request with the key allocates and stores its
/// answer in the same transaction; later ones get the stored answer (`true`: replayed).
async fn once(
    conn: &mut crate::db::Conn,
    caller: &str,
    key: &str,
    fingerprint: &[u8],
    request: &AllocationRequest,
) -> Result<(Answer, bool), ApiError> {
    let space = request.space.as_str();
    conn.transaction(async |conn| {
        match idempotency::begin(conn, space, caller, key, fingerprint).await? {
            Begin::Replay { status, body } => Ok((Answer::stored(status, body), true)),
            Begin::Fresh => {
                let answer = render(allocate::allocate(conn, request).await, request.dry_run)?;
                let (status, stored) = (answer.status(), answer.to_value());
                idempotency::finish(conn, space, caller, key, status, &stored).await?;
                Ok((answer, false))
            }
        }
    })
    .await
}

/// For `?wait=`: holds a successful allocation's answer until its assignment is final, and
/// answers with the live replacement when Apple refused it and the service re-allocated.
async fn follow(
    state: &AppState,
    space: &str,
    answer: &mut Answer,
    wait: Duration,
) -> Result<(), ApiError> {
    let Answer::Allocation {
        status,
        body,
        replay,
    } = answer
    else {
        return Ok(());
    };
    let Some(id) = body.assignment.as_ref().map(|a| a.id) else {
        return Ok(());
    };
    // A waiting assignment is answered at once: its wait is measured in hours, not seconds.
    if *status >= 300 || *status == 202 {
        return Ok(());
    }
    let Some(row) = wait_live(state, space, id, wait).await? else {
        return Ok(());
    };
    let mut conn = state.pool.get().await?;
    let replaced = row.id != id;
    let view = one_view(&mut conn, row).await?;
    *replay = None;
    if replaced {
        body.account_id = view.account_id;
        body.rule = view.rule;
        body.license_type = view.license_type;
        body.decision = view.decision.clone();
        body.replaces = Some(id);
    }
    body.assignment = Some(view);
    Ok(())
}

/// Re-allocations followed at most this many times in one waited answer.
const MAX_REPLACEMENTS: usize = 4;

/// Waits (bounded by `timeout` in all) for the assignment's final state and, when Apple refused
/// it with 9709 and the service re-allocated it, for its replacement's: the answer to a waited
/// allocation is the license the subject holds now, not the one that failed (the failed one
/// stays readable, and its `error.reallocated_to` names the replacement).
async fn wait_live(
    state: &AppState,
    space: &str,
    id: Uuid,
    timeout: Duration,
) -> Result<Option<AssignmentRow>, ApiError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let Some(mut row) = state
        .waiters
        .wait_final(&state.pool, space, id, timeout)
        .await?
    else {
        return Ok(None);
    };
    for _ in 0..MAX_REPLACEMENTS {
        let next = (row.state == AssignmentState::Failed)
            .then(|| {
                row.error
                    .as_ref()?
                    .get("reallocated_to")?
                    .as_str()?
                    .parse::<Uuid>()
                    .ok()
            })
            .flatten();
        let Some(next) = next else { break };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match state
            .waiters
            .wait_final(&state.pool, space, next, left)
            .await?
        {
            Some(replacement) => row = replacement,
            None => break,
        }
    }
    Ok(Some(row))
}

/// The answer to an allocation: the allocation, or a problem for refusals.
fn render(result: Result<Outcome, AllocationError>, dry_run: bool) -> Result<Answer, ApiError> {
    match result {
        Ok(o) => {
            let body = Allocation {
                assignment: o.assignment.map(|row| {
                    let holder = (o.holder.id == row.subject_id).then_some(&o.holder);
                    view(row, holder)
                }),
                created: o.created,
                rule: o.rule,
                account_id: o.account_id,
                license_type: o.license_type,
                decision: o.decision,
                dry_run,
                replaces: None,
            };
            let waiting = body
                .assignment
                .as_ref()
                .is_some_and(|a| a.state == AssignmentState::Waiting);
            Ok(Answer::Allocation {
                status: if waiting {
                    202
                } else if o.created {
                    201
                } else {
                    200
                },
                body: Box::new(body),
                replay: None,
            })
        }
        Err(
            e @ (AllocationError::Db(_)
            | AllocationError::Pool(_)
            | AllocationError::Unavailable { .. }
            | AllocationError::Overdrawn),
        ) => Err(e.into()),
        Err(refusal) => {
            let api: ApiError = refusal.into();
            Ok(Answer::Refusal {
                status: api.kind().status,
                body: api.to_problem(),
            })
        }
    }
}

fn wait_seconds(wait: Option<u64>) -> Result<Option<Duration>, ApiError> {
    match wait {
        None | Some(0) => Ok(None),
        Some(s) if s <= 30 => Ok(Some(Duration::from_secs(s))),
        Some(s) => Err(ApiError::new(
            &types::INVALID_PARAMETER,
            format!("wait must be 0 to 30 seconds, not {s}"),
        )),
    }
}

/// List a space's assignments, or export them all (CSV, NDJSON).
///
/// Oldest first (by id), filtered by account, asset, subject and state. Paged like every list
/// (`limit`, `cursor`, `next_cursor`). With `Accept: text/csv` or `Accept: application/x-ndjson`
/// the answer is instead the whole filtered list, streamed: CSV with a header row (columns named
/// by the JSON fields' dotted paths, arrays as JSON, text cells that would start a spreadsheet
/// formula prefixed with `'`), or one JSON assignment per line; `limit` and `cursor` are then
/// refused. An `Accept` that takes none of the three media types is answered 406.
#[utoipa::path(
    tag = "assignments",
    operation_id = "list_assignments",
    security(("bearer" = ["licenses:read"])),
    params(("space" = String, Path, description = "Space id"), ListQuery),
    responses(
        (status = 200, description = "A page of assignments, oldest first (JSON); or every matching assignment, oldest first, as CSV (RFC 4180, header row, CRLF) or NDJSON (one assignment per line)", content(
            (AssignmentPage = "application/json"),
            (String = "text/csv"),
            (Assignment = "application/x-ndjson"),
        )),
        (status = 406, description = "The `Accept` header takes none of `application/json`, `text/csv`, `application/x-ndjson` (`not-acceptable`)"),
    )
)]
#[get("/v1/spaces/{space}/assignments")]
pub async fn list_assignments(
    access: SpaceAccess<needs::LicensesRead>,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let space = access.path;
    let format = export::negotiate(&req)?;
    let q = query.into_inner();
    export::refuse_paging(format, q.limit, q.cursor.as_deref())?;
    let page = crate::http::pagination::PageQuery {
        limit: q.limit,
        cursor: q.cursor.clone(),
    };
    let limit = page.limit()?;
    let after: Option<Uuid> = page.after(&format!("assignments:{space}"))?;
    let mut conn = state.pool.get().await?;
    require_space(&mut conn, &space).await?;
    // A subject the space never saw holds nothing.
    let subject = subject_filter(&mut conn, &space, q.subject_kind, &q.subject_id).await?;
    let filter = subject.map(|subject| ListFilter {
        account: q.account_id,
        adam_id: q.adam_id,
        pricing_param: q.pricing_param,
        subject,
        state: q.state,
        live_only: q.live.unwrap_or(false),
    });
    // Admitted once the query, the space and the filters' ids are known good: a refusal (503)
    // never hides a 400 or a 404.
    if let Some(admission) = export::admission(format, &state.exports)? {
        let source = AssignmentExport { space, filter };
        return export::respond(format, admission, conn, source, "assignments").await;
    }
    let Some(filter) = filter else {
        return Ok(export::json_page(AssignmentPage {
            items: Vec::new(),
            next_cursor: None,
        }));
    };
    let rows = store::list(
        &mut conn,
        &space,
        &filter,
        after,
        limit.min(MAX_LIMIT as i64),
    )
    .await?;
    let next = next_cursor(
        &format!("assignments:{space}"),
        rows.len(),
        limit,
        rows.last().map(|r| r.id),
    );
    Ok(export::json_page(AssignmentPage {
        items: views(&mut conn, rows).await?,
        next_cursor: next,
    }))
}

/// The assignments list as an export: the list's query, chunk by chunk, after the last id.
struct AssignmentExport {
    space: String,
    /// `None`: a subject the space never saw (nothing to export).
    filter: Option<ListFilter>,
}

impl export::Source for AssignmentExport {
    type Row = Assignment;
    type Key = Uuid;

    async fn chunk(
        &self,
        conn: &mut crate::db::Conn,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Chunk<Assignment, Uuid>, ApiError> {
        let Some(filter) = &self.filter else {
            return Ok(Chunk::new(Vec::new(), 0, limit, None));
        };
        let rows = store::list(conn, &self.space, filter, after, limit).await?;
        let (raw, last) = (rows.len(), rows.last().map(|r| r.id));
        Ok(Chunk::new(views(conn, rows).await?, raw, limit, last))
    }
}

impl ExportRow for Assignment {
    const COLUMNS: &'static [&'static str] = &[
        "id",
        "space",
        "account_id",
        "asset.adam_id",
        "asset.pricing_param",
        "subject.kind",
        "subject.id",
        "license_type",
        "state",
        "rule",
        "decision.skipped",
        "decision.queued_because",
        "decision.replaces",
        "requested_by",
        "reason",
        "revocation.by",
        "revocation.reason",
        "revocation.requested_at",
        "revocation.request_id",
        "apple_event_id",
        "error.number",
        "error.message",
        "error.action",
        "error.reallocated_to",
        "error.reallocated_account_id",
        "error.reallocation",
        "error.errors",
        "waiting.position",
        "waiting.reserved",
        "waiting.expires_at",
        "version",
        "created_at",
        "updated_at",
    ];
}

/// The subject filter of a listing: `Some(None)` for none, `None` for a subject the space does not
/// know (nothing to list).
async fn subject_filter(
    conn: &mut crate::db::Conn,
    space: &str,
    kind: Option<SubjectKind>,
    id: &Option<String>,
) -> Result<Option<Option<Uuid>>, ApiError> {
    match (kind, id) {
        (Some(kind), Some(id)) => Ok(subjects::find(conn, space, kind, id)
            .await?
            .map(|s| Some(s.id))),
        (None, None) => Ok(Some(None)),
        _ => Err(ApiError::new(
            &types::INVALID_PARAMETER,
            "subject_kind and subject_id go together",
        )),
    }
}

/// Get one assignment, optionally waiting (≤ 30 s) for its final state.
///
/// With `?wait=N` the answer waits (up to N seconds) until the assignment reaches a final state
/// (`active`, `failed`, `revoked`).
#[utoipa::path(
    tag = "assignments",
    operation_id = "get_assignment",
    security(("bearer" = ["licenses:read"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("assignment" = Uuid, Path, description = "Assignment id"),
        WaitQuery,
    ),
    responses((status = 200, description = "The assignment", body = Assignment))
)]
#[get("/v1/spaces/{space}/assignments/{assignment}")]
pub async fn get_assignment(
    access: SpaceAccess<needs::LicensesRead, (String, Uuid)>,
    state: web::Data<AppState>,
    query: web::Query<WaitQuery>,
) -> Result<web::Json<Assignment>, ApiError> {
    let (space, id) = access.path;
    let wait = wait_seconds(query.wait)?;
    let row = match wait {
        Some(wait) => {
            state
                .waiters
                .wait_final(&state.pool, &space, id, wait)
                .await?
        }
        None => {
            let mut conn = state.pool.get().await?;
            store::find(&mut conn, &space, id).await?
        }
    }
    .ok_or_else(|| ApiError::not_found(format!("assignment {id}")))?;
    let mut conn = state.pool.get().await?;
    Ok(web::Json(one_view(&mut conn, row).await?))
}

/// Revoke one assignment (V1). The license is free in the ledger at once.
///
/// A pending assignment is dropped before it reaches Apple; an associating or active one becomes
/// `revoking` until Apple released the license (202). An assignment that is already `failed` or
/// `revoked` is answered as it is (200), as is one already `revoking` (202). `?reason=` is
/// recorded with who asked, when and the request id (`revocation` on the assignment, and the
/// activity log). A license Apple holds of an asset it does not let revoke (books) is refused
/// with 409 `not-revocable` and nothing changes; a pending one never reached Apple and is
/// dropped like any other. A `waiting` assignment (A12) is cancelled: `revoked` at once (200),
/// nothing goes to Apple.
#[utoipa::path(
    tag = "assignments",
    operation_id = "revoke_assignment",
    security(("bearer" = ["licenses:write"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("assignment" = Uuid, Path, description = "Assignment id"),
        RevokeQuery,
    ),
    responses(
        (status = 202, description = "Revocation started (or already under way): Apple is asked to release the license; the assignment, `revoking`", body = Assignment),
        (status = 200, description = "The assignment is finished: it was already `failed` or `revoked`, or it was still `pending` (or `waiting`, A12) and is dropped in the ledger (`revoked`) without a call to Apple; the assignment as it is", body = Assignment),
        (status = 404, description = "No such assignment in the space"),
        (status = 409, description = "The asset is not revocable (`not-revocable`); nothing changed"),
    )
)]
#[delete("/v1/spaces/{space}/assignments/{assignment}")]
pub async fn revoke_assignment(
    access: SpaceAccess<needs::LicensesWrite, (String, Uuid)>,
    state: web::Data<AppState>,
    query: web::Query<RevokeQuery>,
) -> Result<HttpResponse, ApiError> {
    let (caller, (space, id)) = access.into_parts();
    let reason = query.into_inner().reason.unwrap_or_default();
    if reason.chars().count() > 1000 {
        return Err(ApiError::new(
            &types::INVALID_PARAMETER,
            "reason must be at most 1000 characters",
        ));
    }
    let row = state
        .revocations
        .submit(revocations::OneRevocation {
            space,
            id,
            origin: caller.origin(),
            reason,
        })
        .await?;
    let mut conn = state.pool.get().await?;
    let view = one_view(&mut conn, row).await?;
    // 202 only while Apple still has to release the license; a pending one dropped in the
    // ledger, or one already finished, is final: 200.
    Ok(if view.state == AssignmentState::Revoking {
        HttpResponse::Accepted().json(view)
    } else {
        HttpResponse::Ok().json(view)
    })
}

/// Revoke every live assignment matching the filters: all of an asset (in one account or
/// all), all of a subject's, all of an account's (V1).
///
/// Give at least one filter: an account, an asset (with or without pricing) or a subject. Answers
/// how many assignments were dropped before reaching Apple and how many are now being released.
/// `reason` is recorded on each assignment with who asked, when and the request id. Licenses
/// Apple holds of assets it does not let revoke (books) are never sent to Apple: naming such an
/// asset while Apple holds any of its matched licenses is refused whole (409 `not-revocable`,
/// nothing changed, pending ones included); without an asset filter (all of a subject's or an
/// account's) they are left as they are and counted in `not_revocable`. Pending licenses never
/// reached Apple and are dropped whatever the asset. Waiting assignments (A12) of the asset or
/// subject named are cancelled (`revoked`) and counted in `cancelled`.
#[utoipa::path(
    tag = "assignments",
    operation_id = "create_revocation",
    security(("bearer" = ["licenses:write"])),
    params(("space" = String, Path, description = "Space id")),
    request_body = RevocationBody,
    responses(
        (status = 202, description = "Revocations started", body = Revocation),
        (status = 404, description = "Unknown space or account"),
        (status = 409, description = "The `asset` filter matches licenses of a non-revocable asset (`not-revocable`); nothing changed"),
        (status = 422, description = "No filter, or an invalid one"),
    )
)]
#[post("/v1/spaces/{space}/revocations")]
pub async fn create_revocation(
    access: SpaceAccess<needs::LicensesWrite>,
    state: web::Data<AppState>,
    body: Json<RevocationBody>,
) -> Result<HttpResponse, ApiError> {
    let (caller, space) = access.into_parts();
    let body = body.0;
    validate_revocation(&body)?;
    let matching = Matching {
        account: body.account_id,
        asset: body.asset.map(|a| (a.adam_id, a.pricing_param)),
        subject: body.subject.map(|s| (s.kind, s.id)),
    };
    let mut conn = state.pool.get().await?;
    let Revoked {
        dropped,
        revoking,
        not_revocable: kept,
        cancelled,
    } = revocations::revoke_matching(&mut conn, &space, &matching, &caller.origin(), &body.reason)
        .await?;
    Ok(HttpResponse::Accepted().json(Revocation {
        dropped,
        revoking,
        not_revocable: kept,
        cancelled,
    }))
}
