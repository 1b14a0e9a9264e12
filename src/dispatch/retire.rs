//! Retiring users at Apple (`POST /users/retire`; issue 14, `user.deleted`).
//!
//! A `user.deleted` lifecycle event revokes the user's licenses and queues one `retire_user` job
//! per account where Apple has the user registered ([`crate::ledger::apple_users`]). The
//! account's dispatcher sends them here, after its releases and associations:
//!
//! - **Ordering.** A retirement waits until every release of the user's licenses at that account
//!   is settled (no assignment of the user there is `revoking` any more): the releases go through
//!   the ledger's own path (`assets/disassociate`, the event followed, the assignment `revoked`,
//!   the license free for re-use, rule A11), and only then does Apple retire the user. Retiring
//!   first would let Apple free the licenses behind the ledger's back (Apple's v1 retirement
//!   releases revocable licenses) and the releases would then fail, leaving the ledger and Apple
//!   out of step.
//! - **Batching.** The account's retirements go out together, up to `maxUsers` (Apple's service
//!   config) per request: they are held while any of them still waits for a release or one was
//!   queued within the last `quiet`, so a burst of deletions is retired in as few requests as
//!   Apple allows (the whole backlog of the account decides, not only the jobs of one claim).
//!   So that a steady stream of deletions cannot hold them back for ever, those ready go anyway
//!   once the oldest waited `10 × max_wait`, at least a minute.
//! - **Replicas.** Jobs are leased like every other job (`FOR UPDATE SKIP LOCKED`, under the
//!   account's advisory lock); a worker killed after sending leaves its job to be sent again, and
//!   Apple's answer for a user already retired (9609, no such registered user) counts as
//!   retired: nothing is lost or doubled.
//! - **Failures.** A transient failure (5xx, a timeout, an event still running after a minute)
//!   retries the jobs with backoff; throttling or an auth failure pauses the account (T7, A10)
//!   and the jobs wait; Apple refusing a user for good, or a user that got a user license at the
//!   account again after the deletion, drops that user's job with an `apple_user.retire_dropped`
//!   activity row. Every retired user is an `apple_user.retired` row.
//!
//! Apple's retirement is quick (like `users/create`, [`super::users`]): its event is awaited
//! here rather than through a poll job.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use diesel_async::AsyncConnection;
use serde_json::json;

use super::{Ctx, DispatchError, retry};
use crate::accounts::{observe_error, ownership};
use crate::apple::codes;
use crate::apple::error::{AppleError, ErrorClass};
use crate::apple::stoken::SToken;
use crate::apple::types::RequestUser;
use crate::domain::account_status as status;
use crate::domain::origin::Origin;
use crate::ledger::accounts::AccountRow;
use crate::ledger::activity::{self, Activity, ActivityAction};
use crate::ledger::apple_users::{self, Retirement};
use crate::ledger::jobs::{self, ClaimedJob};

/// The least time a retirement is held back by others still waiting for their releases.
const STARVE_FLOOR: Duration = Duration::from_secs(60);

/// Attempts after which a user Apple keeps refusing (other than "no such user") is given up.
const MAX_ATTEMPTS: i32 = 8;

/// What sending the account's retirements came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Retired {
    /// Requests sent to Apple.
    Sent(usize),
    /// Apple refused the account as a whole (throttled, token, another MDM): the jobs wait.
    AccountBlocked,
}

/// Sends the claimed `retire_user` jobs of `account` (see the module documentation).
pub async fn run(
    ctx: &Ctx,
    account: &AccountRow,
    token: &SToken,
    claimed: &[ClaimedJob],
) -> Result<Retired, DispatchError> {
    let ids: Vec<i64> = claimed.iter().map(|j| j.id).collect();
    let attempts: HashMap<i64, i32> = claimed.iter().map(|j| (j.id, j.attempts)).collect();
    let mut conn = ctx.state.pool.get().await?;
    let found = apple_users::retirements(&mut conn, &ids).await?;
    // Jobs whose payload is unreadable: nothing can be done with them.
    let unknown: Vec<i64> = ids
        .iter()
        .filter(|id| !found.iter().any(|r| r.job_id == **id))
        .copied()
        .collect();
    jobs::delete(&mut conn, &unknown).await?;

    let (again, found): (Vec<Retirement>, Vec<Retirement>) =
        found.into_iter().partition(|r| r.licensed_again);
    if !again.is_empty() {
        conn.transaction(async |conn| {
            for r in &again {
                drop_one(conn, account, r, json!({"reason": "the user got a user license at the account again after the deletion"})).await?;
            }
            Ok::<(), diesel::result::Error>(())
        })
        .await?;
    }
    if found.is_empty() {
        return Ok(Retired::Sent(0));
    }
    // The account's whole backlog decides (jobs held back earlier are not in this claim).
    let (releasing, newest) = apple_users::retirement_backlog(&mut conn, account.id).await?;
    let now = Utc::now();
    let quiet = chrono::Duration::from_std(ctx.settings.quiet).unwrap_or_default();
    let starve = chrono::Duration::from_std((ctx.settings.max_wait * 10).max(STARVE_FLOOR))
        .unwrap_or_default();
    let oldest = found.iter().map(|r| r.queued_at).min().unwrap_or(now);
    let newest = newest.unwrap_or(now);
    let (ready, waiting): (Vec<Retirement>, Vec<Retirement>) =
        if (!releasing && newest < now - quiet) || oldest < now - starve {
            found.into_iter().partition(|r| !r.releasing)
        } else {
            (Vec::new(), found)
        };
    let held: Vec<i64> = waiting.iter().map(|r| r.job_id).collect();
    // Not an attempt: the jobs wait for the releases (or the burst) to be over.
    let back = ctx
        .settings
        .first_poll
        .min(Duration::from_secs(1))
        .max(ctx.settings.quiet);
    jobs::unclaim(&mut conn, &held, retry::at(back)).await?;
    drop(conn);

    // Apple's limit as last read when it cannot be read now: an outage must not hold the
    // claimed jobs (their request fails and is retried on its own).
    let max = match ctx.state.apple.service_config().await {
        Ok(config) => config.max_users(),
        Err(_) => ctx.state.apple.known_service_config().max_users(),
    }
    .max(1);
    let mut sent = 0;
    let mut chunks = ready.chunks(max);
    while let Some(chunk) = chunks.next() {
        match send(ctx, account, token, chunk, &attempts).await? {
            Some(()) => sent += 1,
            None => {
                // The account is blocked: what is left waits with it.
                let rest: Vec<i64> = chunks.flatten().map(|r| r.job_id).collect();
                let mut conn = ctx.state.pool.get().await?;
                jobs::unclaim(&mut conn, &rest, retry::at(Duration::from_secs(30))).await?;
                return Ok(Retired::AccountBlocked);
            }
        }
    }
    Ok(Retired::Sent(sent))
}

/// Retires one chunk of users. `None`: the account is blocked (the chunk's jobs wait).
async fn send(
    ctx: &Ctx,
    account: &AccountRow,
    token: &SToken,
    chunk: &[Retirement],
    attempts: &HashMap<i64, i32>,
) -> Result<Option<()>, DispatchError> {
    let mut users: Vec<String> = chunk.iter().map(|r| r.client_user_id.clone()).collect();
    users.sort();
    users.dedup();
    let job_ids: Vec<i64> = chunk.iter().map(|r| r.job_id).collect();
    let tries = chunk
        .iter()
        .filter_map(|r| attempts.get(&r.job_id))
        .copied()
        .max()
        .unwrap_or(1);
    let request: Vec<RequestUser> = users.iter().map(|u| RequestUser::new(u.as_str())).collect();
    let event = match ctx.state.apple.retire_users(token, &request).await {
        Ok(event) => event,
        Err(err) => return failed(ctx, account, chunk, &job_ids, err, tries).await,
    };
    metrics::counter!("apple_batches_total", "kind" => "retire_users").increment(1);
    let event_id = event.event_id.clone();
    {
        let mut conn = ctx.state.pool.get().await?;
        apple_users::mark_retiring(&mut conn, account.id, &users, &event_id).await?;
    }
    if !ownership::notice(
        &ctx.state.pool,
        &ctx.state.identity,
        account.id,
        &event.meta,
        "POST /users/retire",
    )
    .await?
    {
        // Another MDM holds the location (T3): the retirement is sent again once reclaimed
        // (a user Apple already retired answers 9609, which counts as retired).
        let mut conn = ctx.state.pool.get().await?;
        jobs::postpone(
            &mut conn,
            &job_ids,
            Utc::now() + chrono::Duration::minutes(5),
            Some("another MDM holds the location"),
        )
        .await?;
        return Ok(None);
    }
    let mut status = match ctx.state.apple.event_status(token, &event_id).await {
        Ok(s) => s,
        Err(err) => return failed(ctx, account, chunk, &job_ids, err, tries).await,
    };
    let mut waited = Duration::ZERO;
    while status.is_pending() && waited < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        waited += Duration::from_millis(300);
        status = match ctx.state.apple.event_status(token, &event_id).await {
            Ok(s) => s,
            Err(err) => return failed(ctx, account, chunk, &job_ids, err, tries).await,
        };
    }
    if status.is_pending() {
        // Sent again later: harmless (a user already retired answers 9609).
        let mut conn = ctx.state.pool.get().await?;
        let delay = retry::backoff(tries, ctx.settings.max_backoff);
        // A failed attempt (the event did not finish within the wait): counted towards the
        // dead letter, or a retirement Apple never finishes would be sent again forever.
        retry::failed(
            ctx,
            &mut conn,
            &job_ids,
            retry::at(delay),
            "the retirement's event was still running",
        )
        .await?;
        return Ok(Some(()));
    }
    // Per user: Apple's refusal, if any. "No registered user" means it is retired already
    // (a retirement sent again after a crash) or never was registered: either way retired.
    let mut refused: HashMap<String, (i32, String)> = HashMap::new();
    for failure in &status.failures {
        let number = failure.error_number.unwrap_or(0);
        if number == codes::USER_NOT_FOUND {
            continue;
        }
        for user in &failure.error_info.client_user_ids {
            refused.insert(
                user.clone(),
                (number, failure.error_message.clone().unwrap_or_default()),
            );
        }
    }
    let done: Vec<String> = users
        .iter()
        .filter(|u| !refused.contains_key(*u))
        .cloned()
        .collect();
    let not_done: Vec<String> = refused.keys().cloned().collect();
    let mut conn = ctx.state.pool.get().await?;
    let retry_later: Vec<i64> = conn
        .transaction(async |conn| {
            let retired = apple_users::mark_retired(conn, account.id, &done, &event_id).await?;
            for user in &retired {
                let mut entry =
                    Activity::new(&Origin::system(), ActivityAction::AppleUserRetired.as_str())
                        .space(&account.space_id)
                        .account(account.id)
                        .details(json!({"client_user_id": user}));
                entry.subject = Some(format!("user:{user}"));
                entry.apple_event_id = Some(event_id.clone());
                activity::record(conn, entry).await?;
            }
            apple_users::unmark_retiring(conn, account.id, &not_done, &event_id).await?;
            let mut later = Vec::new();
            let mut finished = Vec::new();
            for r in chunk {
                match refused.get(&r.client_user_id) {
                    None => finished.push(r.job_id),
                    Some((number, message)) => {
                        if attempts.get(&r.job_id).copied().unwrap_or(1) >= MAX_ATTEMPTS {
                            drop_one(
                                conn,
                                account,
                                r,
                                json!({"reason": "Apple refused the retirement",
                                       "error": {"number": number, "message": message},
                                       "apple_event_id": event_id}),
                            )
                            .await?;
                        } else {
                            later.push(r.job_id);
                        }
                    }
                }
            }
            jobs::delete(conn, &finished).await?;
            Ok::<_, diesel::result::Error>(later)
        })
        .await?;
    if !retry_later.is_empty() {
        let delay = retry::backoff(tries, ctx.settings.max_backoff);
        retry::failed(
            ctx,
            &mut conn,
            &retry_later,
            retry::at(delay),
            "Apple did not retire the user",
        )
        .await?;
    }
    drop(conn);
    ownership::notice(
        &ctx.state.pool,
        &ctx.state.identity,
        account.id,
        &status.meta,
        "GET /status (users/retire)",
    )
    .await?;
    tracing::info!(account = %account.id, event = %event_id, size = users.len(), retired = done.len(), "Apple retired users");
    Ok(Some(()))
}

/// A request Apple did not accept (or whose event could not be read): account-wide trouble
/// pauses the account, a lowered limit re-cuts the chunk, a transient failure retries later,
/// and a refusal of the request itself gives its users up.
async fn failed(
    ctx: &Ctx,
    account: &AccountRow,
    chunk: &[Retirement],
    job_ids: &[i64],
    err: AppleError,
    tries: i32,
) -> Result<Option<()>, DispatchError> {
    let now = Utc::now();
    tracing::warn!(account = %account.id, error = %err, "retiring users failed");
    let mut conn = ctx.state.pool.get().await?;
    if let Some(observation) = observe_error(&err, now) {
        let next = super::record_observation(&mut conn, account, &observation, now).await?;
        let until = match next.throttled_until {
            Some(t) if next.status == status::AccountStatus::Throttled => t,
            _ => now + chrono::Duration::minutes(5),
        };
        jobs::postpone(&mut conn, job_ids, until, Some(&err.to_string())).await?;
        jobs::postpone_account(&mut conn, account.id, until).await?;
        return Ok(None);
    }
    if err.error_number == Some(codes::TOO_MANY_USERS) && chunk.len() > 1 {
        // Apple lowered `maxUsers`: the next look cuts the chunk to the new limit.
        let _ = ctx.state.apple.refresh_service_config().await;
        jobs::unclaim(&mut conn, job_ids, now).await?;
        return Ok(Some(()));
    }
    match err.class() {
        ErrorClass::Transient { .. }
        | ErrorClass::Protocol
        | ErrorClass::RateLimited { .. }
        // The event of a retirement Apple forgot: sent again.
        | ErrorClass::NotFound => {
            let delay = retry::backoff(tries, ctx.settings.max_backoff);
            retry::failed(ctx, &mut conn, job_ids, retry::at(delay), &err.to_string()).await?;
        }
        _ => {
            let error = json!({"number": err.error_number, "message": err.to_string()});
            conn.transaction(async |conn| {
                for r in chunk {
                    drop_one(
                        conn,
                        account,
                        r,
                        json!({"reason": "Apple refused the retirement", "error": error}),
                    )
                    .await?;
                }
                Ok::<(), diesel::result::Error>(())
            })
            .await?;
        }
    }
    Ok(Some(()))
}

/// Gives up one user's retirement at `account`, with an activity row saying why.
async fn drop_one(
    conn: &mut diesel_async::AsyncPgConnection,
    account: &AccountRow,
    r: &Retirement,
    details: serde_json::Value,
) -> diesel::QueryResult<()> {
    let mut details = details;
    details["client_user_id"] = json!(r.client_user_id);
    let mut entry = Activity::new(
        &Origin::system(),
        ActivityAction::AppleUserRetireDropped.as_str(),
    )
    .space(&account.space_id)
    .account(account.id)
    .details(details);
    entry.subject = Some(format!("user:{}", r.client_user_id));
    activity::record(conn, entry).await?;
    jobs::delete(conn, &[r.job_id]).await?;
    Ok(())
}
