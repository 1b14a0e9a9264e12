//! Managing endpoints: create, read, change, delete, rotate the secret, queue deliveries again
//! (one event, or everything since a time), read the delivery log. Every change writes an
//! activity row (`webhook.created`, `webhook.updated`, `webhook.deleted`,
//! `webhook.secret_rotated`) with the caller, never the secret.

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use super::{WebhookError, Webhooks, aad, catalog, safety, signing};
use crate::crypto::TokenCipher;
use crate::domain::origin::Origin;
use crate::ledger::activity::{self, Activity, ActivityAction};
use crate::ledger::webhooks::{self as store, AttemptRow, EndpointRow};

/// Longest description.
pub const MAX_DESCRIPTION: usize = 1000;
/// Most event types in a filter.
pub const MAX_EVENT_TYPES: usize = 50;

/// What a new endpoint is.
#[derive(Clone, Debug)]
pub struct NewEndpoint {
    pub url: String,
    pub event_types: Vec<String>,
    pub description: String,
    pub enabled: bool,
}

/// What a change sets (`None`: unchanged).
#[derive(Clone, Debug, Default)]
pub struct Changes {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

/// Checks a filter: known types, at most [`MAX_EVENT_TYPES`]; repeats count once.
fn check_types(types: Vec<String>) -> Result<Vec<String>, WebhookError> {
    if types.len() > MAX_EVENT_TYPES {
        return Err(WebhookError::Invalid {
            field: "event_types",
            message: format!("at most {MAX_EVENT_TYPES} event types"),
        });
    }
    let mut out: Vec<String> = Vec::with_capacity(types.len());
    for t in types {
        if !catalog::known(&t) {
            return Err(WebhookError::UnknownEventType(t));
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

fn check_description(d: &str) -> Result<(), WebhookError> {
    if d.chars().count() > MAX_DESCRIPTION || d.chars().any(|c| c.is_control() && c != '\n') {
        return Err(WebhookError::Invalid {
            field: "description",
            message: format!("at most {MAX_DESCRIPTION} characters, no control characters"),
        });
    }
    Ok(())
}

/// Checks a URL's shape and where it resolves to.
async fn check_url(webhooks: &Webhooks, url: &str) -> Result<String, WebhookError> {
    let allow = webhooks.settings.allow_private;
    let parsed = safety::check_url(url, allow)?;
    safety::resolve_public(&parsed, allow).await?;
    Ok(parsed.to_string())
}

/// Creates an endpoint; returns it and its secret (answered this once).
pub async fn create(
    webhooks: &Webhooks,
    cipher: &TokenCipher,
    conn: &mut AsyncPgConnection,
    space: &str,
    new: NewEndpoint,
    origin: &Origin,
) -> Result<(EndpointRow, SecretString), WebhookError> {
    if crate::ledger::spaces::find(conn, space).await?.is_none() {
        return Err(WebhookError::NotFound(format!("space {space}")));
    }
    let types = check_types(new.event_types)?;
    check_description(&new.description)?;
    let url = check_url(webhooks, &new.url).await?;
    let id = Uuid::now_v7();
    let secret = signing::new_secret();
    let sealed = cipher.seal(&aad(id), secret.expose_secret());
    let row = conn
        .transaction(async |conn| {
            let now = Utc::now();
            let row = EndpointRow {
                id,
                space_id: space.to_owned(),
                url,
                event_types: types,
                description: new.description,
                enabled: new.enabled,
                disabled_reason: (!new.enabled).then(|| "manual".to_owned()),
                disabled_at: (!new.enabled).then_some(now),
                secret_key_id: sealed.key_id,
                secret_nonce: sealed.nonce,
                secret_ciphertext: sealed.ciphertext,
                previous_key_id: None,
                previous_nonce: None,
                previous_ciphertext: None,
                previous_until: None,
                // New events only: those recorded from now on.
                last_sequence: store::last_sequence(conn, space).await?,
                failing_since: None,
                created_at: now,
                updated_at: now,
                deleted_at: None,
            };
            store::insert(conn, &row).await?;
            activity::record(
                conn,
                Activity::new(origin, ActivityAction::WebhookCreated.as_str())
                    .space(space)
                    .details(serde_json::json!({
                        "webhook": id, "url": row.url, "event_types": row.event_types,
                        "enabled": row.enabled,
                    })),
            )
            .await?;
            Ok::<EndpointRow, WebhookError>(row)
        })
        .await?;
    Ok((row, secret))
}

pub async fn get(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
) -> Result<EndpointRow, WebhookError> {
    store::get(conn, space, id, false)
        .await?
        .ok_or_else(|| WebhookError::NotFound(format!("webhook {id}")))
}

pub async fn list(
    conn: &mut AsyncPgConnection,
    space: &str,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<EndpointRow>, WebhookError> {
    Ok(store::list(conn, space, after, limit).await?)
}

/// Changes an endpoint. Re-enabling starts it at the space's newest event (what happened while
/// it was disabled is `recover`'s); disabling drops its queue.
pub async fn update(
    webhooks: &Webhooks,
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
    changes: Changes,
    origin: &Origin,
) -> Result<EndpointRow, WebhookError> {
    let types = changes.event_types.map(check_types).transpose()?;
    if let Some(d) = &changes.description {
        check_description(d)?;
    }
    let url = match &changes.url {
        Some(url) => Some(check_url(webhooks, url).await?),
        None => None,
    };
    conn.transaction(async |conn| {
        let mut row = store::get(conn, space, id, true)
            .await?
            .ok_or_else(|| WebhookError::NotFound(format!("webhook {id}")))?;
        let now = Utc::now();
        if let Some(url) = url {
            row.url = url;
        }
        if let Some(types) = types {
            row.event_types = types;
        }
        if let Some(d) = changes.description {
            row.description = d;
        }
        match (row.enabled, changes.enabled) {
            (false, Some(true)) => {
                row.enabled = true;
                row.disabled_reason = None;
                row.disabled_at = None;
                row.failing_since = None;
                row.last_sequence = store::last_sequence(conn, space).await?;
            }
            (true, Some(false)) => {
                row.enabled = false;
                row.disabled_reason = Some("manual".into());
                row.disabled_at = Some(now);
                store::drop_queued(conn, id).await?;
            }
            _ => {}
        }
        row.updated_at = now;
        store::save(conn, &row).await?;
        activity::record(
            conn,
            Activity::new(origin, ActivityAction::WebhookUpdated.as_str())
                .space(space)
                .details(serde_json::json!({
                    "webhook": id, "url": row.url, "event_types": row.event_types,
                    "enabled": row.enabled, "description": row.description,
                })),
        )
        .await?;
        Ok(row)
    })
    .await
}

/// Deletes an endpoint: it stops at once (its queue is dropped); its delivery log stays for
/// its retention.
pub async fn delete(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
    origin: &Origin,
) -> Result<(), WebhookError> {
    conn.transaction(async |conn| {
        let mut row = store::get(conn, space, id, true)
            .await?
            .ok_or_else(|| WebhookError::NotFound(format!("webhook {id}")))?;
        let now = Utc::now();
        row.enabled = false;
        row.deleted_at = Some(now);
        row.updated_at = now;
        store::save(conn, &row).await?;
        store::drop_queued(conn, id).await?;
        activity::record(
            conn,
            Activity::new(origin, ActivityAction::WebhookDeleted.as_str())
                .space(space)
                .details(serde_json::json!({"webhook": id, "url": row.url})),
        )
        .await?;
        Ok(())
    })
    .await
}

/// A new secret (answered this once); the current one keeps signing beside it for the
/// overlap. A rotation during an overlap ends the older secret's overlap.
pub async fn rotate(
    webhooks: &Webhooks,
    cipher: &TokenCipher,
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
    origin: &Origin,
) -> Result<(EndpointRow, SecretString), WebhookError> {
    let secret = signing::new_secret();
    let sealed = cipher.seal(&aad(id), secret.expose_secret());
    let row = conn
        .transaction(async |conn| {
            let mut row = store::get(conn, space, id, true)
                .await?
                .ok_or_else(|| WebhookError::NotFound(format!("webhook {id}")))?;
            let now = Utc::now();
            row.previous_key_id = Some(std::mem::replace(&mut row.secret_key_id, sealed.key_id));
            row.previous_nonce = Some(std::mem::replace(&mut row.secret_nonce, sealed.nonce));
            row.previous_ciphertext = Some(std::mem::replace(
                &mut row.secret_ciphertext,
                sealed.ciphertext,
            ));
            row.previous_until = Some(now + webhooks.settings.overlap);
            row.updated_at = now;
            store::save(conn, &row).await?;
            activity::record(
                conn,
                Activity::new(origin, ActivityAction::WebhookSecretRotated.as_str())
                    .space(space)
                    .details(serde_json::json!({
                        "webhook": id, "previous_signs_until": row.previous_until,
                    })),
            )
            .await?;
            Ok::<EndpointRow, WebhookError>(row)
        })
        .await?;
    Ok((row, secret))
}

fn enabled(row: EndpointRow) -> Result<EndpointRow, WebhookError> {
    if row.enabled {
        Ok(row)
    } else {
        Err(WebhookError::Disabled(row.id))
    }
}

/// Queues the event for the endpoint again (delivered at once, with the same `webhook-id`).
/// False when a delivery of it is queued already.
pub async fn redeliver(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
    event: Uuid,
) -> Result<bool, WebhookError> {
    let row = enabled(get(conn, space, id).await?)?;
    let event = store::event_in_space(conn, space, event)
        .await?
        .ok_or_else(|| WebhookError::NotFound(format!("event {event}")))?;
    Ok(store::enqueue_one(conn, row.id, &event).await?)
}

/// Queues every event recorded since `since` that the endpoint's filter passes (up to what it
/// was already sent). Returns how many were queued.
pub async fn recover(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
    since: DateTime<Utc>,
) -> Result<usize, WebhookError> {
    if since > Utc::now() {
        return Err(WebhookError::Invalid {
            field: "since",
            message: "must not be in the future".into(),
        });
    }
    let row = enabled(get(conn, space, id).await?)?;
    Ok(store::enqueue_since(conn, &row, since).await?)
}

/// The endpoint's delivery log, newest first.
pub async fn attempts(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
    before: Option<i64>,
    event: Option<Uuid>,
    limit: i64,
) -> Result<Vec<AttemptRow>, WebhookError> {
    let row = get(conn, space, id).await?;
    Ok(store::attempts(conn, row.id, before, event, limit).await?)
}

/// Key rotation (`vpp-broker rotate-keys`): re-seals every endpoint secret (and a previous one
/// still signing) not sealed with the active key, 100 endpoints per transaction. Returns how
/// many endpoints were re-sealed.
pub async fn reseal_all(
    conn: &mut AsyncPgConnection,
    cipher: &TokenCipher,
) -> Result<usize, WebhookError> {
    let mut done = 0;
    loop {
        let n = conn
            .transaction(async |conn| {
                let rows = store::sealed_with_other_keys(conn, cipher.active_key_id(), 100).await?;
                let now = Utc::now();
                for mut row in rows.iter().cloned() {
                    let aad = aad(row.id);
                    let current = cipher.open_secret(&aad, &row.sealed_secret())?;
                    let sealed = cipher.seal(&aad, current.expose_secret());
                    row.secret_key_id = sealed.key_id;
                    row.secret_nonce = sealed.nonce;
                    row.secret_ciphertext = sealed.ciphertext;
                    if let Some(previous) = row.sealed_previous(now) {
                        let previous = cipher.open_secret(&aad, &previous)?;
                        let sealed = cipher.seal(&aad, previous.expose_secret());
                        row.previous_key_id = Some(sealed.key_id);
                        row.previous_nonce = Some(sealed.nonce);
                        row.previous_ciphertext = Some(sealed.ciphertext);
                    } else {
                        row.previous_key_id = None;
                        row.previous_nonce = None;
                        row.previous_ciphertext = None;
                        row.previous_until = None;
                    }
                    store::save(conn, &row).await?;
                }
                Ok::<usize, WebhookError>(rows.len())
            })
            .await?;
        if n == 0 {
            return Ok(done);
        }
        done += n;
    }
}
