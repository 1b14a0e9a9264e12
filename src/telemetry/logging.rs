//! Log set-up. JSON lines by default; each line carries the fields of the spans it was written in,
//! so every line of a request carries its `request_id`.
//!
//! Contract: log a failure once, where it is handled; never log request headers, bodies,
//! sTokens, keys or JWTs. The HTTP layer logs method, route, status and latency only.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogArgs, LogFormat};

/// Logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("VPP_LOG is not a valid log filter: {0}")]
    Filter(#[source] tracing_subscriber::filter::ParseError),
}

/// Installs the global subscriber, writing to stderr. Safe to call more than once (later calls
/// keep the first subscriber), so tests and `dev` can share it.
pub fn init(args: &LogArgs) -> Result<(), LoggingError> {
    init_with_writer(args, std::io::stderr)
}

/// Same as [`init`] with a chosen writer (tests capture log output this way).
pub fn init_with_writer<W>(args: &LogArgs, writer: W) -> Result<(), LoggingError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(&args.log_level).map_err(LoggingError::Filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(true);
    let result = match args.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // An already installed subscriber is fine: keep it.
    let _ = result;
    Ok(())
}
