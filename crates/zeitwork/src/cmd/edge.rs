//! `zeitwork edge`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use zw_config::Limits;
use zw_edge::{AccessLog, AccessLogTarget, ControlPlane, DatabaseProvider, Edge, FileProvider};

#[derive(Args)]
#[command(after_help = "Examples:\n  \
zeitwork edge --config ./dynamic.yaml --http 127.0.0.1:8080\n  \
zeitwork edge --config ./traefik.yml            (a Traefik static configuration)\n  \
zeitwork edge --control-plane ws://127.0.0.1:7070 --token $JOIN_TOKEN --region eu --state-dir ./edge-state\n  \
zeitwork edge --database-url postgres://zeitwork@db/zeitwork --region eu\n\n\
One source of configuration, exactly:\n  \
--config         Traefik's file-provider format (TOML, YAML or JSON; a file or a directory),\n                   \
watched; a valid change is applied atomically. A Traefik static configuration\n                   \
(entryPoints, providers.file, accessLog, log) is read as one: its entry points are\n                   \
served and its file provider's configuration loaded; the flags override it.\n  \
--control-plane  snapshots pushed by the operator; the last one applied is kept in\n                   \
--state-dir and served at the next start if the operator is unreachable.\n  \
--database-url   reads the operator's database every --update-interval (no operator needed).\n\
An invalid configuration is refused whole and shown at http://ADMIN/debug/config while the\n\
running one stays.")]
#[command(group(clap::ArgGroup::new("source").required(true).args(["config", "control_plane", "database_url"])))]
pub struct EdgeArgs {
    /// Configuration file or directory (Traefik dynamic configuration), or a Traefik
    /// static configuration file.
    #[arg(long, short = 'c', value_name = "PATH")]
    config: Option<PathBuf>,
    /// The operator to take snapshots from: ws://HOST:PORT.
    #[arg(long, value_name = "URL", env = "ZEITWORK_CONTROL_PLANE")]
    control_plane: Option<String>,
    /// The operator's database (the seed's small-setup mode): postgres://… or sqlite://….
    #[arg(long, value_name = "URL", env = "EDGEPROXY_DATABASE_URL")]
    database_url: Option<String>,
    /// This edge's region (with --control-plane or --database-url).
    #[arg(long, value_name = "NAME", env = "EDGEPROXY_REGION_ID")]
    region: Option<String>,
    /// A join token with the edge role (with --control-plane).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "ZEITWORK_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// This edge's id at the operator. Default: edge-HOSTNAME-PORT.
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// Where balancers reach this edge (host:port). Default: the --http address, with
    /// 127.0.0.1 for an unspecified IP.
    #[arg(long, value_name = "ADDR")]
    advertise: Option<String>,
    /// Where balancers reach the admin endpoint for `/ready` checks (host:port). Default:
    /// the --admin address, with 127.0.0.1 for an unspecified IP.
    #[arg(long, value_name = "ADDR")]
    advertise_admin: Option<String>,
    /// Directory for the last-known-good snapshot (with --control-plane).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// First reconnect delay ceiling; it doubles per failure up to --reconnect-max.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = super::duration)]
    reconnect_min: Duration,
    /// Ceiling of the reconnect delay (full jitter under it).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = super::duration)]
    reconnect_max: Duration,
    /// How often --database-url is read.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = super::duration, env = "EDGEPROXY_UPDATE_INTERVAL")]
    update_interval: Duration,
    /// Refuse configurations with more routers than this (protects small edges).
    #[arg(long, value_name = "N")]
    max_routers: Option<usize>,
    /// Address of the HTTP entry point, named `web` in routers' `entryPoints`. Default:
    /// 0.0.0.0:8080, unless a static configuration names the entry points.
    #[arg(long, value_name = "ADDR", env = "EDGEPROXY_HTTP_ADDR")]
    http: Option<SocketAddr>,
    /// More entry points, as NAME=ADDR (repeatable).
    #[arg(long = "entry-point", value_name = "NAME=ADDR")]
    entry_points: Vec<String>,
    /// Expect a PROXY protocol (v1 or v2) header on every connection to entry point NAME,
    /// from these networks only (e.g. web=10.0.0.0/8,127.0.0.1/32); other connections are
    /// closed. The header's address becomes the client's. Repeatable.
    #[arg(long = "proxy-protocol", value_name = "NAME=CIDR[,CIDR…]")]
    proxy_protocol: Vec<String>,
    /// Keep the X-Forwarded-* headers of clients of entry point NAME in these networks
    /// (a CDN or proxy in front; behind a balancer, the address the PROXY protocol gives);
    /// from anyone else they are replaced. Traefik's forwardedHeaders.trustedIPs.
    /// Repeatable.
    #[arg(long = "forwarded-headers", value_name = "NAME=CIDR[,CIDR…]")]
    forwarded_headers: Vec<String>,
    /// Admin address: /health, /ready, /metrics, /debug/config.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9080")]
    admin: SocketAddr,
    /// Client connections held at most, over all entry points; more are closed at accept
    /// (counted in zeitwork_connections_refused_total). Default: what fits in the open-file
    /// limit (half of it less 256: each client may hold an upstream connection too).
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// HTTP/1: the most a request line and headers may hold together; more is a 431.
    #[arg(long, value_name = "BYTES", default_value_t = 256 * 1024, value_parser = clap::value_parser!(u32).range(8192..))]
    max_request_head: u32,
    /// HTTP/1: the most headers one request may have; more is a 431.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    max_headers: u32,
    /// HTTP/2: streams one connection may have open at once.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    h2_max_streams: u32,
    /// HTTP/2: the most a request's decoded header list may hold.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(1024..))]
    h2_max_header_list: u32,
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
    // A static configuration is read before logging starts: it may choose the format and
    // the level (RUST_LOG and --log-format still win).
    let statics = args.config.as_deref().map(read_static).transpose();
    let statics = match statics {
        Ok(s) => s.flatten(),
        Err(e) => {
            eprintln!("zeitwork edge: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut json = args.log_format == "json";
    if let Some(st) = &statics {
        if args.log_format == "text" && st.log_json {
            json = true;
        }
        if let Some(level) = &st.log_level {
            if std::env::var_os("RUST_LOG").is_none() {
                std::env::set_var("RUST_LOG", level);
            }
        }
    }
    super::service("edge", json, || run_inner(args, statics))
}

/// The static configuration `path` holds, if it is one (a dynamic configuration, or a
/// directory of them, is `None`).
fn read_static(path: &std::path::Path) -> anyhow::Result<Option<zw_config::StaticConfig>> {
    if path.is_dir() {
        return Ok(None);
    }
    let Some(format) = zw_config::Format::from_path(path) else {
        return Ok(None);
    };
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(None); // the file provider reports it
    };
    if !zw_config::is_static(&text, format) {
        return Ok(None);
    }
    zw_config::load_static(path)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("invalid static configuration in {}:\n{e}", path.display()))
}

fn run_inner(args: EdgeArgs, statics: Option<zw_config::StaticConfig>) -> anyhow::Result<()> {
    let mut eps: Vec<(String, SocketAddr)> = Vec::new();
    match &statics {
        Some(st) => {
            eps.extend(st.entry_points.iter().map(|e| (e.name.clone(), e.address)));
            if let Some(http) = args.http {
                match eps.iter_mut().find(|(n, _)| n == "web") {
                    Some(web) => web.1 = http,
                    None => eps.push(("web".into(), http)),
                }
            }
        }
        None => eps.push((
            "web".into(),
            args.http.unwrap_or(([0, 0, 0, 0], 8080).into()),
        )),
    }
    for spec in &args.entry_points {
        let (name, addr) = spec
            .split_once('=')
            .with_context(|| format!("--entry-point {spec}: expected NAME=ADDR"))?;
        let addr: SocketAddr = addr.parse().with_context(|| {
            format!("--entry-point {spec}: `{addr}` is not an address like 0.0.0.0:8443")
        })?;
        match eps.iter_mut().find(|(n, _)| n == name) {
            // The flag overrides the static configuration's address.
            Some(ep)
                if statics
                    .as_ref()
                    .is_some_and(|s| s.entry_points.iter().any(|e| e.name == name)) =>
            {
                ep.1 = addr
            }
            Some(_) => bail!("entry point `{name}` is defined twice"),
            None => eps.push((name.to_string(), addr)),
        }
    }
    let runtime = super::runtime(args.workers)?;

    runtime.block_on(async move {
        let from_static = statics.as_ref().and_then(|s| s.access_log.clone()).map(|p| match p {
            Some(p) => p.display().to_string(),
            None => "stdout".to_string(),
        });
        let access_log = match args.access_log.as_deref().or(from_static.as_deref()) {
            None => None,
            Some("stdout" | "-") => Some(AccessLog::start(&AccessLogTarget::Stdout)?),
            Some(p) => Some(AccessLog::start(&AccessLogTarget::File(p.into())).with_context(|| format!("opening access log {p}"))?),
        };
        let fds = super::raise_fd_limit();
        let max = args.max_connections.unwrap_or_else(|| zw_edge::connection_limit_for_fds(fds));
        let mut builder = Edge::builder(eps.iter().map(|(n, _)| n.clone()).collect())
            .access_log(access_log)
            .max_connections(max)
            .request_limits(zw_edge::RequestLimits {
                head_bytes: args.max_request_head as usize,
                headers: args.max_headers as usize,
                h2_streams: args.h2_max_streams,
                h2_header_list: args.h2_max_header_list,
            });
        tracing::info!(max_connections = max, open_file_limit = fds, "connection limit");
        if let Some(st) = &statics {
            for ep in &st.entry_points {
                if let Some(nets) = &ep.proxy_protocol {
                    builder = builder.proxy_protocol(&ep.name, nets.clone()).map_err(|e| anyhow::anyhow!("entryPoints.{}.proxyProtocol: {e}", ep.name))?;
                    tracing::info!(entry_point = %ep.name, "PROXY protocol required");
                }
                if let Some(trust) = &ep.forwarded_headers {
                    builder = builder.forwarded_headers(&ep.name, trust.clone()).map_err(|e| anyhow::anyhow!("entryPoints.{}.forwardedHeaders: {e}", ep.name))?;
                    tracing::info!(entry_point = %ep.name, ?trust, "X-Forwarded-* kept from trusted clients");
                }
            }
            // The edge has one of each: the smallest an entry point sets applies to all.
            if let Some(d) = st.entry_points.iter().filter_map(|e| e.write_timeout).min() {
                builder = builder.write_timeout(d);
            }
            if let Some(d) = st.entry_points.iter().filter_map(|e| e.read_timeout).min() {
                builder = builder.body_read_timeout(d);
            }
            if let Some(d) = st.entry_points.iter().filter_map(|e| e.idle_timeout).min() {
                builder = builder.idle_timeout(d);
            }
            let head = st.entry_points.iter().filter_map(|e| e.max_header_bytes).min();
            let streams = st.entry_points.iter().filter_map(|e| e.h2_max_streams).min();
            if head.is_some() || streams.is_some() {
                builder = builder.request_limits(zw_edge::RequestLimits {
                    head_bytes: head.unwrap_or(args.max_request_head as usize),
                    headers: args.max_headers as usize,
                    h2_streams: streams.unwrap_or(args.h2_max_streams),
                    h2_header_list: args.h2_max_header_list,
                });
            }
        }
        for spec in &args.proxy_protocol {
            let (name, nets) = entry_point_nets("--proxy-protocol", spec)?;
            builder = builder.proxy_protocol(name, nets).map_err(|e| anyhow::anyhow!("--proxy-protocol {spec}: {e}"))?;
            tracing::info!(entry_point = %name, "PROXY protocol required");
        }
        for spec in &args.forwarded_headers {
            let (name, nets) = entry_point_nets("--forwarded-headers", spec)?;
            builder = builder
                .forwarded_headers(name, zw_config::ForwardedTrust::Networks(nets))
                .map_err(|e| anyhow::anyhow!("--forwarded-headers {spec}: {e}"))?;
            tracing::info!(entry_point = %name, "X-Forwarded-* kept from trusted clients");
        }
        // ACME resolvers: their certificates are read from storage now (served from the
        // first configuration on), HTTP-01 answered on each resolver's entry point.
        let acme = match statics.as_ref().filter(|s| !s.resolvers.is_empty()) {
            None => None,
            Some(st) => {
                let challenges = zw_edge::acme::AcmeChallenges::new();
                for r in &st.resolvers {
                    match &r.http_challenge {
                        Some(ep) => {
                            builder = builder.http01(ep, challenges.clone()).map_err(|e| anyhow::anyhow!("certificatesResolvers.{}.acme.httpChallenge.entryPoint: {e}", r.name))?;
                            tracing::info!(resolver = %r.name, ca = %r.ca_server, storage = %r.storage.display(), entry_point = %ep, "ACME resolver (HTTP-01)");
                        }
                        None => tracing::info!(resolver = %r.name, ca = %r.ca_server, storage = %r.storage.display(), "ACME resolver (TLS-ALPN-01)"),
                    }
                }
                if st.resolvers.iter().any(|r| r.tls_challenge) {
                    builder = builder.tls_alpn01(challenges.clone());
                }
                let tokens = challenges;
                let acme = zw_acme::Acme::new(st.resolvers.clone(), tokens)?;
                builder = builder.acme(acme.clone());
                Some(acme)
            }
        };
        let edge = builder.build();
        let mut limits = Limits::default();
        if let Some(n) = args.max_routers {
            limits.max_routers = n;
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut listeners = Vec::new();
        for (name, addr) in &eps {
            let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding entry point `{name}` to {addr}"))?;
            tracing::info!(entry_point = %name, addr = %l.local_addr()?, "listening");
            listeners.push(l);
        }
        let admin = tokio::net::TcpListener::bind(args.admin).await.with_context(|| format!("binding admin to {}", args.admin))?;
        tracing::info!(addr = %admin.local_addr()?, "admin listening (/health /ready /metrics /debug/config)");
        let web = listeners.first().context("no entry point")?.local_addr()?;
        let admin_addr = admin.local_addr()?;
        let acme_task = acme.clone().map(|a| tokio::spawn(a.run(stop_rx.clone())));
        let provider = start_provider(&args, statics, acme, &edge, limits, (web, admin_addr), stop_rx).await?;

        let provider = tokio::spawn(provider);
        edge.serve(listeners, Some(admin), super::shutdown_signal(), args.drain_timeout).await;
        let _ = stop_tx.send(true);
        let _ = provider.await;
        if let Some(t) = acme_task {
            let _ = t.await;
        }
        tracing::info!("stopped");
        Ok(())
    })
}

type ProviderTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Loads the first configuration from the chosen source and returns the task that keeps
/// it current.
#[allow(clippy::too_many_arguments)]
async fn start_provider(
    args: &EdgeArgs,
    statics: Option<zw_config::StaticConfig>,
    acme: Option<zw_acme::Acme>,
    edge: &Edge,
    limits: Limits,
    (web, admin): (SocketAddr, SocketAddr),
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<ProviderTask> {
    if let Some(path) = &args.config {
        let (path, watch) = match &statics {
            Some(st) => match &st.dynamic {
                Some(d) => (d.clone(), st.watch),
                None => anyhow::bail!(
                    "{}: providers.file names no dynamic configuration",
                    path.display()
                ),
            },
            None => (path.clone(), true),
        };
        let path = &path;
        // Refuse to start on a broken configuration: an edge that silently serves nothing
        // is worse than one that says why it did not start.
        let mut provider = FileProvider::new(path.clone(), limits);
        if let Some(st) = statics {
            provider = provider.with_static(std::sync::Arc::new(st));
        }
        let has_acme = acme.is_some();
        if let Some(acme) = acme {
            provider = provider.with_acme(acme);
        }
        let e2 = edge.clone();
        let (provider, loaded) = tokio::task::spawn_blocking(move || {
            let r = provider.load_into(&e2);
            (provider, r)
        })
        .await?;
        loaded.map_err(|e| anyhow::anyhow!("invalid configuration in {}:\n{e}", path.display()))?;
        if !watch {
            tracing::info!(path = %path.display(), "providers.file.watch is false: the configuration is not watched");
            if !has_acme {
                return Ok(Box::pin(async {}));
            }
        }
        return Ok(Box::pin(provider.watch_files(watch).watch(
            edge.clone(),
            args.watch_interval,
            stop,
        )));
    }
    let region = args.region.clone().context(
        "--region (or EDGEPROXY_REGION_ID) is required with --control-plane and --database-url",
    )?;
    if let Some(url) = &args.database_url {
        let store = zw_store::Store::open_reader(url)
            .await
            .with_context(|| format!("opening the database {}", zw_store::redact(url)))?;
        let provider = DatabaseProvider {
            store,
            region,
            interval: args.update_interval,
            limits,
            origin: zw_store::redact(url),
        };
        // The first read must work: the same rule as a broken file at startup.
        provider
            .poll(edge)
            .await
            .map_err(|e| anyhow::anyhow!("reading routes from {}: {e}", provider.origin))?;
        return Ok(Box::pin(provider.run(edge.clone(), stop)));
    }
    let url = args
        .control_plane
        .as_deref()
        .context("no configuration source")?;
    let token = args
        .token
        .clone()
        .context("--token (or ZEITWORK_TOKEN) is required with --control-plane: create one with POST /api/v1/join-tokens {\"role\":\"edge\"}")?;
    let reachable = |a: SocketAddr| {
        if a.ip().is_unspecified() {
            format!("127.0.0.1:{}", a.port())
        } else {
            a.to_string()
        }
    };
    let advertise = args.advertise.clone().unwrap_or_else(|| reachable(web));
    let advertise_admin = args
        .advertise_admin
        .clone()
        .unwrap_or_else(|| reachable(admin));
    let id = args.id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let host = if host.is_empty() {
            "local".to_string()
        } else {
            host
        };
        format!("edge-{host}-{}", web.port())
    });
    let cp = ControlPlane {
        url: ControlPlane::normalize_url(url).map_err(anyhow::Error::msg)?,
        token,
        id,
        region,
        address: advertise,
        admin_address: Some(advertise_admin),
        state_dir: args.state_dir.clone(),
        backoff_base: args.reconnect_min,
        backoff_max: args.reconnect_max,
        limits,
    };
    if cp.state_dir.is_none() {
        tracing::warn!("no --state-dir: no last-known-good is kept, so a restart while the operator is down serves nothing");
    }
    match cp.restore(edge) {
        Ok(Some(version)) => tracing::info!(
            version,
            "serving the last-known-good snapshot until the operator answers"
        ),
        Ok(None) => {
            tracing::info!("no last-known-good snapshot; not ready until the operator sends one")
        }
        Err(e) => {
            edge.reject(&e, zw_edge::ConfigSource::LastKnownGood);
            tracing::error!(error = %e, "last-known-good refused; not ready until the operator sends a snapshot");
        }
    }
    Ok(Box::pin(cp.run(edge.clone(), stop)))
}

/// `NAME=CIDR[,CIDR…]`, as `--proxy-protocol` and `--forwarded-headers` take it.
fn entry_point_nets<'a>(
    flag: &str,
    spec: &'a str,
) -> anyhow::Result<(&'a str, Vec<zw_rules::IpNet>)> {
    let (name, nets) = spec
        .split_once('=')
        .with_context(|| format!("{flag} {spec}: expected NAME=CIDR[,CIDR…]"))?;
    let nets = nets
        .split(',')
        .map(|n| {
            n.trim()
                .parse::<zw_rules::IpNet>()
                .map_err(|e| anyhow::anyhow!("{flag} {spec}: `{n}`: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((name, nets))
}
