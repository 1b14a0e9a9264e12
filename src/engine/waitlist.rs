//! The wait-list (rule A12 in docs/rules.md): an allocation that asked to wait
//! (`wait_for_license: true`, or left it out for an asset whose distribution policy says
//! `wait_for_license`) and found no license left anywhere is not refused; it becomes an
//! assignment in state `waiting` with a place in its asset's line, and is served the moment a
//! license frees, under the same rules as any allocation.
//!
//! Decisions (what a caller of a production MDM licensing service would expect):
//! - **Only "no license left" waits.** A disallowed subject (A3) still gets its 403, an asset no
//!   account owns its 404, an impossible license type its 422: waiting would never end well.
//!   A dry run never waits (it answers the 409 it would have answered).
//! - **One entry per holder and asset** (A6): asking again answers the waiting assignment
//!   (202, `created: false`), with or without `wait_for_license`; `Idempotency-Key` replays as
//!   for any allocation.
//! - **Order**: reserved holders first (A2; checked when the line is served, so a reservation
//!   added later moves its subject up), then first come (`waitlist.seq`). Each entry is decided
//!   again with the allocation rules (priority, distribution lists, reservations held back,
//!   unusable accounts, A9's guarded write): an entry no account may serve stays in line and the
//!   entries behind it may be served by an account they are eligible for.
//! - **The same assignment**: a served entry keeps its id and becomes `pending` (then
//!   `associating`, `active` through the dispatcher, like any allocation); its `rule` and
//!   `account_id` become the deciding ones. While waiting, `account_id` is the first account by
//!   priority that owns the asset (no account is chosen yet) and `rule` is `waiting`.
//! - **Cancel** = revoke: `DELETE …/assignments/{id}` and `POST …/revocations` naming an asset or
//!   a subject end waiting entries as `revoked` (with the revocation record: they never held a
//!   license, so nothing goes to Apple), counted in `cancelled`. A revocation of a whole account
//!   leaves them: they belong to no account yet.
//! - **Expiry**: after `VPP_WAIT_EXPIRY_HOURS` (default 72) an entry leaves the line as `failed`
//!   with `error.message` saying the wait expired (`assignment.wait_expired` in the activity
//!   log); the caller asks again to wait again. An entry the rules can no longer serve at all
//!   (the policy now disallows the subject, no account owns the asset any more, the subject got
//!   a license another way) ends `failed` the same way when it is next decided
//!   (`assignment.wait_ended`). So does an entry whose holder changed: a device waiting for its
//!   user's license whose user is now another (`PUT …/devices`, or an allocation naming the
//!   device's new user) is not served for the new user on the old one's row
//!   ([`crate::domain::allocation::Refusal::HolderChanged`]); the device asks again to wait for
//!   its new user's license.
//!
//! **The trigger** (replica-safe and cheap): every path that frees a license changes the asset
//! row (a revocation or failed association lowers `held`; a sync or Apple's `ASSET_COUNT`
//! notification raises `apple_total` or lowers `foreign_assigned`; an attach or sync inserts
//! the row). A statement-level database trigger on `assets` (migration
//! `2026-12-07-000701_waitlist`) upserts a wake-up row per (space, asset), in key order, in the
//! same transaction, only when what is free grew and someone waits for that asset — one probe
//! of the (usually empty) `waitlist` table otherwise. Wake-ups are claimed by the
//! wait-list worker of any replica (`FOR UPDATE SKIP LOCKED`, a lease; [`crate::dispatch`]),
//! which serves the line with [`serve`] and deletes the wake-up unless another license freed
//! meanwhile (its generation moved). A replica killed mid-run loses its lease and another serves
//! the line; serving is idempotent (an entry served is no longer waiting). Because the serving
//! transaction locks the line's asset rows, a license freed while it runs is either seen by it
//! or wakes the line again after it commits: no wake-up is lost.
//!
//! **Batches**: a line is served in chunks of [`CHUNK`] entries, each one transaction through
//! the allocation batch ([`super::allocate::allocate_many`]): a fixed number of statements per
//! chunk whatever its size (set-based: the entries that end are ended by one statement with a
//! reason each), so 10,000 waiting entries and 10,000 freed licenses are one chunk: one load,
//! one in-memory decision, one write. Every entry of the line is looked at: paging goes on
//! while chunks come back full, even when one served nobody (the entries behind may be
//! eligible for the account that freed a license). A chunk the database refuses as a whole
//! (an entry breaks a constraint) is served again one entry at a time and the entry that
//! fails alone ends `failed`; an entry the batch could not decide ends the same way, so one
//! entry never jams its line (the worker backs a failing line off: [`crate::dispatch`]).
//!
//! **Nobody jumps the line**: the line is served by the worker within `VPP_IDLE_POLL_MS` of the
//! license freeing, not inside the freeing transaction; meanwhile allocation holds back from the
//! first account by priority as many licenses as wait in line for the asset (like a reservation
//! naming no account), so a newcomer that is not reserved gets the 409 (skip reason
//! `held_for_wait_list`), or joins the line when it asked to wait. Reserved subjects (A2) still
//! come first. Policy, distribution-list and priority changes do not wake a line by themselves;
//! the next freed license does. An entry that no account will ever serve (e.g. a device license
//! of an asset the first account cannot assign to devices) holds back from that account until
//! it expires.

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use uuid::Uuid;

use super::allocate::{AllocationError, allocate_many_counted};
use crate::domain::allocation::{AllocationRequest, AssetRef, Refusal, SubjectInput};
use crate::domain::model::SubjectKind;
use crate::domain::origin::Origin;
use crate::ledger::waitlist::{self as store, End, Entry};

/// Entries decided in one transaction.
pub const CHUNK: i64 = 10_000;

/// What serving a line did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Entries that got a license (now `pending`).
    pub served: usize,
    /// Entries left in line (nothing free for them).
    pub waiting: usize,
    /// Entries ended `failed` because the rules can no longer serve them.
    pub ended: usize,
}

/// Serves the line of `asset` in `space` as far as licenses are free, in order.
pub async fn serve(
    conn: &mut AsyncPgConnection,
    space: &str,
    asset: &AssetRef,
) -> Result<Served, AllocationError> {
    serve_in_chunks(conn, space, asset, CHUNK).await
}

/// [`serve`] with chunks of `chunk` entries (tests page a line with small chunks).
///
/// Every entry of the line is looked at, whatever its length: a full chunk that served nobody
/// (no account it may use has a free license) may be followed by entries that can use the
/// freed one, so paging goes on while chunks come back full. A chunk the database refuses as
/// a whole (a constraint an entry breaks: a poison entry) is served again one entry at a
/// time, and an entry that fails on its own ends `failed` with the error, so one entry cannot
/// jam its line.
pub async fn serve_in_chunks(
    conn: &mut AsyncPgConnection,
    space: &str,
    asset: &AssetRef,
    chunk: i64,
) -> Result<Served, AllocationError> {
    let mut total = Served::default();
    let mut offset = 0i64;
    loop {
        let (served, looked) = match chunk_with_retries(conn, space, asset, offset, chunk).await {
            Err(AllocationError::Db(e)) if poison(&e) && chunk > 1 => {
                tracing::warn!(space, adam_id = %asset.adam_id, error = %e,
                               "a wait-list chunk failed; serving its entries one at a time");
                isolate(conn, space, asset, offset, chunk).await?
            }
            other => other?,
        };
        total.served += served.served;
        total.waiting += served.waiting;
        total.ended += served.ended;
        // Entries left waiting stay at the front of the line: the next chunk starts after
        // them (served and ended ones left it).
        if looked < chunk as usize {
            break;
        }
        offset += served.waiting as i64;
    }
    Ok(total)
}

async fn chunk_with_retries(
    conn: &mut AsyncPgConnection,
    space: &str,
    asset: &AssetRef,
    offset: i64,
    limit: i64,
) -> Result<(Served, usize), AllocationError> {
    let mut attempt = 1;
    loop {
        let result = conn
            .transaction(async |conn| serve_chunk(conn, space, asset, offset, limit).await)
            .await;
        match result {
            Err(AllocationError::Overdrawn) if attempt < 3 => attempt += 1,
            other => return other,
        }
    }
}

/// An error one entry's data can cause (the statement broke a constraint), as opposed to the
/// database being unreachable: only such a failure is isolated entry by entry.
fn poison(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind as K, Error};
    matches!(
        e,
        Error::DatabaseError(
            K::UniqueViolation | K::ForeignKeyViolation | K::NotNullViolation | K::CheckViolation,
            _
        )
    )
}

/// Serves the `limit` entries from `offset` one at a time (after their chunk failed as a
/// whole); an entry whose own transaction fails with a [`poison`] error ends `failed`.
async fn isolate(
    conn: &mut AsyncPgConnection,
    space: &str,
    asset: &AssetRef,
    mut offset: i64,
    limit: i64,
) -> Result<(Served, usize), AllocationError> {
    let mut done = Served::default();
    let mut looked = 0;
    while looked < limit as usize {
        match chunk_with_retries(conn, space, asset, offset, 1).await {
            Ok((_, 0)) => break,
            Ok((one, n)) => {
                looked += n;
                done.served += one.served;
                done.ended += one.ended;
                done.waiting += one.waiting;
                offset += one.waiting as i64;
            }
            Err(AllocationError::Db(e)) if poison(&e) => {
                let ended = conn
                    .transaction(async |conn| {
                        let entries = store::line(conn, space, asset, offset, 1).await?;
                        let ids: Vec<Uuid> = entries.iter().map(|e| e.assignment_id).collect();
                        let ids = store::lock_waiting(conn, &ids).await?;
                        let why = format!("no longer served from the wait-list: {e}");
                        store::end_each(
                            conn,
                            &ids,
                            &vec![why; ids.len()],
                            End::Failed,
                            false,
                            "system",
                            None,
                            "removed from the wait-list",
                        )
                        .await
                    })
                    .await?;
                if ended.is_empty() {
                    // Nothing to end at this place: leave it for the next wake-up.
                    return Err(AllocationError::Db(e));
                }
                looked += 1;
                done.ended += ended.len();
            }
            Err(other) => return Err(other),
        }
    }
    Ok((done, looked))
}

/// One chunk: returns what it did and how many entries it looked at. A fixed number of
/// statements whatever its size: the line, the locks, the allocation batch, one end.
async fn serve_chunk(
    conn: &mut AsyncPgConnection,
    space: &str,
    asset: &AssetRef,
    offset: i64,
    limit: i64,
) -> Result<(Served, usize), AllocationError> {
    let entries = store::line(conn, space, asset, offset, limit).await?;
    let looked = entries.len();
    let ids: Vec<Uuid> = entries.iter().map(|e| e.assignment_id).collect();
    let still = store::lock_waiting(conn, &ids).await?;
    let entries: Vec<Entry> = entries
        .into_iter()
        .filter(|e| still.contains(&e.assignment_id))
        .collect();
    if entries.is_empty() {
        return Ok((Served::default(), looked));
    }
    let reqs: Vec<AllocationRequest> = entries.iter().map(|e| request(space, asset, e)).collect();
    let refs: Vec<&AllocationRequest> = reqs.iter().collect();
    let outcomes = allocate_many_counted(conn, space, &refs).await?;
    let mut done = Served::default();
    let mut ended: Vec<Uuid> = Vec::new();
    let mut reasons: Vec<String> = Vec::new();
    for (e, outcome) in entries.iter().zip(outcomes) {
        let why = match outcome {
            Ok(o) if o.created => {
                done.served += 1;
                continue;
            }
            Ok(o) => format!(
                "the subject already holds a license for this asset (assignment {})",
                o.assignment.map(|a| a.id).unwrap_or_default()
            ),
            Err(AllocationError::Refused(Refusal::Exhausted { .. })) => {
                done.waiting += 1;
                continue;
            }
            Err(AllocationError::Refused(r)) => r.to_string(),
            // An entry the batch could not decide (not the batch itself: that is the outer
            // error) ends rather than failing the chunk at every wake-up.
            Err(other) => format!("it could not be decided: {other}"),
        };
        ended.push(e.assignment_id);
        reasons.push(format!("no longer served from the wait-list: {why}"));
    }
    store::end_each(
        conn,
        &ended,
        &reasons,
        End::Failed,
        false,
        "system",
        None,
        "removed from the wait-list",
    )
    .await?;
    done.ended = ended.len();
    Ok((done, looked))
}

/// The allocation request a waiting entry is decided again with: the subject as the caller
/// named it (its stored facts apply), the license type wished, who asked and in which request.
fn request(space: &str, asset: &AssetRef, e: &Entry) -> AllocationRequest {
    AllocationRequest {
        space: space.to_owned(),
        asset: asset.clone(),
        subject: match e.subject_kind {
            SubjectKind::Device => SubjectInput::Device {
                serial: e.subject_external_id.clone(),
                user: None,
                shared_ipad: None,
                groups: None,
            },
            SubjectKind::User => SubjectInput::User {
                id: e.subject_external_id.clone(),
                groups: None,
            },
        },
        wish: e.wish,
        reason: e.reason.clone(),
        origin: Origin::new(e.requested_by.clone(), e.request_id.clone()),
        dry_run: false,
        exclude_accounts: Vec::new(),
        replaces: None,
        wait_until: None,
        policy_wait_until: None,
        serves: Some(e.assignment_id),
        serves_holder: Some(e.subject_id),
    }
}

/// Ends the entries whose wait is over (`failed`, `assignment.wait_expired`), up to `limit`
/// per call; entries being served at this moment are left for the next call. Returns how many.
pub async fn expire(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> diesel::QueryResult<usize> {
    conn.transaction(async |conn| {
        let ids = store::expired_locked(conn, now, limit).await?;
        let ended = store::end(
            conn,
            &ids,
            End::Failed,
            true,
            "system",
            None,
            "the wait for a license expired (VPP_WAIT_EXPIRY_HOURS) before one became free",
            "removed from the wait-list; ask again to wait again",
        )
        .await?;
        Ok(ended.len())
    })
    .await
}

/// Cancels the waiting entries of `space` a revocation names (run inside the revocation's
/// transaction, before it locks anything else: assignment rows come first in the lock order).
/// A scope naming an account cancels none (waiting entries belong to no account yet), nor does
/// a scope naming nothing else.
pub async fn cancel(
    conn: &mut AsyncPgConnection,
    space: &str,
    scope: &crate::domain::revocation::Scope,
    origin: &Origin,
    reason: &str,
) -> diesel::QueryResult<i64> {
    if scope.account.is_some()
        || (scope.assignment.is_none() && scope.adam_id.is_none() && scope.subject.is_none())
    {
        return Ok(0);
    }
    let ids = store::matching_locked(
        conn,
        space,
        scope.assignment,
        scope.adam_id.as_deref(),
        scope.pricing_param.as_deref(),
        scope.subject,
    )
    .await?;
    let ended = store::end(
        conn,
        &ids,
        End::Cancelled,
        false,
        &origin.actor,
        origin.request_id.as_deref(),
        reason,
        "",
    )
    .await?;
    Ok(ended.len() as i64)
}
