//! The account status state machine (rule T2 in docs/rules.md).
//!
//! Status is computed from three things: a *base condition* learned from Apple (sticky until
//! Apple says otherwise), the token's expiry date, and a Retry-After window. Precedence, highest
//! first:
//!
//! 1. `revoked` (9625), `invalid` (9622/9722), `login_required` (9601) — Apple refuses the token;
//! 2. `expired` — the expiry date passed, or Apple answered 9621;
//! 3. `not_owned` — Apple reports another MDM's `mdmInfo`; cleared by Reclaim Ownership;
//! 4. `throttled` — a 429/503 Retry-After window is in force (until `throttled_until`);
//! 5. `expiring` — the token expires within 30 days;
//! 6. `active`.
//!
//! Sticky conditions (1–3) persist until an observation clears them (a successful Test, a
//! token replacement, a reclaim); `throttled` and `expiring` follow the clock. Every change of
//! the effective status is persisted with a reason that says what to do, and logged as
//! `account.status_changed` in the activity log.

use chrono::{DateTime, Duration, Utc};

use crate::apple::error::AuthFailure;

crate::text_enum! {
    /// Health of a token account.
    pub enum AccountStatus {
        /// Usable.
        Active = "active",
        /// Usable, but the token expires within 30 days.
        Expiring = "expiring",
        /// The token expired; upload a new one.
        Expired = "expired",
        /// Apple revoked the token.
        Revoked = "revoked",
        /// Apple does not recognise the token.
        Invalid = "invalid",
        /// Apple asks for the content manager to log in again.
        LoginRequired = "login_required",
        /// Another MDM's identity is in the token's client config.
        NotOwned = "not_owned",
        /// Apple asked us to wait (Retry-After); resumes by itself.
        Throttled = "throttled",
    }
}

/// How long before expiry an account counts as `expiring`.
pub fn expiring_window() -> Duration {
    Duration::days(30)
}

impl AccountStatus {
    /// Conditions that stay until Apple says otherwise.
    pub fn is_sticky(self) -> bool {
        matches!(
            self,
            AccountStatus::Revoked
                | AccountStatus::Invalid
                | AccountStatus::LoginRequired
                | AccountStatus::NotOwned
                | AccountStatus::Expired
        )
    }

    /// Whether new Apple calls may be made for this account (rule A10).
    pub fn allows_apple_calls(self) -> bool {
        matches!(self, AccountStatus::Active | AccountStatus::Expiring)
    }
}

/// What was just learned about an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// Apple served the token. `owned`: its mdmInfo is ours (or absent and we wrote ours).
    Healthy {
        owned: bool,
        other_owner: Option<String>,
    },
    /// Apple refused the token.
    Auth(AuthFailure),
    /// Apple asked to wait until `until`.
    Throttled { until: DateTime<Utc> },
}

/// The persisted part of an account's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusState {
    pub status: AccountStatus,
    pub reason: String,
    pub throttled_until: Option<DateTime<Utc>>,
}

fn auth_status(failure: AuthFailure) -> AccountStatus {
    match failure {
        AuthFailure::Expired => AccountStatus::Expired,
        AuthFailure::Invalid | AuthFailure::BadHeader => AccountStatus::Invalid,
        AuthFailure::Revoked => AccountStatus::Revoked,
        AuthFailure::LoginRequired => AccountStatus::LoginRequired,
    }
}

/// The next status given the stored state, the token's expiry, an optional new observation and
/// the time.
pub fn next(
    stored: &StatusState,
    expires_at: DateTime<Utc>,
    observation: Option<&Observation>,
    now: DateTime<Utc>,
) -> StatusState {
    let mut other_owner = None;
    let base = match observation {
        Some(Observation::Healthy { owned: true, .. }) => AccountStatus::Active,
        Some(Observation::Healthy {
            owned: false,
            other_owner: who,
        }) => {
            other_owner = who.clone();
            AccountStatus::NotOwned
        }
        Some(Observation::Auth(failure)) => auth_status(*failure),
        Some(Observation::Throttled { .. }) | None => {
            if stored.status.is_sticky() {
                stored.status
            } else {
                AccountStatus::Active
            }
        }
    };
    let throttled_until = match observation {
        Some(Observation::Throttled { until }) => {
            Some(stored.throttled_until.map_or(*until, |t| t.max(*until)))
        }
        Some(Observation::Healthy { .. }) => None,
        _ => stored.throttled_until.filter(|t| *t > now),
    };

    let (status, reason) = match base {
        AccountStatus::Revoked => (base, "Apple revoked this sToken (9625); download a new token in Apple Business Manager and replace it".to_owned()),
        AccountStatus::Invalid => (base, "Apple does not accept this sToken (9622); download a new token in Apple Business Manager and replace it".to_owned()),
        AccountStatus::LoginRequired => (base, "Apple requires the content manager to sign in again (9601); sign in to Apple Business Manager, then test the account".to_owned()),
        _ if expires_at <= now => (
            AccountStatus::Expired,
            format!(
                "the sToken expired on {}; download a new token in Apple Business Manager and replace it",
                expires_at.format("%Y-%m-%d")
            ),
        ),
        // Apple's verdict, not the file's date (which may still be in the future).
        AccountStatus::Expired => (
            AccountStatus::Expired,
            format!(
                "Apple reports this sToken as expired (9621), although the token file says it is valid until {}; download a new token in Apple Business Manager and replace it",
                expires_at.format("%Y-%m-%d")
            ),
        ),
        AccountStatus::NotOwned => {
            let reason = match other_owner {
                Some(who) => format!("Apple reports another MDM ({who}) as owner of this token; reclaim ownership to manage its licenses here"),
                None if stored.status == AccountStatus::NotOwned => stored.reason.clone(),
                None => "Apple reports another MDM as owner of this token; reclaim ownership to manage its licenses here".to_owned(),
            };
            (AccountStatus::NotOwned, reason)
        }
        _ if throttled_until.is_some_and(|t| t > now) => (
            AccountStatus::Throttled,
            format!(
                "Apple asked to retry after {}; new Apple calls for this account wait until then and resume by themselves",
                throttled_until.map(|t| t.to_rfc3339()).unwrap_or_default()
            ),
        ),
        _ if expires_at - now <= expiring_window() => (
            AccountStatus::Expiring,
            format!(
                "the sToken expires on {}; download a new token in Apple Business Manager and replace it before then",
                expires_at.format("%Y-%m-%d")
            ),
        ),
        _ => (AccountStatus::Active, String::new()),
    };
    StatusState {
        status,
        reason,
        throttled_until,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(status: AccountStatus) -> StatusState {
        StatusState {
            status,
            reason: String::new(),
            throttled_until: None,
        }
    }

    fn now() -> DateTime<Utc> {
        "2026-11-22T12:00:00Z".parse().unwrap()
    }

    fn healthy() -> Observation {
        Observation::Healthy {
            owned: true,
            other_owner: None,
        }
    }

    #[test]
    fn expiry_drives_expiring_and_expired() {
        let far = now() + Duration::days(200);
        assert_eq!(
            next(&state(AccountStatus::Active), far, None, now()).status,
            AccountStatus::Active
        );
        let soon = now() + Duration::days(30);
        let s = next(&state(AccountStatus::Active), soon, None, now());
        assert_eq!(s.status, AccountStatus::Expiring);
        assert!(s.reason.contains("2026-12-22"), "{}", s.reason);
        let past = now() - Duration::seconds(1);
        assert_eq!(
            next(&state(AccountStatus::Expiring), past, None, now()).status,
            AccountStatus::Expired
        );
        // A healthy answer cannot resurrect a token whose date passed.
        assert_eq!(
            next(
                &state(AccountStatus::Expired),
                past,
                Some(&healthy()),
                now()
            )
            .status,
            AccountStatus::Expired
        );
    }

    #[test]
    fn apple_refusals_are_sticky_until_healthy() {
        let far = now() + Duration::days(200);
        for (failure, status) in [
            (AuthFailure::Revoked, AccountStatus::Revoked),
            (AuthFailure::Invalid, AccountStatus::Invalid),
            (AuthFailure::BadHeader, AccountStatus::Invalid),
            (AuthFailure::LoginRequired, AccountStatus::LoginRequired),
            (AuthFailure::Expired, AccountStatus::Expired),
        ] {
            let s = next(
                &state(AccountStatus::Active),
                far,
                Some(&Observation::Auth(failure)),
                now(),
            );
            assert_eq!(s.status, status);
            assert!(!s.reason.is_empty());
            assert!(
                !s.reason.contains("expired on"),
                "Apple's verdict, not a date a year away: {}",
                s.reason
            );
            let later = next(&s, far, None, now() + Duration::days(1));
            assert_eq!(later.status, status, "sticky");
            let cleared = next(&later, far, Some(&healthy()), now());
            assert_eq!(cleared.status, AccountStatus::Active);
        }
    }

    #[test]
    fn throttling_ends_by_itself_and_never_hides_worse_conditions() {
        let far = now() + Duration::days(200);
        let until = now() + Duration::seconds(120);
        let t = next(
            &state(AccountStatus::Active),
            far,
            Some(&Observation::Throttled { until }),
            now(),
        );
        assert_eq!(t.status, AccountStatus::Throttled);
        assert_eq!(t.throttled_until, Some(until));
        assert_eq!(
            next(&t, far, None, now() + Duration::seconds(60)).status,
            AccountStatus::Throttled
        );
        let after = next(&t, far, None, now() + Duration::seconds(121));
        assert_eq!(after.status, AccountStatus::Active);
        assert_eq!(after.throttled_until, None);
        // A shorter Retry-After does not shorten the window.
        let t2 = next(
            &t,
            far,
            Some(&Observation::Throttled {
                until: now() + Duration::seconds(5),
            }),
            now(),
        );
        assert_eq!(t2.throttled_until, Some(until));
        // Revoked outranks throttled.
        let r = next(
            &state(AccountStatus::Revoked),
            far,
            Some(&Observation::Throttled { until }),
            now(),
        );
        assert_eq!(r.status, AccountStatus::Revoked);
    }

    #[test]
    fn ownership() {
        let far = now() + Duration::days(200);
        let other = Observation::Healthy {
            owned: false,
            other_owner: Some("Other MDM".into()),
        };
        let s = next(&state(AccountStatus::Active), far, Some(&other), now());
        assert_eq!(s.status, AccountStatus::NotOwned);
        assert!(s.reason.contains("Other MDM"));
        assert_eq!(next(&s, far, None, now()).reason, s.reason, "reason kept");
        assert_eq!(
            next(&s, far, Some(&healthy()), now()).status,
            AccountStatus::Active
        );
        assert!(!AccountStatus::NotOwned.allows_apple_calls());
        assert!(AccountStatus::Expiring.allows_apple_calls());
    }
}

crate::text_enum! {
    /// What allocation does with an account it may not call Apple for (expired, revoked, not
    /// owned, throttled) — rule A10.
    pub enum WhenUnusable {
        /// The default: queue behind a Retry-After (`throttled` passes by itself), skip an
        /// account that is unusable until someone acts (expired, revoked, invalid, login
        /// required, not owned), so the next account serves instead of licenses waiting days.
        QueueWhenThrottled = "queue_when_throttled",
        /// Always allocate from the ledger; the Apple call waits until the account is usable.
        Queue = "queue",
        /// Always skip the account and try the next one.
        Skip = "skip",
    }
}

impl WhenUnusable {
    /// Whether an account in `status` (which forbids Apple calls) still takes allocations.
    pub fn queues(self, status: AccountStatus) -> bool {
        match self {
            WhenUnusable::Queue => true,
            WhenUnusable::Skip => false,
            WhenUnusable::QueueWhenThrottled => status == AccountStatus::Throttled,
        }
    }
}
