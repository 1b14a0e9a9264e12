//! `eventually`: waits for something the service does in the background, polling an observation
//! until a condition holds, and fails with the last value it saw.
//!
//! Shared by both test binaries (`it` and `apple`). A fixed sleep followed by a positive
//! assertion is a race; use this instead. A sleep before asserting that something did NOT happen
//! is fine (there is nothing to poll for), and says so in a comment where it is used.

use std::fmt::Debug;
use std::time::{Duration, Instant};

/// How long [`eventually`] waits: ample for the dispatcher's and the simulator's test timings.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Pause between two observations.
const INTERVAL: Duration = Duration::from_millis(20);

/// Observes with `observe` until `done` holds for the observation, which it returns. Panics after
/// [`TIMEOUT`], naming `what` was awaited and showing the last observation.
pub async fn eventually<T: Debug>(
    what: &str,
    observe: impl AsyncFnMut() -> T,
    done: impl FnMut(&T) -> bool,
) -> T {
    eventually_within(TIMEOUT, what, observe, done).await
}

/// [`eventually`] with its own timeout (for the few waits whose bound is itself asserted).
pub async fn eventually_within<T: Debug>(
    timeout: Duration,
    what: &str,
    mut observe: impl AsyncFnMut() -> T,
    mut done: impl FnMut(&T) -> bool,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = observe().await;
        if done(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}; last observed: {seen:#?}"
        );
        tokio::time::sleep(INTERVAL).await;
    }
}
