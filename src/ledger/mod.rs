//! The ledger: diesel models and queries, one module per table family. Handlers and workers
//! call these; nothing else writes SQL.

pub mod activity;
pub mod spaces;
