//! Allocation (rules A1–A10 in docs/rules.md): decided from the ledger, in batches, never calling
//! Apple.
//!
//! A request is decided in this order (see [`crate::domain::decide`]):
//! 1. the license holder is resolved (device or user license, A7 and Shared iPads);
//! 2. an existing live assignment of the holder is returned (A6), as is the device's user's
//!    user-based license (A7);
//! 3. the asset's policy may refuse the subject (A3);
//! 4. a reserved subject tries its reservation's account first (A2);
//! 5. otherwise accounts are tried in priority order (A1); after the first account that owns
//!    the asset, an account is only tried if the subject is on its distribution list (A4);
//!    accounts being deleted, and unusable accounts set to `skip`, are skipped; unusable
//!    accounts set to `queue` allocate from the ledger and their Apple call waits (A10);
//! 6. the first account with a free license wins; nothing free anywhere answers every account
//!    and why it could not serve, unless the request asked to wait (A12): then it joins the
//!    asset's wait-list as a `waiting` assignment ([`super::waitlist`]).
//!
//! Concurrent requests of one process are decided together ([`super::combiner`]): one
//! transaction loads what the batch needs in a fixed number of queries, locking the asset rows
//! involved ([`crate::ledger::allocation_load`]), decides every request in memory, and writes all new licenses,
//! their Apple jobs and activity rows in one statement whose pool update is guarded by
//! `held + foreign_assigned + n <= apple_total` ([`crate::ledger::allocation_write`]). A
//! subject Apple already lists for the asset (the sync's mirror) is served from that account
//! with no new license: its license moves from `foreign_assigned` to `held` (issue 13). Live assignments never
//! exceed what an account owns, whatever the concurrency and however many replicas share the
//! database (A9), and a hot asset costs one commit per batch instead of one per request.

use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use uuid::Uuid;

use crate::domain::allocation::{AllocationRequest, Refusal, SubjectInput};
use crate::domain::decide::{self, Decided};
use crate::domain::model::{Decision, LicenseType, Rule, SubjectKind};
use crate::domain::records::{AssignmentRow, SubjectRow};
use crate::ledger::allocation_load as load;
use crate::ledger::allocation_write::{self as write, Requested, Returning, WriteError};
use crate::ledger::waitlist;

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
    /// The license holder.
    pub holder: SubjectRow,
}

/// Why an allocation failed: a rule refused it ([`Refusal`]), or the ledger did.
#[derive(Debug, thiserror::Error)]
pub enum AllocationError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    #[error(transparent)]
    Pool(#[from] diesel_async::pooled_connection::deadpool::PoolError),
    /// No connection for the batch (shared by every request of it, hence the `Arc`), or the
    /// executors stopped (no source).
    #[error("the ledger database is unavailable: {why}")]
    Unavailable {
        why: &'static str,
        #[source]
        source: Option<std::sync::Arc<diesel_async::pooled_connection::deadpool::PoolError>>,
    },
    /// The guarded write found the ledger changed since the batch was decided (an account
    /// marked for deletion meanwhile); nothing was written. Deciding again gives the answer.
    #[error("the ledger changed while the allocation was decided")]
    Overdrawn,
}

/// How often [`allocate`] decides again after [`AllocationError::Overdrawn`].
const ATTEMPTS: usize = 3;

/// Allocates one license (or, with `dry_run`, explains what would be allocated), in its own
/// transaction (a savepoint when the caller already has one).
pub async fn allocate(
    conn: &mut AsyncPgConnection,
    req: &AllocationRequest,
) -> Result<Outcome, AllocationError> {
    let space = req.space.clone();
    let mut attempt = 1;
    loop {
        let result = conn
            .transaction(async |conn| allocate_many(conn, &space, &[req]).await)
            .await;
        match result {
            Err(AllocationError::Overdrawn) if attempt < ATTEMPTS => attempt += 1,
            Err(e) => return Err(e),
            Ok(mut results) => {
                return results
                    .pop()
                    .unwrap_or(Err(AllocationError::Db(diesel::result::Error::NotFound)));
            }
        }
    }
}

/// Allocations decided in batches by a [`super::combiner::Combiner`].
pub struct Allocations;

impl super::combiner::Batched for Allocations {
    type Req = AllocationRequest;
    type Out = Outcome;
    type Err = AllocationError;
    const METRIC: &'static str = "allocation_batch_size";

    fn space(req: &AllocationRequest) -> &str {
        &req.space
    }

    fn decide_many<'a>(
        conn: &'a mut AsyncPgConnection,
        space: &'a str,
        reqs: &'a [&'a AllocationRequest],
    ) -> super::combiner::Decided<'a, Outcome, AllocationError> {
        Box::pin(allocate_many(conn, space, reqs))
    }

    fn decide_one<'a>(
        conn: &'a mut AsyncPgConnection,
        req: &'a AllocationRequest,
    ) -> futures_util::future::BoxFuture<'a, Result<Outcome, AllocationError>> {
        Box::pin(allocate(conn, req))
    }

    fn unavailable(
        why: &'static str,
        source: Option<std::sync::Arc<super::combiner::PoolError>>,
    ) -> AllocationError {
        AllocationError::Unavailable { why, source }
    }

    /// The ledger changed under the batch's guarded write: deciding again gives the answer.
    fn retry_alone(err: &AllocationError) -> bool {
        matches!(err, AllocationError::Overdrawn)
    }
}

/// Decides and writes a batch of allocations of one space; runs inside the caller's
/// transaction (which holds the batch's locks until it commits). The outer error fails the
/// whole batch (the caller rolls back); inner results are per request.
pub async fn allocate_many(
    conn: &mut AsyncPgConnection,
    space: &str,
    reqs: &[&AllocationRequest],
) -> Result<Vec<Result<Outcome, AllocationError>>, AllocationError> {
    allocate_many_returning(conn, space, reqs, Returning::Rows).await
}

/// [`allocate_many`] for callers that count outcomes and show no new row (bulk operations,
/// the wait-list): a new license's outcome has `created: true` and no `assignment`.
pub async fn allocate_many_counted(
    conn: &mut AsyncPgConnection,
    space: &str,
    reqs: &[&AllocationRequest],
) -> Result<Vec<Result<Outcome, AllocationError>>, AllocationError> {
    allocate_many_returning(conn, space, reqs, Returning::Count).await
}

async fn allocate_many_returning(
    conn: &mut AsyncPgConnection,
    space: &str,
    reqs: &[&AllocationRequest],
    returning: Returning,
) -> Result<Vec<Result<Outcome, AllocationError>>, AllocationError> {
    let dry_run = reqs.iter().all(|r| r.dry_run);
    if !load::space_exists(conn, space).await? {
        return Ok(reqs
            .iter()
            .map(|_| Err(Refusal::UnknownSpace(space.to_owned()).into()))
            .collect());
    }
    let snap = load::snapshot(conn, space, reqs, dry_run).await?;
    let decided = decide::decide_all(reqs, &snap, Utc::now(), dry_run);
    let planned: Vec<(&decide::Planned, Requested<'_>)> = decided
        .iter()
        .zip(reqs)
        .filter_map(|(d, r)| match d {
            Decided::New(p) => Some((
                p,
                Requested {
                    requested_by: &r.origin.actor,
                    reason: &r.reason,
                    request_id: r.origin.request_id.as_deref(),
                    serves_waiting: r.serves == Some(p.id),
                },
            )),
            _ => None,
        })
        .collect();
    let mut rows = match write::write(conn, space, &planned, returning).await {
        Ok(rows) => rows,
        Err(WriteError::Db(e)) => return Err(AllocationError::Db(e)),
        Err(WriteError::Overdrawn) => return Err(AllocationError::Overdrawn),
    };
    // A12: requests that wait for a license join the line.
    let waits: Vec<(&decide::Planned, waitlist::Asked<'_>)> = decided
        .iter()
        .zip(reqs)
        .filter_map(|(d, r)| match (d, r.wait_until.or(r.policy_wait_until)) {
            (Decided::Waits(p), Some(expires_at)) => {
                let (subject_kind, subject_external_id) = match &r.subject {
                    SubjectInput::Device { serial, .. } => (SubjectKind::Device, serial.as_str()),
                    SubjectInput::User { id, .. } => (SubjectKind::User, id.as_str()),
                };
                Some((
                    p,
                    waitlist::Asked {
                        requested_by: &r.origin.actor,
                        reason: &r.reason,
                        request_id: r.origin.request_id.as_deref(),
                        subject_kind,
                        subject_external_id,
                        wish: r.wish,
                        expires_at,
                    },
                ))
            }
            _ => None,
        })
        .collect();
    rows.extend(waitlist::write_waiting(conn, space, &waits).await?);
    let mut rows: std::collections::HashMap<uuid::Uuid, AssignmentRow> =
        rows.into_iter().map(|r| (r.id, r)).collect();
    Ok(outcomes(decided, |p, would| Outcome {
        // A dry run's new license has no row; a written one has its row.
        assignment: if would { None } else { rows.remove(&p.id) },
        created: !would,
        rule: p.rule,
        account_id: p.account_id,
        license_type: p.license_type,
        decision: p.decision,
        holder: p.holder,
    }))
}

/// Plans a batch of allocations of one space without writing anything (a bulk operation's dry
/// run): decided like [`allocate_many`] from a read-only snapshot, except that the licenses the
/// plan gives are counted in `tally`, across the batches of one plan, so the plan says where
/// licenses run out. A new license is answered `created: true` with no assignment.
pub async fn plan_many(
    conn: &mut AsyncPgConnection,
    space: &str,
    reqs: &[&AllocationRequest],
    tally: &mut decide::Tally,
) -> Result<Vec<Result<Outcome, AllocationError>>, AllocationError> {
    if !load::space_exists(conn, space).await? {
        return Ok(reqs
            .iter()
            .map(|_| Err(Refusal::UnknownSpace(space.to_owned()).into()))
            .collect());
    }
    let snap = load::snapshot(conn, space, reqs, true).await?;
    let decided = decide::plan_batch(reqs, &snap, Utc::now(), tally);
    // Every license the plan gives is new (`created`), written or not.
    Ok(outcomes(decided, |p, _| Outcome {
        assignment: None,
        created: true,
        rule: p.rule,
        account_id: p.account_id,
        license_type: p.license_type,
        decision: p.decision,
        holder: p.holder,
    }))
}

/// The answers of a decided batch, in request order: `new` makes the outcome of a license the
/// batch gives (`true`: a dry run's, which is not written).
fn outcomes(
    decided: Vec<Decided>,
    mut new: impl FnMut(decide::Planned, bool) -> Outcome,
) -> Vec<Result<Outcome, AllocationError>> {
    let mut outcomes: Vec<Result<Outcome, AllocationError>> = Vec::with_capacity(decided.len());
    for d in decided {
        let outcome = match d {
            Decided::Existing { row, rule, holder } => Ok(Outcome::existing(*row, rule, holder)),
            Decided::SameAs(i) => match &outcomes[i] {
                Ok(first) => Ok(Outcome {
                    created: false,
                    rule: Rule::Existing,
                    ..first.clone()
                }),
                Err(_) => Err(AllocationError::Db(diesel::result::Error::NotFound)),
            },
            Decided::New(p) | Decided::Waits(p) => Ok(new(p, false)),
            Decided::Would(p) => Ok(new(p, true)),
            Decided::Refused(e) => Err(e.into()),
        };
        outcomes.push(outcome);
    }
    outcomes
}

impl Outcome {
    fn existing(row: AssignmentRow, rule: Rule, holder: SubjectRow) -> Outcome {
        Outcome {
            account_id: row.account_id,
            license_type: row.license_type,
            decision: serde_json::from_value(row.decision.clone()).unwrap_or_default(),
            assignment: Some(row),
            created: false,
            rule,
            holder,
        }
    }
}
