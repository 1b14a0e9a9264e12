//! The license inventory's arithmetic: what an account can still hand out of an asset, what
//! reservations hold back, usage. The store's sort and filter expressions
//! ([`crate::ledger::inventory`]) compute the same figures in SQL; these are the ones shown.
//!
//! Decisions (they mirror allocation, [`super::decide`], so "available now" is the most the
//! next allocation of an arbitrary subject would find: allocation also skips, per subject, an
//! account that does not assign the asset to devices (for a device license) and a fallback
//! account whose distribution list does not name the subject, and a reserved subject may take
//! the license its reservation holds back):
//! * `held` (what allocation counts) is the asset row's live count: pending, associating and
//!   active assignments. A `revoking` license was given back to the pool when its revocation
//!   was asked, so it is shown by state but not counted as held. By state, pending,
//!   associating and revoking are counted from the assignments; active is `held` less pending
//!   and associating (the ledger keeps `held` equal to the live assignments), so reading a page
//!   never counts the settled licenses one by one.
//! * `held_back`: reservations whose subject holds no license of the asset yet, on the account
//!   they name, or (naming none) on the highest-priority account of the space owning the asset.
//! * `available_now = max(0, total - held - assigned_elsewhere - held_back)`, and 0 when
//!   allocation skips the account whatever the counts: it is being deleted, its status forbids
//!   Apple calls and its `when_unusable` setting does not queue, or it serves only assets with
//!   a policy (`new_assets_for_everyone` off) and the asset has none. An account whose status
//!   forbids Apple calls but queues still counts: allocations are recorded and wait.
//! * `usage_percent = (held + assigned_elsewhere) / total * 100`, absent when `total` is 0.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::account_status::{self as status, AccountStatus, StatusState, WhenUnusable};

crate::text_enum! {
    /// Apple's kind of product.
    pub enum AssetProductType { App = "App", Book = "Book", Other = "Other" }
}

crate::text_enum! {
    /// Order of the asset inventory.
    pub enum AssetSort {
        /// By adam id, then pricing (ascending).
        Asset = "asset",
        /// Highest usage first (assets owning nothing last), then by asset.
        Usage = "usage",
        /// Fewest licenses available now first, then by asset.
        Available = "available",
    }
}

/// What decides whether allocation takes licenses from an account at all.
#[derive(Clone, Debug)]
pub struct AccountGate {
    pub status: StatusState,
    pub token_expires_at: DateTime<Utc>,
    pub when_unusable: WhenUnusable,
    pub deleting: bool,
    pub new_assets_for_everyone: bool,
}

impl AccountGate {
    /// The account's status now (time-driven transitions applied).
    pub fn effective_status(&self, now: DateTime<Utc>) -> StatusState {
        status::next(&self.status, self.token_expires_at, None, now)
    }

    /// Why allocation skips this account for every asset, if it does.
    pub fn blocked(&self, now: DateTime<Utc>) -> Option<String> {
        if self.deleting {
            return Some("the account is being deleted".into());
        }
        let st = self.effective_status(now);
        if !st.status.allows_apple_calls() && !self.when_unusable.queues(st.status) {
            return Some(format!("status {}: {}", st.status, st.reason));
        }
        None
    }

    /// Why allocation skips this account for an asset with or without a policy, if it does.
    pub fn blocked_for(&self, has_policy: bool, now: DateTime<Utc>) -> Option<String> {
        self.blocked(now).or_else(|| {
            (!self.new_assets_for_everyone && !has_policy).then(|| {
                "this account serves an asset once it has a distribution policy \
                 (setting new_assets_for_everyone is off)"
                    .into()
            })
        })
    }

    /// Whether only assets with a policy are served (and the account is otherwise open).
    pub fn needs_policy(&self, now: DateTime<Utc>) -> bool {
        self.blocked(now).is_none() && !self.new_assets_for_everyone
    }
}

/// Assignments of one asset and account holding or releasing a license, by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByState {
    pub pending: i64,
    pub associating: i64,
    pub active: i64,
    pub revoking: i64,
}

impl ByState {
    pub fn add(&mut self, state: &str, n: i64) {
        match state {
            "pending" => self.pending += n,
            "associating" => self.associating += n,
            "active" => self.active += n,
            "revoking" => self.revoking += n,
            _ => {}
        }
    }

    pub fn sum(&mut self, other: &ByState) {
        self.pending += other.pending;
        self.associating += other.associating;
        self.active += other.active;
        self.revoking += other.revoking;
    }
}

/// One reservation of an asset: the account it names, and whether its subject already holds
/// a live license of the asset.
#[derive(Clone, Copy, Debug)]
pub struct Reservation {
    pub account_id: Option<Uuid>,
    pub served: bool,
}

/// Licenses held back per account by the reservations of one asset; `owners` are the space's
/// accounts owning the asset, highest priority first.
pub fn held_back(owners: &[Uuid], reservations: &[Reservation]) -> HashMap<Uuid, i64> {
    let mut out = HashMap::new();
    for r in reservations.iter().filter(|r| !r.served) {
        if let Some(account) = r.account_id.or_else(|| owners.first().copied()) {
            *out.entry(account).or_default() += 1;
        }
    }
    out
}

/// Licenses an allocation could take from the account now.
pub fn available_now(total: i64, held: i64, elsewhere: i64, held_back: i64, open: bool) -> i64 {
    if open {
        (total - held - elsewhere - held_back).max(0)
    } else {
        0
    }
}

/// Share of the licenses owned that are taken (here or elsewhere), in percent.
pub fn usage_percent(total: i64, held: i64, elsewhere: i64) -> Option<f64> {
    (total > 0).then(|| (held + elsewhere) as f64 * 100.0 / total as f64)
}

/// The status shown beside an account's figures.
pub fn shown_status(gate: &AccountGate, now: DateTime<Utc>) -> AccountStatus {
    gate.effective_status(now).status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> AccountGate {
        AccountGate {
            status: StatusState {
                status: AccountStatus::Active,
                reason: String::new(),
                throttled_until: None,
            },
            token_expires_at: Utc::now() + chrono::Duration::days(300),
            when_unusable: WhenUnusable::Queue,
            deleting: false,
            new_assets_for_everyone: true,
        }
    }

    #[test]
    fn reservation_without_account_holds_back_from_the_first_owner() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let held = held_back(
            &[a, b],
            &[
                Reservation {
                    account_id: None,
                    served: false,
                },
                Reservation {
                    account_id: Some(b),
                    served: false,
                },
                Reservation {
                    account_id: Some(b),
                    served: true,
                },
            ],
        );
        assert_eq!(held.get(&a), Some(&1));
        assert_eq!(
            held.get(&b),
            Some(&1),
            "a served reservation holds nothing back"
        );
    }

    #[test]
    fn available_is_floored_and_zero_when_closed() {
        assert_eq!(available_now(10, 4, 3, 1, true), 2);
        assert_eq!(available_now(10, 8, 3, 1, true), 0);
        assert_eq!(available_now(10, 0, 0, 0, false), 0);
        assert_eq!(usage_percent(0, 0, 0), None);
        assert_eq!(usage_percent(8, 2, 4), Some(75.0));
    }

    #[test]
    fn gates_mirror_allocation() {
        let now = Utc::now();
        assert!(gate().blocked(now).is_none());
        let deleting = AccountGate {
            deleting: true,
            ..gate()
        };
        assert!(deleting.blocked(now).is_some());
        let expired_skip = AccountGate {
            token_expires_at: now - chrono::Duration::days(1),
            when_unusable: WhenUnusable::Skip,
            ..gate()
        };
        assert!(expired_skip.blocked(now).unwrap().contains("expired"));
        let expired_queue = AccountGate {
            token_expires_at: now - chrono::Duration::days(1),
            ..gate()
        };
        assert!(
            expired_queue.blocked(now).is_none(),
            "queued allocations count"
        );
        let policy_only = AccountGate {
            new_assets_for_everyone: false,
            ..gate()
        };
        assert!(policy_only.blocked_for(false, now).is_some());
        assert!(policy_only.blocked_for(true, now).is_none());
        assert!(policy_only.needs_policy(now));
    }
}
