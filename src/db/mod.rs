//! PostgreSQL access: the connection pool (diesel-async + deadpool), embedded migrations,
//! the diesel schema and the text-backed enums the schema's CHECK constraints allow.
//!
//! Everything on the request path is async. Migrations run on a blocking thread through
//! diesel-async's `AsyncConnectionWrapper`, so the binary does not link libpq.

pub mod enums;
pub mod migrate;
pub mod pool;
pub mod prepared;
pub mod schema;

pub use pool::{Conn, Pool, connect};
