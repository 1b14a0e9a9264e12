//! HTTP transport: server assembly, middleware, problem+json errors, extractors, pagination,
//! ETags, the OpenAPI document and the operational routes. Resources live in [`crate::api`].

pub mod body_shape;
pub mod context;
pub mod etag;
pub mod export;
pub mod extract;
pub mod fallback;
pub mod idempotency;
pub mod openapi;
pub mod ops;
pub mod pagination;
pub mod problem;
pub mod request;
pub mod security_headers;
pub mod server;

pub use crate::state::AppState;
