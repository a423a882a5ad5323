//! `zeitwork up`: the whole platform in one process — operator (SQLite in the data
//! directory), one agent, one edge and one balancer — for a first run and for development.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tokio::sync::watch;
use zw_edge::{ControlPlane, Edge};

#[derive(Args)]
#[command(after_help = "Then, in another terminal:\n  \
zeitwork deploy hello --domain hello.localhost -- python3 -m http.server '$PORT' --bind 127.0.0.1\n  \
curl http://hello.localhost:8000/\n  \
curl --cacert zeitwork-data/local-ca.pem https://hello.localhost:8443/\n\n\
Ctrl-C stops everything, the instances included. State (the SQLite database, the admin token,\n\
the platform CA, the edge's last-known-good, the agent's records and logs) stays in --data-dir.")]
pub struct UpArgs {
    #[command(flatten)]
    data: super::DataDir,
    /// The region this machine is.
    #[arg(long, value_name = "NAME", default_value = "local")]
    region: String,
    /// The operator's API.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    api: SocketAddr,
    /// The balancer: where clients connect.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8000")]
    http: SocketAddr,
    /// The balancer's HTTPS port: TLS passed through to the edge, which terminates it with
    /// the domain's certificate (from --acme-ca, else from the local CA for *.localhost).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    https: SocketAddr,
    /// The edge's HTTP entry point (behind the balancer, PROXY protocol).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    edge: SocketAddr,
    /// The edge's admin endpoint (/ready, /metrics, /debug/config).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9080")]
    edge_admin: SocketAddr,
    /// The agent's admin endpoint (/health, /metrics, /debug/instances).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7071")]
    agent_admin: SocketAddr,
    /// The agent's worker ingress (mutual TLS).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7443")]
    ingress: SocketAddr,
    #[command(flatten)]
    liveness: super::operator::Liveness,
    #[command(flatten)]
    acme: super::operator::AcmeArgs,
    /// How long the local CA's certificates live (renewed when a third is left). For
    /// watching a renewal happen; the default suits everyday use.
    #[arg(long, value_name = "DURATION", default_value = "2160h", value_parser = super::duration, hide = true)]
    local_cert_validity: Duration,
    #[command(flatten)]
    vm: super::agent::VmArgs,
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

pub fn run(args: UpArgs) -> ExitCode {
    let json = args.log_format == "json";
    super::service("up", json, || super::runtime(None)?.block_on(up(args)))
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("binding the {what} to {addr} (in use? choose another with its flag)")
    })
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let data = &args.data.data_dir;
    let url = super::operator::prepare_data_dir(data)?;
    let sealing_key = super::operator::sealing_key(data, None)?;
    let store = zw_store::Store::open(&url)
        .await
        .with_context(|| format!("opening the state store {url}"))?;
    // The admin token is for the user; the edge, the balancer and the agent get join
    // tokens that speak for them alone.
    super::operator::admin_token(&store, data).await?;
    use zw_proto::api::TokenRole;
    let edge_token =
        super::operator::component_token(&store, data, TokenRole::Edge, Some("edge-local")).await?;
    let node_id = std::fs::read_to_string(data.join("agent").join("node-id")).ok();
    let agent_token = super::operator::component_token(
        &store,
        data,
        TokenRole::Agent,
        node_id.as_deref().map(str::trim),
    )
    .await?;

    let api = bind(args.api, "operator API").await?;
    let balancer_l = bind(args.http, "balancer").await?;
    let balancer_tls = bind(args.https, "balancer's HTTPS port").await?;
    let https_addr = balancer_tls.local_addr()?;
    let edge_l = bind(args.edge, "edge").await?;
    let edge_admin = bind(args.edge_admin, "edge admin").await?;
    let (api_addr, lb_addr, edge_addr, edge_admin_addr) = (
        api.local_addr()?,
        balancer_l.local_addr()?,
        edge_l.local_addr()?,
        edge_admin.local_addr()?,
    );

    // The region, with this balancer as its cross-region entry point and its HTTPS port.
    let (lb, tls) = (lb_addr.to_string(), https_addr.to_string());
    match store.region(&args.region).await {
        Ok(r)
            if r.balancer_address.as_deref() == Some(lb.as_str())
                && r.https_address.as_deref() == Some(tls.as_str()) => {}
        Ok(_) => {
            store
                .update_region(
                    &args.region,
                    zw_proto::api::RegionPatch {
                        balancer_address: Some(lb.clone()),
                        https_address: Some(tls.clone()),
                    },
                )
                .await?;
        }
        Err(zw_store::StoreError::NotFound { .. }) => {
            store
                .create_region(zw_proto::api::NewRegion {
                    name: args.region.clone(),
                    balancer_address: Some(lb.clone()),
                    https_address: Some(tls.clone()),
                })
                .await?;
        }
        Err(e) => return Err(e.into()),
    }

    let (stop, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let operator = zw_operator::Operator::start(
        store,
        zw_operator::Options {
            suspect_after: args.liveness.node_suspect_after,
            lost_after: args.liveness.node_lost_after,
            sealing_key,
            acme: args.acme.options()?,
            local_issuer: args
                .acme
                .acme_ca
                .is_none()
                .then_some(args.local_cert_validity),
            // `*.localhost` resolves to this machine, and not to the balancer's port:
            // domains are proven through the balancer instead.
            domain_check: zw_operator::verify::DomainCheck::Balancer,
            ..Default::default()
        },
    );
    // The local CA's root, where the user can point a client (or a trust store) at it.
    let local_ca = data.join("local-ca.pem");
    if args.acme.acme_ca.is_none() {
        let root = operator
            .local_issuer_root()
            .await
            .map_err(anyhow::Error::msg)?;
        zw_proto::fsutil::write_atomic(&local_ca, &[root.as_bytes()], 0o644)
            .with_context(|| format!("writing {}", local_ca.display()))?;
    }
    let operator = tokio::spawn(operator.serve(api, stopped(stop_rx.clone())));

    // The edge: snapshots from the operator, PROXY protocol from the balancer only.
    // One process holds the balancer's and the edge's connections: half the descriptors
    // each (the balancer derives its own share the same way).
    let fds = super::raise_fd_limit();
    let loopback = ["127.0.0.0/8", "::1/128"]
        .iter()
        .map(|n| n.parse::<zw_rules::IpNet>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let edge = Edge::builder(vec!["web".into()])
        .max_connections(zw_edge::connection_limit_for_fds(fds / 2))
        .proxy_protocol("web", loopback)
        .map_err(anyhow::Error::msg)?
        .build();
    let cp = ControlPlane {
        url: format!("ws://{api_addr}/api/v1/edge/connect"),
        token: edge_token.clone(),
        id: "edge-local".into(),
        region: args.region.clone(),
        address: edge_addr.to_string(),
        admin_address: Some(edge_admin_addr.to_string()),
        state_dir: Some(data.join("edge")),
        backoff_base: Duration::from_millis(200),
        backoff_max: Duration::from_secs(5),
        limits: zw_config::Limits::default(),
    };
    if let Err(e) = cp.restore(&edge) {
        tracing::warn!(error = %e, "edge last-known-good refused");
    }
    let cp_task = tokio::spawn(cp.run(edge.clone(), stop_rx.clone()));
    let edge_task = tokio::spawn({
        let edge = edge.clone();
        let stop = stopped(stop_rx.clone());
        async move {
            edge.serve(vec![edge_l], Some(edge_admin), stop, Duration::from_secs(5))
                .await
        }
    });

    // The balancer: edges discovered from the operator, checked at their /ready.
    let lb_config = format!(
        "drain_timeout = \"5s\"\n\
         [[listener]]\nname = \"http\"\naddress = \"{lb_addr}\"\npool = \"edges\"\nproxy_protocol = \"v2\"\nmax_connections = {0}\n\
         [[listener]]\nname = \"https\"\naddress = \"{https_addr}\"\npool = \"edges\"\nproxy_protocol = \"v2\"\nmax_connections = {0}\n\
         [[pool]]\nname = \"edges\"\nalgorithm = \"least_conn\"\n\
         discover = {{ operator = \"http://{api_addr}\", region = \"{1}\", token = \"{edge_token}\", interval = \"1s\" }}\n\
         health = {{ kind = \"http\", path = \"/ready\", interval = \"1s\", rise = 1, fall = 2 }}\n",
        zw_l4::config::connection_limit_for_fds(fds / 2, 2),
        args.region
    );
    let config = zw_l4::Config::parse(&lb_config).map_err(anyhow::Error::msg)?;
    let balancer = zw_l4::Balancer::new(config).map_err(anyhow::Error::msg)?;
    let lb_task = tokio::spawn(balancer.run(
        vec![balancer_l, balancer_tls],
        None,
        stopped(stop_rx.clone()),
    ));

    let agent = zw_agent::Agent::start(zw_agent::Config {
        operator: api_addr.to_string(),
        token: agent_token,
        region: args.region.clone(),
        hostname: "localhost".into(),
        address: args.ingress.ip().to_string(),
        ingress_listen: args.ingress,
        admin_listen: Some(args.agent_admin),
        state_dir: data.join("agent"),
        heartbeat: Duration::from_secs(2),
        init: super::agent::isolation_program()?,
        timing: Default::default(),
        instance_memory_mb: 512,
        instance_cpu_millis: 1000,
        reconnect_min: Duration::from_millis(200),
        reconnect_max: Duration::from_secs(5),
        qemu: args.vm.options(),
    })
    .await
    .map_err(anyhow::Error::msg)?;

    println!(
        "Zeitwork is up.\n  \
         apps (balancer)   http://{lb_addr}\n  \
         apps over HTTPS   https://{https_addr} ({})\n  \
         edge              http://{edge_addr} (admin http://{edge_admin_addr})\n  \
         operator API      http://{api_addr} (admin token: {})\n  \
         worker ingress    {} (mutual TLS), node {} (admin http://{})\n\
         Deploy an app:    zeitwork deploy hello --domain hello.localhost -- python3 -m http.server '$PORT' --bind 127.0.0.1\n\
         Stop:             Ctrl-C",
        if args.acme.acme_ca.is_none() {
            format!(
                "*.localhost signed by the local CA: trust {}, e.g. curl --cacert {}",
                local_ca.display(),
                local_ca.display()
            )
        } else {
            "certificates from the ACME CA".to_string()
        },
        super::operator::token_file(data).display(),
        agent.ingress_address,
        agent.node_id,
        agent
            .admin_address
            .map_or_else(|| "-".to_string(), |a| a.to_string()),
    );

    super::shutdown_signal().await;
    eprintln!("stopping: instances first, then the balancer, the edge and the operator");
    agent.shutdown(true).await;
    let _ = stop.send(true);
    let _ = lb_task.await;
    let _ = edge_task.await;
    let _ = cp_task.await;
    if let Ok(Err(e)) = operator.await {
        tracing::warn!(error = %e, "operator stopped with an error");
    }
    tracing::info!("stopped");
    Ok(())
}
