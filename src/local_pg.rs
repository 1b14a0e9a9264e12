//! Finds a PostgreSQL server for `dev` and for the test suite, starting a private one if needed.
//!
//! Order: an explicit URL (`DATABASE_URL`); else PostgreSQL on 127.0.0.1:5432 as user
//! `postgres` (trust auth, as on Debian's default cluster); else a private cluster created with
//! the server binaries on this machine in `VPP_PG_DIR` (default `/tmp/vpp-broker-pg`) on port
//! `VPP_PG_PORT` (default 54329). `initdb` refuses to run as root, so as root the cluster is
//! created and started through the `postgres` system user (`runuser`). The private cluster is
//! left running so the next test run or `dev` start reuses it; stop it with
//! `pg_ctl -D /tmp/vpp-broker-pg/data stop`. A file lock serialises concurrent starters (test
//! processes run in parallel).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

/// Why no PostgreSQL could be found or started. Messages say what to do; sources are kept.
#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error("PostgreSQL at the given DATABASE_URL does not answer: {0}")]
    GivenUnreachable(#[source] ConnectError),
    #[error("VPP_PG_PORT must be a TCP port (1-65535), not {0:?}")]
    BadPort(String),
    #[error("private PostgreSQL did not accept connections: {0}")]
    PrivateUnreachable(#[source] ConnectError),
    #[error("starting the private PostgreSQL failed: {0}")]
    StartTask(#[source] tokio::task::JoinError),
    #[error("cannot create database {name}: {source}")]
    CreateDatabase {
        name: String,
        #[source]
        source: diesel::result::Error,
    },
    #[error("cannot connect to create a database: {0}")]
    AdminUnreachable(#[source] ConnectError),
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("path {} is not UTF-8", .0.display())]
    NotUtf8(PathBuf),
    #[error("cannot run {}: {source}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("chown postgres {} failed (is there a `postgres` system user?): {stderr}", dir.display())]
    Chown { dir: PathBuf, stderr: String },
    #[error("no PostgreSQL server binaries found ({0}); install PostgreSQL or set DATABASE_URL")]
    NoBinaries(&'static str),
    #[error("{} failed: {output}", program.display())]
    Failed { program: PathBuf, output: String },
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Connection(#[from] diesel::ConnectionError),
    #[error("timed out")]
    TimedOut,
}

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const DEFAULT_PRIVATE_DIR: &str = "/tmp/vpp-broker-pg";
const DEFAULT_PRIVATE_PORT: u16 = 54329;

/// Where the server came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The URL given by the caller.
    Given,
    /// The machine's PostgreSQL on 127.0.0.1:5432.
    Local5432,
    /// A private cluster this module created or started.
    Private { dir: PathBuf, port: u16 },
}

/// A reachable PostgreSQL server.
#[derive(Clone, Debug)]
pub struct Server {
    /// URL of the server's maintenance database (`postgres`), for CREATE/DROP DATABASE.
    pub admin_url: String,
    pub source: Source,
}

impl Server {
    /// URL of database `name` on this server, with the same credentials.
    pub fn database_url(&self, name: &str) -> String {
        with_database(&self.admin_url, name)
    }

    /// Creates database `name` unless it exists.
    pub async fn ensure_database(&self, name: &str) -> Result<(), LocalPgError> {
        let mut conn = connect(&self.admin_url)
            .await
            .map_err(LocalPgError::AdminUnreachable)?;
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', ""));
        match conn.batch_execute(&sql).await {
            Ok(()) => Ok(()),
            Err(e) if e.to_string().contains("already exists") => Ok(()),
            Err(source) => Err(LocalPgError::CreateDatabase {
                name: name.to_owned(),
                source,
            }),
        }
    }
}

/// Replaces the database name (path) of a PostgreSQL URL.
pub fn with_database(url: &str, name: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            parsed.set_path(&format!("/{name}"));
            parsed.to_string()
        }
        Err(_) => url.to_owned(),
    }
}

async fn connect(url: &str) -> Result<AsyncPgConnection, ConnectError> {
    match tokio::time::timeout(Duration::from_secs(5), AsyncPgConnection::establish(url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ConnectError::TimedOut),
    }
}

/// Finds or starts a server. `given` is a URL that must be used if present (its database part
/// is replaced by `postgres` for administration).
pub async fn locate(given: Option<&str>) -> Result<Server, LocalPgError> {
    if let Some(url) = given {
        let admin_url = with_database(url, "postgres");
        connect(&admin_url)
            .await
            .map_err(LocalPgError::GivenUnreachable)?;
        return Ok(Server {
            admin_url,
            source: Source::Given,
        });
    }
    if connect(DEFAULT_URL).await.is_ok() {
        return Ok(Server {
            admin_url: DEFAULT_URL.to_owned(),
            source: Source::Local5432,
        });
    }
    let dir = std::env::var("VPP_PG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(DEFAULT_PRIVATE_DIR));
    let port = match std::env::var("VPP_PG_PORT") {
        Ok(p) => p
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or(LocalPgError::BadPort(p))?,
        Err(_) => DEFAULT_PRIVATE_PORT,
    };
    private(&dir, port, false).await
}

/// A private cluster in `dir` on `port` (`-k dir`, 127.0.0.1 only, fsync off), created the
/// first time and started unless it answers already; waits until it accepts connections (10 s).
/// `locate` uses it, and so does the test suite's chaos test, which stops the cluster
/// ([`stop_private`]) and starts it again mid-storm.
///
/// Without `durable_commits` a commit returns before its WAL is written
/// (`synchronous_commit=off`: fast for tests, and safe as long as the server is not killed);
/// with it, a commit the server acknowledged survives a crash of the PostgreSQL server (the
/// chaos test checks that no granted license is lost) — not of the machine: `fsync` and
/// full-page writes stay off either way, unlike production.
pub async fn private(dir: &Path, port: u16, durable_commits: bool) -> Result<Server, LocalPgError> {
    let admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    if connect(&admin_url).await.is_err() {
        let dir2 = dir.to_owned();
        tokio::task::spawn_blocking(move || start_private(&dir2, port, durable_commits))
            .await
            .map_err(LocalPgError::StartTask)??;
        let mut last = None;
        for _ in 0..50 {
            match connect(&admin_url).await {
                Ok(_) => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Some(last) = last {
            return Err(LocalPgError::PrivateUnreachable(last));
        }
    }
    Ok(Server {
        admin_url,
        source: Source::Private {
            dir: dir.to_owned(),
            port,
        },
    })
}

/// Stops the private cluster in `dir`: `immediate` is `pg_ctl stop -m immediate`, a crash as
/// far as clients can tell (no checkpoint, every session cut); otherwise a fast shutdown.
/// Blocking.
pub fn stop_private(dir: &Path, immediate: bool) -> Result<(), LocalPgError> {
    // SAFETY: geteuid has no preconditions, cannot fail and touches no memory of ours.
    let as_root = unsafe { libc::geteuid() } == 0;
    let pg_ctl = find_binary("pg_ctl")?;
    let data = dir.join("data");
    let mode = if immediate { "immediate" } else { "fast" };
    run(
        as_root,
        &pg_ctl,
        &["-D", path_str(&data)?, "-m", mode, "-w", "stop"],
    )
}

/// Creates (first time) and starts the private cluster. Blocking.
fn start_private(dir: &Path, port: u16, durable_commits: bool) -> Result<(), LocalPgError> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| LocalPgError::Io {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let lock_path = dir.join("start.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io("open", &lock_path))?;
    lock.lock().map_err(io("lock", &lock_path))?;

    // SAFETY: geteuid has no preconditions, cannot fail and touches no memory of ours.
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root {
        chown_to_postgres(dir)?;
    }
    let data = dir.join("data");
    let initdb = find_binary("initdb")?;
    let pg_ctl = find_binary("pg_ctl")?;
    if !data.join("PG_VERSION").exists() {
        run(
            as_root,
            &initdb,
            &[
                "-D",
                path_str(&data)?,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
    }
    let status = run_status(as_root, &pg_ctl, &["-D", path_str(&data)?, "status"]);
    if !status {
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit={} -c full_page_writes=off -c max_connections=400",
            path_str(dir)?,
            if durable_commits { "on" } else { "off" }
        );
        let log = dir.join("server.log");
        run(
            as_root,
            &pg_ctl,
            &[
                "-D",
                path_str(&data)?,
                "-l",
                path_str(&log)?,
                "-w",
                "-o",
                &options,
                "start",
            ],
        )?;
    }
    drop(lock);
    Ok(())
}

fn path_str(p: &Path) -> Result<&str, LocalPgError> {
    p.to_str()
        .ok_or_else(|| LocalPgError::NotUtf8(p.to_owned()))
}

fn chown_to_postgres(dir: &Path) -> Result<(), LocalPgError> {
    let out = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .output()
        .map_err(|source| LocalPgError::Spawn {
            program: "chown".into(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LocalPgError::Chown {
            dir: dir.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Finds a PostgreSQL server binary on PATH or in Debian's /usr/lib/postgresql/<v>/bin.
fn find_binary(name: &'static str) -> Result<PathBuf, LocalPgError> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    versions.sort();
    for v in versions.iter().rev() {
        let candidate = v.join("bin").join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(LocalPgError::NoBinaries(name))
}

fn command(as_root: bool, binary: &Path, args: &[&str]) -> Command {
    let mut cmd = if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(binary);
        c
    } else {
        Command::new(binary)
    };
    cmd.args(args).current_dir("/tmp");
    cmd
}

fn run(as_root: bool, binary: &Path, args: &[&str]) -> Result<(), LocalPgError> {
    let out = command(as_root, binary, args)
        .output()
        .map_err(|source| LocalPgError::Spawn {
            program: binary.to_owned(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LocalPgError::Failed {
            program: binary.to_owned(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

fn run_status(as_root: bool, binary: &Path, args: &[&str]) -> bool {
    command(as_root, binary, args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_only_the_path() {
        assert_eq!(
            with_database("postgres://u:p@h:5/old?sslmode=disable", "new"),
            "postgres://u:p@h:5/new?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x_1"),
            "postgres://postgres@127.0.0.1:5432/x_1"
        );
    }

    #[test]
    fn finds_server_binaries() {
        // The machine has PostgreSQL's server binaries; this is what `dev` relies on.
        let initdb = find_binary("initdb").expect("initdb");
        assert!(initdb.ends_with("initdb"));
    }
}
