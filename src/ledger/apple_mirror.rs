//! Apple's side of an account as the last sync read it (`apple_assignments`, the mirror), and
//! what a sync writes from it: Apple's counts per asset, assets that appeared or vanished,
//! `foreign_assigned`, the users' statuses, the account's versionIds (docs/sync.md, Applying).
//!
//! Decisions:
//! - **Staged, then compared** ([`replace`]): the read's rows go into a temporary table in
//!   chunks of `UNNEST` arrays ([`CHUNK`] rows per statement: 100,000 assignments are 20
//!   statements, and no statement's parameters grow without bound); only rows Apple newly lists
//!   are inserted and, after a stable full read, only rows it no longer lists are deleted. An
//!   unchanged location's full sync rewrites nothing (rewriting every row to mark it seen cost
//!   more PostgreSQL CPU than the first sync that inserted them).
//! - **Idempotent**: applying the same read twice changes nothing more.
//! - **`foreign_assigned`** per asset = mirror rows no live ledger assignment (pending,
//!   associating, active, revoking) of the same subject holds, leaving out subjects whose ledger
//!   row changed after the read started (the read cannot know about them). One statement for
//!   the account, run after its asset rows are locked, so no allocation commits between the
//!   count and the write (an allocation moves a subject Apple already lists from
//!   `foreign_assigned` to `held`: counted once).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Bool, Integer, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::ledger::assets::AppleAsset;
use crate::ledger::drift_scope::{AssetKeys, in_keys};

/// Rows per upsert statement.
pub const CHUNK: usize = 5000;

/// Notes the assets whose mirror rows a statement changed (`mirror_assets.changed_at`, read by
/// [`crate::ledger::drift_scope`]) and forgets their digest: the head of an `INSERT … SELECT`
/// inside a data-modifying CTE.
const NOTE_CHANGES: &str = "INSERT INTO mirror_assets (account_id, adam_id, pricing_param)";
/// The tail of [`NOTE_CHANGES`]' statement.
const NOTED: &str = "ON CONFLICT (account_id, adam_id, pricing_param) \
    DO UPDATE SET changed_at = now(), digest = NULL";

#[derive(QueryableByName)]
struct Counted {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// One assignment Apple lists.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MirrorRow {
    pub adam_id: String,
    pub pricing_param: String,
    /// `device` or `user`.
    pub license_type: &'static str,
    /// Serial number or client user id.
    pub target: String,
}

/// The read's rows, staged for the statements that compare them with the mirror: a temporary
/// table (no WAL, emptied at commit), analysed once filled so the comparisons are hash joins.
const SEEN_TABLE: &str = "CREATE TEMP TABLE IF NOT EXISTS sync_seen (
        adam_id text NOT NULL, pricing_param text NOT NULL, license_type text NOT NULL,
        target text NOT NULL) ON COMMIT DELETE ROWS";

/// A digest of a set of mirror rows of one asset: the sum (mod 2^128) of each row's SHA-256
/// (first 16 bytes, of `license_type` and `target`) and the count. Order-independent, so it is
/// computed from a read in any order; stored as 24 bytes (`mirror_assets.digest`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digest {
    sum: u128,
    count: u64,
}

impl Digest {
    fn add(&mut self, row: &MirrorRow) {
        use sha2::{Digest as _, Sha256};
        let mut h = Sha256::new();
        h.update(row.license_type.as_bytes());
        h.update([0]);
        h.update(row.target.as_bytes());
        let bytes: [u8; 32] = h.finalize().into();
        let mut first = [0u8; 16];
        first.copy_from_slice(&bytes[..16]);
        self.sum = self.sum.wrapping_add(u128::from_le_bytes(first));
        self.count += 1;
    }

    fn to_bytes(self) -> Vec<u8> {
        let mut v = self.sum.to_le_bytes().to_vec();
        v.extend_from_slice(&self.count.to_le_bytes());
        v
    }

    fn from_bytes(b: &[u8]) -> Option<Digest> {
        let sum = u128::from_le_bytes(b.get(..16)?.try_into().ok()?);
        let count = u64::from_le_bytes(b.get(16..24)?.try_into().ok()?);
        Some(Digest { sum, count })
    }
}

/// The digests of a read's rows, per asset (see [`Digest`]).
#[derive(Clone, Debug, Default)]
pub struct ReadDigests(std::collections::BTreeMap<(String, String), Digest>);

impl ReadDigests {
    /// Hashes every row: about 100 ms of CPU for 100,000 rows, so a sync computes it on a
    /// blocking thread, not on the runtime's threads that also serve allocations.
    pub fn of(rows: &[MirrorRow]) -> ReadDigests {
        let mut map: std::collections::BTreeMap<(String, String), Digest> = Default::default();
        // Rows come sorted by asset: one map entry per run of equal keys.
        let mut current: Option<((&str, &str), Digest)> = None;
        for r in rows {
            let key = (r.adam_id.as_str(), r.pricing_param.as_str());
            match &mut current {
                Some((k, d)) if *k == key => d.add(r),
                _ => {
                    if let Some(((a, p), d)) = current.take() {
                        merge(&mut map, a, p, d);
                    }
                    let mut d = Digest::default();
                    d.add(r);
                    current = Some((key, d));
                }
            }
        }
        if let Some(((a, p), d)) = current {
            merge(&mut map, a, p, d);
        }
        ReadDigests(map)
    }

    fn get(&self, adam_id: &str, pricing_param: &str) -> Option<Digest> {
        // Keyed by owned strings; the number of assets is small (a lookup per asset).
        self.0
            .get(&(adam_id.to_owned(), pricing_param.to_owned()))
            .copied()
    }
}

fn merge(
    map: &mut std::collections::BTreeMap<(String, String), Digest>,
    adam_id: &str,
    pricing_param: &str,
    d: Digest,
) {
    let e = map
        .entry((adam_id.to_owned(), pricing_param.to_owned()))
        .or_default();
    e.sum = e.sum.wrapping_add(d.sum);
    e.count += d.count;
}

#[derive(QueryableByName)]
struct StoredDigest {
    #[diesel(sql_type = Text)]
    adam_id: String,
    #[diesel(sql_type = Text)]
    pricing_param: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Bytea>)]
    digest: Option<Vec<u8>>,
}

/// Makes the mirror of `account` hold `rows` (distinct): rows Apple newly lists are inserted
/// (`first_seen_at` now, `seen_by_run` = `run`, the run that found them); rows already there
/// are not rewritten (a full sync of an unchanged location writes nothing); with `complete`
/// (a stable full read) rows Apple no longer lists are deleted. Returns (inserted, deleted).
/// Run it inside a transaction (the staging table empties at commit).
///
/// A complete read first compares each asset's digest with the stored one
/// (`mirror_assets.digest`): only the rows of assets whose digest differs are staged and
/// compared, so a full sync of an unchanged location of 100,000 licenses sends and compares
/// none. Afterwards each compared asset gets the read's digest when its mirror now holds
/// exactly the read's rows, or none (unknown: compared in full next time) when a row was
/// kept out (a release confirmed after the read started). Any other change of the mirror (an
/// incremental read's rows, a confirmed release) forgets the asset's digest. `digests` are
/// the read's ([`ReadDigests::of`] of `rows`; computed here when `None`).
pub async fn replace(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    run: Uuid,
    rows: &[MirrorRow],
    digests: Option<&ReadDigests>,
    complete: bool,
    read_started_at: DateTime<Utc>,
) -> QueryResult<(usize, usize)> {
    // The account's per-asset rows first, in key order, as a confirmed release does
    // ([`forget_released`]): the two never wait for each other in opposite orders, and a
    // release's digest reset cannot be overwritten by this read's digest.
    diesel::sql_query(
        "SELECT 1 FROM mirror_assets WHERE account_id = $1
          ORDER BY adam_id, pricing_param FOR UPDATE",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .execute(conn)
    .await?;
    if !complete {
        return stage_and_compare_within(conn, account, run, rows, None, read_started_at).await;
    }
    let computed;
    let read = match digests {
        Some(d) => d,
        None => {
            computed = ReadDigests::of(rows);
            &computed
        }
    };
    let stored: Vec<StoredDigest> = diesel::sql_query(
        "SELECT adam_id, pricing_param, digest FROM mirror_assets WHERE account_id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .load(conn)
    .await?;
    let mut changed: std::collections::BTreeSet<(String, String)> = Default::default();
    let mut known: std::collections::HashSet<(&str, &str)> = Default::default();
    for s in &stored {
        let key = (s.adam_id.as_str(), s.pricing_param.as_str());
        known.insert(key);
        let now = read.get(key.0, key.1).unwrap_or_default();
        if s.digest.as_deref().and_then(Digest::from_bytes) != Some(now) {
            changed.insert((s.adam_id.clone(), s.pricing_param.clone()));
        }
    }
    for (a, p) in read.0.keys() {
        if !known.contains(&(a.as_str(), p.as_str())) {
            changed.insert((a.clone(), p.clone()));
        }
    }
    if changed.is_empty() {
        return Ok((0, 0));
    }
    let staged: Vec<MirrorRow> = rows
        .iter()
        .filter(|r| changed.contains(&(r.adam_id.clone(), r.pricing_param.clone())))
        .cloned()
        .collect();
    let (adam, pricing): (Vec<String>, Vec<String>) = changed.iter().cloned().unzip();
    let (inserted, deleted) = stage_and_compare_within(
        conn,
        account,
        run,
        &staged,
        Some((&adam, &pricing)),
        read_started_at,
    )
    .await?;
    let digests: Vec<Vec<u8>> = changed
        .iter()
        .map(|(a, p)| read.get(a, p).unwrap_or_default().to_bytes())
        .collect();
    let counts: Vec<i64> = changed
        .iter()
        .map(|(a, p)| read.get(a, p).map_or(0, |d| d.count as i64))
        .collect();
    diesel::sql_query(
        "INSERT INTO mirror_assets AS x (account_id, adam_id, pricing_param, digest)
         SELECT $1, u.a, u.p,
                CASE WHEN (SELECT count(*) FROM apple_assignments m
                            WHERE m.account_id = $1 AND m.adam_id = u.a
                              AND m.pricing_param = u.p) = u.n
                     THEN u.d END
           FROM UNNEST($2::text[], $3::text[], $4::bytea[], $5::int8[]) AS u(a, p, d, n)
         ON CONFLICT (account_id, adam_id, pricing_param) DO UPDATE SET digest = excluded.digest",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .bind::<Array<Text>, _>(&adam)
    .bind::<Array<Text>, _>(&pricing)
    .bind::<Array<diesel::sql_types::Bytea>, _>(&digests)
    .bind::<Array<diesel::sql_types::BigInt>, _>(&counts)
    .execute(conn)
    .await?;
    Ok((inserted, deleted))
}

/// Stages `rows`, inserts those the mirror lacks and, when `assets` is given (a complete read's
/// assets whose digest changed), deletes those assets' mirror rows not staged.
async fn stage_and_compare_within(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    run: Uuid,
    rows: &[MirrorRow],
    assets: Option<(&Vec<String>, &Vec<String>)>,
    read_started_at: DateTime<Utc>,
) -> QueryResult<(usize, usize)> {
    use diesel_async::SimpleAsyncConnection;
    conn.batch_execute(SEEN_TABLE).await?;
    conn.batch_execute("TRUNCATE sync_seen").await?;
    for chunk in rows.chunks(CHUNK) {
        let mut adam = Vec::with_capacity(chunk.len());
        let mut pricing = Vec::with_capacity(chunk.len());
        let mut kind = Vec::with_capacity(chunk.len());
        let mut target = Vec::with_capacity(chunk.len());
        for r in chunk {
            adam.push(r.adam_id.as_str());
            pricing.push(r.pricing_param.as_str());
            kind.push(r.license_type);
            target.push(r.target.as_str());
        }
        diesel::sql_query(
            "INSERT INTO sync_seen
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[])",
        )
        .bind::<Array<Text>, _>(&adam)
        .bind::<Array<Text>, _>(&pricing)
        .bind::<Array<Text>, _>(&kind)
        .bind::<Array<Text>, _>(&target)
        .execute(conn)
        .await?;
    }
    conn.batch_execute("ANALYZE sync_seen").await?;
    let inserted = diesel::sql_query(format!(
        "WITH ins AS (
         INSERT INTO apple_assignments
                (account_id, adam_id, pricing_param, license_type, target, seen_by_run)
         SELECT $1, s.adam_id, s.pricing_param, s.license_type, s.target, $2
           FROM sync_seen s
          WHERE NOT EXISTS (
                SELECT 1 FROM apple_assignments m
                 WHERE m.account_id = $1 AND m.adam_id = s.adam_id
                   AND m.pricing_param = s.pricing_param
                   AND m.license_type = s.license_type AND m.target = s.target)
            -- A license whose release Apple confirmed after the read started is not put back
            -- (the settlement already took it out of the mirror).
            AND NOT EXISTS (
                SELECT 1 FROM assignments a JOIN subjects j ON j.id = a.subject_id
                 WHERE a.account_id = $1 AND a.adam_id = s.adam_id
                   AND a.pricing_param = s.pricing_param AND a.license_type = s.license_type
                   AND j.kind = s.license_type AND j.external_id = s.target
                   AND a.state = 'revoked' AND a.updated_at >= $3)
         ON CONFLICT DO NOTHING
         RETURNING adam_id, pricing_param
         ), noted AS ({NOTE_CHANGES} SELECT DISTINCT $1::uuid, adam_id, pricing_param FROM ins {NOTED})
         SELECT count(*) AS n FROM ins"
    ))
    .bind::<diesel::sql_types::Uuid, _>(account)
    .bind::<diesel::sql_types::Uuid, _>(run)
    .bind::<Timestamptz, _>(read_started_at)
    .get_result::<Counted>(conn)
    .await?
    .n as usize;
    let deleted = if let Some((adam, pricing)) = assets {
        let in_assets = in_keys("m.adam_id", "m.pricing_param", 2, 3);
        diesel::sql_query(format!(
            "WITH del AS (
             DELETE FROM apple_assignments m
              WHERE m.account_id = $1 AND {in_assets}
                AND NOT EXISTS (
                    SELECT 1 FROM sync_seen s
                     WHERE s.adam_id = m.adam_id AND s.pricing_param = m.pricing_param
                       AND s.license_type = m.license_type AND s.target = m.target)
             RETURNING m.adam_id, m.pricing_param
             ), noted AS ({NOTE_CHANGES} SELECT DISTINCT $1::uuid, adam_id, pricing_param
                                          FROM del {NOTED})
             SELECT count(*) AS n FROM del"
        ))
        .bind::<diesel::sql_types::Uuid, _>(account)
        .bind::<Array<Text>, _>(adam)
        .bind::<Array<Text>, _>(pricing)
        .get_result::<Counted>(conn)
        .await?
        .n as usize
    } else {
        0
    };
    // A mirror that grew or shrank a lot (the first sync of a location) gets fresh statistics
    // at once, so the statements that follow (foreign_assigned, the drift report) plan for
    // its real size instead of the empty table autovacuum last saw.
    if inserted + deleted >= 1000 {
        conn.batch_execute("ANALYZE apple_assignments").await?;
    }
    Ok((inserted, deleted))
}

/// Apple released these assignments' licenses (their release was confirmed): the mirror stops
/// listing them at once instead of at the next full sync, so an incremental sync in between
/// neither counts them as assigned elsewhere nor reports them `apple_only` (and Adopt never
/// takes over a license Apple no longer has).
pub async fn forget_released(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    // The assets' per-asset rows first, in key order, as a sync's mirror write does.
    diesel::sql_query(
        "SELECT 1 FROM mirror_assets x
          WHERE (x.account_id, x.adam_id, x.pricing_param) IN (
                SELECT a.account_id, a.adam_id, a.pricing_param FROM assignments a
                 WHERE a.id = ANY($1))
          ORDER BY x.account_id, x.adam_id, x.pricing_param FOR UPDATE OF x",
    )
    .bind::<Array<diesel::sql_types::Uuid>, _>(ids)
    .execute(conn)
    .await?;
    diesel::sql_query(format!(
        "WITH del AS (
         DELETE FROM apple_assignments m
          USING assignments a JOIN subjects s ON s.id = a.subject_id
          WHERE a.id = ANY($1)
            AND m.account_id = a.account_id AND m.adam_id = a.adam_id
            AND m.pricing_param = a.pricing_param AND m.license_type = a.license_type
            AND m.target = s.external_id
         RETURNING m.account_id, m.adam_id, m.pricing_param
         ), noted AS ({NOTE_CHANGES} SELECT DISTINCT account_id, adam_id, pricing_param
                                      FROM del {NOTED})
         SELECT count(*) AS n FROM del"
    ))
    .bind::<Array<diesel::sql_types::Uuid>, _>(ids)
    .get_result::<Counted>(conn)
    .await
    .map(|c| c.n as usize)
}

/// Mirror rows of the account (tests, stats).
pub async fn count(conn: &mut AsyncPgConnection, account: Uuid) -> QueryResult<i64> {
    use crate::db::schema::apple_assignments as m;
    m::table
        .filter(m::account_id.eq(account))
        .count()
        .get_result(conn)
        .await
}

/// An asset row's counts and attributes before the sync changes them.
#[derive(Clone, Debug, QueryableByName)]
pub struct AssetBefore {
    #[diesel(sql_type = Text)]
    pub adam_id: String,
    #[diesel(sql_type = Text)]
    pub pricing_param: String,
    #[diesel(sql_type = Integer)]
    pub apple_total: i32,
    #[diesel(sql_type = Integer)]
    pub apple_assigned: i32,
    #[diesel(sql_type = Integer)]
    pub apple_retired: i32,
    #[diesel(sql_type = Integer)]
    pub held: i32,
    #[diesel(sql_type = Bool)]
    pub vanished: bool,
    #[diesel(sql_type = Text)]
    pub product_type: String,
    #[diesel(sql_type = Bool)]
    pub device_assignable: bool,
    #[diesel(sql_type = Bool)]
    pub revocable: bool,
    /// The supported platforms joined by a comma.
    #[diesel(sql_type = Text)]
    pub platforms: String,
}

impl AssetBefore {
    /// Whether `apple` (the read's row of this asset) would change this row.
    pub fn differs_from(&self, apple: &AppleAsset) -> bool {
        self.vanished
            || (self.apple_total, self.apple_assigned, self.apple_retired)
                != (apple.total, apple.assigned, apple.retired)
            || self.product_type != apple.product_type
            || self.device_assignable != apple.device_assignable
            || self.revocable != apple.revocable
            || self.platforms != apple.supported_platforms.join(",")
    }
}

const ASSET_BEFORE: &str =
    "SELECT adam_id, pricing_param, apple_total, apple_assigned, apple_retired, held,
        vanished_at IS NOT NULL AS vanished, product_type, device_assignable, revocable,
        array_to_string(supported_platforms, ',') AS platforms
   FROM assets";

/// Reads the account's asset rows without locking them: a sync compares them with its read
/// and then locks only the rows it changes ([`lock_assets`]).
pub async fn assets_before(
    conn: &mut AsyncPgConnection,
    account: Uuid,
) -> QueryResult<Vec<AssetBefore>> {
    diesel::sql_query(format!("{ASSET_BEFORE} WHERE account_id = $1"))
        .bind::<diesel::sql_types::Uuid, _>(account)
        .load(conn)
        .await
}

/// Locks the account's asset rows of `keys` (all of them with `None`) in key order, as
/// allocations do, and reads them.
pub async fn lock_assets(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    keys: Option<&AssetKeys>,
) -> QueryResult<Vec<AssetBefore>> {
    match keys {
        None => {
            diesel::sql_query(format!(
                "{ASSET_BEFORE} WHERE account_id = $1
                  ORDER BY adam_id, pricing_param FOR UPDATE"
            ))
            .bind::<diesel::sql_types::Uuid, _>(account)
            .load(conn)
            .await
        }
        Some(keys) if keys.is_empty() => Ok(Vec::new()),
        Some(keys) => {
            diesel::sql_query(format!(
                "{ASSET_BEFORE} WHERE account_id = $1 AND {}
                  ORDER BY adam_id, pricing_param FOR UPDATE",
                in_keys("adam_id", "pricing_param", 2, 3)
            ))
            .bind::<diesel::sql_types::Uuid, _>(account)
            .bind::<Array<Text>, _>(&keys.adam_ids)
            .bind::<Array<Text>, _>(&keys.pricing_params)
            .load(conn)
            .await
        }
    }
}

/// Writes Apple's view of `list` (one row per asset): new assets are inserted, known ones get
/// Apple's counts and attributes and are no longer vanished.
pub async fn upsert_assets(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    list: &[AppleAsset],
) -> QueryResult<usize> {
    let mut n = 0;
    for chunk in list.chunks(CHUNK) {
        let adam: Vec<&str> = chunk.iter().map(|a| a.adam_id.as_str()).collect();
        let pricing: Vec<&str> = chunk.iter().map(|a| a.pricing_param.as_str()).collect();
        let product: Vec<&str> = chunk.iter().map(|a| a.product_type.as_str()).collect();
        let device: Vec<bool> = chunk.iter().map(|a| a.device_assignable).collect();
        let revocable: Vec<bool> = chunk.iter().map(|a| a.revocable).collect();
        // Platforms joined by a comma (an array of arrays does not UNNEST row by row).
        let platforms: Vec<String> = chunk
            .iter()
            .map(|a| a.supported_platforms.join(","))
            .collect();
        let total: Vec<i32> = chunk.iter().map(|a| a.total).collect();
        let assigned: Vec<i32> = chunk.iter().map(|a| a.assigned).collect();
        let retired: Vec<i32> = chunk.iter().map(|a| a.retired).collect();
        n += diesel::sql_query(
            "INSERT INTO assets AS s (account_id, adam_id, pricing_param, product_type,
                                 device_assignable, revocable, supported_platforms, apple_total,
                                 apple_assigned, apple_retired, foreign_assigned, synced_at)
             SELECT $1, u.a, u.p, u.pt, u.d, u.r,
                    COALESCE(string_to_array(NULLIF(u.pl, ''), ','), '{}'),
                    u.t, u.s, u.x, 0, now()
               FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bool[], $6::bool[],
                           $7::text[], $8::int[], $9::int[], $10::int[])
                    AS u(a, p, pt, d, r, pl, t, s, x)
             ON CONFLICT (account_id, adam_id, pricing_param) DO UPDATE
                SET product_type = EXCLUDED.product_type,
                    device_assignable = EXCLUDED.device_assignable,
                    revocable = EXCLUDED.revocable,
                    supported_platforms = EXCLUDED.supported_platforms,
                    apple_total = EXCLUDED.apple_total,
                    apple_assigned = EXCLUDED.apple_assigned,
                    apple_retired = EXCLUDED.apple_retired,
                    vanished_at = NULL, synced_at = now(), updated_at = now()",
        )
        .bind::<diesel::sql_types::Uuid, _>(account)
        .bind::<Array<Text>, _>(&adam)
        .bind::<Array<Text>, _>(&pricing)
        .bind::<Array<Text>, _>(&product)
        .bind::<Array<Bool>, _>(&device)
        .bind::<Array<Bool>, _>(&revocable)
        .bind::<Array<Text>, _>(&platforms)
        .bind::<Array<Integer>, _>(&total)
        .bind::<Array<Integer>, _>(&assigned)
        .bind::<Array<Integer>, _>(&retired)
        .execute(conn)
        .await?;
    }
    Ok(n)
}

/// Assets Apple no longer lists: counts zero, `vanished_at` set (kept for the ledger's
/// history; they come back when Apple lists them again).
pub async fn mark_vanished(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    keys: &[(String, String)],
) -> QueryResult<usize> {
    if keys.is_empty() {
        return Ok(0);
    }
    let adam: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let pricing: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    diesel::sql_query(
        "UPDATE assets s SET vanished_at = now(), apple_total = 0, apple_assigned = 0,
                apple_retired = 0, foreign_assigned = 0, synced_at = now(), updated_at = now()
           FROM UNNEST($2::text[], $3::text[]) AS u(a, p)
          WHERE s.account_id = $1 AND s.adam_id = u.a AND s.pricing_param = u.p
            AND s.vanished_at IS NULL",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .bind::<Array<Text>, _>(&adam)
    .bind::<Array<Text>, _>(&pricing)
    .execute(conn)
    .await
}

/// Sets `foreign_assigned` of the account's assets in `scope` (all with `None`) from the mirror
/// (see the module doc); returns the assets whose count changed. Lock the asset rows first
/// ([`lock_assets`]). Assets out of scope keep their count: neither their mirror rows nor their
/// ledger rows changed since it was counted ([`crate::ledger::drift_scope`]).
pub async fn recount_foreign(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    read_started_at: DateTime<Utc>,
    scope: Option<&AssetKeys>,
) -> QueryResult<usize> {
    if scope.is_some_and(AssetKeys::is_empty) {
        return Ok(0);
    }
    let (in_scope_m, in_scope_s) = match scope {
        Some(_) => (
            format!("AND {}", in_keys("m.adam_id", "m.pricing_param", 3, 4)),
            format!("AND {}", in_keys("s.adam_id", "s.pricing_param", 3, 4)),
        ),
        None => (String::new(), String::new()),
    };
    let empty = AssetKeys::default();
    let keys = scope.unwrap_or(&empty);
    diesel::sql_query(format!(
        "WITH f AS (
             SELECT m.adam_id, m.pricing_param, count(*)::int AS n
               FROM apple_assignments m
              WHERE m.account_id = $1 {in_scope_m}
                AND NOT EXISTS (
                      SELECT 1 FROM assignments a JOIN subjects sub ON sub.id = a.subject_id
                       WHERE a.account_id = m.account_id AND a.adam_id = m.adam_id
                         AND a.pricing_param = m.pricing_param
                         AND sub.kind = m.license_type AND sub.external_id = m.target
                         AND (a.state IN ('pending', 'associating', 'active', 'revoking')
                              OR a.updated_at >= $2))
              GROUP BY m.adam_id, m.pricing_param
         ), t AS (
             SELECT s.adam_id, s.pricing_param, COALESCE(f.n, 0) AS n
               FROM assets s LEFT JOIN f ON f.adam_id = s.adam_id
                                        AND f.pricing_param = s.pricing_param
              WHERE s.account_id = $1 AND s.vanished_at IS NULL {in_scope_s}
         )
         UPDATE assets s SET foreign_assigned = t.n, updated_at = now()
           FROM t
          WHERE s.account_id = $1 AND s.adam_id = t.adam_id AND s.pricing_param = t.pricing_param
            AND s.foreign_assigned <> t.n",
    ))
    .bind::<diesel::sql_types::Uuid, _>(account)
    .bind::<Timestamptz, _>(read_started_at)
    .bind::<Array<Text>, _>(&keys.adam_ids)
    .bind::<Array<Text>, _>(&keys.pricing_params)
    .execute(conn)
    .await
}

/// Whether the account uses user licenses: the ledger has user assignments or registered
/// users there, or Apple lists user assignments.
pub async fn uses_user_licenses(conn: &mut AsyncPgConnection, account: Uuid) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Any {
        #[diesel(sql_type = Bool)]
        any: bool,
    }
    let row: Any = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM apple_users WHERE account_id = $1)
             OR EXISTS (SELECT 1 FROM apple_assignments
                         WHERE account_id = $1 AND license_type = 'user')
             OR EXISTS (SELECT 1 FROM assignments
                         WHERE account_id = $1 AND license_type = 'user') AS any",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .get_result(conn)
    .await?;
    Ok(row.any)
}

/// Users as Apple lists them: `registered` ones are remembered as registered (no need to create
/// them again); the others (retired, deleted) are no longer registered: `retired` (kept, with
/// when this service first knew it, like a retirement it sent). Returns rows changed.
pub async fn apply_users(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    registered: &[&str],
    gone: &[&str],
    read_started_at: DateTime<Utc>,
) -> QueryResult<usize> {
    // A user whose row changed after the read started (a retirement the dispatcher recorded
    // meanwhile, a registration) keeps it: the read cannot know about it.
    let mut n = 0;
    for chunk in registered.chunks(CHUNK) {
        n += diesel::sql_query(
            "INSERT INTO apple_users (account_id, client_user_id, status)
             SELECT $1, u, 'registered' FROM UNNEST($2::text[]) AS u
             ON CONFLICT (account_id, client_user_id) DO UPDATE
                SET status = 'registered', retired_at = NULL, updated_at = now()
              WHERE apple_users.status <> 'registered' AND apple_users.updated_at < $3",
        )
        .bind::<diesel::sql_types::Uuid, _>(account)
        .bind::<Array<Text>, _>(chunk)
        .bind::<Timestamptz, _>(read_started_at)
        .execute(conn)
        .await?;
    }
    for chunk in gone.chunks(CHUNK) {
        n += diesel::sql_query(
            "UPDATE apple_users SET status = 'retired', retired_at = COALESCE(retired_at, now()),
                                    updated_at = now()
              WHERE account_id = $1 AND client_user_id = ANY($2) AND status <> 'retired'
                AND updated_at < $3",
        )
        .bind::<diesel::sql_types::Uuid, _>(account)
        .bind::<Array<Text>, _>(chunk)
        .bind::<Timestamptz, _>(read_started_at)
        .execute(conn)
        .await?;
    }
    Ok(n)
}

/// What a successful sync records on the account.
pub struct Synced<'a> {
    pub full: bool,
    pub assignments_version: Option<&'a str>,
    pub assets_version: Option<&'a str>,
    pub users_version: Option<&'a str>,
    /// A stable full read had Apple's whole asset list (and marked the assets it no longer
    /// lists vanished): every listed asset's counts are confirmed as of now
    /// (`asset_list_reads`), including those whose row the sync did not rewrite.
    pub assets_read: bool,
}

/// Records the sync's versionIds (those read; `None` keeps the stored one) and its time.
pub async fn mark_synced(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    synced: &Synced<'_>,
) -> QueryResult<()> {
    diesel::sql_query(
        "WITH listed AS (
             INSERT INTO asset_list_reads (account_id, read_at) SELECT $1, now() WHERE $6
             ON CONFLICT (account_id) DO UPDATE SET read_at = excluded.read_at
         )
         UPDATE accounts
            SET last_full_sync_at = CASE WHEN $2 THEN now() ELSE last_full_sync_at END,
                last_incremental_sync_at = CASE WHEN $2 THEN last_incremental_sync_at ELSE now() END,
                assignments_version_id = COALESCE($3, assignments_version_id),
                assets_version_id = COALESCE($4, assets_version_id),
                users_version_id = COALESCE($5, users_version_id)
          WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(account)
    .bind::<Bool, _>(synced.full)
    .bind::<diesel::sql_types::Nullable<Text>, _>(synced.assignments_version)
    .bind::<diesel::sql_types::Nullable<Text>, _>(synced.assets_version)
    .bind::<diesel::sql_types::Nullable<Text>, _>(synced.users_version)
    .bind::<Bool, _>(synced.assets_read)
    .execute(conn)
    .await
    .map(|_| ())
}

/// The account's stored versionIds: (assignments, assets, users).
pub async fn versions(
    conn: &mut AsyncPgConnection,
    account: Uuid,
) -> QueryResult<(Option<String>, Option<String>, Option<String>)> {
    use crate::db::schema::accounts;
    accounts::table
        .find(account)
        .select((
            accounts::assignments_version_id,
            accounts::assets_version_id,
            accounts::users_version_id,
        ))
        .get_result(conn)
        .await
}

/// The DB's clock now (the read's start, compared with ledger rows' `updated_at`).
pub async fn db_now(conn: &mut AsyncPgConnection) -> QueryResult<DateTime<Utc>> {
    #[derive(QueryableByName)]
    struct Now {
        #[diesel(sql_type = Timestamptz)]
        now: DateTime<Utc>,
    }
    let row: Now = diesel::sql_query("SELECT now() AS now")
        .get_result(conn)
        .await?;
    Ok(row.now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(target: &str) -> MirrorRow {
        MirrorRow {
            adam_id: "1".into(),
            pricing_param: "STDQ".into(),
            license_type: "device",
            target: target.into(),
        }
    }

    #[test]
    fn a_digest_ignores_order_and_sees_any_row_added_removed_or_swapped() {
        let digest = |targets: &[&str]| {
            let mut d = Digest::default();
            targets.iter().for_each(|t| d.add(&row(t)));
            d
        };
        assert_eq!(digest(&["A", "B", "C"]), digest(&["C", "A", "B"]));
        assert_ne!(digest(&["A", "B", "C"]), digest(&["A", "B"]));
        assert_ne!(digest(&["A", "B", "C"]), digest(&["A", "B", "D"]));
        assert_eq!(Digest::default(), digest(&[]));
        let d = digest(&["A", "B"]);
        assert_eq!(Digest::from_bytes(&d.to_bytes()), Some(d));
        assert_eq!(Digest::from_bytes(&[1, 2, 3]), None);
    }

    #[test]
    fn a_read_s_digests_are_per_asset_whatever_the_order_of_its_rows() {
        let on = |adam: &str, target: &str| MirrorRow {
            adam_id: adam.into(),
            ..row(target)
        };
        let one = |rows: &[MirrorRow]| {
            let mut d = Digest::default();
            rows.iter().for_each(|r| d.add(r));
            d
        };
        let sorted = [on("1", "A"), on("1", "B"), on("2", "A")];
        let shuffled = [on("2", "A"), on("1", "B"), on("1", "A")];
        for rows in [&sorted[..], &shuffled[..]] {
            let d = ReadDigests::of(rows);
            assert_eq!(d.get("1", "STDQ"), Some(one(&sorted[..2])));
            assert_eq!(d.get("2", "STDQ"), Some(one(&sorted[2..])));
            assert_eq!(d.get("3", "STDQ"), None);
            assert_eq!(d.0.len(), 2);
        }
    }
}
