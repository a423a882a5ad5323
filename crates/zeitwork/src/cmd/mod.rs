pub mod agent;
pub mod balancer;
pub mod client;
pub mod config;
pub mod deploy;
pub mod edge;
pub mod operator;
pub mod release;
pub mod route;
pub mod up;

use std::time::Duration;

/// Where the platform keeps its state: the SQLite database, the admin token and the
/// platform CA's row (`zeitwork operator`), and with `zeitwork up` also the edge's
/// last-known-good and the agent's records and logs.
#[derive(clap::Args)]
pub struct DataDir {
    /// Where the platform keeps its state (database, admin token; with `up`, also the
    /// edge's and the agent's).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "./zeitwork-data",
        env = "ZEITWORK_DATA_DIR"
    )]
    pub data_dir: std::path::PathBuf,
}

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

/// Runs a service: logging set up first, then `body`; an error is logged and printed as
/// `zeitwork NAME: …` with exit status 1.
pub fn service(
    name: &str,
    json_logs: bool,
    body: impl FnOnce() -> anyhow::Result<()>,
) -> std::process::ExitCode {
    init_logging(json_logs);
    match body() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("zeitwork {name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A Tokio runtime with `workers` threads (default: one per CPU); 1 runs everything on
/// the calling thread.
/// Raises this process's open-file limit to the hard limit (as Go's runtime does for
/// Traefik) and returns it: the connection limits of the edge and the balancer are
/// derived from it.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}

pub fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    let workers = workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
    .context("starting the runtime")
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
