//! `/v1/spaces/{space}/policies/{adam_id}/{pricing_param}`: distribution policies per asset (rules
//! A2, A3 in docs/rules.md). Reading needs `licenses:read`; changing needs `accounts:manage`.
//!
//! A policy is replaced whole (`PUT`): reserved subjects (devices or users, optionally with the
//! account to reserve from), first-come-first-served groups, disallowed subjects or groups, and
//! `wait_for_license` (A12: allocations that do not say wait for a license by default).
//! A subject or group may appear in one mode only; a reservation's account must belong to the
//! space.

use std::collections::HashSet;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, delete, get, put, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::api::spaces::require_space;
use crate::auth::space::SpacePath;
use crate::auth::{SpaceAccess, needs};
use crate::domain::model::SubjectKind;
use crate::domain::records::EntryRow;
use crate::domain::validation::{FieldError, valid_adam_id, valid_pricing};
use crate::http::etag::{IfMatch, etag_header};
use crate::http::extract::Json;
use crate::http::pagination::{PageQuery, next_cursor};
use crate::http::problem::{ApiError, types};
use crate::ledger::policies::{self as store, PolicyRow};
use crate::policies::{self, AssetKey, PolicyError};
use crate::state::AppState;

/// A reserved subject.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    pub kind: SubjectKind,
    /// Serial number or client user id, 1–256 characters.
    #[schema(min_length = 1, max_length = 256)]
    pub id: String,
    /// Reserve from this account (default: the highest-priority account owning the asset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub account_id: Option<Uuid>,
}

crate::text_enum! {
    /// What a disallow entry names.
    pub enum TargetKind {
        Device = "device",
        User = "user",
        Group = "group",
    }
}

/// A disallowed device, user or group.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Disallowed {
    pub kind: TargetKind,
    /// Serial number, client user id or group name, 1–256 characters.
    #[schema(min_length = 1, max_length = 256)]
    pub id: String,
}

/// Body of `PUT …/policies/{adam_id}/{pricing_param}`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "reserved": [{"kind": "user", "id": "ceo"}, {"kind": "device", "id": "C02XK0AAJGH5"}],
    "fcfs_groups": ["sales", "field-engineers"],
    "disallowed": [{"kind": "group", "id": "contractors"}]
}))]
pub struct PolicyBody {
    /// Served first, from their account if given; licenses are held back for them (A2).
    #[serde(default)]
    pub reserved: Vec<Reservation>,
    /// When non-empty, only members of these groups (and reserved subjects) may take
    /// first-come-first-served licenses.
    #[serde(default)]
    pub fcfs_groups: Vec<String>,
    /// Never get a license for this asset (A3).
    #[serde(default)]
    pub disallowed: Vec<Disallowed>,
    /// A12: an allocation of this asset that does not say `wait_for_license` waits in line
    /// when no license is left (202, `waiting`) instead of the 409; one that says
    /// `wait_for_license: false` is refused as before. Default `false`.
    #[serde(default)]
    pub wait_for_license: bool,
}

/// A distribution policy.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Policy {
    pub id: Uuid,
    pub space: String,
    pub adam_id: String,
    pub pricing_param: String,
    pub reserved: Vec<Reservation>,
    pub fcfs_groups: Vec<String>,
    pub disallowed: Vec<Disallowed>,
    /// A12: allocations that do not say `wait_for_license` wait for a license when none is left.
    pub wait_for_license: bool,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One page of the policies of a space.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PolicyList {
    pub items: Vec<Policy>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next_cursor: Option<String>,
}

fn view(p: PolicyRow, entries: &[EntryRow]) -> Policy {
    let mine = entries.iter().filter(|e| e.policy_id == p.id);
    let mut policy = Policy {
        id: p.id,
        space: p.space_id,
        adam_id: p.adam_id,
        pricing_param: p.pricing_param,
        reserved: Vec::new(),
        fcfs_groups: Vec::new(),
        disallowed: Vec::new(),
        wait_for_license: p.wait_for_license,
        version: p.version,
        created_at: p.created_at,
        updated_at: p.updated_at,
    };
    for e in mine {
        match e.mode.as_str() {
            "reserved" => {
                if let Ok(kind) = e.target_kind.parse() {
                    policy.reserved.push(Reservation {
                        kind,
                        id: e.target.clone(),
                        account_id: e.account_id,
                    })
                }
            }
            "fcfs" => policy.fcfs_groups.push(e.target.clone()),
            _ => {
                if let Ok(kind) = e.target_kind.parse() {
                    policy.disallowed.push(Disallowed {
                        kind,
                        id: e.target.clone(),
                    })
                }
            }
        }
    }
    policy
}

/// The path of one asset's policy: `/v1/spaces/{space}/policies/{adam_id}/{pricing_param}`.
#[derive(Debug, Deserialize)]
pub struct PolicyPath {
    pub space: String,
    pub adam_id: String,
    pub pricing_param: String,
}

/// The asset's segments are checked (400) before the space is authorised.
impl PolicyPath {
    /// The asset whose policy the path names.
    pub fn asset(&self) -> AssetKey<'_> {
        AssetKey {
            space: &self.space,
            adam_id: &self.adam_id,
            pricing_param: &self.pricing_param,
        }
    }
}

impl SpacePath for PolicyPath {
    fn space(&self) -> &str {
        &self.space
    }

    fn check(&self) -> Result<(), ApiError> {
        check_path(&self.adam_id, &self.pricing_param)
    }
}

fn check_path(adam_id: &str, pricing: &str) -> Result<(), ApiError> {
    if !valid_adam_id(adam_id) {
        return Err(ApiError::new(
            &types::INVALID_PARAMETER,
            "adam_id must be Apple's numeric product id",
        ));
    }
    if !valid_pricing(pricing) {
        return Err(ApiError::new(
            &types::INVALID_PARAMETER,
            "pricing_param must be STDQ or PLUS",
        ));
    }
    Ok(())
}

/// Validates a body and turns it into entries. `accounts` are the space's account ids, `owners`
/// those of them that own the asset (a reservation can only hold back what its account owns).
fn entries(
    body: &PolicyBody,
    accounts: &[Uuid],
    owners: &[Uuid],
) -> Result<Vec<EntryRow>, ApiError> {
    let mut errors = Vec::new();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut out = Vec::new();
    let mut add = |errors: &mut Vec<FieldError>,
                   field: String,
                   kind: &str,
                   id: &str,
                   mode: &str,
                   account: Option<Uuid>| {
        if id.trim().is_empty() || id.chars().count() > 256 {
            errors.push(FieldError {
                field: field.clone(),
                message: "must be 1 to 256 characters".into(),
            });
            return;
        }
        if !seen.insert((kind.to_owned(), id.to_owned())) {
            errors.push(FieldError {
                field,
                message: format!(
                    "{kind} {id:?} appears more than once; a subject or group takes one mode only"
                ),
            });
            return;
        }
        out.push(EntryRow {
            policy_id: Uuid::nil(),
            target_kind: kind.to_owned(),
            target: id.to_owned(),
            mode: mode.to_owned(),
            account_id: account,
        });
    };
    for (i, r) in body.reserved.iter().enumerate() {
        if let Some(a) = r.account_id
            && !accounts.contains(&a)
        {
            errors.push(FieldError {
                field: format!("reserved[{i}].account_id"),
                message: format!("account {a} is not an account of this space"),
            });
        } else if let Some(a) = r.account_id
            && !owners.contains(&a)
        {
            errors.push(FieldError {
                field: format!("reserved[{i}].account_id"),
                message: format!("account {a} does not own this asset"),
            });
        }
        add(
            &mut errors,
            format!("reserved[{i}].id"),
            r.kind.as_str(),
            &r.id,
            "reserved",
            r.account_id,
        );
    }
    for (i, g) in body.fcfs_groups.iter().enumerate() {
        add(
            &mut errors,
            format!("fcfs_groups[{i}]"),
            "group",
            g,
            "fcfs",
            None,
        );
    }
    for (i, d) in body.disallowed.iter().enumerate() {
        add(
            &mut errors,
            format!("disallowed[{i}].id"),
            d.kind.as_str(),
            &d.id,
            "disallowed",
            None,
        );
    }
    if out.len() > 10_000 {
        errors.push(FieldError {
            field: "body".into(),
            message: "at most 10000 entries".into(),
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ApiError::validation(errors))
    }
}

/// List the space's distribution policies.
///
/// One policy per asset, with its reserved subjects, first-come-first-served groups and disallowed
/// subjects. Paged like every list (`limit`, `cursor`, `next_cursor`).
#[utoipa::path(
    tag = "policies",
    operation_id = "list_policies",
    security(("bearer" = ["licenses:read"])),
    params(("space" = String, Path, description = "Space id"), PageQuery),
    responses((status = 200, description = "A page of policies, by asset (adam id, then pricing)", body = PolicyList))
)]
#[get("/v1/spaces/{space}/policies")]
pub async fn list_policies(
    access: SpaceAccess<needs::LicensesRead>,
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<web::Json<PolicyList>, ApiError> {
    let space = access.path;
    let limit = query.limit()?;
    let after: Option<(String, String)> = query.after(&format!("policies:{space}"))?;
    let mut conn = state.pool.get().await?;
    require_space(&mut conn, &space).await?;
    let rows = store::page(&mut conn, &space, after, limit).await?;
    let next = next_cursor(
        &format!("policies:{space}"),
        rows.len(),
        limit,
        rows.last()
            .map(|p| (p.adam_id.clone(), p.pricing_param.clone())),
    );
    let ids: Vec<Uuid> = rows.iter().map(|p| p.id).collect();
    let entries = store::entries_of(&mut conn, &ids).await?;
    Ok(web::Json(PolicyList {
        items: rows.into_iter().map(|p| view(p, &entries)).collect(),
        next_cursor: next,
    }))
}

/// Get the policy of one asset.
///
/// `ETag` carries the policy's version for `If-Match`.
#[utoipa::path(
    tag = "policies",
    operation_id = "get_policy",
    security(("bearer" = ["licenses:read"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("adam_id" = String, Path, description = "Apple product id"),
        ("pricing_param" = String, Path, description = "STDQ or PLUS"),
    ),
    responses((status = 200, description = "The policy; `ETag` is set", body = Policy))
)]
#[get("/v1/spaces/{space}/policies/{adam_id}/{pricing_param}")]
pub async fn get_policy(
    access: SpaceAccess<needs::LicensesRead, PolicyPath>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let PolicyPath {
        space,
        adam_id,
        pricing_param: pricing,
    } = access.path;
    let mut conn = state.pool.get().await?;
    let row = store::find(&mut conn, &space, &adam_id, &pricing)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("policy for {adam_id}/{pricing}")))?;
    let entries = store::entries_of(&mut conn, &[row.id]).await?;
    let policy = view(row, &entries);
    Ok(HttpResponse::Ok()
        .insert_header(etag_header(policy.version))
        .json(policy))
}

/// Create or replace the policy of one asset.
///
/// Replaces the whole policy. A subject or group may appear in one mode only; a reservation's
/// account must belong to the space and own the asset. Honours `If-Match` (412 when the policy
/// changed since). Answers 201 with `Location` when the asset had no policy, 200 when one was
/// replaced.
#[utoipa::path(
    tag = "policies",
    operation_id = "put_policy",
    security(("bearer" = ["accounts:manage"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("adam_id" = String, Path, description = "Apple product id"),
        ("pricing_param" = String, Path, description = "STDQ or PLUS"),
        ("If-Match" = Option<String>, Header, description = "ETag the change is based on"),
    ),
    request_body = PolicyBody,
    responses(
        (status = 201, description = "The asset had no policy: created; `Location` and `ETag` are set", body = Policy),
        (status = 200, description = "The asset's policy was replaced; `ETag` is set", body = Policy),
        (status = 412, description = "If-Match does not match"),
    )
)]
#[put("/v1/spaces/{space}/policies/{adam_id}/{pricing_param}")]
pub async fn put_policy(
    access: SpaceAccess<needs::AccountsManage, PolicyPath>,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Json<PolicyBody>,
) -> Result<HttpResponse, ApiError> {
    let (caller, path) = access.into_parts();
    let asset = path.asset();
    let if_match = IfMatch::from_request(&req)?;
    let mut conn = state.pool.get().await?;
    require_space(&mut conn, asset.space).await?;
    let (accounts, owners) = policies::reservable_accounts(&mut conn, asset).await?;
    let new_entries = entries(&body.0, &accounts, &owners)?;
    let replaced = policies::replace(
        &mut conn,
        &caller.origin(),
        asset,
        if_match.versions(),
        &new_entries,
        body.0.wait_for_license,
    )
    .await?;
    let policy = view(replaced.policy, &replaced.entries);
    let mut builder = if replaced.created {
        let mut b = HttpResponse::Created();
        b.insert_header((
            header::LOCATION,
            format!(
                "/v1/spaces/{}/policies/{}/{}",
                path.space, path.adam_id, path.pricing_param
            ),
        ));
        b
    } else {
        HttpResponse::Ok()
    };
    Ok(builder
        .insert_header(etag_header(policy.version))
        .json(policy))
}

/// Delete the policy of one asset (the asset becomes open to everyone in the space).
///
/// Honours `If-Match`. Existing licenses are not revoked.
#[utoipa::path(
    tag = "policies",
    operation_id = "delete_policy",
    security(("bearer" = ["accounts:manage"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("adam_id" = String, Path, description = "Apple product id"),
        ("pricing_param" = String, Path, description = "STDQ or PLUS"),
        ("If-Match" = Option<String>, Header, description = "ETag the deletion is based on"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 412, description = "If-Match does not match"),
    )
)]
#[delete("/v1/spaces/{space}/policies/{adam_id}/{pricing_param}")]
pub async fn delete_policy(
    access: SpaceAccess<needs::AccountsManage, PolicyPath>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let if_match = IfMatch::from_request(&req)?;
    let mut conn = state.pool.get().await?;
    let origin = access.caller.origin();
    policies::delete(&mut conn, &origin, access.path.asset(), if_match.versions()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The versions `If-Match` accepts (`None`: any).
/// The problem each policy failure answers with.
impl From<PolicyError> for ApiError {
    fn from(err: PolicyError) -> Self {
        match err {
            PolicyError::NotFound(what) => ApiError::not_found(what),
            PolicyError::Stale { current } => IfMatch::failed(current),
            PolicyError::Db(e) => e.into(),
        }
    }
}
