//! `zeitwork deploy`, `logs`, `scale` and `destroy`: the app lifecycle from the command
//! line, over the operator's API.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use zw_proto::api::*;

use super::client::{finish, runtime, Client, Conn};

#[derive(Args)]
#[command(after_help = "Examples:\n  \
zeitwork deploy hello --domain hello.localhost -- python3 -m http.server '$PORT' -b 127.0.0.1\n  \
zeitwork deploy web --domain web.localhost --replicas 3 --health-path / \\\n    \
-- python3 -m http.server '${PORT}' -b 127.0.0.1\n  \
zeitwork deploy site --domain site.localhost --oci site.tar \\\n    \
-- /bin/busybox httpd -f -p '$PORT' -h /www\n\n\
The app must listen on 127.0.0.1 at the port in $PORT, also inside an --oci or --rootfs\n\
root filesystem. In the command, $PORT, ${PORT}, $ZEITWORK_INSTANCE and the --env names\n\
are replaced by their values (no shell is involved; quote them so that yours does not\n\
expand them first; $$ is a literal $). Only a microVM (--runtime qemu or firecracker)\n\
listens on --port, on its own address. (site.tar: `bash bench/oci-busybox.sh site.tar`\n\
in a checkout.) Progress is shown as the instances are placed, started, found healthy\n\
and routed; the command ends with the URL.")]
pub struct DeployArgs {
    /// The app's name (the image and the deployment get it).
    name: String,
    /// A host name routed to the app (repeatable).
    #[arg(long = "domain", value_name = "HOST", required = true)]
    domains: Vec<String>,
    /// How many instances to run.
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// The region to run it in (`zeitwork up` makes `local`).
    #[arg(long, value_name = "NAME", default_value = "local")]
    region: String,
    /// The port the app listens on inside a microVM (qemu, firecracker); a process,
    /// isolated or not, gets its port in $PORT instead.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// HTTP path whose 2xx/3xx answer means healthy; without it a TCP connect does.
    #[arg(long, value_name = "PATH")]
    health_path: Option<String>,
    /// Environment for the app (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// A root filesystem directory on the nodes to run the command in.
    #[arg(long, value_name = "DIR", conflicts_with = "oci")]
    rootfs: Option<PathBuf>,
    /// An OCI image layout (directory or tar) on the nodes to run the command in.
    #[arg(long, value_name = "PATH")]
    oci: Option<PathBuf>,
    /// How to run it: `process` (a supervised process, isolated when the agent is root),
    /// `qemu` or `firecracker` (a microVM; needs --oci or --rootfs).
    #[arg(long, value_name = "RUNTIME", default_value = "process", value_parser = ["process", "qemu", "firecracker"])]
    runtime: String,
    /// Give up waiting for the app to be routed after this long.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = super::duration)]
    timeout: Duration,
    /// Take the domains from the app that has them now (without it, a domain another app
    /// serves is refused).
    #[arg(long)]
    move_domains: bool,
    /// How a new release replaces the running one: `rolling` (new instances first, an
    /// old one drained and stopped only once a new one is healthy: no request lost) or
    /// `immediate` (old ones stopped at once; for development).
    #[arg(long, value_name = "STRATEGY", default_value = "rolling", value_parser = ["rolling", "immediate"])]
    strategy: String,
    /// How many instances a rolling release may start beyond --replicas: a count or a
    /// percentage of the replicas (`25%`).
    #[arg(long, value_name = "N|P%", default_value = "1")]
    max_surge: String,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
#[command(
    after_help = "Lines come from every node that runs an instance of the app, fetched \
by the operator from each node's agent and merged by time; each is labelled with its instance."
)]
pub struct LogsArgs {
    name: String,
    /// Keep printing what the instances write; instances that start later join.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Lines to show per instance first.
    #[arg(long, default_value_t = 50)]
    tail: u32,
    /// Only the instances of this release (`v3` or `3`).
    #[arg(long, value_name = "RELEASE", value_parser = super::release::version_arg)]
    release: Option<u64>,
    /// Only this instance.
    #[arg(long, value_name = "ID")]
    instance: Option<String>,
    /// Print when each line was written (as its node's agent saw it) and the node.
    #[arg(long, short = 't')]
    timestamps: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
pub struct ScaleArgs {
    name: String,
    replicas: u32,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
#[command(
    after_help = "The deployment, its domains and its instances are removed at once (no \
traffic reaches it from then on); the command then waits until every node's agent has \
reported the instances stopped — their processes gone — or --timeout passes."
)]
pub struct DestroyArgs {
    name: String,
    /// How long to wait for the instances' agents to report them stopped.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = super::duration)]
    timeout: Duration,
    #[command(flatten)]
    conn: Conn,
}

fn absolute(p: &std::path::Path) -> anyhow::Result<String> {
    let abs = std::path::absolute(p).with_context(|| format!("{}", p.display()))?;
    abs.to_str()
        .map(str::to_string)
        .with_context(|| format!("{} is not UTF-8", abs.display()))
}

pub fn deploy(args: DeployArgs) -> ExitCode {
    finish(
        runtime().and_then(|rt| rt.block_on(deploy_inner(args))),
        "deploy",
    )
}

/// One line of progress: rewritten in place on a terminal, one line per change otherwise.
pub(crate) struct Progress {
    tty: bool,
    last: String,
    start: Instant,
}

impl Progress {
    pub(crate) fn new(start: Instant) -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            last: String::new(),
            start,
        }
    }

    pub(crate) fn last(&self) -> &str {
        &self.last
    }

    pub(crate) fn show(&mut self, line: String) {
        if line == self.last {
            return;
        }
        let t = self.start.elapsed().as_secs_f64();
        if self.tty {
            eprint!("\r\x1b[2K[{t:6.2}s] {line}");
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("[{t:6.2}s] {line}");
        }
        self.last = line;
    }

    pub(crate) fn done(&mut self) {
        if self.tty {
            eprintln!();
        }
    }
}

async fn deploy_inner(args: DeployArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    let mut env = BTreeMap::new();
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env {kv}: expected KEY=VALUE"))?;
        env.insert(k.to_string(), v.to_string());
    }
    let rootfs = match (&args.rootfs, &args.oci) {
        (Some(d), _) => Some(RootFs::Dir(absolute(d)?)),
        (_, Some(o)) => Some(RootFs::Oci(absolute(o)?)),
        _ => None,
    };
    let runtime = Runtime::parse(&args.runtime).context("unknown runtime")?;
    let spec = ApplySpec {
        image: Some(NewImage {
            name: args.name.clone(),
            command: args.command.clone(),
            env,
            runtime,
            rootfs,
        }),
        deployment: NewDeployment {
            name: args.name.clone(),
            image: args.name.clone(),
            replicas: args.replicas,
            regions: vec![args.region.clone()],
            port: args.port,
            health_check: HealthCheckSpec {
                path: args.health_path.clone(),
                interval_secs: None,
            },
            strategy: Strategy::parse(&args.strategy),
            max_surge: Some(args.max_surge.clone()),
        },
        domains: args.domains.clone(),
        move_domains: args.move_domains,
        rollout_timeout_secs: Some(args.timeout.as_secs().max(1)),
    };
    let start = Instant::now();
    let applied: Applied = serde_json::from_slice(
        &client
            .call(
                http::Method::POST,
                "/api/v1/apply",
                Some(serde_json::to_vec(&spec)?),
            )
            .await?,
    )?;
    // A new release rolls out first: the old one keeps serving until the new one is
    // healthy, and stays if the new one is halted.
    if let Some(v) = applied.release {
        if applied.action == "updated" {
            eprintln!(
                "{}: release v{v} ({})",
                args.name,
                client_release_description(&client, &args.name, v).await
            );
        }
        super::release::wait(&client, &args.name, v, args.replicas, args.timeout).await?;
    }
    let region: Region = serde_json::from_slice(
        &client
            .call(
                http::Method::GET,
                &format!("/api/v1/regions/{}", args.region),
                None,
            )
            .await?,
    )?;
    let balancer = region.balancer_address.with_context(|| {
        format!(
            "deployed, but region {} has no balancer address to check the route through",
            args.region
        )
    })?;
    let domain = args.domains[0].clone();
    let mut progress = Progress::new(start);
    let want = args.replicas as usize;
    // placed: every replica has a node; healthy: every replica passed its check; routed:
    // the first 200-ish answer through the balancer. Done when all three are.
    let (mut placed_at, mut healthy_at, mut routed_at) = (None, None, None);
    let deadline = start + args.timeout;
    loop {
        if Instant::now() > deadline {
            progress.done();
            bail!(
                "not ready within {:?}; last state: {} (see `zeitwork get instances` and `zeitwork logs {}`)",
                args.timeout,
                progress.last,
                args.name
            );
        }
        let instances: Vec<Instance> = client
            .list(&format!("/api/v1/instances?deployment={}", args.name))
            .await?;
        let started = instances
            .iter()
            .filter(|i| i.state == InstanceState::Started)
            .count();
        if instances.len() >= want && placed_at.is_none() {
            placed_at = Some(start.elapsed());
        }
        if started >= want && healthy_at.is_none() {
            healthy_at = Some(start.elapsed());
        }
        let failed: Vec<String> = instances
            .iter()
            .filter(|i| i.state == InstanceState::Failed)
            .map(|i| format!("{}: {}", i.id, i.reason.as_deref().unwrap_or("failed")))
            .collect();
        // A failure that waiting cannot mend ends the wait now, with the agent's words.
        if let Some(i) = instances
            .iter()
            .find(|i| i.state == InstanceState::Failed && i.permanent)
        {
            progress.done();
            bail!(
                "instance {} of {} cannot start: {}",
                i.id,
                args.name,
                i.reason.as_deref().unwrap_or("failed")
            );
        }
        // Routed only once the operator has proven the domain leads here.
        let unverified = if started >= 1 && routed_at.is_none() {
            let d: Domain = serde_json::from_slice(
                &client
                    .call(
                        http::Method::GET,
                        &format!("/api/v1/domains/{domain}"),
                        None,
                    )
                    .await?,
            )?;
            d.verified_at.is_none().then(|| {
                d.check_error
                    .map_or_else(String::new, |e| format!(" (last check: {e})"))
            })
        } else {
            None
        };
        let mut line = if instances.len() < want {
            format!("placing: {}/{want} instances placed", instances.len())
        } else if started == 0 {
            format!("starting: 0/{want} healthy")
        } else if let Some(why) = &unverified {
            format!("healthy: {started}/{want}; the operator is verifying {domain}{why}")
        } else if routed_at.is_none() {
            format!("healthy: {started}/{want}; waiting for the route through {balancer}")
        } else {
            format!("routed; healthy: {started}/{want}")
        };
        if let Some(f) = failed.first() {
            line.push_str(&format!(" (last failure: {f})"));
        }
        progress.show(line);
        if started >= 1 && routed_at.is_none() {
            let probe = zw_http::get(
                &balancer,
                "/",
                &[("host", domain.as_str())],
                Duration::from_secs(2),
                1 << 20,
            )
            .await;
            if let Ok((status, _)) = probe {
                if !matches!(status, 404 | 502 | 503 | 504) {
                    routed_at = Some(start.elapsed());
                }
            }
        }
        if routed_at.is_some() && healthy_at.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress.show(format!("routed: {want}/{want} healthy"));
    // HTTPS: the certificate comes right after the domain is verified (the operator's
    // issuer orders it); wait a little for it, within the deadline.
    let mut certified = Vec::new();
    if let Some(https) = &region.https_address {
        let waiting = Instant::now();
        let until = deadline.min(waiting + Duration::from_secs(30));
        loop {
            let certs: Vec<TlsCertificateInfo> = client.list("/api/v1/tls-certificates").await?;
            let state = |d: &String| certs.iter().find(|c| c.domain == *d);
            // An issuer records a name as soon as it starts on it; a name without a
            // record after a few seconds is one the operator issues no certificate for.
            let settled = args.domains.iter().all(|d| match state(d) {
                Some(c) => c.status != "pending",
                None => waiting.elapsed() > Duration::from_secs(3),
            });
            if settled || Instant::now() > until {
                for d in &args.domains {
                    let port = https.rsplit(':').next().unwrap_or("443");
                    let url = format!("https://{d}:{port}/");
                    certified.push(match state(d) {
                        Some(c) if c.status == "valid" => url,
                        Some(c) => format!(
                            "{url} (no certificate yet: {}; see `zeitwork get certificates`)",
                            c.last_error.as_deref().unwrap_or(&c.status)
                        ),
                        None => format!(
                            "{url} (no certificate: the operator issues none for this name; see `zeitwork get certificates`)"
                        ),
                    });
                }
                break;
            }
            progress.show(format!(
                "routed: {want}/{want} healthy; waiting for the HTTPS certificate"
            ));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    progress.done();
    let port = balancer.rsplit(':').next().unwrap_or("80");
    let ms = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{} ms", d.as_millis()));
    let release = applied.release.map_or_else(
        || format!("release unchanged (v{})", applied.deployment.release),
        |v| format!("release v{v}"),
    );
    println!(
        "deployed {} ({release}): placed {}, healthy {}, routed {}",
        args.name,
        ms(placed_at),
        ms(healthy_at),
        ms(routed_at)
    );
    for d in &args.domains {
        println!("  http://{d}:{port}/");
    }
    for url in &certified {
        println!("  {url}");
    }
    if !domain.ends_with(".localhost") {
        println!("  (without DNS: curl -H 'Host: {domain}' http://{balancer}/)");
    }
    Ok(())
}

async fn client_release_description(client: &Client, name: &str, v: u64) -> String {
    let path = format!(
        "/api/v1/deployments/{}/releases/{v}",
        form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
    );
    match client.call(http::Method::GET, &path, None).await {
        Ok(b) => serde_json::from_slice::<Release>(&b)
            .map(|r| r.description)
            .unwrap_or_default(),
        Err(_) => String::new(),
    }
}

pub fn logs(args: LogsArgs) -> ExitCode {
    finish(
        runtime().and_then(|rt| rt.block_on(logs_inner(args))),
        "logs",
    )
}

async fn logs_inner(args: LogsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    let base = format!(
        "/api/v1/deployments/{}/logs",
        form_urlencoded::byte_serialize(args.name.as_bytes()).collect::<String>()
    );
    let mut filter = String::new();
    if let Some(r) = args.release {
        filter.push_str(&format!("&release={r}"));
    }
    if let Some(i) = &args.instance {
        filter.push_str(&format!(
            "&instance={}",
            form_urlencoded::byte_serialize(i.as_bytes()).collect::<String>()
        ));
    }
    let mut cursor: Option<String> = None;
    let mut said_unreachable = std::collections::BTreeSet::new();
    loop {
        let path = match &cursor {
            None => format!("{base}?tail={}{filter}", args.tail),
            Some(c) => format!(
                "{base}?cursor={}{filter}",
                form_urlencoded::byte_serialize(c.as_bytes()).collect::<String>()
            ),
        };
        let logs: Logs =
            serde_json::from_slice(&client.call(http::Method::GET, &path, None).await?)?;
        let mut out = std::io::stdout().lock();
        for l in &logs.lines {
            let _ = if args.timestamps {
                writeln!(out, "{} {} [{}] {}", l.at, l.node, l.instance, l.line)
            } else {
                writeln!(out, "[{}] {}", l.instance, l.line)
            };
        }
        let _ = out.flush();
        for node in &logs.unreachable {
            if said_unreachable.insert(node.clone()) {
                eprintln!(
                    "(node {node}: its agent is not connected to this operator; its lines are missing)"
                );
            }
        }
        if !args.follow {
            return Ok(());
        }
        cursor = Some(logs.cursor);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub fn scale(args: ScaleArgs) -> ExitCode {
    finish(
        runtime().and_then(|rt| {
            rt.block_on(async {
                let client = Client::new(&args.conn)?;
                let patch = serde_json::json!({ "replicas": args.replicas });
                client
                    .call(
                        http::Method::PATCH,
                        &format!("/api/v1/deployments/{}", args.name),
                        Some(serde_json::to_vec(&patch)?),
                    )
                    .await?;
                println!("{} scaled to {} replicas", args.name, args.replicas);
                Ok(())
            })
        }),
        "scale",
    )
}

pub fn destroy(args: DestroyArgs) -> ExitCode {
    finish(
        runtime().and_then(|rt| {
            rt.block_on(async {
                let client = Client::new(&args.conn)?;
                client
                    .call(
                        http::Method::DELETE,
                        &format!("/api/v1/deployments/{}", args.name),
                        None,
                    )
                    .await?;
                // The image `deploy` made under the same name, unless something else uses it.
                if let Err(e) = client
                    .call(
                        http::Method::DELETE,
                        &format!("/api/v1/images/{}", args.name),
                        None,
                    )
                    .await
                {
                    tracing::debug!(error = %e, "image kept");
                }
                // Wait for the agents: an instance is stopped when its processes are gone.
                let path = format!(
                    "/api/v1/retiring-instances?deployment={}",
                    form_urlencoded::byte_serialize(args.name.as_bytes()).collect::<String>()
                );
                let started = Instant::now();
                let mut shown = usize::MAX;
                loop {
                    let left: RetiringInstances = serde_json::from_slice(
                        &client.call(http::Method::GET, &path, None).await?,
                    )?;
                    if left.items.is_empty() {
                        break;
                    }
                    if started.elapsed() >= args.timeout {
                        let nodes: std::collections::BTreeSet<&str> =
                            left.items.iter().map(|i| i.node.as_str()).collect();
                        bail!(
                            "{} is destroyed and gets no traffic, but {} of its instances were not \
                             reported stopped within {:?} (node {}): they stop when that agent \
                             is back; see `zeitwork get nodes`",
                            args.name,
                            left.items.len(),
                            args.timeout,
                            nodes.into_iter().collect::<Vec<_>>().join(", ")
                        );
                    }
                    if left.items.len() != shown {
                        shown = left.items.len();
                        eprintln!("stopping: {shown} instance(s) of {} left", args.name);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                println!(
                    "{} destroyed: its instances are stopped and its domains are gone",
                    args.name
                );
                Ok(())
            })
        }),
        "destroy",
    )
}
