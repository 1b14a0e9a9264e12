//! `GET /v1/spaces/{space}/events`: the space's event feed (issue 15, rule N5; docs/events.md),
//! oldest first, read with a cursor.
//!
//! - `after`: the `next` of the previous answer (cursor list `events:{space}`, key the last
//!   sequence seen); without it the feed starts at the oldest kept event. `next` is always
//!   given: an empty page returns the position it was asked for (or the end), so a reader
//!   keeps one cursor forever.
//! - `types` (comma-separated [`FeedEventType`]s; an unknown one is a 400), `limit` (1-1000,
//!   default 100), `wait` (0-30 s: a long poll that answers as soon as an event arrives, woken
//!   by the sequencer's NOTIFY).
//! - A cursor whose following events retention forgot answers 410 `cursor-expired` with the
//!   feed's current end as `cursor`: read the current state (assignments, inventory), then
//!   follow from there. A cursor that does not decode, of another space or another list, or
//!   beyond the end: 400 `invalid-parameter`.

use std::time::Duration;

use actix_web::{HttpResponse, get, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::spaces::require_space;
use crate::auth::{SpaceAccess, needs};
use crate::events::feed::{self, FeedError, FeedQuery};
use crate::events::mapping::FeedEventType;
use crate::http::pagination::{PageQuery, cursor_at};
use crate::http::problem::{ApiError, types};
use crate::ledger::events::EventRow;
use crate::state::AppState;

/// Most events per page.
pub const MAX_LIMIT: u32 = 1000;
/// Events per page by default.
pub const DEFAULT_LIMIT: u32 = 100;
/// Longest long poll, in seconds.
pub const MAX_WAIT: u32 = 30;

/// One event (the envelope the webhooks deliver too).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Unique and stable: a consumer may drop an event whose id it already handled.
    pub id: Uuid,
    #[serde(rename = "type")]
    #[schema(value_type = FeedEventType)]
    pub type_: String,
    /// The version of the envelope and `data` (a date).
    pub api_version: String,
    /// When the change happened (its transaction's start).
    pub occurred_at: DateTime<Utc>,
    /// Strictly increasing per space, without gaps as served.
    pub sequence: i64,
    /// The space the event belongs to.
    pub space: String,
    /// What changed. Assignment events: `assignment_id`, `version` (the assignment's version
    /// after the change: drop an event with a lower version than one already seen), `state`,
    /// `subject` {kind, id}, `asset` {adam_id, pricing_param}, `account_id`, `actor`, `rule`,
    /// `reason`, `apple_event_id`, `request_id`, `details`; revocations add
    /// `notify_on_removal` (V4), failures `error`, re-allocations `reallocated_to`.
    /// Notification events: the notification (a `Notification`, as
    /// `GET …/notifications/{id}` has it). Other events: `account_id`, `assignment_id`, `actor`, `request_id`,
    /// `details`.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// A page of the feed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    /// Oldest first.
    pub events: Vec<Event>,
    /// Pass as `after` to read on (always given; an empty page returns the same position).
    pub next: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// `next` of the previous page; without it, from the oldest kept event.
    pub after: Option<String>,
    /// Only these event types, comma-separated (e.g. `assignment.active,assignment.failed`).
    pub types: Option<String>,
    /// Events per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Seconds to wait for an event when there is none yet (long poll), 0 to 30 (default 0).
    #[param(minimum = 0, maximum = 30)]
    pub wait: Option<u32>,
}

/// Read the space's event feed.
///
/// The space's state changes in order, oldest first, each with a `sequence` that strictly
/// increases per space: assignments allocated, active, failed, re-allocated, revoking and
/// revoked (with who, why and the account's `notify_on_removal`), waiting, served from the
/// wait-list and ended; account status changes; syncs finished; lifecycle events applied;
/// bulk operations finished; plans applied; notifications raised and cleared. Pass `next`
/// as `after` to read on; with `wait` the request waits up to that many seconds for an
/// event. Events are kept
/// `VPP_EVENT_RETENTION_DAYS` (30 days by default): a cursor older than that answers 410 with
/// the feed's current end as `cursor`, to follow once the current state was read again from
/// the assignments and inventory API.
#[utoipa::path(
    tag = "events",
    operation_id = "list_events",
    security(("bearer" = ["licenses:read"])),
    params(("space" = String, Path, description = "Space id"), EventsQuery),
    responses(
        (status = 200, description = "A page of events, oldest first, and the cursor to read on", body = EventPage),
        (status = 400, description = "A cursor this API did not issue for this space's feed, an unknown event type, `limit` or `wait` out of range (`invalid-parameter`)"),
        (status = 410, description = "The events after the cursor are no longer kept (`cursor-expired`): read the current state from the assignments and inventory API, then follow the feed from the problem's `cursor` (the current end)"),
    )
)]
#[get("/v1/spaces/{space}/events")]
pub async fn list_events(
    access: SpaceAccess<needs::LicensesRead>,
    state: web::Data<AppState>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let space = access.path;
    let q = query.into_inner();
    let list = format!("events:{space}");
    let feed_query = parse(&list, q)?;
    {
        let mut conn = state.pool.get().await?;
        require_space(&mut conn, &space).await?;
    }
    let page = feed::read(&state.pool, &state.event_wakes, &space, &feed_query)
        .await
        .map_err(|e| problem(&list, e))?;
    Ok(HttpResponse::Ok().json(EventPage {
        events: page.events.into_iter().map(event).collect(),
        next: cursor_at(&list, page.next),
    }))
}

/// The feed's query; 400 for a bad cursor, type, limit or wait.
fn parse(list: &str, q: EventsQuery) -> Result<FeedQuery, ApiError> {
    let invalid = |detail: String| ApiError::new(&types::INVALID_PARAMETER, detail);
    let after: Option<i64> = PageQuery {
        limit: None,
        cursor: q.after,
    }
    .after(list)?;
    if after.is_some_and(|a| a < 0) {
        return Err(invalid(
            "after is not a cursor this API issued for this list".into(),
        ));
    }
    let types = match q.types.as_deref() {
        None => None,
        Some(raw) => {
            let mut types = Vec::new();
            for name in raw.split(',') {
                let kind: FeedEventType = name.trim().parse().map_err(|_| {
                    invalid(format!(
                        "types: unknown event type {name:?} (known: {})",
                        FeedEventType::ALL
                            .iter()
                            .map(|t| t.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
                types.push(kind.as_str().to_owned());
            }
            Some(types)
        }
    };
    let limit = match q.limit {
        None => DEFAULT_LIMIT,
        Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(n) => {
            return Err(invalid(format!(
                "limit must be between 1 and {MAX_LIMIT}, not {n}"
            )));
        }
    };
    let wait = match q.wait {
        None => 0,
        Some(n) if n <= MAX_WAIT => n,
        Some(n) => {
            return Err(invalid(format!(
                "wait must be between 0 and {MAX_WAIT} seconds, not {n}"
            )));
        }
    };
    Ok(FeedQuery {
        after,
        types,
        limit: limit as i64,
        wait: Duration::from_secs(wait as u64),
    })
}

fn problem(list: &str, err: FeedError) -> ApiError {
    match err {
        FeedError::Gone { end, .. } => ApiError::new(
            &types::CURSOR_EXPIRED,
            format!(
                "{err}. Read the current state again (GET …/assignments, …/assets), then \
                 follow the feed from `cursor`, its current end"
            ),
        )
        .with_extensions(serde_json::json!({ "cursor": cursor_at(list, end) })),
        FeedError::Ahead { .. } => ApiError::new(
            &types::INVALID_PARAMETER,
            format!("after is not a cursor this API issued for this list ({err})"),
        ),
        FeedError::Db(e) => e.into(),
        FeedError::Pool(e) => e.into(),
    }
}

/// The wire form of a stored event.
pub fn event(row: EventRow) -> Event {
    Event {
        id: row.id,
        type_: row.type_,
        api_version: row.api_version,
        occurred_at: row.occurred_at,
        sequence: row.sequence,
        space: row.space_id,
        data: row.data,
    }
}
