//! Apple's error numbers, their documented HTTP status and message (docs/apple.md, Error classes).
//!
//! One table serves both sides: the client classifies by number ([`super::error`]), the simulator
//! answers with the same number, status and message, and lists the table in its service config.
//! Messages are Apple's current wording (its error tables); where sources disagree (docs/apple.md
//! conflict #6, 9709) the error-table wording is used. Callers must match on numbers, never on
//! messages.

/// 9601: login required.
pub const LOGIN_REQUIRED: i32 = 9601;
/// 9602: invalid argument.
pub const INVALID_ARGUMENT: i32 = 9602;
/// 9603: internal error (HTTP 500).
pub const INTERNAL_ERROR: i32 = 9603;
/// 9609: the clientUserId is not a registered user.
pub const USER_NOT_FOUND: i32 = 9609;
/// 9621: the sToken has expired.
pub const TOKEN_EXPIRED: i32 = 9621;
/// 9622: invalid authentication token (observed with HTTP 200).
pub const TOKEN_INVALID: i32 = 9622;
/// 9623: invalid push token.
pub const INVALID_PUSH_TOKEN: i32 = 9623;
/// 9625: the sToken was revoked.
pub const TOKEN_REVOKED: i32 = 9625;
/// 9634: service removed (HTTP 410).
pub const SERVICE_REMOVED: i32 = 9634;
/// 9635: the Apple Account cannot be associated with the user (async).
pub const ACCOUNT_NOT_ASSOCIABLE: i32 = 9635;
/// 9637: not allowed for facilitator accounts (HTTP 403).
pub const FACILITATOR_NOT_ALLOWED: i32 = 9637;
/// 9641: the Apple Account is already associated with another user (async).
pub const ACCOUNT_ALREADY_ASSOCIATED: i32 = 9641;
/// 9644: maintenance mode (async).
pub const MAINTENANCE: i32 = 9644;
/// 9646: too many requests (HTTP 429).
pub const TOO_MANY_REQUESTS: i32 = 9646;
/// 9647: not supported for legacy tokens (HTTP 403).
pub const LEGACY_TOKEN: i32 = 9647;
/// 9650: page index out of range.
pub const BAD_PAGE_INDEX: i32 = 9650;
/// 9700: more assets than `maxAssets`.
pub const TOO_MANY_ASSETS: i32 = 9700;
/// 9701: more clientUserIds than allowed.
pub const TOO_MANY_CLIENT_USER_IDS: i32 = 9701;
/// 9702: more serialNumbers than allowed.
pub const TOO_MANY_SERIAL_NUMBERS: i32 = 9702;
/// 9703: duplicate assets in the request.
pub const DUPLICATE_ASSETS: i32 = 9703;
/// 9704: duplicate clientUserIds in the request.
pub const DUPLICATE_CLIENT_USER_IDS: i32 = 9704;
/// 9705: duplicate serialNumbers in the request.
pub const DUPLICATE_SERIAL_NUMBERS: i32 = 9705;
/// 9706: the asset is not revocable.
pub const NOT_REVOCABLE: i32 = 9706;
/// 9707: the asset is not device-assignable.
pub const NOT_DEVICE_ASSIGNABLE: i32 = 9707;
/// 9708: unknown eventId.
pub const EVENT_NOT_FOUND: i32 = 9708;
/// 9709: not enough licenses (async).
pub const NOT_ENOUGH_LICENSES: i32 = 9709;
/// 9710: notification URL and auth token must come together.
pub const NOTIFICATION_URL_AND_TOKEN: i32 = 9710;
/// 9711: notification URL or auth token too long.
pub const NOTIFICATION_FIELD_TOO_LONG: i32 = 9711;
/// 9712: notification URL invalid or not HTTPS.
pub const NOTIFICATION_URL_INVALID: i32 = 9712;
/// 9713: mdmInfo metadata too long.
pub const MDM_METADATA_TOO_LONG: i32 = 9713;
/// 9714: more users than `maxUsers`.
pub const TOO_MANY_USERS: i32 = 9714;
/// 9715: duplicate users in the request.
pub const DUPLICATE_USERS: i32 = 9715;
/// 9716: a registered user with that clientUserId exists (async).
pub const USER_EXISTS: i32 = 9716;
/// 9717: invalid email address.
pub const INVALID_EMAIL: i32 = 9717;
/// 9718: no assets in the request.
pub const NO_ASSETS: i32 = 9718;
/// 9719: neither clientUserIds nor serialNumbers in the request.
pub const NO_TARGETS: i32 = 9719;
/// 9720: no users in the request.
pub const NO_USERS: i32 = 9720;
/// 9721: unknown `sinceVersionId`.
pub const INVALID_VERSION_ID: i32 = 9721;
/// 9722: missing or malformed `Authorization` header (HTTP 401).
pub const BAD_AUTHORIZATION_HEADER: i32 = 9722;
/// 9723: mdmInfo needs id, name and metadata.
pub const MDM_INFO_INCOMPLETE: i32 = 9723;
/// 9724: mdmInfo id too long.
pub const MDM_ID_TOO_LONG: i32 = 9724;
/// 9725: mdmInfo name too long.
pub const MDM_NAME_TOO_LONG: i32 = 9725;
/// 9726: unsupported HTTP method (HTTP 405).
pub const METHOD_NOT_ALLOWED: i32 = 9726;
/// 9727: unsupported Content-Type (HTTP 415).
pub const UNSUPPORTED_CONTENT_TYPE: i32 = 9727;
/// 9728: the notification URL is unreachable.
pub const NOTIFICATION_URL_UNREACHABLE: i32 = 9728;
/// 9729: temporarily unavailable (HTTP 503).
pub const SERVICE_UNAVAILABLE: i32 = 9729;

/// One documented error: number, HTTP status of its synchronous form, message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Code {
    pub number: i32,
    pub status: u16,
    pub message: &'static str,
}

macro_rules! catalogue {
    ($( ($number:expr, $status:literal, $message:literal) ),+ $(,)?) => {
        /// Every error number the simulator can answer with (and the service-config list).
        pub const CATALOGUE: &[Code] = &[$(Code { number: $number, status: $status, message: $message }),+];
    };
}

catalogue! {
    (LOGIN_REQUIRED, 401, "Login required."),
    (INVALID_ARGUMENT, 400, "Invalid argument."),
    (INTERNAL_ERROR, 500, "Internal error."),
    (USER_NOT_FOUND, 400, "Unable to find the registered user."),
    (TOKEN_EXPIRED, 401, "The token has expired. You need to generate a new token online using your organization's account at either school.apple.com or business.apple.com."),
    (TOKEN_INVALID, 200, "Invalid authentication token."),
    (INVALID_PUSH_TOKEN, 400, "The provided Apple Push Notification token is invalid."),
    (TOKEN_REVOKED, 401, "The server has revoked the sToken."),
    (SERVICE_REMOVED, 410, "This service is no longer available."),
    (ACCOUNT_NOT_ASSOCIABLE, 400, "Unable to associate the Apple Account with this user."),
    (FACILITATOR_NOT_ALLOWED, 403, "This operation isn't allowed for facilitator accounts."),
    (ACCOUNT_ALREADY_ASSOCIATED, 400, "The Apple Account is already associated with another user."),
    (MAINTENANCE, 503, "The service is in maintenance mode. Try again later."),
    (TOO_MANY_REQUESTS, 429, "There are too many requests for the current organization, and the server rejected the request. Use an incremental/exponential backoff strategy."),
    (LEGACY_TOKEN, 403, "This operation isn't supported for legacy tokens."),
    (BAD_PAGE_INDEX, 400, "The provided page index must be greater than 0, and less than the total number of pages."),
    (TOO_MANY_ASSETS, 400, "This request exceeds the maximum assets limit. Change the request to stay within the limit."),
    (TOO_MANY_CLIENT_USER_IDS, 400, "This request exceeds the maximum clientUserIds limit. Change the request to stay within the limit."),
    (TOO_MANY_SERIAL_NUMBERS, 400, "This request exceeds the maximum serialNumbers limit. Change the request to stay within the limit."),
    (DUPLICATE_ASSETS, 400, "This request contains duplicate assets. Change the request to send unique assets."),
    (DUPLICATE_CLIENT_USER_IDS, 400, "This request contains duplicate clientUserIds. Change the request to send unique clientUserIds."),
    (DUPLICATE_SERIAL_NUMBERS, 400, "This request contains duplicate serialNumbers. Change the request to send unique serialNumbers."),
    (NOT_REVOCABLE, 400, "The asset in the request isn't revocable. Change the request to send revocable assets."),
    (NOT_DEVICE_ASSIGNABLE, 400, "The asset in the request isn't device-assignable. Change the request to send device-assignable assets."),
    (EVENT_NOT_FOUND, 400, "Unable to find eventId."),
    (NOT_ENOUGH_LICENSES, 400, "There aren't enough assets available to complete this association."),
    (NOTIFICATION_URL_AND_TOKEN, 400, "Both the notification URL and the authentication token are necessary."),
    (NOTIFICATION_FIELD_TOO_LONG, 400, "Either the notification URL or the authentication token exceeds its maximum length. Change the request to stay within the limit."),
    (NOTIFICATION_URL_INVALID, 400, "The provided notification URL must be a valid URL and use HTTPS as the protocol."),
    (MDM_METADATA_TOO_LONG, 400, "The device management service metadata exceeds the maximum length. Change the request to stay within the limit."),
    (TOO_MANY_USERS, 400, "The number of users exceeds the maximum. Change the request to stay within the limit."),
    (DUPLICATE_USERS, 400, "This request contains duplicate users. Change the request to send unique users."),
    (USER_EXISTS, 400, "A registered user already exists with the specified clientUserId."),
    (INVALID_EMAIL, 400, "This request contains an invalid email address. Change the request to send a valid email address."),
    (NO_ASSETS, 400, "This request doesn't contain an asset, which is a required argument. Change the request to provide an asset."),
    (NO_TARGETS, 400, "Either clientUserIds or serialNumbers are required arguments. Change the request to provide assignable users and devices."),
    (NO_USERS, 400, "Users are a required argument. Change the request to provide a user."),
    (INVALID_VERSION_ID, 400, "This request contains an invalid version ID. Change the request to send the version ID from the read APIs."),
    (BAD_AUTHORIZATION_HEADER, 401, "This request contains an invalid authorization header. Change the request to send an authorization header that matches the format 'Bearer {sToken}'."),
    (MDM_INFO_INCOMPLETE, 400, "You must provide a name, ID, and metadata when setting the device management information."),
    (MDM_ID_TOO_LONG, 400, "The device management ID exceeds the maximum length. Change the request to stay within the limit."),
    (MDM_NAME_TOO_LONG, 400, "The device management name exceeds the maximum length. Change the request to stay within the limit."),
    (METHOD_NOT_ALLOWED, 405, "This request contains an unsupported HTTP method for the requested endpoint."),
    (UNSUPPORTED_CONTENT_TYPE, 415, "This request contains an unsupported Content-Type for the requested endpoint."),
    (NOTIFICATION_URL_UNREACHABLE, 400, "The provided notification URL is unreachable."),
    (SERVICE_UNAVAILABLE, 503, "The service is temporarily unavailable. Try again later."),
}

/// The catalogue entry of `number`, if Apple documents it.
pub fn lookup(number: i32) -> Option<&'static Code> {
    CATALOGUE.iter().find(|c| c.number == number)
}

/// Apple's message for `number` (a generic one for unknown numbers).
pub fn message(number: i32) -> &'static str {
    lookup(number).map_or("Unknown error.", |c| c.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_has_unique_numbers_and_sane_statuses() {
        let mut numbers: Vec<i32> = CATALOGUE.iter().map(|c| c.number).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), CATALOGUE.len());
        assert!(CATALOGUE.iter().all(|c| (200..600).contains(&c.status)));
        assert_eq!(lookup(TOO_MANY_REQUESTS).map(|c| c.status), Some(429));
        assert_eq!(lookup(SERVICE_UNAVAILABLE).map(|c| c.status), Some(503));
        assert_eq!(message(1), "Unknown error.");
    }
}
