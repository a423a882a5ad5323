pub mod config;
pub mod edge;
pub mod route;

use std::time::Duration;

/// Parses `10s`, `500ms`, `1m` (a clap value parser).
pub fn duration(s: &str) -> Result<Duration, String> {
    zw_config::Dur::parse(s).map(|d| d.0)
}

/// Logs to stderr; `RUST_LOG` filters (default `info`), `--log-format json` for machines.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
