//! Embedded diesel migrations.
//!
//! `migrate` is safe when several replicas start at once: it takes a PostgreSQL advisory lock,
//! so one process applies pending migrations while the others wait and then find nothing to do.
//! Migrations follow expand/contract (docs/deploying.md, "Upgrading"), because old replicas keep
//! serving while a new release migrates.

use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Advisory lock key that serialises migration runs across replicas ("vppmigr" in ASCII).
const MIGRATION_LOCK: i64 = 0x0076_7070_6d69_6772;

type Wrapper = AsyncConnectionWrapper<AsyncPgConnection>;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("migration failed: {0}")]
    Migration(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("database error: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("migration task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Applies every pending migration under the advisory lock; returns the versions applied.
pub async fn run_pending(database_url: &str) -> Result<Vec<String>, MigrateError> {
    let url = database_url.to_owned();
    tokio::task::spawn_blocking(move || {
        use diesel::Connection;
        let mut conn = Wrapper::establish(&url)?;
        lock(&mut conn, true)?;
        let result = conn
            .run_pending_migrations(MIGRATIONS)
            .map(|versions| versions.iter().map(ToString::to_string).collect::<Vec<_>>())
            .map_err(MigrateError::Migration);
        lock(&mut conn, false)?;
        result
    })
    .await?
}

/// Reverts the most recent `count` migrations (used by tests and by operators rolling back).
pub async fn revert(database_url: &str, count: usize) -> Result<Vec<String>, MigrateError> {
    let url = database_url.to_owned();
    tokio::task::spawn_blocking(move || {
        use diesel::Connection;
        let mut conn = Wrapper::establish(&url)?;
        lock(&mut conn, true)?;
        let mut reverted = Vec::new();
        let mut result = Ok(());
        for _ in 0..count {
            match conn.revert_last_migration(MIGRATIONS) {
                Ok(version) => reverted.push(version.to_string()),
                Err(e) => {
                    result = Err(MigrateError::Migration(e));
                    break;
                }
            }
        }
        lock(&mut conn, false)?;
        result.map(|()| reverted)
    })
    .await?
}

/// True when every embedded migration has been applied (readiness check).
pub async fn is_up_to_date(conn: &mut AsyncPgConnection) -> Result<bool, diesel::result::Error> {
    use diesel_async::RunQueryDsl;
    let latest = latest_version();
    let applied: i64 = diesel::sql_query(
        "SELECT count(*) AS n FROM __diesel_schema_migrations WHERE version = $1",
    )
    .bind::<diesel::sql_types::Text, _>(latest)
    .get_result::<Count>(conn)
    .await
    .map(|c| c.n)?;
    Ok(applied == 1)
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Version string of the newest embedded migration (diesel's version: the folder name's digits).
pub fn latest_version() -> String {
    use diesel::migration::MigrationSource;
    let migrations = MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS).unwrap_or_default();
    migrations
        .iter()
        .map(|m| m.name().version().to_string())
        .max()
        .unwrap_or_default()
}

/// Number of embedded migrations.
pub fn count() -> usize {
    use diesel::migration::MigrationSource;
    MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Takes (`acquire`) or gives back the migration lock, a session-level advisory lock.
///
/// A waiting run polls `pg_try_advisory_lock` instead of blocking in `pg_advisory_lock`: a
/// `CREATE INDEX CONCURRENTLY` of the run holding the lock waits for every transaction open in
/// the database to end, and a statement blocked on the lock would be one of them, waiting for
/// the index in turn (PostgreSQL reports the cycle as a deadlock). A poll is a short statement
/// that ends at once.
fn lock(conn: &mut Wrapper, acquire: bool) -> Result<(), diesel::result::Error> {
    use diesel::RunQueryDsl;
    if !acquire {
        return diesel::sql_query("SELECT pg_advisory_unlock($1)")
            .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK)
            .execute(conn)
            .map(|_| ());
    }
    loop {
        let taken = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS ok")
            .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK)
            .get_result::<Taken>(conn)?
            .ok;
        if taken {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[derive(diesel::QueryableByName)]
struct Taken {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    ok: bool,
}
