//! The decisions of a batch, in memory, over a [`Snapshot`] (rules A1–A10 in docs/rules.md).
//! Pure: no I/O, so every rule is unit-tested here, and the database work of a batch is a fixed
//! number of statements whatever its size.
//!
//! Requests are decided in order. Each license taken is counted against its account's asset
//! before the next request is decided, so a batch never hands out more than the locked asset
//! rows allow (A9), and two requests of a batch for the same holder and asset get one license.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::allocation::{AllocationRequest, AssetRef, Refusal, SubjectInput};
use super::model::{Decision, LicenseType, LicenseWish, Rule, Skip, SkipReason, SubjectKind};
use super::policy::{Policy, Verdict, Who};
use super::records::{AssignmentRow, SubjectRow};
use super::snapshot::{Candidate, Snapshot};
use crate::apple::codes::NOT_ENOUGH_LICENSES;

/// A license to take.
#[derive(Clone, Debug)]
pub struct Planned {
    pub id: Uuid,
    pub account_id: Uuid,
    pub asset: AssetRef,
    pub holder: SubjectRow,
    pub license_type: LicenseType,
    pub rule: Rule,
    pub decision: Decision,
}

/// What was decided for one request.
#[derive(Debug)]
pub enum Decided {
    /// The holder already has a license for the asset (A6, A7).
    Existing {
        row: Box<AssignmentRow>,
        rule: Rule,
        holder: SubjectRow,
    },
    /// An earlier request of the same batch takes the license for this holder and asset.
    SameAs(usize),
    /// A license to take.
    New(Planned),
    /// A dry run: this is what would be taken.
    Would(Planned),
    Refused(Refusal),
}

/// The license holder and what matching needs to know about it.
struct Target {
    holder: SubjectRow,
    license_type: LicenseType,
    device: Option<SubjectRow>,
    who: Who,
    serial: Option<String>,
    users: Vec<String>,
}

fn resolve(req: &AllocationRequest, snap: &Snapshot) -> Result<Target, Refusal> {
    let subject = |kind: SubjectKind, id: &str| -> SubjectRow {
        snap.subjects
            .get(&(kind, id.to_owned()))
            .cloned()
            .unwrap_or(SubjectRow {
                id: Uuid::nil(),
                space_id: req.space.clone(),
                kind,
                external_id: id.to_owned(),
                groups: Vec::new(),
                user_external_id: None,
                shared_ipad: false,
            })
    };
    match &req.subject {
        SubjectInput::User { id, .. } => {
            if req.wish == LicenseWish::Device {
                return Err(Refusal::Incompatible(
                    "a device license needs a device subject (kind `device` with its serial number)".into(),
                ));
            }
            let holder = subject(SubjectKind::User, id);
            Ok(Target {
                who: Who {
                    kind: "user".into(),
                    id: id.clone(),
                    also: Vec::new(),
                    groups: holder.group_names(),
                },
                holder,
                license_type: LicenseType::User,
                device: None,
                serial: None,
                users: vec![id.clone()],
            })
        }
        SubjectInput::Device { serial, .. } => {
            let device = subject(SubjectKind::Device, serial);
            let user = device.user_external_id.clone();
            let assignable = snap
                .candidates
                .get(&req.asset)
                .map(|c| c.iter().any(|c| c.device_assignable));
            let license_type = match req.wish {
                // Shared iPads always get device licenses (A7), "regardless of whether
                // device-based licenses are selected or not": a user wish is overridden.
                _ if device.shared_ipad => LicenseType::Device,
                LicenseWish::Device => LicenseType::Device,
                LicenseWish::User => LicenseType::User,
                LicenseWish::Auto if assignable == Some(false) => LicenseType::User,
                LicenseWish::Auto => LicenseType::Device,
            };
            let mut groups = device.group_names();
            let mut also = Vec::new();
            if let Some(u) = &user {
                also.push(("user".to_owned(), u.clone()));
            }
            if license_type == LicenseType::Device {
                return Ok(Target {
                    who: Who {
                        kind: "device".into(),
                        id: serial.clone(),
                        also,
                        groups,
                    },
                    holder: device.clone(),
                    license_type,
                    device: Some(device),
                    serial: Some(serial.clone()),
                    users: user.into_iter().collect(),
                });
            }
            let Some(u) = user else {
                return Err(Refusal::Incompatible(
                    "this asset is not device-assignable (or a user license was asked for): \
                     give the device's user in `subject.user`"
                        .into(),
                ));
            };
            let holder = subject(SubjectKind::User, &u);
            for g in holder.group_names() {
                if !groups.contains(&g) {
                    groups.push(g);
                }
            }
            also.push(("device".to_owned(), serial.clone()));
            Ok(Target {
                who: Who {
                    kind: "user".into(),
                    id: u.clone(),
                    also,
                    groups,
                },
                holder,
                license_type,
                device: Some(device),
                serial: Some(serial.clone()),
                users: vec![u],
            })
        }
    }
}

/// Decisions of a batch. `taken` starts empty; `dry_run` plans without reserving.
pub fn decide_all(
    reqs: &[&AllocationRequest],
    snap: &Snapshot,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Vec<Decided> {
    let mut taken: HashMap<(Uuid, AssetRef), i64> = HashMap::new();
    let mut claimed: HashMap<(Uuid, AssetRef), usize> = HashMap::new();
    let mut reservations_used: HashMap<(AssetRef, Option<Uuid>), i64> = HashMap::new();
    let mut out = Vec::with_capacity(reqs.len());
    for (i, req) in reqs.iter().enumerate() {
        let decided = decide_one(
            req,
            snap,
            now,
            dry_run,
            &mut taken,
            &mut claimed,
            &mut reservations_used,
            i,
        );
        out.push(decided);
    }
    out
}

fn existing_for(snap: &Snapshot, holder: Uuid, asset: &AssetRef) -> Option<AssignmentRow> {
    snap.existing
        .iter()
        .find(|a| {
            a.subject_id == holder
                && a.adam_id == asset.adam_id
                && a.pricing_param == asset.pricing_param
        })
        .cloned()
}

#[allow(clippy::too_many_arguments)]
fn decide_one(
    req: &AllocationRequest,
    snap: &Snapshot,
    now: DateTime<Utc>,
    dry_run: bool,
    taken: &mut HashMap<(Uuid, AssetRef), i64>,
    claimed: &mut HashMap<(Uuid, AssetRef), usize>,
    reservations_used: &mut HashMap<(AssetRef, Option<Uuid>), i64>,
    index: usize,
) -> Decided {
    let asset = &req.asset;
    let Some(all) = snap.candidates.get(asset).filter(|c| !c.is_empty()) else {
        return Decided::Refused(Refusal::UnknownAsset {
            space: req.space.clone(),
            adam_id: asset.adam_id.clone(),
            pricing_param: asset.pricing_param.clone(),
        });
    };
    let target = match resolve(req, snap) {
        Ok(t) => t,
        Err(e) => return Decided::Refused(e),
    };
    if !target.holder.id.is_nil() {
        if let Some(row) = existing_for(snap, target.holder.id, asset) {
            return Decided::Existing {
                row: Box::new(row),
                rule: Rule::Existing,
                holder: target.holder,
            };
        }
        if let Some(first) = claimed.get(&(target.holder.id, asset.clone())) {
            return Decided::SameAs(*first);
        }
    }
    // A7: a device license is not assigned when the device's user holds a user license.
    if target.license_type == LicenseType::Device
        && let Some(device) = &target.device
        && !device.shared_ipad
        && let Some(user) = &device.user_external_id
        && let Some(user_row) = snap.subjects.get(&(SubjectKind::User, user.clone()))
        && let Some(row) = existing_for(snap, user_row.id, asset)
        && row.license_type == LicenseType::User
    {
        return Decided::Existing {
            row: Box::new(row),
            rule: Rule::UserLicenseCoversDevice,
            holder: user_row.clone(),
        };
    }

    let has_policy = snap.policies.contains_key(asset);
    let policy = snap
        .policies
        .get(asset)
        .cloned()
        .unwrap_or_else(Policy::default);
    let reserved_from = match policy.verdict(&target.who) {
        Verdict::Disallowed(why) => return Decided::Refused(Refusal::Disallowed(why)),
        Verdict::Allowed { reserved_from } => reserved_from,
    };
    // Accounts excluded by a re-allocation (Apple reported none left there) are skipped, but
    // the first owner stays the first by priority: excluding it must not let a fallback
    // account serve subjects outside its distribution list (A4).
    let first_owner = all[0].id;
    let excluded: Vec<Skip> = all
        .iter()
        .filter(|c| req.exclude_accounts.contains(&c.id))
        .map(|c| Skip {
            account_id: c.id,
            account_name: c.name.clone(),
            priority: c.priority,
            reason: SkipReason::NoFreeLicense,
            detail: format!("Apple reported no license left (error {NOT_ENOUGH_LICENSES})"),
        })
        .collect();
    let mut ordered: Vec<&Candidate> = all
        .iter()
        .filter(|c| !req.exclude_accounts.contains(&c.id))
        .collect();
    if ordered.is_empty() {
        return Decided::Refused(Refusal::Exhausted { skipped: excluded });
    }
    // Reservations hold licenses back from everyone else; a reservation naming no account
    // holds back from the highest-priority owner.
    let mut holdback: HashMap<Uuid, i64> = HashMap::new();
    if let Some(out) = snap.outstanding.get(asset) {
        for (account, n) in out {
            let used = reservations_used
                .get(&(asset.clone(), *account))
                .copied()
                .unwrap_or(0);
            *holdback.entry(account.unwrap_or(first_owner)).or_default() += (n - used).max(0);
        }
    }
    let reserved_account = match reserved_from {
        Some(Some(account)) => Some(account),
        Some(None) => Some(first_owner),
        None => None,
    };
    if let Some(own) = reserved_account
        && let Some(n) = holdback.get_mut(&own)
    {
        *n = (*n - 1).max(0);
    }
    if let Some(account) = reserved_account
        && let Some(pos) = ordered.iter().position(|c| c.id == account)
    {
        let c = ordered.remove(pos);
        ordered.insert(0, c);
    }
    let listed = |c: &Candidate| {
        let matches = |kind: &str, value: &str| {
            snap.listed
                .contains(&(c.id, kind.to_owned(), value.to_owned()))
        };
        target
            .serial
            .as_deref()
            .is_some_and(|s| matches("device", s))
            || target.users.iter().any(|u| matches("user", u))
            || target.who.groups.iter().any(|g| matches("group", g))
    };

    let mut decision = Decision {
        replaces: req.replaces,
        skipped: excluded,
        ..Decision::default()
    };
    for c in ordered {
        let is_reserved_here = reserved_account == Some(c.id);
        let is_first_owner = c.id == first_owner;
        let skip = |reason: SkipReason, detail: String| Skip {
            account_id: c.id,
            account_name: c.name.clone(),
            priority: c.priority,
            reason,
            detail,
        };
        if c.deleting {
            decision.skipped.push(skip(
                SkipReason::Deleting,
                "the account is being deleted".into(),
            ));
            continue;
        }
        if !c.new_assets_for_everyone && !has_policy {
            decision.skipped.push(skip(
                SkipReason::NoPolicy,
                "this account serves an asset once it has a distribution policy \
                 (setting new_assets_for_everyone is off)"
                    .into(),
            ));
            continue;
        }
        let status = c.effective_status(now);
        let usable = status.status.allows_apple_calls();
        if !usable && !c.when_unusable.queues(status.status) {
            decision.skipped.push(skip(
                SkipReason::Unusable,
                format!("status {}: {}", status.status, status.reason),
            ));
            continue;
        }
        if target.license_type == LicenseType::Device && !c.device_assignable {
            decision.skipped.push(skip(
                SkipReason::NotDeviceAssignable,
                "the asset is not device-assignable in this account".into(),
            ));
            continue;
        }
        if !is_first_owner && !is_reserved_here && c.has_list && !listed(c) {
            decision.skipped.push(skip(
                SkipReason::NotOnDistributionList,
                "fallback to this account needs the subject on its distribution list".into(),
            ));
            continue;
        }
        let hold = holdback.get(&c.id).copied().unwrap_or(0);
        let already = taken.get(&(c.id, asset.clone())).copied().unwrap_or(0);
        let free =
            c.apple_total as i64 - c.foreign_assigned as i64 - c.held as i64 - already - hold;
        if free <= 0 {
            let reason = if free + hold > 0 {
                SkipReason::HeldForReservations
            } else {
                SkipReason::NoFreeLicense
            };
            decision.skipped.push(skip(
                reason,
                format!(
                    "owns {}, held here {}, assigned elsewhere {}, held back for reservations {}",
                    c.apple_total,
                    c.held as i64 + already,
                    c.foreign_assigned,
                    hold
                ),
            ));
            continue;
        }
        let rule = if req.replaces.is_some() {
            Rule::Reallocation
        } else if is_reserved_here {
            Rule::Reservation
        } else if is_first_owner {
            Rule::Priority
        } else {
            Rule::Fallback
        };
        if !usable {
            decision.queued_because = Some(format!(
                "account status {} ({}); the Apple call waits until it is usable",
                status.status, status.reason
            ));
        }
        let planned = Planned {
            id: Uuid::now_v7(),
            account_id: c.id,
            asset: asset.clone(),
            holder: target.holder,
            license_type: target.license_type,
            rule,
            decision,
        };
        if dry_run {
            return Decided::Would(planned);
        }
        *taken.entry((c.id, asset.clone())).or_default() += 1;
        if reserved_from.is_some() {
            *reservations_used
                .entry((asset.clone(), reserved_from.flatten()))
                .or_default() += 1;
        }
        claimed.insert((planned.holder.id, asset.clone()), index);
        return Decided::New(planned);
    }
    Decided::Refused(Refusal::Exhausted {
        skipped: decision.skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::account_status::AccountStatus;
    use crate::domain::account_status::WhenUnusable;
    use crate::domain::model::LicenseWish;
    use crate::domain::records::EntryRow;

    fn asset() -> AssetRef {
        AssetRef {
            adam_id: "1".into(),
            pricing_param: "STDQ".into(),
        }
    }

    fn account(name: &str, priority: i32, total: i32) -> Candidate {
        Candidate {
            id: Uuid::now_v7(),
            name: name.into(),
            priority,
            status: AccountStatus::Active,
            status_reason: String::new(),
            throttled_until: None,
            token_expires_at: Utc::now() + chrono::Duration::days(300),
            when_unusable: WhenUnusable::Queue,
            deleting: false,
            new_assets_for_everyone: true,
            adam_id: "1".into(),
            pricing_param: "STDQ".into(),
            apple_total: total,
            foreign_assigned: 0,
            held: 0,
            device_assignable: true,
            has_list: false,
        }
    }

    fn device_req(serial: &str) -> AllocationRequest {
        AllocationRequest {
            space: "s".into(),
            asset: asset(),
            subject: SubjectInput::Device {
                serial: serial.into(),
                user: None,
                shared_ipad: None,
                groups: None,
            },
            wish: LicenseWish::Auto,
            reason: String::new(),
            origin: crate::domain::origin::Origin::new("t", None),
            dry_run: false,
            exclude_accounts: Vec::new(),
            replaces: None,
        }
    }

    fn snapshot(accounts: Vec<Candidate>, serials: &[&str]) -> Snapshot {
        let mut snap = Snapshot::default();
        for s in serials {
            snap.subjects.insert(
                (SubjectKind::Device, s.to_string()),
                SubjectRow {
                    id: Uuid::now_v7(),
                    space_id: "s".into(),
                    kind: SubjectKind::Device,
                    external_id: s.to_string(),
                    groups: Vec::new(),
                    user_external_id: None,
                    shared_ipad: false,
                },
            );
        }
        snap.candidates.insert(asset(), accounts);
        snap
    }

    fn account_of(d: &Decided) -> Option<Uuid> {
        match d {
            Decided::New(p) | Decided::Would(p) => Some(p.account_id),
            _ => None,
        }
    }

    #[test]
    fn a9_a_batch_never_takes_more_than_an_account_owns() {
        let a = account("A", 1, 2);
        let b = account("B", 2, 1);
        let (ida, idb) = (a.id, b.id);
        let serials = ["S1", "S2", "S3", "S4"];
        let snap = snapshot(vec![a, b], &serials);
        let reqs: Vec<AllocationRequest> = serials.iter().map(|s| device_req(s)).collect();
        let refs: Vec<&AllocationRequest> = reqs.iter().collect();
        let out = decide_all(&refs, &snap, Utc::now(), false);
        let accounts: Vec<Option<Uuid>> = out.iter().map(account_of).collect();
        assert_eq!(accounts, [Some(ida), Some(ida), Some(idb), None]);
        match &out[3] {
            Decided::Refused(Refusal::Exhausted { skipped }) => {
                assert_eq!(skipped.len(), 2);
                assert!(
                    skipped
                        .iter()
                        .all(|s| s.reason == SkipReason::NoFreeLicense)
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a6_the_same_holder_twice_in_a_batch_gets_one_license() {
        let snap = snapshot(vec![account("A", 1, 5)], &["S1"]);
        let reqs = [device_req("S1"), device_req("S1")];
        let refs: Vec<&AllocationRequest> = reqs.iter().collect();
        let out = decide_all(&refs, &snap, Utc::now(), false);
        assert!(matches!(out[0], Decided::New(_)));
        assert!(matches!(out[1], Decided::SameAs(0)));
    }

    #[test]
    fn a10_unusable_accounts_are_skipped_or_queued() {
        let mut a = account("A", 1, 5);
        a.status = AccountStatus::Revoked;
        a.when_unusable = WhenUnusable::Skip;
        let b = account("B", 2, 5);
        let idb = b.id;
        let snap = snapshot(vec![a.clone(), b], &["S1"]);
        let r = device_req("S1");
        let out = decide_all(&[&r], &snap, Utc::now(), false);
        match &out[0] {
            Decided::New(p) => {
                assert_eq!(p.account_id, idb);
                assert_eq!(p.decision.skipped[0].reason, SkipReason::Unusable);
            }
            other => panic!("{other:?}"),
        }
        a.when_unusable = WhenUnusable::Queue;
        let ida = a.id;
        let snap = snapshot(vec![a], &["S1"]);
        match &decide_all(&[&r], &snap, Utc::now(), false)[0] {
            Decided::New(p) => {
                assert_eq!(p.account_id, ida);
                assert!(
                    p.decision
                        .queued_because
                        .as_deref()
                        .unwrap()
                        .contains("revoked")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a10_by_default_only_a_retry_after_queues() {
        let b = account("B", 2, 5);
        let idb = b.id;
        for (status, queues) in [
            (AccountStatus::Throttled, true),
            (AccountStatus::Expired, false),
            (AccountStatus::Revoked, false),
            (AccountStatus::Invalid, false),
            (AccountStatus::LoginRequired, false),
            (AccountStatus::NotOwned, false),
        ] {
            let mut a = account("A", 1, 5);
            a.status = status;
            a.throttled_until = Some(Utc::now() + chrono::Duration::minutes(5));
            a.when_unusable = WhenUnusable::QueueWhenThrottled;
            let ida = a.id;
            let snap = snapshot(vec![a, b.clone()], &["S1"]);
            let r = device_req("S1");
            match &decide_all(&[&r], &snap, Utc::now(), false)[0] {
                Decided::New(p) if queues => {
                    assert_eq!(p.account_id, ida, "{status}");
                    assert!(p.decision.queued_because.is_some(), "{status}");
                }
                Decided::New(p) => {
                    assert_eq!(p.account_id, idb, "{status}: the next account serves");
                    assert_eq!(p.decision.skipped[0].reason, SkipReason::Unusable);
                }
                other => panic!("{status}: {other:?}"),
            }
        }
    }

    #[test]
    fn a2_reservations_hold_licenses_back_within_a_batch() {
        let a = account("A", 1, 2);
        let ida = a.id;
        let mut snap = snapshot(vec![a], &["VIP", "S1", "S2"]);
        snap.policies.insert(
            asset(),
            Policy {
                entries: vec![EntryRow {
                    policy_id: Uuid::nil(),
                    target_kind: "device".into(),
                    target: "VIP".into(),
                    mode: "reserved".into(),
                    account_id: Some(ida),
                }],
            },
        );
        snap.outstanding.insert(asset(), [(Some(ida), 1)].into());
        let reqs = [device_req("S1"), device_req("S2"), device_req("VIP")];
        let refs: Vec<&AllocationRequest> = reqs.iter().collect();
        let out = decide_all(&refs, &snap, Utc::now(), false);
        assert!(matches!(out[0], Decided::New(_)));
        assert!(
            matches!(out[1], Decided::Refused(Refusal::Exhausted { .. })),
            "{:?}",
            out[1]
        );
        match &out[2] {
            Decided::New(p) => assert_eq!(p.rule, Rule::Reservation),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a4_fallback_needs_the_list_and_a1_priority_comes_first() {
        let a = account("A", 1, 0);
        let mut b = account("B", 2, 5);
        b.has_list = true;
        let idb = b.id;
        let mut snap = snapshot(vec![b, a], &["OUT", "IN"]);
        snap.candidates
            .get_mut(&asset())
            .unwrap()
            .sort_by_key(|c| c.priority);
        snap.listed.insert((idb, "device".into(), "IN".into()));
        let reqs = [device_req("OUT"), device_req("IN")];
        let refs: Vec<&AllocationRequest> = reqs.iter().collect();
        let out = decide_all(&refs, &snap, Utc::now(), false);
        match &out[0] {
            Decided::Refused(Refusal::Exhausted { skipped }) => {
                assert_eq!(skipped[1].reason, SkipReason::NotOnDistributionList)
            }
            other => panic!("{other:?}"),
        }
        match &out[1] {
            Decided::New(p) => assert_eq!((p.account_id, p.rule), (idb, Rule::Fallback)),
            other => panic!("{other:?}"),
        }
    }
}
