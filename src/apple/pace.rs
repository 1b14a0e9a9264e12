//! One Apple request budget per sToken across every replica (rule T13).
//!
//! The client's own pacer (see [`super::client`]) counts this process's requests; several
//! `serve` replicas, each with its own pacer, could together exceed Apple's
//! `maxRequestPerSecond` for a token (the account's dispatcher lock changes hands between
//! rounds, a sync may run on one replica while another dispatches). So a request also holds a
//! slot of a [`SharedPace`] that every replica sees — the service's is in PostgreSQL
//! (`crate::ledger::apple_pace`) — from just before it is sent until it ended, and the slot
//! frees a pacing window after the request was sent, or when it ended if that is later: the
//! local pacer's rule, across processes (and, while the process paces the token strictly after
//! a 429, a whole window after the request ended). A slot whose holder died frees when its lease (the
//! request's longest possible duration) runs out.
//!
//! The shared budget fails open: when it cannot be asked (the database is down), requests go
//! with the local pacing alone and Apple's Retry-After (T7) is the backstop — Apple work stops
//! soon anyway when the ledger cannot be written.

use std::time::Duration;

use futures_util::future::BoxFuture;

/// A held slot: which one, and the lease it was taken with (to free exactly that holding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub index: i32,
    /// Opaque to the client: the budget's own stamp of this holding.
    pub lease: i64,
}

/// A request budget per token shared by every process that calls Apple.
pub trait SharedPace: Send + Sync {
    /// Takes one of the `per_window` slots of the token `key` (its SHA-256 digest, never the
    /// token) for a request about to be sent, held for at most `lease` (longer than `window`).
    /// `Ok(None)`: the budget could not be asked (go without it). `Err(wait)`: no slot is free;
    /// ask again after `wait` (until the first slot frees, or a short poll while every slot is
    /// held by a request in flight, whose end nobody knows).
    fn take(
        &self,
        key: [u8; 32],
        per_window: usize,
        window: Duration,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Option<Slot>, Duration>>;

    /// The request of `slot` ended: the slot frees after `free_in` (what is left of the pacing
    /// window since the request was sent; zero when it ended after the window).
    fn release(&self, key: [u8; 32], slot: Slot, free_in: Duration) -> BoxFuture<'static, ()>;
}
