//! `vpp-broker dev`: a complete local service with no set-up.
//!
//! 1. PostgreSQL: `DATABASE_URL` if given, else 127.0.0.1:5432 (user `postgres`, database
//!    `vpp_broker_dev`), else a private cluster started from this machine's server binaries
//!    (see [`crate::local_pg`]).
//! 2. Migrations, a demo space (`demo`).
//! 3. A random HS256 secret for this run and a development JWT (scope `admin`, every space,
//!    valid 7 days) printed with a curl line that works.
//!
//! Not for production: the secret changes at every start and the token is all-powerful.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use clap::Args;
use jsonwebtoken::{EncodingKey, Header, encode};
use rand::RngCore;
use serde::Serialize;

use crate::auth::jwt::Authenticator;
use crate::config::{AuthArgs, DbArgs, HttpArgs};
use crate::db::{self, migrate};
use crate::http::AppState;
use crate::http::server::{self, Parts};
use crate::ledger::spaces::{self, NewSpace};
use crate::local_pg;

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
    pub database_url: Option<String>,
    /// Database created on the found server when DATABASE_URL is not given.
    #[arg(long, env = "VPP_DEV_DATABASE", default_value = "vpp_broker_dev")]
    pub dev_database: String,
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
pub fn dev_token(secret: &str, valid_for: chrono::Duration) -> Result<String, String> {
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
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("cannot sign the development token: {e}"))
}

pub async fn run(args: DevArgs) -> Result<(), String> {
    let server = local_pg::locate(args.database_url.as_deref()).await?;
    let database_url = match &args.database_url {
        Some(url) => url.clone(),
        None => {
            server.ensure_database(&args.dev_database).await?;
            server.database_url(&args.dev_database)
        }
    };
    tracing::info!(source = ?server.source, "PostgreSQL found");
    migrate::run_pending(&database_url)
        .await
        .map_err(|e| e.to_string())?;

    let db_args = DbArgs {
        database_url,
        db_pool_size: 8,
        db_timeout_secs: 5,
        db_statement_timeout_ms: 15_000,
    };
    let pool = db::connect(&db_args, "vpp-broker-dev")?;
    {
        let mut conn = pool.get().await.map_err(|e| e.to_string())?;
        if spaces::find(&mut conn, DEMO_SPACE)
            .await
            .map_err(|e| e.to_string())?
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
            .map_err(|e| e.to_string())?;
        }
    }

    let mut secret_bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut secret_bytes);
    let secret = hex::encode(secret_bytes);
    let auth_args = AuthArgs {
        jwt_issuer: DEV_ISSUER.into(),
        jwt_audience: DEV_AUDIENCE.into(),
        jwt_hs256_secret: Some(secret.clone()),
        jwt_public_keys_pem: None,
        jwt_jwks_url: None,
        jwt_jwks_refresh_secs: 300,
        jwt_leeway_secs: 30,
    };
    let authenticator = Arc::new(Authenticator::from_args(&auth_args).await?);
    let token = dev_token(&secret, chrono::Duration::days(7))?;

    let http_args = HttpArgs {
        listen: args.listen,
        http_workers: 2,
        body_limit_bytes: 256 * 1024,
        shutdown_timeout_secs: 5,
    };
    let listener = TcpListener::bind(args.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let (cipher, _) = crate::crypto::TokenCipher::generate("dev");
    tracing::info!(
        "generated a token encryption key for this run (VPP_TOKEN_KEYS is not needed in dev)"
    );
    let apple_args = crate::config::AppleArgs {
        apple_base_url: "https://vpp.itunes.apple.com/mdm/v2".into(),
        apple_timeout_secs: 30,
    };
    let account_args = crate::config::AccountArgs {
        token_keys: None,
        instance_id: None,
        instance_name: "vpp-broker dev".into(),
        public_url: None,
    };
    let state =
        Arc::new(AppState::build(pool, &apple_args, &account_args, Arc::new(cipher)).await?);
    let running = server::start(
        Parts {
            state,
            authenticator,
        },
        &http_args,
        listener,
        true,
    )
    .map_err(|e| format!("cannot start the HTTP server: {e}"))?;

    let base = format!("http://{}", args.listen);
    println!();
    println!("vpp-broker dev is running at {base}   (Ctrl-C stops it)");
    println!("  API docs:  {base}/docs/");
    println!("  JWT (admin, all spaces, valid 7 days, this run only):");
    println!("    export VPP_TOKEN={token}");
    println!("  try:");
    println!("    curl -s -H \"Authorization: Bearer $VPP_TOKEN\" {base}/v1/spaces/{DEMO_SPACE}");
    println!();
    running
        .await
        .map_err(|e| format!("HTTP server failed: {e}"))
}
