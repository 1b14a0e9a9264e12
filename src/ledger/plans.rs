//! Plans and their items (docs/sync.md, "Plans"): what the plans use case ([`crate::plans`])
//! reads to make a plan (the accounts' facts, the drift items a plan may act on) and how a plan
//! is kept (one row, its items, then what applying did).
//!
//! Candidates are read from `drift_items` (what the last sync found), joined with the rows they
//! are about *as they are now*: an `apple_only` item whose mirror row went, or that a live
//! assignment now holds, is not a candidate any more; a `ledger_only` or `stuck` item whose
//! assignment moved on neither. The apply re-checks each item again.

use chrono::{DateTime, Utc};
use diesel::sql_types::{
    BigInt, Bool, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::domain::model::{AssignmentState, LicenseType};
use crate::domain::reconciliation::{ItemOutcome, PlanAction, PlanChange, PlanState};

/// What a plan needs to know about one account: its cap's base and Clean Up's preconditions.
#[derive(Clone, Debug, diesel::QueryableByName)]
pub struct AccountFacts {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub status: String,
    /// The end of the last sync that read Apple's assignments (full or incremental).
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub synced_at: Option<DateTime<Utc>>,
    /// Whether that was within the last hour.
    #[diesel(sql_type = Bool)]
    pub synced_within_hour: bool,
    /// Live ledger assignments (pending, associating, active).
    #[diesel(sql_type = BigInt)]
    pub live: i64,
    /// Apple's assignments of the account as the last sync read them.
    #[diesel(sql_type = BigInt)]
    pub mirror: i64,
}

/// The facts of `account`, or of every account of `space` (in priority order).
pub async fn account_facts(
    conn: &mut AsyncPgConnection,
    space: &str,
    account: Option<Uuid>,
) -> diesel::QueryResult<Vec<AccountFacts>> {
    diesel::sql_query(
        "SELECT a.id, a.status,
                GREATEST(a.last_full_sync_at, a.last_incremental_sync_at) AS synced_at,
                COALESCE(GREATEST(a.last_full_sync_at, a.last_incremental_sync_at)
                         > now() - interval '1 hour', false) AS synced_within_hour,
                (SELECT count(*) FROM assignments x
                  WHERE x.account_id = a.id
                    AND x.state IN ('pending', 'associating', 'active')) AS live,
                (SELECT count(*) FROM apple_assignments m WHERE m.account_id = a.id) AS mirror
           FROM accounts a
          WHERE a.space_id = $1 AND ($2::uuid IS NULL OR a.id = $2)
          ORDER BY a.priority, a.id",
    )
    .bind::<Text, _>(space)
    .bind::<Nullable<SqlUuid>, _>(account)
    .load(conn)
    .await
}

/// An `apple_only` drift item whose mirror row still exists and that no live assignment holds.
#[derive(Clone, Debug, diesel::QueryableByName)]
pub struct AppleOnly {
    #[diesel(sql_type = BigInt)]
    pub drift_id: i64,
    #[diesel(sql_type = SqlUuid)]
    pub account_id: Uuid,
    #[diesel(sql_type = Text)]
    pub adam_id: String,
    #[diesel(sql_type = Text)]
    pub pricing_param: String,
    #[diesel(sql_type = Text)]
    pub license_type: LicenseType,
    #[diesel(sql_type = Text)]
    pub target: String,
    /// When a sync first saw Apple's row.
    #[diesel(sql_type = Timestamptz)]
    pub first_seen_at: DateTime<Utc>,
    #[diesel(sql_type = Bool)]
    pub first_seen_within_hour: bool,
    /// Whether Apple takes the asset's licenses back (`false`: books).
    #[diesel(sql_type = Bool)]
    pub revocable: bool,
}

/// Whether the ledger holds Apple's row `m` (account, asset, license type, target): a live or
/// `revoking` assignment of the account for the asset whose subject is Apple's target (the
/// holder is the subject: a device by serial, a user by client user id) — the same test as the
/// sync's `foreign_assigned` recount and the drift report's `apple_only`. A `revoking` one counts: the ledger is releasing that license, so it is neither adopted nor
/// cleaned up again while Apple still lists it.
pub const HELD_BY_LEDGER: &str = "EXISTS (
        SELECT 1 FROM assignments x JOIN subjects s ON s.id = x.subject_id
         WHERE x.account_id = m.account_id
           AND x.adam_id = m.adam_id AND x.pricing_param = m.pricing_param
           AND x.license_type = m.license_type
           AND x.state IN ('pending', 'associating', 'active', 'revoking')
           AND s.kind = m.license_type AND s.external_id = m.target)";

/// The `apple_only` items of `account` (filtered by asset), oldest drift first.
pub async fn apple_only(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    adam_id: Option<&str>,
    pricing_param: Option<&str>,
) -> diesel::QueryResult<Vec<AppleOnly>> {
    diesel::sql_query(format!(
        "SELECT d.id AS drift_id, m.account_id, m.adam_id, m.pricing_param, m.license_type,
                m.target, m.first_seen_at,
                m.first_seen_at > now() - interval '1 hour' AS first_seen_within_hour,
                COALESCE(s.revocable, true) AS revocable
           FROM drift_items d
           JOIN apple_assignments m
             ON m.account_id = d.account_id AND m.adam_id = d.adam_id
            AND m.pricing_param = d.pricing_param AND m.license_type = d.license_type
            AND m.target = d.target
           LEFT JOIN assets s ON s.account_id = m.account_id AND s.adam_id = m.adam_id
                             AND s.pricing_param = m.pricing_param
          WHERE d.account_id = $1 AND d.class = 'apple_only'
            AND ($2::text IS NULL OR d.adam_id = $2)
            AND ($3::text IS NULL OR d.pricing_param = $3)
            AND NOT {HELD_BY_LEDGER}
          ORDER BY d.since, d.id"
    ))
    .bind::<SqlUuid, _>(account)
    .bind::<Nullable<Text>, _>(adam_id)
    .bind::<Nullable<Text>, _>(pricing_param)
    .load(conn)
    .await
}

/// A `ledger_only` or `stuck` drift item with its assignment as it is now.
#[derive(Clone, Debug, diesel::QueryableByName)]
pub struct LedgerSide {
    #[diesel(sql_type = BigInt)]
    pub drift_id: i64,
    /// `ledger_only` or `stuck`.
    #[diesel(sql_type = Text)]
    pub class: String,
    #[diesel(sql_type = SqlUuid)]
    pub assignment_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub account_id: Uuid,
    #[diesel(sql_type = Text)]
    pub adam_id: String,
    #[diesel(sql_type = Text)]
    pub pricing_param: String,
    #[diesel(sql_type = Text)]
    pub license_type: LicenseType,
    /// Apple's target of the license: the serial (device licenses) or client user id (user).
    #[diesel(sql_type = Text)]
    pub target: String,
    #[diesel(sql_type = Text)]
    pub state: AssignmentState,
    #[diesel(sql_type = Nullable<Text>)]
    pub apple_event_id: Option<String>,
}

/// The target Apple lists for assignment `x` of subject `s` (its holder's own id, as the
/// dispatcher sends it).
const APPLE_TARGET: &str = "s.external_id";

/// The `ledger_only` items (still `active`, and still not in the mirror) and `stuck` items (still pending, associating or
/// revoking) of `account`, oldest drift first.
pub async fn ledger_side(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    adam_id: Option<&str>,
    pricing_param: Option<&str>,
) -> diesel::QueryResult<Vec<LedgerSide>> {
    diesel::sql_query(format!(
        "SELECT d.id AS drift_id, d.class, x.id AS assignment_id, x.account_id, x.adam_id,
                x.pricing_param, x.license_type, {APPLE_TARGET} AS target, x.state,
                x.apple_event_id
           FROM drift_items d
           JOIN assignments x ON x.id = d.assignment_id AND x.account_id = d.account_id
           JOIN subjects s ON s.id = x.subject_id
          WHERE d.account_id = $1
            AND ((d.class = 'ledger_only' AND x.state = 'active'
                  AND NOT EXISTS (SELECT 1 FROM apple_assignments m
                                   WHERE m.account_id = x.account_id AND m.adam_id = x.adam_id
                                     AND m.pricing_param = x.pricing_param
                                     AND m.license_type = x.license_type
                                     AND m.target = {APPLE_TARGET}))
              OR (d.class = 'stuck' AND x.state IN ('pending', 'associating', 'revoking')))
            AND ($2::text IS NULL OR d.adam_id = $2)
            AND ($3::text IS NULL OR d.pricing_param = $3)
          ORDER BY d.since, d.id"
    ))
    .bind::<SqlUuid, _>(account)
    .bind::<Nullable<Text>, _>(adam_id)
    .bind::<Nullable<Text>, _>(pricing_param)
    .load(conn)
    .await
}

/// A plan as stored.
#[derive(Clone, Debug, diesel::QueryableByName)]
pub struct PlanRow {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub space_id: String,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub account_id: Option<Uuid>,
    #[diesel(sql_type = Text)]
    pub action: PlanAction,
    #[diesel(sql_type = Jsonb)]
    pub options: serde_json::Value,
    #[diesel(sql_type = Text)]
    pub state: PlanState,
    #[diesel(sql_type = Text)]
    pub created_by: String,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub expires_at: DateTime<Utc>,
    /// Whether `expires_at` passed (read from the database's clock).
    #[diesel(sql_type = Bool)]
    pub expired: bool,
    #[diesel(sql_type = Integer)]
    pub cap: i32,
    #[diesel(sql_type = Integer)]
    pub candidates: i32,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub applied_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    pub applied_by: Option<String>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    pub outcome: Option<serde_json::Value>,
}

/// One item of a plan as stored, with the subject of its assignment when it has one.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, diesel::QueryableByName)]
pub struct ItemRow {
    #[diesel(sql_type = Integer)]
    pub seq: i32,
    #[diesel(sql_type = SqlUuid)]
    pub account_id: Uuid,
    #[diesel(sql_type = Text)]
    pub change: PlanChange,
    #[diesel(sql_type = Text)]
    pub adam_id: String,
    #[diesel(sql_type = Text)]
    pub pricing_param: String,
    #[diesel(sql_type = Text)]
    pub license_type: LicenseType,
    #[diesel(sql_type = Text)]
    pub target: String,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub assignment_id: Option<Uuid>,
    #[diesel(sql_type = Text)]
    pub reason: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub outcome: Option<ItemOutcome>,
    #[diesel(sql_type = Nullable<Text>)]
    pub outcome_reason: Option<String>,
    /// `kind:external_id` of the assignment's subject (ledger items); `None` for Apple's rows
    /// the ledger has no assignment for yet.
    #[diesel(sql_type = Nullable<Text>)]
    pub subject: Option<String>,
}

/// What a new plan is.
pub struct NewPlan<'a> {
    pub id: Uuid,
    pub space: &'a str,
    pub account: Option<Uuid>,
    pub action: PlanAction,
    pub options: serde_json::Value,
    pub created_by: &'a str,
    pub request_id: Option<&'a str>,
    pub cap: i32,
    pub candidates: i32,
}

const PLAN_COLUMNS: &str = "id, space_id, account_id, action, options, state, created_by,
    created_at, expires_at, expires_at <= now() AS expired, cap, candidates, applied_at,
    applied_by, outcome";

/// Inserts a plan (valid for an hour) and its items (`seq` from 1 in the order given).
pub async fn insert(
    conn: &mut AsyncPgConnection,
    plan: &NewPlan<'_>,
    items: &[ItemRow],
) -> diesel::QueryResult<PlanRow> {
    let row: PlanRow = diesel::sql_query(format!(
        "INSERT INTO plans (id, space_id, account_id, action, options, created_by, request_id,
                            expires_at, cap, candidates)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now() + interval '1 hour', $8, $9)
         RETURNING {PLAN_COLUMNS}"
    ))
    .bind::<SqlUuid, _>(plan.id)
    .bind::<Text, _>(plan.space)
    .bind::<Nullable<SqlUuid>, _>(plan.account)
    .bind::<Text, _>(plan.action)
    .bind::<Jsonb, _>(plan.options.clone())
    .bind::<Text, _>(plan.created_by)
    .bind::<Nullable<Text>, _>(plan.request_id)
    .bind::<Integer, _>(plan.cap)
    .bind::<Integer, _>(plan.candidates)
    .get_result(conn)
    .await?;
    if !items.is_empty() {
        let rows = serde_json::to_value(items).unwrap_or_default();
        diesel::sql_query(
            "INSERT INTO plan_items (plan_id, seq, account_id, change, adam_id, pricing_param,
                                     license_type, target, assignment_id, reason)
             SELECT $1, seq, account_id, change, adam_id, pricing_param, license_type, target,
                    assignment_id, reason
               FROM jsonb_to_recordset($2) AS t(seq integer, account_id uuid, change text,
                    adam_id text, pricing_param text, license_type text, target text,
                    assignment_id uuid, reason text)",
        )
        .bind::<SqlUuid, _>(plan.id)
        .bind::<Jsonb, _>(rows)
        .execute(conn)
        .await?;
    }
    Ok(row)
}

/// The plan `id` of `space`; with `lock`, locked for the rest of the transaction (an apply).
pub async fn find(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
    lock: bool,
) -> diesel::QueryResult<Option<PlanRow>> {
    let rows: Vec<PlanRow> = diesel::sql_query(format!(
        "SELECT {PLAN_COLUMNS} FROM plans WHERE space_id = $1 AND id = $2 {}",
        if lock { "FOR UPDATE" } else { "" }
    ))
    .bind::<Text, _>(space)
    .bind::<SqlUuid, _>(id)
    .load(conn)
    .await?;
    Ok(rows.into_iter().next())
}

/// The items of plan `id`, in order.
pub async fn items(conn: &mut AsyncPgConnection, id: Uuid) -> diesel::QueryResult<Vec<ItemRow>> {
    diesel::sql_query(
        "SELECT i.seq, i.account_id, i.change, i.adam_id, i.pricing_param, i.license_type,
                i.target, i.assignment_id, i.reason, i.outcome, i.outcome_reason,
                s.kind || ':' || s.external_id AS subject
           FROM plan_items i
           LEFT JOIN assignments x ON x.id = i.assignment_id
           LEFT JOIN subjects s ON s.id = x.subject_id
          WHERE i.plan_id = $1
          ORDER BY i.seq",
    )
    .bind::<SqlUuid, _>(id)
    .load(conn)
    .await
}

/// Records what applying did: each item's outcome (and the assignment an item created), the
/// plan's state, who applied it and the counts.
pub async fn mark_applied(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    applied_by: &str,
    items: &[ItemRow],
    outcome: &serde_json::Value,
) -> diesel::QueryResult<()> {
    let rows = serde_json::to_value(items).unwrap_or_default();
    diesel::sql_query(
        "UPDATE plan_items i
            SET outcome = t.outcome, outcome_reason = t.outcome_reason,
                assignment_id = COALESCE(i.assignment_id, t.assignment_id)
           FROM jsonb_to_recordset($2) AS t(seq integer, outcome text, outcome_reason text,
                                            assignment_id uuid)
          WHERE i.plan_id = $1 AND i.seq = t.seq",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Jsonb, _>(rows)
    .execute(conn)
    .await?;
    diesel::sql_query(
        "UPDATE plans SET state = 'applied', applied_at = now(), applied_by = $2, outcome = $3
          WHERE id = $1",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(applied_by)
    .bind::<Jsonb, _>(outcome.clone())
    .execute(conn)
    .await
    .map(|_| ())
}

#[derive(diesel::QueryableByName)]
struct Revocable {
    #[diesel(sql_type = Bool)]
    revocable: bool,
}

/// Whether Apple takes back licenses of the asset (`None`: the ledger has no such asset).
pub async fn asset_revocable(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    adam_id: &str,
    pricing_param: &str,
) -> diesel::QueryResult<Option<bool>> {
    let rows: Vec<Revocable> = diesel::sql_query(
        "SELECT revocable FROM assets WHERE account_id = $1 AND adam_id = $2 AND pricing_param = $3",
    )
    .bind::<SqlUuid, _>(account)
    .bind::<Text, _>(adam_id)
    .bind::<Text, _>(pricing_param)
    .load(conn)
    .await?;
    Ok(rows.into_iter().next().map(|r| r.revocable))
}

#[derive(diesel::QueryableByName)]
struct SpaceId {
    #[diesel(sql_type = Text)]
    id: String,
}

/// Takes the daily Reconcile's turn for this transaction: false when another replica holds it.
pub async fn daily_reconcile_turn(conn: &mut AsyncPgConnection) -> diesel::QueryResult<bool> {
    #[derive(diesel::QueryableByName)]
    struct Turn {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        turn: bool,
    }
    let row: Turn = diesel::sql_query(
        "SELECT pg_try_advisory_xact_lock(hashtext('vpp-broker daily reconcile')) AS turn",
    )
    .get_result(conn)
    .await?;
    Ok(row.turn)
}

/// Spaces with an account whose last Reconcile plan made by `actor` is older than a day (or
/// that never had one): the daily Reconcile's work.
pub async fn spaces_due_for_reconcile(
    conn: &mut AsyncPgConnection,
    actor: &str,
) -> diesel::QueryResult<Vec<String>> {
    let rows: Vec<SpaceId> = diesel::sql_query(
        "SELECT s.id FROM spaces s
          WHERE EXISTS (SELECT 1 FROM accounts a WHERE a.space_id = s.id)
            AND NOT EXISTS (SELECT 1 FROM plans p
                             WHERE p.space_id = s.id AND p.action = 'reconcile'
                               AND p.created_by = $1 AND p.created_at > now() - interval '1 day')
          ORDER BY s.id",
    )
    .bind::<Text, _>(actor)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}
