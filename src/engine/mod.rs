//! The license use cases: allocating (which account serves a license) and revoking (giving
//! licenses back). Apple is never called here: decisions come from the ledger, and the Apple work
//! they cause is queued as jobs in the same transaction for the dispatcher ([`crate::dispatch`]).
//!
//! - [`allocate`]: the batch pipeline: the store loads ([`crate::ledger::allocation_load`]), the
//!   domain decides ([`crate::domain::decide`]), the store writes
//!   ([`crate::ledger::allocation_write`]), all in one transaction;
//! - [`combiner`]: gathers a process's concurrent allocations, and its concurrent revocations of
//!   one assignment, into batches decided one transaction each;
//! - [`revoke`] gives licenses back;
//! - [`waitlist`] serves allocations that wait for a license (A12) when one frees.

pub mod allocate;
pub mod combiner;
pub mod revoke;
pub mod waitlist;
