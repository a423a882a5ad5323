//! `zeitwork edge`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use zw_config::Limits;
use zw_edge::{AccessLog, AccessLogTarget, Edge, FileProvider};

#[derive(Args)]
#[command(
    after_help = "Example:\n  zeitwork edge --config ./dynamic.yaml --http 127.0.0.1:8080\n\n\
The configuration is Traefik's file-provider format (TOML, YAML or JSON; a file or a\n\
directory). It is watched: a valid change is applied atomically, an invalid one is logged\n\
and shown at http://ADMIN/debug/config while the running configuration stays."
)]
pub struct EdgeArgs {
    /// Configuration file or directory (Traefik dynamic configuration).
    #[arg(long, short = 'c', value_name = "PATH")]
    config: PathBuf,
    /// Address of the HTTP entry point, named `web` in routers' `entryPoints`.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    http: SocketAddr,
    /// More entry points, as NAME=ADDR (repeatable).
    #[arg(long = "entry-point", value_name = "NAME=ADDR")]
    entry_points: Vec<String>,
    /// Admin address: /health, /ready, /metrics, /debug/config.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9080")]
    admin: SocketAddr,
    /// Worker threads (1 runs everything on the main thread). Default: one per CPU.
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Write a JSON access log line per request to `stdout` or a file.
    #[arg(long, value_name = "stdout|PATH")]
    access_log: Option<String>,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = super::duration)]
    drain_timeout: Duration,
    /// How often the configuration files are checked for changes.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = super::duration)]
    watch_interval: Duration,
    /// Log format on stderr.
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

pub fn run(args: EdgeArgs) -> ExitCode {
    super::init_logging(args.log_format == "json");
    match run_inner(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("zeitwork edge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_inner(args: EdgeArgs) -> anyhow::Result<()> {
    let mut eps: Vec<(String, SocketAddr)> = vec![("web".into(), args.http)];
    for spec in &args.entry_points {
        let (name, addr) = spec
            .split_once('=')
            .with_context(|| format!("--entry-point {spec}: expected NAME=ADDR"))?;
        let addr: SocketAddr = addr.parse().with_context(|| {
            format!("--entry-point {spec}: `{addr}` is not an address like 0.0.0.0:8443")
        })?;
        if eps.iter().any(|(n, _)| n == name) {
            bail!("entry point `{name}` is defined twice");
        }
        eps.push((name.to_string(), addr));
    }
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
    .context("starting the runtime")?;

    runtime.block_on(async move {
        let access_log = match args.access_log.as_deref() {
            None => None,
            Some("stdout" | "-") => Some(AccessLog::start(&AccessLogTarget::Stdout)?),
            Some(p) => Some(AccessLog::start(&AccessLogTarget::File(p.into())).with_context(|| format!("opening access log {p}"))?),
        };
        let edge = Edge::new(eps.iter().map(|(n, _)| n.clone()).collect(), access_log);
        let limits = Limits::default();
        // Refuse to start on a broken configuration: an edge that silently serves nothing
        // is worse than one that says why it did not start.
        let mut provider = FileProvider::new(args.config.clone(), limits);
        let e2 = edge.clone();
        let (provider, loaded) = tokio::task::spawn_blocking(move || {
            let r = provider.load_into(&e2);
            (provider, r)
        })
        .await?;
        loaded.map_err(|e| anyhow::anyhow!("invalid configuration in {}:\n{e}", args.config.display()))?;

        let mut listeners = Vec::new();
        for (name, addr) in &eps {
            let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding entry point `{name}` to {addr}"))?;
            tracing::info!(entry_point = %name, addr = %l.local_addr()?, "listening");
            listeners.push(l);
        }
        let admin = tokio::net::TcpListener::bind(args.admin).await.with_context(|| format!("binding admin to {}", args.admin))?;
        tracing::info!(addr = %admin.local_addr()?, "admin listening (/health /ready /metrics /debug/config)");

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(provider.watch(edge.clone(), args.watch_interval, stop_rx));
        edge.serve(listeners, Some(admin), shutdown_signal(), args.drain_timeout).await;
        let _ = stop_tx.send(true);
        tracing::info!("stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
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
