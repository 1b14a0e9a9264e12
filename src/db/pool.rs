//! The connection pool. Each connection gets `application_name` and a `statement_timeout` when it
//! is opened, so a runaway query cannot hold a request forever.

use diesel::ConnectionError;
use diesel_async::pooled_connection::deadpool::Object;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use futures_util::FutureExt;

use crate::config::DbArgs;

pub type Pool = diesel_async::pooled_connection::deadpool::Pool<AsyncPgConnection>;
pub type Conn = Object<AsyncPgConnection>;

/// Builds the pool. Connections are opened lazily, so this succeeds while the database is down;
/// `/readyz` reports it.
pub fn connect(args: &DbArgs, application_name: &str) -> Result<Pool, String> {
    let statement_timeout = args.db_statement_timeout_ms;
    let app_name = application_name.replace('\'', "");
    let mut config = ManagerConfig::<AsyncPgConnection>::default();
    config.custom_setup = Box::new(move |url| {
        let setup = format!(
            "SET application_name = '{app_name}'; SET statement_timeout = {statement_timeout}"
        );
        async move {
            let mut conn = AsyncPgConnection::establish(url).await?;
            conn.batch_execute(&setup)
                .await
                .map_err(ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        }
        .boxed()
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        &args.database_url,
        config,
    );
    Pool::builder(manager)
        .max_size(args.db_pool_size as usize)
        .wait_timeout(Some(args.timeout()))
        .create_timeout(Some(args.timeout()))
        .recycle_timeout(Some(args.timeout()))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| format!("cannot build the database pool: {e}"))
}
