//! serde types of Apple's license API v2 (Apple's objects, named in docs/apple.md), shared by the
//! client and the simulator so both speak exactly the same JSON.
//!
//! Decisions:
//! - JSON is camelCase; Apple's odd spellings (`countryISO2ACode`, `websiteURL`) are renamed
//!   explicitly.
//! - Every response field is optional or defaulted and unknown fields are ignored: Apple adds fields
//!   (`unlimitedAssets`, `idHash`, `userStatus` appeared in 2026 docs).
//! - Enums are *open*: an unknown value becomes `Other(text)` instead of failing the response, and
//!   serializes back unchanged.
//! - Every response carries [`ResponseMeta`] (`uId`, `tokenExpirationDate`, `mdmInfo`), flattened
//!   into the `meta` field of each response type.
//! - `tokenExpirationDate` is optional (docs/apple.md conflict #1: docs say "only within 15 days",
//!   examples always have it).
//! - `pricingParam` defaults to `STDQ` when absent (conflict #12); the client always sends it.
//! - Counts are `i64` (`totalCount` is `2147483647` for unlimited free assets).
//! - The notification auth token is a [`NotificationAuthToken`], which never prints.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::dates;

/// `totalCount` Apple reports for unlimited free assets.
pub const UNLIMITED_COUNT: i64 = i32::MAX as i64;

macro_rules! open_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A value this build does not know (kept verbatim).
            Other(String),
        }

        impl $name {
            /// Apple's spelling.
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $text, )+
                    $name::Other(text) => text,
                }
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                match text {
                    $( $text => $name::$variant, )+
                    other => $name::Other(other.to_owned()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Ok($name::from(text.as_str()))
            }
        }
    };
}

open_enum! {
    /// License quality: standard or plus (`STDQ` when Apple omits it).
    #[derive(Default)]
    PricingParam { #[default] Stdq = "STDQ", Plus = "PLUS" }
}

open_enum! {
    /// Kind of product.
    ProductType { App = "App", Book = "Book" }
}

open_enum! {
    /// Platforms an asset supports.
    Platform { Ios = "iOS", MacOs = "macOS", TvOs = "tvOS", WatchOs = "watchOS", VisionOs = "visionOS" }
}

open_enum! {
    /// State of an asynchronous event.
    EventStatus { Pending = "PENDING", Complete = "COMPLETE", Failed = "FAILED" }
}

open_enum! {
    /// Kind of asynchronous event (also the `type` of management notifications).
    EventType {
        Associate = "ASSOCIATE",
        Disassociate = "DISASSOCIATE",
        Revoke = "REVOKE",
        Create = "CREATE",
        Update = "UPDATE",
        Retire = "RETIRE",
    }
}

open_enum! {
    /// State of an Apple user record.
    UserStatus { Registered = "Registered", Associated = "Associated", Retired = "Retired", Deleted = "Deleted" }
}

open_enum! {
    /// Notification types (subscription and envelope).
    NotificationType {
        AssetManagement = "ASSET_MANAGEMENT",
        AssetCount = "ASSET_COUNT",
        UserManagement = "USER_MANAGEMENT",
        UserAssociated = "USER_ASSOCIATED",
        TestNotification = "TEST_NOTIFICATION",
        SubscriptionManagement = "SUBSCRIPTION_MANAGEMENT",
        SubscriptionCount = "SUBSCRIPTION_COUNT",
        UnlimitedAsset = "UNLIMITED_ASSET",
    }
}

open_enum! {
    /// Outcome carried by a management notification.
    NotificationResult { Success = "SUCCESS", Failure = "FAILURE" }
}

/// Metadata present in (almost) every authenticated response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseMeta {
    /// Library id; several tokens can share one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u_id: Option<String>,
    /// Token expiry (conflict #1: optional).
    #[serde(
        default,
        with = "dates::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub token_expiration_date: Option<DateTime<Utc>>,
    /// Which MDM claimed the token, once one has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mdm_info: Option<MdmInfo>,
}

/// An MDM's identity written into the token's client config (Apple's `MdmInfo`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MdmInfo {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub metadata: String,
}

/// The shared secret Apple sends back in `Authorization: Bearer …` of notifications. Kept in a
/// [`SecretString`]: never printed; [`expose`](Self::expose) gives the text.
#[derive(Clone, Debug)]
pub struct NotificationAuthToken(SecretString);

impl NotificationAuthToken {
    pub fn new(text: impl Into<String>) -> Self {
        NotificationAuthToken(SecretString::from(text.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl PartialEq for NotificationAuthToken {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for NotificationAuthToken {}

/// Sent to Apple as the plain string (the client config's `notificationAuthToken`).
impl Serialize for NotificationAuthToken {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.expose())
    }
}

impl<'de> Deserialize<'de> for NotificationAuthToken {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(NotificationAuthToken::new)
    }
}

/// One entry of the service config's `errorCodes`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorCode {
    #[serde(default)]
    pub error_number: Option<i32>,
    #[serde(default)]
    pub error_message: Option<String>,
}

/// `GET /service/config` (Apple's `ServiceConfigResponse`). Limits are an open map; the accessors
/// fall back to the documented defaults when Apple omits a limit or sends a non-positive one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceConfig {
    #[serde(default)]
    pub error_codes: Vec<ErrorCode>,
    #[serde(default)]
    pub limits: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub notification_types: Vec<NotificationType>,
    #[serde(default)]
    pub urls: BTreeMap<String, String>,
}

impl ServiceConfig {
    /// Documented defaults (2026 docs), used when a limit is missing.
    pub const DEFAULT_MAX_ASSETS: usize = 25;
    pub const DEFAULT_MAX_SERIAL_NUMBERS: usize = 1000;
    pub const DEFAULT_MAX_CLIENT_USER_IDS: usize = 1000;
    pub const DEFAULT_MAX_REVOKE_SERIAL_NUMBERS: usize = 100;
    pub const DEFAULT_MAX_REVOKE_CLIENT_USER_IDS: usize = 100;
    pub const DEFAULT_MAX_USERS: usize = 100;
    pub const DEFAULT_MAX_REQUEST_PER_SECOND: usize = 15;
    pub const DEFAULT_MAX_NOTIFICATION_LENGTH: usize = 512;
    pub const DEFAULT_MAX_MDM_ID_LENGTH: usize = 100;
    pub const DEFAULT_MAX_MDM_NAME_LENGTH: usize = 100;
    pub const DEFAULT_MAX_MDM_METADATA_LENGTH: usize = 255;

    /// A limit as Apple sent it, if it is an integer.
    pub fn limit(&self, name: &str) -> Option<i64> {
        self.limits.get(name).and_then(serde_json::Value::as_i64)
    }

    fn positive_limit(&self, name: &str, default: usize) -> usize {
        self.limit(name)
            .filter(|n| *n > 0)
            .map_or(default, |n| usize::try_from(n).unwrap_or(default))
    }

    /// Assets per associate/disassociate (`maxAssets`, default 25).
    pub fn max_assets(&self) -> usize {
        self.positive_limit("maxAssets", Self::DEFAULT_MAX_ASSETS)
    }
    /// Serial numbers per associate/disassociate (`maxSerialNumbers`, default 1000).
    pub fn max_serial_numbers(&self) -> usize {
        self.positive_limit("maxSerialNumbers", Self::DEFAULT_MAX_SERIAL_NUMBERS)
    }
    /// clientUserIds per associate/disassociate (`maxClientUserIds`, default 1000).
    pub fn max_client_user_ids(&self) -> usize {
        self.positive_limit("maxClientUserIds", Self::DEFAULT_MAX_CLIENT_USER_IDS)
    }
    /// Serial numbers per revoke (`maxRevokeSerialNumbers`, default 100).
    pub fn max_revoke_serial_numbers(&self) -> usize {
        self.positive_limit(
            "maxRevokeSerialNumbers",
            Self::DEFAULT_MAX_REVOKE_SERIAL_NUMBERS,
        )
    }
    /// clientUserIds per revoke (`maxRevokeClientUserIds`, default 100).
    pub fn max_revoke_client_user_ids(&self) -> usize {
        self.positive_limit(
            "maxRevokeClientUserIds",
            Self::DEFAULT_MAX_REVOKE_CLIENT_USER_IDS,
        )
    }
    /// Users per create/update/retire (`maxUsers`, default 100).
    pub fn max_users(&self) -> usize {
        self.positive_limit("maxUsers", Self::DEFAULT_MAX_USERS)
    }
    /// Requests per second per token (`maxRequestPerSecond`, default 15).
    pub fn max_request_per_second(&self) -> usize {
        self.positive_limit("maxRequestPerSecond", Self::DEFAULT_MAX_REQUEST_PER_SECOND)
    }
    /// Length of the notification URL and auth token (`maxNotificationLength`, default 512).
    pub fn max_notification_length(&self) -> usize {
        self.positive_limit(
            "maxNotificationLength",
            Self::DEFAULT_MAX_NOTIFICATION_LENGTH,
        )
    }
    /// `mdmInfo.id` length (`maxMdmIdLength`, default 100).
    pub fn max_mdm_id_length(&self) -> usize {
        self.positive_limit("maxMdmIdLength", Self::DEFAULT_MAX_MDM_ID_LENGTH)
    }
    /// `mdmInfo.name` length (`maxMdmNameLength`, default 100).
    pub fn max_mdm_name_length(&self) -> usize {
        self.positive_limit("maxMdmNameLength", Self::DEFAULT_MAX_MDM_NAME_LENGTH)
    }
    /// `mdmInfo.metadata` length (`maxMdmMetadataLength`, default 255).
    pub fn max_mdm_metadata_length(&self) -> usize {
        self.positive_limit(
            "maxMdmMetadataLength",
            Self::DEFAULT_MAX_MDM_METADATA_LENGTH,
        )
    }
}

/// `GET`/`POST /client/config` response (Apple's `ClientConfigResponse`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_name: Option<String>,
    #[serde(
        rename = "countryISO2ACode",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub country_iso2a_code: Option<String>,
    /// `volumestore` or `enterprisestore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_platform: Option<String>,
    /// `https://school.apple.com` or `https://business.apple.com`.
    #[serde(
        rename = "websiteURL",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub website_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_url: Option<String>,
    /// Apple echoes it in clear; it never prints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_auth_token: Option<NotificationAuthToken>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribed_notification_types: Vec<NotificationType>,
    #[serde(flatten)]
    pub meta: ResponseMeta,
}

/// `POST /client/config` body (Apple's `ClientConfigRequest`). Absent fields are not sent.
/// `notification_types` is the complete set (it replaces the previous subscription).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientConfigRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mdm_info: Option<MdmInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_types: Option<Vec<NotificationType>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_auth_token: Option<NotificationAuthToken>,
}

/// Request-side identity of a product: `(adamId, pricingParam)` (Apple's `Asset`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssetKey {
    #[serde(default)]
    pub adam_id: String,
    #[serde(default)]
    pub pricing_param: PricingParam,
}

impl AssetKey {
    pub fn new(adam_id: impl Into<String>, pricing_param: PricingParam) -> Self {
        AssetKey {
            adam_id: adam_id.into(),
            pricing_param,
        }
    }

    /// The usual `STDQ` asset.
    pub fn stdq(adam_id: impl Into<String>) -> Self {
        Self::new(adam_id, PricingParam::Stdq)
    }
}

/// An owned asset with its counts (Apple's `ResponseAsset`). Unlimited assets returned in
/// `unlimitedAssets` have no counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Asset {
    #[serde(default)]
    pub adam_id: String,
    #[serde(default)]
    pub pricing_param: PricingParam,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_type: Option<ProductType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_assignable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocable: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supported_platforms: Vec<Platform>,
}

/// Apple's name for [`Asset`].
pub type ResponseAsset = Asset;

impl Asset {
    pub fn key(&self) -> AssetKey {
        AssetKey::new(self.adam_id.clone(), self.pricing_param.clone())
    }

    /// Unlimited free asset (`totalCount` 2147483647).
    pub fn is_unlimited(&self) -> bool {
        self.total_count == Some(UNLIMITED_COUNT)
    }
}

/// Who holds an assignment.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    SerialNumber(String),
    ClientUserId(String),
}

/// One license held by one device or user (Apple's `Assignment`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    #[serde(default)]
    pub adam_id: String,
    #[serde(default)]
    pub pricing_param: PricingParam,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_user_id: Option<String>,
    /// Only with `includeUserState=true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_hash: Option<String>,
    /// Only with `includeUserState=true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_status: Option<UserStatus>,
}

impl Assignment {
    pub fn key(&self) -> AssetKey {
        AssetKey::new(self.adam_id.clone(), self.pricing_param.clone())
    }

    /// The device or user holding it (`None` if Apple sent neither).
    pub fn target(&self) -> Option<Target> {
        match (&self.serial_number, &self.client_user_id) {
            (Some(serial), _) => Some(Target::SerialNumber(serial.clone())),
            (None, Some(user)) => Some(Target::ClientUserId(user.clone())),
            (None, None) => None,
        }
    }
}

/// A user record (Apple's `ResponseUser`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    #[serde(default)]
    pub client_user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<UserStatus>,
}

/// A user in create/update/retire requests (Apple's `RequestUser`). Retire needs only
/// `client_user_id`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestUser {
    #[serde(default)]
    pub client_user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_apple_id: Option<String>,
}

impl RequestUser {
    pub fn new(client_user_id: impl Into<String>) -> Self {
        RequestUser {
            client_user_id: client_user_id.into(),
            ..Default::default()
        }
    }
}

/// `POST /users/{create,update,retire}` body.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManageUsersRequest {
    #[serde(default)]
    pub users: Vec<RequestUser>,
}

/// `POST /assets/associate` and `/assets/disassociate` body. Every asset goes to every
/// listed target. The client sends one kind of target per request (conflict #2).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManageAssetsRequest {
    #[serde(default)]
    pub assets: Vec<AssetKey>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serial_numbers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_user_ids: Vec<String>,
}

impl ManageAssetsRequest {
    /// Assets for devices.
    pub fn devices(assets: Vec<AssetKey>, serial_numbers: Vec<String>) -> Self {
        ManageAssetsRequest {
            assets,
            serial_numbers,
            client_user_ids: Vec::new(),
        }
    }

    /// Assets for users.
    pub fn users(assets: Vec<AssetKey>, client_user_ids: Vec<String>) -> Self {
        ManageAssetsRequest {
            assets,
            serial_numbers: Vec::new(),
            client_user_ids,
        }
    }
}

/// `POST /assets/revoke` body: all revocable assets of the targets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevokeAssetsRequest {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_user_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serial_numbers: Vec<String>,
}

/// Answer of every asynchronous call (Apple's `EventResponse`): acceptance, not success.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventResponse {
    #[serde(default)]
    pub event_id: String,
    #[serde(flatten)]
    pub meta: ResponseMeta,
}

/// Entities an error applies to (Apple's `ResponseErrorInfo`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorInfo {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assets: Vec<AssetKey>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_user_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serial_numbers: Vec<String>,
}

impl ErrorInfo {
    pub fn is_empty(&self) -> bool {
        self.assets.is_empty() && self.client_user_ids.is_empty() && self.serial_numbers.is_empty()
    }
}

/// Apple's error object: a synchronous error body, an entry of `failures`, or a notification's
/// `error` (Apple's `ErrorResponse`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_number: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(default, skip_serializing_if = "ErrorInfo::is_empty")]
    pub error_info: ErrorInfo,
}

/// `GET /status` (Apple's `StatusResponse`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_status: Option<EventStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<EventType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_requested: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_completed: Option<i64>,
    /// One entry per error number, with the failing entities in `error_info`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<ErrorResponse>,
    #[serde(flatten)]
    pub meta: ResponseMeta,
}

impl StatusResponse {
    /// Still running (absent status counts as running).
    pub fn is_pending(&self) -> bool {
        matches!(self.event_status, None | Some(EventStatus::Pending))
    }

    /// Finished, with or without failures.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.event_status,
            Some(EventStatus::Complete | EventStatus::Failed)
        )
    }

    /// The strict success test: COMPLETE, every task done, no failures.
    pub fn is_success(&self) -> bool {
        self.event_status == Some(EventStatus::Complete)
            && self.failures.is_empty()
            && self.num_completed == self.num_requested
    }
}

/// Paging fields of list responses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_page_index: Option<u32>,
    /// Present only when another page follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_index: Option<u32>,
    /// Records on this page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_pages: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
}

/// One page of `GET /assets`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetAssetsResponse {
    #[serde(default)]
    pub assets: Vec<Asset>,
    /// Only with `unlimited=true`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unlimited_assets: Vec<Asset>,
    #[serde(flatten)]
    pub page: PageInfo,
    #[serde(flatten)]
    pub meta: ResponseMeta,
}

/// One page of `GET /assignments`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetAssignmentsResponse {
    #[serde(default)]
    pub assignments: Vec<Assignment>,
    #[serde(flatten)]
    pub page: PageInfo,
    #[serde(flatten)]
    pub meta: ResponseMeta,
}

/// One page of `GET /users`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetUsersResponse {
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(flatten)]
    pub page: PageInfo,
    #[serde(flatten)]
    pub meta: ResponseMeta,
}

/// A notification as Apple POSTs it (its envelope). The payload stays JSON until
/// [`payload`](Self::payload) so that unknown types (`SUBSCRIPTION_*`, `UNLIMITED_ASSET`, future
/// ones) never fail.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationEnvelope {
    /// Unique per notification; Apple may deliver one more than once (dedupe on it).
    #[serde(default)]
    pub notification_id: String,
    #[serde(default = "unknown_notification_type")]
    pub notification_type: NotificationType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u_id: Option<String>,
    #[serde(default)]
    pub notification: serde_json::Value,
}

fn unknown_notification_type() -> NotificationType {
    NotificationType::Other(String::new())
}

impl Default for NotificationType {
    fn default() -> Self {
        unknown_notification_type()
    }
}

/// A decoded notification payload.
#[derive(Clone, Debug, PartialEq)]
pub enum NotificationPayload {
    AssetManagement(AssetManagementNotification),
    AssetCount(AssetCountNotification),
    UserManagement(UserManagementNotification),
    UserAssociated(UserAssociatedNotification),
    Test,
    /// A type this build does not handle (payload left as JSON).
    Other(serde_json::Value),
}

impl NotificationEnvelope {
    /// Decodes the payload by `notificationType`.
    pub fn payload(&self) -> Result<NotificationPayload, serde_json::Error> {
        let value = self.notification.clone();
        Ok(match self.notification_type {
            NotificationType::AssetManagement => {
                NotificationPayload::AssetManagement(serde_json::from_value(value)?)
            }
            NotificationType::AssetCount => {
                NotificationPayload::AssetCount(serde_json::from_value(value)?)
            }
            NotificationType::UserManagement => {
                NotificationPayload::UserManagement(serde_json::from_value(value)?)
            }
            NotificationType::UserAssociated => {
                NotificationPayload::UserAssociated(serde_json::from_value(value)?)
            }
            NotificationType::TestNotification => NotificationPayload::Test,
            _ => NotificationPayload::Other(value),
        })
    }
}

/// `ASSET_MANAGEMENT`: associate/disassociate/revoke tasks completed (≤ 100 assignments; one
/// notification per outcome).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssetManagementNotification {
    #[serde(default)]
    pub assignments: Vec<Assignment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<NotificationResult>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<EventType>,
    /// Only when `result` is FAILURE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorResponse>,
}

/// `ASSET_COUNT`: licenses bought, transferred or refunded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssetCountNotification {
    #[serde(default)]
    pub adam_id: String,
    #[serde(default)]
    pub pricing_param: PricingParam,
    /// Positive = more licenses.
    #[serde(default)]
    pub count_delta: i64,
}

/// `USER_MANAGEMENT`: create/update/retire tasks completed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserManagementNotification {
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<NotificationResult>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<EventType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorResponse>,
}

/// `USER_ASSOCIATED`: users accepted their invitation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserAssociatedNotification {
    #[serde(default)]
    pub associated_users: Vec<User>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_examples_from_apple_docs_decode() {
        let failed: StatusResponse = serde_json::from_value(json!({
            "eventStatus": "FAILED", "eventType": "ASSOCIATE",
            "failures": [{"errorInfo": {"clientUserIds": ["client-4"]}, "errorNumber": 9609,
                          "errorMessage": "Registered user not found"}],
            "numCompleted": 14, "numRequested": 16,
            "tokenExpirationDate": "2030-11-08T22:33:22+0000", "uId": "2049025000431439"
        }))
        .unwrap();
        assert_eq!(failed.event_status, Some(EventStatus::Failed));
        assert!(failed.is_finished() && !failed.is_success());
        assert_eq!(failed.failures[0].error_number, Some(9609));
        assert_eq!(failed.failures[0].error_info.client_user_ids, ["client-4"]);
        assert_eq!(failed.meta.u_id.as_deref(), Some("2049025000431439"));
        assert!(failed.meta.token_expiration_date.is_some());

        let pending: StatusResponse =
            serde_json::from_value(json!({"eventStatus": "PENDING", "numCompleted": 8})).unwrap();
        assert!(pending.is_pending());
    }

    #[test]
    fn unknown_enum_values_and_fields_are_tolerated_and_round_trip() {
        let asset: Asset = serde_json::from_value(json!({
            "adamId": "408709785", "pricingParam": "GOLD", "productType": "Subscription",
            "supportedPlatforms": ["iOS", "carOS"], "totalCount": 2147483647, "newField": {"x": 1}
        }))
        .unwrap();
        assert_eq!(asset.pricing_param, PricingParam::Other("GOLD".into()));
        assert_eq!(
            asset.supported_platforms[1],
            Platform::Other("carOS".into())
        );
        assert!(asset.is_unlimited());
        let back = serde_json::to_value(&asset).unwrap();
        assert_eq!(back["pricingParam"], "GOLD");
        assert_eq!(back["productType"], "Subscription");
    }

    #[test]
    fn client_config_uses_apple_spellings_and_hides_the_auth_token() {
        let config: ClientConfig = serde_json::from_value(json!({
            "countryISO2ACode": "US", "defaultPlatform": "volumestore", "locationName": "PS01",
            "mdmInfo": {"id": "522d5c43", "name": "Apple Configurator 2", "metadata": "2.13.3"},
            "notificationAuthToken": "SUp3rS3Cr3t",
            "notificationUrl": "https://www.next.com/notification",
            "subscribedNotificationTypes": ["ASSET_COUNT", "ASSET_MANAGEMENT"],
            "tokenExpirationDate": "2030-11-08T22:33:22+0000",
            "uId": "2049025000431439", "websiteURL": "https://school.apple.com"
        }))
        .unwrap();
        assert_eq!(config.country_iso2a_code.as_deref(), Some("US"));
        assert_eq!(
            config.website_url.as_deref(),
            Some("https://school.apple.com")
        );
        assert_eq!(
            config.meta.mdm_info.as_ref().unwrap().name,
            "Apple Configurator 2"
        );
        assert_eq!(
            config.notification_auth_token.as_ref().map(|t| t.expose()),
            Some("SUp3rS3Cr3t")
        );
        assert!(!format!("{config:?}").contains("SUp3rS3Cr3t"));
        let back = serde_json::to_value(&config).unwrap();
        assert_eq!(back["countryISO2ACode"], "US");
        assert_eq!(back["tokenExpirationDate"], "2030-11-08T22:33:22+0000");
    }

    #[test]
    fn notifications_decode_by_type() {
        let failure: NotificationEnvelope = serde_json::from_value(json!({
            "notification": {
                "assignments": [{"adamId": "1234", "pricingParam": "STDQ", "serialNumber": "device1"},
                                {"adamId": "1234", "pricingParam": "STDQ", "clientUserId": "user1"}],
                "error": {"errorMessage": "There aren't enough assets available to complete this association.", "errorNumber": 9709},
                "eventId": "f743928c", "result": "FAILURE", "type": "ASSOCIATE"},
            "notificationId": "eba66", "notificationType": "ASSET_MANAGEMENT", "uId": "2049025000431439"
        }))
        .unwrap();
        let NotificationPayload::AssetManagement(payload) = failure.payload().unwrap() else {
            panic!("wrong payload kind");
        };
        assert_eq!(payload.result, Some(NotificationResult::Failure));
        assert_eq!(payload.kind, Some(EventType::Associate));
        assert_eq!(payload.error.unwrap().error_number, Some(9709));
        assert_eq!(
            payload.assignments[1].target(),
            Some(Target::ClientUserId("user1".into()))
        );

        let count: NotificationEnvelope = serde_json::from_value(json!({
            "notification": {"adamId": "408709785", "countDelta": -12, "pricingParam": "STDQ"},
            "notificationId": "4a78", "notificationType": "ASSET_COUNT", "uId": "1"
        }))
        .unwrap();
        assert_eq!(
            count.payload().unwrap(),
            NotificationPayload::AssetCount(AssetCountNotification {
                adam_id: "408709785".into(),
                pricing_param: PricingParam::Stdq,
                count_delta: -12,
            })
        );

        let future: NotificationEnvelope = serde_json::from_value(json!({
            "notification": {"x": 1}, "notificationId": "n", "notificationType": "SUBSCRIPTION_COUNT"
        }))
        .unwrap();
        assert!(matches!(
            future.payload().unwrap(),
            NotificationPayload::Other(_)
        ));
        let test: NotificationEnvelope = serde_json::from_value(json!({
            "notification": {}, "notificationId": "t", "notificationType": "TEST_NOTIFICATION"
        }))
        .unwrap();
        assert_eq!(test.payload().unwrap(), NotificationPayload::Test);
    }

    #[test]
    fn service_config_limits_fall_back_to_documented_defaults() {
        let config: ServiceConfig = serde_json::from_value(json!({
            "limits": {"maxAssets": 10, "maxSerialNumbers": 0, "maxUsers": "lots"}
        }))
        .unwrap();
        assert_eq!(config.max_assets(), 10);
        assert_eq!(config.max_serial_numbers(), 1000);
        assert_eq!(config.max_users(), 100);
        assert_eq!(config.max_revoke_serial_numbers(), 100);
        assert_eq!(config.max_request_per_second(), 15);
        assert_eq!(ServiceConfig::default().max_client_user_ids(), 1000);
    }

    #[test]
    fn requests_omit_empty_target_lists() {
        let request = ManageAssetsRequest::devices(vec![AssetKey::stdq("1")], vec!["S1".into()]);
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({"assets": [{"adamId": "1", "pricingParam": "STDQ"}], "serialNumbers": ["S1"]})
        );
        let page: GetAssignmentsResponse = serde_json::from_value(json!({
            "assignments": [], "currentPageIndex": 0, "nextPageIndex": 1, "totalPages": 10,
            "versionId": "v", "uId": "u"
        }))
        .unwrap();
        assert_eq!(page.page.next_page_index, Some(1));
        assert_eq!(page.meta.u_id.as_deref(), Some("u"));
    }
}
