//! Reconcile (T6; docs/sync.md, Reconcile): the live licenses this deployment assigned that are
//! no longer used — the subject is now disallowed by the asset's policy, left the
//! first-come-first-served groups, is no longer on the fallback account's distribution list,
//! or was not seen for `VPP_RECONCILE_UNSEEN_DAYS` — and their revocation.
//!
//! [`candidates`] lists them (the plan's dry run); [`revoke_candidate`] re-checks one inside
//! the caller's transaction and starts its revocation (the plan's apply). The rule is the
//! domain's ([`crate::domain::reconcile::judge`]), which re-decides with allocation's own
//! policy matching; the reads are the store's ([`crate::ledger::reconcile`]): pages of
//! [`PAGE`] assignments in id order, a fixed number of statements per page, never one per
//! assignment. The order is the assignment id, so the same ledger lists the same candidates.
//!
//! Revoking goes through [`crate::engine::revoke::revoke`] (one assignment's scope) with the
//! reason `reconcile: <criterion>`, and writes `assignment.reconciled` with the criterion.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use crate::config::ReconcileArgs;
use crate::domain::model::{LicenseType, Rule};
use crate::domain::origin::Origin;
use crate::domain::policy::Policy;
use crate::domain::reconcile::{self as rule, Context, Held, Holder};
pub use crate::domain::reconciliation::ReconcileCriterion;
use crate::domain::revocation::Scope;
use crate::ledger::activity::{self, Activity};
use crate::ledger::reconcile::{self as store, Live, PageFilter};

/// Assignments read per page.
pub const PAGE: i64 = 1000;

/// A live license no longer used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub assignment_id: Uuid,
    pub account_id: Uuid,
    pub adam_id: String,
    pub pricing_param: String,
    pub license_type: LicenseType,
    /// The serial number (device license) or client user id (user license).
    pub target: String,
    pub criterion: ReconcileCriterion,
    /// Why, for people.
    pub detail: String,
}

/// The first `limit` candidates of `space` (of one account, if given), in assignment id order.
pub async fn candidates(
    conn: &mut AsyncPgConnection,
    space: &str,
    account: Option<Uuid>,
    settings: &ReconcileArgs,
    limit: i64,
) -> diesel::QueryResult<Vec<Candidate>> {
    let scan = Scan {
        space,
        account,
        only: None,
        subjects: None,
        settings,
        limit,
        count_all: false,
        lock: false,
    };
    Ok(scan.run(conn).await?.0)
}

/// How many candidates `space` (or one account) has in all.
pub async fn count(
    conn: &mut AsyncPgConnection,
    space: &str,
    account: Option<Uuid>,
    settings: &ReconcileArgs,
) -> diesel::QueryResult<i64> {
    Ok(candidates_and_count(conn, space, account, settings, 0)
        .await?
        .1)
}

/// The first `limit` candidates and how many there are in all, in one pass (a plan's items
/// and its `candidates` figure).
pub async fn candidates_and_count(
    conn: &mut AsyncPgConnection,
    space: &str,
    account: Option<Uuid>,
    settings: &ReconcileArgs,
    limit: i64,
) -> diesel::QueryResult<(Vec<Candidate>, i64)> {
    let scan = Scan {
        space,
        account,
        only: None,
        subjects: None,
        settings,
        limit,
        count_all: true,
        lock: false,
    };
    scan.run(conn).await
}

/// Re-checks that assignment `assignment_id` of `space` is still a candidate for `criterion`
/// (the ledger may have changed since the plan) and, if so, starts its revocation with the
/// reason `reconcile: <criterion>` and writes `assignment.reconciled`. Runs inside the
/// caller's transaction; the assignment row is locked first (the ledger's lock order).
/// `false`: nothing was done (no longer live, no longer a candidate, or another criterion
/// applies now).
pub async fn revoke_candidate(
    conn: &mut AsyncPgConnection,
    space: &str,
    assignment_id: Uuid,
    criterion: ReconcileCriterion,
    settings: &ReconcileArgs,
    origin: &Origin,
) -> diesel::QueryResult<bool> {
    let scan = Scan {
        space,
        account: None,
        only: Some(assignment_id),
        subjects: None,
        settings,
        limit: 1,
        count_all: false,
        lock: true,
    };
    let (found, _) = scan.run(conn).await?;
    let Some(candidate) = found.into_iter().find(|c| c.criterion == criterion) else {
        return Ok(false);
    };
    let scope = Scope {
        assignment: Some(assignment_id),
        ..Scope::default()
    };
    let reason = format!("reconcile: {criterion}");
    let revoked = crate::engine::revoke::revoke(conn, space, &scope, origin, &reason).await?;
    if revoked.dropped + revoked.revoking == 0 {
        return Ok(false);
    }
    let mut entry = Activity::new(origin, "assignment.reconciled")
        .space(space)
        .account(candidate.account_id)
        .details(serde_json::json!({
            "criterion": criterion,
            "detail": candidate.detail,
            "license_type": candidate.license_type,
        }));
    entry.assignment_id = Some(assignment_id);
    entry.adam_id = Some(candidate.adam_id);
    entry.pricing_param = Some(candidate.pricing_param);
    entry.subject = Some(format!("{}:{}", candidate.license_type, candidate.target));
    activity::record(conn, entry).await?;
    Ok(true)
}

/// The live licenses of `subjects` (subject row ids) of `space` that allocation's rules no
/// longer grant — disallowed, left the first-come-first-served groups, off the fallback
/// account's distribution list — judged on the facts stored now, with their rows locked (run it
/// inside the caller's transaction, then revoke what it returns). The lifecycle events' group
/// and user changes and `PUT …/devices|users/…` use it (V2); "not seen" is never a criterion
/// here (that is Reconcile's, on its schedule).
pub async fn no_longer_granted(
    conn: &mut AsyncPgConnection,
    space: &str,
    subjects: &[Uuid],
) -> diesel::QueryResult<Vec<Candidate>> {
    if subjects.is_empty() {
        return Ok(Vec::new());
    }
    let settings = ReconcileArgs {
        reconcile_unseen_days: None,
        ..ReconcileArgs::default()
    };
    let scan = Scan {
        space,
        account: None,
        only: None,
        subjects: Some(subjects),
        settings: &settings,
        limit: i64::MAX,
        count_all: false,
        lock: true,
    };
    Ok(scan.run(conn).await?.0)
}

/// One pass over the space's live assignments.
struct Scan<'a> {
    space: &'a str,
    account: Option<Uuid>,
    only: Option<Uuid>,
    /// Only these subjects' assignments.
    subjects: Option<&'a [Uuid]>,
    settings: &'a ReconcileArgs,
    limit: i64,
    /// Go on after `limit` to count every candidate.
    count_all: bool,
    lock: bool,
}

impl Scan<'_> {
    async fn run(
        &self,
        conn: &mut AsyncPgConnection,
    ) -> diesel::QueryResult<(Vec<Candidate>, i64)> {
        let unseen_before = self
            .settings
            .reconcile_unseen_days
            .map(|days| Utc::now() - chrono::Duration::days(days as i64));
        let mut out = Vec::new();
        let mut total = 0i64;
        let mut after = None;
        loop {
            let rows = store::page(
                conn,
                &PageFilter {
                    space: self.space,
                    account: self.account,
                    assignment: self.only,
                    subjects: self.subjects,
                    after,
                    unseen_before,
                    size: PAGE,
                },
                self.lock,
            )
            .await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.id);
            let full = rows.len() as i64 == PAGE;
            for c in judge_page(conn, self.space, rows, unseen_before).await? {
                total += 1;
                if (out.len() as i64) < self.limit {
                    out.push(c);
                }
            }
            if !full || (!self.count_all && out.len() as i64 >= self.limit) {
                break;
            }
        }
        Ok((out, total))
    }
}

/// The candidates among one page of live assignments, in the page's order.
async fn judge_page(
    conn: &mut AsyncPgConnection,
    space: &str,
    rows: Vec<Live>,
    unseen_before: Option<chrono::DateTime<Utc>>,
) -> diesel::QueryResult<Vec<Candidate>> {
    // The devices of the page's user licenses (their groups count, as at allocation).
    let users: Vec<&str> = rows
        .iter()
        .filter(|r| r.license_type == LicenseType::User)
        .map(|r| r.external_id.as_str())
        .collect();
    let mut devices: HashMap<String, Vec<(String, Vec<String>)>> = HashMap::new();
    for d in store::devices_of(conn, space, &users).await? {
        devices
            .entry(d.user_external_id)
            .or_default()
            .push((d.serial, d.groups.into_iter().flatten().collect()));
    }
    // The policies of the page's assets.
    let mut assets: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.adam_id.as_str(), r.pricing_param.as_str()))
        .collect();
    assets.sort();
    assets.dedup();
    let (adams, pricings): (Vec<&str>, Vec<&str>) = assets.into_iter().unzip();
    let mut policies: HashMap<(String, String), Policy> = HashMap::new();
    for e in store::policy_entries(conn, space, &adams, &pricings).await? {
        policies
            .entry((e.adam_id.clone(), e.pricing_param.clone()))
            .or_default()
            .entries
            .push(e.entry());
    }
    // Who each holder is, and the list entries naming the fallback licenses' holders.
    let holders: Vec<Holder> = rows
        .iter()
        .map(|r| Holder {
            external_id: r.external_id.clone(),
            groups: r.groups.iter().flatten().cloned().collect(),
            user: r.user_external_id.clone(),
            devices: match r.license_type {
                LicenseType::User => devices.get(&r.external_id).cloned().unwrap_or_default(),
                LicenseType::Device => Vec::new(),
            },
            last_seen_at: r.last_seen_at,
        })
        .collect();
    let whos: Vec<_> = rows
        .iter()
        .zip(&holders)
        .map(|(r, h)| h.who(r.license_type))
        .collect();
    let listed = {
        let fallback: Vec<usize> = (0..rows.len())
            .filter(|&i| rows[i].rule == Rule::Fallback && rows[i].has_list)
            .collect();
        let mut accounts: Vec<Uuid> = fallback.iter().map(|&i| rows[i].account_id).collect();
        accounts.sort();
        accounts.dedup();
        let mut values: HashMap<&str, HashSet<&str>> = HashMap::new();
        for &i in &fallback {
            let who = &whos[i];
            values
                .entry(who.kind.as_str())
                .or_default()
                .insert(who.id.as_str());
            for (k, v) in &who.also {
                values.entry(k.as_str()).or_default().insert(v.as_str());
            }
            for g in &who.groups {
                values.entry("group").or_default().insert(g.as_str());
            }
        }
        let of = |kind: &str| -> Vec<&str> {
            values
                .get(kind)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default()
        };
        store::listed(conn, &accounts, &of("device"), &of("user"), &of("group"))
            .await?
            .into_iter()
            .map(|e| (e.account_id, e.kind, e.value))
            .collect::<HashSet<_>>()
    };
    let mut out = Vec::new();
    for ((r, holder), who) in rows.iter().zip(&holders).zip(&whos) {
        let on_list = |kind: &str, value: &str| {
            listed.contains(&(r.account_id, kind.to_owned(), value.to_owned()))
        };
        let is_listed = on_list(&who.kind, &who.id)
            || who.also.iter().any(|(k, v)| on_list(k, v))
            || who.groups.iter().any(|g| on_list("group", g));
        let ctx = Context {
            policy: policies.get(&(r.adam_id.clone(), r.pricing_param.clone())),
            first_owner: r.first_owner,
            has_list: r.has_list,
            listed: is_listed,
            unseen_before,
        };
        let held = Held {
            rule: r.rule,
            account_id: r.account_id,
            license_type: r.license_type,
        };
        if let Some((criterion, detail)) = rule::judge(&held, holder, &ctx) {
            out.push(Candidate {
                assignment_id: r.id,
                account_id: r.account_id,
                adam_id: r.adam_id.clone(),
                pricing_param: r.pricing_param.clone(),
                license_type: r.license_type,
                target: r.external_id.clone(),
                criterion,
                detail,
            });
        }
    }
    Ok(out)
}
