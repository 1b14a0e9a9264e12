//! `/v1/spaces`: create, list, get, update and delete spaces.
//!
//! A space's id is a caller-chosen slug (`[a-z0-9-]`, 1–63 characters, no leading or trailing
//! dash), immutable once created, so JWT `spaces` grants can name a space before it exists.
//! Listing needs `licenses:read` and shows only granted spaces; creating, updating and deleting
//! need `admin` and a grant for that space id. Updates and deletes honour `If-Match`.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{Caller, Scope, SpaceAccess, SpaceGrant, needs};
use crate::domain::validation::{self, FieldError, valid_space_id};
use crate::http::AppState;
use crate::http::etag::{IfMatch, etag_header};
use crate::http::extract::Json;
use crate::http::pagination::{PageQuery, next_cursor};
use crate::http::problem::{ApiError, types};
use crate::ledger::spaces::{self as store, NewSpace, SpaceChanges, SpaceRow};
use crate::spaces::{self, SpaceError};

/// A space.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Space {
    /// Immutable slug, used in paths and in JWT `spaces` grants.
    #[schema(example = "acme-eu")]
    pub id: String,
    pub name: String,
    pub description: String,
    /// Increments on every change; also sent as the `ETag`.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<SpaceRow> for Space {
    fn from(r: SpaceRow) -> Self {
        Space {
            id: r.id,
            name: r.name,
            description: r.description,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// One page of spaces.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SpacePage {
    pub items: Vec<Space>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next_cursor: Option<String>,
}

/// Body of `POST /v1/spaces`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSpace {
    /// Slug: lowercase letters, digits and dashes, 1–63 characters, no leading/trailing dash.
    #[schema(example = "acme-eu")]
    pub id: String,
    /// Display name, 1–200 characters; no control characters (tab, line breaks, escapes).
    #[schema(example = "ACME Europe", min_length = 1, max_length = 200)]
    pub name: String,
    /// Free text, at most 2000 characters; no control characters but tab (one line).
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: String,
}

/// Body of `PATCH /v1/spaces/{space}`: the fields to change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSpace {
    /// Display name, 1–200 characters; no control characters (tab, line breaks, escapes).
    #[schema(min_length = 1, max_length = 200, nullable = false)]
    pub name: Option<String>,
    /// Free text, at most 2000 characters; no control characters but tab (one line).
    #[schema(max_length = 2000, nullable = false)]
    pub description: Option<String>,
}

/// 404 unless the space exists: listings of a space that does not exist are not empty pages.
pub async fn require_space(
    conn: &mut diesel_async::AsyncPgConnection,
    space: &str,
) -> Result<(), ApiError> {
    match store::find(conn, space).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!("space {space}"))),
    }
}

fn check_name(errors: &mut Vec<FieldError>, name: &str) {
    validation::check_name(errors, "name", name);
}

fn check_description(errors: &mut Vec<FieldError>, description: &str) {
    validation::check_description(errors, "description", description, 2000);
}

/// 422 unless every field of a new space is acceptable.
fn validate_create(body: &CreateSpace) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    if !valid_space_id(&body.id) {
        errors.push(FieldError {
            field: "id".into(),
            message: "lowercase letters, digits and dashes, 1-63 characters, \
                      no leading or trailing dash"
                .into(),
        });
    }
    check_name(&mut errors, &body.name);
    check_description(&mut errors, &body.description);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

/// 422 unless the change names something to change and every value is acceptable.
fn validate_update(body: &UpdateSpace) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    if body.name.is_none() && body.description.is_none() {
        errors.push(FieldError {
            field: "body".into(),
            message: "name or description is required".into(),
        });
    }
    if let Some(name) = &body.name {
        check_name(&mut errors, name);
    }
    if let Some(description) = &body.description {
        check_description(&mut errors, description);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

fn with_etag(mut builder: actix_web::HttpResponseBuilder, space: Space) -> HttpResponse {
    builder.insert_header(etag_header(space.version));
    builder.json(space)
}

/// List the spaces the caller may see.
///
/// Only the spaces the token's `spaces` claim grants, ordered by id. Paged like every list
/// (`limit`, `cursor`, `next_cursor`).
#[utoipa::path(
    tag = "spaces",
    operation_id = "list_spaces",
    security(("bearer" = ["licenses:read"])),
    params(PageQuery),
    responses((status = 200, description = "A page of spaces, ordered by id", body = SpacePage))
)]
#[get("/v1/spaces")]
pub async fn list_spaces(
    caller: Caller,
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<web::Json<SpacePage>, ApiError> {
    caller.require(Scope::LicensesRead)?;
    let limit = query.limit()?;
    let after: Option<String> = query.after("spaces")?;
    let only: Option<Vec<String>> = match &caller.spaces {
        SpaceGrant::All => None,
        SpaceGrant::Only(set) => Some(set.iter().cloned().collect()),
    };
    let mut conn = state.pool.get().await?;
    let rows = store::list(&mut conn, only.as_deref(), after.as_deref(), limit).await?;
    let next = next_cursor(
        "spaces",
        rows.len(),
        limit,
        rows.last().map(|r| r.id.clone()),
    );
    Ok(web::Json(SpacePage {
        items: rows.into_iter().map(Space::from).collect(),
        next_cursor: next,
    }))
}

/// Create a space.
///
/// The id is a slug you choose (lowercase letters, digits, dashes), so JWT grants can name a space
/// before it exists. Needs the `admin` scope.
#[utoipa::path(
    tag = "spaces",
    operation_id = "create_space",
    security(("bearer" = ["admin"])),
    request_body = CreateSpace,
    responses(
        (status = 201, description = "Created; `Location` and `ETag` headers are set", body = Space),
        (status = 409, description = "A space with this id exists"),
    )
)]
#[post("/v1/spaces")]
pub async fn create_space(
    caller: Caller,
    state: web::Data<AppState>,
    body: Json<CreateSpace>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let body = body.0;
    validate_create(&body)?;
    if !caller.may_see(&body.id) {
        return Err(ApiError::new(
            &types::FORBIDDEN,
            format!("your token does not grant space {}", body.id),
        ));
    }
    let mut conn = state.pool.get().await?;
    let new = NewSpace {
        id: &body.id,
        name: body.name.trim(),
        description: &body.description,
    };
    let row = spaces::create(&mut conn, &caller.origin(), new)
        .await
        .map_err(|e| match ApiError::from(e) {
            err if err.kind() == &types::ALREADY_EXISTS => ApiError::new(
                &types::ALREADY_EXISTS,
                format!("space {} already exists", body.id),
            ),
            err => err,
        })?;
    let location = format!("/v1/spaces/{}", row.id);
    let mut builder = HttpResponse::Created();
    builder.insert_header((header::LOCATION, location));
    Ok(with_etag(builder, row.into()))
}

/// Get one space.
///
/// `ETag` carries the space's version for `If-Match`.
#[utoipa::path(
    tag = "spaces",
    operation_id = "get_space",
    security(("bearer" = ["licenses:read"])),
    params(("space" = String, Path, description = "Space id")),
    responses((status = 200, description = "The space; `ETag` is set", body = Space))
)]
#[get("/v1/spaces/{space}")]
pub async fn get_space(
    access: SpaceAccess<needs::LicensesRead>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = access.path;
    let mut conn = state.pool.get().await?;
    let row = store::find(&mut conn, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("space {id}")))?;
    Ok(with_etag(HttpResponse::Ok(), row.into()))
}

/// Change a space's name or description.
///
/// Honours `If-Match` (412 when the space changed since).
#[utoipa::path(
    tag = "spaces",
    operation_id = "update_space",
    security(("bearer" = ["admin"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("If-Match" = Option<String>, Header, description = "ETag the change is based on; 412 if the space changed since"),
    ),
    request_body = UpdateSpace,
    responses(
        (status = 200, description = "Updated; the new `ETag` is set", body = Space),
        (status = 412, description = "If-Match does not match"),
    )
)]
#[patch("/v1/spaces/{space}")]
pub async fn update_space(
    access: SpaceAccess<needs::Admin>,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Json<UpdateSpace>,
) -> Result<HttpResponse, ApiError> {
    let (caller, id) = access.into_parts();
    let if_match = IfMatch::from_request(&req)?;
    let body = body.0;
    validate_update(&body)?;
    let mut conn = state.pool.get().await?;
    let changes = SpaceChanges {
        name: body.name.as_deref().map(str::trim),
        description: body.description.as_deref(),
    };
    let row = spaces::update(
        &mut conn,
        &caller.origin(),
        &id,
        if_match.versions(),
        changes,
    )
    .await?;
    Ok(with_etag(HttpResponse::Ok(), row.into()))
}

/// Delete an empty space.
///
/// A space that still has token accounts cannot be deleted (409); its policies and subjects go with
/// it.
#[utoipa::path(
    tag = "spaces",
    operation_id = "delete_space",
    security(("bearer" = ["admin"])),
    params(
        ("space" = String, Path, description = "Space id"),
        ("If-Match" = Option<String>, Header, description = "ETag the delete is based on"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 409, description = "The space still has token accounts (its policies and subjects go with it)"),
        (status = 412, description = "If-Match does not match"),
    )
)]
#[delete("/v1/spaces/{space}")]
pub async fn delete_space(
    access: SpaceAccess<needs::Admin>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (caller, id) = access.into_parts();
    let if_match = IfMatch::from_request(&req)?;
    let mut conn = state.pool.get().await?;
    spaces::delete(&mut conn, &caller.origin(), &id, if_match.versions()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The versions `If-Match` accepts (`None`: any).
/// The problem each space failure answers with.
impl From<SpaceError> for ApiError {
    fn from(err: SpaceError) -> Self {
        match err {
            SpaceError::NotFound(id) => ApiError::not_found(format!("space {id}")),
            SpaceError::Stale { current } => IfMatch::failed(current),
            SpaceError::HasAccounts { space, accounts } => ApiError::new(
                &types::IN_USE,
                format!(
                    "space {space} still has {accounts} token accounts; delete them first \
                     (`?revoke_all=true` revokes their licenses)"
                ),
            ),
            SpaceError::Db(e) => e.into(),
        }
    }
}
