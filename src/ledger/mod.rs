//! The store: every SQL statement of the service, one module per table family (plus
//! [`allocation_load`] and [`allocation_write`], the allocation batch's fixed set of statements).
//! Use cases call these functions, inside transactions they open; nothing else writes SQL (a
//! test, `tests/it/layering.rs`, holds that). The records the rules read are the domain's
//! ([`crate::domain::records`]).

pub mod accounts;
pub mod activity;
pub mod adoption;
pub mod allocation_load;
pub mod allocation_write;
pub mod apple_events;
pub mod apple_mirror;
pub mod apple_notifications;
pub mod apple_pace;
pub mod apple_users;
pub mod asset_counts;
pub mod assets;
pub mod assignments;
pub mod bulk_operations;
pub mod dead_letters;
pub mod deployment;
pub mod drift;
pub mod drift_scope;
pub mod events;
pub mod idempotency_keys;
pub mod inventory;
pub mod jobs;
pub mod lifecycle;
pub mod notices;
pub mod outbox;
pub mod plans;
pub mod policies;
pub mod reconcile;
pub mod repairs;
pub mod retention;
pub mod revocations;
pub mod settlements;
pub mod snapshot;
pub mod spaces;
pub mod subjects;
pub mod submissions;
pub mod sync_runs;
pub mod usage_gauges;
pub mod waitlist;
pub mod wakeups;
pub mod webhooks;
