//! Allocation (rules A1–A10): one decision in one transaction, answered from the ledger.
//!
//! Order of the decision:
//! 1. the license holder is resolved (device or user license, A7 and Shared iPads);
//! 2. an existing live assignment of the holder is returned (A6), as is the device's user's
//!    user-based license (A7);
//! 3. the asset's policy may refuse the subject (A3);
//! 4. a reserved subject tries its reservation's account first (A2);
//! 5. otherwise accounts are tried in priority order (A1); after the first account that owns
//!    the asset, an account is only tried if the subject is on its distribution list (A4);
//!    accounts being deleted, and unusable accounts set to `skip`, are skipped; unusable
//!    accounts set to `queue` allocate from the ledger and their Apple call waits (A10);
//! 6. the first account with a free license wins. The license is taken by a conditional
//!    update of the asset row (`held + foreign_assigned + holdback < apple_total`), so the
//!    count of live assignments never exceeds what the account owns, whatever the concurrency
//!    and however many replicas share the database (A9). The assignment, its Apple job and the
//!    activity row are written by the same statement.
//!
//! When nothing is free anywhere, the answer lists every account and why it could not serve.

use std::collections::HashMap;

use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::candidates::{self, Candidate, ListKeys};
use super::model::{Decision, LicenseType, LicenseWish, Rule, Skip, SkipReason, SubjectKind};
use super::policy::{self, Policy, Verdict, Who};
use crate::ledger::assignments::{self, AssignmentRow};
use crate::ledger::subjects::{self, SubjectFacts, SubjectRow};

/// An asset: Apple product id and pricing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AssetRef {
    pub adam_id: String,
    pub pricing_param: String,
}

/// Who asks for a license.
#[derive(Clone, Debug)]
pub enum SubjectInput {
    Device {
        serial: String,
        /// Client user id of the device's user, when known.
        user: Option<String>,
        shared_ipad: bool,
        groups: Option<Vec<String>>,
    },
    User {
        id: String,
        groups: Option<Vec<String>>,
    },
}

#[derive(Clone, Debug)]
pub struct AllocationRequest {
    pub space: String,
    pub asset: AssetRef,
    pub subject: SubjectInput,
    pub wish: LicenseWish,
    pub reason: String,
    pub requested_by: String,
    pub dry_run: bool,
    /// Accounts not to use (a re-allocation after Apple's 9709 excludes the account that failed).
    pub exclude_accounts: Vec<Uuid>,
    /// For re-allocations: the assignment being replaced (recorded in the decision).
    pub replaces: Option<Uuid>,
}

/// The answer.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The assignment (for a dry run: `None`).
    pub assignment: Option<AssignmentRow>,
    /// True when this request created it.
    pub created: bool,
    pub rule: Rule,
    pub account_id: Uuid,
    pub license_type: LicenseType,
    pub decision: Decision,
}

#[derive(Debug, thiserror::Error)]
pub enum AllocationError {
    #[error("no account of space {space} owns asset {adam_id}/{pricing_param}")]
    UnknownAsset {
        space: String,
        adam_id: String,
        pricing_param: String,
    },
    #[error("{0}")]
    Disallowed(String),
    #[error("{0}")]
    Incompatible(String),
    #[error("no license available")]
    Exhausted { skipped: Vec<Skip> },
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    #[error(transparent)]
    Pool(#[from] diesel_async::pooled_connection::deadpool::PoolError),
}

/// The license holder and what matching needs to know about it.
struct Target {
    holder: SubjectRow,
    license_type: LicenseType,
    /// The device asking, when the holder is its user (or the holder itself for device licenses).
    device: Option<SubjectRow>,
    who: Who,
    serial: Option<String>,
    users: Vec<String>,
}

fn facts<'a>(kind: SubjectKind, id: &'a str, groups: Option<&'a [String]>) -> SubjectFacts<'a> {
    SubjectFacts {
        kind,
        external_id: id,
        groups,
        user_external_id: None,
        shared_ipad: None,
    }
}

/// Reads (dry run) or upserts (otherwise) a subject. A dry run of an unknown subject works on
/// an unsaved stand-in.
async fn subject(
    conn: &mut AsyncPgConnection,
    space: &str,
    facts: SubjectFacts<'_>,
    dry_run: bool,
) -> diesel::QueryResult<SubjectRow> {
    if dry_run {
        let found = subjects::find(conn, space, facts.kind, facts.external_id).await?;
        return Ok(found.unwrap_or_else(|| SubjectRow {
            id: Uuid::nil(),
            space_id: space.to_owned(),
            kind: facts.kind,
            external_id: facts.external_id.to_owned(),
            groups: facts
                .groups
                .map(|g| g.iter().cloned().map(Some).collect())
                .unwrap_or_default(),
            user_external_id: facts.user_external_id.map(str::to_owned),
            shared_ipad: facts.shared_ipad.unwrap_or(false),
        }));
    }
    subjects::upsert(conn, space, &facts).await
}

/// Whether any account of the space owns the asset device-assignably (for `auto`).
async fn device_assignable(
    conn: &mut AsyncPgConnection,
    space: &str,
    asset: &AssetRef,
) -> diesel::QueryResult<Option<bool>> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Bool>)]
        any: Option<bool>,
    }
    let row: Row = diesel::sql_query(
        "SELECT bool_or(s.device_assignable) AS any FROM assets s JOIN accounts a ON a.id = s.account_id
          WHERE a.space_id = $1 AND s.adam_id = $2 AND s.pricing_param = $3",
    )
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Text, _>(&asset.adam_id)
    .bind::<diesel::sql_types::Text, _>(&asset.pricing_param)
    .get_result(conn)
    .await?;
    Ok(row.any)
}

async fn resolve(
    conn: &mut AsyncPgConnection,
    req: &AllocationRequest,
) -> Result<Target, AllocationError> {
    let space = req.space.as_str();
    match &req.subject {
        SubjectInput::User { id, groups } => {
            if req.wish == LicenseWish::Device {
                return Err(AllocationError::Incompatible(
                    "a device license needs a device subject (kind `device` with its serial number)".into(),
                ));
            }
            let holder = subject(
                conn,
                space,
                facts(SubjectKind::User, id, groups.as_deref()),
                req.dry_run,
            )
            .await?;
            let who = Who {
                kind: "user".into(),
                id: id.clone(),
                also: Vec::new(),
                groups: holder.group_names(),
            };
            Ok(Target {
                license_type: LicenseType::User,
                device: None,
                who,
                serial: None,
                users: vec![id.clone()],
                holder,
            })
        }
        SubjectInput::Device {
            serial,
            user,
            shared_ipad,
            groups,
        } => {
            let mut device_facts = facts(SubjectKind::Device, serial, groups.as_deref());
            device_facts.user_external_id = user.as_deref();
            device_facts.shared_ipad = Some(*shared_ipad);
            let device = subject(conn, space, device_facts, req.dry_run).await?;
            let user = user.clone().or_else(|| device.user_external_id.clone());
            let license_type = match req.wish {
                LicenseWish::Device => LicenseType::Device,
                LicenseWish::User => LicenseType::User,
                // Shared iPads always get device licenses (A7).
                LicenseWish::Auto if *shared_ipad || device.shared_ipad => LicenseType::Device,
                LicenseWish::Auto => match device_assignable(conn, space, &req.asset).await? {
                    Some(false) => LicenseType::User,
                    _ => LicenseType::Device,
                },
            };
            if license_type == LicenseType::User && (*shared_ipad || device.shared_ipad) {
                return Err(AllocationError::Incompatible(
                    "Shared iPads always get device-based licenses".into(),
                ));
            }
            let mut groups = device.group_names();
            let mut also = Vec::new();
            if let Some(u) = &user {
                also.push(("user".to_owned(), u.clone()));
            }
            if license_type == LicenseType::User {
                let Some(u) = user.clone() else {
                    return Err(AllocationError::Incompatible(
                        "this asset is not device-assignable (or a user license was asked for): \
                         give the device's user in `subject.user`"
                            .into(),
                    ));
                };
                let holder =
                    subject(conn, space, facts(SubjectKind::User, &u, None), req.dry_run).await?;
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
            } else {
                Ok(Target {
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
                })
            }
        }
    }
}

fn outcome_existing(existing: AssignmentRow, rule: Rule) -> Outcome {
    Outcome {
        rule,
        account_id: existing.account_id,
        license_type: existing.license_type,
        decision: serde_json::from_value(existing.decision.clone()).unwrap_or_default(),
        assignment: Some(existing),
        created: false,
    }
}

/// Allocates (or, with `dry_run`, explains what would be allocated).
pub async fn allocate(
    conn: &mut AsyncPgConnection,
    req: &AllocationRequest,
) -> Result<Outcome, AllocationError> {
    // A concurrent request for the same subject and asset may win the unique index; then the
    // winner's assignment is the answer (A6). Two attempts are enough: the second finds it.
    for _ in 0..3 {
        match conn
            .transaction(async |conn| decide(conn, req).await)
            .await
        {
            Err(AllocationError::Db(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                info,
            ))) if info.constraint_name() == Some("assignments_one_live") => continue,
            other => return other,
        }
    }
    Err(AllocationError::Db(
        diesel::result::Error::RollbackTransaction,
    ))
}

async fn decide(
    conn: &mut AsyncPgConnection,
    req: &AllocationRequest,
) -> Result<Outcome, AllocationError> {
    let target = resolve(conn, req).await?;
    let (adam, pricing) = (&req.asset.adam_id, &req.asset.pricing_param);

    // (A dry run for a subject never seen before has nothing to find.)
    if (!req.dry_run || target.holder.id != Uuid::nil())
        && let Some(existing) =
            assignments::live_for(conn, &req.space, adam, pricing, target.holder.id).await?
    {
        return Ok(outcome_existing(existing, Rule::Existing));
    }
    // A7: a device license is not assigned when the device's user already holds a user license.
    if target.license_type == LicenseType::Device
        && let Some(device) = &target.device
        && !device.shared_ipad
        && let Some(user) = &device.user_external_id
        && let Some(user_row) = subjects::find(conn, &req.space, SubjectKind::User, user).await?
        && let Some(existing) =
            assignments::live_for(conn, &req.space, adam, pricing, user_row.id).await?
        && existing.license_type == LicenseType::User
    {
        return Ok(outcome_existing(existing, Rule::UserLicenseCoversDevice));
    }

    let policy = Policy::load(conn, &req.space, adam, pricing).await?;
    let reserved_from = match policy.verdict(&target.who) {
        Verdict::Disallowed(why) => return Err(AllocationError::Disallowed(why)),
        Verdict::Allowed { reserved_from } => reserved_from,
    };
    let keys = ListKeys {
        serial: target.serial.as_deref(),
        users: &target.users,
        groups: &target.who.groups,
    };
    let mut ordered = candidates::load(conn, &req.space, adam, pricing, &keys).await?;
    ordered.retain(|c| !req.exclude_accounts.contains(&c.id));
    if ordered.is_empty() {
        return Err(AllocationError::UnknownAsset {
            space: req.space.clone(),
            adam_id: adam.clone(),
            pricing_param: pricing.clone(),
        });
    }
    // Reservations hold licenses back from everyone else.
    let mut holdback: HashMap<Uuid, i64> = HashMap::new();
    if policy.has_reservations() {
        let first = ordered[0].id;
        for (account, n) in policy::outstanding(conn, &req.space, adam, pricing).await? {
            *holdback.entry(account.unwrap_or(first)).or_default() += n;
        }
        if let Some(own) = reserved_from {
            let own_account = own.unwrap_or(first);
            if let Some(n) = holdback.get_mut(&own_account) {
                *n = (*n - 1).max(0);
            }
        }
    }
    let reserved_account = match reserved_from {
        Some(Some(account)) => Some(account),
        Some(None) => Some(ordered[0].id),
        None => None,
    };
    let first_owner = ordered[0].id;
    if let Some(account) = reserved_account
        && let Some(pos) = ordered.iter().position(|c| c.id == account)
    {
        let c = ordered.remove(pos);
        ordered.insert(0, c);
    }

    let now = Utc::now();
    let mut decision = Decision {
        replaces: req.replaces,
        ..Decision::default()
    };
    for candidate in &ordered {
        let is_reserved_here = reserved_account == Some(candidate.id);
        let is_first_owner = candidate.id == first_owner;
        let skip = |reason: SkipReason, detail: String| Skip {
            account_id: candidate.id,
            account_name: candidate.name.clone(),
            priority: candidate.priority,
            reason,
            detail,
        };
        if candidate.deleting {
            decision.skipped.push(skip(
                SkipReason::Deleting,
                "the account is being deleted".into(),
            ));
            continue;
        }
        let status = candidate.effective_status(now);
        let usable = status.status.allows_apple_calls();
        if !usable && candidate.when_unusable == crate::accounts::WhenUnusable::Skip {
            decision.skipped.push(skip(
                SkipReason::Unusable,
                format!("status {}: {}", status.status, status.reason),
            ));
            continue;
        }
        if target.license_type == LicenseType::Device && !candidate.device_assignable {
            decision.skipped.push(skip(
                SkipReason::NotDeviceAssignable,
                "the asset is not device-assignable in this account".into(),
            ));
            continue;
        }
        if !is_first_owner && !is_reserved_here && candidate.has_list && !candidate.listed {
            decision.skipped.push(skip(
                SkipReason::NotOnDistributionList,
                "fallback to this account needs the subject on its distribution list".into(),
            ));
            continue;
        }
        let hold = holdback.get(&candidate.id).copied().unwrap_or(0);
        let no_free = |c: &Candidate| {
            format!(
                "owns {}, held here {}, assigned elsewhere {}, held back for reservations {}",
                c.apple_total, c.held, c.foreign_assigned, hold
            )
        };
        if candidate.free(hold) <= 0 {
            decision
                .skipped
                .push(skip(SkipReason::NoFreeLicense, no_free(candidate)));
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
        if req.dry_run {
            return Ok(Outcome {
                assignment: None,
                created: false,
                rule,
                account_id: candidate.id,
                license_type: target.license_type,
                decision,
            });
        }
        let id = Uuid::now_v7();
        let taken = take(
            conn, req, candidate, &target, hold, id, rule, &decision,
        )
        .await?;
        if !taken {
            // Someone took the last license between our read and our update.
            decision.skipped.push(skip(
                SkipReason::NoFreeLicense,
                "the last free license was just taken".into(),
            ));
            continue;
        }
        let row = assignments::by_id(conn, id)
            .await?
            .ok_or(diesel::result::Error::NotFound)?;
        return Ok(Outcome {
            assignment: Some(row),
            created: true,
            rule,
            account_id: candidate.id,
            license_type: target.license_type,
            decision,
        });
    }
    Err(AllocationError::Exhausted {
        skipped: decision.skipped,
    })
}

#[derive(diesel::QueryableByName)]
struct Taken {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Takes one license of `candidate` and writes the assignment, its Apple job and the activity
/// row, all in one statement. False when no license was free any more.
#[allow(clippy::too_many_arguments)]
async fn take(
    conn: &mut AsyncPgConnection,
    req: &AllocationRequest,
    candidate: &Candidate,
    target: &Target,
    holdback: i64,
    id: Uuid,
    rule: Rule,
    decision: &Decision,
) -> Result<bool, AllocationError> {
    let decision_json = serde_json::to_value(decision).unwrap_or_default();
    let details = serde_json::json!({
        "license_type": target.license_type,
        "skipped": decision.skipped.len(),
        "queued_because": decision.queued_because,
    });
    let taken: Taken = diesel::sql_query(
        "WITH take AS (
             UPDATE assets SET held = held + 1, updated_at = now()
              WHERE account_id = $1 AND adam_id = $2 AND pricing_param = $3
                AND held + foreign_assigned + $4 < apple_total
          RETURNING account_id
         ), ins AS (
             INSERT INTO assignments (id, space_id, account_id, adam_id, pricing_param, subject_id,
                                      license_type, state, rule, decision, requested_by, reason)
             SELECT $5, $6, account_id, $2, $3, $7, $8, 'pending', $9, $10, $11, $12 FROM take
          RETURNING id
         ), job AS (
             INSERT INTO jobs (kind, account_id, assignment_id, run_at)
             SELECT 'associate', $1, id, now() FROM ins
         ), act AS (
             INSERT INTO activity_log (space_id, actor, action, account_id, assignment_id, subject,
                                       adam_id, pricing_param, rule, request_id, details)
             SELECT $6, $11, 'assignment.allocated', $1, id, $13, $2, $3, $9, $14, $15 FROM ins
         )
         SELECT count(*) AS n FROM ins",
    )
    .bind::<diesel::sql_types::Uuid, _>(candidate.id)
    .bind::<diesel::sql_types::Text, _>(&req.asset.adam_id)
    .bind::<diesel::sql_types::Text, _>(&req.asset.pricing_param)
    .bind::<diesel::sql_types::Integer, _>(holdback as i32)
    .bind::<diesel::sql_types::Uuid, _>(id)
    .bind::<diesel::sql_types::Text, _>(&req.space)
    .bind::<diesel::sql_types::Uuid, _>(target.holder.id)
    .bind::<diesel::sql_types::Text, _>(target.license_type)
    .bind::<diesel::sql_types::Text, _>(rule)
    .bind::<diesel::sql_types::Jsonb, _>(decision_json)
    .bind::<diesel::sql_types::Text, _>(&req.requested_by)
    .bind::<diesel::sql_types::Text, _>(&req.reason)
    .bind::<diesel::sql_types::Text, _>(format!(
        "{}:{}",
        target.holder.kind, target.holder.external_id
    ))
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(
        crate::http::context::request_id(),
    )
    .bind::<diesel::sql_types::Jsonb, _>(details)
    .get_result(conn)
    .await?;
    Ok(taken.n == 1)
}
