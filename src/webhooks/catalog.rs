//! The event types an endpoint may subscribe to (its `event_types` filter; empty = all), and
//! the one event the webhooks send that is not a space event: the test ping.
//!
//! The list is the feed's catalogue of event types (`events` table `type`) plus
//! `webhook.disabled`; an unknown type in a filter is a 422, so a typo never silently
//! subscribes to nothing. It must name every type the event writer produces.

/// Every type a filter may name.
pub const EVENT_TYPES: &[&str] = &[
    "assignment.allocated",
    "assignment.active",
    "assignment.failed",
    "assignment.reallocated",
    "assignment.revoking",
    "assignment.revoked",
    "assignment.adopted",
    "assignment.waiting",
    "assignment.wait_served",
    "assignment.wait_ended",
    "account.status_changed",
    "sync.finished",
    "lifecycle.applied",
    "bulk.finished",
    "plan.applied",
    "notification.raised",
    "notification.cleared",
    "webhook.disabled",
];

/// The type of the test ping (`POST …/webhooks/{id}/ping`); never in the events table.
pub const PING: &str = "webhook.ping";

pub fn known(type_: &str) -> bool {
    EVENT_TYPES.contains(&type_)
}
