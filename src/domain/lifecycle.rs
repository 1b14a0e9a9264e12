//! Lifecycle events from other MDM components (rules V2, V3, V5; issue 14): their vocabulary
//! (types, effects, states), what each type is about (its subject and its *aspect*, the kind of
//! fact out-of-order delivery is judged on), the effects a space may choose per type with their
//! defaults, and the checks of one event. Pure: the use case is [`crate::lifecycle`].

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::model::LicenseType;
use super::reconciliation::ReconcileCriterion;
use super::validation::{FieldError, check_id, valid_adam_id, valid_pricing, valid_space_id};

/// Largest batch of `POST …/lifecycle-events`.
pub const MAX_BATCH: usize = 500;
/// How far in the future an `occurred_at` may lie (clocks of other components drift).
pub const FUTURE_SKEW_SECS: i64 = 300;
/// The earliest time an `occurred_at` (or a `last_seen`) may name: 2000-01-01T00:00:00Z, as
/// seconds since the Unix epoch. Earlier times are no MDM's report (and PostgreSQL refuses
/// years before 4713 BC, which chrono accepts): refused as bad input, never a 500.
pub const EARLIEST_SECS: i64 = 946_684_800;
/// Events (and their results) are kept this long; a duplicate within it answers the original.
pub const RETENTION_DAYS: i64 = 30;
/// Most groups one subject may be given.
pub const MAX_GROUPS: usize = 1000;
/// Attempts of an event whose application fails on the database before it is `failed`.
pub const MAX_ATTEMPTS: i32 = 10;

crate::text_enum! {
    /// What happened to a device, a user or an app, as the MDM reports it.
    pub enum EventType {
        /// The device was retired (unenrolled on purpose): its licenses are revoked.
        DeviceRetired = "device.retired",
        /// The device was wiped: its licenses are revoked.
        DeviceWiped = "device.wiped",
        /// The device was deleted (unenrolled): its licenses are revoked.
        DeviceDeleted = "device.deleted",
        /// The device was checked out (a shared device returned): recorded; configurable.
        DeviceCheckedOut = "device.checked_out",
        /// The MDM saw the device (`occurred_at` becomes its last sighting).
        DeviceSeen = "device.seen",
        /// The device's user changed (`data.user`, a client user id or null).
        DeviceUserChanged = "device.user_changed",
        /// The device's groups are now `data.groups` (the full current set).
        DeviceGroupsChanged = "device.groups_changed",
        /// The user's groups are now `data.groups` (the full current set).
        UserGroupsChanged = "user.groups_changed",
        /// The user was deleted: the user's licenses are revoked.
        UserDeleted = "user.deleted",
        /// The user was disabled: recorded; configurable.
        UserDisabled = "user.disabled",
        /// The app `data.adam_id` was removed from the device: ignored unless configured.
        AppRemovedFromDevice = "app.removed_from_device",
        /// The app (subject id: its adamId) left the catalog: every license of it in the space
        /// is revoked.
        AppDeletedFromCatalog = "app.deleted_from_catalog",
        /// The device moved to the space `data.to_space` (with its user when
        /// `data.with_user`): revoked here, allocated there where possible (V3).
        DeviceMoved = "device.moved",
    }
}

crate::text_enum! {
    /// What a space does about a type of event (`lifecycle-settings`).
    pub enum Effect {
        /// Revoke at once.
        RevokeNow = "revoke_now",
        /// Revoke when the grace period after `occurred_at` has passed (facts are recorded at
        /// once; group changes are re-decided then).
        RevokeAfter = "revoke_after",
        /// Record the facts and the event; revoke nothing.
        Ignore = "ignore",
    }
}

crate::text_enum! {
    /// Where an event is.
    pub enum EventState {
        /// Accepted; the worker applies it shortly.
        Queued = "queued",
        /// Facts recorded; the revocation waits for `revoke_at` (effect `revoke_after`).
        Scheduled = "scheduled",
        /// Applied (`result` says what it did).
        Applied = "applied",
        /// Older than the last applied event of the same subject and aspect: changed nothing
        /// (V5).
        Stale = "stale",
        /// Could not be applied after repeated database failures (`error`).
        Failed = "failed",
    }
}

crate::text_enum! {
    /// What an event is about.
    pub enum EventSubject {
        /// A device, by serial number.
        Device = "device",
        /// A user, by client user id.
        User = "user",
        /// An app or book, by adamId.
        Asset = "asset",
    }
}

impl EventType {
    /// What the subject id names.
    pub fn subject(self) -> EventSubject {
        use EventType::*;
        match self {
            UserGroupsChanged | UserDeleted | UserDisabled => EventSubject::User,
            AppDeletedFromCatalog => EventSubject::Asset,
            _ => EventSubject::Device,
        }
    }

    /// The kind of fact the event states about its subject: an event older than the last
    /// applied one of the same subject and aspect is stale (V5). Removing one app from a device
    /// is its own aspect per app.
    pub fn aspect(self, data: &Value) -> String {
        use EventType::*;
        match self {
            DeviceRetired | DeviceWiped | DeviceDeleted => "enrolment".into(),
            DeviceCheckedOut => "checkout".into(),
            DeviceSeen => "seen".into(),
            DeviceUserChanged => "user".into(),
            DeviceGroupsChanged | UserGroupsChanged => "groups".into(),
            UserDeleted | UserDisabled => "status".into(),
            AppRemovedFromDevice => format!(
                "app:{}",
                data.get("adam_id").and_then(Value::as_str).unwrap_or("")
            ),
            AppDeletedFromCatalog => format!(
                "catalog:{}",
                data.get("pricing_param")
                    .and_then(Value::as_str)
                    .unwrap_or("*")
            ),
            DeviceMoved => "space".into(),
        }
    }

    /// Whether the space may choose the effect (`device.seen` only records a sighting).
    pub fn configurable(self) -> bool {
        self != EventType::DeviceSeen
    }

    /// The effect when the space chose none (issue 14's defaults: Intune's and Fleet's
    /// behaviour for apps removed from a device; the peers' automatic revocations otherwise).
    pub fn default_effect(self) -> Effect {
        use EventType::*;
        match self {
            DeviceCheckedOut | UserDisabled | AppRemovedFromDevice | DeviceSeen => Effect::Ignore,
            _ => Effect::RevokeNow,
        }
    }
}

/// One event as checked: everything the store keeps.
#[derive(Clone, Debug)]
pub struct CheckedEvent {
    pub id: String,
    pub source: String,
    pub event_type: EventType,
    pub subject: EventSubject,
    pub subject_id: String,
    pub occurred_at: DateTime<Utc>,
    pub data: Value,
}

/// The raw fields of one event (the transport parsed the JSON shape).
#[derive(Clone, Debug)]
pub struct RawEvent<'a> {
    pub id: &'a str,
    pub source: &'a str,
    pub event_type: &'a str,
    pub subject_kind: Option<&'a str>,
    pub subject_id: &'a str,
    pub occurred_at: DateTime<Utc>,
    pub data: &'a Value,
}

/// The earliest accepted `occurred_at` / `last_seen` ([`EARLIEST_SECS`]).
pub fn earliest() -> DateTime<Utc> {
    DateTime::from_timestamp(EARLIEST_SECS, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Why a reported time is refused: before [`earliest`] or more than [`FUTURE_SKEW_SECS`] ahead
/// of `now`.
pub fn check_time(at: DateTime<Utc>, now: DateTime<Utc>) -> Option<String> {
    if at < earliest() {
        Some(format!("lies before {}", earliest().to_rfc3339()))
    } else if at > now + Duration::seconds(FUTURE_SKEW_SECS) {
        Some(format!("lies more than {FUTURE_SKEW_SECS} s in the future"))
    } else {
        None
    }
}

/// Checks one event: its ids, a known type, the subject, a time not before [`earliest`] nor in
/// the future beyond [`FUTURE_SKEW_SECS`], and the `data` its type needs. `space` is the space
/// it is sent to (a move to the same space is refused).
pub fn check(
    raw: &RawEvent<'_>,
    space: &str,
    now: DateTime<Utc>,
) -> Result<CheckedEvent, Vec<FieldError>> {
    let mut errors = Vec::new();
    let err = |errors: &mut Vec<FieldError>, field: &str, message: &str| {
        errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        })
    };
    check_id(&mut errors, "id", raw.id);
    check_id(&mut errors, "source", raw.source);
    let event_type = raw.event_type.parse::<EventType>().ok();
    if event_type.is_none() {
        let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        err(
            &mut errors,
            "type",
            &format!("unknown event type; one of {}", known.join(", ")),
        );
    }
    check_id(&mut errors, "subject.id", raw.subject_id);
    if let Some(why) = check_time(raw.occurred_at, now) {
        err(&mut errors, "occurred_at", &why);
    }
    if !raw.data.is_object() {
        err(&mut errors, "data", "must be a JSON object");
    }
    let Some(event_type) = event_type else {
        return Err(errors);
    };
    let subject = event_type.subject();
    if let Some(kind) = raw.subject_kind
        && kind != subject.as_str()
    {
        err(
            &mut errors,
            "subject.kind",
            &format!("{event_type} is about a {subject}, not {kind:?}"),
        );
    }
    let data = raw.data;
    let text = |key: &str| data.get(key).and_then(Value::as_str);
    use EventType::*;
    match event_type {
        DeviceGroupsChanged | UserGroupsChanged => match data.get("groups") {
            Some(Value::Array(groups)) => {
                if groups.len() > MAX_GROUPS {
                    err(
                        &mut errors,
                        "data.groups",
                        &format!("at most {MAX_GROUPS} groups"),
                    );
                }
                for (i, g) in groups.iter().enumerate() {
                    match g.as_str() {
                        Some(g) => check_id(&mut errors, &format!("data.groups[{i}]"), g),
                        None => err(
                            &mut errors,
                            &format!("data.groups[{i}]"),
                            "must be a string",
                        ),
                    }
                }
            }
            _ => err(
                &mut errors,
                "data.groups",
                "required: the full current set of groups (an array of strings, [] for none)",
            ),
        },
        DeviceUserChanged => match data.get("user") {
            Some(Value::Null) => {}
            Some(Value::String(u)) => check_id(&mut errors, "data.user", u),
            _ => err(
                &mut errors,
                "data.user",
                "required: the device's client user id, or null for none",
            ),
        },
        AppRemovedFromDevice if !text("adam_id").is_some_and(valid_adam_id) => err(
            &mut errors,
            "data.adam_id",
            "required: the app's adamId (digits)",
        ),
        AppDeletedFromCatalog if !valid_adam_id(raw.subject_id) => err(
            &mut errors,
            "subject.id",
            "must be the app's adamId (digits)",
        ),
        DeviceMoved => match text("to_space") {
            Some(to) if !valid_space_id(to) => {
                err(&mut errors, "data.to_space", "not a valid space id")
            }
            Some(to) if to == space => err(
                &mut errors,
                "data.to_space",
                "names the space the event is sent to",
            ),
            Some(_) => {
                if data
                    .get("with_user")
                    .is_some_and(|w| !w.is_boolean() && !w.is_null())
                {
                    err(&mut errors, "data.with_user", "must be a boolean");
                }
            }
            None => err(
                &mut errors,
                "data.to_space",
                "required: the space the device moves to",
            ),
        },
        _ => {}
    }
    if matches!(event_type, AppRemovedFromDevice | AppDeletedFromCatalog)
        && let Some(p) = data.get("pricing_param")
        && !p.as_str().is_some_and(valid_pricing)
    {
        err(&mut errors, "data.pricing_param", "must be STDQ or PLUS");
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(CheckedEvent {
        id: raw.id.to_owned(),
        source: raw.source.to_owned(),
        event_type,
        subject,
        subject_id: raw.subject_id.to_owned(),
        occurred_at: raw.occurred_at,
        data: data.clone(),
    })
}

/// Whether an event `(source, id)` that occurred at `occurred_at` is stale against the last
/// applied one of its subject and aspect (V5; `last_at`, `last_key`): strictly older, or the
/// very event that set the mark replayed after the event retention forgot it (without this
/// the replay would be applied again, revoking what the subject got since). Another event at
/// an equal time is applied (the effects are idempotent: revoking what is already revoked
/// does nothing).
pub fn is_stale(
    occurred_at: DateTime<Utc>,
    key: (&str, &str),
    last_at: Option<DateTime<Utc>>,
    last_key: Option<(&str, &str)>,
) -> bool {
    last_at.is_some_and(|last| occurred_at < last || (occurred_at == last && last_key == Some(key)))
}

/// What an event did (`result` of `GET …/lifecycle-events/{source}/{id}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventResult {
    /// The effect applied (the space's setting for the type when the event was accepted):
    /// `revoke_now`, `revoke_after`, `ignore`, or `record` for `device.seen`.
    pub effect: String,
    /// The facts recorded about the subject: `groups`, `user`, `last_seen`.
    #[serde(default)]
    pub facts: Vec<String>,
    /// Licenses whose revocation the event started (a pending one is dropped at once, the
    /// others are released at Apple by the dispatcher).
    #[serde(default)]
    pub revoked: Vec<RevokedLicense>,
    /// Matching live licenses of assets Apple does not take back (books), left as they are.
    #[serde(default)]
    pub not_revocable: i64,
    /// `device.moved`: per asset the device (and its user) held here, what happened in the
    /// destination space.
    #[serde(default)]
    pub moved: Vec<MovedAsset>,
    /// Effect `revoke_after`: when the revocation is (or was) due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub revoke_at: Option<DateTime<Utc>>,
    /// `device.user_changed` (and `PUT …/devices/{serial}` changing the user): the device's
    /// user before the change, whose user licenses are re-decided too (at once, or when the
    /// grace period of `revoke_after` ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub former_user: Option<String>,
    /// `user.deleted`: the accounts where Apple has the user registered, whose retirement
    /// (`users/retire`) was queued; it is sent once the user's licenses there are released.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retiring_at: Vec<Uuid>,
    /// `stale`: when the last applied event of the same subject and aspect occurred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub superseded_at: Option<DateTime<Utc>>,
    /// A sentence for people, when there is something to say (nothing held, subject unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub note: Option<String>,
}

/// One license an event revoked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RevokedLicense {
    /// The assignment (`GET …/assignments/{assignment_id}`).
    pub assignment_id: Uuid,
    pub adam_id: String,
    pub pricing_param: String,
    pub license_type: LicenseType,
    /// Group and user changes: why allocation's rules no longer grant the license.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub criterion: Option<ReconcileCriterion>,
}

crate::text_enum! {
    /// What a move (V3) did about one asset in the destination space.
    pub enum MoveOutcome {
        /// A license was allocated there.
        Allocated = "allocated",
        /// The subject already held one there.
        Existing = "existing",
        /// Not available there (no account owns it, the policy refuses, none left): only the
        /// revocation happened.
        NotAvailable = "not_available",
    }
}

/// One asset of a move.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MovedAsset {
    pub adam_id: String,
    pub pricing_param: String,
    pub license_type: LicenseType,
    /// The license revoked in the source space.
    pub revoked_assignment: Uuid,
    pub outcome: MoveOutcome,
    /// The license in the destination space (`allocated`, `existing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub assignment_id: Option<Uuid>,
    /// Why not (`not_available`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw<'a>(t: &'a str, id: &'a str, data: &'a Value, at: DateTime<Utc>) -> RawEvent<'a> {
        RawEvent {
            id: "e1",
            source: "mdm",
            event_type: t,
            subject_kind: None,
            subject_id: id,
            occurred_at: at,
            data,
        }
    }

    #[test]
    fn v2_types_need_their_data_and_known_names() {
        let now = Utc::now();
        let empty = json!({});
        assert!(check(&raw("device.retired", "S1", &empty, now), "a", now).is_ok());
        let e = check(&raw("device.exploded", "S1", &empty, now), "a", now).unwrap_err();
        assert_eq!(e[0].field, "type");
        let e = check(&raw("device.groups_changed", "S1", &empty, now), "a", now).unwrap_err();
        assert_eq!(e[0].field, "data.groups");
        let groups = json!({"groups": []});
        assert!(check(&raw("device.groups_changed", "S1", &groups, now), "a", now).is_ok());
        let e = check(&raw("device.retired", " ", &empty, now), "a", now).unwrap_err();
        assert_eq!(e[0].field, "subject.id");
        let e = check(&raw("app.deleted_from_catalog", "x", &empty, now), "a", now).unwrap_err();
        assert_eq!(e[0].field, "subject.id");
        let same = json!({"to_space": "a"});
        let e = check(&raw("device.moved", "S1", &same, now), "a", now).unwrap_err();
        assert_eq!(e[0].field, "data.to_space");
    }

    #[test]
    fn v5_future_beyond_the_skew_is_refused_and_older_is_stale() {
        let now = Utc::now();
        let empty = json!({});
        let soon = now + Duration::seconds(FUTURE_SKEW_SECS - 10);
        assert!(check(&raw("device.seen", "S1", &empty, soon), "a", now).is_ok());
        let later = now + Duration::seconds(FUTURE_SKEW_SECS + 10);
        let e = check(&raw("device.seen", "S1", &empty, later), "a", now).unwrap_err();
        assert_eq!(e[0].field, "occurred_at");
        let k = ("mdm", "e1");
        assert!(is_stale(now, k, Some(soon), None));
        assert!(!is_stale(soon, k, Some(now), None));
        assert!(!is_stale(now, k, Some(now), Some(("mdm", "e0"))));
        assert!(!is_stale(now, k, None, None));
        // The event that set the mark, replayed after the retention: stale.
        assert!(is_stale(now, k, Some(now), Some(k)));
        // Before 2000: refused (PostgreSQL refuses far-past years; chrono does not).
        // (What serde's deserializer, `FromStr`, makes of the reviewer's input.)
        let far: DateTime<Utc> = "-5000-01-01T00:00:00Z".parse().unwrap();
        let e = check(&raw("device.seen", "S1", &empty, far), "a", now).unwrap_err();
        assert_eq!(e[0].field, "occurred_at");
        let e = check(
            &raw(
                "device.seen",
                "S1",
                &empty,
                earliest() - Duration::seconds(1),
            ),
            "a",
            now,
        )
        .unwrap_err();
        assert_eq!(e[0].field, "occurred_at");
        assert!(check(&raw("device.seen", "S1", &empty, earliest()), "a", now).is_ok());
    }

    #[test]
    fn aspects_group_the_types_that_state_the_same_fact() {
        let d = json!({"adam_id": "1"});
        assert_eq!(
            EventType::DeviceRetired.aspect(&d),
            EventType::DeviceWiped.aspect(&d)
        );
        assert_ne!(
            EventType::DeviceSeen.aspect(&d),
            EventType::DeviceRetired.aspect(&d)
        );
        assert_eq!(EventType::AppRemovedFromDevice.aspect(&d), "app:1");
    }
}
