//! The pure domain: rules and value checks, without I/O.

pub mod validation;
