//! Reconcile's rule (T6; docs/sync.md, Reconcile): is a license this deployment assigned still
//! used? Pure: the use case ([`crate::reconcile`]) loads the facts set-based and asks [`judge`]
//! for each live assignment.
//!
//! The license is re-decided with allocation's own rules ([`super::policy`], the A4 test of
//! [`super::decide`]), on what the ledger knows now:
//!
//! 1. **Disallowed**: a `disallowed` entry of the asset's policy matches the subject (A3) —
//!    whatever rule granted the license, `adopted` included.
//! 2. A **reserved** subject is always still allowed (its reservation would serve it again).
//! 3. **Left group**: the policy limits first-come-first-served licenses to groups and the
//!    subject (with its user, or its devices for a user license) is in none of them.
//! 4. **Not on the distribution list**: the license came from a fallback account (rule
//!    `fallback`, A4) that is still not the first owner of the asset, has a distribution list,
//!    and the list includes neither the subject's serial, nor its users, nor its groups.
//! 5. **Not seen**: `last_seen_at` is older than the cutoff (`VPP_RECONCILE_UNSEEN_DAYS`);
//!    an unknown last sighting never is.
//!
//! The first criterion that holds is reported; none: the license is still used.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::model::{LicenseType, Rule};
use super::policy::{Policy, Verdict, Who};
use super::reconciliation::ReconcileCriterion;

/// The license being judged.
#[derive(Clone, Debug)]
pub struct Held {
    pub rule: Rule,
    pub account_id: Uuid,
    pub license_type: LicenseType,
}

/// The license holder as the ledger knows it now.
#[derive(Clone, Debug, Default)]
pub struct Holder {
    /// The serial number (device license) or client user id (user license).
    pub external_id: String,
    pub groups: Vec<String>,
    /// A device's user (client user id), when known.
    pub user: Option<String>,
    /// For a user license: the user's devices known to the space, with their groups (a device
    /// asking for its user's license matched the policy with its own groups too).
    pub devices: Vec<(String, Vec<String>)>,
    pub last_seen_at: Option<DateTime<Utc>>,
}

impl Holder {
    /// Who the policy matches, as allocation built it for this kind of license.
    pub fn who(&self, license_type: LicenseType) -> Who {
        match license_type {
            LicenseType::Device => Who {
                kind: "device".into(),
                id: self.external_id.clone(),
                also: self
                    .user
                    .iter()
                    .map(|u| ("user".to_owned(), u.clone()))
                    .collect(),
                groups: self.groups.clone(),
            },
            LicenseType::User => {
                let mut groups = self.groups.clone();
                for g in self.devices.iter().flat_map(|(_, gs)| gs) {
                    if !groups.contains(g) {
                        groups.push(g.clone());
                    }
                }
                Who {
                    kind: "user".into(),
                    id: self.external_id.clone(),
                    also: self
                        .devices
                        .iter()
                        .map(|(serial, _)| ("device".to_owned(), serial.clone()))
                        .collect(),
                    groups,
                }
            }
        }
    }
}

/// What the license's account and asset are now.
#[derive(Clone, Debug, Default)]
pub struct Context<'a> {
    /// The asset's policy in the space (`None`: no policy, open to everyone).
    pub policy: Option<&'a Policy>,
    /// The first account by priority that owns the asset in the space (serves everyone, A4).
    pub first_owner: Option<Uuid>,
    /// The license's account has a non-empty distribution list.
    pub has_list: bool,
    /// The list includes the subject (its serial, one of its users, one of its groups).
    pub listed: bool,
    /// Subjects last seen before this are no longer used (`None`: the criterion is off).
    pub unseen_before: Option<DateTime<Utc>>,
}

/// Why the license is no longer used, with a sentence for people; `None`: still used.
pub fn judge(
    held: &Held,
    holder: &Holder,
    ctx: &Context<'_>,
) -> Option<(ReconcileCriterion, String)> {
    let who = holder.who(held.license_type);
    let empty = Policy::default();
    let policy = ctx.policy.unwrap_or(&empty);
    // The policy's own verdict, with only its disallowed entries first: a disallowed subject
    // is Disallowed even when also outside the FCFS groups.
    let disallowing = Policy {
        entries: policy
            .entries
            .iter()
            .filter(|e| e.mode == "disallowed")
            .cloned()
            .collect(),
        wait_for_license: false,
    };
    if let Verdict::Disallowed(why) = disallowing.verdict(&who) {
        return Some((ReconcileCriterion::Disallowed, why));
    }
    match policy.verdict(&who) {
        Verdict::Disallowed(why) => return Some((ReconcileCriterion::LeftGroup, why)),
        Verdict::Allowed {
            reserved_from: Some(_),
        } => return None,
        Verdict::Allowed {
            reserved_from: None,
        } => {}
    }
    if held.rule == Rule::Fallback
        && ctx.first_owner != Some(held.account_id)
        && ctx.has_list
        && !ctx.listed
    {
        return Some((
            ReconcileCriterion::NotOnDistributionList,
            "the license came from a fallback account whose distribution list no longer \
             includes the subject, its user or its groups"
                .into(),
        ));
    }
    if let (Some(cutoff), Some(seen)) = (ctx.unseen_before, holder.last_seen_at)
        && seen < cutoff
    {
        return Some((
            ReconcileCriterion::NotSeen,
            format!("the MDM last saw the subject at {}", seen.to_rfc3339()),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::records::EntryRow;

    fn entry(kind: &str, target: &str, mode: &str) -> EntryRow {
        EntryRow {
            policy_id: Uuid::nil(),
            target_kind: kind.into(),
            target: target.into(),
            mode: mode.into(),
            account_id: None,
        }
    }

    fn device(serial: &str, groups: &[&str]) -> Holder {
        Holder {
            external_id: serial.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            user: Some("u1".into()),
            ..Holder::default()
        }
    }

    fn held(rule: Rule, account: Uuid) -> Held {
        Held {
            rule,
            account_id: account,
            license_type: LicenseType::Device,
        }
    }

    fn criterion(h: &Held, holder: &Holder, ctx: &Context<'_>) -> Option<ReconcileCriterion> {
        judge(h, holder, ctx).map(|(c, _)| c)
    }

    #[test]
    fn a_license_without_policy_list_or_sighting_is_still_used() {
        let a = Uuid::now_v7();
        assert_eq!(
            criterion(
                &held(Rule::Priority, a),
                &device("S", &[]),
                &Context::default()
            ),
            None
        );
    }

    #[test]
    fn disallowed_by_the_subject_its_user_or_a_group_whatever_the_rule() {
        let a = Uuid::now_v7();
        for e in [
            entry("device", "S", "disallowed"),
            entry("user", "u1", "disallowed"),
            entry("group", "students", "disallowed"),
        ] {
            let p = Policy {
                entries: vec![e],
                wait_for_license: false,
            };
            let ctx = Context {
                policy: Some(&p),
                ..Context::default()
            };
            for rule in [Rule::Priority, Rule::Adopted, Rule::Fallback] {
                assert_eq!(
                    criterion(&held(rule, a), &device("S", &["students"]), &ctx),
                    Some(ReconcileCriterion::Disallowed)
                );
            }
        }
        // Disallowed beats a reservation and the FCFS groups, as at allocation.
        let p = Policy {
            entries: vec![
                entry("device", "S", "reserved"),
                entry("device", "S", "disallowed"),
                entry("group", "staff", "fcfs"),
            ],
            wait_for_license: false,
        };
        let ctx = Context {
            policy: Some(&p),
            ..Context::default()
        };
        assert_eq!(
            criterion(&held(Rule::Reservation, a), &device("S", &[]), &ctx),
            Some(ReconcileCriterion::Disallowed)
        );
    }

    #[test]
    fn left_the_fcfs_groups_unless_reserved_or_in_one_another_way() {
        let a = Uuid::now_v7();
        let p = Policy {
            entries: vec![
                entry("group", "staff", "fcfs"),
                entry("device", "VIP", "reserved"),
            ],
            wait_for_license: false,
        };
        let ctx = Context {
            policy: Some(&p),
            ..Context::default()
        };
        let h = held(Rule::Priority, a);
        assert_eq!(
            criterion(&h, &device("S", &["other"]), &ctx),
            Some(ReconcileCriterion::LeftGroup)
        );
        assert_eq!(criterion(&h, &device("S", &["staff"]), &ctx), None);
        // Reserved: always still allowed (adopted licenses too).
        assert_eq!(criterion(&h, &device("VIP", &[]), &ctx), None);
        assert_eq!(
            criterion(&held(Rule::Adopted, a), &device("VIP", &[]), &ctx),
            None
        );
        // A user license: one of the user's devices is in the group.
        let user = Holder {
            external_id: "u1".into(),
            devices: vec![("D1".into(), vec!["staff".into()])],
            ..Holder::default()
        };
        let uh = Held {
            license_type: LicenseType::User,
            ..h.clone()
        };
        assert_eq!(criterion(&uh, &user, &ctx), None);
        let alone = Holder {
            external_id: "u1".into(),
            ..Holder::default()
        };
        assert_eq!(
            criterion(&uh, &alone, &ctx),
            Some(ReconcileCriterion::LeftGroup)
        );
    }

    #[test]
    fn fallback_licenses_need_the_list_unless_the_account_now_serves_everyone() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let off_list = Context {
            first_owner: Some(a),
            has_list: true,
            listed: false,
            ..Context::default()
        };
        assert_eq!(
            criterion(&held(Rule::Fallback, b), &device("S", &[]), &off_list),
            Some(ReconcileCriterion::NotOnDistributionList)
        );
        // Listed (serial, user or group: the loader says so), an emptied list, the account
        // now first by priority, or a license not from fallback: still used.
        for ctx in [
            Context {
                listed: true,
                ..off_list.clone()
            },
            Context {
                has_list: false,
                ..off_list.clone()
            },
            Context {
                first_owner: Some(b),
                ..off_list.clone()
            },
        ] {
            assert_eq!(
                criterion(&held(Rule::Fallback, b), &device("S", &[]), &ctx),
                None
            );
        }
        assert_eq!(
            criterion(&held(Rule::Priority, b), &device("S", &[]), &off_list),
            None
        );
    }

    #[test]
    fn not_seen_only_when_set_and_known() {
        let a = Uuid::now_v7();
        let now = Utc::now();
        let mut holder = device("S", &[]);
        let ctx = Context {
            unseen_before: Some(now - chrono::Duration::days(30)),
            ..Context::default()
        };
        assert_eq!(criterion(&held(Rule::Priority, a), &holder, &ctx), None);
        holder.last_seen_at = Some(now - chrono::Duration::days(31));
        assert_eq!(
            criterion(&held(Rule::Priority, a), &holder, &ctx),
            Some(ReconcileCriterion::NotSeen)
        );
        assert_eq!(
            criterion(&held(Rule::Priority, a), &holder, &Context::default()),
            None
        );
        holder.last_seen_at = Some(now - chrono::Duration::days(29));
        assert_eq!(criterion(&held(Rule::Priority, a), &holder, &ctx), None);
    }
}
