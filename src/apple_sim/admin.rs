//! The admin API under `/_sim` (JSON, no authentication: a test fixture, never exposed).
//!
//! | method | path | body → answer |
//! |---|---|---|
//! | GET | `/_sim/health` | → `{"status":"ok"}` |
//! | POST | `/_sim/seed` | [`SeedFile`] → `[SeededLocation]` |
//! | GET | `/_sim/locations` | → `[{uId, name, assets, assignments, users}]` |
//! | POST | `/_sim/locations` | [`SeedLocation`] → [`SeededLocation`] |
//! | GET | `/_sim/locations/{uId}` | → [`LocationSnapshot`] |
//! | POST | `/_sim/locations/{uId}/tokens` | `{tokenExpDate?, token?, status?}` → `{sToken}` |
//! | POST | `/_sim/tokens/status` | `{sToken? \| location?, status}` → `{updated}` |
//! | POST | `/_sim/locations/{uId}/assets` | `[SeedAsset]` → 204 (+ ASSET_COUNT each) |
//! | PUT | `/_sim/locations/{uId}/assets/{adamId}/{pricingParam}/total` | `{totalCount}` → `{countDelta}` (+ ASSET_COUNT) |
//! | POST | `/_sim/locations/{uId}/assignments` | `{assignments?, generatedAssignments?}` → 204 |
//! | POST | `/_sim/locations/{uId}/assignments/remove` | same body → `{removed}` (never in deltas) |
//! | PUT | `/_sim/locations/{uId}/mdm-info` | [`MdmInfo`] → 204 (another MDM took the token) |
//! | POST | `/_sim/locations/{uId}/users/{clientUserId}/accept` | → 204 (+ USER_ASSOCIATED) |
//! | GET, PUT | `/_sim/settings` | [`SettingsPatch`] → [`SimSettings`] |
//! | GET, PUT, DELETE | `/_sim/faults` | [`FaultsPatch`] → [`Faults`] |
//! | POST | `/_sim/events/flush` | → `{processed}` (completes every queued event now) |
//! | GET, DELETE | `/_sim/counters` | → `{"GET /assets": 3, …}`; requests refused for the rate limit also count as `"429 maxRequestPerSecond"` |
//! | GET, DELETE | `/_sim/notifications` | → `[DeliveryRecord]` |
//!
//! Errors answer `{"error": "…"}` with 400 (bad input) or 404 (unknown location).

#![allow(
    clippy::result_large_err,
    reason = "handlers stop early with a ready HttpResponse; boxing it would only add noise"
)]

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::{HttpResponse, Responder};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::Sim;
use super::seed::{
    GeneratedAssignments, SeedAsset, SeedAssignment, SeedFile, SeedLocation, TokenStatus,
};
use super::settings::{FaultsPatch, SettingsPatch};
use crate::apple::dates;
use crate::apple::types::{AssetKey, MdmInfo, PricingParam, Target};

#[cfg(doc)]
use super::{
    notify::DeliveryRecord,
    seed::SeededLocation,
    settings::{Faults, SimSettings},
    state::LocationSnapshot,
};

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/_sim")
            .route("/health", web::get().to(health))
            .route("/seed", web::post().to(seed))
            .route("/locations", web::get().to(list_locations))
            .route("/locations", web::post().to(add_location))
            .route("/locations/{u_id}", web::get().to(location))
            .route("/locations/{u_id}/tokens", web::post().to(add_token))
            .route("/tokens/status", web::post().to(token_status))
            .route("/locations/{u_id}/assets", web::post().to(add_assets))
            .route(
                "/locations/{u_id}/assets/{adam_id}/{pricing}/total",
                web::put().to(set_total),
            )
            .route(
                "/locations/{u_id}/assignments",
                web::post().to(add_assignments),
            )
            .route(
                "/locations/{u_id}/assignments/remove",
                web::post().to(remove_assignments),
            )
            .route(
                "/locations/{u_id}/mdm-info",
                web::put().to(overwrite_mdm_info),
            )
            .route(
                "/locations/{u_id}/users/{client_user_id}/accept",
                web::post().to(accept_invitation),
            )
            .route("/settings", web::get().to(get_settings))
            .route("/settings", web::put().to(put_settings))
            .route("/faults", web::get().to(get_faults))
            .route("/faults", web::put().to(put_faults))
            .route("/faults", web::delete().to(clear_faults))
            .route("/events/flush", web::post().to(flush_events))
            .route("/counters", web::get().to(get_counters))
            .route("/counters", web::delete().to(reset_counters))
            .route("/notifications", web::get().to(get_notifications))
            .route("/notifications", web::delete().to(clear_notifications)),
    );
}

fn error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({"error": message.into()}))
}

fn bad_request(message: impl Into<String>) -> HttpResponse {
    error(StatusCode::BAD_REQUEST, message)
}

fn not_found(what: &str) -> HttpResponse {
    error(StatusCode::NOT_FOUND, format!("unknown {what}"))
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, HttpResponse> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid JSON body: {e}")))
}

macro_rules! body {
    ($bytes:expr) => {
        match parse($bytes) {
            Ok(v) => v,
            Err(response) => return response,
        }
    };
}

async fn health() -> impl Responder {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn seed(sim: web::Data<Sim>, bytes: Bytes) -> HttpResponse {
    let file: SeedFile = body!(&bytes);
    match sim.seed(&file) {
        Ok(seeded) => HttpResponse::Ok().json(seeded),
        Err(e) => bad_request(e),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LocationSummary {
    u_id: String,
    name: String,
    assets: usize,
    assignments: usize,
    users: usize,
}

async fn list_locations(sim: web::Data<Sim>) -> HttpResponse {
    let state = sim.lock();
    let list: Vec<LocationSummary> = state
        .locations
        .values()
        .map(|l| LocationSummary {
            u_id: l.u_id.clone(),
            name: l.name.clone(),
            assets: l.assets.len(),
            assignments: l.assignments.len(),
            users: l.users.len(),
        })
        .collect();
    HttpResponse::Ok().json(list)
}

async fn add_location(sim: web::Data<Sim>, bytes: Bytes) -> HttpResponse {
    let seed: SeedLocation = body!(&bytes);
    match sim.lock().add_location(&seed) {
        Ok(seeded) => HttpResponse::Ok().json(seeded),
        Err(e) => bad_request(e),
    }
}

async fn location(sim: web::Data<Sim>, path: web::Path<String>) -> HttpResponse {
    match sim.lock().snapshot(&path) {
        Some(snapshot) => HttpResponse::Ok().json(snapshot),
        None => not_found("location"),
    }
}

/// Body of `POST /_sim/locations/{uId}/tokens`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewToken {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_exp_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default)]
    pub status: TokenStatus,
}

async fn add_token(sim: web::Data<Sim>, path: web::Path<String>, bytes: Bytes) -> HttpResponse {
    let request: NewToken = if bytes.is_empty() {
        NewToken::default()
    } else {
        body!(&bytes)
    };
    let exp_date = match &request.token_exp_date {
        Some(text) => match dates::parse(text) {
            Some(d) => d,
            None => return bad_request("tokenExpDate is not a date"),
        },
        None => chrono::Utc::now() + chrono::Duration::days(365),
    };
    let mut state = sim.lock();
    let Some(org) = state
        .locations
        .get(path.as_str())
        .map(|l| l.org_name.clone())
    else {
        return not_found("location");
    };
    let token = state.mint_token(
        &path,
        &org,
        request.token.as_deref(),
        exp_date,
        request.status,
    );
    HttpResponse::Ok().json(serde_json::json!({"sToken": token.expose()}))
}

/// Body of `POST /_sim/tokens/status`: one token, or every token of a location.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenStatusChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub status: TokenStatus,
}

impl std::fmt::Debug for TokenStatusChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStatusChange")
            .field("s_token", &self.s_token.as_ref().map(|_| "***"))
            .field("location", &self.location)
            .field("status", &self.status)
            .finish()
    }
}

async fn token_status(sim: web::Data<Sim>, bytes: Bytes) -> HttpResponse {
    let change: TokenStatusChange = body!(&bytes);
    let mut state = sim.lock();
    let mut updated = 0;
    for (text, entry) in state.tokens.iter_mut() {
        let by_token = change.s_token.as_deref().map(str::trim) == Some(text.as_str());
        let by_location = change.location.as_deref() == Some(entry.location.as_str());
        if by_token || by_location {
            entry.status = change.status;
            updated += 1;
        }
    }
    if updated == 0 {
        return not_found("token or location");
    }
    HttpResponse::Ok().json(serde_json::json!({"updated": updated}))
}

async fn add_assets(sim: web::Data<Sim>, path: web::Path<String>, bytes: Bytes) -> HttpResponse {
    let assets: Vec<SeedAsset> = body!(&bytes);
    let mut state = sim.lock();
    if !state.locations.contains_key(path.as_str()) {
        return not_found("location");
    }
    let result = state.add_assets(&path, &assets);
    drop(state);
    match result {
        Ok(outgoing) => {
            sim.send(outgoing);
            HttpResponse::NoContent().finish()
        }
        Err(e) => bad_request(e),
    }
}

/// Body of the asset-total endpoint.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AssetTotal {
    pub total_count: i64,
}

async fn set_total(
    sim: web::Data<Sim>,
    path: web::Path<(String, String, String)>,
    bytes: Bytes,
) -> HttpResponse {
    let request: AssetTotal = body!(&bytes);
    let (u_id, adam_id, pricing) = path.into_inner();
    let key = AssetKey::new(adam_id, PricingParam::from(pricing.as_str()));
    let result = sim.lock().set_asset_total(&u_id, &key, request.total_count);
    match result {
        Ok((delta, outgoing)) => {
            sim.send(outgoing.into_iter().collect());
            HttpResponse::Ok().json(serde_json::json!({ "countDelta": delta }))
        }
        Err(e) if e.starts_with("unknown") => not_found(e.trim_start_matches("unknown ")),
        Err(e) => bad_request(e),
    }
}

/// Body of `POST /_sim/locations/{uId}/assignments`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewAssignments {
    #[serde(default)]
    pub assignments: Vec<SeedAssignment>,
    #[serde(default)]
    pub generated_assignments: Vec<GeneratedAssignments>,
}

impl NewAssignments {
    /// The (asset, target) pairs the body names, listed ones first, then the generated ones.
    fn wanted(&self) -> Result<Vec<(AssetKey, Target)>, String> {
        let generated: usize = self.generated_assignments.iter().map(|g| g.count).sum();
        let mut wanted = Vec::with_capacity(self.assignments.len() + generated);
        for a in &self.assignments {
            let target = match (&a.serial_number, &a.client_user_id) {
                (Some(s), None) => Target::SerialNumber(s.clone()),
                (None, Some(u)) => Target::ClientUserId(u.clone()),
                _ => {
                    return Err(
                        "each assignment needs exactly one of serialNumber and clientUserId".into(),
                    );
                }
            };
            wanted.push((
                AssetKey::new(a.adam_id.clone(), a.pricing_param.clone()),
                target,
            ));
        }
        for g in &self.generated_assignments {
            let key = AssetKey::new(g.adam_id.clone(), g.pricing_param.clone());
            for i in 0..g.count {
                wanted.push((
                    key.clone(),
                    Target::SerialNumber(format!("{}{i:06}", g.serial_prefix)),
                ));
            }
        }
        Ok(wanted)
    }
}

async fn add_assignments(
    sim: web::Data<Sim>,
    path: web::Path<String>,
    bytes: Bytes,
) -> HttpResponse {
    let request: NewAssignments = body!(&bytes);
    let wanted = match request.wanted() {
        Ok(w) => w,
        Err(e) => return bad_request(e),
    };
    let mut state = sim.lock();
    match state.add_assignments(&path, &wanted) {
        Ok(()) => HttpResponse::NoContent().finish(),
        Err(e) if e == "unknown location" => not_found("location"),
        Err(e) => bad_request(e),
    }
}

/// Another MDM or an admin revoked these behind the service's back: `{removed}` counts the ones
/// that were there. Apple does not document how a delta reports removals; here they never
/// appear in one (UNCONFIRMED at Apple), a full read shows them gone.
async fn remove_assignments(
    sim: web::Data<Sim>,
    path: web::Path<String>,
    bytes: Bytes,
) -> HttpResponse {
    let request: NewAssignments = body!(&bytes);
    let wanted = match request.wanted() {
        Ok(w) => w,
        Err(e) => return bad_request(e),
    };
    let mut state = sim.lock();
    match state.remove_assignments(&path, &wanted) {
        Ok(removed) => HttpResponse::Ok().json(serde_json::json!({ "removed": removed })),
        Err(e) if e == "unknown location" => not_found("location"),
        Err(e) => bad_request(e),
    }
}

async fn overwrite_mdm_info(
    sim: web::Data<Sim>,
    path: web::Path<String>,
    bytes: Bytes,
) -> HttpResponse {
    let info: MdmInfo = body!(&bytes);
    let mut state = sim.lock();
    let Some(location) = state.locations.get_mut(path.as_str()) else {
        return not_found("location");
    };
    location.mdm_info = Some(info);
    // The other MDM subscribed its own endpoint: ours stops receiving notifications.
    location.notification_url = None;
    location.notification_auth_token = None;
    HttpResponse::NoContent().finish()
}

async fn accept_invitation(sim: web::Data<Sim>, path: web::Path<(String, String)>) -> HttpResponse {
    let (u_id, client_user_id) = path.into_inner();
    let result = sim.lock().accept_invitation(&u_id, &client_user_id);
    match result {
        Ok(outgoing) => {
            sim.send(outgoing.into_iter().collect());
            HttpResponse::NoContent().finish()
        }
        Err(e) => error(StatusCode::NOT_FOUND, e),
    }
}

async fn get_settings(sim: web::Data<Sim>) -> HttpResponse {
    HttpResponse::Ok().json(sim.lock().settings.clone())
}

async fn put_settings(sim: web::Data<Sim>, bytes: Bytes) -> HttpResponse {
    let patch: SettingsPatch = body!(&bytes);
    let mut state = sim.lock();
    state.settings.apply(&patch);
    HttpResponse::Ok().json(state.settings.clone())
}

async fn get_faults(sim: web::Data<Sim>) -> HttpResponse {
    HttpResponse::Ok().json(sim.lock().faults.clone())
}

async fn put_faults(sim: web::Data<Sim>, bytes: Bytes) -> HttpResponse {
    let patch: FaultsPatch = body!(&bytes);
    let mut state = sim.lock();
    match state.faults.apply(&patch) {
        Ok(()) => HttpResponse::Ok().json(state.faults.clone()),
        Err(e) => bad_request(e),
    }
}

async fn clear_faults(sim: web::Data<Sim>) -> HttpResponse {
    let mut state = sim.lock();
    state.faults = Default::default();
    HttpResponse::Ok().json(state.faults.clone())
}

async fn flush_events(sim: web::Data<Sim>) -> HttpResponse {
    let (processed, outgoing) = {
        let mut state = sim.lock();
        let before = state.queue.len();
        let (outgoing, _) = state.process_due(Instant::now(), true);
        (before - state.queue.len(), outgoing)
    };
    sim.send(outgoing);
    HttpResponse::Ok().json(serde_json::json!({"processed": processed}))
}

async fn get_counters(sim: web::Data<Sim>) -> HttpResponse {
    HttpResponse::Ok().json(sim.lock().counters.clone())
}

async fn reset_counters(sim: web::Data<Sim>) -> HttpResponse {
    sim.lock().counters.clear();
    HttpResponse::NoContent().finish()
}

async fn get_notifications(sim: web::Data<Sim>) -> HttpResponse {
    let records: Vec<_> = sim.lock().deliveries.iter().cloned().collect();
    HttpResponse::Ok().json(records)
}

async fn clear_notifications(sim: web::Data<Sim>) -> HttpResponse {
    sim.lock().deliveries.clear();
    HttpResponse::NoContent().finish()
}
