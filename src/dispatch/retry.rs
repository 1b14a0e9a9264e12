//! Retry timing: capped exponential backoff with jitter, and Apple's Retry-After.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

/// Delay before attempt `attempts + 1`: 1 s, 2 s, 4 s … capped at `cap`, times a random factor
/// in [0.5, 1.5) so retries from many workers do not align.
pub fn backoff(attempts: i32, cap: Duration) -> Duration {
    let exp = attempts.clamp(0, 16) as u32;
    let base = Duration::from_secs(1u64 << exp).min(cap);
    let factor: f64 = rand::rng().random_range(0.5..1.5);
    base.mul_f64(factor).min(cap)
}

pub fn at(delay: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::seconds(60))
}

/// Records a failed attempt of claimed jobs (they run again at `at`), setting aside as dead
/// letters those that failed `VPP_JOB_MAX_ATTEMPTS` times: counted in
/// `apple_jobs_dead_lettered_total{kind}` and logged.
pub async fn failed(
    ctx: &super::Ctx,
    conn: &mut diesel_async::AsyncPgConnection,
    ids: &[i64],
    at: DateTime<Utc>,
    error: &str,
) -> Result<(), diesel::result::Error> {
    let dead = crate::ledger::jobs::fail(conn, ids, at, error, ctx.settings.max_attempts).await?;
    for kind in dead {
        metrics::counter!("apple_jobs_dead_lettered_total", "kind" => kind.as_str()).increment(1);
        tracing::warn!(
            kind = kind.as_str(),
            failures = ctx.settings.max_attempts,
            error,
            "an Apple job failed too often and is set aside as a dead letter"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let cap = Duration::from_secs(300);
        for attempts in 0..30 {
            let d = backoff(attempts, cap);
            assert!(d <= cap);
            let nominal = Duration::from_secs(1u64 << attempts.clamp(0, 16)).min(cap);
            assert!(
                d >= nominal.mul_f64(0.5) && d <= nominal.mul_f64(1.5),
                "{attempts}: {d:?}"
            );
        }
        assert!(backoff(1, cap) < Duration::from_secs(4));
    }
}
