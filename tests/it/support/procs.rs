//! `vpp-broker serve` as real child processes, configured like the Helm chart configures a pod
//! (everything through environment variables), for multi-process and crash tests.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{app, keys};

pub const BIN: &str = env!("CARGO_BIN_EXE_vpp-broker");

pub struct ServeProcess {
    pub child: Child,
    pub port: u16,
    pub base_url: String,
}

/// The environment the chart's ConfigMap and Secret give a pod, pointed at this test's
/// database and simulator.
pub fn chart_env(database_url: &str, apple_base_url: &str) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", database_url),
        ("VPP_JWT_ISSUER", keys::ISSUER),
        ("VPP_JWT_AUDIENCE", keys::AUDIENCE),
        ("VPP_JWT_HS256_SECRET", keys::HS_SECRET),
        ("VPP_TOKEN_KEYS", app::TOKEN_KEYS),
        ("VPP_APPLE_BASE_URL", apple_base_url),
        ("VPP_INSTANCE_NAME", "vpp-broker multi"),
        ("VPP_LOG_FORMAT", "json"),
        ("VPP_LOG", "warn"),
        ("VPP_HTTP_WORKERS", "2"),
        ("VPP_DB_POOL_SIZE", "12"),
        ("VPP_WORKERS", "2"),
        ("VPP_BATCH_QUIET_MS", "100"),
        ("VPP_BATCH_MAX_WAIT_MS", "1000"),
        ("VPP_EVENT_POLL_SECS", "1"),
        ("VPP_EVENT_POLL_MAX_SECS", "2"),
        ("VPP_JOB_LEASE_SECS", "5"),
        ("VPP_IDLE_POLL_MS", "50"),
        ("VPP_SHUTDOWN_TIMEOUT_SECS", "10"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

impl ServeProcess {
    pub fn spawn(env: &[(String, String)]) -> ServeProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(BIN)
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("VPP_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn vpp-broker serve");
        ServeProcess {
            child,
            port,
            base_url: format!("http://127.0.0.1:{port}"),
        }
    }

    pub async fn wait_ready(&self, client: &reqwest::Client) {
        wait_ready(client, &self.base_url, Duration::from_secs(30)).await;
    }

    pub fn signal(&self, signal: i32) {
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for the process to exit; returns its status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        super::eventually_within(
            timeout,
            "process exited",
            async || self.child.try_wait().unwrap(),
            Option::is_some,
        )
        .await
        .unwrap()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the server at `base_url` answers `/readyz` with 200.
pub async fn wait_ready(client: &reqwest::Client, base_url: &str, timeout: Duration) {
    let ready = format!("{base_url}/readyz");
    super::eventually_within(
        timeout,
        &format!("{base_url} ready (/readyz status)"),
        async || {
            client
                .get(&ready)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .ok()
        },
        |status| *status == Some(200),
    )
    .await;
}
