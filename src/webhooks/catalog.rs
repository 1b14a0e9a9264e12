//! The event types an endpoint may subscribe to (its `event_types` filter; empty = all), and
//! the one event the webhooks send that is not a space event: the test ping.
//!
//! The list is the feed's catalogue of event types ([`FeedEventType`], the `events` table's
//! `type`); an unknown type in a filter is a 422, so a typo never silently subscribes to
//! nothing.

use crate::events::mapping::FeedEventType;

/// Every type a filter may name: the feed's event types.
pub fn event_types() -> impl Iterator<Item = &'static str> {
    FeedEventType::ALL.iter().map(|t| t.as_str())
}

/// The type of the test ping (`POST …/webhooks/{id}/ping`); never in the events table.
pub const PING: &str = "webhook.ping";

pub fn known(type_: &str) -> bool {
    type_.parse::<FeedEventType>().is_ok()
}
