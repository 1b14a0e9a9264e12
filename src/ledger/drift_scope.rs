//! Which of an account's assets a sync must recount and re-report (docs/sync.md, "Only what
//! changed"): `foreign_assigned` and the per-license drift classes (`apple_only`,
//! `ledger_only`) of an asset are functions of its mirror rows and its ledger rows only, so an
//! asset whose mirror and ledger did not change since the last report keeps its figures. A
//! full sync of a location whose 100,000 licenses did not change recounts and re-reports
//! nothing per license.
//!
//! An asset is in the scope of a run when, since the last run that recomputed the report (its
//! watermarks, `drift_watermarks`):
//! - its mirror rows changed (`mirror_assets.changed_at`: rows a sync inserted or deleted,
//!   releases Apple confirmed) at or after that run fixed its scope, or
//! - one of its assignments changed (`updated_at`) at or after that run's read started, less
//!   [`LEDGER_MARGIN`]: `updated_at` is the writing transaction's start, so a transaction that
//!   started before the read but committed after the report is still caught, or
//! - it appeared or came back in this read.
//!
//! Without watermarks (the account's first report, or after a token replacement cleared what
//! the syncs knew) the scope is every asset. `ledger_only` is only recomputed by a stable full
//! read; it is scoped only when the last report came from one too (an incremental run in
//! between did not recompute it), otherwise a stable full read recomputes it for every asset.
//!
//! `count_mismatch` is judged for the scope's assets and those whose Apple counts changed,
//! appeared or vanished ([`Scope::count_also`], [`Scope::include`]) — or for every asset when the last report's run
//! did not read the asset list (an incremental run whose asset list was unchanged judges no
//! count).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Bool, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// How far before the last read's start a ledger change still puts its asset in scope.
pub const LEDGER_MARGIN_MINUTES: i32 = 10;
/// [`LEDGER_MARGIN_MINUTES`] as a duration (docs).
pub const LEDGER_MARGIN: std::time::Duration =
    std::time::Duration::from_secs(LEDGER_MARGIN_MINUTES as u64 * 60);

/// A set of assets, as parallel arrays (bound as `text[]` and unnested in SQL).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AssetKeys {
    pub adam_ids: Vec<String>,
    pub pricing_params: Vec<String>,
    /// The same keys, to keep them distinct.
    seen: std::collections::HashSet<(String, String)>,
}

impl AssetKeys {
    pub fn len(&self) -> usize {
        self.adam_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.adam_ids.is_empty()
    }

    /// Adds an asset unless it is there already.
    pub fn insert(&mut self, adam_id: &str, pricing_param: &str) {
        if self
            .seen
            .insert((adam_id.to_owned(), pricing_param.to_owned()))
        {
            self.adam_ids.push(adam_id.to_owned());
            self.pricing_params.push(pricing_param.to_owned());
        }
    }
}

/// What one run recounts and re-reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// Assets whose `foreign_assigned` and `apple_only` items are recomputed; `None`: all.
    pub assets: Option<AssetKeys>,
    /// Assets whose `count_mismatch` is judged again: `assets` and those whose Apple counts
    /// changed or that appeared or vanished ([`Scope::count_also`]); `None`: all.
    pub counts: Option<AssetKeys>,
    /// Whether `ledger_only` may be scoped to `assets` (the last report was a stable full
    /// read); otherwise a stable full read recomputes it for all.
    pub ledger_only_scoped: bool,
    /// When the scope was fixed (the next run's mirror watermark).
    pub fixed_at: DateTime<Utc>,
}

impl Scope {
    /// Every asset, fixed now (the first report; tools and tests that recompute a whole
    /// account).
    pub fn all() -> Scope {
        Scope {
            assets: None,
            counts: None,
            ledger_only_scoped: false,
            fixed_at: Utc::now(),
        }
    }

    /// Adds an asset to the count scope (its Apple counts changed or it vanished).
    pub fn count_also(&mut self, adam_id: &str, pricing_param: &str) {
        if let Some(counts) = &mut self.counts {
            counts.insert(adam_id, pricing_param);
        }
    }

    /// Adds an asset to both scopes (it appeared or came back in this read).
    pub fn include(&mut self, adam_id: &str, pricing_param: &str) {
        if let Some(assets) = &mut self.assets {
            assets.insert(adam_id, pricing_param);
        }
        self.count_also(adam_id, pricing_param);
    }

    /// The `ledger_only` scope of a stable full read.
    pub fn ledger_only(&self) -> Option<&AssetKeys> {
        if self.ledger_only_scoped {
            self.assets.as_ref()
        } else {
            None
        }
    }
}

#[derive(QueryableByName)]
struct Watermarks {
    #[diesel(sql_type = Timestamptz)]
    ledger_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    mirror_at: DateTime<Utc>,
    #[diesel(sql_type = Bool)]
    full_read: bool,
    #[diesel(sql_type = Bool)]
    assets_read: bool,
    #[diesel(sql_type = Timestamptz)]
    now: DateTime<Utc>,
}

#[derive(QueryableByName)]
struct Key {
    #[diesel(sql_type = Text)]
    adam_id: String,
    #[diesel(sql_type = Text)]
    pricing_param: String,
}

#[derive(QueryableByName)]
struct Now {
    #[diesel(sql_type = Timestamptz)]
    now: DateTime<Utc>,
}

/// The scope of a run of `account` (see the module doc), before the assets that appear in
/// this read are added ([`Scope::include`]). Call it once the mirror is written and before the
/// asset rows are locked: it reads the account's assignment history, which allocations must not
/// wait for. `fixed_at` is the clock's time (after the mirror transaction's own changes, which
/// carry its start time), so this run's mirror changes are not in the next run's scope.
pub async fn fix(conn: &mut AsyncPgConnection, account: Uuid) -> QueryResult<Scope> {
    let marks: Option<Watermarks> = diesel::sql_query(
        "SELECT ledger_at, mirror_at, full_read, assets_read, clock_timestamp() AS now
           FROM drift_watermarks WHERE account_id = $1",
    )
    .bind::<SqlUuid, _>(account)
    .get_result(conn)
    .await
    .optional()?;
    let Some(marks) = marks else {
        let now: Now = diesel::sql_query("SELECT clock_timestamp() AS now")
            .get_result(conn)
            .await?;
        return Ok(Scope {
            fixed_at: now.now,
            ..Scope::all()
        });
    };
    let keys: Vec<Key> = diesel::sql_query(
        "SELECT adam_id, pricing_param FROM mirror_assets
          WHERE account_id = $1 AND changed_at >= $2
         UNION
         SELECT DISTINCT adam_id, pricing_param FROM assignments
          WHERE account_id = $1 AND updated_at >= $3 - make_interval(mins => $4)",
    )
    .bind::<SqlUuid, _>(account)
    .bind::<Timestamptz, _>(marks.mirror_at)
    .bind::<Timestamptz, _>(marks.ledger_at)
    .bind::<diesel::sql_types::Integer, _>(LEDGER_MARGIN_MINUTES)
    .load(conn)
    .await?;
    let mut assets = AssetKeys::default();
    for k in keys {
        assets.insert(&k.adam_id, &k.pricing_param);
    }
    Ok(Scope {
        // A report whose run did not read the asset list judged no count: this one judges all.
        counts: marks.assets_read.then(|| assets.clone()),
        assets: Some(assets),
        ledger_only_scoped: marks.full_read,
        fixed_at: marks.now,
    })
}

/// Records the watermarks of a run that recomputed the report: its read's start, when it fixed
/// its scope, whether it was a stable full read and whether it read the asset list.
pub async fn advance(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    read_started_at: DateTime<Utc>,
    scope: &Scope,
    full_and_stable: bool,
    assets_read: bool,
) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO drift_watermarks (account_id, ledger_at, mirror_at, full_read, assets_read)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (account_id) DO UPDATE
            SET ledger_at = excluded.ledger_at, mirror_at = excluded.mirror_at,
                full_read = excluded.full_read, assets_read = excluded.assets_read",
    )
    .bind::<SqlUuid, _>(account)
    .bind::<Timestamptz, _>(read_started_at)
    .bind::<Timestamptz, _>(scope.fixed_at)
    .bind::<Bool, _>(full_and_stable)
    .bind::<Bool, _>(assets_read)
    .execute(conn)
    .await
    .map(|_| ())
}

/// SQL condition: `(adam, pricing)` is one of the assets bound as `$a::text[]`, `$p::text[]`.
pub fn in_keys(adam: &str, pricing: &str, a: usize, p: usize) -> String {
    format!("({adam}, {pricing}) IN (SELECT * FROM UNNEST(${a}::text[], ${p}::text[]))")
}
