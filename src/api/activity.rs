//! `GET /v1/spaces/{space}/activity`: the activity log — every decision and state change the
//! service recorded (allocations with their rule and skipped accounts, revocations with their
//! reason, Apple's results, account status changes, policy and account edits), newest first.
//!
//! - Filters (all optional, all must match): `account_id`, `adam_id`, `pricing_param`,
//!   `subject_kind` + `subject_id` (together), `action` (one of [`ActivityAction`], the closed
//!   vocabulary documented in `ledger::activity`; an unknown one is a 400, so a generated client
//!   knows the values), `actor` (a JWT `sub`, or `system`), `request_id`, `since` (inclusive)
//!   and `until` (exclusive), RFC 3339 instants.
//! - Keyset pagination on the row id (cursor list `activity:{space}`, key the last id): a
//!   page deep in the log costs what the first does. Which filters have an index, and the
//!   trade-off for the others, is in `ledger::activity`.
//! - Exports (`Accept: text/csv` or `application/x-ndjson`, [`crate::http::export`]): the whole
//!   filtered log, newest first, streamed; CSV columns are the item's fields, `details` as JSON.
//! - A subject is found by its stored label, so a subject the space never saw lists nothing
//!   (no 404, as in the assignments list); a license's rows (allocation, revocation, Apple's
//!   answers) all carry its subject.

use actix_web::{HttpRequest, HttpResponse, get, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::assignments::AssignmentSubject;
use crate::api::spaces::require_space;
use crate::auth::{SpaceAccess, needs};
use crate::domain::model::SubjectKind;
use crate::domain::validation::{valid_adam_id, valid_pricing};
use crate::http::export::{self, Chunk, ExportRow};
use crate::http::pagination::{PageQuery, next_cursor};
use crate::http::problem::{ApiError, types};
use crate::ledger::activity::{self as store, ActivityAction, ActivityRow, ListFilter};
use crate::state::AppState;

/// One entry of the activity log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ActivityItem {
    /// Increasing with time; the order of the log.
    pub id: i64,
    pub occurred_at: DateTime<Utc>,
    /// The caller's JWT `sub`, or `system` for background work and Apple's results.
    pub actor: String,
    #[schema(value_type = ActivityAction)]
    pub action: String,
    #[schema(required = true)]
    pub account_id: Option<Uuid>,
    #[schema(required = true)]
    pub assignment_id: Option<Uuid>,
    /// The license holder the row is about (rows about an assignment).
    #[schema(required = true)]
    pub subject: Option<AssignmentSubject>,
    #[schema(required = true)]
    pub adam_id: Option<String>,
    #[schema(required = true)]
    pub pricing_param: Option<String>,
    /// The allocation rule that decided (`assignment.allocated`).
    #[schema(value_type = Option<crate::domain::model::Rule>, required = true)]
    pub rule: Option<String>,
    /// Apple's event whose result the row records.
    #[schema(required = true)]
    pub apple_event_id: Option<String>,
    /// The `x-request-id` of the request that caused it; null for background work.
    #[schema(required = true)]
    pub request_id: Option<String>,
    /// What else the action recorded (e.g. `skipped` for allocations, `reason` for
    /// revocations, `from`/`to` for status changes, Apple's `error`).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// One page of the activity log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ActivityPage {
    pub items: Vec<ActivityItem>,
    /// Pass as `cursor` to get the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ActivityQuery {
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only rows about this account.
    pub account_id: Option<Uuid>,
    /// Only rows about this asset (Apple product id, digits).
    pub adam_id: Option<String>,
    /// Only rows about this pricing: `STDQ` or `PLUS`.
    pub pricing_param: Option<String>,
    /// With `subject_id`: `device` or `user`.
    pub subject_kind: Option<SubjectKind>,
    /// Only rows about this subject (a serial number or client user id; with `subject_kind`).
    pub subject_id: Option<String>,
    /// Only this action.
    pub action: Option<ActivityAction>,
    /// Only this actor (a JWT `sub`, or `system`).
    pub actor: Option<String>,
    /// Only rows of the request with this `x-request-id`.
    pub request_id: Option<String>,
    /// Only rows at or after this instant (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only rows before this instant (RFC 3339).
    pub until: Option<DateTime<Utc>>,
}

/// List the activity log, newest first, or export it all (CSV, NDJSON).
///
/// Every decision and state change: allocations (with the rule and the accounts skipped),
/// revocations (with the reason), Apple's results, account status changes, policy and account
/// edits. Filters combine; `since` is inclusive, `until` exclusive. With `Accept: text/csv` or
/// `Accept: application/x-ndjson` the answer is the whole filtered log, newest first, streamed
/// (CSV: a header row, columns named by the JSON fields' dotted paths, `details` as JSON; NDJSON:
/// one item per line); `limit` and `cursor` are then refused. Another `Accept` is answered 406.
#[utoipa::path(
    tag = "activity",
    operation_id = "list_activity",
    security(("bearer" = ["licenses:read"])),
    params(("space" = String, Path, description = "Space id"), ActivityQuery),
    responses(
        (status = 200, description = "A page of the activity log, newest first (JSON); or every matching entry, newest first, as CSV (RFC 4180, header row, CRLF) or NDJSON (one entry per line)", content(
            (ActivityPage = "application/json"),
            (String = "text/csv"),
            (ActivityItem = "application/x-ndjson"),
        )),
        (status = 406, description = "The `Accept` header takes none of `application/json`, `text/csv`, `application/x-ndjson` (`not-acceptable`)"),
    )
)]
#[get("/v1/spaces/{space}/activity")]
pub async fn list_activity(
    access: SpaceAccess<needs::LicensesRead>,
    state: web::Data<AppState>,
    query: web::Query<ActivityQuery>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let space = access.path;
    let format = export::negotiate(&req)?;
    let q = query.into_inner();
    export::refuse_paging(format, q.limit, q.cursor.as_deref())?;
    let list = format!("activity:{space}");
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor.clone(),
    };
    let limit = page.limit()?;
    let before: Option<i64> = page.after(&list)?;
    let filter = filter(q)?;
    let mut conn = state.pool.get().await?;
    require_space(&mut conn, &space).await?;
    // Admitted once the query, the space and the filters' ids are known good: a refusal (503)
    // never hides a 400 or a 404.
    if let Some(admission) = export::admission(format, &state.exports)? {
        let source = ActivityExport { space, filter };
        return export::respond(format, admission, conn, source, "activity").await;
    }
    let rows = store::list(&mut conn, &space, &filter, before, limit).await?;
    let next = next_cursor(&list, rows.len(), limit, rows.last().map(|r| r.id));
    Ok(export::json_page(ActivityPage {
        items: rows.into_iter().map(item).collect(),
        next_cursor: next,
    }))
}

/// The activity log as an export: the list's query, chunk by chunk, before the last id.
struct ActivityExport {
    space: String,
    filter: ListFilter,
}

impl export::Source for ActivityExport {
    type Row = ActivityItem;
    type Key = i64;

    async fn chunk(
        &self,
        conn: &mut crate::db::Conn,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Chunk<ActivityItem, i64>, ApiError> {
        let rows = store::list(conn, &self.space, &self.filter, before, limit).await?;
        let (raw, last) = (rows.len(), rows.last().map(|r| r.id));
        Ok(Chunk::new(
            rows.into_iter().map(item).collect(),
            raw,
            limit,
            last,
        ))
    }
}

impl ExportRow for ActivityItem {
    const COLUMNS: &'static [&'static str] = &[
        "id",
        "occurred_at",
        "actor",
        "action",
        "account_id",
        "assignment_id",
        "subject.kind",
        "subject.id",
        "adam_id",
        "pricing_param",
        "rule",
        "apple_event_id",
        "request_id",
        "details",
    ];
}

/// The store's filter for a query; 400 for a malformed asset, a subject half given or a range
/// that ends before it starts.
pub fn filter(q: ActivityQuery) -> Result<ListFilter, ApiError> {
    if let Some(a) = &q.adam_id
        && !valid_adam_id(a)
    {
        return Err(ApiError::new(
            &types::INVALID_PARAMETER,
            "adam_id must be Apple's numeric product id (1-20 digits)",
        ));
    }
    if let Some(p) = &q.pricing_param
        && !valid_pricing(p)
    {
        return Err(ApiError::new(
            &types::INVALID_PARAMETER,
            "pricing_param must be STDQ or PLUS",
        ));
    }
    let subject = match (q.subject_kind, q.subject_id) {
        (Some(kind), Some(id)) => Some(format!("{kind}:{id}")),
        (None, None) => None,
        _ => {
            return Err(ApiError::new(
                &types::INVALID_PARAMETER,
                "subject_kind and subject_id go together",
            ));
        }
    };
    if let (Some(since), Some(until)) = (q.since, q.until)
        && since > until
    {
        return Err(ApiError::new(
            &types::INVALID_PARAMETER,
            format!("since ({since}) is after until ({until})"),
        ));
    }
    Ok(ListFilter {
        account: q.account_id,
        adam_id: q.adam_id,
        pricing_param: q.pricing_param,
        subject,
        action: q.action,
        actor: q.actor,
        request_id: q.request_id,
        since: q.since,
        until: q.until,
    })
}

/// The wire form of a stored row.
pub fn item(row: ActivityRow) -> ActivityItem {
    let subject = row.subject.as_deref().and_then(|label| {
        let (kind, id) = label.split_once(':')?;
        Some(AssignmentSubject {
            kind: kind.parse().ok()?,
            id: id.to_owned(),
        })
    });
    ActivityItem {
        id: row.id,
        occurred_at: row.occurred_at,
        actor: row.actor,
        action: row.action,
        account_id: row.account_id,
        assignment_id: row.assignment_id,
        subject,
        adam_id: row.adam_id,
        pricing_param: row.pricing_param,
        rule: row.rule,
        apple_event_id: row.apple_event_id,
        request_id: row.request_id,
        details: row.details,
    }
}
