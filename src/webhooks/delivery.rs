//! Sending: the envelope, the signed request, what an answer means, and settling a batch of
//! outcomes in one transaction (the queue, the log, the endpoints' failure streaks, 410s).
//!
//! The sender loop ([`crate::dispatch::webhooks`]) calls [`fan_out`], [`claim`], [`send`] and
//! [`settle`]; the API calls [`ping`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use rand::Rng;
use secrecy::SecretSlice;
use serde::Serialize;
use uuid::Uuid;

use super::{WebhookError, Webhooks, aad, catalog, safety, signing};
use crate::crypto::TokenCipher;
use crate::domain::origin::Origin;
use crate::ledger::activity::{self, Activity, ActivityAction};
use crate::ledger::events::{API_VERSION, EventRow};
use crate::ledger::webhooks::{self as store, Claimed, EndpointRow, NewAttempt};

/// Delays of the attempts, from the first failure's: attempt 1 at once, then 5 s, 5 min,
/// 30 min, 2 h, 5 h, 10 h and 10 h after the attempt before (8 attempts in all).
pub const SCHEDULE: [u64; 8] = [0, 5, 300, 1_800, 7_200, 18_000, 36_000, 36_000];

/// An endpoint failing without a success this long is disabled.
pub const DISABLE_AFTER: Duration = Duration::from_secs(5 * 24 * 3600);

/// A `Retry-After` is honoured up to this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Bytes of a response body kept in the log.
pub const RESPONSE_KEPT: usize = 1024;

/// Bytes of a response body read at most (the rest is not waited for).
const RESPONSE_READ: usize = 64 * 1024;

/// Events fanned out per endpoint and look.
const FAN_OUT_LIMIT: i64 = 5_000;

/// The delay before the attempt after attempt `done` (1-based) failed; `None` when that was
/// the last one. ±20 % jitter; a longer `Retry-After` wins (up to a day).
pub fn next_delay(done: i32, scale: f64, retry_after: Option<Duration>) -> Option<Duration> {
    let base = *SCHEDULE.get(usize::try_from(done).ok()?)?;
    let jitter = rand::rng().random_range(0.8..=1.2);
    let scheduled = Duration::from_secs_f64(base as f64 * jitter * scale);
    Some(match retry_after {
        Some(wait) => scheduled.max(wait.min(MAX_RETRY_AFTER)),
        None => scheduled,
    })
}

/// The body every endpoint receives: the event's envelope.
#[derive(Debug, Serialize)]
pub struct Envelope<'a> {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub type_: &'a str,
    pub api_version: &'a str,
    pub occurred_at: DateTime<Utc>,
    /// `null` for the test ping (not a space event).
    pub sequence: Option<i64>,
    pub space: &'a str,
    pub data: &'a serde_json::Value,
}

impl<'a> Envelope<'a> {
    pub fn of(event: &'a EventRow) -> Envelope<'a> {
        Envelope {
            id: event.id,
            type_: &event.type_,
            api_version: &event.api_version,
            occurred_at: event.occurred_at,
            sequence: Some(event.sequence),
            space: &event.space_id,
            data: &event.data,
        }
    }
}

/// One message ready to send to one endpoint.
pub struct Message {
    pub delivery: Option<i64>,
    pub attempt: i32,
    pub endpoint: Uuid,
    pub space: String,
    pub url: String,
    pub event_id: Uuid,
    pub event_type: String,
    pub sequence: Option<i64>,
    pub body: Vec<u8>,
    /// The signing keys: the current secret's, then the previous one's during an overlap.
    pub keys: Vec<SecretSlice<u8>>,
}

/// What one attempt gave.
#[derive(Debug)]
pub struct Sent {
    pub at: DateTime<Utc>,
    pub status: Option<u16>,
    pub latency: Duration,
    pub response: Option<String>,
    pub error: Option<String>,
    pub retry_after: Option<Duration>,
}

impl Sent {
    pub fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    pub fn gone(&self) -> bool {
        self.status == Some(410)
    }
}

/// The signing keys of an endpoint at `now`.
pub fn keys(
    cipher: &TokenCipher,
    endpoint: &EndpointRow,
    now: DateTime<Utc>,
) -> Result<Vec<SecretSlice<u8>>, WebhookError> {
    let aad = aad(endpoint.id);
    let mut sealed = vec![endpoint.sealed_secret()];
    sealed.extend(endpoint.sealed_previous(now));
    let mut keys = Vec::with_capacity(sealed.len());
    for s in sealed {
        let secret = cipher.open_secret(&aad, &s)?;
        let key = signing::key(&secret).ok_or(WebhookError::Invalid {
            field: "secret",
            message: "a stored secret is not a whsec_ secret".into(),
        })?;
        keys.push(key);
    }
    Ok(keys)
}

/// Sends one message (signed now) and reports what came back. Never fails: a refused address,
/// a timeout or a broken connection is an attempt with an `error`.
pub async fn send(webhooks: &Webhooks, msg: &Message) -> Sent {
    let at = Utc::now();
    let started = Instant::now();
    let refused = |error: String| Sent {
        at,
        status: None,
        latency: started.elapsed(),
        response: None,
        error: Some(error),
        retry_after: None,
    };
    // Names are checked by the client's resolver; an address literal here.
    let url = match safety::check_url(&msg.url, webhooks.settings.allow_private) {
        Ok(url) => url,
        Err(e) => return refused(e.to_string()),
    };
    if !webhooks.settings.allow_private {
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal
            && !safety::is_public(ip)
        {
            return refused(safety::UrlError::NotPublic(ip).to_string());
        }
    }
    let id = msg.event_id.to_string();
    let timestamp = at.timestamp();
    let signature = signing::signature_header(&msg.keys, &id, timestamp, &msg.body);
    let result = webhooks
        .client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(msg.body.clone())
        .send()
        .await;
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => return refused(describe(&e)),
    };
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, at));
    let mut body: Vec<u8> = Vec::new();
    let mut read = 0usize;
    let mut error = None;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                read += chunk.len();
                if body.len() < RESPONSE_KEPT {
                    body.extend_from_slice(&chunk[..chunk.len().min(RESPONSE_KEPT - body.len())]);
                }
                if read >= RESPONSE_READ {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                error = Some(describe(&e));
                break;
            }
        }
    }
    Sent {
        at,
        status: Some(status),
        latency: started.elapsed(),
        response: (!body.is_empty()).then(|| String::from_utf8_lossy(&body).into_owned()),
        error,
        retry_after,
    }
}

/// A transport error in words, with its causes (never a URL's query: reqwest's errors name
/// the URL, which holds no secret since credentials are refused, but the text stays short).
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.chars().take(500).collect()
}

/// `Retry-After`: delay-seconds or an HTTP date.
fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value.trim()).ok()?;
    (at.with_timezone(&Utc) - now).to_std().ok()
}

/// Fans new events out to the endpoints (see `ledger::webhooks::fan_out`).
pub async fn fan_out(conn: &mut AsyncPgConnection) -> Result<usize, WebhookError> {
    Ok(store::fan_out(conn, FAN_OUT_LIMIT).await?)
}

/// Leases due deliveries and prepares their messages. Deliveries with nothing left to send
/// (the endpoint was disabled or deleted meanwhile, the event was forgotten by retention, its
/// secret does not open) are finished at once (the last one logged).
pub async fn claim(
    webhooks: &Webhooks,
    cipher: &TokenCipher,
    conn: &mut AsyncPgConnection,
    worker: &str,
    limit: i64,
) -> Result<Vec<Message>, WebhookError> {
    Ok(claim_counted(webhooks, cipher, conn, worker, limit)
        .await?
        .1)
}

/// [`claim`], with how many deliveries were leased (some of which may have given no message):
/// the sender judges a full claim by the leased rows.
pub async fn claim_counted(
    webhooks: &Webhooks,
    cipher: &TokenCipher,
    conn: &mut AsyncPgConnection,
    worker: &str,
    limit: i64,
) -> Result<(usize, Vec<Message>), WebhookError> {
    let lease = webhooks.settings.lease.as_secs() as i64;
    let claimed: Vec<Claimed> = store::claim(conn, worker, lease, limit).await?;
    if claimed.is_empty() {
        return Ok((0, Vec::new()));
    }
    let leased = claimed.len();
    let mut endpoint_ids: Vec<Uuid> = claimed.iter().map(|c| c.endpoint_id).collect();
    endpoint_ids.sort();
    endpoint_ids.dedup();
    let event_ids: Vec<Uuid> = claimed.iter().map(|c| c.event_id).collect();
    let endpoints: HashMap<Uuid, EndpointRow> = store::endpoints_by_id(conn, &endpoint_ids)
        .await?
        .into_iter()
        .map(|e| (e.id, e))
        .collect();
    let events: HashMap<Uuid, EventRow> = store::events_by_id(conn, &event_ids)
        .await?
        .into_iter()
        .map(|e| (e.id, e))
        .collect();
    let now = Utc::now();
    let mut keys_of: HashMap<Uuid, Option<Vec<SecretSlice<u8>>>> = HashMap::new();
    let mut messages = Vec::with_capacity(claimed.len());
    let mut dropped = Vec::new();
    for c in claimed {
        let (Some(endpoint), Some(event)) =
            (endpoints.get(&c.endpoint_id), events.get(&c.event_id))
        else {
            dropped.push(c.id);
            continue;
        };
        if !endpoint.enabled || endpoint.deleted_at.is_some() {
            dropped.push(c.id);
            continue;
        }
        let keys = keys_of.entry(endpoint.id).or_insert_with(|| {
            keys(cipher, endpoint, now)
                .inspect_err(|e| {
                    tracing::error!(webhook = %endpoint.id, error = %e,
                                    "cannot open a webhook secret; its deliveries wait for a \
                                     replica that can (key rotation: VPP_TOKEN_KEYS)")
                })
                .ok()
        });
        // A secret this replica cannot open (sealed with a key it does not have yet, during a
        // key rotation's rollout) is not a reason to lose the delivery: the claim moved it past
        // its lease, so it is claimed again then, by this replica or one that has the key.
        let Some(keys) = keys else {
            continue;
        };
        let body = match serde_json::to_vec(&Envelope::of(event)) {
            Ok(body) => body,
            Err(_) => {
                dropped.push(c.id);
                continue;
            }
        };
        messages.push(Message {
            delivery: Some(c.id),
            attempt: c.attempts,
            endpoint: endpoint.id,
            space: endpoint.space_id.clone(),
            url: endpoint.url.clone(),
            event_id: event.id,
            event_type: event.type_.clone(),
            sequence: Some(event.sequence),
            body,
            keys: keys.iter().map(clone_key).collect(),
        });
    }
    store::finish(conn, &dropped).await?;
    Ok((leased, messages))
}

fn clone_key(key: &SecretSlice<u8>) -> SecretSlice<u8> {
    use secrecy::ExposeSecret;
    SecretSlice::from(key.expose_secret().to_vec())
}

/// Writes a batch of outcomes in one transaction: delivered and given-up deliveries leave the
/// queue, failed ones are rescheduled, every attempt is logged, failure streaks start and end,
/// and an endpoint that answered 410 is disabled.
pub async fn settle(
    webhooks: &Webhooks,
    conn: &mut AsyncPgConnection,
    done: Vec<(Message, Sent)>,
) -> Result<(), WebhookError> {
    if done.is_empty() {
        return Ok(());
    }
    let scale = webhooks.settings.retry_scale;
    let mut finished = Vec::new();
    let mut next = Vec::new();
    let mut ok_endpoints = Vec::new();
    let mut failed_endpoints = Vec::new();
    let mut gone: Vec<Uuid> = Vec::new();
    let mut log = Vec::with_capacity(done.len());
    let mut first_failure: Option<DateTime<Utc>> = None;
    for (msg, sent) in &done {
        let mut next_at = None;
        if sent.delivered() {
            ok_endpoints.push(msg.endpoint);
            finished.extend(msg.delivery);
        } else if sent.gone() {
            gone.push(msg.endpoint);
            finished.extend(msg.delivery);
        } else {
            failed_endpoints.push(msg.endpoint);
            first_failure = Some(first_failure.map_or(sent.at, |f| f.min(sent.at)));
            if let Some(id) = msg.delivery {
                match next_delay(msg.attempt, scale, sent.retry_after) {
                    Some(delay) => {
                        let at = Utc::now()
                            + chrono::Duration::from_std(delay)
                                .unwrap_or(chrono::Duration::hours(10));
                        next_at = Some(at);
                        next.push((id, at));
                    }
                    None => finished.push(id),
                }
            }
        }
        log.push(NewAttempt {
            endpoint_id: msg.endpoint,
            space_id: msg.space.clone(),
            event_id: msg.event_id,
            event_type: msg.event_type.clone(),
            sequence: msg.sequence,
            attempt: msg.attempt,
            attempted_at: sent.at,
            delivered: sent.delivered(),
            status: sent.status.map(i32::from),
            latency_ms: sent.latency.as_millis().min(i32::MAX as u128) as i32,
            response: sent.response.clone(),
            error: sent.error.clone(),
            next_attempt_at: next_at,
        });
    }
    ok_endpoints.sort();
    ok_endpoints.dedup();
    failed_endpoints.sort();
    failed_endpoints.dedup();
    gone.sort();
    gone.dedup();
    metrics::counter!("webhook_deliveries_total", "outcome" => "delivered")
        .increment(log.iter().filter(|a| a.delivered).count() as u64);
    metrics::counter!("webhook_deliveries_total", "outcome" => "failed")
        .increment(log.iter().filter(|a| !a.delivered).count() as u64);
    conn.transaction(async |conn| {
        store::finish(conn, &finished).await?;
        store::reschedule(conn, &next).await?;
        store::record_attempts(conn, &log).await?;
        store::mark_succeeded(conn, &ok_endpoints).await?;
        if let Some(at) = first_failure {
            store::mark_failed(conn, &failed_endpoints, at).await?;
        }
        for endpoint in &gone {
            disable_by_id(conn, *endpoint, "gone").await?;
        }
        Ok::<(), WebhookError>(())
    })
    .await
}

/// Disables an endpoint (unless it already is), drops its queue and writes the
/// `webhook.disabled` activity row. Returns whether it changed.
async fn disable_by_id(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    reason: &str,
) -> Result<bool, WebhookError> {
    let Some(row) = store::endpoints_by_id(conn, &[id])
        .await?
        .into_iter()
        .next()
    else {
        return Ok(false);
    };
    let Some(mut row) = store::get(conn, &row.space_id, id, true).await? else {
        return Ok(false);
    };
    if !row.enabled {
        return Ok(false);
    }
    disable(conn, &mut row, reason).await?;
    Ok(true)
}

async fn disable(
    conn: &mut AsyncPgConnection,
    row: &mut EndpointRow,
    reason: &str,
) -> Result<(), WebhookError> {
    let now = Utc::now();
    row.enabled = false;
    row.disabled_reason = Some(reason.to_owned());
    row.disabled_at = Some(now);
    row.updated_at = now;
    store::save(conn, row).await?;
    store::drop_queued(conn, row.id).await?;
    activity::record(
        conn,
        Activity::new(&Origin::system(), ActivityAction::WebhookDisabled.as_str())
            .space(&row.space_id)
            .details(serde_json::json!({
                // Not the URL: the event goes to the space's feed readers and other endpoints,
                // and receivers' URLs often carry a token.
                "webhook": row.id,
                "reason": reason,
                "failing_since": row.failing_since,
            })),
    )
    .await?;
    tracing::warn!(webhook = %row.id, space = %row.space_id, reason, "webhook endpoint disabled");
    Ok(())
}

/// Disables every endpoint failing without a success for 5 days (scaled by the test setting).
/// Returns how many.
pub async fn disable_failing(
    webhooks: &Webhooks,
    conn: &mut AsyncPgConnection,
) -> Result<usize, WebhookError> {
    let window = DISABLE_AFTER.mul_f64(webhooks.settings.retry_scale);
    let cutoff =
        Utc::now() - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::days(5));
    conn.transaction(async |conn| {
        let rows = store::failing_since_before(conn, cutoff).await?;
        let n = rows.len();
        for mut row in rows {
            disable(conn, &mut row, "failing").await?;
        }
        Ok::<usize, WebhookError>(n)
    })
    .await
}

/// Forgets delivery log rows older than the retention. Returns how many.
pub async fn forget_old_attempts(
    webhooks: &Webhooks,
    conn: &mut AsyncPgConnection,
) -> Result<usize, WebhookError> {
    Ok(store::forget_attempts(conn, Utc::now() - webhooks.settings.log_retention).await?)
}

/// The answer of a test ping.
#[derive(Debug)]
pub struct PingResult {
    pub id: Uuid,
    pub sent: Sent,
}

/// Sends a `webhook.ping` to the endpoint now (signed like every message, logged like every
/// attempt); it neither retries nor counts toward disabling.
pub async fn ping(
    webhooks: &Webhooks,
    cipher: &TokenCipher,
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
) -> Result<PingResult, WebhookError> {
    let endpoint = store::get(conn, space, id, false)
        .await?
        .ok_or_else(|| WebhookError::NotFound(format!("webhook {id}")))?;
    let now = Utc::now();
    let ping_id = Uuid::now_v7();
    let data = serde_json::json!({"webhook": endpoint.id});
    let body = serde_json::to_vec(&Envelope {
        id: ping_id,
        type_: catalog::PING,
        api_version: API_VERSION,
        occurred_at: now,
        sequence: None,
        space,
        data: &data,
    })
    .map_err(|e| WebhookError::Invalid {
        field: "body",
        message: e.to_string(),
    })?;
    let msg = Message {
        delivery: None,
        attempt: 1,
        endpoint: endpoint.id,
        space: space.to_owned(),
        url: endpoint.url.clone(),
        event_id: ping_id,
        event_type: catalog::PING.to_owned(),
        sequence: None,
        body,
        keys: keys(cipher, &endpoint, now)?,
    };
    let sent = send(webhooks, &msg).await;
    let attempt = NewAttempt {
        endpoint_id: endpoint.id,
        space_id: space.to_owned(),
        event_id: ping_id,
        event_type: catalog::PING.to_owned(),
        sequence: None,
        attempt: 1,
        attempted_at: sent.at,
        delivered: sent.delivered(),
        status: sent.status.map(i32::from),
        latency_ms: sent.latency.as_millis().min(i32::MAX as u128) as i32,
        response: sent.response.clone(),
        error: sent.error.clone(),
        next_attempt_at: None,
    };
    store::record_attempts(conn, &[attempt]).await?;
    Ok(PingResult { id: ping_id, sent })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_has_eight_attempts_with_jitter() {
        for (done, base) in [(1, 5.0), (2, 300.0), (3, 1800.0), (7, 36_000.0)] {
            let d = next_delay(done, 1.0, None).unwrap().as_secs_f64();
            assert!(
                d >= base * 0.8 - 0.001 && d <= base * 1.2 + 0.001,
                "{done}: {d}"
            );
        }
        assert_eq!(next_delay(8, 1.0, None), None, "8 attempts, then give up");
        let scaled = next_delay(2, 0.001, None).unwrap().as_secs_f64();
        assert!(scaled < 0.4);
        // A later Retry-After wins; an earlier one does not shorten the schedule.
        let d = next_delay(1, 1.0, Some(Duration::from_secs(60))).unwrap();
        assert_eq!(d, Duration::from_secs(60));
        let d = next_delay(2, 1.0, Some(Duration::from_secs(1))).unwrap();
        assert!(d >= Duration::from_secs(240));
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now = Utc::now();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        let later = (now + chrono::Duration::seconds(30)).to_rfc2822();
        let d = parse_retry_after(&later, now).unwrap();
        assert!(d.as_secs() >= 29 && d.as_secs() <= 30);
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
