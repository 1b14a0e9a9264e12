//! The current request as the transport knows it: its id and path, in a task-local the request
//! middleware ([`super::context`]) sets for the handler's task. Problem bodies and the origin of
//! a change ([`crate::auth::Caller::origin`]) read it here; nothing below the transport does (use
//! cases receive the origin as a value).

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// What handlers and error rendering may know about the current request.
#[derive(Clone, Debug)]
pub struct RequestInfo {
    pub request_id: String,
    pub path: String,
}

tokio::task_local! {
    pub(super) static REQUEST: RequestInfo;
}

/// The current request, when called inside a request.
pub fn current() -> Option<RequestInfo> {
    REQUEST.try_with(Clone::clone).ok()
}

/// The current request id, when called inside a request.
pub fn request_id() -> Option<String> {
    REQUEST.try_with(|r| r.request_id.clone()).ok()
}
