//! `vpp-broker dev`: a complete local service with no set-up.
//!
//! 1. PostgreSQL: `DATABASE_URL` if given, else 127.0.0.1:5432 (user `postgres`, database
//!    `vpp_broker_dev`), else a private cluster started from this machine's server binaries
//!    (see [`crate::local_pg`]).
//! 2. The Apple simulator in-process, then the service itself ([`Service::start`], the same
//!    assembly as `serve`) with migrations applied first, then a demo space (`demo`).
//! 3. The simulator's two demo locations attached to the demo space as accounts with priorities
//!    1 and 2 (assets with counts; notifications flow back to this server); the dispatcher runs,
//!    so allocations reach the simulator and become `active`.
//! 4. A random HS256 secret for this run and a development JWT (scope `admin`, every space,
//!    valid 7 days) printed with curl lines that work. sTokens are encrypted with a dev key
//!    generated once into `$TMPDIR/vpp-broker-dev/token-keys`.
//!
//! Not for production: the secret changes at every start and the token is all-powerful.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use jsonwebtoken::{EncodingKey, Header, encode};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::CommandError;
use crate::accounts::{AccountError, attach};
use crate::apple::types::ProductType;
use crate::apple_sim::{
    SeedAsset, SeedAssignment, SeedFile, SeedLocation, SimConfig, SimError, SimHandle, SimSettings,
    Simulator,
};
use crate::config::{AccountArgs, AppleArgs, AuthArgs, DbArgs, DispatchArgs, HttpArgs};
use crate::crypto::{KeySpecError, TokenCipher};
use crate::domain::account_status::WhenUnusable;
use crate::ledger::accounts as accounts_store;
use crate::ledger::spaces::{self, NewSpace};
use crate::local_pg::{self, LocalPgError};
use crate::service::{Service, ServiceError, Settings};
use crate::state::AppState;

pub const DEV_ISSUER: &str = "vpp-broker-dev";
pub const DEV_AUDIENCE: &str = "vpp-broker";
pub const DEMO_SPACE: &str = "demo";

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Address the development server listens on.
    #[arg(long, env = "VPP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Use this database instead of finding or starting one.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<SecretString>,
    /// Database created on the found server when DATABASE_URL is not given.
    #[arg(long, env = "VPP_DEV_DATABASE", default_value = "vpp_broker_dev")]
    pub dev_database: String,
    /// Address of the in-process Apple simulator (port 0: any free port).
    #[arg(long, env = "VPP_DEV_SIM_LISTEN", default_value = "127.0.0.1:0")]
    pub sim_listen: SocketAddr,
    /// Seconds between two evaluations of the notifications (as for `serve`).
    #[arg(long, env = "VPP_NOTIFICATION_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub notification_secs: u64,
}

#[derive(Serialize)]
struct DevClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    scope: &'a str,
    spaces: [&'a str; 1],
    iat: i64,
    nbf: i64,
    exp: i64,
}

/// Signs the development token.
pub fn dev_token(secret: &SecretString, valid_for: chrono::Duration) -> Result<String, DevError> {
    let now = chrono::Utc::now().timestamp();
    let claims = DevClaims {
        iss: DEV_ISSUER,
        aud: DEV_AUDIENCE,
        sub: "developer",
        scope: "admin",
        spaces: ["*"],
        iat: now,
        nbf: now,
        exp: now + valid_for.num_seconds(),
    };
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.expose_secret().as_bytes()),
    )
    .map_err(DevError::SignToken)
}

/// Why `dev` stopped.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    LocalPg(#[from] LocalPgError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    TokenKeys(#[from] KeySpecError),
    #[error("cannot sign the development token: {0}")]
    SignToken(#[source] jsonwebtoken::errors::Error),
    #[error("cannot start the Apple simulator: {0}")]
    StartSimulator(#[source] SimError),
    #[error("cannot reach the database: {0}")]
    Database(#[source] deadpool::managed::PoolError<diesel_async::pooled_connection::PoolError>),
    #[error("cannot {what}: {source}")]
    Query {
        what: &'static str,
        #[source]
        source: diesel::result::Error,
    },
    #[error("demo account vanished")]
    DemoAccountVanished,
    #[error("cannot attach demo account {name}: {source}")]
    Attach {
        name: String,
        #[source]
        source: AccountError,
    },
    #[error("cannot {action} {}: {source}", path.display())]
    KeyFile {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn query(what: &'static str) -> impl FnOnce(diesel::result::Error) -> DevError {
    move |source| DevError::Query { what, source }
}

pub async fn run(args: DevArgs) -> Result<(), CommandError> {
    let given = args.database_url.as_ref().map(ExposeSecret::expose_secret);
    let server = local_pg::locate(given).await.map_err(DevError::from)?;
    let database_url: SecretString = match &args.database_url {
        Some(url) => url.clone(),
        None => {
            server
                .ensure_database(&args.dev_database)
                .await
                .map_err(DevError::from)?;
            server.database_url(&args.dev_database).into()
        }
    };
    tracing::info!(source = ?server.source, "PostgreSQL found");

    let mut secret_bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut secret_bytes);
    let secret = SecretString::from(hex::encode(secret_bytes));
    let token = dev_token(&secret, chrono::Duration::days(7))?;
    let token_keys = dev_token_key()?;
    let sim = Simulator::start(SimConfig {
        bind: args.sim_listen,
        workers: 1,
        settings: SimSettings {
            event_delay_ms: 500,
            ..SimSettings::default()
        },
        seed: Some(demo_seed()),
        handle_signals: false,
    })
    .await
    .map_err(DevError::StartSimulator)?;
    let base = format!("http://{}", args.listen);
    let dispatch = crate::dispatch::Settings::from_args(
        &DispatchArgs {
            notification_secs: args.notification_secs,
            ..DispatchArgs::default()
        },
        database_url.expose_secret(),
    );
    let service = Service::start(Settings {
        db: DbArgs {
            database_url,
            db_pool_size: 8,
            db_timeout_secs: 5,
            db_statement_timeout_ms: 15_000,
        },
        application_name: "vpp-broker-dev".into(),
        http: HttpArgs {
            listen: args.listen,
            http_workers: 2,
            body_limit_bytes: 256 * 1024,
            shutdown_timeout_secs: 5,
        },
        listener: None,
        auth: AuthArgs {
            jwt_issuer: DEV_ISSUER.into(),
            jwt_audience: DEV_AUDIENCE.into(),
            jwt_hs256_secret: Some(secret),
            jwt_public_keys_pem: None,
            jwt_jwks_url: None,
            jwt_jwks_refresh_secs: 300,
            jwt_leeway_secs: 30,
        },
        apple: AppleArgs {
            apple_base_url: sim.base_url(),
            apple_timeout_secs: 30,
        },
        accounts: AccountArgs {
            token_keys: Some(token_keys),
            instance_id: None,
            instance_name: "vpp-broker dev".into(),
            // The simulator delivers notifications over plain http to this server.
            public_url: Some(base.clone()),
        },
        dispatch: Some(dispatch),
        reconcile: crate::config::ReconcileArgs::default(),
        // Local development: receivers on localhost are fine.
        webhooks: crate::config::WebhookArgs {
            webhook_allow_private: true,
            ..crate::config::WebhookArgs::default()
        },
        migrate: true,
        handle_signals: true,
    })
    .await
    .map_err(DevError::from)?;
    demo_space(service.pool()).await?;
    // Accounts are attached once the server runs: Apple (the simulator) checks the
    // notification URL while the client config is written.
    let accounts = demo_accounts(service.state(), &sim).await?;

    println!();
    println!("vpp-broker dev is running at {base}   (Ctrl-C stops it)");
    println!("  API docs:        {base}/docs/");
    println!(
        "  Apple simulator: {}  (admin API: {})",
        sim.base_url(),
        sim.admin_url()
    );
    for line in &accounts {
        println!("  {line}");
    }
    println!("  JWT (admin, all spaces, valid 7 days, this run only):");
    println!("    export VPP_TOKEN={token}");
    println!("  try:");
    println!(
        "    curl -s -H \"Authorization: Bearer $VPP_TOKEN\" {base}/v1/spaces/{DEMO_SPACE}/accounts"
    );
    println!(
        "    curl -s -H \"Authorization: Bearer $VPP_TOKEN\" -H 'content-type: application/json' \\\n      \
         -d '{{\"asset\":{{\"adam_id\":\"{PAGES}\"}},\"subject\":{{\"kind\":\"device\",\"id\":\"DEMO-SERIAL-1\"}}}}' \\\n      \
         '{base}/v1/spaces/{DEMO_SPACE}/assignments?wait=10'"
    );
    println!();
    let result = service.wait().await;
    sim.stop().await;
    Ok(result.map_err(DevError::from)?)
}

/// Creates the demo space unless an earlier run did.
async fn demo_space(pool: &crate::db::Pool) -> Result<(), DevError> {
    let mut conn = pool.get().await.map_err(DevError::Database)?;
    if spaces::find(&mut conn, DEMO_SPACE)
        .await
        .map_err(query("look up the demo space"))?
        .is_none()
    {
        spaces::insert(
            &mut conn,
            NewSpace {
                id: DEMO_SPACE,
                name: "Demo space",
                description: "Created by `vpp-broker dev`",
            },
        )
        .await
        .map_err(query("create the demo space"))?;
    }
    Ok(())
}

/// Apple product ids of the demo assets (Pages, Keynote, Numbers, and a book).
const PAGES: &str = "361309726";
const KEYNOTE: &str = "361285480";
const NUMBERS: &str = "361304891";
const BOOK: &str = "1436133720";

/// Demo locations. Fixed tokens and expiry dates make the sTokens identical at every run, so
/// accounts attached by an earlier run keep working against this run's simulator.
fn demo_seed() -> SeedFile {
    let app = |adam: &str, total: i64| SeedAsset {
        adam_id: adam.into(),
        product_type: Some(ProductType::App),
        total_count: total,
        ..Default::default()
    };
    let location = |uid: &str, name: &str, token: &str, assets: Vec<SeedAsset>| SeedLocation {
        u_id: Some(uid.into()),
        name: name.into(),
        org_name: Some("Demo Org".into()),
        country: Some("US".into()),
        token: Some(token.into()),
        token_exp_date: Some("2030-01-01T00:00:00+0000".into()),
        assets,
        ..Default::default()
    };
    // Demo HQ's Pages licenses of the MDM it is taken over from: the first sync reports them
    // `apple_only`, ready to adopt (docs/sync.md).
    let previous_mdm = (1..=3)
        .map(|i| SeedAssignment {
            adam_id: PAGES.into(),
            serial_number: Some(format!("PREVIOUS-MDM-{i}")),
            ..Default::default()
        })
        .collect();
    SeedFile {
        settings: None,
        locations: vec![
            SeedLocation {
                assignments: previous_mdm,
                ..location(
                    "9000000001",
                    "Demo HQ",
                    "demo-hq-token",
                    vec![
                        app(PAGES, 50),
                        app(KEYNOTE, 50),
                        app(NUMBERS, 10),
                        SeedAsset {
                            product_type: Some(ProductType::Book),
                            ..app(BOOK, 20)
                        },
                    ],
                )
            },
            location(
                "9000000002",
                "Demo Branch",
                "demo-branch-token",
                vec![app(PAGES, 20), app(NUMBERS, 5)],
            ),
        ],
    }
}

/// Attaches the demo locations to the demo space (priorities 1 and 2) unless an earlier run
/// did. Accounts whose sToken this run cannot decrypt (the dev key file was removed) are
/// dropped and attached again: dev data is disposable.
async fn demo_accounts(state: &AppState, sim: &SimHandle) -> Result<Vec<String>, DevError> {
    let mut conn = state.pool.get().await.map_err(DevError::Database)?;
    let existing = accounts_store::list(&mut conn, DEMO_SPACE)
        .await
        .map_err(query("list the demo accounts"))?;
    for account in &existing {
        if state
            .cipher
            .open(account.id.as_bytes(), &account.sealed_token())
            .is_err()
        {
            tracing::warn!(account = %account.id, "demo account sealed with a lost dev key; attaching it again");
            accounts_store::lock_space(&mut conn, DEMO_SPACE)
                .await
                .map_err(query("lock the demo space"))?;
            accounts_store::remove(&mut conn, DEMO_SPACE, account.id)
                .await
                .map_err(query("remove a demo account"))?;
        }
    }
    drop(conn);
    let mut lines = Vec::new();
    for (i, seeded) in sim.seeded().iter().enumerate() {
        let mut conn = state.pool.get().await.map_err(DevError::Database)?;
        let row = match accounts_store::by_location(&mut conn, &seeded.u_id)
            .await
            .map_err(query("look up a demo account"))?
        {
            Some((id, space)) => accounts_store::find(&mut conn, &space, id)
                .await
                .map_err(query("read a demo account"))?
                .ok_or(DevError::DemoAccountVanished)?,
            None => attach::add(
                state,
                &vpp_origin(),
                DEMO_SPACE,
                attach::NewAccountInput {
                    name: seeded.name.clone(),
                    stoken: seeded.s_token.clone(),
                    priority: Some(i as i32 + 1),
                    notify_on_removal: true,
                    new_assets_for_everyone: true,
                    when_unusable: WhenUnusable::QueueWhenThrottled,
                    distribution_list: Vec::new(),
                },
            )
            .await
            .map_err(|source| DevError::Attach {
                name: seeded.name.clone(),
                source,
            })?,
        };
        lines.push(format!(
            "account {} (priority {}): {}  [{}]",
            row.name, row.priority, row.id, row.status
        ));
    }
    Ok(lines)
}

/// The dev token key: generated once, kept in the temp dir so later runs can decrypt the
/// sTokens earlier runs stored.
fn dev_token_key() -> Result<SecretString, DevError> {
    let dir = std::env::temp_dir().join("vpp-broker-dev");
    let path = dir.join("token-keys");
    if let Ok(spec) = std::fs::read_to_string(&path) {
        return Ok(spec.trim().into());
    }
    std::fs::create_dir_all(&dir).map_err(|source| DevError::KeyFile {
        action: "create",
        path: dir.clone(),
        source,
    })?;
    let (_, spec) = TokenCipher::generate("dev")?;
    std::fs::write(&path, spec.expose_secret()).map_err(|source| DevError::KeyFile {
        action: "write",
        path: path.clone(),
        source,
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    tracing::info!(path = %path.display(), "generated a development token encryption key (serve needs VPP_TOKEN_KEYS instead)");
    Ok(spec)
}

/// Who `dev`'s own changes are recorded as.
fn vpp_origin() -> crate::domain::origin::Origin {
    crate::domain::origin::Origin::new("vpp-broker dev", None)
}
