//! Who caused a change: the caller (JWT subject, or `system` for background work) and the id of
//! the HTTP request that asked, carried as a value from the handler into the use case.
//!
//! Nothing below the transport reads the request's task-local context: the allocation
//! combiner's executors and the dispatcher run on tasks of their own, where a task-local is
//! absent, so an id read there was silently NULL. The handler builds the origin
//! (`Caller::origin`) and everything it calls receives it.

/// Who asked for a change, and in which request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The caller's JWT `sub`, or `system` for background work.
    pub actor: String,
    /// The `x-request-id` of the request that asked; `None` for background work.
    pub request_id: Option<String>,
}

impl Origin {
    pub fn new(actor: impl Into<String>, request_id: Option<String>) -> Origin {
        Origin {
            actor: actor.into(),
            request_id,
        }
    }

    /// Background work of the service itself (dispatcher, schedules).
    pub fn system() -> Origin {
        Origin::new("system", None)
    }
}
