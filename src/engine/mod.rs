//! The allocation engine: deciding which account serves a license (allocate), and giving
//! licenses back (revoke). Apple is never called here: decisions come from the ledger, and the
//! Apple work they cause is queued as jobs in the same transaction for the dispatcher
//! ([`crate::dispatch`]).
//!
//! - [`allocate`]: requests, outcomes, and the batch pipeline (load → decide → write);
//! - [`combiner`]: gathers a process's concurrent allocations into batches;
//! - [`load`], [`decide`], [`write`]: the three steps; [`policy`]: reservations, groups, bans;
//! - [`revoke`]: revocation; [`model`]: the vocabulary.

pub mod allocate;
pub mod combiner;
pub mod decide;
pub mod load;
pub mod model;
pub mod policy;
pub mod revocations;
pub mod revoke;
pub mod write;
