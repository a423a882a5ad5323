//! `zeitwork balancer`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use zw_l4::config::{
    Algorithm, Config, Discover, HealthConfig, HealthKind, ListenerConfig, PoolConfig,
    ProxyProtocol,
};

#[derive(Args)]
#[command(after_help = "Examples:\n  \
zeitwork balancer --listen 0.0.0.0:8000 --backend 10.0.0.5:8080 --backend 10.0.0.6:8080\n  \
zeitwork balancer --listen 0.0.0.0:8000 --discover http://10.0.0.2:7070 --region eu --token $JOIN\n  \
zeitwork balancer --config balancer.toml      # several listeners, pools, SNI routes\n\n\
Connections are spread over healthy backends and never decrypted; each backend connection\n\
starts with a PROXY protocol v2 header (so edges see the client's address: run them with\n\
--proxy-protocol web=BALANCER_IP/32). Drain a backend with\n  \
curl -X POST 'http://ADMIN/backends/drain?backend=10.0.0.5:8080'")]
pub struct BalancerArgs {
    /// A TOML configuration (listeners, pools, SNI routes); see the crate docs of zw-l4.
    #[arg(long, short = 'c', value_name = "PATH", conflicts_with_all = ["listen", "backends", "discover"])]
    config: Option<PathBuf>,
    /// Listen here (with --backend or --discover).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// A backend (repeatable).
    #[arg(long = "backend", value_name = "ADDR")]
    backends: Vec<SocketAddr>,
    /// Take backends from the operator's edge list: http://HOST:PORT.
    #[arg(long, value_name = "URL")]
    discover: Option<String>,
    /// With --discover: only this region's edges.
    #[arg(long, value_name = "NAME")]
    region: Option<String>,
    /// With --discover: a join token with the edge role.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "ZEITWORK_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// How a backend is chosen: maglev (consistent hash of the client address),
    /// round_robin, or least_conn (fewest open connections).
    #[arg(long, value_name = "maglev|round_robin|least_conn", default_value = "maglev", value_parser = ["maglev", "round_robin", "least_conn"])]
    algorithm: String,
    /// The PROXY protocol header sent to backends, so they see the client's address.
    #[arg(long, value_name = "v2|v1|off", default_value = "v2", value_parser = ["v2", "v1", "off"])]
    proxy_protocol: String,
    /// Health check: `tcp` connect, or `http` GET of --health-path.
    #[arg(long, value_name = "tcp|http", default_value = "tcp", value_parser = ["tcp", "http"])]
    health: String,
    /// The path an `http` health check GETs (2xx is healthy).
    #[arg(long, value_name = "PATH", default_value = "/ready")]
    health_path: String,
    /// Check this port instead of the backend's (an edge's admin port).
    #[arg(long, value_name = "PORT")]
    health_port: Option<u16>,
    /// Time between health checks of a backend.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = super::duration)]
    health_interval: Duration,
    /// Failed checks in a row before a backend is taken out.
    #[arg(long, value_name = "N", default_value = "2")]
    fall: u32,
    /// Passed checks in a row before a backend that was out is back.
    #[arg(long, value_name = "N", default_value = "2")]
    rise: u32,
    /// Read the TLS ClientHello and log the server name.
    #[arg(long)]
    log_sni: bool,
    /// Connections open at once; more are closed at accept. Default: what fits in the
    /// open-file limit (six descriptors a connection, 128 kept back).
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Connections open at once from one client address.
    #[arg(long, value_name = "N", default_value = "1024")]
    max_connections_per_client: usize,
    /// Close a connection after this long without a byte either way.
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = super::duration)]
    idle_timeout: Duration,
    /// Close a connection whose client sends nothing this long (before a backend is
    /// connected); 0s connects at once (protocols where the server speaks first).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = super::duration)]
    silent_timeout: Duration,
    /// Give up connecting to a backend after this long (then try another).
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = super::duration)]
    connect_timeout: Duration,
    /// Admin address: /health, /metrics, /debug/backends, POST /backends/drain.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    admin: SocketAddr,
    /// After SIGTERM, or after a backend starts draining: how long open connections go on.
    #[arg(long, value_name = "DURATION", value_parser = super::duration)]
    drain_timeout: Option<Duration>,
    /// Worker threads. Default: one per CPU.
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

pub fn run(args: BalancerArgs) -> ExitCode {
    let json = args.log_format == "json";
    super::service("balancer", json, || run_inner(args))
}

fn config_from_flags(args: &BalancerArgs) -> anyhow::Result<Config> {
    let listen = args
        .listen
        .context("give --config FILE, or --listen ADDR with --backend or --discover")?;
    let dur = |d: Duration| zw_config::Dur(d);
    let pool = PoolConfig {
        name: "default".into(),
        algorithm: match args.algorithm.as_str() {
            "round_robin" => Algorithm::RoundRobin,
            "least_conn" => Algorithm::LeastConn,
            _ => Algorithm::Maglev,
        },
        backends: args.backends.clone(),
        discover: args.discover.as_ref().map(|op| Discover {
            operator: op.clone(),
            region: args.region.clone(),
            token: args.token.clone(),
            interval: dur(Duration::from_secs(2)),
        }),
        health: HealthConfig {
            kind: if args.health == "http" {
                HealthKind::Http
            } else {
                HealthKind::Tcp
            },
            path: args.health_path.clone(),
            port: args.health_port,
            interval: dur(args.health_interval),
            timeout: dur(args.health_interval.min(Duration::from_secs(1))),
            rise: args.rise,
            fall: args.fall,
        },
    };
    let listener = ListenerConfig {
        name: "default".into(),
        address: listen,
        pool: "default".into(),
        sni: Default::default(),
        log_sni: args.log_sni,
        proxy_protocol: match args.proxy_protocol.as_str() {
            "v1" => ProxyProtocol::V1,
            "off" => ProxyProtocol::Off,
            _ => ProxyProtocol::V2,
        },
        max_connections: args.max_connections,
        max_connections_per_client: args.max_connections_per_client,
        silent_timeout: dur(args.silent_timeout),
        connect_timeout: dur(args.connect_timeout),
        idle_timeout: dur(args.idle_timeout),
        sni_timeout: dur(Duration::from_secs(5)),
    };
    Ok(Config {
        admin: Some(args.admin),
        drain_timeout: dur(Duration::from_secs(30)),
        listeners: vec![listener],
        pools: vec![pool],
    })
}

fn run_inner(args: BalancerArgs) -> anyhow::Result<()> {
    super::raise_fd_limit();
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Config::parse(&text)
                .map_err(|e| anyhow::anyhow!("invalid configuration in {}:\n{e}", path.display()))?
        }
        None => config_from_flags(&args)?,
    };
    if let Some(d) = args.drain_timeout {
        config.drain_timeout = zw_config::Dur(d);
    }
    if config.admin.is_none() {
        config.admin = Some(args.admin);
    }
    let balancer =
        zw_l4::Balancer::new(config).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    let runtime = super::runtime(args.workers)?;
    runtime.block_on(async move {
        let mut bound = Vec::new();
        for l in &balancer.config().listeners {
            let tcp = tokio::net::TcpListener::bind(l.address)
                .await
                .with_context(|| format!("binding listener `{}` to {}", l.name, l.address))?;
            tracing::info!(listener = %l.name, addr = %tcp.local_addr()?, pool = %l.pool, "listening");
            bound.push(tcp);
        }
        let admin = match balancer.config().admin {
            Some(a) => {
                let tcp = tokio::net::TcpListener::bind(a).await.with_context(|| format!("binding admin to {a}"))?;
                tracing::info!(addr = %tcp.local_addr()?, "admin listening (/health /metrics /debug/backends)");
                Some(tcp)
            }
            None => None,
        };
        balancer.run(bound, admin, super::shutdown_signal()).await;
        tracing::info!("stopped");
        Ok(())
    })
}
