//! Turning an account's queued jobs into as few Apple requests as the limits allow.
//!
//! Associations and disassociations are grouped by asset and license type and cut into chunks
//! of `maxSerialNumbers` / `maxClientUserIds` (from Apple's service config), one asset per
//! request: different subjects rarely want the same set of assets, and Apple assigns every
//! asset of a request to every target of it. Releases go before new associations.
//!
//! A chunk is marked `associating` (with a batch id) before Apple is called, so a crash between
//! the call and the bookkeeping leaves assignments that the next worker simply submits again;
//! Apple treats re-associating an assigned target as a no-op, so nothing is doubled.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use uuid::Uuid;

use super::{Ctx, DispatchError, retry};
use crate::accounts::observe_error;
use crate::apple::codes;
use crate::apple::error::{AppleError, ErrorClass, ErrorOrigin};
use crate::apple::stoken::SToken;
use crate::apple::types::{AssetKey, ManageAssetsRequest, PricingParam};
use crate::domain::account_status as status;
use crate::domain::model::{AssignmentState, LicenseType};
use crate::ledger::accounts::{self as store, AccountRow};
use crate::ledger::apple_events::{self, EventKind, NewEvent};
use crate::ledger::asset_counts;
use crate::ledger::assignments;
use crate::ledger::jobs::{self, ClaimedJob, Job, PollEvent};
use crate::ledger::submissions;

/// One Apple request's worth of work.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub associate: bool,
    pub adam_id: String,
    pub pricing_param: String,
    pub license_type: LicenseType,
    /// (assignment, target) pairs.
    pub items: Vec<(Uuid, String)>,
    pub job_ids: Vec<i64>,
}

/// One batch: (assignment, target, its jobs) in claim order, and whether it is complete.
struct Group {
    chunk: Chunk,
    entries: Vec<(Uuid, String, Vec<i64>)>,
    index: HashMap<Uuid, usize>,
    closed: bool,
}

/// (release?, adam id, pricing param, license type): releases sort after associations.
type GroupKey = (bool, String, String, LicenseType);

/// Splits claimed association/disassociation jobs into chunks. Jobs with nothing left to do
/// are deleted; disassociations waiting for their association's event are postponed; the
/// partial last request of a batch that was claimed only because it filled a request waits
/// for more work; associations that would need a license whose release Apple has not
/// finished wait for it (`hold_for_releases`, rule A11).
pub async fn plan(
    ctx: &Ctx,
    account: Uuid,
    jobs_: &[ClaimedJob],
) -> Result<Vec<Chunk>, DispatchError> {
    let ids: Vec<Uuid> = jobs_
        .iter()
        .filter_map(|j| j.job.as_ref().and_then(Job::assignment))
        .collect();
    let mut conn = ctx.state.pool.get().await?;
    let work = submissions::work(&mut conn, &ids).await?;
    let work: HashMap<Uuid, submissions::Work> = work.into_iter().map(|w| (w.id, w)).collect();
    let service = ctx.state.apple.service_config().await?;

    let mut groups: BTreeMap<GroupKey, Group> = BTreeMap::new();
    let mut done = Vec::new();
    let mut waiting = Vec::new();
    let mut later = Vec::new();
    // Oldest first, so that the jobs a full-only batch hands back are the newest.
    let mut ordered: Vec<&ClaimedJob> = jobs_.iter().collect();
    ordered.sort_by_key(|j| j.id);
    for j in ordered {
        let (associate, assignment) = match &j.job {
            Some(Job::Associate(w)) => (true, w.assignment_id),
            Some(Job::Disassociate(w)) => (false, w.assignment_id),
            // Not association work (or not a job this code knows): nothing to send.
            Some(Job::PollEvent(_) | Job::RetireUser(_)) | None => {
                done.push(j.id);
                continue;
            }
        };
        let Some(w) = work.get(&assignment) else {
            done.push(j.id);
            continue;
        };
        let relevant = if associate {
            w.state == AssignmentState::Pending
                || (w.state == AssignmentState::Associating && w.apple_event_id.is_none())
        } else {
            w.state == AssignmentState::Revoking
        };
        if !relevant {
            done.push(j.id);
            continue;
        }
        if !associate && w.event_pending {
            // Revoked while Apple was still associating: release after that settles.
            waiting.push(j.id);
            continue;
        }
        let key = (
            !associate,
            w.adam_id.clone(),
            w.pricing_param.clone(),
            w.license_type,
        );
        let group = groups.entry(key).or_insert_with(|| Group {
            chunk: Chunk {
                associate,
                adam_id: w.adam_id.clone(),
                pricing_param: w.pricing_param.clone(),
                license_type: w.license_type,
                items: Vec::new(),
                job_ids: Vec::new(),
            },
            entries: Vec::new(),
            index: HashMap::new(),
            closed: true,
        });
        group.closed &= j.closed;
        match group.index.get(&w.id) {
            Some(&at) => group.entries[at].2.push(j.id),
            None => {
                group.index.insert(w.id, group.entries.len());
                group.entries.push((w.id, w.target.clone(), vec![j.id]));
            }
        }
    }
    let for_releases = hold_for_releases(&mut conn, account, &mut groups).await?;
    let mut chunks = Vec::new();
    for (_, group) in groups {
        let limit = match group.chunk.license_type {
            LicenseType::Device => service.max_serial_numbers(),
            LicenseType::User => service.max_client_user_ids(),
        }
        .max(1);
        let mut entries = group.entries;
        if !group.closed {
            // Claimed because it filled requests: send the full ones, keep the rest queued.
            let keep = entries.len() / limit * limit;
            for (_, _, jobs) in entries.drain(keep..) {
                later.extend(jobs);
            }
        }
        for part in entries.chunks(limit) {
            chunks.push(Chunk {
                items: part.iter().map(|(id, t, _)| (*id, t.clone())).collect(),
                job_ids: part
                    .iter()
                    .flat_map(|(_, _, jobs)| jobs.iter().copied())
                    .collect(),
                ..group.chunk.clone()
            });
        }
    }
    jobs::delete(&mut conn, &done).await?;
    jobs::unclaim(
        &mut conn,
        &waiting,
        retry::at(std::time::Duration::from_secs(2)),
    )
    .await?;
    jobs::unclaim(&mut conn, &later, Utc::now()).await?;
    // Apple finishes an event within about the first status poll's delay.
    jobs::unclaim_because(
        &mut conn,
        &for_releases,
        retry::at(ctx.settings.first_poll),
        WAITS_FOR_RELEASES,
    )
    .await?;
    Ok(chunks)
}

/// What an association held by [`hold_for_releases`] says in its job's `last_error`.
const WAITS_FOR_RELEASES: &str = "waits until Apple finished releasing licenses of the asset: \
    the license it needs is still assigned at Apple (A11); a release that is a dead letter \
    (GET /v1/spaces/{space}/dead-letters) keeps it waiting until retried";

/// Rule A11: the ledger frees a revoked license at once (the next allocation may take it), but
/// Apple counts it as assigned until the release's event finished; a release can lag behind
/// (it waits for its own association's event, or was retried after a transient error), and
/// Apple's processing order across events is not documented. So an asset's associations go
/// only as far as Apple has licenses free without the unfinished releases; the rest — the
/// newest — wait (their jobs are handed back for about one status poll, saying why in
/// `last_error`) and go once the releases finish. Where Apple has licenses to spare nothing
/// waits. A release that never finishes (a dead letter: its job, or its association's poll,
/// failed `VPP_JOB_MAX_ATTEMPTS` times) keeps them waiting until it is retried: Apple still
/// counts the license. Returns the jobs held.
async fn hold_for_releases(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    groups: &mut BTreeMap<GroupKey, Group>,
) -> Result<Vec<i64>, DispatchError> {
    let assets: BTreeSet<(&String, &String)> = groups
        .keys()
        .filter(|(release, ..)| !release)
        .map(|(_, adam, pricing, _)| (adam, pricing))
        .collect();
    if assets.is_empty() {
        return Ok(Vec::new());
    }
    let (adam_ids, pricing_params): (Vec<String>, Vec<String>) = assets
        .into_iter()
        .map(|(a, p)| (a.clone(), p.clone()))
        .unzip();
    let short = submissions::release_shortfall(conn, account, &adam_ids, &pricing_params).await?;
    let mut held = Vec::new();
    for s in short {
        let mut left = usize::try_from(s.short).unwrap_or(0);
        // Device licenses first, then user licenses: both draw on the asset's one count.
        for license_type in [LicenseType::Device, LicenseType::User] {
            let key = (
                false,
                s.adam_id.clone(),
                s.pricing_param.clone(),
                license_type,
            );
            let Some(group) = groups.get_mut(&key) else {
                continue;
            };
            let keep = group.entries.len().saturating_sub(left);
            left -= group.entries.len() - keep;
            for (_, _, jobs) in group.entries.drain(keep..) {
                held.extend(jobs);
            }
        }
    }
    groups.retain(|_, g| !g.entries.is_empty());
    if !held.is_empty() {
        tracing::debug!(
            account = %account,
            jobs = held.len(),
            "associations wait for releases Apple has not finished (A11)"
        );
    }
    Ok(held)
}

/// What happened to a chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Apple accepted; the event is being followed.
    Event(String),
    /// Nothing was left to send.
    Nothing,
    /// Apple refused for a reason that applies to the whole account (auth, throttling): stop
    /// sending for this account now.
    AccountBlocked,
    /// A transient failure; the chunk's jobs are retried later.
    Retry,
    /// Apple refused the request itself; the assignments failed.
    Refused,
}

/// Submits one chunk to Apple and records the outcome.
pub async fn submit(
    ctx: &Ctx,
    account: &AccountRow,
    token: &SToken,
    chunk: &Chunk,
    attempts: i32,
) -> Result<Sent, DispatchError> {
    let batch = Uuid::now_v7();
    let ids: Vec<Uuid> = chunk.items.iter().map(|(id, _)| *id).collect();
    let mut conn = ctx.state.pool.get().await?;
    // Marks the assignments this request carries (those still waiting for it).
    let marked: Vec<Uuid> = conn
        .transaction(async |conn| {
            assignments::lock_in_order(conn, &ids).await?;
            submissions::mark(conn, chunk.associate, &ids, batch).await
        })
        .await?;
    drop(conn);
    if marked.is_empty() {
        let mut conn = ctx.state.pool.get().await?;
        jobs::delete(&mut conn, &chunk.job_ids).await?;
        return Ok(Sent::Nothing);
    }
    let mut targets: Vec<String> = chunk
        .items
        .iter()
        .filter(|(id, _)| marked.contains(id))
        .map(|(_, t)| t.clone())
        .collect();
    targets.dedup();

    if chunk.associate && chunk.license_type == LicenseType::User {
        match super::users::ensure_registered(&ctx.state, account.id, token, &targets).await {
            Ok(super::users::Registration::NotOwned) => {
                // Another MDM holds the location (T3): the chunk waits, like behind any
                // account-wide refusal, until ownership is reclaimed.
                let until = Utc::now() + chrono::Duration::minutes(5);
                requeue(
                    ctx,
                    chunk,
                    batch,
                    until,
                    "another MDM holds the location",
                    Back::Waits,
                )
                .await?;
                let mut conn = ctx.state.pool.get().await?;
                jobs::postpone_account(&mut conn, account.id, until).await?;
                return Ok(Sent::AccountBlocked);
            }
            Ok(super::users::Registration::Done(refused)) if !refused.is_empty() => {
                fail_targets(ctx, account, chunk, batch, &refused).await?;
                targets.retain(|t| !refused.contains_key(t));
                if targets.is_empty() {
                    let mut conn = ctx.state.pool.get().await?;
                    jobs::delete(&mut conn, &chunk.job_ids).await?;
                    return Ok(Sent::Refused);
                }
            }
            Ok(super::users::Registration::Done(_)) => {}
            Err(DispatchError::Apple(err)) => {
                return handle_error(ctx, account, chunk, batch, err, attempts).await;
            }
            Err(other) => return Err(other),
        }
    }

    let asset = AssetKey::new(
        chunk.adam_id.clone(),
        PricingParam::from(chunk.pricing_param.as_str()),
    );
    let request = match chunk.license_type {
        LicenseType::Device => ManageAssetsRequest::devices(vec![asset], targets),
        LicenseType::User => ManageAssetsRequest::users(vec![asset], targets),
    };
    let result = if chunk.associate {
        ctx.state.apple.associate(token, &request).await
    } else {
        ctx.state.apple.disassociate(token, &request).await
    };
    match result {
        Ok(event) => {
            let event_id = event.event_id.clone();
            let kind = if chunk.associate {
                EventKind::Associate
            } else {
                EventKind::Disassociate
            };
            let mut conn = ctx.state.pool.get().await?;
            conn.transaction(async |conn| {
                assignments::lock_in_order(conn, &marked).await?;
                submissions::accepted(conn, &marked, batch, &event_id).await?;
                apple_events::record(
                    conn,
                    &NewEvent {
                        event_id: &event_id,
                        account_id: account.id,
                        kind,
                        adam_id: Some(&chunk.adam_id),
                        pricing_param: Some(&chunk.pricing_param),
                        requested: marked.len() as i32,
                    },
                )
                .await?;
                jobs::delete(conn, &chunk.job_ids).await?;
                let poll = Job::PollEvent(PollEvent {
                    event_id: event_id.clone(),
                });
                jobs::enqueue(conn, account.id, &poll, retry::at(ctx.settings.first_poll)).await?;
                Ok::<(), diesel::result::Error>(())
            })
            .await?;
            tracing::info!(
                account = %account.id,
                event = %event_id,
                kind = kind.as_str(),
                adam_id = %chunk.adam_id,
                size = marked.len(),
                "Apple accepted a batch"
            );
            metrics::counter!("apple_batches_total", "kind" => kind.as_str()).increment(1);
            metrics::histogram!("apple_batch_size").record(marked.len() as f64);
            let endpoint = if chunk.associate {
                "POST /assets/associate"
            } else {
                "POST /assets/disassociate"
            };
            if !crate::accounts::ownership::notice(
                &ctx.state.pool,
                &ctx.state.identity,
                account.id,
                &event.meta,
                endpoint,
            )
            .await?
            {
                // Another MDM holds the location: no further write for this account now.
                return Ok(Sent::AccountBlocked);
            }
            Ok(Sent::Event(event_id))
        }
        Err(err) => handle_error(ctx, account, chunk, batch, err, attempts).await,
    }
}

/// Fails the assignments of `refused` targets of a chunk (user registration refused).
async fn fail_targets(
    ctx: &Ctx,
    account: &AccountRow,
    chunk: &Chunk,
    batch: Uuid,
    refused: &std::collections::HashMap<String, (i32, String)>,
) -> Result<(), DispatchError> {
    let ids: Vec<Uuid> = chunk
        .items
        .iter()
        .filter(|(_, t)| refused.contains_key(t))
        .map(|(id, _)| *id)
        .collect();
    let per_user: serde_json::Map<String, serde_json::Value> = refused
        .iter()
        .map(|(user, (number, message))| {
            (
                user.clone(),
                serde_json::json!({ "number": number, "message": message }),
            )
        })
        .collect();
    let error = serde_json::json!({
        "message": "Apple did not register the user",
        "errors": per_user,
    });
    fail(ctx, account, chunk, batch, &ids, &error).await
}

/// Marks assignments of this batch failed and gives their licenses back to the pool.
async fn fail(
    ctx: &Ctx,
    account: &AccountRow,
    chunk: &Chunk,
    batch: Uuid,
    ids: &[Uuid],
    error: &serde_json::Value,
) -> Result<(), DispatchError> {
    let mut conn = ctx.state.pool.get().await?;
    conn.transaction(async |conn| {
        assignments::lock_in_order(conn, ids).await?;
        let failed = submissions::fail_associations(conn, ids, batch, error).await?;
        asset_counts::settle(
            conn,
            account.id,
            &chunk.adam_id,
            &chunk.pricing_param,
            failed.len() as i32,
            0,
        )
        .await?;
        submissions::log_failed(conn, &failed, error).await?;
        crate::ledger::wakeups::notify(conn, &failed).await?;
        Ok::<(), diesel::result::Error>(())
    })
    .await?;
    Ok(())
}

/// Why a chunk goes back to the queue: the request failed (an attempt that counts towards
/// the dead letter), or the account must wait (its jobs are not at fault).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Back {
    Failed,
    Waits,
}

/// Puts a chunk back: assignments to `pending` (associations) and the jobs to run at `at`.
async fn requeue(
    ctx: &Ctx,
    chunk: &Chunk,
    batch: Uuid,
    at: chrono::DateTime<Utc>,
    why: &str,
    back: Back,
) -> Result<(), DispatchError> {
    let mut conn = ctx.state.pool.get().await?;
    if chunk.associate {
        let ids: Vec<Uuid> = chunk.items.iter().map(|(id, _)| *id).collect();
        conn.transaction(async |conn| {
            assignments::lock_in_order(conn, &ids).await?;
            submissions::requeue_associations(conn, &ids, batch).await
        })
        .await?;
    }
    match back {
        Back::Failed => retry::failed(ctx, &mut conn, &chunk.job_ids, at, why).await?,
        Back::Waits => {
            jobs::postpone(&mut conn, &chunk.job_ids, at, Some(why)).await?;
        }
    }
    Ok(())
}

async fn handle_error(
    ctx: &Ctx,
    account: &AccountRow,
    chunk: &Chunk,
    batch: Uuid,
    err: AppleError,
    attempts: i32,
) -> Result<Sent, DispatchError> {
    let now = Utc::now();
    let class = err.class();
    tracing::warn!(account = %account.id, error = %err, "Apple request failed");
    if let Some(observation) = observe_error(&err, now) {
        // Auth failures and Retry-After windows concern the whole account (T7, A10).
        let mut conn = ctx.state.pool.get().await?;
        let next = super::record_observation(&mut conn, account, &observation, now).await?;
        let until = match next.throttled_until {
            Some(t) if next.status == status::AccountStatus::Throttled => t,
            _ => now + chrono::Duration::minutes(5),
        };
        drop(conn);
        requeue(ctx, chunk, batch, until, &err.to_string(), Back::Waits).await?;
        let mut conn = ctx.state.pool.get().await?;
        jobs::postpone_account(&mut conn, account.id, until).await?;
        return Ok(Sent::AccountBlocked);
    }
    if let Some(limit) = resized_limit(ctx, chunk, &err).await {
        // Apple lowered a batch limit since the service read it: not the subjects' fault. The
        // chunk goes back to the queue at once and the next plan cuts it to the new limit.
        tracing::info!(account = %account.id, size = chunk.items.len(), limit, "Apple lowered a batch limit; resending in smaller requests");
        requeue(ctx, chunk, batch, Utc::now(), &err.to_string(), Back::Waits).await?;
        return Ok(Sent::Retry);
    }
    match class {
        ErrorClass::Transient { .. } | ErrorClass::Protocol => {
            let delay = retry::backoff(attempts, ctx.settings.max_backoff);
            requeue(
                ctx,
                chunk,
                batch,
                retry::at(delay),
                &err.to_string(),
                Back::Failed,
            )
            .await?;
            Ok(Sent::Retry)
        }
        _ => {
            let ids: Vec<Uuid> = chunk.items.iter().map(|(id, _)| *id).collect();
            let error = serde_json::json!({
                "number": err.error_number,
                "message": err.to_string(),
            });
            if chunk.associate {
                fail(ctx, account, chunk, batch, &ids, &error).await?;
            } else {
                // A release Apple refuses outright: the license stays consumed at Apple.
                let mut conn = ctx.state.pool.get().await?;
                conn.transaction(async |conn| {
                    let failed = submissions::fail_releases(conn, &ids, batch, &error).await?;
                    submissions::log_failed(conn, &failed, &error).await?;
                    crate::ledger::wakeups::notify(conn, &ids).await
                })
                .await?;
            }
            let mut conn = ctx.state.pool.get().await?;
            jobs::delete(&mut conn, &chunk.job_ids).await?;
            Ok(Sent::Refused)
        }
    }
}

/// When `err` says the chunk has more targets than Apple accepts (9701/9702) and Apple's service
/// config, re-read at once, confirms a limit below the chunk's size: that limit. A refusal the
/// config does not explain (or of a single target) is Apple's verdict on the request (`None`).
async fn resized_limit(ctx: &Ctx, chunk: &Chunk, err: &AppleError) -> Option<usize> {
    let number = err.error_number?;
    if number != codes::TOO_MANY_SERIAL_NUMBERS && number != codes::TOO_MANY_CLIENT_USER_IDS {
        return None;
    }
    if chunk.items.len() <= 1 {
        return None;
    }
    let config = if err.origin == ErrorOrigin::Local {
        // Refused before sending: this process already knows newer limits than the plan used.
        ctx.state.apple.known_service_config()
    } else {
        ctx.state
            .apple
            .refresh_service_config()
            .await
            .unwrap_or_else(|_| ctx.state.apple.known_service_config())
    };
    let limit = match chunk.license_type {
        LicenseType::Device => config.max_serial_numbers(),
        LicenseType::User => config.max_client_user_ids(),
    }
    .max(1);
    (chunk.items.len() > limit).then_some(limit)
}

/// Re-reads the account after a status change elsewhere (used between chunks).
pub async fn reload(ctx: &Ctx, account: &AccountRow) -> Result<Option<AccountRow>, DispatchError> {
    let mut conn = ctx.state.pool.get().await?;
    Ok(store::find(&mut conn, &account.space_id, account.id).await?)
}
