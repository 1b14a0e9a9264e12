//! The decisions of a batch, in memory, over a [`Snapshot`] (rules A1–A10 in docs/rules.md).
//! Pure: no I/O, so every rule is unit-tested here, and the database work of a batch is a fixed
//! number of statements whatever its size.
//!
//! Requests are decided in order. Each license taken is counted against its account's asset
//! before the next request is decided, so a batch never hands out more than the locked asset
//! rows allow (A9), and two requests of a batch for the same holder and asset get one license.
//!
//! A holder Apple already lists for the asset on an account the rules allow (the sync's mirror,
//! issue 13's double count) is served from that account without a free license: its license
//! moves from `foreign_assigned` to `held` (at most `foreign_assigned` such moves per account
//! and asset in a batch, as the write's guard requires).

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
    /// Apple already lists the holder for the asset on this account (the double count): the
    /// license is moved from `foreign_assigned` to `held`, no free license is used.
    pub at_apple: bool,
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
    /// A12: nothing is free and the request asked to wait: a waiting assignment to write
    /// (`account_id` is the first account by priority that owns the asset, `rule` is
    /// `waiting`, `decision.skipped` says why no account could serve now).
    Waits(Planned),
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
    decide_counted(reqs, snap, now, dry_run, &mut Tally::default())
}

/// What the decisions of a plan took so far: licenses per account and asset, reservations
/// used, mirror licenses moved. A plan decided in several batches (a bulk operation's dry run,
/// [`plan_batch`]) carries it from one batch to the next, so a license the plan already gave
/// is not given twice.
#[derive(Debug, Default)]
pub struct Tally {
    taken: HashMap<(Uuid, AssetRef), i64>,
    claimed: HashMap<(Uuid, AssetRef), usize>,
    reservations_used: HashMap<(AssetRef, Option<Uuid>), i64>,
    moved: HashMap<(Uuid, AssetRef), i64>,
}

/// Decides one batch of a plan as if it were written (licenses are counted as taken in
/// `tally`, across batches) but writes nothing: the answers are [`Decided::New`] for what would
/// be allocated. The snapshot must be a read-only one. A holder that already took the asset in
/// an earlier batch of the plan is counted again (its claim does not outlive its batch); a bulk
/// operation names each subject once.
pub fn plan_batch(
    reqs: &[&AllocationRequest],
    snap: &Snapshot,
    now: DateTime<Utc>,
    tally: &mut Tally,
) -> Vec<Decided> {
    tally.claimed.clear();
    decide_counted(reqs, snap, now, false, tally)
}

fn decide_counted(
    reqs: &[&AllocationRequest],
    snap: &Snapshot,
    now: DateTime<Utc>,
    dry_run: bool,
    tally: &mut Tally,
) -> Vec<Decided> {
    let mut out = Vec::with_capacity(reqs.len());
    for (i, req) in reqs.iter().enumerate() {
        let decided = decide_one(
            req,
            snap,
            now,
            dry_run,
            &mut tally.taken,
            &mut tally.claimed,
            &mut tally.reservations_used,
            &mut tally.moved,
            i,
        );
        out.push(decided);
    }
    out
}

/// The holder's waiting assignment for the asset (A12), unless it is the one `serving`.
fn waiting_for(
    snap: &Snapshot,
    holder: Uuid,
    asset: &AssetRef,
    serving: Option<Uuid>,
) -> Option<AssignmentRow> {
    snap.waiting
        .get(&(holder, asset.clone()))
        .filter(|a| Some(a.id) != serving)
        .cloned()
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
    moved: &mut HashMap<(Uuid, AssetRef), i64>,
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
    // A12: a waiting assignment is served only for the holder it was written for.
    if let Some(expected) = req.serves_holder
        && target.holder.id != expected
    {
        return Decided::Refused(Refusal::HolderChanged(format!(
            "the license holder changed since the entry joined the line (it is now {}:{})",
            target.holder.kind, target.holder.external_id
        )));
    }
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
    // A12 with A6: asking again while waiting answers the waiting assignment.
    if !target.holder.id.is_nil()
        && let Some(row) = waiting_for(snap, target.holder.id, asset, req.serves)
    {
        return Decided::Existing {
            row: Box::new(row),
            rule: Rule::Existing,
            holder: target.holder,
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
    // A12: while allocations wait in line for the asset, what frees on the first owner is
    // theirs (the wait-list serves them within moments): a newcomer that is not reserved does
    // not take it first. The wait-list's own re-decisions are the line and hold nothing back.
    let line = if req.serves.is_none() && reserved_from.is_none() {
        snap.lines.get(asset).copied().unwrap_or(0)
    } else {
        0
    };
    let reservations_hold = holdback.clone();
    if line > 0 {
        *holdback.entry(first_owner).or_default() += line;
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
    // Why the rules do not let `c` serve this request (A4, A10, …), whatever its free count.
    let rules_refuse = |c: &Candidate| -> Option<(SkipReason, String)> {
        let is_reserved_here = reserved_account == Some(c.id);
        let is_first_owner = c.id == first_owner;
        if c.deleting {
            return Some((SkipReason::Deleting, "the account is being deleted".into()));
        }
        if !c.new_assets_for_everyone && !has_policy {
            return Some((
                SkipReason::NoPolicy,
                "this account serves an asset once it has a distribution policy \
                 (setting new_assets_for_everyone is off)"
                    .into(),
            ));
        }
        let status = c.effective_status(now);
        if !status.status.allows_apple_calls() && !c.when_unusable.queues(status.status) {
            return Some((
                SkipReason::Unusable,
                format!("status {}: {}", status.status, status.reason),
            ));
        }
        if target.license_type == LicenseType::Device && !c.device_assignable {
            return Some((
                SkipReason::NotDeviceAssignable,
                "the asset is not device-assignable in this account".into(),
            ));
        }
        if !is_first_owner && !is_reserved_here && c.has_list && !listed(c) {
            return Some((
                SkipReason::NotOnDistributionList,
                "fallback to this account needs the subject on its distribution list".into(),
            ));
        }
        None
    };
    // The double count (issue 13): Apple may already list this holder for the asset on an
    // account (assigned by another MDM, an admin, a previous owner). That license is counted
    // in the account's `foreign_assigned`; taking it over uses no new license. Among the
    // accounts the rules allow, the first (in the order above: reservation, then priority)
    // that lists the holder is chosen without needing a free license, and the write moves
    // the license from `foreign_assigned` to `held`. Preferring it over a higher-priority
    // account keeps a free license free and avoids a second license for the same holder.
    let at_apple_key = |c: &Candidate| {
        (
            c.id,
            asset.clone(),
            target.license_type,
            target.holder.external_id.clone(),
        )
    };
    let movable = |c: &Candidate| {
        c.foreign_assigned as i64 - moved.get(&(c.id, asset.clone())).copied().unwrap_or(0) > 0
    };
    let chosen = ordered
        .iter()
        .copied()
        .find(|c| {
            snap.at_apple.contains(&at_apple_key(c)) && movable(c) && rules_refuse(c).is_none()
        })
        .map(|c| (c, true))
        .or_else(|| {
            for c in &ordered {
                let c = *c;
                let skip = |reason: SkipReason, detail: String| Skip {
                    account_id: c.id,
                    account_name: c.name.clone(),
                    priority: c.priority,
                    reason,
                    detail,
                };
                if let Some((reason, detail)) = rules_refuse(c) {
                    decision.skipped.push(skip(reason, detail));
                    continue;
                }
                let hold = holdback.get(&c.id).copied().unwrap_or(0);
                let already = taken.get(&(c.id, asset.clone())).copied().unwrap_or(0);
                let free = c.apple_total as i64
                    - c.foreign_assigned as i64
                    - c.held as i64
                    - already
                    - hold;
                if free <= 0 {
                    let for_reservations = reservations_hold.get(&c.id).copied().unwrap_or(0);
                    let for_line = hold - for_reservations;
                    let reason = if free + hold <= 0 {
                        SkipReason::NoFreeLicense
                    } else if free + for_line <= 0 {
                        SkipReason::HeldForReservations
                    } else {
                        SkipReason::HeldForWaitList
                    };
                    let line_detail = if for_line > 0 {
                        format!(", held for the wait-list {for_line}")
                    } else {
                        String::new()
                    };
                    decision.skipped.push(skip(
                        reason,
                        format!(
                            "owns {}, held here {}, assigned elsewhere {}, held back for \
                             reservations {}{line_detail}",
                            c.apple_total,
                            c.held as i64 + already,
                            c.foreign_assigned,
                            for_reservations
                        ),
                    ));
                    continue;
                }
                return Some((c, false));
            }
            None
        });
    let Some((c, at_apple)) = chosen else {
        // A12: a request that asked to wait joins the line instead (not a dry run, and not
        // the wait-list's own re-decision, which leaves its entry waiting).
        let waits = req.wait_until.is_some()
            || (req.policy_wait_until.is_some() && policy.wait_for_license);
        if waits && !dry_run && req.serves.is_none() {
            let planned = Planned {
                id: Uuid::now_v7(),
                account_id: first_owner,
                asset: asset.clone(),
                holder: target.holder,
                license_type: target.license_type,
                rule: Rule::Waiting,
                decision,
                at_apple: false,
            };
            claimed.insert((planned.holder.id, asset.clone()), index);
            return Decided::Waits(planned);
        }
        return Decided::Refused(Refusal::Exhausted {
            skipped: decision.skipped,
        });
    };
    let is_reserved_here = reserved_account == Some(c.id);
    let is_first_owner = c.id == first_owner;
    let rule = if req.replaces.is_some() {
        Rule::Reallocation
    } else if is_reserved_here {
        Rule::Reservation
    } else if is_first_owner {
        Rule::Priority
    } else {
        Rule::Fallback
    };
    let status = c.effective_status(now);
    if !status.status.allows_apple_calls() {
        decision.queued_because = Some(format!(
            "account status {} ({}); the Apple call waits until it is usable",
            status.status, status.reason
        ));
    }
    let planned = Planned {
        // Serving a waiting assignment writes the license onto it (same id).
        id: req.serves.unwrap_or_else(Uuid::now_v7),
        account_id: c.id,
        asset: asset.clone(),
        holder: target.holder,
        license_type: target.license_type,
        rule,
        decision,
        at_apple,
    };
    if dry_run {
        return Decided::Would(planned);
    }
    if at_apple {
        *moved.entry((c.id, asset.clone())).or_default() += 1;
    } else {
        *taken.entry((c.id, asset.clone())).or_default() += 1;
    }
    if reserved_from.is_some() {
        *reservations_used
            .entry((asset.clone(), reserved_from.flatten()))
            .or_default() += 1;
    }
    claimed.insert((planned.holder.id, asset.clone()), index);
    Decided::New(planned)
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

    fn at_apple(snap: &mut Snapshot, account: Uuid, serial: &str) {
        snap.at_apple
            .insert((account, asset(), LicenseType::Device, serial.to_string()));
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
            wait_until: None,
            policy_wait_until: None,
            serves: None,
            serves_holder: None,
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
    fn a12_a_request_that_waits_joins_the_line_instead_of_being_refused() {
        let a = account("A", 1, 1);
        let ida = a.id;
        let snap = snapshot(vec![a], &["S1", "W1"]);
        let first = device_req("S1");
        let mut wait = device_req("W1");
        wait.wait_until = Some(Utc::now() + chrono::Duration::hours(72));
        let twice = wait.clone();
        let out = decide_all(&[&first, &wait, &twice], &snap, Utc::now(), false);
        assert!(matches!(out[0], Decided::New(_)));
        match &out[1] {
            Decided::Waits(p) => {
                assert_eq!((p.account_id, p.rule), (ida, Rule::Waiting));
                assert_eq!(p.decision.skipped[0].reason, SkipReason::NoFreeLicense);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(out[2], Decided::SameAs(1)), "{:?}", out[2]);
        // A dry run never waits.
        let dry = decide_all(&[&first, &wait], &snap, Utc::now(), true);
        assert!(matches!(dry[1], Decided::Would(_)), "{:?}", dry[1]);
    }

    #[test]
    fn a12_what_frees_is_held_for_the_wait_list_but_not_from_reserved_subjects() {
        let a = account("A", 1, 2);
        let mut snap = snapshot(vec![a], &["NEW", "VIP"]);
        // One license free, two wait in line: a newcomer does not take it.
        snap.candidates.get_mut(&asset()).unwrap()[0].held = 1;
        snap.lines.insert(asset(), 2);
        let r = device_req("NEW");
        match &decide_all(&[&r], &snap, Utc::now(), false)[0] {
            Decided::Refused(Refusal::Exhausted { skipped }) => {
                assert_eq!(skipped[0].reason, SkipReason::HeldForWaitList);
                assert!(skipped[0].detail.contains("wait-list 2"), "{skipped:?}");
            }
            other => panic!("{other:?}"),
        }
        // The wait-list's own re-decision takes it.
        let mut serving = device_req("NEW");
        serving.serves = Some(Uuid::now_v7());
        assert!(matches!(
            decide_all(&[&serving], &snap, Utc::now(), false)[0],
            Decided::New(_)
        ));
        // ... only for the holder its entry was written for (A12: the holder changed, e.g. a
        // device's user, ends the entry instead of writing the license onto another's row).
        let holder = snap.subjects[&(SubjectKind::Device, "NEW".to_string())].id;
        serving.serves_holder = Some(holder);
        assert!(matches!(
            decide_all(&[&serving], &snap, Utc::now(), false)[0],
            Decided::New(_)
        ));
        serving.serves_holder = Some(Uuid::now_v7());
        assert!(
            matches!(
                &decide_all(&[&serving], &snap, Utc::now(), false)[0],
                Decided::Refused(Refusal::HolderChanged(_))
            ),
            "a12: another holder's waiting row is not served"
        );
        serving.serves_holder = None;
        // So does a reserved subject (reservations come first, A2).
        snap.policies.insert(
            asset(),
            Policy {
                entries: vec![EntryRow {
                    policy_id: Uuid::nil(),
                    target_kind: "device".into(),
                    target: "VIP".into(),
                    mode: "reserved".into(),
                    account_id: None,
                }],
                wait_for_license: false,
            },
        );
        let vip = device_req("VIP");
        match &decide_all(&[&vip], &snap, Utc::now(), false)[0] {
            Decided::New(p) => assert_eq!(p.rule, Rule::Reservation),
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
                wait_for_license: false,
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

    #[test]
    fn a_holder_apple_already_lists_is_counted_once() {
        // Two licenses, one of them X's at Apple (foreign_assigned 1), one free.
        let mut a = account("A", 1, 2);
        a.foreign_assigned = 1;
        let ida = a.id;
        let mut snap = snapshot(vec![a], &["X", "S1", "S2"]);
        at_apple(&mut snap, ida, "X");
        let reqs = [device_req("X"), device_req("S1"), device_req("S2")];
        let refs: Vec<&AllocationRequest> = reqs.iter().collect();
        let out = decide_all(&refs, &snap, Utc::now(), false);
        match &out[0] {
            Decided::New(p) => assert!(p.at_apple && p.account_id == ida, "{p:?}"),
            other => panic!("{other:?}"),
        }
        match &out[1] {
            Decided::New(p) => assert!(!p.at_apple, "{p:?}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            out[2],
            Decided::Refused(Refusal::Exhausted { .. })
        ));
    }

    #[test]
    fn the_account_apple_lists_the_holder_on_is_preferred_when_the_rules_allow_it() {
        let a = account("A", 1, 5);
        let mut b = account("B", 2, 1);
        b.foreign_assigned = 1;
        b.has_list = true;
        let (ida, idb) = (a.id, b.id);
        let mut snap = snapshot(vec![a, b], &["X", "Y"]);
        at_apple(&mut snap, idb, "X");
        at_apple(&mut snap, idb, "Y");
        // X is on B's list: B serves it with no new license, though A has free ones.
        snap.listed.insert((idb, "device".into(), "X".into()));
        let reqs = [device_req("X"), device_req("Y")];
        let refs: Vec<&AllocationRequest> = reqs.iter().collect();
        let out = decide_all(&refs, &snap, Utc::now(), false);
        match &out[0] {
            Decided::New(p) => {
                assert_eq!(
                    (p.account_id, p.rule, p.at_apple),
                    (idb, Rule::Fallback, true)
                )
            }
            other => panic!("{other:?}"),
        }
        // Y is not on B's list (A4): A serves it with a new license.
        match &out[1] {
            Decided::New(p) => assert_eq!((p.account_id, p.at_apple), (ida, false)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_batch_moves_no_more_than_apple_lists_elsewhere() {
        // The mirror lists X and Y, but foreign_assigned says only one license is Apple's
        // elsewhere (a notification lowered it since the sync): the second needs a free one.
        let mut a = account("A", 1, 1);
        a.foreign_assigned = 1;
        let ida = a.id;
        let mut snap = snapshot(vec![a], &["X", "Y"]);
        at_apple(&mut snap, ida, "X");
        at_apple(&mut snap, ida, "Y");
        let reqs = [device_req("X"), device_req("Y")];
        let refs: Vec<&AllocationRequest> = reqs.iter().collect();
        let out = decide_all(&refs, &snap, Utc::now(), false);
        assert!(matches!(&out[0], Decided::New(p) if p.at_apple));
        assert!(matches!(
            out[1],
            Decided::Refused(Refusal::Exhausted { .. })
        ));
        // A dry run says the same without counting.
        let r = device_req("X");
        let dry = decide_all(&[&r], &snap, Utc::now(), true);
        assert!(matches!(&dry[0], Decided::Would(p) if p.at_apple));
    }
}
