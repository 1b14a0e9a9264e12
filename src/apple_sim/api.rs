//! Apple's endpoints under `/mdm/v2` (docs/apple.md, What it simulates).
//!
//! Every request: counted by `METHOD /path` and delayed by the latency fault (middleware). Then,
//! in [`guard`]: `Authorization: Bearer <sToken>` (missing/malformed → 9722/401; unknown or
//! invalidated → 9622 with HTTP 200 by default; expired → 9621/401; revoked → 9625/401), the
//! per-token rate limit (`maxRequestPerSecond` → 9646/429 with `Retry-After: 1`), "fail next"
//! rules and the random error rate (9603/500). `/service/config` needs no token (a Bearer header
//! is accepted and ignored, conflict #11 in docs/apple.md) but still sees global faults. Wrong
//! method → 9726/405; a POST whose Content-Type is not JSON → 9727/415; a body that is not the
//! expected JSON → 9602.

#![allow(
    clippy::result_large_err,
    reason = "handlers stop early with a ready HttpResponse; boxing it would only add noise"
)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use actix_web::middleware::{Next, from_fn};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Sim;
use super::listing::{AssetFilter, AssignmentFilter, UserFilter};
use super::notify::{DeliveryOutcome, DeliveryRecord, Outgoing, deliver_once};
use super::settings::{Dataset, FailRule};
use super::state::Task;
use super::state::{AuthOutcome, Location, Refusal, State};
use crate::apple::codes;
use crate::apple::types::*;

/// Routes of Apple's API.
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    let resource = |path: &str| web::resource(path).default_service(web::to(wrong_method));
    cfg.service(
        web::scope("/mdm/v2")
            .wrap(from_fn(count_and_delay))
            .service(resource("/service/config").route(web::get().to(service_config)))
            .service(
                resource("/client/config")
                    .route(web::get().to(get_client_config))
                    .route(web::post().to(set_client_config)),
            )
            .service(resource("/assets").route(web::get().to(get_assets)))
            .service(resource("/assets/associate").route(web::post().to(associate)))
            .service(resource("/assets/disassociate").route(web::post().to(disassociate)))
            .service(resource("/assets/revoke").route(web::post().to(revoke)))
            .service(resource("/assignments").route(web::get().to(get_assignments)))
            .service(resource("/status").route(web::get().to(status)))
            .service(resource("/users").route(web::get().to(get_users)))
            .service(resource("/users/create").route(web::post().to(create_users)))
            .service(resource("/users/update").route(web::post().to(update_users)))
            .service(resource("/users/retire").route(web::post().to(retire_users)))
            .default_service(web::to(not_found)),
    );
}

async fn count_and_delay(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let Some(sim) = req.app_data::<web::Data<Sim>>() {
        let path = req.path();
        let key = format!(
            "{} {}",
            req.method(),
            path.strip_prefix("/mdm/v2").unwrap_or(path)
        );
        let latency = {
            let mut state = sim.lock();
            *state.counters.entry(key).or_default() += 1;
            state.faults.latency_ms
        };
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
    }
    next.call(req).await
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> HttpResponse {
    match serde_json::to_vec(value) {
        Ok(body) => HttpResponse::build(status)
            .content_type("application/json")
            .body(body),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}

/// Apple's error body with `number`'s documented status (or `status`).
fn apple_error(number: i32, status: Option<u16>, info: ErrorInfo) -> HttpResponse {
    let status = status
        .or_else(|| codes::lookup(number).map(|c| c.status))
        .unwrap_or(400);
    json(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        &ErrorResponse {
            error_number: Some(number),
            error_message: Some(codes::message(number).to_owned()),
            error_info: info,
        },
    )
}

fn refused(refusal: Refusal) -> HttpResponse {
    apple_error(refusal.number, None, refusal.info)
}

fn with_retry_after(mut response: HttpResponse, value: String) -> HttpResponse {
    if let Ok(v) = value.parse() {
        response.headers_mut().insert(RETRY_AFTER, v);
    }
    response
}

fn fail_response(rule: &FailRule) -> HttpResponse {
    let response = apple_error(rule.error_number, Some(rule.status), ErrorInfo::default());
    match rule.retry_after_secs {
        Some(secs) if rule.retry_after_http_date => {
            let at = Utc::now() + chrono::Duration::seconds(secs as i64 + 1);
            with_retry_after(response, at.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
        }
        Some(secs) => with_retry_after(response, secs.to_string()),
        None => response,
    }
}

/// Global faults: a matching "fail next" rule, then the error rate.
fn faults(sim: &Sim, location: Option<&str>, req: &HttpRequest) -> Result<(), HttpResponse> {
    let path = req.path();
    let endpoint = path
        .strip_prefix("/mdm/v2")
        .unwrap_or(path)
        .trim_matches('/');
    let mut state = sim.lock();
    if let Some(rule) = state.take_fail_rule(location, endpoint) {
        return Err(fail_response(&rule));
    }
    let rate = state.faults.error_rate;
    if rate > 0.0 && rand::random::<f64>() < rate {
        let response = apple_error(codes::INTERNAL_ERROR, None, ErrorInfo::default());
        return Err(match state.faults.error_rate_retry_after_secs {
            Some(secs) => with_retry_after(response, secs.to_string()),
            None => response,
        });
    }
    Ok(())
}

/// An authenticated caller.
struct Caller {
    location: String,
    exp_date: DateTime<Utc>,
}

/// The counter of requests refused for the per-token rate limit (429, 9646).
pub const THROTTLED: &str = "429 maxRequestPerSecond";

fn guard(sim: &Sim, req: &HttpRequest) -> Result<Caller, HttpResponse> {
    let bearer = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| apple_error(codes::BAD_AUTHORIZATION_HEADER, None, ErrorInfo::default()))?;
    let caller = {
        let mut state = sim.lock();
        let caller = match state.authenticate(bearer) {
            AuthOutcome::Accepted { location, exp_date } => Caller { location, exp_date },
            AuthOutcome::Refused { status, number } => {
                return Err(apple_error(number, Some(status), ErrorInfo::default()));
            }
        };
        if !state.admit(bearer, Instant::now()) {
            *state.counters.entry(THROTTLED.to_owned()).or_default() += 1;
            return Err(with_retry_after(
                apple_error(codes::TOO_MANY_REQUESTS, None, ErrorInfo::default()),
                "1".into(),
            ));
        }
        caller
    };
    faults(sim, Some(&caller.location), req)?;
    Ok(caller)
}

fn json_body<T: DeserializeOwned>(req: &HttpRequest, body: &Bytes) -> Result<T, HttpResponse> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if !content_type.starts_with("application/json") {
        return Err(apple_error(
            codes::UNSUPPORTED_CONTENT_TYPE,
            None,
            ErrorInfo::default(),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|_| apple_error(codes::INVALID_ARGUMENT, None, ErrorInfo::default()))
}

fn query(req: &HttpRequest) -> HashMap<String, String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect()
}

fn bool_param(q: &HashMap<String, String>, name: &str) -> Result<Option<bool>, HttpResponse> {
    match q.get(name).map(|v| v.to_ascii_lowercase()) {
        None => Ok(None),
        Some(v) if v == "true" || v == "1" => Ok(Some(true)),
        Some(v) if v == "false" || v == "0" => Ok(Some(false)),
        Some(_) => Err(apple_error(
            codes::INVALID_ARGUMENT,
            None,
            ErrorInfo::default(),
        )),
    }
}

fn int_param(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, HttpResponse> {
    q.get(name)
        .map(|v| v.trim().parse::<i64>())
        .transpose()
        .map_err(|_| apple_error(codes::INVALID_ARGUMENT, None, ErrorInfo::default()))
}

fn page_index(q: &HashMap<String, String>) -> Result<usize, HttpResponse> {
    match q.get("pageIndex") {
        None => Ok(0),
        Some(v) => v
            .trim()
            .parse::<usize>()
            .map_err(|_| apple_error(codes::BAD_PAGE_INDEX, None, ErrorInfo::default())),
    }
}

fn missing_location() -> HttpResponse {
    apple_error(codes::INTERNAL_ERROR, None, ErrorInfo::default())
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(response) => return response,
        }
    };
}

pub(crate) async fn not_found() -> HttpResponse {
    json(
        StatusCode::NOT_FOUND,
        &serde_json::json!({"errorMessage": "No such endpoint."}),
    )
}

async fn wrong_method() -> HttpResponse {
    apple_error(codes::METHOD_NOT_ALLOWED, None, ErrorInfo::default())
}

async fn service_config(sim: web::Data<Sim>, req: HttpRequest) -> HttpResponse {
    tri!(faults(&sim, None, &req));
    let info = req.connection_info();
    let base = format!("{}://{}/mdm/v2", info.scheme(), info.host());
    let urls = [
        ("clientConfig", "client/config"),
        ("getAssets", "assets"),
        ("getAssignments", "assignments"),
        ("associateAssets", "assets/associate"),
        ("disassociateAssets", "assets/disassociate"),
        ("revokeAssets", "assets/revoke"),
        ("eventStatus", "status"),
        ("getUsers", "users"),
        ("createUsers", "users/create"),
        ("updateUsers", "users/update"),
        ("retireUsers", "users/retire"),
    ]
    .into_iter()
    .map(|(name, path)| (name.to_owned(), format!("{base}/{path}")))
    .chain([(
        "invitationEmail".to_owned(),
        "https://buy.itunes.apple.com/WebObjects/MZFinance.woa/wa/associateVPPUserWithITSAccount?inviteCode=%25inviteCode%25&mt=8".to_owned(),
    )])
    .collect();
    let state = sim.lock();
    json(
        StatusCode::OK,
        &ServiceConfig {
            error_codes: codes::CATALOGUE
                .iter()
                .map(|c| ErrorCode {
                    error_number: Some(c.number),
                    error_message: Some(c.message.to_owned()),
                })
                .collect(),
            limits: state
                .settings
                .limits
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(*v)))
                .collect(),
            notification_types: vec![
                NotificationType::AssetManagement,
                NotificationType::UserManagement,
                NotificationType::UserAssociated,
                NotificationType::AssetCount,
            ],
            urls,
        },
    )
}

async fn get_client_config(sim: web::Data<Sim>, req: HttpRequest) -> HttpResponse {
    let caller = tri!(guard(&sim, &req));
    let state = sim.lock();
    match state.locations.get(&caller.location) {
        Some(location) => json(
            StatusCode::OK,
            &state.client_config(location, caller.exp_date),
        ),
        None => missing_location(),
    }
}

/// Checks a client-config request against Apple's rules before anything is stored.
fn check_client_config(sim: &Sim, request: &ClientConfigRequest) -> Result<(), HttpResponse> {
    let state = sim.lock();
    let limit = |name| state.settings.limit(name);
    let refuse = |number| Err(apple_error(number, None, ErrorInfo::default()));
    if let Some(info) = &request.mdm_info {
        if info.id.trim().is_empty()
            || info.name.trim().is_empty()
            || info.metadata.trim().is_empty()
        {
            return refuse(codes::MDM_INFO_INCOMPLETE);
        }
        if info.id.chars().count() > limit("maxMdmIdLength") {
            return refuse(codes::MDM_ID_TOO_LONG);
        }
        if info.name.chars().count() > limit("maxMdmNameLength") {
            return refuse(codes::MDM_NAME_TOO_LONG);
        }
        if info.metadata.chars().count() > limit("maxMdmMetadataLength") {
            return refuse(codes::MDM_METADATA_TOO_LONG);
        }
    }
    match (&request.notification_url, &request.notification_auth_token) {
        (None, None) => {}
        (Some(url), Some(secret)) => {
            let max = limit("maxNotificationLength");
            if url.chars().count() > max || secret.expose().chars().count() > max {
                return refuse(codes::NOTIFICATION_FIELD_TOO_LONG);
            }
            let scheme_ok = match url::Url::parse(url) {
                Ok(parsed) => {
                    parsed.scheme() == "https"
                        || (parsed.scheme() == "http" && state.settings.allow_http_notification_url)
                }
                Err(_) => false,
            };
            if !scheme_ok || secret.expose().trim().is_empty() {
                return refuse(codes::NOTIFICATION_URL_INVALID);
            }
        }
        _ => return refuse(codes::NOTIFICATION_URL_AND_TOKEN),
    }
    if let Some(types) = &request.notification_types
        && types
            .iter()
            .any(|t| matches!(t, NotificationType::Other(_)))
    {
        return refuse(codes::INVALID_ARGUMENT);
    }
    Ok(())
}

async fn set_client_config(sim: web::Data<Sim>, req: HttpRequest, body: Bytes) -> HttpResponse {
    let caller = tri!(guard(&sim, &req));
    let request: ClientConfigRequest = tri!(json_body(&req, &body));
    tri!(check_client_config(&sim, &request));
    if let (Some(url), Some(secret)) = (&request.notification_url, &request.notification_auth_token)
    {
        // Apple sends a TEST_NOTIFICATION synchronously and refuses the configuration (9728) if
        // it is not delivered.
        let outgoing = Outgoing {
            url: url.clone(),
            auth_token: secret.expose().to_owned(),
            envelope: NotificationEnvelope {
                notification_id: uuid::Uuid::new_v4().to_string(),
                notification_type: NotificationType::TestNotification,
                u_id: Some(caller.location.clone()),
                notification: serde_json::json!({}),
            },
        };
        let timeout = Duration::from_millis(sim.lock().settings.notification_timeout_ms);
        let result = deliver_once(&sim.http, &outgoing, timeout).await;
        let delivered = matches!(result, Ok(s) if (200..300).contains(&s));
        let (http_status, error) = match result {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e)),
        };
        sim.lock().record_delivery(DeliveryRecord {
            notification_id: outgoing.envelope.notification_id.clone(),
            notification_type: NotificationType::TestNotification,
            attempt: 1,
            outcome: if delivered {
                DeliveryOutcome::Delivered
            } else {
                DeliveryOutcome::Failed
            },
            http_status,
            error,
            duplicate: false,
        });
        if !delivered {
            return apple_error(
                codes::NOTIFICATION_URL_UNREACHABLE,
                None,
                ErrorInfo::default(),
            );
        }
    }
    let mut state = sim.lock();
    let Some(location) = state.locations.get_mut(&caller.location) else {
        return missing_location();
    };
    if let Some(info) = request.mdm_info {
        location.mdm_info = Some(info);
    }
    if let (Some(url), Some(secret)) = (request.notification_url, request.notification_auth_token) {
        location.notification_url = Some(url);
        location.notification_auth_token = Some(secret.expose().to_owned());
    }
    if let Some(types) = request.notification_types {
        location.notification_types = types;
    }
    let location = &state.locations[&caller.location];
    json(
        StatusCode::OK,
        &state.client_config(location, caller.exp_date),
    )
}

/// One page of a location's `dataset` as `list` reads it, with the location's `mdmInfo`/token
/// meta; then a matching version-churn fault may change the data set (between two pages).
fn page<R: Serialize>(
    sim: &Sim,
    caller: &Caller,
    dataset: Dataset,
    list: impl FnOnce(&State, &Location, ResponseMeta) -> Result<R, Refusal>,
) -> HttpResponse {
    let mut state = sim.lock();
    let response = {
        let Some(location) = state.locations.get(&caller.location) else {
            return missing_location();
        };
        let meta = state.meta(location, caller.exp_date);
        list(&state, location, meta)
    };
    state.churn(&caller.location, dataset);
    match response {
        Ok(r) => json(StatusCode::OK, &r),
        Err(refusal) => refused(refusal),
    }
}

async fn get_assets(sim: web::Data<Sim>, req: HttpRequest) -> HttpResponse {
    let caller = tri!(guard(&sim, &req));
    let q = query(&req);
    let filter = AssetFilter {
        adam_id: q.get("adamId").cloned(),
        pricing_param: q.get("pricingParam").cloned(),
        product_type: q.get("productType").cloned(),
        revocable: tri!(bool_param(&q, "revocable")),
        device_assignable: tri!(bool_param(&q, "deviceAssignable")),
        max_available: tri!(int_param(&q, "maxAvailableCount")),
        min_available: tri!(int_param(&q, "minAvailableCount")),
        max_assigned: tri!(int_param(&q, "maxAssignedCount")),
        min_assigned: tri!(int_param(&q, "minAssignedCount")),
        unlimited: tri!(bool_param(&q, "unlimited")),
    };
    let index = tri!(page_index(&q));
    page(&sim, &caller, Dataset::Assets, |state, location, meta| {
        state.list_assets(location, &filter, index).map(|mut r| {
            r.meta = meta;
            r
        })
    })
}

async fn get_assignments(sim: web::Data<Sim>, req: HttpRequest) -> HttpResponse {
    let caller = tri!(guard(&sim, &req));
    let q = query(&req);
    let filter = AssignmentFilter {
        adam_id: q.get("adamId").cloned(),
        pricing_param: q.get("pricingParam").cloned(),
        serial_number: q.get("serialNumber").cloned(),
        client_user_id: q.get("clientUserId").cloned(),
        exclude_inactive_users: tri!(bool_param(&q, "excludeInactiveUsers")).unwrap_or(false),
        include_user_state: tri!(bool_param(&q, "includeUserState")).unwrap_or(false),
        since: q.get("sinceVersionId").cloned(),
    };
    let index = tri!(page_index(&q));
    page(
        &sim,
        &caller,
        Dataset::Assignments,
        |state, location, meta| {
            state
                .list_assignments(location, &filter, index)
                .map(|mut r| {
                    r.meta = meta;
                    r
                })
        },
    )
}

async fn get_users(sim: web::Data<Sim>, req: HttpRequest) -> HttpResponse {
    let caller = tri!(guard(&sim, &req));
    let q = query(&req);
    let filter = UserFilter {
        client_user_id: q.get("clientUserId").cloned(),
        active_only: tri!(bool_param(&q, "activeOnly")).unwrap_or(false),
        retired_only: tri!(bool_param(&q, "retiredOnly")).unwrap_or(false),
        since: q.get("sinceVersionId").cloned(),
    };
    let index = tri!(page_index(&q));
    page(&sim, &caller, Dataset::Users, |state, location, meta| {
        state.list_users(location, &filter, index).map(|mut r| {
            r.meta = meta;
            r
        })
    })
}

/// Accepts an event whose tasks `plan` computes, and answers its eventId.
fn accept_event(
    sim: &Sim,
    caller: &Caller,
    kind: EventType,
    plan: impl FnOnce(&State, &Location) -> Result<Vec<Task>, Refusal>,
) -> HttpResponse {
    let mut state = sim.lock();
    let tasks = {
        let Some(location) = state.locations.get(&caller.location) else {
            return missing_location();
        };
        match plan(&state, location) {
            Ok(tasks) => tasks,
            Err(refusal) => return refused(refusal),
        }
    };
    let event_id = state.submit(&caller.location, kind, tasks);
    let meta = state.meta(&state.locations[&caller.location], caller.exp_date);
    drop(state);
    sim.wake.notify_one();
    json(StatusCode::OK, &EventResponse { event_id, meta })
}

async fn manage_assets(
    sim: web::Data<Sim>,
    req: HttpRequest,
    body: Bytes,
    associate: bool,
) -> HttpResponse {
    let caller = tri!(guard(&sim, &req));
    let request: ManageAssetsRequest = tri!(json_body(&req, &body));
    let kind = if associate {
        EventType::Associate
    } else {
        EventType::Disassociate
    };
    accept_event(&sim, &caller, kind, |state, location| {
        state.manage_assets_tasks(location, &request, associate)
    })
}

async fn associate(sim: web::Data<Sim>, req: HttpRequest, body: Bytes) -> HttpResponse {
    manage_assets(sim, req, body, true).await
}

async fn disassociate(sim: web::Data<Sim>, req: HttpRequest, body: Bytes) -> HttpResponse {
    manage_assets(sim, req, body, false).await
}

async fn revoke(sim: web::Data<Sim>, req: HttpRequest, body: Bytes) -> HttpResponse {
    let caller = tri!(guard(&sim, &req));
    let request: RevokeAssetsRequest = tri!(json_body(&req, &body));
    accept_event(&sim, &caller, EventType::Revoke, |state, location| {
        state.revoke_tasks(location, &request)
    })
}

async fn manage_users(
    sim: web::Data<Sim>,
    req: HttpRequest,
    body: Bytes,
    kind: EventType,
) -> HttpResponse {
    let caller = tri!(guard(&sim, &req));
    let request: ManageUsersRequest = tri!(json_body(&req, &body));
    let planned_kind = kind.clone();
    accept_event(&sim, &caller, kind, move |state, _| {
        state.user_tasks(&request, &planned_kind)
    })
}

async fn create_users(sim: web::Data<Sim>, req: HttpRequest, body: Bytes) -> HttpResponse {
    manage_users(sim, req, body, EventType::Create).await
}

async fn update_users(sim: web::Data<Sim>, req: HttpRequest, body: Bytes) -> HttpResponse {
    manage_users(sim, req, body, EventType::Update).await
}

async fn retire_users(sim: web::Data<Sim>, req: HttpRequest, body: Bytes) -> HttpResponse {
    manage_users(sim, req, body, EventType::Retire).await
}

async fn status(sim: web::Data<Sim>, req: HttpRequest) -> HttpResponse {
    let caller = tri!(guard(&sim, &req));
    let q = query(&req);
    let Some(event_id) = q.get("eventId").filter(|e| !e.trim().is_empty()) else {
        return apple_error(codes::INVALID_ARGUMENT, None, ErrorInfo::default());
    };
    let state = sim.lock();
    let Some(location) = state.locations.get(&caller.location) else {
        return missing_location();
    };
    match state.status(location, event_id, caller.exp_date) {
        Some(status) => json(StatusCode::OK, &status),
        None => apple_error(codes::EVENT_NOT_FOUND, None, ErrorInfo::default()),
    }
}
