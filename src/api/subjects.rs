//! `/v1/spaces/{space}/devices/{serial}` and `/users/{client_user_id}`: what the space knows of
//! one device or user and the licenses it holds and held (rule N4's reports per device and per
//! user; Ivanti's "License Usage" per user and the licence column of "Installed Apps" per device).
//!
//! Decisions:
//! - The stored facts are those the last allocation request, lifecycle event or `PUT` gave
//!   (`subject.user`, `groups`, `shared_ipad`, `last_seen`); `first_seen` is when the space first saw the subject (its row's creation),
//!   `updated_at` when an allocation last changed them. A subject the space never saw is 404
//!   (as is another space's: each space has its own subjects), not an empty view.
//! - `licenses.live`: every license-holding assignment (`pending`, `associating`, `active`),
//!   oldest first, uncapped — a subject holds at most one per asset.
//! - `licenses.past`: the others (`revoking`, `revoked`, `failed`), newest first, at most
//!   `past_limit` (default 100, 0–200); `licenses.past_total` counts them all. The assignment
//!   list pages through every one: `GET …/assignments?subject_kind=…&subject_id=…`.
//! - Each license carries its asset (with the product type while the asset row exists), its
//!   account (with the name while the account exists: history outlives accounts, H1), the rule
//!   that decided it, who asked and why, and for revoked ones the revocation record (who, why,
//!   when, which request), in the shapes of the assignment resource.
//! - A device with a user, not a Shared iPad, also shows that user's live user-based licenses
//!   (`user_licenses`): they cover the device (A7), which is what "is this app licensed on this
//!   device" needs. A user shows the serial numbers of the devices whose user it is (`devices`,
//!   at most 100 in serial order, `devices_total` counts them).
//! - The path id follows the allocation body's rule (1–256 characters, not blank): anything else
//!   is 400 `invalid-parameter` before the space is authorised.
//! - All of it is read in one read-only `REPEATABLE READ` snapshot
//!   ([`crate::ledger::subjects::report`]).
//! - `PUT` (issue 14, V2) sets the facts (groups, the device's user, Shared iPad, last seen;
//!   a field left out stays, `clear_user: true` removes the device's user) and creates the subject if the space never
//!   saw it. Changing them has the effect of the `groups_changed` lifecycle event of the
//!   subject's kind, under the space's setting for that type ([`crate::lifecycle`]): licenses
//!   no rule of allocation grants any more are revoked. `PUT` answers the subject as `GET`
//!   does (revocations appear in `licenses.past` with the reason `<kind> <id> updated (PUT)`);
//!   what was revoked is also in the `subject.updated` activity row. `last_seen` only moves
//!   forward.

use actix_web::{get, put, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::assignments::{FailureView, RevocationRecord};
use crate::auth::space::SpacePath;
use crate::auth::{SpaceAccess, needs};
use crate::domain::lifecycle as lifecycle_rules;
use crate::domain::model::{AssignmentState, LicenseType, Rule, SubjectKind};
use crate::domain::validation::{FieldError, check_id};
use crate::http::extract::Json;
use crate::http::problem::{ApiError, types};
use crate::ledger::subjects::{self as store, Facts, ReportLimits, SubjectLicense, SubjectReport};
use crate::lifecycle;
use crate::state::AppState;

/// Past licenses shown unless `past_limit` says otherwise.
pub const DEFAULT_PAST: u32 = 100;
/// Largest `past_limit`.
pub const MAX_PAST: u32 = 200;
/// Devices of a user shown at most.
pub const MAX_DEVICES: i64 = 100;

/// A device as the space knows it, with its licenses.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Device {
    /// The serial number.
    pub serial: String,
    pub space: String,
    /// The client user id of the device's user, as the last allocation request gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub user: Option<String>,
    /// A Shared iPad always gets device-based licenses (A7).
    pub shared_ipad: bool,
    /// Group memberships, as the last allocation request gave them.
    pub groups: Vec<String>,
    /// When the space first saw the device (its first allocation request).
    pub first_seen: DateTime<Utc>,
    /// When an allocation request, a lifecycle event or `PUT` last changed the facts above.
    pub updated_at: DateTime<Utc>,
    /// When the MDM last saw the device (`device.seen` events, `PUT`), if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub last_seen: Option<DateTime<Utc>>,
    /// The device's own licenses.
    pub licenses: SubjectLicenses,
    /// Live user-based licenses of the device's user, which cover the device (A7); empty for a
    /// Shared iPad or a device without a user.
    pub user_licenses: Vec<HeldLicense>,
}

/// A user (client user id) as the space knows it, with its licenses.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct User {
    /// The client user id.
    pub id: String,
    pub space: String,
    /// Group memberships, as the last allocation request gave them.
    pub groups: Vec<String>,
    /// Serial numbers of the devices whose user this is (at most 100, in serial order).
    pub devices: Vec<String>,
    /// How many devices name this user.
    pub devices_total: i64,
    /// When the space first saw the user (a request naming it as subject).
    pub first_seen: DateTime<Utc>,
    /// When an allocation request, a lifecycle event or `PUT` last changed the facts above.
    pub updated_at: DateTime<Utc>,
    /// When the MDM last saw the user (`PUT`), if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub last_seen: Option<DateTime<Utc>>,
    /// The user's licenses.
    pub licenses: SubjectLicenses,
}

/// A subject's licenses: all live ones and the newest past ones.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SubjectLicenses {
    /// Every license held (`pending`, `associating`, `active`), oldest first.
    pub live: Vec<HeldLicense>,
    /// Licenses no longer held (`revoking`, `revoked`, `failed`), newest first, at most
    /// `past_limit`. `GET …/assignments?subject_kind=&subject_id=` pages through all of them.
    pub past: Vec<HeldLicense>,
    /// How many past licenses there are in all.
    pub past_total: i64,
}

/// One license a subject holds or held.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct HeldLicense {
    /// The assignment (`GET …/assignments/{assignment_id}`).
    pub assignment_id: Uuid,
    pub asset: LicenseAsset,
    pub account: LicenseAccount,
    pub license_type: LicenseType,
    pub state: AssignmentState,
    /// The rule that decided the allocation.
    pub rule: Rule,
    /// Who asked for the license (JWT subject, or `system`).
    pub requested_by: String,
    /// Why, as given with the allocation.
    pub reason: String,
    /// Since when: the allocation.
    pub created_at: DateTime<Utc>,
    /// The last change of state.
    pub updated_at: DateTime<Utc>,
    /// Who asked for the revocation, why, when and in which request; absent until one was
    /// asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub revocation: Option<RevocationRecord>,
    /// Apple's error and what the service did about it (failed licenses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<FailureView>,
}

/// The asset of a license.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct LicenseAsset {
    #[schema(example = "408709785")]
    pub adam_id: String,
    #[schema(example = "STDQ")]
    pub pricing_param: String,
    /// `App`, `Book` or `Other`, as Apple reported it; absent once the account that owned the
    /// asset is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "App", nullable = false)]
    pub product_type: Option<String>,
}

/// The account a license came from.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct LicenseAccount {
    pub id: Uuid,
    /// The account's name; absent once the account is deleted (the license's history stays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SubjectQuery {
    /// How many past licenses to show, newest first: 0 to 200 (default 100).
    #[param(minimum = 0, maximum = 200)]
    pub past_limit: Option<u32>,
}

impl SubjectQuery {
    fn limits(&self) -> Result<ReportLimits, ApiError> {
        let past = match self.past_limit {
            None => DEFAULT_PAST,
            Some(n) if n <= MAX_PAST => n,
            Some(n) => {
                return Err(ApiError::new(
                    &types::INVALID_PARAMETER,
                    format!("past_limit must be between 0 and {MAX_PAST}, not {n}"),
                ));
            }
        };
        Ok(ReportLimits {
            past: i64::from(past),
            devices: MAX_DEVICES,
        })
    }
}

/// `/v1/spaces/{space}/devices/{serial}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DevicePath {
    /// Space id
    pub space: String,
    /// Serial number (1-256 characters).
    #[param(min_length = 1, max_length = 256)]
    pub serial: String,
}

impl SpacePath for DevicePath {
    fn space(&self) -> &str {
        &self.space
    }

    fn check(&self) -> Result<(), ApiError> {
        check_path_id("serial", &self.serial)
    }
}

/// `/v1/spaces/{space}/users/{client_user_id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UserPath {
    /// Space id
    pub space: String,
    /// Client user id (1-256 characters).
    #[param(min_length = 1, max_length = 256)]
    pub client_user_id: String,
}

impl SpacePath for UserPath {
    fn space(&self) -> &str {
        &self.space
    }

    fn check(&self) -> Result<(), ApiError> {
        check_path_id("client_user_id", &self.client_user_id)
    }
}

/// 400 unless `id` is a subject id an allocation would take.
fn check_path_id(field: &str, id: &str) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    check_id(&mut errors, field, id);
    match errors.pop() {
        None => Ok(()),
        Some(e) => Err(ApiError::new(
            &types::INVALID_PARAMETER,
            format!("{field} {}", e.message),
        )),
    }
}

/// Get a device: its stored facts and its licenses, live and past.
///
/// The facts are those the last allocation request gave (user, groups, Shared iPad). `licenses`
/// holds every live license and the newest `past_limit` (default 100) past ones with
/// `past_total`; each names its asset, account, license type, state, the rule that decided it,
/// who asked and why, and for revoked ones who revoked, why and when. `user_licenses`: the
/// device's user's live user-based licenses, which cover the device (A7).
#[utoipa::path(
    tag = "subjects",
    operation_id = "get_device",
    security(("bearer" = ["licenses:read"])),
    params(DevicePath, SubjectQuery),
    responses(
        (status = 200, description = "The device and its licenses", body = Device),
        (status = 400, description = "Malformed serial number or `past_limit`"),
        (status = 404, description = "The space never saw this device"),
    )
)]
#[get("/v1/spaces/{space}/devices/{serial}")]
pub async fn get_device(
    access: SpaceAccess<needs::LicensesRead, DevicePath>,
    state: web::Data<AppState>,
    query: web::Query<SubjectQuery>,
) -> Result<web::Json<Device>, ApiError> {
    let DevicePath { space, serial } = access.path;
    let report = read(&state, &space, SubjectKind::Device, &serial, &query).await?;
    Ok(web::Json(device_view(&report)))
}

fn device_view(report: &SubjectReport) -> Device {
    let facts = &report.subject.row;
    Device {
        serial: facts.external_id.clone(),
        space: facts.space_id.clone(),
        user: facts.user_external_id.clone(),
        shared_ipad: facts.shared_ipad,
        groups: facts.group_names(),
        first_seen: report.subject.created_at,
        updated_at: report.subject.updated_at,
        last_seen: report.subject.last_seen_at,
        user_licenses: report.user_licenses.iter().map(held).collect(),
        licenses: licenses(report),
    }
}

/// Get a user: its stored facts, its devices and its licenses, live and past.
///
/// `groups` are those the last allocation request gave; `devices` the serial numbers of the
/// devices whose user this is. `licenses` holds every live license and the newest `past_limit`
/// (default 100) past ones with `past_total`; each names its asset, account, license type,
/// state, the rule that decided it, who asked and why, and for revoked ones who revoked, why and
/// when.
#[utoipa::path(
    tag = "subjects",
    operation_id = "get_user",
    security(("bearer" = ["licenses:read"])),
    params(UserPath, SubjectQuery),
    responses(
        (status = 200, description = "The user and its licenses", body = User),
        (status = 400, description = "Malformed client user id or `past_limit`"),
        (status = 404, description = "The space never saw this user"),
    )
)]
#[get("/v1/spaces/{space}/users/{client_user_id}")]
pub async fn get_user(
    access: SpaceAccess<needs::LicensesRead, UserPath>,
    state: web::Data<AppState>,
    query: web::Query<SubjectQuery>,
) -> Result<web::Json<User>, ApiError> {
    let UserPath {
        space,
        client_user_id,
    } = access.path;
    let report = read(&state, &space, SubjectKind::User, &client_user_id, &query).await?;
    Ok(web::Json(user_view(&report)))
}

fn user_view(report: &SubjectReport) -> User {
    let facts = &report.subject.row;
    User {
        id: facts.external_id.clone(),
        space: facts.space_id.clone(),
        groups: facts.group_names(),
        devices: report.devices.clone(),
        devices_total: report.devices_total,
        first_seen: report.subject.created_at,
        updated_at: report.subject.updated_at,
        last_seen: report.subject.last_seen_at,
        licenses: licenses(report),
    }
}

/// New facts of a device; a field left out stays as it is.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceUpdate {
    /// The full current set of groups ([] for none).
    #[schema(nullable = false)]
    pub groups: Option<Vec<String>>,
    /// The device's user (client user id).
    #[schema(nullable = false)]
    pub user: Option<String>,
    /// True: the device has no user any more (not with `user`).
    #[serde(default)]
    pub clear_user: bool,
    /// Whether it is a Shared iPad (always device-based licenses, A7).
    #[schema(nullable = false)]
    pub shared_ipad: Option<bool>,
    /// When the MDM last saw it (moves forward only; not before 2000-01-01, at most 5 minutes
    /// in the future).
    #[schema(nullable = false)]
    pub last_seen: Option<DateTime<Utc>>,
}

/// New facts of a user; a field left out stays as it is.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    /// The full current set of groups ([] for none).
    #[schema(nullable = false)]
    pub groups: Option<Vec<String>>,
    /// When the MDM last saw the user (moves forward only; not before 2000-01-01, at most 5
    /// minutes in the future).
    #[schema(nullable = false)]
    pub last_seen: Option<DateTime<Utc>>,
}

fn check_facts(
    groups: Option<&Vec<String>>,
    user: Option<&Option<String>>,
    last_seen: Option<DateTime<Utc>>,
) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    if let Some(groups) = groups {
        if groups.len() > lifecycle_rules::MAX_GROUPS {
            errors.push(FieldError {
                field: "groups".into(),
                message: format!("at most {} groups", lifecycle_rules::MAX_GROUPS),
            });
        }
        for (i, g) in groups.iter().enumerate() {
            check_id(&mut errors, &format!("groups[{i}]"), g);
        }
    }
    if let Some(Some(user)) = user {
        check_id(&mut errors, "user", user);
    }
    if let Some(seen) = last_seen
        && let Some(why) = lifecycle_rules::check_time(seen, Utc::now())
    {
        errors.push(FieldError {
            field: "last_seen".into(),
            message: why,
        });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

/// The groups without repeats, in the order given.
fn distinct(groups: Option<Vec<String>>) -> Option<Vec<String>> {
    groups.map(|gs| {
        let mut out: Vec<String> = Vec::new();
        for g in gs {
            if !out.contains(&g) {
                out.push(g);
            }
        }
        out
    })
}

/// Set a device's facts: groups, user, Shared iPad, last seen (V2).
///
/// Creates the device if the space never saw it. Changing the groups or the user has the effect
/// of a `device.groups_changed` event: the device's licenses (and its user's user-based ones,
/// which its groups help grant) are re-decided with allocation's rules, and those no rule grants
/// any more (first-come-first-served groups left, off a fallback account's distribution list,
/// now disallowed) are revoked, unless still granted another way; the space's
/// `lifecycle-settings` for `device.groups_changed` decide whether now, after the grace period,
/// or not at all. Lifecycle events about the same facts that occurred before this request are
/// stale afterwards. Answers the device as `GET` does; revoked licenses are in
/// `licenses.past` with the reason.
#[utoipa::path(
    tag = "subjects",
    operation_id = "put_device",
    security(("bearer" = ["licenses:write"])),
    params(DevicePath),
    request_body = DeviceUpdate,
    responses(
        (status = 200, description = "The device now", body = Device),
        (status = 400, description = "Malformed serial number"),
        (status = 404, description = "Unknown space"),
        (status = 422, description = "A malformed group, user or time"),
    )
)]
#[put("/v1/spaces/{space}/devices/{serial}")]
pub async fn put_device(
    access: SpaceAccess<needs::LicensesWrite, DevicePath>,
    state: web::Data<AppState>,
    body: Json<DeviceUpdate>,
) -> Result<web::Json<Device>, ApiError> {
    let (caller, DevicePath { space, serial }) = access.into_parts();
    let body = body.0;
    if body.clear_user && body.user.is_some() {
        return Err(ApiError::field(
            "clear_user",
            "give either user or clear_user, not both",
        ));
    }
    let user = if body.clear_user {
        Some(None)
    } else {
        body.user.map(Some)
    };
    check_facts(body.groups.as_ref(), user.as_ref(), body.last_seen)?;
    let facts = Facts {
        groups: distinct(body.groups),
        user,
        shared_ipad: body.shared_ipad,
        last_seen: body.last_seen,
    };
    let mut conn = state.pool.get().await?;
    lifecycle::update_subject(
        &mut conn,
        &space,
        SubjectKind::Device,
        &serial,
        facts,
        &caller.origin(),
    )
    .await?;
    let report = read(
        &state,
        &space,
        SubjectKind::Device,
        &serial,
        &default_query(),
    )
    .await?;
    Ok(web::Json(device_view(&report)))
}

/// Set a user's facts: groups, last seen (V2).
///
/// Creates the user if the space never saw it. Changing the groups has the effect of a
/// `user.groups_changed` event: the user's licenses are re-decided with allocation's rules and
/// those no rule grants any more are revoked (per the space's `lifecycle-settings` for
/// `user.groups_changed`). Answers the user as `GET` does; revoked licenses are in
/// `licenses.past` with the reason.
#[utoipa::path(
    tag = "subjects",
    operation_id = "put_user",
    security(("bearer" = ["licenses:write"])),
    params(UserPath),
    request_body = UserUpdate,
    responses(
        (status = 200, description = "The user now", body = User),
        (status = 400, description = "Malformed client user id"),
        (status = 404, description = "Unknown space"),
        (status = 422, description = "A malformed group or time"),
    )
)]
#[put("/v1/spaces/{space}/users/{client_user_id}")]
pub async fn put_user(
    access: SpaceAccess<needs::LicensesWrite, UserPath>,
    state: web::Data<AppState>,
    body: Json<UserUpdate>,
) -> Result<web::Json<User>, ApiError> {
    let (
        caller,
        UserPath {
            space,
            client_user_id,
        },
    ) = access.into_parts();
    let body = body.0;
    check_facts(body.groups.as_ref(), None, body.last_seen)?;
    let facts = Facts {
        groups: distinct(body.groups),
        user: None,
        shared_ipad: None,
        last_seen: body.last_seen,
    };
    let mut conn = state.pool.get().await?;
    lifecycle::update_subject(
        &mut conn,
        &space,
        SubjectKind::User,
        &client_user_id,
        facts,
        &caller.origin(),
    )
    .await?;
    let report = read(
        &state,
        &space,
        SubjectKind::User,
        &client_user_id,
        &default_query(),
    )
    .await?;
    Ok(web::Json(user_view(&report)))
}

fn default_query() -> SubjectQuery {
    SubjectQuery { past_limit: None }
}

/// The subject's report, or 404.
async fn read(
    state: &AppState,
    space: &str,
    kind: SubjectKind,
    id: &str,
    query: &SubjectQuery,
) -> Result<SubjectReport, ApiError> {
    let limits = query.limits()?;
    let mut conn = state.pool.get().await?;
    store::report(&mut conn, space, kind, id, limits)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("{kind} {id:?}")))
}

fn licenses(report: &SubjectReport) -> SubjectLicenses {
    SubjectLicenses {
        live: report.live.iter().map(held).collect(),
        past: report.past.iter().map(held).collect(),
        past_total: report.past_total,
    }
}

fn held(l: &SubjectLicense) -> HeldLicense {
    let a = &l.assignment;
    HeldLicense {
        assignment_id: a.id,
        asset: LicenseAsset {
            adam_id: a.adam_id.clone(),
            pricing_param: a.pricing_param.clone(),
            product_type: l.product_type.clone(),
        },
        account: LicenseAccount {
            id: a.account_id,
            name: l.account_name.clone(),
        },
        license_type: a.license_type,
        state: a.state,
        rule: a.rule,
        requested_by: a.requested_by.clone(),
        reason: a.reason.clone(),
        created_at: a.created_at,
        updated_at: a.updated_at,
        revocation: match (&a.revoked_by, a.revocation_requested_at) {
            (Some(by), Some(requested_at)) => Some(RevocationRecord {
                by: by.clone(),
                reason: a.revocation_reason.clone().unwrap_or_default(),
                requested_at,
                request_id: a.revocation_request_id.clone(),
            }),
            _ => None,
        },
        error: a
            .error
            .clone()
            .map(|e| serde_json::from_value(e).unwrap_or_default()),
    }
}
