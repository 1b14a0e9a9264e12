//! Revocation (rule V1 in docs/rules.md): one assignment, all of an asset (in one account or all),
//! all of a subject's, all of an account's. [`revoke`] starts it inside the caller's transaction
//! (account deletion uses it so); [`revoke_one`] and [`revoke_matching`] are what a caller asks
//! for, each in a transaction of its own. `DELETE …/assignments/{id}` goes through
//! [`Revocations`]: concurrent ones are decided together by [`revoke_many`], each caller
//! answered as [`revoke_one`] would answer it alone. The statements are the store's
//! ([`crate::ledger::revocations`]).
//!
//! A revoked license is free in the ledger at once (`held` drops in the same statement).
//! Pending assignments never reached Apple: they become `revoked` and their queued Apple job is
//! dropped. Assignments Apple holds (or is associating) become `revoking` and get a
//! `disassociate` job; the dispatcher moves them to `revoked` when Apple confirms.
//!
//! Waiting assignments (A12, [`super::waitlist`]) the scope names by assignment, asset or
//! subject are cancelled first (`revoked` at once, counted in [`Revoked::cancelled`]): they
//! hold no license. A scope naming an account leaves them (they belong to no account yet).
//!
//! Every revocation is recorded on the assignment (who, why, when, in which request:
//! `revoked_by`, `revocation_reason`, `revocation_requested_at`, `revocation_request_id`) and in
//! the activity log, from the [`Origin`] the caller passes.
//!
//! Licenses of assets Apple does not take back (`assets.revocable = false`, books: Apple answers
//! 9706) are left alone unless the scope says otherwise: sending them to Apple only failed the
//! assignment and counted one more license as assigned elsewhere per attempt. They are counted
//! in [`Revoked::not_revocable`]; callers that name such a license or asset refuse the request
//! up front ([`not_revocable`]).
//!
//! V4: Apple's v2 disassociate has no "notify the user" flag (v1 had one), so the account's
//! license-removal-notification setting is recorded with each revocation (`notify_user` in the
//! activity log) for the calling MDM to act on.

use diesel_async::{AsyncConnection, AsyncPgConnection};
use uuid::Uuid;

use crate::domain::model::{AssignmentState, SubjectKind};
use crate::domain::origin::Origin;
use crate::domain::records::AssignmentRow;
pub use crate::domain::revocation::{Revoked, Scope};
use crate::ledger::assignments;
use crate::ledger::revocations as store;

/// How many live assignments of `space` matching `scope` are of assets Apple does not let
/// revoke. Callers that name one license or one asset refuse the request when this is not 0.
pub async fn not_revocable(
    conn: &mut AsyncPgConnection,
    space: &str,
    scope: &Scope,
) -> diesel::QueryResult<i64> {
    Ok(store::matching(conn, space, scope, false)
        .await?
        .iter()
        .filter(|t| !t.revocable)
        .count() as i64)
}

/// Starts revocation of every live assignment of `space` matching `scope`. Run it inside the
/// caller's transaction.
///
/// Rows are locked in the ledger's lock order first (assignments by id, then their asset rows
/// by key; see [`crate::ledger::assignments::lock_in_order`]): a revocation spanning several
/// assets or assignments then never deadlocks with allocation batches or the dispatcher.
pub async fn revoke(
    conn: &mut AsyncPgConnection,
    space: &str,
    scope: &Scope,
    origin: &Origin,
    reason: &str,
) -> diesel::QueryResult<Revoked> {
    let cancelled = super::waitlist::cancel(conn, space, scope, origin, reason).await?;
    let matched = store::matching(conn, space, scope, true).await?;
    let mut revoked = start(conn, space, scope, matched, origin, reason).await?;
    revoked.cancelled = cancelled;
    Ok(revoked)
}

/// [`revoke`], unless a license it matched is of an asset Apple does not take back: then
/// nothing changes and the answer is how many such licenses matched. The check reads the rows
/// it would revoke, locked: a license that leaves `pending` (Apple now has it) while the
/// revocation waits for its row is seen as it is then.
async fn revoke_all_or_none(
    conn: &mut AsyncPgConnection,
    space: &str,
    scope: &Scope,
    origin: &Origin,
    reason: &str,
) -> diesel::QueryResult<Result<Revoked, i64>> {
    let cancelled = super::waitlist::cancel(conn, space, scope, origin, reason).await?;
    let matched = store::matching(conn, space, scope, true).await?;
    let refused = matched.iter().filter(|t| !t.revocable).count() as i64;
    if refused > 0 && !scope.include_not_revocable {
        // The caller rolls back: the cancellations too.
        return Ok(Err(refused));
    }
    let mut revoked = start(conn, space, scope, matched, origin, reason).await?;
    revoked.cancelled = cancelled;
    Ok(Ok(revoked))
}

/// Starts releasing the `matched` assignments (locked) that `scope` lets revoke.
async fn start(
    conn: &mut AsyncPgConnection,
    space: &str,
    scope: &Scope,
    matched: Vec<store::Target>,
    origin: &Origin,
    reason: &str,
) -> diesel::QueryResult<Revoked> {
    let not_revocable = if scope.include_not_revocable {
        0
    } else {
        matched.iter().filter(|t| !t.revocable).count() as i64
    };
    let targets: Vec<Uuid> = matched
        .into_iter()
        .filter(|t| t.revocable || scope.include_not_revocable)
        .map(|t| t.id)
        .collect();
    if targets.is_empty() {
        return Ok(Revoked {
            not_revocable,
            ..Revoked::default()
        });
    }
    let (dropped, revoking) = store::start(conn, space, &targets, origin, reason).await?;
    Ok(Revoked {
        dropped,
        revoking,
        not_revocable,
        cancelled: 0,
    })
}

// Revocations asked for by a caller: one assignment, or every live assignment that matches
// filters, each in one transaction.

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The space, account or assignment named does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// Apple does not take these licenses back (books); nothing was changed. Says which license,
    /// or how many of those matched.
    #[error("{0}")]
    NotRevocable(String),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    /// No pooled connection could be had, or the batch executors stopped (no source).
    #[error("the ledger database is unavailable: {why}")]
    Unavailable {
        why: &'static str,
        #[source]
        source: Option<std::sync::Arc<super::combiner::PoolError>>,
    },
}

/// Revokes one assignment if it is live (a finished one is left as it is) and returns it as it
/// is then.
pub async fn revoke_one(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
    origin: &Origin,
    reason: &str,
) -> Result<AssignmentRow, RevocationError> {
    let not_found = || RevocationError::NotFound(format!("assignment {id}"));
    // The row lock (first in the ledger's lock order) makes the state read here the state the
    // revocation acts on: a finished assignment is answered as it is, a live one is revoked.
    conn.transaction(async |conn| {
        let row = assignments::find_locked(conn, space, id)
            .await?
            .ok_or_else(not_found)?;
        let scope = Scope {
            assignment: Some(id),
            ..Default::default()
        };
        if row.state == AssignmentState::Waiting {
            // A12: cancelling a waiting assignment ends it at once; Apple never heard of it.
            super::waitlist::cancel(conn, space, &scope, origin, reason).await?;
            return Ok(());
        }
        if !row.state.is_live() {
            return Ok(());
        }
        if not_revocable(conn, space, &scope).await? > 0 {
            return Err(RevocationError::NotRevocable(format!(
                "assignment {id} holds a license of asset {}/{}",
                row.adam_id, row.pricing_param
            )));
        }
        revoke(conn, space, &scope, origin, reason).await?;
        Ok(())
    })
    .await?;
    assignments::find(conn, space, id)
        .await?
        .ok_or_else(not_found)
}

/// One caller's revocation of one assignment ([`revoke_one`]), decided with its neighbours in
/// a batch ([`Revocations`]).
#[derive(Clone, Debug)]
pub struct OneRevocation {
    pub space: String,
    pub id: Uuid,
    pub origin: Origin,
    pub reason: String,
}

/// [`revoke_one`] for many callers of one space in the caller's transaction, each answered as
/// [`revoke_one`] would (in `reqs`' order): the assignment rows are locked at once in id order,
/// then every live license among them is released in one statement
/// ([`store::start_each`], each with its own caller and reason), and the rows are read back at
/// once. Under load a hot asset's revocations then cost one lock hand-off and one commit per
/// batch, as allocations do (issue 10: revocation p99 1.2 s against ~100 ms for allocations
/// when each revocation was a transaction of its own on the hot asset row).
///
/// A request naming an id twice in one batch is answered like the first; a license Apple does
/// not take back (books) is refused for its caller alone.
pub async fn revoke_many(
    conn: &mut AsyncPgConnection,
    space: &str,
    reqs: &[&OneRevocation],
) -> Result<Vec<Result<AssignmentRow, RevocationError>>, RevocationError> {
    let mut ids: Vec<Uuid> = reqs.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    let locked = assignments::find_many_locked(conn, space, &ids).await?;
    let state_of: std::collections::HashMap<Uuid, AssignmentState> =
        locked.iter().map(|r| (r.id, r.state)).collect();
    let live: Vec<Uuid> = locked
        .iter()
        .filter(|r| r.state.is_live())
        .map(|r| r.id)
        .collect();
    let revocable = store::revocable(conn, space, &live).await?;
    let mut refused: std::collections::HashMap<Uuid, String> = std::collections::HashMap::new();
    for row in &locked {
        if row.state.is_live() && revocable.get(&row.id) == Some(&false) {
            refused.insert(
                row.id,
                format!(
                    "assignment {} holds a license of asset {}/{}",
                    row.id, row.adam_id, row.pricing_param
                ),
            );
        }
    }
    // The first request naming an assignment acts; the others are answered alike.
    let mut targets: Vec<Uuid> = Vec::new();
    let mut causes: Vec<store::Cause> = Vec::new();
    let mut seen: std::collections::HashSet<Uuid> = std::collections::HashSet::new();
    for req in reqs {
        if !seen.insert(req.id) {
            continue;
        }
        match state_of.get(&req.id) {
            // A12: cancelling a waiting assignment ends it at once; Apple never heard of it.
            Some(AssignmentState::Waiting) => {
                let scope = Scope {
                    assignment: Some(req.id),
                    ..Default::default()
                };
                super::waitlist::cancel(conn, space, &scope, &req.origin, &req.reason).await?;
            }
            // Live and revocable (only live rows are in `revocable`).
            Some(_) if revocable.get(&req.id) == Some(&true) => {
                targets.push(req.id);
                causes.push(store::Cause {
                    origin: req.origin.clone(),
                    reason: req.reason.clone(),
                });
            }
            _ => {}
        }
    }
    store::start_each(conn, space, &targets, &causes).await?;
    // The rows found (and locked) above are the space's: read them back as they are now.
    let found: Vec<Uuid> = locked.iter().map(|r| r.id).collect();
    let after: std::collections::HashMap<Uuid, AssignmentRow> = assignments::by_ids(conn, &found)
        .await?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    Ok(reqs
        .iter()
        .map(|req| {
            if let Some(why) = refused.get(&req.id) {
                return Err(RevocationError::NotRevocable(why.clone()));
            }
            after
                .get(&req.id)
                .cloned()
                .ok_or_else(|| RevocationError::NotFound(format!("assignment {}", req.id)))
        })
        .collect())
}

/// Revocations of one assignment decided in batches by a [`super::combiner::Combiner`].
pub struct Revocations;

impl super::combiner::Batched for Revocations {
    type Req = OneRevocation;
    type Out = AssignmentRow;
    type Err = RevocationError;
    const METRIC: &'static str = "revocation_batch_size";

    fn space(req: &OneRevocation) -> &str {
        &req.space
    }

    fn decide_many<'a>(
        conn: &'a mut AsyncPgConnection,
        space: &'a str,
        reqs: &'a [&'a OneRevocation],
    ) -> super::combiner::Decided<'a, AssignmentRow, RevocationError> {
        Box::pin(revoke_many(conn, space, reqs))
    }

    fn decide_one<'a>(
        conn: &'a mut AsyncPgConnection,
        req: &'a OneRevocation,
    ) -> futures_util::future::BoxFuture<'a, Result<AssignmentRow, RevocationError>> {
        Box::pin(revoke_one(
            conn,
            &req.space,
            req.id,
            &req.origin,
            &req.reason,
        ))
    }

    fn unavailable(
        why: &'static str,
        source: Option<std::sync::Arc<super::combiner::PoolError>>,
    ) -> RevocationError {
        RevocationError::Unavailable { why, source }
    }
}

/// Which live assignments to revoke: every given filter must match.
#[derive(Clone, Debug, Default)]
pub struct Matching {
    pub account: Option<Uuid>,
    /// Apple product id, and the pricing (both pricings when `None`).
    pub asset: Option<(String, Option<String>)>,
    pub subject: Option<(SubjectKind, String)>,
}

/// Revokes every live assignment of `space` that `matching` selects. Naming an asset whose
/// licenses Apple does not take back is refused; without an asset filter such licenses are left
/// as they are and counted.
pub async fn revoke_matching(
    conn: &mut AsyncPgConnection,
    space: &str,
    matching: &Matching,
    origin: &Origin,
    reason: &str,
) -> Result<Revoked, RevocationError> {
    if crate::ledger::spaces::find(conn, space).await?.is_none() {
        return Err(RevocationError::NotFound(format!("space {space}")));
    }
    if let Some(account) = matching.account
        && crate::ledger::accounts::find(conn, space, account)
            .await?
            .is_none()
    {
        return Err(RevocationError::NotFound(format!("account {account}")));
    }
    let subject = match &matching.subject {
        Some((kind, id)) => match crate::ledger::subjects::find(conn, space, *kind, id).await? {
            Some(row) => Some(row.id),
            // A subject the space never saw holds nothing.
            None => return Ok(Revoked::default()),
        },
        None => None,
    };
    let scope = Scope {
        assignment: None,
        account: matching.account,
        adam_id: matching.asset.as_ref().map(|(adam_id, _)| adam_id.clone()),
        pricing_param: matching
            .asset
            .as_ref()
            .and_then(|(_, pricing)| pricing.clone()),
        subject,
        include_not_revocable: false,
    };
    conn.transaction(async |conn| match &matching.asset {
        // Naming the asset asks for all of it: refused whole when Apple keeps some of it.
        Some((adam_id, _)) => {
            match revoke_all_or_none(conn, space, &scope, origin, reason).await? {
                Ok(revoked) => Ok(revoked),
                Err(n) => Err(RevocationError::NotRevocable(format!(
                    "{n} of the licenses matched are of asset {adam_id}"
                ))),
            }
        }
        None => Ok(revoke(conn, space, &scope, origin, reason).await?),
    })
    .await
}
