//! The activity log: every decision and state change, with who asked, which account, which
//! rule and which Apple event. Written in the same transaction as the change it describes, read
//! by `GET /v1/spaces/{space}/activity` ([`list`]).
//!
//! # Vocabulary
//! [`ActivityAction`] is the closed list of `action` values, written by `Activity::new(…)` in
//! the use cases and by the `INSERT INTO activity_log` statements of the store (allocations,
//! revocations, Apple's results, token replacements); a test reads the sources and fails on an
//! action missing from it. Rows about a license carry its `assignment_id` and its `subject`
//! (`device:SERIAL` / `user:ID`): every writer fills the subject from the assignment, so the
//! subject filter finds a license's whole story (allocation, revocation, Apple's answers).
//!
//! # The events' outbox
//! The log is also the outbox of the event feed (issue 15; `crate::events`, docs/events.md):
//! each row records the top-level transaction that wrote it (`txid xid8`, a column default,
//! read only by `ledger::outbox`) and rows about an assignment the assignment's `version` after
//! the change (every writer fills it: the store's statements from the rows they change,
//! [`record`] by looking it up after the change). Writers need do nothing else.
//!
//! # Reading: keyset walks, and which filters have an index
//! Newest first (`id` descending), keyset-paginated on `id`, so any page costs what the first
//! does when the walk finds its rows quickly. Indexes (kept few: each one slows the activity
//! insert of every allocation, which enters `activity_by_subject`, `activity_by_asset`,
//! `activity_by_request` and `activity_by_actor`; only `activity_rare_actions` skips it;
//! migrations 000404–000408 build them concurrently):
//! - `activity_by_space (space_id, id)`: no filter, and the filters that match often
//!   (`pricing_param` alone, `actor=system`, the [`ActivityAction::FREQUENT`] actions) — a walk
//!   that filters rows as it goes;
//! - `activity_by_account (account_id, id)`, `activity_by_subject (space_id, subject, id)`,
//!   `activity_by_asset (space_id, adam_id, id)` (the pricing filtered among the asset's rows),
//!   `activity_by_request (request_id, id)`: the selective filters;
//! - `activity_by_actor (space_id, actor, id) WHERE actor <> 'system'`: callers (an admin's
//!   handful of edits among millions of rows); Apple's results, written by `system`, skip it,
//!   allocations (written by their caller) do not;
//! - `activity_rare_actions (space_id, action, id)`, partial: every action except the two that
//!   every allocation writes ([`ActivityAction::FREQUENT`]), so policy edits, status changes,
//!   revocations and failures are an index walk, and allocations do not pay for it.
//!
//! Trade-off, documented: `actor=system`, `pricing_param` alone and the two frequent actions
//! are walked over the space index. They match a large share of any real log (every allocation
//! writes both frequent actions; Apple's results are `system`'s), so a page costs a short walk;
//! a value that matches almost nothing (a pricing the space never uses) walks the whole log once
//! (about a second at 2,000,000 rows).
//!
//! The statement is raw SQL assembled per filter set, which diesel does not cache: PostgreSQL
//! plans every request with its values (the partial index needs the action's value at planning;
//! a cached statement's generic plan would not use it).
//!
//! Measured (EXPLAIN ANALYZE, 2,000,000 rows in one space, warm cache): any page, unfiltered
//! or filtered by subject, asset, request, account, a caller or a rare action, under 1 ms (cold
//! cache: up to 30 ms, the heap reads of 50 scattered rows); a page of a time range whose `until`
//! lies a million rows deep: 0.1 ms with the id bounds, 460 ms without; a caller matching one
//! row in 500 walked over the space index instead of `activity_by_actor`: 20-30 ms. The price:
//! bulk-inserting activity rows took about twice as long with the five new indexes as without
//! (a busy 2-core machine, so rough), `activity_by_subject` and `activity_by_asset` (rows land
//! all over those trees) most of it, the two partial ones little.
//!
//! # Time range without an index on time
//! `since`/`until` are turned into bounds on `id` (`time_bound`): a binary search over the
//! primary key (a few dozen probes in one statement) finds a row stamped at least
//! [`CLOCK_SLACK`] after `until` — every row stamped before `until` has a smaller id — and a row
//! stamped at least [`CLOCK_SLACK`] before `since` — every row stamped at or after `since` has a
//! greater id. The walk runs between those ids and still filters on `occurred_at`, so the bound
//! only decides where the walk starts and stops, never what it returns. Why it holds:
//! `occurred_at` is the writing transaction's start (`now()`), the id is drawn later in that
//! transaction, and ids are drawn in order; so ids and stamps disagree by at most a transaction's
//! length, which [`CLOCK_SLACK`] exceeds by far. A wall clock stepped back by more than that could
//! misplace rows at a range's edge, and so would rows loaded by hand (a benchmark's generator)
//! unless their stamps grow with their ids.

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::{activity_log, assignments, subjects};
use crate::domain::origin::Origin;

crate::text_enum! {
    /// What an activity row records (`action`).
    pub enum ActivityAction {
        /// A space was created.
        SpaceCreated = "space.created",
        /// A space's name or description changed, or its lifecycle settings
        /// (`details.lifecycle_settings`).
        SpaceUpdated = "space.updated",
        /// A space was deleted.
        SpaceDeleted = "space.deleted",
        /// A token account was attached.
        AccountAdded = "account.added",
        /// An account's settings changed.
        AccountUpdated = "account.updated",
        /// An account's token was tested against Apple.
        AccountTested = "account.tested",
        /// An account's sToken was replaced.
        AccountTokenReplaced = "account.token_replaced",
        /// An account moved in the priority order.
        AccountMoved = "account.moved",
        /// The whole priority order was set.
        AccountsReordered = "accounts.reordered",
        /// An account's status changed (`details`: from, to, reason, throttled_until).
        AccountStatusChanged = "account.status_changed",
        /// Another MDM took the account's Apple location.
        AccountOwnershipLost = "account.ownership_lost",
        /// The account's Apple location was taken back.
        AccountOwnershipReclaimed = "account.ownership_reclaimed",
        /// An account's deletion was asked (it waits for its licenses to be released).
        AccountDeleteRequested = "account.delete_requested",
        /// An account was removed.
        AccountDeleted = "account.deleted",
        /// A distribution policy was created.
        PolicyCreated = "policy.created",
        /// A distribution policy was replaced.
        PolicyReplaced = "policy.replaced",
        /// A distribution policy was deleted.
        PolicyDeleted = "policy.deleted",
        /// A notification from Apple was refused (`details`: notification, field, reason).
        AppleNotificationRejected = "apple.notification_rejected",
        /// A license was allocated (`rule`; `details`: license type, accounts skipped, why
        /// queued).
        AssignmentAllocated = "assignment.allocated",
        /// A license's revocation was asked (`details`: reason, state, notify_user).
        AssignmentRevokeRequested = "assignment.revoke_requested",
        /// Apple confirmed an assignment (`apple_event_id`).
        AssignmentActivated = "assignment.activated",
        /// Apple released a license (`apple_event_id`).
        AssignmentRevoked = "assignment.revoked",
        /// Apple refused an assignment, or it could not be sent (`details`: the error).
        AssignmentFailed = "assignment.failed",
        /// Apple answered 9709 and the license was re-allocated from another account.
        AssignmentReallocated = "assignment.reallocated",
        /// Apple answered 9709 and no other account could serve.
        AssignmentReallocationFailed = "assignment.reallocation_failed",
        /// A token of another Apple location replaced the account's: the ledger stopped
        /// managing the license (`details`: reason).
        AssignmentForgotten = "assignment.forgotten",
        /// A sync of an account was asked (`details`: kind, trigger, run).
        SyncRequested = "sync.requested",
        /// A sync of an account finished (`details`: run, kind, state, drift per class, stats).
        SyncFinished = "sync.finished",
        /// A sync found an asset the account did not have (a purchase).
        AssetAppeared = "asset.appeared",
        /// A sync no longer found an asset at Apple (its counts are now zero).
        AssetVanished = "asset.vanished",
        /// Apple's total of an asset dropped below what the ledger holds (`details`: counts).
        AssetOvercommitted = "asset.overcommitted",
        /// A plan was made (`details`: plan, action, items, cap).
        PlanCreated = "plan.created",
        /// A plan was applied (`details`: plan, action, applied, skipped).
        PlanApplied = "plan.applied",
        /// An Apple license was adopted as this deployment's assignment (rule `adopted`).
        AssignmentAdopted = "assignment.adopted",
        /// Clean Up: an Apple license this deployment did not assign is being revoked.
        AssignmentCleanedUp = "assignment.cleaned_up",
        /// Repair: the association of a license missing at Apple (or stuck) was queued again.
        AssignmentReassociated = "assignment.reassociated",
        /// Repair: a license missing at Apple was freed in the ledger.
        AssignmentMarkedLost = "assignment.marked_lost",
        /// Repair: a stuck assignment's Apple event is followed again or its release resent.
        AssignmentResubmitted = "assignment.resubmitted",
        /// Reconcile: a license no longer used is being revoked (`details`: the criterion).
        AssignmentReconciled = "assignment.reconciled",
        /// A lifecycle event was applied, scheduled or found stale (`details`: the event's
        /// source, id, type, state and result; V2, V5). Its revocations are
        /// `assignment.revoke_requested` rows whose reason names the event.
        LifecycleApplied = "lifecycle.applied",
        /// `PUT …/devices|users/…` changed a subject's facts (`details`: what was given and
        /// the licenses it revoked).
        SubjectUpdated = "subject.updated",
        /// A12: no license was left and the allocation waits in line (`details`: license
        /// type, accounts skipped, when the wait expires). Served, it is `assignment.allocated`
        /// (`details.served_from_wait_list`).
        AssignmentWaiting = "assignment.waiting",
        /// A12: a waiting allocation was cancelled by a revocation (`details`: reason).
        AssignmentWaitCancelled = "assignment.wait_cancelled",
        /// A12: a waiting allocation's wait expired (`VPP_WAIT_EXPIRY_HOURS`); it failed.
        AssignmentWaitExpired = "assignment.wait_expired",
        /// A12: a waiting allocation can no longer be served (the policy now refuses the
        /// subject, no account owns the asset, the subject got a license another way); it
        /// failed (`details`: reason).
        AssignmentWaitEnded = "assignment.wait_ended",
        /// Apple retired a user at an account (`users/retire`, after a `user.deleted` event;
        /// `subject`, `apple_event_id`).
        AppleUserRetired = "apple_user.retired",
        /// A user's retirement at an account was given up (`details.reason`: the user got a
        /// license there again, or Apple refused it for good).
        AppleUserRetireDropped = "apple_user.retire_dropped",
        /// V6: a bulk operation was created (`details`: operation, action, assets, subjects,
        /// total, selector). Its allocations and revocations carry the creating request's
        /// `request_id` and a reason naming the operation.
        BulkCreated = "bulk.created",
        /// V6: a bulk operation finished (`details`: operation, state, counts).
        BulkFinished = "bulk.finished",
        /// V6: a bulk operation was cancelled (`details`: operation, counts so far).
        BulkCancelled = "bulk.cancelled",
        /// N3: a webhook endpoint was created (`details`: webhook, url, event_types, enabled;
        /// never the secret).
        WebhookCreated = "webhook.created",
        /// N3: a webhook endpoint was changed (`details`: its settings after the change).
        WebhookUpdated = "webhook.updated",
        /// N3: a webhook endpoint was deleted (`details`: webhook, url).
        WebhookDeleted = "webhook.deleted",
        /// N3: a webhook endpoint's secret was rotated (`details`: webhook, until when the
        /// previous one also signs).
        WebhookSecretRotated = "webhook.secret_rotated",
        /// N6: a webhook endpoint was disabled by the service (`details.reason`: `gone` for a
        /// 410 answer, `failing` after 5 days of failures).
        WebhookDisabled = "webhook.disabled",
        /// N1, N2: a notification was raised (`details`: the notification, as the API shows
        /// it).
        NotificationRaised = "notification.raised",
        /// N1, N2: a notification was cleared (`details`: the notification, with
        /// `cleared_reason`).
        NotificationCleared = "notification.cleared",
        /// A caller acknowledged a notification (`details`: notification_id, kind).
        NotificationAcknowledged = "notification.acknowledged",
    }
}

impl ActivityAction {
    /// The actions every allocation writes, left out of the partial index
    /// `activity_rare_actions` (the migration names the same two).
    pub const FREQUENT: [ActivityAction; 2] = [
        ActivityAction::AssignmentAllocated,
        ActivityAction::AssignmentActivated,
    ];
}

/// One activity row, built fluently: `Activity::new(&origin, "space.created").space(id)`.
#[derive(Debug, Default, Insertable)]
#[diesel(table_name = activity_log)]
pub struct Activity {
    pub space_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub account_id: Option<Uuid>,
    pub assignment_id: Option<Uuid>,
    pub subject: Option<String>,
    pub adam_id: Option<String>,
    pub pricing_param: Option<String>,
    pub rule: Option<String>,
    pub apple_event_id: Option<String>,
    pub request_id: Option<String>,
    pub details: serde_json::Value,
    /// The assignment's version after the change (rows about one; [`record`] fills it).
    pub version: Option<i64>,
}

impl Activity {
    /// `origin`: the caller's JWT `sub` (or `system` for background work) and the request id.
    pub fn new(origin: &Origin, action: &str) -> Self {
        Activity {
            actor: origin.actor.clone(),
            action: action.to_owned(),
            request_id: origin.request_id.clone(),
            details: serde_json::json!({}),
            ..Default::default()
        }
    }

    pub fn space(mut self, space: &str) -> Self {
        self.space_id = Some(space.to_owned());
        self
    }

    pub fn account(mut self, account: Uuid) -> Self {
        self.account_id = Some(account);
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// Writes `activity`; a row about an assignment gets the assignment's version as it is now
/// (write the row after the change, in its transaction), and its subject unless it names one.
pub async fn record(conn: &mut AsyncPgConnection, mut activity: Activity) -> QueryResult<()> {
    if let Some(id) = activity.assignment_id
        && activity.version.is_none()
    {
        let found = assignments::table
            .inner_join(subjects::table)
            .filter(assignments::id.eq(id))
            .select((subjects::kind, subjects::external_id, assignments::version))
            .first::<(String, String, i64)>(conn)
            .await
            .optional()?;
        if let Some((kind, external, version)) = found {
            activity.version = Some(version);
            if activity.subject.is_none() {
                activity.subject = Some(format!("{kind}:{external}"));
            }
        }
    }
    diesel::insert_into(activity_log::table)
        .values(activity)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Writes many rows in one statement (each must name its subject, if any: nothing is looked
/// up).
pub async fn record_many(conn: &mut AsyncPgConnection, rows: Vec<Activity>) -> QueryResult<()> {
    // 12 parameters a row: stay well under PostgreSQL's 65,535 per statement.
    for chunk in rows.chunks(2000) {
        diesel::insert_into(activity_log::table)
            .values(chunk)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// One row of the log, as read.
#[derive(Debug, Clone, QueryableByName)]
#[diesel(table_name = activity_log, check_for_backend(Pg))]
pub struct ActivityRow {
    pub id: i64,
    pub occurred_at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub account_id: Option<Uuid>,
    pub assignment_id: Option<Uuid>,
    /// `device:SERIAL` or `user:ID`.
    pub subject: Option<String>,
    pub adam_id: Option<String>,
    pub pricing_param: Option<String>,
    pub rule: Option<String>,
    pub apple_event_id: Option<String>,
    pub request_id: Option<String>,
    pub details: serde_json::Value,
}

/// Filters of the listing; all given ones must match.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub account: Option<Uuid>,
    pub adam_id: Option<String>,
    pub pricing_param: Option<String>,
    /// `device:SERIAL` or `user:ID`, as stored.
    pub subject: Option<String>,
    pub action: Option<ActivityAction>,
    pub actor: Option<String>,
    pub request_id: Option<String>,
    /// Inclusive.
    pub since: Option<DateTime<Utc>>,
    /// Exclusive.
    pub until: Option<DateTime<Utc>>,
}

/// The listing's statement: raw SQL, which diesel never caches, so PostgreSQL plans each
/// request with its values (a cached statement may fall back to a generic plan, which cannot
/// pick the partial index of a rare action nor tell a small space from a large one).
pub type Listing =
    diesel::query_builder::BoxedSqlQuery<'static, Pg, diesel::query_builder::SqlQuery>;

/// How far a row's `occurred_at` (its transaction's start) may precede the moment its id was
/// drawn, with a wide margin: the service's transactions last at most seconds (statement
/// timeout), this is minutes.
pub const CLOCK_SLACK: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

const COLUMNS: &str = "SELECT id, occurred_at, actor, action, account_id, assignment_id, subject, \
    adam_id, pricing_param, rule, apple_event_id, request_id, details FROM activity_log \
    WHERE space_id =";

/// The space's rows matching `filter` with ids below `before`, newest first, at most `limit`
/// (none: all). See the module doc for the indexes and the time range.
pub async fn filtered(
    conn: &mut AsyncPgConnection,
    space: &str,
    filter: &ListFilter,
    before: Option<i64>,
    limit: Option<i64>,
) -> QueryResult<Listing> {
    use diesel::sql_types::{Text, Uuid as SqlUuid};
    let mut n = 0;
    let mut q = diesel::sql_query(param(&mut n, COLUMNS))
        .into_boxed::<Pg>()
        .bind::<Text, _>(space.to_owned());
    if let Some(a) = filter.account {
        q = q
            .sql(param(&mut n, " AND account_id = "))
            .bind::<SqlUuid, _>(a);
    }
    if let Some(a) = &filter.adam_id {
        q = q
            .sql(param(&mut n, " AND adam_id = "))
            .bind::<Text, _>(a.clone());
    }
    if let Some(p) = &filter.pricing_param {
        q = q
            .sql(param(&mut n, " AND pricing_param = "))
            .bind::<Text, _>(p.clone());
    }
    if let Some(s) = &filter.subject {
        q = q
            .sql(param(&mut n, " AND subject = "))
            .bind::<Text, _>(s.clone());
    }
    if let Some(a) = filter.action {
        q = q.sql(param(&mut n, " AND action = ")).bind::<Text, _>(a);
    }
    if let Some(a) = &filter.actor {
        q = q
            .sql(param(&mut n, " AND actor = "))
            .bind::<Text, _>(a.clone());
    }
    if let Some(r) = &filter.request_id {
        q = q
            .sql(param(&mut n, " AND request_id = "))
            .bind::<Text, _>(r.clone());
    }
    if let Some(since) = filter.since {
        q = q
            .sql(param(&mut n, " AND occurred_at >= "))
            .bind::<Timestamptz, _>(since);
        if let (Some(early), _) = time_bound(conn, since - CLOCK_SLACK).await? {
            q = q.sql(param(&mut n, " AND id > ")).bind::<BigInt, _>(early);
        }
    }
    if let Some(until) = filter.until {
        q = q
            .sql(param(&mut n, " AND occurred_at < "))
            .bind::<Timestamptz, _>(until);
        if let (_, Some(late)) = time_bound(conn, until + CLOCK_SLACK).await? {
            q = q.sql(param(&mut n, " AND id < ")).bind::<BigInt, _>(late);
        }
    }
    if let Some(before) = before {
        q = q.sql(param(&mut n, " AND id < ")).bind::<BigInt, _>(before);
    }
    q = q.sql(" ORDER BY id DESC");
    if let Some(limit) = limit {
        q = q.sql(param(&mut n, " LIMIT ")).bind::<BigInt, _>(limit);
    }
    Ok(q)
}

/// `sql` followed by the next bind parameter's placeholder (`$1`, `$2`, …).
fn param(n: &mut usize, sql: &str) -> String {
    *n += 1;
    format!("{sql}${n}")
}

/// A page of the listing: at most `limit` rows with ids below `before`.
pub async fn list(
    conn: &mut AsyncPgConnection,
    space: &str,
    filter: &ListFilter,
    before: Option<i64>,
    limit: i64,
) -> QueryResult<Vec<ActivityRow>> {
    filtered(conn, space, filter, before, Some(limit))
        .await?
        .load(conn)
        .await
}

#[derive(QueryableByName)]
struct Bound {
    #[diesel(sql_type = Nullable<BigInt>)]
    early: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    late: Option<i64>,
}

/// Binary search over the primary key for the row ids around `at`: the id of a row stamped
/// before `at` (`early`, the greatest the search met) and of one stamped at or after it
/// (`late`, the least it met); each is `None` when the search met no such row. Any row proves
/// its own side, so the answer is right whatever the order of stamps; it is tight when stamps
/// grow with ids.
async fn time_bound(
    conn: &mut AsyncPgConnection,
    at: DateTime<Utc>,
) -> QueryResult<(Option<i64>, Option<i64>)> {
    let bound: Bound = diesel::sql_query(
        "WITH RECURSIVE s(lo, hi, early, late) AS (
             SELECT min(id), max(id) + 1, NULL::bigint, NULL::bigint FROM activity_log
           UNION ALL
             SELECT CASE WHEN p.occurred_at < $1 THEN p.id + 1 ELSE s.lo END,
                    CASE WHEN p.occurred_at < $1 THEN s.hi ELSE (s.lo + s.hi) / 2 END,
                    CASE WHEN p.occurred_at < $1 THEN p.id ELSE s.early END,
                    CASE WHEN p.occurred_at >= $1 THEN p.id ELSE s.late END
               FROM s LEFT JOIN LATERAL (
                    SELECT id, occurred_at FROM activity_log
                     WHERE id >= (s.lo + s.hi) / 2 AND id < s.hi
                     ORDER BY id LIMIT 1) p ON true
              WHERE s.lo < s.hi
         )
         SELECT max(early) AS early, min(late) AS late FROM s",
    )
    .bind::<Timestamptz, _>(at)
    .get_result(conn)
    .await?;
    Ok((bound.early, bound.late))
}
