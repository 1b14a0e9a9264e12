//! The ledger: diesel models and queries, one module per table family. Handlers and workers
//! call these; nothing else writes SQL.

pub mod accounts;
pub mod activity;
pub mod apple_events;
pub mod apple_notifications;
pub mod apple_users;
pub mod asset_counts;
pub mod assets;
pub mod assignments;
pub mod jobs;
pub mod origin;
pub mod policies;
pub mod retention;
pub mod settlements;
pub mod spaces;
pub mod subjects;
pub mod submissions;
