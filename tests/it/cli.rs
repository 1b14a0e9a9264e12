//! The binary: help text documents every option with its environment variable, bad settings
//! stop it with a clear message, SIGTERM stops it gracefully.

use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_vpp-broker");

fn run(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn help_lists_subcommands_and_env_vars() {
    let out = run(&["--help"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["serve", "migrate", "openapi", "dev"] {
        assert!(text.contains(sub), "{sub} missing from --help:\n{text}");
    }
    let out = run(&["serve", "--help"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    for var in [
        "DATABASE_URL",
        "VPP_DB_POOL_SIZE",
        "VPP_LISTEN",
        "VPP_BODY_LIMIT_BYTES",
        "VPP_SHUTDOWN_TIMEOUT_SECS",
        "VPP_JWT_ISSUER",
        "VPP_JWT_AUDIENCE",
        "VPP_JWT_HS256_SECRET",
        "VPP_JWT_PUBLIC_KEYS_PEM",
        "VPP_JWT_JWKS_URL",
        "VPP_LOG_FORMAT",
        "VPP_LOG",
        "VPP_AUTO_MIGRATE",
        "VPP_TOKEN_KEYS",
        "VPP_INSTANCE_ID",
        "VPP_INSTANCE_NAME",
        "VPP_PUBLIC_URL",
        "VPP_APPLE_BASE_URL",
        "VPP_APPLE_TIMEOUT_SECS",
    ] {
        assert!(text.contains(var), "{var} missing from serve --help");
    }
}

#[test]
fn invalid_configuration_stops_with_a_clear_message() {
    let base = [
        (
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        ),
        ("VPP_JWT_ISSUER", "i"),
        ("VPP_JWT_AUDIENCE", "a"),
        ("VPP_TOKEN_KEYS", crate::support::app::TOKEN_KEYS),
    ];
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "no JWT key configured"),
        (&[("VPP_JWT_HS256_SECRET", "short")], "at least 32 bytes"),
        (
            &[
                ("VPP_JWT_HS256_SECRET", &"x".repeat(40)),
                ("VPP_LISTEN", "nonsense"),
            ],
            "invalid socket address",
        ),
        (
            &[
                ("VPP_JWT_HS256_SECRET", &"x".repeat(40)),
                ("VPP_DB_POOL_SIZE", "0"),
            ],
            "VPP_DB_POOL_SIZE",
        ),
        (&[("VPP_JWT_PUBLIC_KEYS_PEM", "garbage")], "no PEM block"),
        (
            &[
                ("VPP_JWT_HS256_SECRET", &"x".repeat(40)),
                ("VPP_LOG", "[[["),
            ],
            "VPP_LOG",
        ),
        (
            &[
                ("VPP_JWT_HS256_SECRET", &"x".repeat(40)),
                ("VPP_TOKEN_KEYS", "k1:c2hvcnQ="),
            ],
            "must be 32 bytes",
        ),
        (
            &[
                ("VPP_JWT_HS256_SECRET", &"x".repeat(40)),
                ("VPP_PUBLIC_URL", "ftp://x"),
            ],
            "VPP_PUBLIC_URL",
        ),
        (
            &[
                ("VPP_JWT_HS256_SECRET", &"x".repeat(40)),
                ("VPP_APPLE_BASE_URL", "nonsense"),
            ],
            "VPP_APPLE_BASE_URL",
        ),
    ];
    for (extra, expected) in cases {
        let mut envs: Vec<(&str, &str)> = base.to_vec();
        envs.extend_from_slice(extra);
        let out = run(&["serve"], &envs);
        assert!(!out.status.success(), "{expected}: should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in:\n{stderr}"
        );
    }
    let out = run(
        &["serve"],
        &[
            ("DATABASE_URL", "mysql://x/y"),
            ("VPP_JWT_ISSUER", "i"),
            ("VPP_JWT_AUDIENCE", "a"),
            ("VPP_JWT_HS256_SECRET", &"x".repeat(40)),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("postgres://"));
    let out = run(&["serve"], &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
    // No key to encrypt sTokens: serve refuses to start.
    let out = run(
        &["serve"],
        &[
            (
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
            ("VPP_JWT_ISSUER", "i"),
            ("VPP_JWT_AUDIENCE", "a"),
            ("VPP_JWT_HS256_SECRET", &"x".repeat(40)),
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("VPP_TOKEN_KEYS is required"));
}

#[test]
fn openapi_subcommand_prints_the_committed_document() {
    let out = run(&["openapi"], &[]);
    assert!(out.status.success());
    let committed = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json"),
    )
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), committed);
}

#[tokio::test]
async fn serve_stops_gracefully_on_sigterm() {
    let db = crate::support::db::TestDb::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(BIN)
        .arg("serve")
        .env("DATABASE_URL", &db.url)
        .env("VPP_LISTEN", format!("127.0.0.1:{port}"))
        .env("VPP_JWT_ISSUER", "i")
        .env("VPP_JWT_AUDIENCE", "a")
        .env("VPP_JWT_HS256_SECRET", "x".repeat(40))
        .env("VPP_HTTP_WORKERS", "1")
        .env("VPP_TOKEN_KEYS", crate::support::app::TOKEN_KEYS)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    crate::support::procs::wait_ready(
        &client,
        &format!("http://127.0.0.1:{port}"),
        crate::support::eventually::TIMEOUT,
    )
    .await;
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = crate::support::eventually_within(
        Duration::from_secs(15),
        "stopped after SIGTERM",
        async || child.try_wait().unwrap(),
        Option::is_some,
    )
    .await
    .unwrap();
    assert!(status.success(), "exit status {status:?}");
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("vpp-broker stopped"), "{stderr}");
}
