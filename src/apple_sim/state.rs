//! The simulator's state and every change to it (docs/apple.md, The simulator).
//!
//! One `State` behind one mutex: handlers lock, compute, unlock; nothing awaits while holding it.
//! Model:
//! - tokens: bearer text → location, expiry, status;
//! - locations (by uId): client config, assets with an `assigned` counter
//!   (`availableCount = max(0, total - assigned)`), assignments keyed by
//!   `(adamId, pricingParam, serial | clientUserId)` with the version that last touched them, user
//!   records (retired ones stay; at most one active record per clientUserId);
//! - one version counter per location and data set. A versionId is `<random prefix><counter hex>`,
//!   so ids of another location or data set are unknown (9721). Deltas (`sinceVersionId`) list
//!   records changed after that version; removed assignments do not appear in deltas (Apple
//!   documents no tombstones), a full read shows them gone;
//! - events: tasks are fixed at acceptance and run in submission order once due.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::notify::{DeliveryRecord, Outgoing};
use super::seed::{SeedAsset, SeedLocation, SeededLocation, TokenStatus};
use super::settings::{Dataset, FailRule, Faults, SimSettings, TokenExpirationMode};
use crate::apple::codes;
use crate::apple::dates;
use crate::apple::stoken::{SToken, build_stoken};
use crate::apple::types::*;

/// A task of an asynchronous event, fixed at acceptance.
pub(crate) enum Task {
    Associate(AssetKey, Target),
    Disassociate(AssetKey, Target),
    Create(RequestUser),
    Update(RequestUser),
    Retire(String),
}

pub(crate) struct Event {
    pub location: String,
    pub kind: EventType,
    pub tasks: Vec<Task>,
    pub due: Instant,
    pub done: bool,
    pub num_requested: i64,
    pub num_completed: i64,
    pub failures: Vec<ErrorResponse>,
}

/// Largest number of delivery records kept for `/_sim/notifications`.
const MAX_DELIVERY_RECORDS: usize = 10_000;

/// A synchronous refusal: Apple's error number and the entities concerned.
#[derive(Debug, Default)]
pub(crate) struct Refusal {
    pub number: i32,
    pub info: ErrorInfo,
}

impl Refusal {
    pub fn new(number: i32) -> Self {
        Refusal {
            number,
            info: ErrorInfo::default(),
        }
    }
}

pub(crate) struct TokenEntry {
    pub location: String,
    pub exp_date: DateTime<Utc>,
    pub status: TokenStatus,
}

/// Result of checking a bearer token.
pub(crate) enum AuthOutcome {
    Accepted {
        location: String,
        exp_date: DateTime<Utc>,
    },
    Refused {
        status: u16,
        number: i32,
    },
}

pub(crate) struct Version {
    prefix: String,
    current: u64,
}

impl Version {
    fn new() -> Self {
        let uuid = uuid::Uuid::new_v4().to_string();
        Version {
            prefix: uuid[..24].to_owned(),
            current: 1,
        }
    }

    pub fn id(&self) -> String {
        format!("{}{:012x}", self.prefix, self.current)
    }

    fn bump(&mut self) -> u64 {
        self.current += 1;
        self.current
    }

    /// The counter behind a versionId this data set issued.
    pub fn parse(&self, id: &str) -> Option<u64> {
        let n = u64::from_str_radix(id.strip_prefix(&self.prefix)?, 16).ok()?;
        (n <= self.current).then_some(n)
    }
}

pub(crate) struct AssetState {
    pub product_type: ProductType,
    pub device_assignable: bool,
    pub revocable: bool,
    pub platforms: Vec<Platform>,
    pub total: i64,
    pub retired: i64,
    pub assigned: i64,
    pub unlimited: bool,
}

impl AssetState {
    fn total(&self) -> i64 {
        if self.unlimited {
            UNLIMITED_COUNT
        } else {
            self.total
        }
    }

    pub fn available(&self) -> i64 {
        (self.total() - self.assigned).max(0)
    }
}

pub(crate) struct UserRecord {
    pub client_user_id: String,
    pub email: Option<String>,
    pub status: UserStatus,
    pub invite_code: Option<String>,
    pub id_hash: Option<String>,
    pub modified: u64,
}

impl UserRecord {
    pub fn view(&self) -> User {
        User {
            client_user_id: self.client_user_id.clone(),
            email: self.email.clone(),
            id_hash: self.id_hash.clone(),
            invite_code: self.invite_code.clone(),
            status: Some(self.status.clone()),
        }
    }
}

pub(crate) type AssetId = (String, String);
pub(crate) type AssignKey = (String, String, Target);

pub(crate) fn asset_id(key: &AssetKey) -> AssetId {
    (key.adam_id.clone(), key.pricing_param.as_str().to_owned())
}

pub(crate) struct Location {
    pub u_id: String,
    pub name: String,
    pub org_name: String,
    pub country: String,
    pub default_platform: String,
    pub website_url: String,
    pub mdm_info: Option<MdmInfo>,
    pub notification_url: Option<String>,
    pub notification_auth_token: Option<String>,
    pub notification_types: Vec<NotificationType>,
    pub assets: BTreeMap<AssetId, AssetState>,
    pub assignments: BTreeMap<AssignKey, u64>,
    pub users: Vec<UserRecord>,
    pub active_users: HashMap<String, usize>,
    pub versions: BTreeMap<Dataset, Version>,
}

pub(crate) fn assignment_view(key: &AssignKey) -> Assignment {
    let (adam_id, pricing, target) = key;
    let (serial_number, client_user_id) = match target {
        Target::SerialNumber(s) => (Some(s.clone()), None),
        Target::ClientUserId(u) => (None, Some(u.clone())),
    };
    Assignment {
        adam_id: adam_id.clone(),
        pricing_param: PricingParam::from(pricing.as_str()),
        serial_number,
        client_user_id,
        id_hash: None,
        user_status: None,
    }
}

pub(crate) fn id_hash(managed_apple_id: &str) -> String {
    let digest = Sha256::digest(managed_apple_id.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(&digest[..20])
}

fn invite_code() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Location {
    fn version_mut(&mut self, dataset: Dataset) -> &mut Version {
        self.versions.entry(dataset).or_insert_with(Version::new)
    }

    pub fn version(&self, dataset: Dataset) -> String {
        self.versions
            .get(&dataset)
            .map(Version::id)
            .unwrap_or_default()
    }

    pub fn bump(&mut self, dataset: Dataset) -> u64 {
        self.version_mut(dataset).bump()
    }

    pub fn parse_version(&self, dataset: Dataset, id: &str) -> Option<u64> {
        self.versions.get(&dataset).and_then(|v| v.parse(id))
    }

    pub fn active_user(&self, client_user_id: &str) -> Option<&UserRecord> {
        self.active_users
            .get(client_user_id)
            .and_then(|i| self.users.get(*i))
    }

    pub fn asset(&self, key: &AssetKey) -> Option<&AssetState> {
        self.assets.get(&asset_id(key))
    }

    pub fn asset_view(&self, id: &AssetId, state: &AssetState, with_counts: bool) -> Asset {
        Asset {
            adam_id: id.0.clone(),
            pricing_param: PricingParam::from(id.1.as_str()),
            product_type: Some(state.product_type.clone()),
            assigned_count: with_counts.then_some(state.assigned),
            available_count: with_counts.then_some(state.available()),
            total_count: with_counts.then_some(state.total()),
            retired_count: with_counts.then_some(state.retired),
            device_assignable: Some(state.device_assignable),
            revocable: Some(state.revocable),
            supported_platforms: state.platforms.clone(),
        }
    }

    fn add_asset(&mut self, seed: &SeedAsset) -> Result<(), String> {
        if seed.adam_id.trim().is_empty() {
            return Err("an asset has an empty adamId".into());
        }
        let id = (seed.adam_id.clone(), seed.pricing_param.as_str().to_owned());
        if self.assets.contains_key(&id) {
            return Err(format!(
                "asset {}/{} is listed twice in location {}",
                id.0, id.1, self.u_id
            ));
        }
        if seed.total_count < 0 || seed.retired_count < 0 {
            return Err(format!("asset {} has a negative count", id.0));
        }
        let product_type = seed.product_type.clone().unwrap_or(ProductType::App);
        let is_book = product_type == ProductType::Book;
        self.assets.insert(
            id,
            AssetState {
                device_assignable: seed.device_assignable.unwrap_or(!is_book),
                revocable: seed.revocable.unwrap_or(!is_book),
                platforms: seed.supported_platforms.clone().unwrap_or_else(|| {
                    if is_book {
                        vec![Platform::Ios, Platform::MacOs]
                    } else {
                        vec![Platform::Ios]
                    }
                }),
                product_type,
                total: seed.total_count,
                retired: seed.retired_count,
                assigned: 0,
                unlimited: seed.unlimited,
            },
        );
        self.bump(Dataset::Assets);
        Ok(())
    }

    pub fn add_user(
        &mut self,
        client_user_id: &str,
        email: Option<String>,
        managed: Option<&str>,
    ) -> usize {
        let modified = self.bump(Dataset::Users);
        let (status, invite, hash) = match managed {
            Some(m) => (UserStatus::Associated, None, Some(id_hash(m))),
            None => (UserStatus::Registered, Some(invite_code()), None),
        };
        self.users.push(UserRecord {
            client_user_id: client_user_id.to_owned(),
            email,
            status,
            invite_code: invite,
            id_hash: hash,
            modified,
        });
        let index = self.users.len() - 1;
        self.active_users.insert(client_user_id.to_owned(), index);
        index
    }

    /// Adds an assignment; `Err(number)` when it cannot be held.
    pub fn assign(&mut self, key: &AssetKey, target: &Target) -> Result<(), i32> {
        if let Target::ClientUserId(user) = target
            && !self.active_users.contains_key(user)
        {
            return Err(codes::USER_NOT_FOUND);
        }
        let id = asset_id(key);
        let akey = (id.0.clone(), id.1.clone(), target.clone());
        if self.assignments.contains_key(&akey) {
            return Ok(());
        }
        let Some(asset) = self.assets.get_mut(&id) else {
            return Err(codes::INVALID_ARGUMENT);
        };
        if asset.available() <= 0 {
            return Err(codes::NOT_ENOUGH_LICENSES);
        }
        asset.assigned += 1;
        let version = self.bump(Dataset::Assignments);
        self.assignments.insert(akey, version);
        self.bump(Dataset::Assets);
        Ok(())
    }

    /// Removes an assignment if present (success either way); `true` when it was there.
    pub fn unassign(&mut self, key: &AssetKey, target: &Target) -> bool {
        let id = asset_id(key);
        let akey = (id.0.clone(), id.1.clone(), target.clone());
        if self.assignments.remove(&akey).is_none() {
            return false;
        }
        if let Some(asset) = self.assets.get_mut(&id) {
            asset.assigned = (asset.assigned - 1).max(0);
        }
        self.bump(Dataset::Assignments);
        self.bump(Dataset::Assets);
        true
    }

    /// Adds assignments (seeding, admin), stopping at the first that cannot be held.
    fn assign_all(&mut self, wanted: &[(AssetKey, Target)]) -> Result<(), String> {
        for (key, target) in wanted {
            self.assign(key, target).map_err(|n| match n {
                codes::NOT_ENOUGH_LICENSES => {
                    format!("asset {} has fewer licenses than assignments", key.adam_id)
                }
                codes::USER_NOT_FOUND => {
                    format!("assignment to an unknown or retired user {target:?}")
                }
                _ => format!("assignment of unknown asset {}", key.adam_id),
            })?;
        }
        Ok(())
    }

    /// Every revocable assignment a target holds.
    pub fn revocable_of(&self, target: &Target) -> Vec<AssetKey> {
        self.assignments
            .keys()
            .filter(|(_, _, t)| t == target)
            .filter(|(adam, pricing, _)| {
                self.assets
                    .get(&(adam.clone(), pricing.clone()))
                    .is_some_and(|a| a.revocable)
            })
            .map(|(adam, pricing, _)| {
                AssetKey::new(adam.clone(), PricingParam::from(pricing.as_str()))
            })
            .collect()
    }

    fn subscribed(&self, kind: &NotificationType) -> Option<(String, String)> {
        if !self.notification_types.contains(kind) {
            return None;
        }
        Some((
            self.notification_url.clone()?,
            self.notification_auth_token.clone()?,
        ))
    }

    pub fn notification(
        &self,
        kind: NotificationType,
        payload: serde_json::Value,
    ) -> Option<Outgoing> {
        let (url, auth_token) = self.subscribed(&kind)?;
        Some(Outgoing {
            url,
            auth_token,
            envelope: NotificationEnvelope {
                notification_id: uuid::Uuid::new_v4().to_string(),
                notification_type: kind,
                u_id: Some(self.u_id.clone()),
                notification: payload,
            },
        })
    }
}

/// Everything the simulator knows.
pub(crate) struct State {
    pub settings: SimSettings,
    pub faults: Faults,
    pub tokens: HashMap<String, TokenEntry>,
    pub locations: BTreeMap<String, Location>,
    pub events: HashMap<String, Event>,
    pub queue: VecDeque<String>,
    pub counters: BTreeMap<String, u64>,
    pub rate: HashMap<String, VecDeque<Instant>>,
    pub deliveries: VecDeque<DeliveryRecord>,
    next_uid: u64,
}

/// A token's state as the admin API shows it (no token text).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenSnapshot {
    /// `SToken::fingerprint` of the token.
    pub fingerprint: String,
    pub status: TokenStatus,
    #[serde(with = "dates::required")]
    pub exp_date: DateTime<Utc>,
}

/// The full state of a location (`GET /_sim/locations/{uId}`), for assertions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocationSnapshot {
    pub u_id: String,
    pub name: String,
    pub org_name: String,
    pub country: String,
    #[serde(default)]
    pub mdm_info: Option<MdmInfo>,
    #[serde(default)]
    pub notification_url: Option<String>,
    #[serde(default)]
    pub notification_types: Vec<NotificationType>,
    pub tokens: Vec<TokenSnapshot>,
    pub assets: Vec<Asset>,
    pub assignments: Vec<Assignment>,
    pub users: Vec<User>,
    pub versions: BTreeMap<Dataset, String>,
}

impl State {
    pub fn new(settings: SimSettings) -> Self {
        State {
            settings,
            faults: Faults::default(),
            tokens: HashMap::new(),
            locations: BTreeMap::new(),
            events: HashMap::new(),
            queue: VecDeque::new(),
            counters: BTreeMap::new(),
            rate: HashMap::new(),
            deliveries: VecDeque::new(),
            next_uid: 0,
        }
    }

    /// Adds a location from its seed and mints its first token.
    pub fn add_location(&mut self, seed: &SeedLocation) -> Result<SeededLocation, String> {
        let u_id = match &seed.u_id {
            Some(u) if !u.is_empty() && u.bytes().all(|b| b.is_ascii_digit()) => u.clone(),
            Some(u) => return Err(format!("uId {u:?} must be digits")),
            None => loop {
                self.next_uid += 1;
                let candidate = (9_100_000_000_000_000 + self.next_uid).to_string();
                if !self.locations.contains_key(&candidate) {
                    break candidate;
                }
            },
        };
        if self.locations.contains_key(&u_id) {
            return Err(format!("location {u_id} exists already"));
        }
        if seed.name.trim().is_empty() {
            return Err("a location needs a name".into());
        }
        let mut location = Location {
            u_id: u_id.clone(),
            name: seed.name.clone(),
            org_name: seed.org_name.clone().unwrap_or_else(|| seed.name.clone()),
            country: seed.country.clone().unwrap_or_else(|| "US".into()),
            default_platform: seed
                .default_platform
                .clone()
                .unwrap_or_else(|| "volumestore".into()),
            website_url: seed
                .website_url
                .clone()
                .unwrap_or_else(|| "https://business.apple.com".into()),
            mdm_info: seed.mdm_info.clone(),
            notification_url: None,
            notification_auth_token: None,
            notification_types: Vec::new(),
            assets: BTreeMap::new(),
            assignments: BTreeMap::new(),
            users: Vec::new(),
            active_users: HashMap::new(),
            versions: [Dataset::Assets, Dataset::Assignments, Dataset::Users]
                .into_iter()
                .map(|d| (d, Version::new()))
                .collect(),
        };
        for asset in &seed.assets {
            location.add_asset(asset)?;
        }
        for user in &seed.users {
            if location.active_users.contains_key(&user.client_user_id) {
                return Err(format!("user {} is listed twice", user.client_user_id));
            }
            let index = location.add_user(
                &user.client_user_id,
                user.email.clone(),
                user.managed_apple_id.as_deref(),
            );
            if user.retired {
                location.users[index].status = UserStatus::Retired;
                location.active_users.remove(&user.client_user_id);
            }
        }
        let mut wanted: Vec<(AssetKey, Target)> = Vec::new();
        for a in &seed.assignments {
            let target = match (&a.serial_number, &a.client_user_id) {
                (Some(s), None) => Target::SerialNumber(s.clone()),
                (None, Some(u)) => Target::ClientUserId(u.clone()),
                _ => {
                    return Err(format!(
                        "assignment of {} needs exactly one of serialNumber and clientUserId",
                        a.adam_id
                    ));
                }
            };
            wanted.push((
                AssetKey::new(a.adam_id.clone(), a.pricing_param.clone()),
                target,
            ));
        }
        for g in &seed.generated_assignments {
            for i in 0..g.count {
                wanted.push((
                    AssetKey::new(g.adam_id.clone(), g.pricing_param.clone()),
                    Target::SerialNumber(format!("{}{i:06}", g.serial_prefix)),
                ));
            }
        }
        location.assign_all(&wanted)?;
        let exp_date = match &seed.token_exp_date {
            Some(text) => {
                dates::parse(text).ok_or_else(|| format!("tokenExpDate {text:?} is not a date"))?
            }
            None => Utc::now() + chrono::Duration::days(365),
        };
        let name = location.name.clone();
        let org = location.org_name.clone();
        self.locations.insert(u_id.clone(), location);
        let token = self.mint_token(
            &u_id,
            &org,
            seed.token.as_deref(),
            exp_date,
            seed.token_status,
        );
        Ok(SeededLocation {
            u_id,
            name,
            s_token: token.expose().to_owned(),
        })
    }

    /// Mints an sToken for a location (base64 of `{token, expDate, orgName}`).
    pub fn mint_token(
        &mut self,
        u_id: &str,
        org_name: &str,
        inner: Option<&str>,
        exp_date: DateTime<Utc>,
        status: TokenStatus,
    ) -> SToken {
        let inner = inner.map_or_else(
            || {
                let a = uuid::Uuid::new_v4().simple().to_string();
                let b = uuid::Uuid::new_v4().simple().to_string();
                base64::engine::general_purpose::STANDARD.encode(format!("{a}{b}"))
            },
            str::to_owned,
        );
        let token = build_stoken(&inner, exp_date, org_name);
        self.tokens.insert(
            token.expose().to_owned(),
            TokenEntry {
                location: u_id.to_owned(),
                exp_date,
                status,
            },
        );
        token
    }

    pub fn authenticate(&self, bearer: &str) -> AuthOutcome {
        let invalid = AuthOutcome::Refused {
            status: self.settings.invalid_token_status,
            number: codes::TOKEN_INVALID,
        };
        let Some(entry) = self.tokens.get(bearer) else {
            return invalid;
        };
        match entry.status {
            TokenStatus::Invalid => invalid,
            TokenStatus::Revoked => AuthOutcome::Refused {
                status: 401,
                number: codes::TOKEN_REVOKED,
            },
            TokenStatus::Expired => AuthOutcome::Refused {
                status: 401,
                number: codes::TOKEN_EXPIRED,
            },
            TokenStatus::Valid if entry.exp_date <= Utc::now() => AuthOutcome::Refused {
                status: 401,
                number: codes::TOKEN_EXPIRED,
            },
            TokenStatus::Valid => AuthOutcome::Accepted {
                location: entry.location.clone(),
                exp_date: entry.exp_date,
            },
        }
    }

    /// Sliding one-second window per token; `false` when the request is over the limit.
    pub fn admit(&mut self, bearer: &str, now: Instant) -> bool {
        let limit = self.settings.limit("maxRequestPerSecond");
        if limit == 0 {
            return true;
        }
        let window = self.rate.entry(bearer.to_owned()).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            window.pop_front();
        }
        if window.len() >= limit {
            return false;
        }
        window.push_back(now);
        true
    }

    /// Takes one request from the first matching "fail next" rule.
    /// `endpoint`: the request's path after `/mdm/v2/`.
    pub fn take_fail_rule(&mut self, location: Option<&str>, endpoint: &str) -> Option<FailRule> {
        let index = self.faults.fail_next.iter().position(|r| {
            r.count > 0
                && r.location.as_deref().is_none_or(|l| Some(l) == location)
                && r.endpoint
                    .as_deref()
                    .is_none_or(|e| e.trim_matches('/') == endpoint)
        })?;
        let rule = &mut self.faults.fail_next[index];
        if rule.after > 0 {
            rule.after -= 1;
            return None;
        }
        rule.count -= 1;
        let taken = rule.clone();
        self.faults.fail_next.retain(|r| r.count > 0);
        Some(taken)
    }

    /// Applies a matching version-churn rule after a read of `dataset`.
    pub fn churn(&mut self, location: &str, dataset: Dataset) {
        let Some(rule) = self.faults.version_churn.iter_mut().find(|r| {
            r.count > 0
                && r.dataset == dataset
                && r.location.as_deref().is_none_or(|l| l == location)
        }) else {
            return;
        };
        rule.count -= 1;
        self.faults.version_churn.retain(|r| r.count > 0);
        if let Some(loc) = self.locations.get_mut(location) {
            loc.bump(dataset);
        }
    }

    /// The metadata (`uId`, `tokenExpirationDate`, `mdmInfo`) of a response.
    pub fn meta(&self, location: &Location, exp_date: DateTime<Utc>) -> ResponseMeta {
        let show_expiry = match self.settings.token_expiration_date {
            TokenExpirationMode::Always => true,
            TokenExpirationMode::Within15Days => {
                exp_date - Utc::now() <= chrono::Duration::days(15)
            }
        };
        ResponseMeta {
            u_id: Some(location.u_id.clone()),
            token_expiration_date: show_expiry.then_some(exp_date),
            mdm_info: location.mdm_info.clone(),
        }
    }

    pub fn client_config(&self, location: &Location, exp_date: DateTime<Utc>) -> ClientConfig {
        ClientConfig {
            location_name: Some(location.name.clone()),
            country_iso2a_code: Some(location.country.clone()),
            default_platform: Some(location.default_platform.clone()),
            website_url: Some(location.website_url.clone()),
            notification_url: location.notification_url.clone(),
            notification_auth_token: location
                .notification_auth_token
                .clone()
                .map(NotificationAuthToken::new),
            subscribed_notification_types: location.notification_types.clone(),
            meta: self.meta(location, exp_date),
        }
    }

    /// Admin: adds assignments to a location.
    pub fn add_assignments(
        &mut self,
        u_id: &str,
        wanted: &[(AssetKey, Target)],
    ) -> Result<(), String> {
        let location = self.locations.get_mut(u_id).ok_or("unknown location")?;
        location.assign_all(wanted)
    }

    /// Admin: removes assignments behind the service's back (another MDM or an admin revoking
    /// in Apple Business Manager); returns how many were there. Every asset must exist (a typo
    /// in a test shows); absent assignments are skipped. Each removal bumps the assignments'
    /// and the assets' versionIds; removed assignments never appear in a delta.
    pub fn remove_assignments(
        &mut self,
        u_id: &str,
        wanted: &[(AssetKey, Target)],
    ) -> Result<usize, String> {
        let location = self.locations.get_mut(u_id).ok_or("unknown location")?;
        if let Some((key, _)) = wanted.iter().find(|(key, _)| location.asset(key).is_none()) {
            return Err(format!(
                "removal of an assignment of unknown asset {}",
                key.adam_id
            ));
        }
        Ok(wanted
            .iter()
            .filter(|(key, target)| location.unassign(key, target))
            .count())
    }

    /// Admin: set an asset's total (purchase/refund); returns the delta and the ASSET_COUNT
    /// notification when it changed.
    pub fn set_asset_total(
        &mut self,
        u_id: &str,
        key: &AssetKey,
        total: i64,
    ) -> Result<(i64, Option<Outgoing>), String> {
        if total < 0 {
            return Err("totalCount must not be negative".into());
        }
        let location = self.locations.get_mut(u_id).ok_or("unknown location")?;
        let asset = location
            .assets
            .get_mut(&asset_id(key))
            .ok_or("unknown asset")?;
        let delta = total - asset.total;
        asset.total = total;
        if delta == 0 {
            return Ok((0, None));
        }
        location.bump(Dataset::Assets);
        let payload = serde_json::to_value(AssetCountNotification {
            adam_id: key.adam_id.clone(),
            pricing_param: key.pricing_param.clone(),
            count_delta: delta,
        })
        .unwrap_or_default();
        Ok((
            delta,
            location.notification(NotificationType::AssetCount, payload),
        ))
    }

    /// Admin: adds assets to a location (a purchase of content it did not have), with an
    /// ASSET_COUNT notification (`countDelta` = the licenses bought) for each asset with a
    /// limited, non-zero total. Apple documents ASSET_COUNT for "the count of assets changes";
    /// that a first purchase sends one is inferred. All or nothing: a bad asset adds none.
    pub fn add_assets(
        &mut self,
        u_id: &str,
        assets: &[SeedAsset],
    ) -> Result<Vec<Outgoing>, String> {
        let location = self.locations.get_mut(u_id).ok_or("unknown location")?;
        let mut seen = std::collections::BTreeSet::new();
        for asset in assets {
            if asset.adam_id.trim().is_empty() || asset.total_count < 0 || asset.retired_count < 0 {
                return Err(format!(
                    "asset {:?} needs an adamId and counts that are not negative",
                    asset.adam_id
                ));
            }
            let id = (
                asset.adam_id.clone(),
                asset.pricing_param.as_str().to_owned(),
            );
            if location.assets.contains_key(&id) || !seen.insert(id) {
                return Err(format!(
                    "asset {}/{} exists already or is listed twice",
                    asset.adam_id, asset.pricing_param
                ));
            }
        }
        let mut outgoing = Vec::new();
        for asset in assets {
            location.add_asset(asset)?;
            if asset.unlimited || asset.total_count == 0 {
                continue;
            }
            let payload = serde_json::to_value(AssetCountNotification {
                adam_id: asset.adam_id.clone(),
                pricing_param: asset.pricing_param.clone(),
                count_delta: asset.total_count,
            })
            .unwrap_or_default();
            outgoing.extend(location.notification(NotificationType::AssetCount, payload));
        }
        Ok(outgoing)
    }

    /// Admin: the user accepts the invitation; USER_ASSOCIATED.
    pub fn accept_invitation(
        &mut self,
        u_id: &str,
        client_user_id: &str,
    ) -> Result<Option<Outgoing>, String> {
        let location = self.locations.get_mut(u_id).ok_or("unknown location")?;
        let index = *location
            .active_users
            .get(client_user_id)
            .ok_or("no active user with that clientUserId")?;
        let modified = location.bump(Dataset::Users);
        let record = &mut location.users[index];
        record.status = UserStatus::Associated;
        record.id_hash = Some(id_hash(&format!(
            "{}@appleid.example",
            record.client_user_id
        )));
        record.modified = modified;
        let payload = serde_json::to_value(UserAssociatedNotification {
            associated_users: vec![record.view()],
        })
        .unwrap_or_default();
        Ok(location.notification(NotificationType::UserAssociated, payload))
    }

    /// Admin: the full state of a location.
    pub fn snapshot(&self, u_id: &str) -> Option<LocationSnapshot> {
        let location = self.locations.get(u_id)?;
        let mut tokens: Vec<TokenSnapshot> = self
            .tokens
            .iter()
            .filter(|(_, t)| t.location == u_id)
            .map(|(text, t)| TokenSnapshot {
                fingerprint: SToken::new(text).fingerprint(),
                status: t.status,
                exp_date: t.exp_date,
            })
            .collect();
        tokens.sort_by(|a, b| {
            a.exp_date
                .cmp(&b.exp_date)
                .then(a.fingerprint.cmp(&b.fingerprint))
        });
        Some(LocationSnapshot {
            u_id: location.u_id.clone(),
            name: location.name.clone(),
            org_name: location.org_name.clone(),
            country: location.country.clone(),
            mdm_info: location.mdm_info.clone(),
            notification_url: location.notification_url.clone(),
            notification_types: location.notification_types.clone(),
            tokens,
            assets: location
                .assets
                .iter()
                .map(|(id, a)| location.asset_view(id, a, true))
                .collect(),
            assignments: location.assignments.keys().map(assignment_view).collect(),
            users: location.users.iter().map(UserRecord::view).collect(),
            versions: location
                .versions
                .iter()
                .map(|(d, v)| (*d, v.id()))
                .collect(),
        })
    }

    pub fn record_delivery(&mut self, record: DeliveryRecord) {
        if self.deliveries.len() >= MAX_DELIVERY_RECORDS {
            self.deliveries.pop_front();
        }
        self.deliveries.push_back(record);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::apple_sim::seed::SeedUser;

    /// A state with one location owning `total` licenses of app "1" and one user "u1"; returns
    /// the location's id too. Shared by the simulator's unit tests.
    pub(crate) fn location_with(total: i64) -> (State, String) {
        let mut state = State::new(SimSettings::default());
        let seeded = state
            .add_location(&SeedLocation {
                name: "Test".into(),
                assets: vec![SeedAsset {
                    adam_id: "1".into(),
                    total_count: total,
                    ..Default::default()
                }],
                users: vec![SeedUser {
                    client_user_id: "u1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .unwrap();
        (state, seeded.u_id)
    }

    #[test]
    fn versions_are_per_data_set_and_reject_foreign_ids() {
        let (mut state, u_id) = location_with(1);
        let loc = state.locations.get_mut(&u_id).unwrap();
        let v1 = loc.version(Dataset::Assignments);
        assert_eq!(loc.parse_version(Dataset::Assignments, &v1), Some(1));
        loc.bump(Dataset::Assignments);
        assert_ne!(loc.version(Dataset::Assignments), v1);
        assert_eq!(loc.parse_version(Dataset::Users, &v1), None);
        assert_eq!(loc.parse_version(Dataset::Assignments, "nonsense"), None);
    }
}
