//! The allocation engine: deciding which account serves a license (allocate), and giving
//! licenses back (revoke). Apple is never called here: decisions come from the ledger, and the
//! Apple work they cause is queued as jobs in the same transaction for the dispatcher
//! ([`crate::dispatch`]).

pub mod allocate;
pub mod candidates;
pub mod model;
pub mod policy;
pub mod revoke;
