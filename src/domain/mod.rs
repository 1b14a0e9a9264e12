//! The pure domain: the vocabulary and the rules, with no I/O. Use cases
//! ([`crate::engine`], [`crate::accounts`]) load what the rules need from the store
//! ([`crate::ledger`]), call them, and write the outcome back; the store maps these types to
//! its tables. Rule ids (A1–A10, T1–T10, V1–V4, N1–N4) are defined in `docs/rules.md`.
//!
//! - [`model`]: assignment states, license types, rules, decisions; [`records`]: the ledger's
//!   records the rules read; [`origin`]: who caused a change;
//! - [`allocation`]: what an allocation is asked and why it is refused; [`snapshot`]: what one
//!   batch of allocations reads; [`decide`]: the allocation rules; [`policy`]: reservations,
//!   groups, bans;
//! - [`reconciliation`]: sync kinds, drift classes and plan actions (keeping the ledger true
//!   to Apple); [`reconcile`]: whether a license this deployment assigned is still used (T6);
//! - [`lifecycle`]: lifecycle events from other MDM components (V2, V3, V5); [`bulk`]: bulk
//!   operations (V6);
//! - [`notices`]: the notifications (N1, N2) raised and cleared from usage and token facts;
//! - [`account_status`]: the account status machine; [`validation`]: field checks and the
//!   422 problem's field errors.

pub mod account_status;
pub mod allocation;
pub mod bulk;
pub mod decide;
pub mod forecast;
pub mod inventory;
pub mod lifecycle;
pub mod model;
pub mod notices;
pub mod origin;
pub mod policy;
pub mod reconcile;
pub mod reconciliation;
pub mod records;
pub mod revocation;
pub mod snapshot;
pub mod validation;
