//! Captures this test process's log output (JSON lines, every level of vpp_broker) so tests
//! can assert what never reaches the logs.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::fmt::MakeWriter;
use vpp_broker::config::{LogArgs, LogFormat};

#[derive(Clone, Default)]
pub struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

static BUFFER: OnceLock<Buffer> = OnceLock::new();

/// What the tests capture: everything, down to each SQL statement's parameters (logged by
/// tokio-postgres at `debug`), so that a test can show a secret never reaches the logs.
const TEST_LEVEL: &str = "debug,vpp_broker=trace,h2=info,hyper=info,reqwest=info,actix_server=info";

/// The service's default (`VPP_LOG=info`).
const PRODUCTION_LEVEL: &str = "info";

/// Installs the capturing subscriber (once per process) and returns the buffer.
pub fn capture() -> &'static Buffer {
    capture_at(TEST_LEVEL)
}

/// For a benchmark run (an in-process benchmark test given its size by its environment
/// variable): logs at the service's default level, as a deployment does. At the tests' level
/// every statement's parameters are formatted into the log (a 10,000-row batch's JSON, byte by
/// byte), which took half of the wait-list benchmark's write. Call it first in the test: the
/// first subscriber installed in a process stays (nextest runs each test in its own process).
pub fn capture_for_benchmark() -> &'static Buffer {
    capture_at(PRODUCTION_LEVEL)
}

fn capture_at(level: &str) -> &'static Buffer {
    BUFFER.get_or_init(|| {
        let buffer = Buffer::default();
        vpp_broker::telemetry::logging::init_with_writer(
            &LogArgs {
                log_format: LogFormat::Json,
                log_level: level.into(),
            },
            buffer.clone(),
        )
        .expect("log init");
        buffer
    })
}

impl Buffer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}
