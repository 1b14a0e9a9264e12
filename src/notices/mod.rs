//! Notifications (issue 15, rules N1, N2; docs/notifications.md): license usage crossings,
//! exhaustion and its forecast, token problems — raised, cleared, listed and acknowledged.
//! (Named *notices* in the code to keep them apart from Apple's notifications, `crate::settle`.)
//!
//! # Evaluation ([`evaluate`], run by `dispatch::notices` every `VPP_NOTIFICATION_SECS`)
//! Conditions are read from the ledger's figures, not hooked into every write: the allocation
//! path stays as it is, and a condition is noticed within one interval (30 s by default). One
//! evaluation runs at a time across replicas (an advisory lock; the others skip their turn), and
//! the store's partial unique index makes even two at once raise each notification once. Each
//! round, in one transaction:
//! 1. read usage per asset, account and space, every account's token facts, and — at most every
//!    [`FORECAST_EVERY`] per process — each consuming asset's exhaustion forecast;
//! 2. decide what to raise and clear ([`crate::domain::notices::evaluate`]);
//! 3. insert and clear, and write a `notification.raised` / `notification.cleared` activity row
//!    for each row this round changed — the event feed and the webhooks carry them.
//!
//! A usage that goes up and down between two evaluations is not seen (the notifications are
//! about levels, sampled each interval); the read side's inventory has the live figures.

use chrono::{DateTime, Duration, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::json;
use uuid::Uuid;

use crate::domain::forecast::{self, WINDOW_DAYS};
use crate::domain::notices::{self as rules, ClearReason, Facts, ForecastFact, Target};
use crate::domain::origin::Origin;
use crate::ledger::activity::{self, Activity, ActivityAction};
use crate::ledger::inventory;
use crate::ledger::notices::{self as store, NoticeRow};

/// How often a process includes the exhaustion forecasts (one query per consuming asset).
pub const FORECAST_EVERY: std::time::Duration = std::time::Duration::from_secs(900);

/// What one evaluation did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Another replica's evaluation held the lock.
    pub busy: bool,
    pub raised: usize,
    pub cleared: usize,
}

/// One evaluation (see the module doc). `forecasts`: include the exhaustion forecasts;
/// `sync_interval`: the incremental sync interval.
pub async fn evaluate(
    conn: &mut AsyncPgConnection,
    sync_interval: Duration,
    forecasts: bool,
    now: DateTime<Utc>,
) -> diesel::QueryResult<Round> {
    conn.transaction(async |conn| {
        if !store::try_lock(conn).await? {
            return Ok(Round {
                busy: true,
                ..Round::default()
            });
        }
        let usage = store::usage(conn).await?;
        let tokens = store::tokens(conn).await?;
        let forecasts = if forecasts {
            Some(forecast_facts(conn, &usage, now).await?)
        } else {
            None
        };
        let facts = Facts {
            usage,
            tokens,
            forecasts,
            sync_interval,
        };
        let open = store::open(conn).await?;
        let changes = rules::evaluate(&facts, &open, now);

        let rows: Vec<NoticeRow> = changes
            .raise
            .iter()
            .map(|r| NoticeRow::raised(r, now))
            .collect();
        let raised = store::insert(conn, &rows).await?;
        let mut cleared = Vec::new();
        for reason in ClearReason::ALL {
            let ids: Vec<Uuid> = changes
                .clear
                .iter()
                .filter(|(_, r)| r == reason)
                .map(|(id, _)| *id)
                .collect();
            if !ids.is_empty() {
                cleared.extend(store::clear(conn, &ids, *reason, now).await?);
            }
        }
        let origin = Origin::system();
        let mut log: Vec<Activity> = raised
            .iter()
            .map(|n| activity_row(&origin, ActivityAction::NotificationRaised, n))
            .collect();
        log.extend(
            cleared
                .iter()
                .map(|n| activity_row(&origin, ActivityAction::NotificationCleared, n)),
        );
        activity::record_many(conn, log).await?;
        for n in &raised {
            tracing::info!(
                notification = %n.id, space = %n.space_id, kind = %n.kind,
                severity = %n.severity, level = ?n.level, "notification raised"
            );
        }
        Ok(Round {
            busy: false,
            raised: raised.len(),
            cleared: cleared.len(),
        })
    })
    .await
}

/// The forecast of every asset that takes licenses and still has some left (an exhausted one
/// has its own notification; one owning nothing has nothing to forecast).
async fn forecast_facts(
    conn: &mut AsyncPgConnection,
    usage: &[rules::Usage],
    now: DateTime<Utc>,
) -> diesel::QueryResult<Vec<ForecastFact>> {
    let today = now.date_naive();
    let since = today - Duration::days(WINDOW_DAYS - 1);
    let mut out = Vec::new();
    for u in usage {
        let Target::Asset {
            adam_id,
            pricing_param,
        } = &u.target
        else {
            continue;
        };
        let (days, rate) = if u.total > 0 && u.available > 0 && u.held > 0 {
            let (counts, first) =
                inventory::daily(conn, &u.space, adam_id, pricing_param, since).await?;
            let f = forecast::forecast(today, &counts, first, u.available);
            (f.outcome.ok(), f.net_rate_per_day)
        } else {
            (None, None)
        };
        out.push(ForecastFact {
            space: u.space.clone(),
            adam_id: adam_id.clone(),
            pricing_param: pricing_param.clone(),
            days,
            rate_per_day: rate,
            exhausted: u.total > 0 && u.available <= 0,
        });
    }
    Ok(out)
}

/// The activity row (and so the event) of a raised or cleared notification: the whole
/// notification as `details`.
fn activity_row(origin: &Origin, action: ActivityAction, n: &NoticeRow) -> Activity {
    let mut row = Activity::new(origin, action.as_str())
        .space(&n.space_id)
        .details(describe(n));
    row.account_id = n.account_id;
    row.adam_id = n.adam_id.clone();
    row.pricing_param = n.pricing_param.clone();
    row
}

/// A notification as events carry it: the fields and spelling of the API's `Notification`
/// (`GET …/notifications/{id}`), as it was at the change.
pub fn describe(n: &NoticeRow) -> serde_json::Value {
    json!({
        "id": n.id,
        "kind": n.kind,
        "severity": n.severity,
        "scope": n.scope,
        "account_id": n.account_id,
        "asset": match (&n.adam_id, &n.pricing_param) {
            (Some(adam), Some(pricing)) => json!({"adam_id": adam, "pricing_param": pricing}),
            _ => serde_json::Value::Null,
        },
        "level": n.level,
        "message": n.message,
        "action": n.action,
        "figures": n.details,
        "state": if n.cleared_at.is_some() { "cleared" } else { "open" },
        "raised_at": n.raised_at,
        "cleared_at": n.cleared_at,
        "cleared_reason": n.cleared_reason,
        "acknowledged_at": n.acknowledged_at,
        "acknowledged_by": n.acknowledged_by,
    })
}

/// Acknowledges a notification (it stays open until its condition ends); `None` when the
/// space has no such notification. Acknowledging again changes nothing.
pub async fn acknowledge(
    conn: &mut AsyncPgConnection,
    origin: &Origin,
    space: &str,
    id: Uuid,
) -> diesel::QueryResult<Option<NoticeRow>> {
    conn.transaction(async |conn| {
        let Some((row, changed)) =
            store::acknowledge(conn, space, id, &origin.actor, Utc::now()).await?
        else {
            return Ok(None);
        };
        if changed {
            let mut log = Activity::new(origin, ActivityAction::NotificationAcknowledged.as_str())
                .space(space)
                .details(json!({"notification_id": row.id, "kind": row.kind}));
            log.account_id = row.account_id;
            activity::record(conn, log).await?;
        }
        Ok(Some(row))
    })
    .await
}
