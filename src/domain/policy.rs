//! Applying a distribution policy to one subject (rules A2, A3 in docs/rules.md).
//!
//! * **Disallowed** entries (a device, a user, or a group) refuse the subject outright.
//! * **Reserved** entries name individual devices or users, optionally with the account to
//!   reserve from. A reserved subject is served from that account first (A2), and the licenses
//!   its reservation holds are held back from everyone else while it does not hold one.
//!   A reservation without an account holds back from the highest-priority account that owns
//!   the asset.
//! * **First-come-first-served** groups: when a policy lists any, only their members (and
//!   reserved subjects) may take a license; a policy without FCFS groups leaves the asset open
//!   to everyone not disallowed. No policy at all means open to everyone in the space.
//! * **`wait_for_license`** (A12): an allocation of the asset that leaves waiting to the policy
//!   (no `wait_for_license` in the request) waits in line when no license is left; a request's
//!   own `true` or `false` wins.

use uuid::Uuid;

use super::records::EntryRow;

/// Who is asking, as policy matching sees it.
#[derive(Clone, Debug, Default)]
pub struct Who {
    /// The license holder: ("device", serial) or ("user", client user id).
    pub kind: String,
    pub id: String,
    /// Other identities that count for disallow / list matching (the device's user).
    pub also: Vec<(String, String)>,
    /// Groups of the subject (and of the device's user, when known).
    pub groups: Vec<String>,
}

impl Who {
    fn matches(&self, e: &EntryRow) -> bool {
        match e.target_kind.as_str() {
            "group" => self.groups.iter().any(|g| g == &e.target),
            kind => {
                (kind == self.kind && e.target == self.id)
                    || self.also.iter().any(|(k, v)| k == kind && v == &e.target)
            }
        }
    }
}

/// The policy of one asset in one space.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub entries: Vec<EntryRow>,
    /// A12: a request that leaves waiting to the policy waits when no license is left.
    pub wait_for_license: bool,
}

/// What the policy says about a subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// May take a license; `reserved_from` is `Some` for reserved subjects (with the
    /// reservation's account, if it names one).
    Allowed {
        reserved_from: Option<Option<Uuid>>,
    },
    Disallowed(String),
}

impl Policy {
    pub fn verdict(&self, who: &Who) -> Verdict {
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| e.mode == "disallowed" && who.matches(e))
        {
            return Verdict::Disallowed(format!(
                "the asset's distribution policy disallows {} {:?}",
                e.target_kind, e.target
            ));
        }
        // A reservation of the license holder itself.
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| e.mode == "reserved" && e.target_kind == who.kind && e.target == who.id)
        {
            return Verdict::Allowed {
                reserved_from: Some(e.account_id),
            };
        }
        let fcfs: Vec<&EntryRow> = self.entries.iter().filter(|e| e.mode == "fcfs").collect();
        if !fcfs.is_empty() && !fcfs.iter().any(|e| who.matches(e)) {
            return Verdict::Disallowed(
                "the asset's distribution policy limits first-come-first-served licenses to \
                 groups the subject is not in"
                    .into(),
            );
        }
        Verdict::Allowed {
            reserved_from: None,
        }
    }

    pub fn has_reservations(&self) -> bool {
        self.entries.iter().any(|e| e.mode == "reserved")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: &str, target: &str, mode: &str, account: Option<Uuid>) -> EntryRow {
        EntryRow {
            policy_id: Uuid::nil(),
            target_kind: kind.into(),
            target: target.into(),
            mode: mode.into(),
            account_id: account,
        }
    }

    fn device(serial: &str, groups: &[&str]) -> Who {
        Who {
            kind: "device".into(),
            id: serial.into(),
            also: vec![("user".into(), "u1".into())],
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn no_policy_allows_everyone() {
        assert_eq!(
            Policy::default().verdict(&device("S", &[])),
            Verdict::Allowed {
                reserved_from: None
            }
        );
    }

    #[test]
    fn disallowed_beats_everything() {
        let p = Policy {
            entries: vec![
                entry("group", "students", "disallowed", None),
                entry("group", "staff", "fcfs", None),
            ],
            wait_for_license: false,
        };
        assert!(matches!(
            p.verdict(&device("S", &["students", "staff"])),
            Verdict::Disallowed(_)
        ));
        // The device's user counts too.
        let p = Policy {
            entries: vec![entry("user", "u1", "disallowed", None)],
            wait_for_license: false,
        };
        assert!(matches!(
            p.verdict(&device("S", &[])),
            Verdict::Disallowed(_)
        ));
    }

    #[test]
    fn reservations_and_fcfs_groups() {
        let acct = Uuid::now_v7();
        let p = Policy {
            entries: vec![
                entry("device", "VIP", "reserved", Some(acct)),
                entry("group", "staff", "fcfs", None),
            ],
            wait_for_license: false,
        };
        assert_eq!(
            p.verdict(&device("VIP", &[])),
            Verdict::Allowed {
                reserved_from: Some(Some(acct))
            }
        );
        assert_eq!(
            p.verdict(&device("S", &["staff"])),
            Verdict::Allowed {
                reserved_from: None
            }
        );
        assert!(matches!(
            p.verdict(&device("S", &["other"])),
            Verdict::Disallowed(_)
        ));
        assert!(p.has_reservations());
    }
}
