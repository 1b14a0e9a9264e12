//! Notifications (rules N1, N2; issue 15): which conditions raise one, at which severity, with
//! which message and action to take, and when an open one clears. Pure: the use case
//! (`crate::notices`) gathers the [`Facts`] and the open notifications, calls [`evaluate`], and
//! writes the [`Changes`]. (Named *notices* in the code to keep them apart from Apple's
//! notifications, which `crate::settle` receives.)
//!
//! # Conditions and their keys
//! Each condition has a key (`kind:target:level`, e.g. `license.usage:asset:361309726:STDQ:70`);
//! at most one notification per key is open at a time, so a condition holding over many
//! evaluations raises one notification, and a new one only after it cleared.
//!
//! **License usage** (N1), for each asset of the space (all accounts together: what an
//! allocation of it can draw from), each account (all its assets) and the whole space:
//! `usage = (held here + assigned elsewhere at Apple) / owned`.
//! * Crossing 50 % raises `info`, 70 % and 80 % `warn`, 90 % and 100 % `alert`: one
//!   notification per threshold crossed (a jump from 40 % to 95 % raises four).
//! * They stay open while usage stays at or above 50 % (falling from 75 % to 65 % and back
//!   raises nothing new: the 70 % one is still open); dropping below 50 % clears them all.
//! * An asset whose licenses are all taken (nothing left to hand out at any account: owned −
//!   held − assigned elsewhere, per account) raises `license.exhausted` (`alert`); when
//!   licenses are free again it clears (`available_again`) and, while usage is still at or
//!   above 50 %, `license.available_again` (`info`) is raised, which clears when the asset runs
//!   out again or usage drops below 50 % (emptied below 50 % at once, the clear of
//!   `license.exhausted` and of the usage notifications say it: no notification is raised
//!   only to clear at the next evaluation).
//! * The exhaustion forecast of an asset (the read side's, `domain::forecast`) under 14 days
//!   raises `warn`, under 3 days `alert`; both clear when the forecast is 14 days or more, or
//!   there is none (not consuming, too little history). Forecasts are evaluated less often than
//!   the rest (facts without forecasts leave these notifications as they are).
//!
//! **Tokens** (N2), per account: expiring within 30 (`info`), 14 and 7 (`warn`), 3 and 1
//! (`alert`) days — one per threshold and token (the expiry day is in the key), cleared when
//! the token is replaced or has expired;
//! expired, revoked, invalid, login required, not owned (`alert` each, cleared when the status
//! ends); throttled by Apple for more than a minute (`warn`: the Retry-After window reaches
//! more than a minute past the throttle's start); not synced for twice the incremental sync
//! interval (`warn`; counted from the account's last change when it never synced — new, or
//! its location switched; not raised while a token problem or a throttle explains it, whose
//! notification is the one to act on). Each says what to do.
//!
//! A condition whose target is gone (an account deleted or being deleted, an asset vanished
//! from Apple) clears with reason `gone`.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::account_status::{self as status, AccountStatus, StatusState};
use super::inventory::usage_percent;

crate::text_enum! {
    /// What a notification is about.
    pub enum NoticeKind {
        /// N1: usage of an asset, an account or the space crossed `level` percent.
        LicenseUsage = "license.usage",
        /// N1: no license of the asset is left at any account of the space.
        LicenseExhausted = "license.exhausted",
        /// N1: licenses of an asset that had run out are free again.
        LicenseAvailableAgain = "license.available_again",
        /// N1: at the current rate the asset runs out in under `level` days (14 or 3).
        ExhaustionForecast = "license.exhaustion_forecast",
        /// N2: the account's sToken expires within `level` days (30, 14, 7, 3, 1).
        TokenExpiring = "token.expiring",
        /// N2: the sToken expired.
        TokenExpired = "token.expired",
        /// N2: Apple revoked the sToken.
        TokenRevoked = "token.revoked",
        /// N2: Apple does not accept the sToken.
        TokenInvalid = "token.invalid",
        /// N2: Apple asks the content manager to sign in again.
        TokenLoginRequired = "token.login_required",
        /// N2: another MDM owns the location.
        TokenNotOwned = "token.not_owned",
        /// N2: Apple throttles the token for more than a minute.
        TokenThrottled = "token.throttled",
        /// N2: the account has not synced for twice the incremental sync interval.
        TokenNotSynced = "token.not_synced",
    }
}

crate::text_enum! {
    /// How urgent a notification is.
    pub enum Severity { Info = "info", Warn = "warn", Alert = "alert" }
}

crate::text_enum! {
    /// What a notification's figures cover.
    pub enum NoticeScope {
        /// One asset (`adam_id`, `pricing_param`) over all the space's accounts.
        Asset = "asset",
        /// One account (`account_id`).
        Account = "account",
        /// The whole space.
        Space = "space",
    }
}

crate::text_enum! {
    /// Why an open notification was cleared.
    pub enum ClearReason {
        /// Usage dropped below 50 %.
        UsageBelow50 = "usage_below_50_percent",
        /// Licenses of the exhausted asset are free again.
        AvailableAgain = "available_again",
        /// The asset ran out again (clears `license.available_again`).
        ExhaustedAgain = "exhausted_again",
        /// The forecast is 14 days or more, or there is none any more.
        ForecastRecovered = "forecast_recovered",
        /// The sToken was replaced by one valid for longer.
        TokenReplaced = "token_replaced",
        /// The token expired (clears the `token.expiring` ones; `token.expired` follows).
        TokenExpired = "token_expired",
        /// The account's status no longer shows the problem.
        Resolved = "resolved",
        /// The account synced.
        Synced = "synced",
        /// The account or asset is gone.
        Gone = "gone",
    }
}

crate::text_enum! {
    /// Whether a notification's condition still holds.
    pub enum NoticeState {
        /// The condition holds.
        Open = "open",
        /// The condition ended (`cleared_reason`).
        Cleared = "cleared",
    }
}

crate::text_enum! {
    /// Which notifications the list shows.
    pub enum NoticeStateFilter { Open = "open", Cleared = "cleared", All = "all" }
}

/// Usage thresholds, in percent, with their severity.
pub const USAGE_LEVELS: [(i32, Severity); 5] = [
    (50, Severity::Info),
    (70, Severity::Warn),
    (80, Severity::Warn),
    (90, Severity::Alert),
    (100, Severity::Alert),
];
/// Token expiry thresholds, in days, with their severity.
pub const EXPIRY_LEVELS: [(i32, Severity); 5] = [
    (30, Severity::Info),
    (14, Severity::Warn),
    (7, Severity::Warn),
    (3, Severity::Alert),
    (1, Severity::Alert),
];
/// Exhaustion forecast thresholds, in days, with their severity.
pub const FORECAST_LEVELS: [(i32, Severity); 2] = [(14, Severity::Warn), (3, Severity::Alert)];
/// A throttle lasting longer than this raises `token.throttled`.
pub const THROTTLE_NOTICE_AFTER: Duration = Duration::seconds(60);

/// What a notification's condition is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Asset {
        adam_id: String,
        pricing_param: String,
    },
    Account(Uuid),
    Space,
}

impl Target {
    pub fn scope(&self) -> NoticeScope {
        match self {
            Target::Asset { .. } => NoticeScope::Asset,
            Target::Account(_) => NoticeScope::Account,
            Target::Space => NoticeScope::Space,
        }
    }

    fn key(&self) -> String {
        match self {
            Target::Asset {
                adam_id,
                pricing_param,
            } => format!("asset:{adam_id}:{pricing_param}"),
            Target::Account(id) => format!("account:{id}"),
            Target::Space => "space".into(),
        }
    }
}

/// The key of a `token.expiring` condition: the token's expiry day is part of it, so a token
/// replaced by another one expiring soon too gets its own notifications (the old ones, naming
/// the old date, clear as `token_replaced`).
fn expiring_key(target: &Target, expires_at: DateTime<Utc>, level: i32) -> String {
    format!(
        "{}:{}:{}:{level}",
        NoticeKind::TokenExpiring,
        target.key(),
        expires_at.format("%Y-%m-%d")
    )
}

/// The key of a condition: at most one open notification per (space, key).
pub fn key(kind: NoticeKind, target: &Target, level: Option<i32>) -> String {
    match level {
        Some(level) => format!("{kind}:{}:{level}", target.key()),
        None => format!("{kind}:{}", target.key()),
    }
}

/// Licenses of an asset, an account or a space, as the ledger knows them.
#[derive(Clone, Debug)]
pub struct Usage {
    pub space: String,
    pub target: Target,
    /// The account's name (account targets), for the message.
    pub name: Option<String>,
    /// Owned at Apple (as last synced or counted).
    pub total: i64,
    /// Held by this deployment's live assignments.
    pub held: i64,
    /// Assigned at Apple by others.
    pub elsewhere: i64,
    /// Left to hand out (per account never below 0).
    pub available: i64,
}

/// An account's token, as stored.
#[derive(Clone, Debug)]
pub struct Token {
    pub space: String,
    pub account_id: Uuid,
    pub name: String,
    pub status: StatusState,
    pub status_changed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The last sync that succeeded (full or incremental), or none yet.
    pub last_synced_at: Option<DateTime<Utc>>,
    /// When the account was attached or last changed (its row's `updated_at`).
    pub changed_at: DateTime<Utc>,
}

/// An asset's exhaustion forecast.
#[derive(Clone, Debug)]
pub struct ForecastFact {
    pub space: String,
    pub adam_id: String,
    pub pricing_param: String,
    /// Days until nothing is left, or none (not consuming, too little history).
    pub days: Option<f64>,
    /// Nothing is left already (`license.exhausted` says so): the forecast notifications stay
    /// as they are.
    pub exhausted: bool,
    pub rate_per_day: Option<f64>,
}

/// Everything one evaluation looks at.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub usage: Vec<Usage>,
    pub tokens: Vec<Token>,
    /// `None`: forecasts were not computed this time (their notifications stay as they are).
    pub forecasts: Option<Vec<ForecastFact>>,
    /// The incremental sync interval (`token.not_synced` after twice it).
    pub sync_interval: Duration,
}

/// An open notification, as far as evaluation needs it.
#[derive(Clone, Debug)]
pub struct Open {
    pub id: Uuid,
    pub space: String,
    pub key: String,
    pub kind: NoticeKind,
}

/// A notification to raise.
#[derive(Clone, Debug, PartialEq)]
pub struct Raise {
    pub space: String,
    pub key: String,
    pub kind: NoticeKind,
    pub severity: Severity,
    pub target: Target,
    pub level: Option<i32>,
    pub message: String,
    pub action: String,
    /// The figures behind it.
    pub details: Value,
}

/// What one evaluation changes.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    pub raise: Vec<Raise>,
    pub clear: Vec<(Uuid, ClearReason)>,
}

enum Verdict {
    /// The condition holds: open it unless it is.
    Raise(Box<Raise>),
    /// Leave it as it is (open or not).
    Keep,
    /// Clear it if it is open.
    Clear(ClearReason),
}

#[derive(Default)]
struct Verdicts(HashMap<(String, String), Verdict>);

impl Verdicts {
    fn set(&mut self, space: &str, key: String, verdict: Verdict) {
        self.0.insert((space.to_owned(), key), verdict);
    }

    fn raise(&mut self, raise: Raise) {
        self.0.insert(
            (raise.space.clone(), raise.key.clone()),
            Verdict::Raise(Box::new(raise)),
        );
    }
}

/// The notifications to raise and to clear, given the facts and what is open at `now`.
pub fn evaluate(facts: &Facts, open: &[Open], now: DateTime<Utc>) -> Changes {
    let mut verdicts = Verdicts::default();
    let open_keys: HashSet<(&str, &str)> = open
        .iter()
        .map(|o| (o.space.as_str(), o.key.as_str()))
        .collect();
    for usage in &facts.usage {
        usage_verdicts(&mut verdicts, usage, &open_keys);
    }
    if let Some(forecasts) = &facts.forecasts {
        for forecast in forecasts {
            forecast_verdicts(&mut verdicts, forecast, now);
        }
    }
    for token in &facts.tokens {
        token_verdicts(&mut verdicts, token, facts.sync_interval, now);
    }

    let accounts: Vec<String> = facts
        .tokens
        .iter()
        .map(|t| {
            format!(
                "{}:{}:",
                NoticeKind::TokenExpiring,
                Target::Account(t.account_id).key()
            )
        })
        .collect();
    let mut changes = Changes::default();
    for o in open {
        match verdicts.0.get(&(o.space.clone(), o.key.clone())) {
            Some(Verdict::Raise(_) | Verdict::Keep) => {}
            Some(Verdict::Clear(reason)) => changes.clear.push((o.id, *reason)),
            // Forecasts not computed this time: leave them.
            None if o.kind == NoticeKind::ExhaustionForecast && facts.forecasts.is_none() => {}
            // An expiring notice of an account still here named another token.
            None if o.kind == NoticeKind::TokenExpiring
                && accounts
                    .iter()
                    .any(|prefix| o.key.starts_with(prefix.as_str())) =>
            {
                changes.clear.push((o.id, ClearReason::TokenReplaced))
            }
            None => changes.clear.push((o.id, ClearReason::Gone)),
        }
    }
    let mut raise: Vec<Raise> = verdicts
        .0
        .into_iter()
        .filter_map(|((space, key), verdict)| match verdict {
            Verdict::Raise(r) if !open_keys.contains(&(space.as_str(), key.as_str())) => Some(*r),
            _ => None,
        })
        .collect();
    // A stable order: by space, then key (a jump raises its thresholds lowest first).
    raise.sort_by(|a, b| {
        (&a.space, a.kind, &a.target.key(), a.level).cmp(&(
            &b.space,
            b.kind,
            &b.target.key(),
            b.level,
        ))
    });
    changes.raise = raise;
    changes
}

/// How a target is named in messages.
fn what(target: &Target, name: Option<&str>) -> String {
    match target {
        Target::Asset {
            adam_id,
            pricing_param,
        } => format!("asset {adam_id} ({pricing_param})"),
        Target::Account(id) => match name {
            Some(name) => format!("account \"{name}\""),
            None => format!("account {id}"),
        },
        Target::Space => "the space".into(),
    }
}

fn usage_verdicts(v: &mut Verdicts, u: &Usage, open: &HashSet<(&str, &str)>) {
    let percent = usage_percent(u.total, u.held, u.elsewhere);
    let used = u.held + u.elsewhere;
    let figures = json!({
        "owned": u.total,
        "held": u.held,
        "assigned_elsewhere": u.elsewhere,
        "available": u.available,
        "usage_percent": percent.map(|p| (p * 10.0).round() / 10.0),
    });
    let what = what(&u.target, u.name.as_deref());
    for (level, severity) in USAGE_LEVELS {
        let key = key(NoticeKind::LicenseUsage, &u.target, Some(level));
        match percent {
            Some(p) if p >= f64::from(level) => v.raise(Raise {
                space: u.space.clone(),
                key,
                kind: NoticeKind::LicenseUsage,
                severity,
                target: u.target.clone(),
                level: Some(level),
                message: format!(
                    "{what} is {:.0} % used ({used} of {} licenses): it crossed {level} %",
                    p.floor(),
                    u.total
                ),
                action: if level >= 90 {
                    "buy more licenses in Apple Business Manager now, or free unused ones \
                     (Reconcile, revocations): new allocations fail once none is left"
                        .into()
                } else {
                    "plan a purchase of more licenses in Apple Business Manager, or free unused \
                     ones (Reconcile, revocations)"
                        .into()
                },
                details: figures.clone(),
            }),
            Some(p) if p >= 50.0 => v.set(&u.space, key, Verdict::Keep),
            _ => v.set(&u.space, key, Verdict::Clear(ClearReason::UsageBelow50)),
        }
    }
    let Target::Asset { .. } = u.target else {
        return;
    };
    let exhausted = u.total > 0 && u.available <= 0;
    let exhausted_key = key(NoticeKind::LicenseExhausted, &u.target, None);
    let again_key = key(NoticeKind::LicenseAvailableAgain, &u.target, None);
    let was_exhausted = open.contains(&(u.space.as_str(), exhausted_key.as_str()));
    if exhausted {
        v.raise(Raise {
            space: u.space.clone(),
            key: exhausted_key,
            kind: NoticeKind::LicenseExhausted,
            severity: Severity::Alert,
            target: u.target.clone(),
            level: None,
            message: format!(
                "no license of {what} is left at any account of the space ({used} of {} taken)",
                u.total
            ),
            action: "buy licenses in Apple Business Manager, or revoke unused ones: until \
                     then allocations that may wait (`wait_for_license`) wait in line and \
                     the others are refused (409)"
                .into(),
            details: figures,
        });
        v.set(
            &u.space,
            again_key,
            Verdict::Clear(ClearReason::ExhaustedAgain),
        );
        return;
    }
    if u.total <= 0 {
        // Owning nothing any more (refunded, transferred) is not "available again".
        v.set(&u.space, exhausted_key, Verdict::Clear(ClearReason::Gone));
        v.set(&u.space, again_key, Verdict::Clear(ClearReason::Gone));
        return;
    }
    v.set(
        &u.space,
        exhausted_key,
        Verdict::Clear(ClearReason::AvailableAgain),
    );
    let half_used = percent.is_some_and(|p| p >= 50.0);
    if was_exhausted && half_used {
        v.raise(Raise {
            space: u.space.clone(),
            key: again_key,
            kind: NoticeKind::LicenseAvailableAgain,
            severity: Severity::Info,
            target: u.target.clone(),
            level: None,
            message: format!(
                "licenses of {what} are available again ({} free)",
                u.available
            ),
            action: "nothing to do: allocations of this asset succeed again (waiting ones \
                     are served in order)"
                .into(),
            details: figures,
        });
    } else if half_used {
        v.set(&u.space, again_key, Verdict::Keep);
    } else {
        v.set(
            &u.space,
            again_key,
            Verdict::Clear(ClearReason::UsageBelow50),
        );
    }
}

fn forecast_verdicts(v: &mut Verdicts, f: &ForecastFact, now: DateTime<Utc>) {
    let target = Target::Asset {
        adam_id: f.adam_id.clone(),
        pricing_param: f.pricing_param.clone(),
    };
    let what = what(&target, None);
    for (level, severity) in FORECAST_LEVELS {
        let key = key(NoticeKind::ExhaustionForecast, &target, Some(level));
        if f.exhausted {
            v.set(&f.space, key, Verdict::Keep);
            continue;
        }
        match f.days {
            Some(days) if days < f64::from(level) => {
                let runs_out = now + Duration::seconds((days * 86_400.0) as i64);
                v.raise(Raise {
                    space: f.space.clone(),
                    key,
                    kind: NoticeKind::ExhaustionForecast,
                    severity,
                    target: target.clone(),
                    level: Some(level),
                    message: format!(
                        "at the current rate ({:.1} licenses a day) {what} runs out in about \
                         {:.1} days, under {level}",
                        f.rate_per_day.unwrap_or(0.0),
                        days
                    ),
                    action: format!(
                        "buy licenses in Apple Business Manager before {}, or free unused ones",
                        runs_out.format("%Y-%m-%d")
                    ),
                    details: json!({
                        "days_until_exhausted": (days * 10.0).round() / 10.0,
                        "net_rate_per_day": f.rate_per_day.map(|r| (r * 100.0).round() / 100.0),
                        "exhausted_around": runs_out,
                    }),
                });
            }
            _ => v.set(
                &f.space,
                key,
                Verdict::Clear(ClearReason::ForecastRecovered),
            ),
        }
    }
}

fn token_verdicts(v: &mut Verdicts, t: &Token, sync_interval: Duration, now: DateTime<Utc>) {
    let target = Target::Account(t.account_id);
    let what = what(&target, Some(&t.name));
    let path = format!("/v1/spaces/{}/accounts/{}", t.space, t.account_id);
    let upload = format!(
        "upload a valid sToken: download a new one for this location in Apple Business Manager \
         and send it to PUT {path}/stoken"
    );
    let left = t.expires_at - now;
    let expiry = t.expires_at.format("%Y-%m-%d").to_string();
    for (level, severity) in EXPIRY_LEVELS {
        let key = expiring_key(&target, t.expires_at, level);
        if left > Duration::zero() && left <= Duration::days(i64::from(level)) {
            let days = left.num_hours() as f64 / 24.0;
            v.raise(Raise {
                space: t.space.clone(),
                key,
                kind: NoticeKind::TokenExpiring,
                severity,
                target: target.clone(),
                level: Some(level),
                message: format!(
                    "the sToken of {what} expires on {expiry} (in {days:.1} days, under {level})"
                ),
                action: format!(
                    "download a new sToken for this location in Apple Business Manager and send \
                     it to PUT {path}/stoken before {expiry}"
                ),
                details: json!({ "expires_at": t.expires_at, "days_left": (days * 10.0).round() / 10.0 }),
            });
        } else if left <= Duration::zero() {
            v.set(&t.space, key, Verdict::Clear(ClearReason::TokenExpired));
        } else {
            v.set(&t.space, key, Verdict::Clear(ClearReason::TokenReplaced));
        }
    }

    let effective = status::next(&t.status, t.expires_at, None, now);
    let state = effective.status;
    let expired = t.expires_at <= now || state == AccountStatus::Expired;
    let problems: [(NoticeKind, bool, String, ClearReason); 5] = [
        (
            NoticeKind::TokenExpired,
            expired,
            upload.clone(),
            ClearReason::TokenReplaced,
        ),
        (
            NoticeKind::TokenRevoked,
            state == AccountStatus::Revoked,
            upload.clone(),
            ClearReason::Resolved,
        ),
        (
            NoticeKind::TokenInvalid,
            state == AccountStatus::Invalid,
            upload,
            ClearReason::Resolved,
        ),
        (
            NoticeKind::TokenLoginRequired,
            state == AccountStatus::LoginRequired,
            format!(
                "sign in to Apple Business Manager as the location's content manager, then \
                 test the account (POST {path}/test)"
            ),
            ClearReason::Resolved,
        ),
        (
            NoticeKind::TokenNotOwned,
            state == AccountStatus::NotOwned,
            format!(
                "reclaim ownership (POST {path}/reclaim) if this deployment should manage the \
                 location's licenses; otherwise remove the account"
            ),
            ClearReason::Resolved,
        ),
    ];
    for (kind, holds, action, reason) in problems {
        let key = key(kind, &target, None);
        if holds {
            let message = match kind {
                NoticeKind::TokenExpired if t.expires_at <= now => {
                    format!("the sToken of {what} expired on {expiry}")
                }
                NoticeKind::TokenExpired => format!(
                    "Apple reports the sToken of {what} as expired (9621), although the token \
                     file says it is valid until {expiry}"
                ),
                _ => format!("{what}: {}", effective.reason),
            };
            v.raise(Raise {
                space: t.space.clone(),
                key,
                kind,
                severity: Severity::Alert,
                target: target.clone(),
                level: None,
                message,
                action,
                details: json!({ "status": state, "expires_at": t.expires_at }),
            });
        } else {
            v.set(&t.space, key, Verdict::Clear(reason));
        }
    }

    let key_throttled = key(NoticeKind::TokenThrottled, &target, None);
    match effective.throttled_until {
        Some(until)
            if state == AccountStatus::Throttled
                && until - t.status_changed_at > THROTTLE_NOTICE_AFTER =>
        {
            v.raise(Raise {
                space: t.space.clone(),
                key: key_throttled,
                kind: NoticeKind::TokenThrottled,
                severity: Severity::Warn,
                target: target.clone(),
                level: None,
                message: format!(
                    "Apple throttles {what} since {} until {} (Retry-After)",
                    t.status_changed_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    until.format("%Y-%m-%dT%H:%M:%SZ")
                ),
                action: "nothing to do at once: the account's Apple work resumes by itself \
                         after the window; if it recurs, check what else uses this token"
                    .into(),
                details: json!({ "since": t.status_changed_at, "until": until }),
            });
        }
        _ => v.set(
            &t.space,
            key_throttled,
            Verdict::Clear(ClearReason::Resolved),
        ),
    }

    let key_sync = key(NoticeKind::TokenNotSynced, &target, None);
    if state.is_sticky() || state == AccountStatus::Throttled {
        // The token's own notification says why and what to do (a throttled account's syncs
        // wait for the window, like its other Apple work).
        v.set(&t.space, key_sync, Verdict::Keep);
        return;
    }
    // Never synced (new, or its location switched, which forgets the sync times): measured
    // from the account's last change.
    let last = t.last_synced_at.unwrap_or(t.changed_at);
    if now - last > sync_interval * 2 {
        v.raise(Raise {
            space: t.space.clone(),
            key: key_sync,
            kind: NoticeKind::TokenNotSynced,
            severity: Severity::Warn,
            target,
            level: None,
            message: match t.last_synced_at {
                Some(at) => format!(
                    "{what} has not synced with Apple since {} (twice the {}-minute interval)",
                    at.format("%Y-%m-%dT%H:%M:%SZ"),
                    sync_interval.num_minutes()
                ),
                None => format!(
                    "{what} has not synced with Apple since it was attached or its location \
                     changed, on {}",
                    t.changed_at.format("%Y-%m-%dT%H:%M:%SZ")
                ),
            },
            action: format!(
                "read the account's latest sync run (GET {path}/sync-runs) for the reason, and \
                 check that a replica runs sync workers (VPP_SYNC_WORKERS)"
            ),
            details: json!({ "last_synced_at": t.last_synced_at, "interval_minutes": sync_interval.num_minutes() }),
        });
    } else {
        v.set(&t.space, key_sync, Verdict::Clear(ClearReason::Synced));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asset() -> Target {
        Target::Asset {
            adam_id: "100".into(),
            pricing_param: "STDQ".into(),
        }
    }

    fn usage(held: i64, total: i64) -> Usage {
        Usage {
            space: "s".into(),
            target: asset(),
            name: None,
            total,
            held,
            elsewhere: 0,
            available: (total - held).max(0),
        }
    }

    fn facts(usage: Vec<Usage>) -> Facts {
        Facts {
            usage,
            sync_interval: Duration::minutes(15),
            ..Facts::default()
        }
    }

    /// Applies `changes` to `open` like the store does.
    fn apply(open: &mut Vec<Open>, changes: &Changes) {
        open.retain(|o| !changes.clear.iter().any(|(id, _)| *id == o.id));
        open.extend(changes.raise.iter().map(|r| Open {
            id: Uuid::now_v7(),
            space: r.space.clone(),
            key: r.key.clone(),
            kind: r.kind,
        }));
    }

    fn levels(changes: &Changes, kind: NoticeKind) -> Vec<i32> {
        changes
            .raise
            .iter()
            .filter(|r| r.kind == kind)
            .filter_map(|r| r.level)
            .collect()
    }

    #[test]
    fn n1_each_threshold_crossed_is_raised_once_with_its_severity() {
        let now = Utc::now();
        let mut open = Vec::new();
        let first = evaluate(&facts(vec![usage(5, 10)]), &open, now);
        assert_eq!(levels(&first, NoticeKind::LicenseUsage), vec![50]);
        assert_eq!(first.raise[0].severity, Severity::Info);
        apply(&mut open, &first);
        // Same usage again: nothing new.
        let again = evaluate(&facts(vec![usage(5, 10)]), &open, now);
        assert!(again.raise.is_empty() && again.clear.is_empty());
        // A jump crosses three thresholds at once.
        let jump = evaluate(&facts(vec![usage(9, 10)]), &open, now);
        assert_eq!(levels(&jump, NoticeKind::LicenseUsage), vec![70, 80, 90]);
        let severities: Vec<Severity> = jump.raise.iter().map(|r| r.severity).collect();
        assert_eq!(
            severities,
            vec![Severity::Warn, Severity::Warn, Severity::Alert]
        );
        apply(&mut open, &jump);
        // Down to 60 % and back to 90 %: the open ones stay, nothing is raised twice.
        let down = evaluate(&facts(vec![usage(6, 10)]), &open, now);
        assert!(down.raise.is_empty() && down.clear.is_empty());
        let up = evaluate(&facts(vec![usage(9, 10)]), &open, now);
        assert!(up.raise.is_empty() && up.clear.is_empty());
        // Below 50 %: all four clear.
        let low = evaluate(&facts(vec![usage(4, 10)]), &open, now);
        assert_eq!(low.clear.len(), 4);
        assert!(
            low.clear
                .iter()
                .all(|(_, r)| *r == ClearReason::UsageBelow50)
        );
    }

    #[test]
    fn n1_exhausted_then_available_again() {
        let now = Utc::now();
        let mut open = Vec::new();
        let full = evaluate(&facts(vec![usage(10, 10)]), &open, now);
        assert!(
            full.raise
                .iter()
                .any(|r| r.kind == NoticeKind::LicenseExhausted && r.severity == Severity::Alert)
        );
        assert_eq!(
            levels(&full, NoticeKind::LicenseUsage),
            vec![50, 70, 80, 90, 100]
        );
        apply(&mut open, &full);
        let freed = evaluate(&facts(vec![usage(9, 10)]), &open, now);
        assert_eq!(freed.clear.len(), 1, "only `exhausted` clears: {freed:?}");
        assert_eq!(freed.clear[0].1, ClearReason::AvailableAgain);
        assert_eq!(freed.raise.len(), 1);
        assert_eq!(freed.raise[0].kind, NoticeKind::LicenseAvailableAgain);
        apply(&mut open, &freed);
        // Runs out again: `available_again` clears, `exhausted` is raised anew.
        let again = evaluate(&facts(vec![usage(10, 10)]), &open, now);
        assert_eq!(again.clear.len(), 1);
        assert_eq!(again.clear[0].1, ClearReason::ExhaustedAgain);
        assert_eq!(again.raise.len(), 1);
        assert_eq!(again.raise[0].kind, NoticeKind::LicenseExhausted);
    }

    #[test]
    fn n1_an_exhausted_asset_emptied_below_half_raises_no_available_again() {
        let now = Utc::now();
        let mut open = Vec::new();
        apply(&mut open, &evaluate(&facts(vec![usage(10, 10)]), &[], now));
        let emptied = evaluate(&facts(vec![usage(2, 10)]), &open, now);
        assert!(emptied.raise.is_empty(), "{emptied:?}");
        // Five usage levels and `exhausted` (its reason: available again).
        assert_eq!(emptied.clear.len(), 6);
        assert_eq!(
            emptied
                .clear
                .iter()
                .filter(|(_, r)| *r == ClearReason::AvailableAgain)
                .count(),
            1
        );
    }

    #[test]
    fn n1_an_asset_owning_nothing_raises_nothing_and_a_gone_one_clears() {
        let now = Utc::now();
        assert!(
            evaluate(&facts(vec![usage(0, 0)]), &[], now)
                .raise
                .is_empty()
        );
        let mut open = Vec::new();
        apply(&mut open, &evaluate(&facts(vec![usage(6, 10)]), &[], now));
        let gone = evaluate(&facts(vec![]), &open, now);
        assert_eq!(gone.clear.len(), 1);
        assert_eq!(gone.clear[0].1, ClearReason::Gone);
    }

    fn token(expires_in: Duration, status: AccountStatus) -> Token {
        let now = Utc::now();
        Token {
            space: "s".into(),
            account_id: Uuid::nil(),
            name: "Main".into(),
            status: StatusState {
                status,
                reason: "why".into(),
                throttled_until: None,
            },
            status_changed_at: now,
            expires_at: now + expires_in,
            last_synced_at: Some(now),
            changed_at: now,
        }
    }

    fn token_facts(t: Token) -> Facts {
        Facts {
            tokens: vec![t],
            sync_interval: Duration::minutes(15),
            ..Facts::default()
        }
    }

    #[test]
    fn n2_expiry_thresholds_and_replacement() {
        let now = Utc::now();
        let soon = token(Duration::days(10), AccountStatus::Expiring);
        let c = evaluate(&token_facts(soon.clone()), &[], now);
        assert_eq!(levels(&c, NoticeKind::TokenExpiring), vec![14, 30]);
        assert!(c.raise.iter().all(|r| r.action.contains("/stoken")));
        let mut open = Vec::new();
        apply(&mut open, &c);
        let replaced = evaluate(
            &token_facts(token(Duration::days(300), AccountStatus::Active)),
            &open,
            now,
        );
        assert_eq!(replaced.clear.len(), 2);
        assert!(
            replaced
                .clear
                .iter()
                .all(|(_, r)| *r == ClearReason::TokenReplaced)
        );
        // The same token, eleven days later: expired.
        let expired = evaluate(&token_facts(soon), &open, now + Duration::days(11));
        assert_eq!(expired.clear.len(), 2);
        assert!(
            expired
                .clear
                .iter()
                .all(|(_, r)| *r == ClearReason::TokenExpired)
        );
        assert!(
            expired
                .raise
                .iter()
                .any(|r| r.kind == NoticeKind::TokenExpired)
        );
    }

    #[test]
    fn n2_a_token_replaced_by_another_short_one_gets_notices_naming_its_own_date() {
        let now = Utc::now();
        let mut open = Vec::new();
        let old = token(Duration::days(10), AccountStatus::Expiring);
        apply(&mut open, &evaluate(&token_facts(old), &[], now));
        assert_eq!(open.len(), 2);
        let new = token(Duration::days(20), AccountStatus::Expiring);
        let c = evaluate(&token_facts(new), &open, now);
        assert_eq!(c.clear.len(), 2, "{c:?}");
        assert!(
            c.clear
                .iter()
                .all(|(_, r)| *r == ClearReason::TokenReplaced)
        );
        assert_eq!(levels(&c, NoticeKind::TokenExpiring), vec![30]);
        // The account removed: its notices clear as gone.
        let mut open = Vec::new();
        apply(&mut open, &c);
        let gone = evaluate(&Facts::default(), &open, now);
        assert!(gone.clear.iter().all(|(_, r)| *r == ClearReason::Gone));
    }

    #[test]
    fn n2_each_token_problem_has_its_action() {
        let now = Utc::now();
        for (status, kind, action) in [
            (AccountStatus::Revoked, NoticeKind::TokenRevoked, "/stoken"),
            (AccountStatus::Invalid, NoticeKind::TokenInvalid, "/stoken"),
            (
                AccountStatus::LoginRequired,
                NoticeKind::TokenLoginRequired,
                "/test",
            ),
            (
                AccountStatus::NotOwned,
                NoticeKind::TokenNotOwned,
                "/reclaim",
            ),
        ] {
            let c = evaluate(&token_facts(token(Duration::days(300), status)), &[], now);
            let raised: Vec<&Raise> = c.raise.iter().filter(|r| r.kind == kind).collect();
            assert_eq!(raised.len(), 1, "{status}: {c:?}");
            assert!(raised[0].action.contains(action), "{status}");
            assert_eq!(raised[0].severity, Severity::Alert);
        }
    }

    #[test]
    fn n2_throttled_for_more_than_a_minute() {
        let now = Utc::now();
        let mut short = token(Duration::days(300), AccountStatus::Throttled);
        short.status.throttled_until = Some(now + Duration::seconds(30));
        let c = evaluate(&token_facts(short.clone()), &[], now);
        assert!(c.raise.iter().all(|r| r.kind != NoticeKind::TokenThrottled));
        let mut long = short;
        long.status.throttled_until = Some(now + Duration::minutes(5));
        let c = evaluate(&token_facts(long), &[], now);
        assert!(c.raise.iter().any(|r| r.kind == NoticeKind::TokenThrottled));
    }

    #[test]
    fn n2_not_synced_for_twice_the_interval_unless_a_token_problem_explains_it() {
        let now = Utc::now();
        let mut late = token(Duration::days(300), AccountStatus::Active);
        late.last_synced_at = Some(now - Duration::minutes(31));
        let c = evaluate(&token_facts(late.clone()), &[], now);
        assert!(c.raise.iter().any(|r| r.kind == NoticeKind::TokenNotSynced));
        late.last_synced_at = Some(now - Duration::minutes(29));
        let c = evaluate(&token_facts(late.clone()), &[], now);
        assert!(c.raise.iter().all(|r| r.kind != NoticeKind::TokenNotSynced));
        let mut revoked = token(Duration::days(300), AccountStatus::Revoked);
        revoked.last_synced_at = Some(now - Duration::days(2));
        let c = evaluate(&token_facts(revoked), &[], now);
        assert!(c.raise.iter().all(|r| r.kind != NoticeKind::TokenNotSynced));
    }

    #[test]
    fn forecasts_left_alone_when_not_computed() {
        let now = Utc::now();
        let f = ForecastFact {
            space: "s".into(),
            adam_id: "100".into(),
            pricing_param: "STDQ".into(),
            days: Some(2.0),
            rate_per_day: Some(3.0),
            exhausted: false,
        };
        let with = Facts {
            forecasts: Some(vec![f]),
            ..facts(vec![usage(4, 10)])
        };
        let c = evaluate(&with, &[], now);
        assert_eq!(levels(&c, NoticeKind::ExhaustionForecast), vec![3, 14]);
        let mut open = Vec::new();
        apply(&mut open, &c);
        let without = evaluate(&facts(vec![usage(4, 10)]), &open, now);
        assert!(without.clear.is_empty() && without.raise.is_empty());
        let recovered = evaluate(
            &Facts {
                forecasts: Some(vec![]),
                ..facts(vec![usage(4, 10)])
            },
            &open,
            now,
        );
        assert_eq!(recovered.clear.len(), 2);
    }
}
