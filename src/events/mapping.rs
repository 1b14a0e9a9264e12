//! Which activity rows are events, of which type, with which `data` (pure: no I/O).
//!
//! The activity log records every decision (`ledger::activity::ActivityAction`); the feed
//! carries the changes another MDM component acts on. [`map`] is the one place that decides:
//! an action absent here (policy edits, token tests, sync requests, …) is history only.
//!
//! # `data`
//! Rows about an assignment give the assignment's identity
//! (`assignment_id`, `subject`, `asset`, `account_id`), its `state` after the change and
//! `version` (the assignment's version the change set, recorded with the activity row when it
//! was written: a consumer keeps the highest version it saw per assignment and drops an event
//! with a lower one, since the feed's order is the order transactions *finished* in, not
//! always the order of one assignment's changes), who (`actor`) and why (`reason`, `rule`),
//! Apple's event id, the request id, and for revocations `notify_on_removal` (V4: whether
//! the MDM should tell the user). Other rows give their identity (`account_id`, …), `actor`,
//! `request_id` and the row's `details` as recorded.

use serde_json::{Map, Value, json};

use crate::ledger::outbox::OutboxRow;

crate::text_enum! {
    /// The type of an event (`type`): a closed list; documented with its `data` in
    /// docs/events.md.
    pub enum FeedEventType {
        /// A license was allocated (`state` pending; Apple's association follows).
        AssignmentAllocated = "assignment.allocated",
        /// Apple confirmed the association (`state` active).
        AssignmentActive = "assignment.active",
        /// The assignment failed for good (`error`: Apple's error or why it could not be
        /// sent or re-allocated).
        AssignmentFailed = "assignment.failed",
        /// Apple refused it for lack of licenses (9709) and another account serves the
        /// subject instead: this assignment is `failed`, `reallocated_to` is the new one.
        AssignmentReallocated = "assignment.reallocated",
        /// A revocation was asked; Apple's release follows (`state` revoking; `actor`,
        /// `reason`, `notify_on_removal`).
        AssignmentRevoking = "assignment.revoking",
        /// The license is released (`state` revoked; `actor`, `reason`, `notify_on_removal`
        /// when the account's setting applies).
        AssignmentRevoked = "assignment.revoked",
        /// An Apple license was adopted as this deployment's assignment (`state` active).
        AssignmentAdopted = "assignment.adopted",
        /// A12: no license was free; the allocation waits in line (`state` waiting).
        AssignmentWaiting = "assignment.waiting",
        /// A12: a waiting allocation was served (`state` pending).
        AssignmentWaitServed = "assignment.wait_served",
        /// A12: a waiting allocation ended without a license (`state` revoked: cancelled;
        /// failed: expired or can no longer be served; `reason`).
        AssignmentWaitEnded = "assignment.wait_ended",
        /// An account's status changed (`details`: from, to, reason, throttled_until).
        AccountStatusChanged = "account.status_changed",
        /// A sync of an account finished (`details`: run, kind, state, drift per class).
        SyncFinished = "sync.finished",
        /// A lifecycle event was applied, scheduled or found stale (`details`).
        LifecycleApplied = "lifecycle.applied",
        /// A bulk operation finished (`details`: operation, state, counts).
        BulkFinished = "bulk.finished",
        /// A plan was applied (`details`: plan, action, applied, skipped).
        PlanApplied = "plan.applied",
        /// A notification was raised (N1, N2; `data`: the notification as the API's
        /// `Notification` has it — `id`, `kind`, `severity`, `scope`, `account_id`, `asset`,
        /// `level`, `message`, `action`, `figures`, `state`, `raised_at`).
        NotificationRaised = "notification.raised",
        /// A notification was cleared (`data`: the notification, with `cleared_at` and
        /// `cleared_reason`).
        NotificationCleared = "notification.cleared",
        /// A webhook endpoint was disabled (its receiver answered 410, or five days of
        /// failures; `details`: endpoint, reason).
        WebhookDisabled = "webhook.disabled",
    }
}

/// The event an activity row makes, if any: its type and `data`.
pub fn map(row: &OutboxRow) -> Option<(FeedEventType, Value)> {
    use FeedEventType as E;
    let detail = |key: &str| row.details.get(key).and_then(Value::as_str);
    let (kind, state) = match row.action.as_str() {
        "assignment.allocated" => {
            if row.details.get("served_from_wait_list") == Some(&Value::Bool(true)) {
                (E::AssignmentWaitServed, "pending")
            } else {
                (E::AssignmentAllocated, "pending")
            }
        }
        "assignment.activated" => (E::AssignmentActive, "active"),
        "assignment.failed" | "assignment.reallocation_failed" => (E::AssignmentFailed, "failed"),
        "assignment.reallocated" => (E::AssignmentReallocated, "failed"),
        "assignment.revoke_requested" => match detail("state") {
            Some("revoked") => (E::AssignmentRevoked, "revoked"),
            _ => (E::AssignmentRevoking, "revoking"),
        },
        // Repair "mark lost" frees a license Apple no longer has: the license is revoked.
        "assignment.revoked" | "assignment.forgotten" | "assignment.marked_lost" => {
            (E::AssignmentRevoked, "revoked")
        }
        "assignment.adopted" => (E::AssignmentAdopted, "active"),
        "assignment.waiting" => (E::AssignmentWaiting, "waiting"),
        "assignment.wait_cancelled" => (E::AssignmentWaitEnded, "revoked"),
        "assignment.wait_expired" | "assignment.wait_ended" => (E::AssignmentWaitEnded, "failed"),
        "account.status_changed" => return Some((E::AccountStatusChanged, other(row))),
        "sync.finished" => return Some((E::SyncFinished, other(row))),
        "lifecycle.applied" => return Some((E::LifecycleApplied, other(row))),
        "bulk.finished" => return Some((E::BulkFinished, other(row))),
        "plan.applied" => return Some((E::PlanApplied, other(row))),
        // The notification itself (as `GET …/notifications/{id}` shows it) is the data.
        "notification.raised" => return Some((E::NotificationRaised, row.details.clone())),
        "notification.cleared" => return Some((E::NotificationCleared, row.details.clone())),
        "webhook.disabled" => return Some((E::WebhookDisabled, other(row))),
        _ => return None,
    };
    row.assignment_id?;
    Some((kind, assignment(row, kind, state)))
}

/// `data` of an assignment's event.
fn assignment(row: &OutboxRow, kind: FeedEventType, state: &str) -> Value {
    let details = &row.details;
    let subject = row.subject.as_deref().and_then(|label| {
        let (kind, id) = label.split_once(':')?;
        Some(json!({"kind": kind, "id": id}))
    });
    let asset = match (&row.adam_id, &row.pricing_param) {
        (Some(adam), Some(pricing)) => json!({"adam_id": adam, "pricing_param": pricing}),
        _ => Value::Null,
    };
    let mut data = Map::new();
    data.insert("assignment_id".into(), json!(row.assignment_id));
    data.insert("version".into(), json!(row.version));
    data.insert("state".into(), json!(state));
    data.insert("subject".into(), subject.unwrap_or(Value::Null));
    data.insert("asset".into(), asset);
    data.insert("account_id".into(), json!(row.account_id));
    // Who: the caller who asked (a revocation's requester even when Apple's release is
    // recorded by `system`).
    let actor = details
        .get("revoked_by")
        .and_then(Value::as_str)
        .unwrap_or(&row.actor);
    data.insert("actor".into(), json!(actor));
    data.insert("rule".into(), json!(row.rule));
    data.insert("reason".into(), reason(row));
    data.insert("apple_event_id".into(), json!(row.apple_event_id));
    data.insert("request_id".into(), json!(row.request_id));
    if matches!(
        kind,
        FeedEventType::AssignmentRevoking | FeedEventType::AssignmentRevoked
    ) {
        // Absent when the row does not say (never null: one "no value" per property).
        if let Some(notify) = details.get("notify_user").filter(|v| !v.is_null()) {
            data.insert("notify_on_removal".into(), notify.clone());
        }
    }
    if let Some(error) = error(row, kind) {
        data.insert("error".into(), error);
    }
    if kind == FeedEventType::AssignmentReallocated
        && let Some(to) = details.get("reallocated_to").filter(|v| !v.is_null())
    {
        data.insert("reallocated_to".into(), to.clone());
    }
    data.insert("details".into(), details.clone());
    Value::Object(data)
}

/// Why the change happened, where the row says.
fn reason(row: &OutboxRow) -> Value {
    match row.details.get("reason") {
        Some(Value::String(s)) => json!(s),
        _ if row.action == "assignment.allocated" => row
            .details
            .get("queued_because")
            .filter(|v| !v.is_null())
            .cloned()
            .unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// Apple's (or the service's) error of a failure.
fn error(row: &OutboxRow, kind: FeedEventType) -> Option<Value> {
    match kind {
        FeedEventType::AssignmentFailed | FeedEventType::AssignmentReallocated => Some(
            row.details
                .get("error")
                .filter(|e| !e.is_null())
                .cloned()
                // `assignment.failed` of a submission and the re-allocation rows record the
                // error itself as their details.
                .unwrap_or_else(|| row.details.clone()),
        ),
        _ => None,
    }
}

/// `data` of an event about something else than an assignment.
fn other(row: &OutboxRow) -> Value {
    json!({
        "account_id": row.account_id,
        "assignment_id": row.assignment_id,
        "actor": row.actor,
        "request_id": row.request_id,
        "details": row.details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use uuid::Uuid;

    fn row(action: &str, details: Value) -> OutboxRow {
        OutboxRow {
            id: 7,
            occurred_at: Utc::now(),
            space_id: Some("acme".into()),
            actor: "mdm".into(),
            action: action.into(),
            account_id: Some(Uuid::nil()),
            assignment_id: Some(Uuid::max()),
            subject: Some("device:S1".into()),
            adam_id: Some("408709785".into()),
            pricing_param: Some("STDQ".into()),
            rule: Some("priority".into()),
            apple_event_id: None,
            request_id: Some("req-1".into()),
            details,
            version: Some(3),
            txid: "1000".into(),
        }
    }

    #[test]
    fn an_allocation_is_allocated_with_its_identity_and_version() {
        let (kind, data) = map(&row("assignment.allocated", json!({"skipped": 0}))).unwrap();
        assert_eq!(kind, FeedEventType::AssignmentAllocated);
        assert_eq!(data["assignment_id"], json!(Uuid::max()));
        assert_eq!(data["version"], json!(3));
        assert_eq!(data["state"], "pending");
        assert_eq!(data["subject"], json!({"kind": "device", "id": "S1"}));
        assert_eq!(
            data["asset"],
            json!({"adam_id": "408709785", "pricing_param": "STDQ"})
        );
        assert_eq!(data["actor"], "mdm");
        assert_eq!(data["rule"], "priority");
        assert!(data.get("notify_on_removal").is_none());
    }

    #[test]
    fn a_served_wait_is_wait_served() {
        let (kind, data) = map(&row(
            "assignment.allocated",
            json!({"served_from_wait_list": true}),
        ))
        .unwrap();
        assert_eq!(kind, FeedEventType::AssignmentWaitServed);
        assert_eq!(data["state"], "pending");
    }

    #[test]
    fn revocations_carry_who_why_and_notify_on_removal() {
        let requested = row(
            "assignment.revoke_requested",
            json!({"reason": "user left", "state": "revoking", "notify_user": true}),
        );
        let (kind, data) = map(&requested).unwrap();
        assert_eq!(kind, FeedEventType::AssignmentRevoking);
        assert_eq!(data["reason"], "user left");
        assert_eq!(data["notify_on_removal"], true);
        assert_eq!(data["state"], "revoking");

        // A pending license is dropped at once: revoked directly.
        let dropped = row(
            "assignment.revoke_requested",
            json!({"reason": "r", "state": "revoked", "notify_user": false}),
        );
        let (kind, data) = map(&dropped).unwrap();
        assert_eq!(kind, FeedEventType::AssignmentRevoked);
        assert_eq!(data["notify_on_removal"], false);

        // Apple's release, recorded by the system: the requester is the actor.
        let mut released = row(
            "assignment.revoked",
            json!({"state": "revoked", "revoked_by": "admin-1", "reason": "r",
                   "notify_user": true}),
        );
        released.actor = "system".into();
        let (kind, data) = map(&released).unwrap();
        assert_eq!(kind, FeedEventType::AssignmentRevoked);
        assert_eq!(data["actor"], "admin-1");
        assert_eq!(data["notify_on_removal"], true);
    }

    #[test]
    fn failures_and_reallocations_carry_the_error() {
        let error = json!({"code": 9709, "reallocated_to": Uuid::nil()});
        let (kind, data) = map(&row("assignment.reallocated", error.clone())).unwrap();
        assert_eq!(kind, FeedEventType::AssignmentReallocated);
        assert_eq!(data["state"], "failed");
        assert_eq!(data["reallocated_to"], json!(Uuid::nil()));
        assert_eq!(data["error"], error);
        let (kind, data) = map(&row(
            "assignment.failed",
            json!({"state": "failed", "error": {"code": 9610}}),
        ))
        .unwrap();
        assert_eq!(kind, FeedEventType::AssignmentFailed);
        assert_eq!(data["error"], json!({"code": 9610}));
        let (kind, _) = map(&row("assignment.reallocation_failed", json!({}))).unwrap();
        assert_eq!(kind, FeedEventType::AssignmentFailed);
    }

    #[test]
    fn wait_list_endings_say_how() {
        let (kind, data) = map(&row("assignment.wait_cancelled", json!({}))).unwrap();
        assert_eq!(
            (kind, data["state"].clone()),
            (FeedEventType::AssignmentWaitEnded, json!("revoked"))
        );
        let (kind, data) = map(&row("assignment.wait_expired", json!({}))).unwrap();
        assert_eq!(
            (kind, data["state"].clone()),
            (FeedEventType::AssignmentWaitEnded, json!("failed"))
        );
        assert_eq!(
            map(&row("assignment.waiting", json!({}))).unwrap().0,
            FeedEventType::AssignmentWaiting
        );
    }

    #[test]
    fn other_changes_pass_their_details() {
        let mut status = row(
            "account.status_changed",
            json!({"from": "active", "to": "expired"}),
        );
        status.assignment_id = None;
        let (kind, data) = map(&status).unwrap();
        assert_eq!(kind, FeedEventType::AccountStatusChanged);
        assert_eq!(data["details"]["to"], "expired");
        assert_eq!(data["account_id"], json!(Uuid::nil()));
        for (action, kind) in [
            ("sync.finished", FeedEventType::SyncFinished),
            ("lifecycle.applied", FeedEventType::LifecycleApplied),
            ("bulk.finished", FeedEventType::BulkFinished),
            ("plan.applied", FeedEventType::PlanApplied),
            ("notification.raised", FeedEventType::NotificationRaised),
            ("notification.cleared", FeedEventType::NotificationCleared),
            ("webhook.disabled", FeedEventType::WebhookDisabled),
        ] {
            assert_eq!(map(&row(action, json!({}))).unwrap().0, kind, "{action}");
        }
    }

    #[test]
    fn a_license_marked_lost_is_revoked() {
        let (kind, data) = map(&row("assignment.marked_lost", json!({}))).unwrap();
        assert_eq!(kind, FeedEventType::AssignmentRevoked);
        assert_eq!(data["state"], "revoked");
    }

    #[test]
    fn history_only_actions_are_no_events() {
        for action in [
            "policy.created",
            "account.tested",
            "sync.requested",
            "assignment.resubmitted",
            "space.created",
        ] {
            assert!(map(&row(action, json!({}))).is_none(), "{action}");
        }
        // An assignment action without its assignment is no assignment event.
        let mut orphan = row("assignment.activated", json!({}));
        orphan.assignment_id = None;
        assert!(map(&orphan).is_none());
    }
}
