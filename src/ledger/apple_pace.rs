//! The Apple request budget per sToken that every replica shares (rule T13; the client's side
//! and the rule are `crate::apple::pace`).
//!
//! A token has `maxRequestPerSecond` rows (slots) in `apple_pace`, each with the time it frees
//! (`free_at`, by the database's clock: one clock for every replica). Taking a slot is one
//! statement: the free slot that freed first is leased (`free_at` = now + the lease) with
//! `FOR UPDATE SKIP LOCKED`, so replicas taking slots at the same moment get different ones or
//! none; when none is free the answer says how long until the first frees (or, while every
//! slot is held by a request in flight, to ask again shortly). Releasing it sets
//! `free_at` to when the pacing window since the request was sent ends (or now), if the slot
//! is still held by that lease. The slots are made on the token's first request (and when
//! Apple raises its limit); housekeeping forgets a token's slots after a day without requests
//! ([`forget_idle`]).

use std::time::Duration;

use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::future::BoxFuture;

use crate::apple::pace::{SharedPace, Slot};
use crate::db::pool::Pool;

/// The longest a request waits for a free connection of the budget's pool before going
/// without it (failing open).
const CONNECTION_WAIT: Duration = Duration::from_millis(250);
/// At most one warning per this long that the budget cannot be read (one per request would
/// flood the log during an outage).
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The shortest wait before asking again (a free slot may be locked by a replica taking it).
const MIN_WAIT: Duration = Duration::from_millis(2);
/// The wait before asking again while every slot is held by a request in flight (its end, and
/// so when its slot frees, is unknown).
const IN_FLIGHT_POLL: Duration = Duration::from_millis(20);

#[derive(QueryableByName)]
struct TakeRow {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Integer>)]
    slot: Option<i32>,
    /// The lease's stamp: `free_at` as set, in microseconds since the epoch.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    lease: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    slots: i64,
    /// Milliseconds until the first slot frees (≤ 0: one is free, but was locked).
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
    wait_ms: Option<f64>,
}

/// What asking for a slot gave.
#[derive(Debug, PartialEq)]
pub enum Taken {
    Slot(Slot),
    /// No slot is free: ask again after this.
    Wait(Duration),
    /// The token has fewer slots than its limit: make them ([`make_slots`]) and ask again.
    NoSlots,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Leases, for `lease`, the free one of the first `per_window` slots of `key` that freed
/// first. A slot frees at most `window` after its request ended; a later `free_at` is a lease
/// (its request is in flight).
pub async fn take(
    conn: &mut AsyncPgConnection,
    key: &[u8],
    per_window: i32,
    window: Duration,
    lease: Duration,
) -> diesel::QueryResult<Taken> {
    let row: TakeRow = diesel::sql_query(
        "WITH free AS (
              SELECT slot FROM apple_pace
               WHERE token_key = $1 AND slot < $2 AND free_at <= clock_timestamp()
               ORDER BY free_at LIMIT 1
                 FOR UPDATE SKIP LOCKED),
              took AS (
              UPDATE apple_pace p
                 SET free_at = date_trunc('microseconds', clock_timestamp())
                               + make_interval(secs => $3 / 1000.0)
                FROM free WHERE p.token_key = $1 AND p.slot = free.slot
              RETURNING p.slot, p.free_at)
         SELECT (SELECT slot FROM took) AS slot,
                (SELECT (EXTRACT(EPOCH FROM free_at) * 1000000)::bigint FROM took) AS lease,
                (SELECT count(*) FROM apple_pace WHERE token_key = $1 AND slot < $2) AS slots,
                (SELECT (EXTRACT(EPOCH FROM min(free_at) - clock_timestamp()) * 1000)::float8
                   FROM apple_pace WHERE token_key = $1 AND slot < $2) AS wait_ms",
    )
    .bind::<diesel::sql_types::Bytea, _>(key)
    .bind::<diesel::sql_types::Integer, _>(per_window)
    .bind::<diesel::sql_types::BigInt, _>(millis(lease))
    .get_result(conn)
    .await?;
    Ok(match (row.slot, row.lease) {
        (Some(index), Some(lease)) => Taken::Slot(Slot { index, lease }),
        _ if row.slots < i64::from(per_window) => Taken::NoSlots,
        _ => {
            let ms = row.wait_ms.unwrap_or(0.0).max(0.0);
            let wait = Duration::from_micros((ms * 1000.0) as u64);
            Taken::Wait(if wait > window {
                IN_FLIGHT_POLL
            } else {
                wait.max(MIN_WAIT)
            })
        }
    })
}

/// Frees `slot` of `key` after `free_in`, if it is still held by its lease.
pub async fn release(
    conn: &mut AsyncPgConnection,
    key: &[u8],
    slot: Slot,
    free_in: Duration,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "UPDATE apple_pace SET free_at = clock_timestamp() + make_interval(secs => $4 / 1000.0)
          WHERE token_key = $1 AND slot = $2
            AND (EXTRACT(EPOCH FROM free_at) * 1000000)::bigint = $3",
    )
    .bind::<diesel::sql_types::Bytea, _>(key)
    .bind::<diesel::sql_types::Integer, _>(slot.index)
    .bind::<diesel::sql_types::BigInt, _>(slot.lease)
    .bind::<diesel::sql_types::BigInt, _>(millis(free_in))
    .execute(conn)
    .await
    .map(|_| ())
}

/// Makes the slots `0..per_window` of `key` that do not exist yet (free).
pub async fn make_slots(
    conn: &mut AsyncPgConnection,
    key: &[u8],
    per_window: i32,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO apple_pace (token_key, slot)
         SELECT $1, g FROM generate_series(0, $2 - 1) AS g
         ON CONFLICT DO NOTHING",
    )
    .bind::<diesel::sql_types::Bytea, _>(key)
    .bind::<diesel::sql_types::Integer, _>(per_window)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Forgets the slots of tokens that made no request for a day; returns how many rows.
pub async fn forget_idle(conn: &mut AsyncPgConnection) -> diesel::QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM apple_pace p WHERE NOT EXISTS (
             SELECT 1 FROM apple_pace q WHERE q.token_key = p.token_key
                AND q.free_at > now() - interval '1 day')",
    )
    .execute(conn)
    .await
}

/// The shared budget ([`SharedPace`] for the Apple client), on a pool of its own (the service
/// gives it a small one, so a request storm holding the main pool does not delay Apple calls).
pub struct PgPace {
    pool: Pool,
    last_warning: std::sync::Mutex<Option<std::time::Instant>>,
}

impl PgPace {
    pub fn new(pool: Pool) -> PgPace {
        PgPace {
            pool,
            last_warning: std::sync::Mutex::new(None),
        }
    }

    /// Logs that the budget cannot be read, at most once per [`WARN_EVERY`].
    fn warn(&self, error: &str) {
        let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(std::time::Instant::now());
            tracing::warn!(%error, "the shared Apple request budget cannot be read; pacing locally");
        }
    }

    async fn take_slot(
        &self,
        key: [u8; 32],
        per_window: usize,
        window: Duration,
        lease: Duration,
    ) -> Result<Result<Slot, Duration>, String> {
        let per_window = i32::try_from(per_window.max(1)).unwrap_or(i32::MAX);
        // Only the wait for a busy pool is cut short; opening a connection gets the pool's
        // own time (a slow connect would otherwise be cancelled every time, for good).
        let timeouts = deadpool::managed::Timeouts {
            wait: Some(CONNECTION_WAIT),
            ..self.pool.timeouts()
        };
        let mut conn = self
            .pool
            .timeout_get(&timeouts)
            .await
            .map_err(|e| e.to_string())?;
        for _ in 0..2 {
            match take(&mut conn, &key, per_window, window, lease).await {
                Ok(Taken::Slot(slot)) => return Ok(Ok(slot)),
                Ok(Taken::Wait(wait)) => return Ok(Err(wait)),
                Ok(Taken::NoSlots) => make_slots(&mut conn, &key, per_window)
                    .await
                    .map_err(|e| e.to_string())?,
                Err(e) => return Err(e.to_string()),
            }
        }
        // The slots were just made: the next ask takes one.
        Ok(Err(MIN_WAIT))
    }
}

impl SharedPace for PgPace {
    fn take(
        &self,
        key: [u8; 32],
        per_window: usize,
        window: Duration,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Option<Slot>, Duration>> {
        Box::pin(async move {
            match self.take_slot(key, per_window, window, lease).await {
                Ok(taken) => taken.map(Some),
                Err(error) => {
                    // Fail open (see `crate::apple::pace`): the local pacing still holds.
                    self.warn(&error);
                    Ok(None)
                }
            }
        })
    }

    fn release(&self, key: [u8; 32], slot: Slot, free_in: Duration) -> BoxFuture<'static, ()> {
        let pool = self.pool.clone();
        Box::pin(async move {
            // No hurry here: the request is done; the slot's lease frees it if this fails.
            let released = match pool.get().await {
                Ok(mut conn) => release(&mut conn, &key, slot, free_in)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(error) = released {
                // The slot frees when its lease runs out.
                tracing::warn!(%error, "cannot free a shared Apple request slot");
            }
        })
    }
}
