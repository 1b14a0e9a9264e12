//! Apple's Apps and Books license API v2 (`https://vpp.itunes.apple.com/mdm/v2`).
//!
//! - [`stoken`]: the sToken file (parse, validate, keep secret);
//! - [`types`]: serde types of every request, response and notification;
//! - [`error`]: [`AppleError`] and its [`ErrorClass`] (callers decide by class, not number);
//! - [`codes`]: Apple's error numbers, statuses and messages;
//! - [`client`]: [`AppleClient`], paging, pacing, pre-validation;
//! - [`pace`]: [`SharedPace`], the request budget per token that replicas share (T13);
//! - [`dates`]: Apple's `2030-11-08T22:33:22+0000` dates.
//!
//! The contract is Apple's documentation (`docs/apple.md` names it); where sources conflict the
//! decision is written in the module that acts on it ([`client`], [`types`], [`error`]) and in
//! `docs/apple.md`. The simulator that speaks the same API lives in `crate::apple_sim` (cargo
//! feature `dev`).

pub mod client;
pub mod codes;
pub mod dates;
pub mod error;
pub mod pace;
pub mod stoken;
pub mod types;

pub use client::{AppleClient, AssetQuery, AssignmentQuery, Listing, UserQuery};
pub use error::{AppleError, AuthFailure, ErrorClass, ErrorOrigin};
pub use pace::SharedPace;
pub use stoken::{ParsedSToken, SToken, STokenError, parse_stoken};
