//! Exhaustion forecast of one asset: in how many days nothing is left to allocate, from an
//! exponentially weighted rate of net daily allocations (allocations minus revocations).
//!
//! Decisions:
//! * Each day's weight halves every [`HALF_LIFE_DAYS`] days of age (today weighs 1, the day
//!   14 days ago 0.5); the rate is the weighted mean of the days' net allocations. Days
//!   without movement count as zero (a quiet week lowers the rate), but only days since the
//!   asset's first allocation in the space count at all: a week-old asset is not diluted by
//!   23 empty days before it existed.
//! * No forecast (`days_until_exhausted` null, with the reason) when fewer than
//!   [`MIN_HISTORY_DAYS`] days have passed since the first allocation, or when the net rate is
//!   not positive (nothing is running out).
//! * Today, still under way, counts like any other day.

use chrono::{Duration, NaiveDate};

/// Days after which a day's weight has halved.
pub const HALF_LIFE_DAYS: f64 = 14.0;
/// The fewest days of history a forecast needs.
pub const MIN_HISTORY_DAYS: i64 = 7;
/// The window the rate is taken over (and the detail's daily series).
pub const WINDOW_DAYS: i64 = 30;

/// One day's movement of an asset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Day {
    pub day: NaiveDate,
    /// Licenses allocated that day.
    pub allocations: i64,
    /// Licenses whose revocation was asked that day.
    pub revocations: i64,
}

/// Why no forecast is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoForecast {
    /// Fewer than [`MIN_HISTORY_DAYS`] days since the first allocation (or none at all).
    InsufficientHistory,
    /// Revocations keep up with allocations: nothing is running out.
    NotConsuming,
}

impl NoForecast {
    pub fn reason(self) -> &'static str {
        match self {
            NoForecast::InsufficientHistory => {
                "fewer than 7 days of allocation history for this asset"
            }
            NoForecast::NotConsuming => {
                "the weighted net allocation rate is not positive: licenses are not running out"
            }
        }
    }
}

/// The forecast of one asset.
#[derive(Clone, Debug, PartialEq)]
pub struct Forecast {
    /// Days since the first allocation (capped at [`WINDOW_DAYS`]), today included.
    pub history_days: i64,
    /// The weighted net allocations per day (absent without history).
    pub net_rate_per_day: Option<f64>,
    /// `Ok(days)` until nothing is left, or why there is no forecast.
    pub outcome: Result<f64, NoForecast>,
}

/// The daily series of the last [`WINDOW_DAYS`] days ending `today`, oldest first, every day
/// present (days missing from `counts` are zero).
pub fn series(today: NaiveDate, counts: &[Day]) -> Vec<Day> {
    (0..WINDOW_DAYS)
        .rev()
        .map(|age| {
            let day = today - Duration::days(age);
            counts
                .iter()
                .find(|d| d.day == day)
                .copied()
                .unwrap_or(Day {
                    day,
                    allocations: 0,
                    revocations: 0,
                })
        })
        .collect()
}

/// The forecast from the daily series (any order; days outside the window ignored), the
/// first allocation's day, and the licenses still available now.
pub fn forecast(
    today: NaiveDate,
    days: &[Day],
    first_allocation: Option<NaiveDate>,
    available: i64,
) -> Forecast {
    let Some(first) = first_allocation.filter(|f| *f <= today) else {
        return Forecast {
            history_days: 0,
            net_rate_per_day: None,
            outcome: Err(NoForecast::InsufficientHistory),
        };
    };
    let history_days = ((today - first).num_days() + 1).min(WINDOW_DAYS);
    let (mut weighted, mut weights) = (0.0_f64, 0.0_f64);
    for age in 0..history_days {
        let day = today - Duration::days(age);
        let net = days
            .iter()
            .filter(|d| d.day == day)
            .map(|d| d.allocations - d.revocations)
            .sum::<i64>();
        let w = 0.5_f64.powf(age as f64 / HALF_LIFE_DAYS);
        weighted += w * net as f64;
        weights += w;
    }
    let rate = weighted / weights;
    let outcome = if history_days < MIN_HISTORY_DAYS {
        Err(NoForecast::InsufficientHistory)
    } else if rate <= 0.0 || !rate.is_finite() {
        Err(NoForecast::NotConsuming)
    } else {
        Ok(available.max(0) as f64 / rate)
    };
    Forecast {
        history_days,
        net_rate_per_day: Some(rate),
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 12, 6).unwrap()
    }

    fn history(nets: &[(i64, i64)]) -> Vec<Day> {
        // nets[0] is today, nets[1] yesterday, ...
        nets.iter()
            .enumerate()
            .map(|(age, (a, r))| Day {
                day: today() - Duration::days(age as i64),
                allocations: *a,
                revocations: *r,
            })
            .collect()
    }

    #[test]
    fn flat_consumption_forecasts_available_over_the_rate() {
        let days = history(&[(5, 0); 20]);
        let f = forecast(today(), &days, Some(today() - Duration::days(19)), 100);
        assert_eq!(f.history_days, 20);
        let rate = f.net_rate_per_day.unwrap();
        assert!((rate - 5.0).abs() < 1e-9, "{rate}");
        assert!((f.outcome.unwrap() - 20.0).abs() < 1e-9);
    }

    #[test]
    fn rising_consumption_weighs_recent_days_more() {
        // 30 days: 1 a day long ago, rising to 30 a day today.
        let nets: Vec<(i64, i64)> = (0..30).map(|age| (30 - age, 0)).collect();
        let f = forecast(
            today(),
            &history(&nets),
            Some(today() - Duration::days(40)),
            1000,
        );
        assert_eq!(f.history_days, 30, "capped at the window");
        let rate = f.net_rate_per_day.unwrap();
        let plain_mean = 15.5;
        assert!(rate > plain_mean, "recent days weigh more: {rate}");
        assert!(rate < 30.0);
        assert!((f.outcome.unwrap() - 1000.0 / rate).abs() < 1e-9);
    }

    #[test]
    fn half_life_halves_a_day_fourteen_days_old() {
        // Only today (2) and 14 days ago (4): weights 1 and 0.5 among 15 days.
        let mut nets = vec![(0, 0); 15];
        nets[0] = (2, 0);
        nets[14] = (4, 0);
        let f = forecast(
            today(),
            &history(&nets),
            Some(today() - Duration::days(14)),
            10,
        );
        let weights: f64 = (0..15).map(|a| 0.5_f64.powf(a as f64 / 14.0)).sum();
        let expected = (2.0 + 0.5 * 4.0) / weights;
        assert!((f.net_rate_per_day.unwrap() - expected).abs() < 1e-12);
    }

    #[test]
    fn no_history_gives_no_forecast() {
        let f = forecast(today(), &[], None, 10);
        assert_eq!(f.outcome, Err(NoForecast::InsufficientHistory));
        assert_eq!(f.history_days, 0);
        assert_eq!(f.net_rate_per_day, None);
    }

    #[test]
    fn fewer_than_seven_days_give_no_forecast() {
        let days = history(&[(10, 0); 6]);
        let f = forecast(today(), &days, Some(today() - Duration::days(5)), 10);
        assert_eq!(f.history_days, 6);
        assert_eq!(f.outcome, Err(NoForecast::InsufficientHistory));
        let f = forecast(today(), &days, Some(today() - Duration::days(6)), 10);
        assert_eq!(f.history_days, 7);
        assert!(f.outcome.is_ok(), "seven days suffice");
    }

    #[test]
    fn revocations_keeping_up_give_no_forecast() {
        let f = forecast(
            today(),
            &history(&[(3, 3); 10]),
            Some(today() - Duration::days(9)),
            10,
        );
        assert_eq!(f.outcome, Err(NoForecast::NotConsuming));
        let f = forecast(
            today(),
            &history(&[(1, 4); 10]),
            Some(today() - Duration::days(9)),
            10,
        );
        assert!(f.net_rate_per_day.unwrap() < 0.0);
        assert_eq!(f.outcome, Err(NoForecast::NotConsuming));
    }

    #[test]
    fn nothing_available_is_zero_days() {
        let f = forecast(
            today(),
            &history(&[(2, 0); 10]),
            Some(today() - Duration::days(9)),
            0,
        );
        assert_eq!(f.outcome, Ok(0.0));
    }

    #[test]
    fn series_fills_missing_days_oldest_first() {
        let s = series(today(), &history(&[(1, 0), (0, 0), (3, 1)]));
        assert_eq!(s.len(), 30);
        assert_eq!(s[29].day, today());
        assert_eq!(s[29].allocations, 1);
        assert_eq!(s[27].revocations, 1);
        assert_eq!(s[0].day, today() - Duration::days(29));
        assert_eq!(s[0].allocations, 0);
    }
}
