//! The connection pool. Each connection gets `application_name` and a `statement_timeout` when it
//! is opened, so a runaway query cannot hold a request forever.
//!
//! Sessions also set `jit = off`: PostgreSQL compiles a query whose estimated cost is high (a
//! claim over a long queue, a batch of a thousand ids) at 15-20 ms a time, longer than the query
//! runs; this service's queries are short.
//!
//! The hot statements are prepared once per connection ([`crate::db::prepared`]) and may run on
//! PostgreSQL's generic plans. Those are planned from the table statistics of the moment, which
//! lag behind a fresh or fast-growing ledger, so hot-path SQL is written to need no statistics
//! to find its index: it filters on the most selective key alone (ids, subject ids), not on a
//! space id that the planner might believe selects a handful of rows.

use diesel::ConnectionError;
use diesel_async::pooled_connection::deadpool::Object;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use futures_util::FutureExt;
use secrecy::ExposeSecret;

use crate::config::DbArgs;

pub type Pool = diesel_async::pooled_connection::deadpool::Pool<AsyncPgConnection>;
pub type Conn = Object<AsyncPgConnection>;

/// Opens one session with the settings every service connection shares (see the module docs),
/// then runs `extra` (more `SET`s).
pub async fn open(url: &str, extra: &str) -> Result<AsyncPgConnection, ConnectionError> {
    let mut conn = AsyncPgConnection::establish(url).await?;
    conn.batch_execute(&format!("SET jit = off; {extra}"))
        .await
        .map_err(ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

/// The pool could not be built (a setting deadpool refuses).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the database pool: {0}")]
pub struct PoolError(#[source] pub deadpool::managed::BuildError);

/// Builds the pool. Connections are opened lazily, so this succeeds while the database is down;
/// `/readyz` reports it.
pub fn connect(args: &DbArgs, application_name: &str) -> Result<Pool, PoolError> {
    let statement_timeout = args.db_statement_timeout_ms;
    let app_name = application_name.replace('\'', "");
    let mut config = ManagerConfig::<AsyncPgConnection>::default();
    config.custom_setup = Box::new(move |url| {
        let setup = format!(
            "SET application_name = '{app_name}'; SET statement_timeout = {statement_timeout}"
        );
        async move { open(url, &setup).await }.boxed()
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        args.database_url.expose_secret(),
        config,
    );
    Pool::builder(manager)
        .max_size(args.db_pool_size as usize)
        .wait_timeout(Some(args.timeout()))
        .create_timeout(Some(args.timeout()))
        .recycle_timeout(Some(args.timeout()))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(PoolError)
}
