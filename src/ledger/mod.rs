//! The ledger: diesel models and queries, one module per table family. Handlers and workers
//! call these; nothing else writes SQL.

pub mod accounts;
pub mod activity;
pub mod assets;
pub mod assignments;
pub mod jobs;
pub mod origin;
pub mod policies;
pub mod spaces;
pub mod subjects;
