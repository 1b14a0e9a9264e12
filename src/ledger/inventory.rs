//! The license inventory's reads (`GET …/assets`): which assets a page holds, then the page's
//! figures, and one asset's daily movement.
//!
//! A page is read in two steps. [`page`] picks the page's assets in one statement over the
//! `assets` table. The default order without the `exhausted` and `min_usage` filters reads only
//! the distinct keys from the `assets_by_product (adam_id, pricing_param)` index from the
//! cursor on (`SELECT DISTINCT … ORDER BY … LIMIT`, keyset): with aggregates in that statement
//! the planner hashed the whole space instead (55 ms on 50 × 1,000 asset rows; ~1 ms this
//! way). Ordering by usage or availability, and the figure filters, aggregate the whole space
//! in one statement (the live count `held` and `foreign_assigned` are columns of `assets`, so
//! no assignment is read). [`figures`] then reads only the page's assets: their rows per
//! account, the counts of their assignments in transient states (the partial index
//! `assignments_transient_by_asset`; `active` is derived from the live count), and their
//! policies with the reservations still outstanding.
//!
//! The SQL availability expression repeats [`crate::domain::inventory`]'s arithmetic; the
//! domain computes the figures shown.

use chrono::{DateTime, NaiveDate, Utc};
use diesel::sql_types::{Array, BigInt, Bool, Date, Integer, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::domain::forecast::Day;
use crate::domain::inventory::{AssetProductType, AssetSort};

/// Whose assets, and how allocation treats each account.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub space: String,
    /// The accounts whose assets are listed and summed.
    pub accounts: Vec<Uuid>,
    /// Every account of the space, highest priority first (a reservation naming no account
    /// holds back from the first of them owning the asset).
    pub all_accounts: Vec<Uuid>,
    /// Accounts allocation skips whatever the asset.
    pub blocked: Vec<Uuid>,
    /// Accounts serving only assets that have a policy.
    pub needs_policy: Vec<Uuid>,
}

/// Filters of the list.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub product_type: Option<AssetProductType>,
    pub exhausted: Option<bool>,
    /// Usage of at least this many percent (assets owning nothing never match).
    pub min_usage: Option<i64>,
}

/// Where the previous page ended, in the order's terms.
#[derive(Clone, Debug)]
pub enum After {
    Asset {
        adam_id: String,
        pricing_param: String,
    },
    /// `usage_key` as [`PageKey::usage_key`] gave it (a decimal text, `-1` for no usage).
    Usage {
        usage_key: String,
        adam_id: String,
        pricing_param: String,
    },
    Available {
        available: i64,
        adam_id: String,
        pricing_param: String,
    },
}

/// One asset of a page, with its sort key.
#[derive(Clone, Debug, diesel::QueryableByName)]
pub struct PageKey {
    #[diesel(sql_type = Text)]
    pub adam_id: String,
    #[diesel(sql_type = Text)]
    pub pricing_param: String,
    /// `(held + foreign_assigned) / total` as an exact decimal text; `-1` when nothing is owned
    /// (and in the default order, which does not compute it).
    #[diesel(sql_type = Text)]
    pub usage_key: String,
    /// Licenses available now (only computed when the order or a filter needs it).
    #[diesel(sql_type = Nullable<BigInt>)]
    pub available: Option<i64>,
}

/// Whether a cursor's usage key is a decimal this module issued (else it would reach SQL).
pub fn valid_usage_key(key: &str) -> bool {
    let digits = key.strip_prefix('-').unwrap_or(key);
    let mut parts = digits.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next().unwrap_or("0");
    key.len() <= 64
        && !int.is_empty()
        && !frac.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// Holdbacks of outstanding reservations, per asset and account (SQL of [`page`]).
const HOLDBACK: &str = "hb AS (
     SELECT p.adam_id, p.pricing_param,
            COALESCE(e.account_id, (
                SELECT o.account_id FROM assets o
                  JOIN unnest($3::uuid[]) WITH ORDINALITY AS r(id, rank) ON r.id = o.account_id
                 WHERE o.adam_id = p.adam_id AND o.pricing_param = p.pricing_param
                 ORDER BY r.rank LIMIT 1)) AS account_id,
            count(*) AS n
       FROM distribution_policies p
       JOIN policy_entries e ON e.policy_id = p.id AND e.mode = 'reserved'
      WHERE p.space_id = $1
        AND NOT EXISTS (
            SELECT 1 FROM subjects s JOIN assignments a ON a.subject_id = s.id
             WHERE s.space_id = p.space_id AND s.kind = e.target_kind AND s.external_id = e.target
               AND a.adam_id = p.adam_id AND a.pricing_param = p.pricing_param
               AND a.state IN ('pending', 'associating', 'active'))
      GROUP BY 1, 2, 3
 )";

/// The assets of one page, in the order asked, after `after`.
pub async fn page(
    conn: &mut AsyncPgConnection,
    scope: &Scope,
    filter: &Filter,
    sort: AssetSort,
    after: Option<&After>,
    limit: i64,
) -> diesel::QueryResult<Vec<PageKey>> {
    if sort == AssetSort::Asset && filter.exhausted.is_none() && filter.min_usage.is_none() {
        return keys_in_order(conn, scope, filter, after, limit).await;
    }
    // Binds: $1 space, $2 accounts, $3 all accounts, $4 blocked, $5 needs_policy, $6 product
    // type, $7 min usage, $8 exhausted, $9 limit, $10.. the cursor.
    let needs_available = sort == AssetSort::Available || filter.exhausted.is_some();
    let (with, available, joins) = if needs_available {
        (
            format!("WITH {HOLDBACK},"),
            "sum(CASE WHEN s.account_id = ANY($4)
                            OR (s.account_id = ANY($5) AND dp.id IS NULL) THEN 0
                       ELSE GREATEST(0, s.apple_total - s.held - s.foreign_assigned
                                        - COALESCE(hb.n, 0)) END)::bigint",
            "LEFT JOIN hb ON hb.adam_id = s.adam_id AND hb.pricing_param = s.pricing_param
                         AND hb.account_id = s.account_id
              LEFT JOIN distribution_policies dp ON dp.space_id = $1 AND dp.adam_id = s.adam_id
                         AND dp.pricing_param = s.pricing_param",
        )
    } else {
        ("WITH".to_owned(), "NULL::bigint", "")
    };
    let mut inner_where = vec![
        "s.account_id = ANY($2)",
        "($6::text IS NULL OR s.product_type = $6)",
    ];
    let mut outer_where = vec![
        "($7::bigint IS NULL OR (total > 0 AND used * 100 >= $7 * total))",
        "($8::bool IS NULL OR (available = 0) = $8)",
    ];
    let order = match sort {
        AssetSort::Asset => {
            if after.is_some() {
                inner_where.push("(s.adam_id, s.pricing_param) > ($10, $11)");
            }
            "adam_id, pricing_param"
        }
        AssetSort::Usage => {
            if after.is_some() {
                outer_where.push(
                    "(usage_key < $10::numeric
                      OR (usage_key = $10::numeric AND (adam_id, pricing_param) > ($11, $12)))",
                );
            }
            // Qualified: the bare name would be the output column, the key as text.
            "keyed.usage_key DESC, adam_id, pricing_param"
        }
        AssetSort::Available => {
            if after.is_some() {
                outer_where.push("(available, adam_id, pricing_param) > ($10::bigint, $11, $12)");
            }
            "available, adam_id, pricing_param"
        }
    };
    let sql = format!(
        "{with} per AS (
             SELECT s.adam_id, s.pricing_param,
                    sum(s.apple_total)::bigint AS total,
                    sum(s.held + s.foreign_assigned)::bigint AS used,
                    {available} AS available
               FROM assets s
               {joins}
              WHERE {inner}
              GROUP BY s.adam_id, s.pricing_param
         ), keyed AS (
             SELECT adam_id, pricing_param, total, used, available,
                    CASE WHEN total > 0 THEN used::numeric / total ELSE -1 END AS usage_key
               FROM per
         )
         SELECT adam_id, pricing_param, usage_key::text AS usage_key, available
           FROM keyed
          WHERE {outer}
          ORDER BY {order}
          LIMIT $9",
        inner = inner_where.join(" AND "),
        outer = outer_where.join(" AND "),
    );
    let q = diesel::sql_query(sql)
        .into_boxed::<diesel::pg::Pg>()
        .bind::<Text, _>(scope.space.clone())
        .bind::<Array<diesel::sql_types::Uuid>, _>(scope.accounts.clone())
        .bind::<Array<diesel::sql_types::Uuid>, _>(scope.all_accounts.clone())
        .bind::<Array<diesel::sql_types::Uuid>, _>(scope.blocked.clone())
        .bind::<Array<diesel::sql_types::Uuid>, _>(scope.needs_policy.clone())
        .bind::<Nullable<Text>, _>(filter.product_type.map(|p| p.as_str().to_owned()))
        .bind::<Nullable<BigInt>, _>(filter.min_usage)
        .bind::<Nullable<Bool>, _>(filter.exhausted)
        .bind::<BigInt, _>(limit);
    let q = match after {
        None => q,
        Some(After::Asset {
            adam_id,
            pricing_param,
        }) => q
            .bind::<Text, _>(adam_id.clone())
            .bind::<Text, _>(pricing_param.clone()),
        Some(After::Usage {
            usage_key,
            adam_id,
            pricing_param,
        }) => q
            .bind::<Text, _>(usage_key.clone())
            .bind::<Text, _>(adam_id.clone())
            .bind::<Text, _>(pricing_param.clone()),
        Some(After::Available {
            available,
            adam_id,
            pricing_param,
        }) => q
            .bind::<BigInt, _>(*available)
            .bind::<Text, _>(adam_id.clone())
            .bind::<Text, _>(pricing_param.clone()),
    };
    q.load(conn).await
}

/// The default order without figure filters: the distinct keys from the index.
async fn keys_in_order(
    conn: &mut AsyncPgConnection,
    scope: &Scope,
    filter: &Filter,
    after: Option<&After>,
    limit: i64,
) -> diesel::QueryResult<Vec<PageKey>> {
    let (adam_id, pricing_param) = match after {
        Some(After::Asset {
            adam_id,
            pricing_param,
        }) => (Some(adam_id.as_str()), Some(pricing_param.as_str())),
        _ => (None, None),
    };
    let keyset = if adam_id.is_some() {
        "AND (s.adam_id, s.pricing_param) > ($3, $4)"
    } else {
        "AND $3::text IS NULL AND $4::text IS NULL"
    };
    diesel::sql_query(format!(
        "SELECT DISTINCT s.adam_id, s.pricing_param, '-1' AS usage_key, NULL::bigint AS available
           FROM assets s
          WHERE s.account_id = ANY($1) AND ($2::text IS NULL OR s.product_type = $2) {keyset}
          ORDER BY s.adam_id, s.pricing_param
          LIMIT $5"
    ))
    .bind::<Array<diesel::sql_types::Uuid>, _>(&scope.accounts)
    .bind::<Nullable<Text>, _>(filter.product_type.map(|p| p.as_str()))
    .bind::<Nullable<Text>, _>(adam_id)
    .bind::<Nullable<Text>, _>(pricing_param)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// One account's row of one asset.
#[derive(Clone, Debug, diesel::QueryableByName)]
pub struct AccountAsset {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub account_id: Uuid,
    #[diesel(sql_type = Text)]
    pub adam_id: String,
    #[diesel(sql_type = Text)]
    pub pricing_param: String,
    #[diesel(sql_type = Text)]
    pub product_type: AssetProductType,
    #[diesel(sql_type = Bool)]
    pub device_assignable: bool,
    #[diesel(sql_type = Bool)]
    pub revocable: bool,
    #[diesel(sql_type = Array<Nullable<Text>>)]
    pub supported_platforms: Vec<Option<String>>,
    #[diesel(sql_type = Integer)]
    pub apple_total: i32,
    #[diesel(sql_type = Integer)]
    pub apple_assigned: i32,
    #[diesel(sql_type = Integer)]
    pub apple_retired: i32,
    #[diesel(sql_type = Integer)]
    pub foreign_assigned: i32,
    #[diesel(sql_type = Integer)]
    pub held: i32,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub synced_at: Option<DateTime<Utc>>,
}

/// Assignments of one asset and account in one transient state (`pending`, `associating`,
/// `revoking`). Active ones are not counted: they are the asset row's `held` (the live count)
/// less the pending and associating ones, which keeps the read small however many licenses are
/// settled (the partial index `assignments_transient_by_asset` holds only transient rows).
#[derive(Clone, Debug, diesel::QueryableByName)]
pub struct StateCount {
    #[diesel(sql_type = Text)]
    pub adam_id: String,
    #[diesel(sql_type = Text)]
    pub pricing_param: String,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub account_id: Uuid,
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = BigInt)]
    pub n: i64,
}

/// One entry of a page asset's policy (a policy without entries comes as one row without
/// `mode`).
#[derive(Clone, Debug, diesel::QueryableByName)]
pub struct PolicyEntry {
    #[diesel(sql_type = Text)]
    pub adam_id: String,
    #[diesel(sql_type = Text)]
    pub pricing_param: String,
    #[diesel(sql_type = BigInt)]
    pub version: i64,
    #[diesel(sql_type = Nullable<Text>)]
    pub mode: Option<String>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Uuid>)]
    pub account_id: Option<Uuid>,
    /// Reservations: the subject already holds a live license of the asset.
    #[diesel(sql_type = Bool)]
    pub served: bool,
}

/// What the figures of a page's assets are computed from.
#[derive(Debug, Default)]
pub struct Figures {
    pub rows: Vec<AccountAsset>,
    pub states: Vec<StateCount>,
    pub policies: Vec<PolicyEntry>,
    /// When the scope is not the whole space: the space's highest-priority owner (adam id,
    /// pricing, account) of each asset with an outstanding reservation naming no account.
    pub first_owners: Vec<(String, String, Uuid)>,
    /// A12: how many wait in line per asset of the space (assets nobody waits for are left
    /// out).
    pub waiting: Vec<crate::ledger::waitlist::WaitingCount>,
}

/// Reads the rows and transient-state counts (of the scope's accounts) and the policies of
/// `keys` (adam id, pricing); the three statements go out together, pipelined on the
/// connection. When the scope is one account, also the space's first owner of each asset (a
/// reservation naming no account holds back from it). Selected by `adam_id = ANY` and `pricing_param = ANY`
/// (an index probe per adam id; a join on the pairs made the planner scan every asset row), so
/// rows of pairs not asked for may come too: callers look the asked pairs up.
pub async fn figures(
    conn: &mut AsyncPgConnection,
    scope: &Scope,
    keys: &[(String, String)],
) -> diesel::QueryResult<Figures> {
    let adams: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let pricings: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let rows_q = diesel::sql_query(format!(
        "SELECT s.account_id, s.adam_id, s.pricing_param, s.product_type, s.device_assignable,
                s.revocable, s.supported_platforms, s.apple_total, s.apple_assigned,
                s.apple_retired, s.foreign_assigned, s.held,
                {confirmed} AS synced_at
           FROM assets s
          WHERE s.adam_id = ANY($2) AND s.pricing_param = ANY($3) AND s.account_id = ANY($1)",
        confirmed = crate::ledger::assets::counts_confirmed_at("s")
    ))
    .bind::<Array<diesel::sql_types::Uuid>, _>(&scope.accounts)
    .bind::<Array<Text>, _>(&adams)
    .bind::<Array<Text>, _>(&pricings);
    let states_q = diesel::sql_query(
        "SELECT a.adam_id, a.pricing_param, a.account_id, a.state, count(*) AS n
           FROM assignments a
          WHERE a.adam_id = ANY($2) AND a.pricing_param = ANY($3) AND a.account_id = ANY($1)
            AND a.state IN ('pending', 'associating', 'revoking')
          GROUP BY a.adam_id, a.pricing_param, a.account_id, a.state",
    )
    .bind::<Array<diesel::sql_types::Uuid>, _>(&scope.accounts)
    .bind::<Array<Text>, _>(&adams)
    .bind::<Array<Text>, _>(&pricings);
    let policies_q = diesel::sql_query(
        "SELECT p.adam_id, p.pricing_param, p.version, e.mode, e.account_id,
                COALESCE(e.mode = 'reserved' AND EXISTS (
                    SELECT 1 FROM subjects s JOIN assignments a ON a.subject_id = s.id
                     WHERE s.space_id = p.space_id AND s.kind = e.target_kind
                       AND s.external_id = e.target
                       AND a.adam_id = p.adam_id AND a.pricing_param = p.pricing_param
                       AND a.state IN ('pending', 'associating', 'active')), false) AS served
           FROM distribution_policies p
           LEFT JOIN policy_entries e ON e.policy_id = p.id
          WHERE p.space_id = $1 AND p.adam_id = ANY($2) AND p.pricing_param = ANY($3)",
    )
    .bind::<Text, _>(&scope.space)
    .bind::<Array<Text>, _>(&adams)
    .bind::<Array<Text>, _>(&pricings);
    let waiting_q = diesel::sql_query(
        "SELECT adam_id, pricing_param, count(*) AS waiting FROM waitlist
          WHERE space_id = $1 AND adam_id = ANY($2) AND pricing_param = ANY($3)
          GROUP BY adam_id, pricing_param",
    )
    .bind::<Text, _>(&scope.space)
    .bind::<Array<Text>, _>(&adams)
    .bind::<Array<Text>, _>(&pricings);
    let shared: &AsyncPgConnection = conn;
    let (rows, states, policies, waiting) = futures_util::try_join!(
        rows_q.load::<AccountAsset>(&mut &*shared),
        states_q.load::<StateCount>(&mut &*shared),
        policies_q.load::<PolicyEntry>(&mut &*shared),
        waiting_q.load::<crate::ledger::waitlist::WaitingCount>(&mut &*shared),
    )?;
    // Only assets with an outstanding reservation naming no account need their first owner
    // (a sort of every owner's row by text took 20 ms for 200 assets).
    let (need_adams, need_pricings): (Vec<&str>, Vec<&str>) = policies
        .iter()
        .filter(|e| e.mode.as_deref() == Some("reserved") && e.account_id.is_none() && !e.served)
        .map(|e| (e.adam_id.as_str(), e.pricing_param.as_str()))
        .unzip();
    let first_owners = if scope.accounts.len() < scope.all_accounts.len() && !need_adams.is_empty()
    {
        first_owners(conn, &scope.all_accounts, &need_adams, &need_pricings).await?
    } else {
        Vec::new()
    };
    Ok(Figures {
        rows,
        states,
        policies,
        first_owners,
        waiting,
    })
}

/// The first of `accounts` (in their order) owning each asset.
async fn first_owners(
    conn: &mut AsyncPgConnection,
    accounts: &[Uuid],
    adams: &[&str],
    pricings: &[&str],
) -> diesel::QueryResult<Vec<(String, String, Uuid)>> {
    #[derive(diesel::QueryableByName)]
    struct Owner {
        #[diesel(sql_type = Text)]
        adam_id: String,
        #[diesel(sql_type = Text)]
        pricing_param: String,
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        account_id: Uuid,
    }
    let found: Vec<Owner> = diesel::sql_query(
        "SELECT DISTINCT ON (s.adam_id, s.pricing_param) s.adam_id, s.pricing_param, s.account_id
           FROM assets s
           JOIN unnest($1::uuid[]) WITH ORDINALITY AS r(id, rank) ON r.id = s.account_id
          WHERE s.adam_id = ANY($2) AND s.pricing_param = ANY($3)
          ORDER BY s.adam_id, s.pricing_param, r.rank",
    )
    .bind::<Array<diesel::sql_types::Uuid>, _>(accounts)
    .bind::<Array<Text>, _>(adams)
    .bind::<Array<Text>, _>(pricings)
    .load(conn)
    .await?;
    Ok(found
        .into_iter()
        .map(|o| (o.adam_id, o.pricing_param, o.account_id))
        .collect())
}

/// One asset's movement in the space per day since `since` (UTC days), and the day of its
/// first allocation ever. Allocations are assignments created that day that did not fail (a
/// failed one never took a license; its replacement counts); revocations are those asked
/// that day (a pending license dropped counts as allocated and revoked). A wait-list entry
/// (A12) counts only once served (its `rule` is then the deciding one; it counts on the day it
/// joined the line): one still waiting, cancelled (`revoked` with rule `waiting`) or ended
/// `failed` never took a license, so it is neither an allocation nor a revocation. Both read
/// the index `assignments_by_asset_created`.
pub async fn daily(
    conn: &mut AsyncPgConnection,
    space: &str,
    adam_id: &str,
    pricing_param: &str,
    since: NaiveDate,
) -> diesel::QueryResult<(Vec<Day>, Option<NaiveDate>)> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = Date)]
        day: NaiveDate,
        #[diesel(sql_type = BigInt)]
        allocations: i64,
        #[diesel(sql_type = BigInt)]
        revocations: i64,
    }
    #[derive(diesel::QueryableByName)]
    struct First {
        #[diesel(sql_type = Nullable<Date>)]
        first: Option<NaiveDate>,
    }
    let days_q = diesel::sql_query(
        "SELECT day, sum(allocations)::bigint AS allocations, sum(revocations)::bigint AS revocations
           FROM (
             SELECT (created_at AT TIME ZONE 'UTC')::date AS day, 1 AS allocations, 0 AS revocations
               FROM assignments
              WHERE space_id = $1 AND adam_id = $2 AND pricing_param = $3
                AND created_at >= ($4::date)::timestamp AT TIME ZONE 'UTC'
                AND state NOT IN ('failed', 'waiting') AND rule <> 'waiting'
             UNION ALL
             SELECT (revocation_requested_at AT TIME ZONE 'UTC')::date, 0, 1
               FROM assignments
              WHERE space_id = $1 AND adam_id = $2 AND pricing_param = $3
                AND revocation_requested_at >= ($4::date)::timestamp AT TIME ZONE 'UTC'
                AND rule <> 'waiting'
           ) m
          GROUP BY day",
    )
    .bind::<Text, _>(space)
    .bind::<Text, _>(adam_id)
    .bind::<Text, _>(pricing_param)
    .bind::<Date, _>(since);
    let first_q = diesel::sql_query(
        "SELECT (min(created_at) AT TIME ZONE 'UTC')::date AS first
           FROM assignments
          WHERE space_id = $1 AND adam_id = $2 AND pricing_param = $3
            AND state NOT IN ('failed', 'waiting') AND rule <> 'waiting'",
    )
    .bind::<Text, _>(space)
    .bind::<Text, _>(adam_id)
    .bind::<Text, _>(pricing_param);
    let shared: &AsyncPgConnection = conn;
    let (rows, first) = futures_util::try_join!(
        days_q.load::<Row>(&mut &*shared),
        first_q.get_result::<First>(&mut &*shared),
    )?;
    Ok((
        rows.into_iter()
            .map(|r| Day {
                day: r.day,
                allocations: r.allocations,
                revocations: r.revocations,
            })
            .collect(),
        first.first,
    ))
}

#[cfg(test)]
mod tests {
    use super::valid_usage_key;

    #[test]
    fn usage_keys_are_plain_decimals() {
        for ok in ["-1", "0", "0.5000000000000000", "1.0000000000000000"] {
            assert!(valid_usage_key(ok), "{ok}");
        }
        for bad in ["", "-", "1.", ".5", "1e5", "NaN", "1;drop", "0.5.5", "+1"] {
            assert!(!valid_usage_key(bad), "{bad}");
        }
    }
}
