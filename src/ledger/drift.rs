//! The drift report (T11, docs/sync.md): the differences between the ledger and Apple's side as
//! the last sync read it (the mirror, `apple_assignments`, and the asset counts), kept in
//! `drift_items`.
//!
//! # Recomputing ([`recompute`])
//! Called by the sync inside its apply transaction, once the mirror and the asset counts are up
//! to date. Set-based, a fixed handful of statements whatever the size, so it stays fast at
//! 100,000 mirror rows: one `INSERT … SELECT` per class collects what is found into a session
//! temporary table (`drift_found`, indexed on the item key), then three statements merge it
//! into `drift_items`: delete the account's items no longer found, insert the new ones
//! (`since` = now, or for `apple_only` the mirror row's `first_seen_at`; `found_by_run` = the
//! run), update the facts (`details`, `assignment_id`) of those whose facts changed. Items
//! still found keep their id, `since` and `found_by_run` (the run that first found them) and are
//! not written at all, so a sync that finds what the last one found writes nothing.
//!
//! The per-license classes (`apple_only`, `ledger_only`) are recomputed only for the assets of
//! the run's scope ([`crate::ledger::drift_scope`]: mirror or ledger changed since the last
//! report); the items of the other assets are kept as they are, and `count_mismatch` counts
//! their kept `apple_only` items. A sync of an unchanged location recomputes no license.
//!
//! Why a temporary table and not one CTE per class: a CTE has no statistics, and the anti-join
//! of `drift_items` against a CTE PostgreSQL estimated at one row ran as a nested loop over
//! 50,000 × 50,000 rows (nine minutes). Against an indexed table the worst plan is one index
//! probe per row. Measured with 100,000 mirror rows (50,000 held by the ledger, 50,000
//! `apple_only`) on the shared, loaded 2-core test machine: about 1.6 s to find the items, 1 s
//! for each of the delete and update walks, 5 s for the first insert of 50,000 items; the
//! machine had a load of 10, so expect a fraction of that on a quiet one.
//!
//! The read happened before the apply, so a ledger row changed at or after `read_started_at`
//! is never reported by that run:
//! - `apple_only`: a mirror row whose subject (the space's subject of kind `license_type` and
//!   external id `target`) has no live assignment (pending, associating, active, revoking) of the
//!   account for the asset — unless an assignment of that subject and asset changed at or after
//!   the read started (a license allocated or released while Apple was being read).
//! - `ledger_only` (only after a stable full read: `full_and_stable`; otherwise the existing
//!   items stay as they are, since an incremental read cannot see removals): an `active`
//!   assignment with no mirror row, last changed before the read started.
//! - `stuck`: pending, associating or revoking for longer than `stuck_after`; `details.state`.
//!   The key has no assignment id: of two assignments of one subject and asset stuck at once (a
//!   release still in flight and a new allocation), the older is reported.
//! - `overcommitted` (per asset): Apple's total below what the ledger holds.
//! - `count_mismatch` (per asset, only for assets whose counts the read covered, i.e. read at or
//!   after `read_started_at` ([`counts_confirmed_at`](crate::ledger::assets::counts_confirmed_at));
//!   the items of the other assets stay as they are): Apple's `assigned` differs from the rows Apple lists, or the rows Apple lists differ
//!   from the ledger at Apple (active + revoking) plus the `apple_only` rows. The second
//!   comparison is skipped for an asset whose ledger is moving — an assignment in flight
//!   (pending, associating, revoking: Apple may or may not list it yet) or changed since the
//!   read started — so a sync never reports a mismatch that is only the dispatcher at work;
//!   `stuck` reports in-flight work that does not finish.
//!
//! # Reading
//! [`list`] pages an account's or a space's items (keyset on `id`, ascending) with optional
//! filters; [`summary`] counts them per class; [`last_syncs`] finds each account's last finished
//! sync run.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Double, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::drift_items;
use crate::domain::reconciliation::{DriftClass, DriftCounts, SyncKind, SyncState};
use crate::ledger::drift_scope::{AssetKeys, Scope, in_keys};

/// The items this recompute found, before they are merged into `drift_items`: a temporary
/// table of the session (created once per connection, emptied by every recompute) with an index
/// on the items' key. Merging through it rather than through one CTE per class keeps every plan
/// bounded whatever PostgreSQL estimates: a CTE has no statistics, and an anti-join of
/// `drift_items` against a CTE estimated at one row became a nested loop over 50,000 × 50,000
/// rows (minutes); against an indexed table the worst plan is one index probe per row.
const FOUND_TABLE: &str = "
    DO $$ BEGIN
        IF to_regclass('pg_temp.drift_found') IS NULL THEN
            CREATE TEMP TABLE drift_found (
                class         text NOT NULL,
                adam_id       text NOT NULL,
                pricing_param text NOT NULL,
                license_type  text,
                target        text,
                assignment_id uuid,
                since         timestamptz NOT NULL,
                details       jsonb NOT NULL
            );
            CREATE INDEX drift_found_key ON drift_found
                (class, adam_id, pricing_param, COALESCE(license_type, ''), COALESCE(target, ''));
        END IF;
    END $$;
    TRUNCATE drift_found;";

const INSERT_FOUND: &str = "INSERT INTO drift_found (class, adam_id, pricing_param, license_type, \
    target, assignment_id, since, details) ";

/// Mirror rows no live assignment holds ($1: the account, $2: the read's start), of the assets
/// `in_scope` (an SQL condition on `m`).
fn apple_only(in_scope: &str) -> String {
    format!(
        "SELECT 'apple_only', m.adam_id, m.pricing_param, m.license_type, m.target, NULL::uuid,
                m.first_seen_at, '{{}}'::jsonb
           FROM apple_assignments m
           LEFT JOIN subjects s
                  ON s.space_id = (SELECT space_id FROM accounts WHERE id = $1)
                 AND s.kind = m.license_type AND s.external_id = m.target
          WHERE m.account_id = $1 AND {in_scope}
            AND NOT EXISTS (
                SELECT 1 FROM assignments a
                 WHERE a.subject_id = s.id AND a.account_id = $1 AND a.adam_id = m.adam_id
                   AND a.pricing_param = m.pricing_param AND a.license_type = m.license_type
                   AND (a.state IN ('pending', 'associating', 'active', 'revoking')
                        OR a.updated_at >= $2))"
    )
}

/// Active assignments Apple does not list ($1: the account, $2: the read's start), of the
/// assets `in_scope` (an SQL condition on `a`).
fn ledger_only(in_scope: &str) -> String {
    format!(
        "SELECT DISTINCT ON (a.adam_id, a.pricing_param, a.license_type, s.external_id)
                'ledger_only', a.adam_id, a.pricing_param, a.license_type, s.external_id, a.id,
                now(), '{{}}'::jsonb
           FROM assignments a JOIN subjects s ON s.id = a.subject_id
          WHERE a.account_id = $1 AND a.state = 'active' AND a.updated_at < $2 AND {in_scope}
            AND NOT EXISTS (
                SELECT 1 FROM apple_assignments m
                 WHERE m.account_id = $1 AND m.adam_id = a.adam_id
                   AND m.pricing_param = a.pricing_param AND m.license_type = a.license_type
                   AND m.target = s.external_id)
          ORDER BY a.adam_id, a.pricing_param, a.license_type, s.external_id, a.updated_at"
    )
}

/// Assignments in flight for longer than the threshold ($1: the account, $2: seconds).
const STUCK: &str = "
     SELECT DISTINCT ON (a.adam_id, a.pricing_param, a.license_type, s.external_id)
            'stuck', a.adam_id, a.pricing_param, a.license_type, s.external_id, a.id, now(),
            jsonb_build_object('state', a.state)
       FROM assignments a JOIN subjects s ON s.id = a.subject_id
      WHERE a.account_id = $1 AND a.state IN ('pending', 'associating', 'revoking')
        AND a.updated_at < now() - make_interval(secs => $2)
      ORDER BY a.adam_id, a.pricing_param, a.license_type, s.external_id, a.updated_at";

/// Assets whose Apple total is below what the ledger holds ($1: the account).
const OVERCOMMITTED: &str = "
     SELECT 'overcommitted', x.adam_id, x.pricing_param, NULL, NULL, NULL::uuid, now(),
            jsonb_build_object('apple_total', x.apple_total, 'held', x.held)
       FROM assets x
      WHERE x.account_id = $1 AND x.apple_total < x.held";

/// Assets whose counts disagree ($1: the account, $2: the read's start), of the assets
/// `in_counted` (SQL conditions on an alias, see [`recompute`]); `kept_only` selects the kept
/// `apple_only` items (of `d`) to count besides this run's (assets in the count scope but out
/// of the per-license scope). Runs after the `apple_only` rows are found: it counts them.
fn count_mismatch(in_counted: &dyn Fn(&str) -> String, kept_only: &str) -> String {
    let (in_m, in_a, in_x) = (in_counted("m"), in_counted("a"), in_counted("x"));
    let confirmed = crate::ledger::assets::counts_confirmed_at("x");
    format!(
        "WITH listed AS (
             SELECT m.adam_id, m.pricing_param, count(*) AS n
               FROM apple_assignments m WHERE m.account_id = $1 AND {in_m}
              GROUP BY m.adam_id, m.pricing_param
         ), ledger AS (
             SELECT a.adam_id, a.pricing_param,
                    count(*) FILTER (WHERE a.state IN ('active', 'revoking')) AS at_apple,
                    bool_or(a.state IN ('pending', 'associating', 'revoking')
                            OR a.updated_at >= $2) AS moving
               FROM assignments a
              WHERE a.account_id = $1 AND {in_a}
                AND (a.state IN ('pending', 'associating', 'active', 'revoking')
                     OR a.updated_at >= $2)
              GROUP BY a.adam_id, a.pricing_param
         ), only_ AS (
             -- This run's apple_only items, and the kept ones of the assets out of its scope.
             SELECT adam_id, pricing_param, count(*) AS n
               FROM (SELECT adam_id, pricing_param FROM drift_found WHERE class = 'apple_only'
                     UNION ALL
                     SELECT d.adam_id, d.pricing_param FROM drift_items d
                      WHERE d.account_id = $1 AND d.class = 'apple_only' AND {kept_only}) o
              GROUP BY adam_id, pricing_param
         ), counted AS (
             SELECT x.adam_id, x.pricing_param, x.apple_assigned::bigint AS apple_assigned,
                    COALESCE(l.n, 0) AS listed, COALESCE(g.at_apple, 0) AS at_apple,
                    COALESCE(o.n, 0) AS apple_only, COALESCE(g.moving, false) AS moving
               FROM assets x
               LEFT JOIN listed l ON l.adam_id = x.adam_id AND l.pricing_param = x.pricing_param
               LEFT JOIN ledger g ON g.adam_id = x.adam_id AND g.pricing_param = x.pricing_param
               LEFT JOIN only_ o ON o.adam_id = x.adam_id AND o.pricing_param = x.pricing_param
              WHERE x.account_id = $1 AND {confirmed} >= $2 AND {in_x}
         )
         SELECT 'count_mismatch', c.adam_id, c.pricing_param, NULL, NULL, NULL::uuid, now(),
                jsonb_build_object('apple_assigned', c.apple_assigned, 'apple_listed', c.listed,
                                   'ledger_at_apple', c.at_apple, 'apple_only', c.apple_only)
           FROM counted c
          -- Judged only while the asset's ledger is still: a license released or allocated
          -- since the read moves Apple's counts, the mirror (a confirmed release leaves it at
          -- once) and the ledger at different moments.
          WHERE NOT c.moving
            AND (c.apple_assigned <> c.listed OR c.listed <> c.at_apple + c.apple_only)"
    )
}

/// The key of a drift item, `d` against `f` (as in the unique index `drift_items_key`).
const SAME_KEY: &str = "f.class = d.class AND f.adam_id = d.adam_id \
    AND f.pricing_param = d.pricing_param \
    AND COALESCE(f.license_type, '') = COALESCE(d.license_type, '') \
    AND COALESCE(f.target, '') = COALESCE(d.target, '')";

/// The account's items of `class` no longer found ($1: the account; `within`: an SQL condition
/// on `d`, the items that were recomputed).
fn prune(class: &str, within: &str) -> String {
    format!(
        "DELETE FROM drift_items d
          WHERE d.account_id = $1 AND d.class = '{class}' AND {within}
            AND NOT EXISTS (SELECT 1 FROM drift_found f WHERE {SAME_KEY})"
    )
}

/// New items ($1: the account, $2: the run). `ON CONFLICT DO NOTHING`: an item written since
/// the anti-join read (by nobody today) is left as it is.
fn insert_new() -> String {
    format!(
        "INSERT INTO drift_items (account_id, space_id, class, adam_id, pricing_param,
                                  license_type, target, assignment_id, since, found_by_run,
                                  details)
         SELECT $1, a.space_id, f.class, f.adam_id, f.pricing_param, f.license_type, f.target,
                f.assignment_id, f.since, $2, f.details
           FROM drift_found f JOIN accounts a ON a.id = $1
          WHERE NOT EXISTS (SELECT 1 FROM drift_items d WHERE d.account_id = $1 AND {SAME_KEY})
         ON CONFLICT (account_id, class, adam_id, pricing_param, COALESCE(license_type, ''),
                      COALESCE(target, ''))
         DO NOTHING"
    )
}

/// Items still found whose facts changed ($1: the account); the others are not written.
fn update_changed() -> String {
    format!(
        "UPDATE drift_items d SET details = f.details, assignment_id = f.assignment_id
           FROM drift_found f
          WHERE d.account_id = $1 AND {SAME_KEY}
            AND (d.details, d.assignment_id) IS DISTINCT FROM (f.details, f.assignment_id)"
    )
}

/// What a recompute works from (see [`recompute`]).
#[derive(Clone, Copy, Debug)]
pub struct Recompute<'a> {
    /// The sync run that read Apple (kept as `found_by_run` of the items it finds first).
    pub run: Uuid,
    /// When its read started; ledger rows changed since are not reported.
    pub read_started_at: DateTime<Utc>,
    /// Pending / associating / revoking for longer than this is `stuck`.
    pub stuck_after: std::time::Duration,
    /// The read was full and Apple's `versionId` did not move, so a missing mirror row means
    /// Apple does not list it (`ledger_only` is judged).
    pub full_and_stable: bool,
    /// The run read the asset list (else no `count_mismatch` is judged).
    pub assets_read: bool,
    /// The assets whose per-license items (`apple_only`, `ledger_only`) and counts are judged
    /// again; the others keep theirs ([`crate::ledger::drift_scope`]).
    pub scope: &'a Scope,
}

/// Recomputes the account's drift report (see the module doc) and returns its items per class.
/// Runs inside the caller's transaction when there is one.
pub async fn recompute(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    what: &Recompute<'_>,
) -> QueryResult<DriftCounts> {
    let Recompute {
        run,
        read_started_at,
        stuck_after,
        full_and_stable,
        assets_read,
        scope,
    } = *what;
    use diesel_async::SimpleAsyncConnection;
    conn.batch_execute(FOUND_TABLE).await?;
    let empty = AssetKeys::default();
    let licenses = scope.assets.as_ref();
    // A run that did not read the asset list judges no count (their items stay).
    let counted = if assets_read {
        scope.counts.as_ref()
    } else {
        Some(&empty)
    };
    let ledger = scope.ledger_only();
    // Every scoped statement binds the same parameters: $1 the account, $2 the read's start,
    // $3/$4 the per-license scope, $5/$6 the count scope (empty arrays for "all").
    let (lic_keys, cnt_keys) = (licenses.unwrap_or(&empty), counted.unwrap_or(&empty));
    let cond = |keys: Option<&AssetKeys>, a: usize, t: &str| match keys {
        None => "true".to_owned(),
        Some(_) => in_keys(
            &format!("{t}.adam_id"),
            &format!("{t}.pricing_param"),
            a,
            a + 1,
        ),
    };
    let none = |keys: Option<&AssetKeys>| keys.is_some_and(AssetKeys::is_empty);
    macro_rules! scoped {
        ($sql:expr) => {
            diesel::sql_query($sql)
                .bind::<SqlUuid, _>(account)
                .bind::<Timestamptz, _>(read_started_at)
                .bind::<Array<Text>, _>(&lic_keys.adam_ids)
                .bind::<Array<Text>, _>(&lic_keys.pricing_params)
                .bind::<Array<Text>, _>(&cnt_keys.adam_ids)
                .bind::<Array<Text>, _>(&cnt_keys.pricing_params)
                .execute(conn)
                .await?
        };
    }
    if !none(licenses) {
        scoped!(format!(
            "{INSERT_FOUND}{}",
            apple_only(&cond(licenses, 3, "m"))
        ));
    }
    if full_and_stable && !none(ledger) {
        scoped!(format!(
            "{INSERT_FOUND}{}",
            ledger_only(&cond(ledger, 3, "a"))
        ));
    }
    diesel::sql_query(format!("{INSERT_FOUND}{STUCK}"))
        .bind::<SqlUuid, _>(account)
        .bind::<Double, _>(stuck_after.as_secs_f64())
        .execute(conn)
        .await?;
    diesel::sql_query(format!("{INSERT_FOUND}{OVERCOMMITTED}"))
        .bind::<SqlUuid, _>(account)
        .execute(conn)
        .await?;
    if !none(counted) {
        // Kept apple_only items are counted for the assets in the count scope whose
        // per-license items were not recomputed.
        let kept_only = match licenses {
            None => "false".to_owned(),
            Some(_) => format!(
                "{} AND NOT {}",
                cond(counted, 5, "d"),
                cond(licenses, 3, "d")
            ),
        };
        scoped!(format!(
            "{INSERT_FOUND}{}",
            count_mismatch(&|t| cond(counted, 5, t), &kept_only)
        ));
    }
    // Fresh statistics for the found items (a temporary table is never analysed by
    // autovacuum): the merge below then joins by hash instead of probing per row.
    conn.batch_execute("ANALYZE drift_found").await?;
    if !none(licenses) {
        scoped!(prune("apple_only", &cond(licenses, 3, "d")));
    }
    if full_and_stable && !none(ledger) {
        scoped!(prune("ledger_only", &cond(ledger, 3, "d")));
    }
    scoped!(prune("stuck", "true"));
    scoped!(prune("overcommitted", "true"));
    if !none(counted) {
        // Count mismatches of assets the read did not cover stay as they are.
        scoped!(prune(
            "count_mismatch",
            &format!(
                "{} AND NOT EXISTS (
                    SELECT 1 FROM assets x
                     WHERE x.account_id = $1 AND x.adam_id = d.adam_id
                       AND x.pricing_param = d.pricing_param
                       AND ({confirmed} IS NULL OR {confirmed} < $2))",
                cond(counted, 5, "d"),
                confirmed = crate::ledger::assets::counts_confirmed_at("x"),
            )
        ));
    }
    diesel::sql_query(insert_new())
        .bind::<SqlUuid, _>(account)
        .bind::<SqlUuid, _>(run)
        .execute(conn)
        .await?;
    diesel::sql_query(update_changed())
        .bind::<SqlUuid, _>(account)
        .execute(conn)
        .await?;
    conn.batch_execute("TRUNCATE drift_found").await?;
    counts(conn, None, Some(account)).await
}

#[derive(QueryableByName)]
struct ClassCount {
    #[diesel(sql_type = Text)]
    class: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Items per class of one account, or of the space's accounts (`account` none).
async fn counts(
    conn: &mut AsyncPgConnection,
    space: Option<&str>,
    account: Option<Uuid>,
) -> QueryResult<DriftCounts> {
    let rows: Vec<ClassCount> =
        match (space, account) {
            (_, Some(account)) => {
                diesel::sql_query(
                    "SELECT class, count(*) AS n FROM drift_items WHERE account_id = $1
                    AND ($2::text IS NULL OR space_id = $2) GROUP BY class",
                )
                .bind::<SqlUuid, _>(account)
                .bind::<diesel::sql_types::Nullable<Text>, _>(space)
                .load(conn)
                .await?
            }
            (space, None) => diesel::sql_query(
                "SELECT class, count(*) AS n FROM drift_items WHERE space_id = $1 GROUP BY class",
            )
            .bind::<Text, _>(space.unwrap_or_default())
            .load(conn)
            .await?,
        };
    let mut counts = DriftCounts::default();
    for row in rows {
        if let Ok(class) = row.class.parse::<DriftClass>() {
            counts.add(class, row.n);
        }
    }
    Ok(counts)
}

/// One drift item as stored.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = drift_items)]
pub struct DriftRow {
    pub id: i64,
    pub account_id: Uuid,
    pub space_id: String,
    pub class: DriftClass,
    pub adam_id: String,
    pub pricing_param: String,
    pub license_type: Option<String>,
    pub target: Option<String>,
    pub assignment_id: Option<Uuid>,
    pub since: DateTime<Utc>,
    pub found_by_run: Uuid,
    pub details: serde_json::Value,
}

/// What a listing reads: the space, optionally one of its accounts, and the filters.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub account: Option<Uuid>,
    pub class: Option<DriftClass>,
    pub adam_id: Option<String>,
    pub pricing_param: Option<String>,
}

/// The space's (or the account's) items matching `filter` with ids above `after`, in id
/// order, at most `limit`. Walks `drift_items_by_space (space_id, id)`.
pub async fn list(
    conn: &mut AsyncPgConnection,
    space: &str,
    filter: &ListFilter,
    after: Option<i64>,
    limit: i64,
) -> QueryResult<Vec<DriftRow>> {
    let mut q = drift_items::table
        .filter(drift_items::space_id.eq(space.to_owned()))
        .select(DriftRow::as_select())
        .order(drift_items::id)
        .limit(limit)
        .into_boxed();
    if let Some(a) = filter.account {
        q = q.filter(drift_items::account_id.eq(a));
    }
    if let Some(c) = filter.class {
        q = q.filter(drift_items::class.eq(c));
    }
    if let Some(a) = &filter.adam_id {
        q = q.filter(drift_items::adam_id.eq(a.clone()));
    }
    if let Some(p) = &filter.pricing_param {
        q = q.filter(drift_items::pricing_param.eq(p.clone()));
    }
    if let Some(after) = after {
        q = q.filter(drift_items::id.gt(after));
    }
    q.load(conn).await
}

/// Items per class of the space, or of one of its accounts.
pub async fn summary(
    conn: &mut AsyncPgConnection,
    space: &str,
    account: Option<Uuid>,
) -> QueryResult<DriftCounts> {
    counts(conn, Some(space), account).await
}

/// The last finished run (succeeded or failed) of a sync of an account.
#[derive(Clone, Debug)]
pub struct LastSync {
    pub account_id: Uuid,
    pub id: Uuid,
    pub kind: SyncKind,
    pub state: SyncState,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The last finished sync run of each of `accounts` that has one (an account never synced has
/// none), newest by request time; one index walk per account (`sync_runs_by_account`).
pub async fn last_syncs(
    conn: &mut AsyncPgConnection,
    accounts: &[Uuid],
) -> QueryResult<Vec<LastSync>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = SqlUuid)]
        account_id: Uuid,
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
        #[diesel(sql_type = Text)]
        kind: SyncKind,
        #[diesel(sql_type = Text)]
        state: SyncState,
        #[diesel(sql_type = diesel::sql_types::Nullable<Timestamptz>)]
        finished_at: Option<DateTime<Utc>>,
    }
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT r.account_id, r.id, r.kind, r.state, r.finished_at
           FROM unnest($1::uuid[]) AS acc(id)
           CROSS JOIN LATERAL (
                SELECT account_id, id, kind, state, finished_at FROM sync_runs
                 WHERE account_id = acc.id AND finished_at IS NOT NULL
                 ORDER BY requested_at DESC LIMIT 1) r",
    )
    .bind::<diesel::sql_types::Array<SqlUuid>, _>(accounts)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| LastSync {
            account_id: r.account_id,
            id: r.id,
            kind: r.kind,
            state: r.state,
            finished_at: r.finished_at,
        })
        .collect())
}
