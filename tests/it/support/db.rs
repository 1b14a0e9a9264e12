//! A database per test, cloned from a migrated template and dropped afterwards.
//!
//! The template's name carries a hash of the migration files, so changing a migration builds a
//! new template. Templates are built under an advisory lock (test processes run in parallel).
//! Test databases are named `vpp_test_<pid>_<n>`; databases of processes that no longer exist
//! (a crashed or killed run) are swept when the next run builds or checks the template.

use std::sync::atomic::{AtomicU32, Ordering};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use tokio::sync::OnceCell;
use vpp_broker::db::migrate;
use vpp_broker::local_pg::{self, Server};

static SERVER: OnceCell<Server> = OnceCell::const_new();
static TEMPLATE: OnceCell<String> = OnceCell::const_new();
static COUNTER: AtomicU32 = AtomicU32::new(0);
const TEMPLATE_LOCK: i64 = 0x0076_7070_746d_706c;

/// The PostgreSQL server tests use: `DATABASE_URL`'s server if set, else 127.0.0.1:5432, else a
/// private cluster (same search as `vpp-broker dev`).
pub async fn server() -> &'static Server {
    SERVER
        .get_or_init(|| async {
            let given = std::env::var("DATABASE_URL").ok();
            local_pg::locate(given.as_deref())
                .await
                .unwrap_or_else(|e| panic!("no PostgreSQL for tests: {e}"))
        })
        .await
}

async fn admin() -> AsyncPgConnection {
    AsyncPgConnection::establish(&server().await.admin_url)
        .await
        .expect("connect to the maintenance database")
}

fn migrations_hash() -> String {
    use sha2::{Digest, Sha256};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut entries: Vec<_> = walk(&dir);
    entries.sort();
    let mut hasher = Sha256::new();
    for path in entries {
        hasher.update(path.to_string_lossy().as_bytes());
        hasher.update(std::fs::read(&path).expect("read migration"));
    }
    // And what this binary embedded: a binary built before a migration was added (cargo may
    // reuse an expansion of `embed_migrations!`) must not publish a template under the new
    // files' name that lacks it.
    hasher.update(vpp_broker::db::migrate::latest_version().as_bytes());
    hex::encode(&hasher.finalize()[..6])
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("migrations dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[derive(diesel::QueryableByName)]
struct Name {
    #[diesel(sql_type = diesel::sql_types::Text)]
    datname: String,
}

/// Builds (once per schema version) the migrated template database and returns its name.
async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            let name = format!("vpp_tmpl_{}", migrations_hash());
            let mut conn = admin().await;
            conn.batch_execute(&format!("SELECT pg_advisory_lock({TEMPLATE_LOCK})"))
                .await
                .expect("lock");
            let existing: Vec<Name> =
                diesel::sql_query("SELECT datname FROM pg_database WHERE datname LIKE 'vpp\\_t%'")
                    .load(&mut conn)
                    .await
                    .expect("list databases");
            sweep(&mut conn, &existing, &name).await;
            if !existing.iter().any(|n| n.datname == name) {
                let building = format!("{name}_building");
                conn.batch_execute(&format!("DROP DATABASE IF EXISTS {building}"))
                    .await
                    .expect("drop half-built template");
                conn.batch_execute(&format!("CREATE DATABASE {building}"))
                    .await
                    .expect("create template");
                migrate::run_pending(&server().await.database_url(&building))
                    .await
                    .expect("migrate template");
                conn.batch_execute(&format!(
                    "ALTER DATABASE {building} RENAME TO {name}; \
                     ALTER DATABASE {name} IS_TEMPLATE true"
                ))
                .await
                .expect("publish template");
            }
            conn.batch_execute(&format!("SELECT pg_advisory_unlock({TEMPLATE_LOCK})"))
                .await
                .expect("unlock");
            name
        })
        .await
}

/// Drops templates of other schema versions and test databases of dead processes.
async fn sweep(conn: &mut AsyncPgConnection, existing: &[Name], current: &str) {
    for db in existing {
        let stale = if let Some(rest) = db.datname.strip_prefix("vpp_test_") {
            let pid = rest.split('_').next().unwrap_or("");
            !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        } else {
            db.datname.starts_with("vpp_tmpl_") && db.datname != current
        };
        if stale {
            let _ = conn
                .batch_execute(&format!(
                    "ALTER DATABASE {0} IS_TEMPLATE false; DROP DATABASE IF EXISTS {0} WITH (FORCE)",
                    db.datname
                ))
                .await;
        }
    }
}

/// A fresh, migrated database for one test; dropped when this value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let template = template().await;
        let name = format!(
            "vpp_test_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let mut conn = admin().await;
        // Concurrent clones of one template can collide on its lock; retry briefly.
        let mut attempt = 0;
        loop {
            match conn
                .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
                .await
            {
                Ok(()) => break,
                Err(e) if attempt < 20 => {
                    attempt += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot create test database: {e}"),
            }
        }
        TestDb {
            url: server().await.database_url(&name),
            name,
        }
    }

    /// An empty database with no migrations applied (for migration tests).
    pub async fn empty() -> TestDb {
        let name = format!(
            "vpp_test_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create empty database");
        TestDb {
            url: server().await.database_url(&name),
            name,
        }
    }

    pub async fn connect(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url)
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let Some(server) = SERVER.get().cloned() else {
            return;
        };
        // Drop runs inside (or after) the test's runtime: use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(mut conn) = AsyncPgConnection::establish(&server.admin_url).await {
                    let _ = conn
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}
