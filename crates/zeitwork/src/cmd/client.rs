//! `zeitwork get` and `zeitwork apply`: a small client of the operator's API.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use serde::de::DeserializeOwned;
use zw_proto::api::*;

/// How to reach the operator.
#[derive(Args, Clone)]
pub struct Conn {
    /// The operator's API: http://HOST:PORT.
    #[arg(
        long,
        value_name = "URL",
        env = "ZEITWORK_OPERATOR",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub(crate) operator: String,
    /// API token. Default: DATA_DIR/admin-token.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "ZEITWORK_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub(crate) token: Option<String>,
    /// Where the operator keeps its admin token file.
    #[arg(
        long,
        value_name = "DIR",
        env = "ZEITWORK_DATA_DIR",
        default_value = "./zeitwork-data",
        global = true
    )]
    pub(crate) data_dir: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    Nodes,
    Instances,
    Deployments,
    Domains,
    /// The domains' HTTPS certificates (ordered by the operator's ACME client).
    Certificates,
    Edges,
    Regions,
    Images,
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  zeitwork get nodes\n  zeitwork get certificates\n  zeitwork get edges -o json"
)]
pub struct GetArgs {
    kind: Kind,
    /// `table` for people, `json` for programs.
    #[arg(long, short = 'o', default_value = "table", value_parser = ["table", "json"])]
    output: String,
    #[command(flatten)]
    conn: Conn,
}

/// The deployment file `apply --help` shows (a test parses it).
macro_rules! apply_example {
    () => {
        "domains = [\"hello.example.com\"]   # top level, before the tables

[image]                      # optional: created or replaced
name = \"hello\"
command = [\"/usr/local/bin/hello\", \"--port\", \"$PORT\"]

[deployment]
name = \"hello\"
image = \"hello\"
replicas = 2
regions = [\"eu\"]
port = 8080
health_check = { path = \"/healthz\" }
"
    };
}

#[derive(Args)]
#[command(after_help = concat!(
    "A deployment file (TOML, or JSON when named *.json), for example:\n\n",
    apply_example!(),
    "\nEverything is written in one transaction: on any error nothing is."
))]
pub struct ApplyArgs {
    /// The deployment file.
    #[arg(long, short = 'f', value_name = "FILE")]
    file: PathBuf,
    /// Wait until the release it makes has rolled out (or fail with why it was halted).
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    conn: Conn,
}

pub(crate) struct Client {
    authority: String,
    token: String,
}

impl Client {
    pub(crate) fn new(conn: &Conn) -> anyhow::Result<Client> {
        let authority = conn
            .operator
            .strip_prefix("http://")
            .map(|a| a.trim_end_matches('/'))
            .with_context(|| format!("--operator {}: expected http://HOST:PORT", conn.operator))?
            .to_string();
        let token = match &conn.token {
            Some(t) => t.clone(),
            None => {
                let file = super::operator::token_file(&conn.data_dir);
                std::fs::read_to_string(&file)
                    .with_context(|| {
                        format!("no --token given and {} is unreadable", file.display())
                    })?
                    .trim()
                    .to_string()
            }
        };
        Ok(Client { authority, token })
    }

    pub(crate) async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Bytes> {
        let auth = format!("Bearer {}", self.token);
        let method_name = method.to_string();
        let user = user();
        let (status, bytes) = zw_http::request(
            method,
            &self.authority,
            path,
            &[("authorization", &auth), ("zeitwork-user", &user)],
            Some(body.unwrap_or_default()),
            std::time::Duration::from_secs(60),
            64 << 20,
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{method_name} {path} at the operator {}: {e}",
                self.authority
            )
        })?;
        if !(200..300).contains(&status) {
            let status = http::StatusCode::from_u16(status)
                .map_or_else(|_| status.to_string(), |s| s.to_string());
            match serde_json::from_slice::<ApiError>(&bytes) {
                Ok(e) => bail!("{} ({}): {}", status, e.code, e.message),
                Err(_) => bail!("{}: {}", status, String::from_utf8_lossy(&bytes).trim()),
            }
        }
        Ok(bytes)
    }

    /// Every item of a listing, following `next` cursors.
    pub(crate) async fn list<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<Vec<T>> {
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        let sep = if path.contains('?') { '&' } else { '?' };
        loop {
            let url = match &after {
                None => format!("{path}{sep}limit=500"),
                Some(a) => format!(
                    "{path}{sep}limit=500&after={}",
                    form_urlencoded::byte_serialize(a.as_bytes()).collect::<String>()
                ),
            };
            let page: Page<T> =
                serde_json::from_slice(&self.call(http::Method::GET, &url, None).await?)?;
            items.extend(page.items);
            match page.next {
                Some(n) => after = Some(n),
                None => return Ok(items),
            }
        }
    }
}

/// Who runs this command, for the releases it makes: `$USER@host`.
fn user() -> String {
    let name = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let user = format!("{name}@{}", host.trim());
    // a header value: visible ASCII only
    user.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(128)
        .collect()
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub(crate) fn finish(r: anyhow::Result<()>, what: &str) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zeitwork {what}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn get(args: GetArgs) -> ExitCode {
    finish(runtime().and_then(|rt| rt.block_on(get_inner(args))), "get")
}

fn when(t: &Option<zw_proto::time::Timestamp>) -> String {
    t.map_or_else(|| "-".to_string(), |t| t.to_string())
}

async fn get_inner(args: GetArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.conn)?;
    let json = args.output == "json";
    macro_rules! show {
        ($ty:ty, $path:literal, [$($h:literal),+], |$x:ident| [$($col:expr),+]) => {{
            let items: Vec<$ty> = c.list($path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else {
                let rows: Vec<Vec<String>> = items.iter().map(|$x| vec![$($col),+]).collect();
                print_table(&[$($h),+], &rows);
            }
        }};
    }
    match args.kind {
        Kind::Nodes => show!(
            Node,
            "/api/v1/nodes",
            [
                "ID",
                "HOSTNAME",
                "ADDRESS",
                "REGION",
                "TYPE",
                "STATE",
                "INGRESS",
                "RUNTIMES",
                "LAST HEARTBEAT"
            ],
            |n| [
                n.id.clone(),
                n.hostname.clone(),
                n.address.clone(),
                n.region.clone(),
                n.node_type.to_string(),
                n.state.to_string(),
                n.ingress_address.clone().unwrap_or_else(|| "-".into()),
                {
                    let up: Vec<&str> = n
                        .drivers
                        .iter()
                        .filter(|d| d.available)
                        .map(|d| d.runtime.as_str())
                        .collect();
                    if up.is_empty() {
                        "-".into()
                    } else {
                        up.join(",")
                    }
                },
                when(&n.last_heartbeat_at)
            ]
        ),
        Kind::Instances => {
            // instances the scheduler placed have no address of their own: edges reach
            // them through their node's worker ingress, so that is what the table shows
            let nodes: Vec<Node> = if json {
                Vec::new()
            } else {
                c.list("/api/v1/nodes").await?
            };
            let ingress = |node: &str| {
                nodes
                    .iter()
                    .find(|n| n.id == node)
                    .and_then(|n| n.ingress_address.clone())
            };
            show!(
                Instance,
                "/api/v1/instances",
                [
                    "ID",
                    "DEPLOYMENT",
                    "RELEASE",
                    "NODE",
                    "STATE",
                    "ADDRESS",
                    "REASON"
                ],
                |i| [
                    i.id.clone(),
                    i.deployment.clone(),
                    format!("v{}", i.release),
                    i.node.clone(),
                    if i.draining {
                        format!("{} (draining)", i.state)
                    } else {
                        i.state.to_string()
                    },
                    match (&i.address, i.port, ingress(&i.node)) {
                        (Some(a), Some(p), _) => format!("{a}:{p}"),
                        (_, _, Some(via)) => format!("via {via}"),
                        _ => "-".into(),
                    },
                    i.reason
                        .as_deref()
                        .map_or_else(|| "-".to_string(), |r| zw_proto::abbreviate(r, 80))
                ]
            )
        }
        Kind::Deployments => {
            // READY and STATUS come from the instances: how many serve, and whether the
            // rest are on their way or cannot start. (The port is left out: a process
            // gets its own in $PORT; `-o json` shows the VM port.)
            let instances: Vec<Instance> = if json {
                Vec::new()
            } else {
                c.list("/api/v1/instances").await?
            };
            let status = |d: &Deployment| {
                let mine = || instances.iter().filter(|i| i.deployment == d.name);
                let ready = mine()
                    .filter(|i| {
                        i.state == InstanceState::Started && i.release == d.release && !i.draining
                    })
                    .count();
                let status = if d.status == DeploymentStatus::Stopped {
                    "stopped"
                } else if ready >= d.replicas as usize {
                    "running"
                } else if mine().any(|i| i.state == InstanceState::Failed && i.permanent) {
                    "failed"
                } else {
                    "starting"
                };
                (format!("{ready}/{}", d.replicas), status)
            };
            show!(
                Deployment,
                "/api/v1/deployments",
                ["NAME", "IMAGE", "RELEASE", "READY", "REGIONS", "STATUS"],
                |d| [
                    d.name.clone(),
                    d.image.clone(),
                    format!("v{}", d.release),
                    status(d).0,
                    d.regions.join(","),
                    status(d).1.to_string()
                ]
            )
        }
        Kind::Domains => show!(
            Domain,
            "/api/v1/domains",
            ["NAME", "DEPLOYMENT", "VERIFIED", "LAST CHECK"],
            |d| [
                d.name.clone(),
                d.deployment.clone(),
                when(&d.verified_at),
                d.check_error.clone().unwrap_or_else(|| "-".into())
            ]
        ),
        Kind::Certificates => show!(
            TlsCertificateInfo,
            "/api/v1/tls-certificates",
            [
                "DOMAIN",
                "ISSUER",
                "NOT AFTER",
                "STATUS",
                "ORDERS",
                "LAST ERROR"
            ],
            |c| [
                c.domain.clone(),
                c.issuer.clone().unwrap_or_else(|| "-".into()),
                when(&c.not_after),
                c.status.clone(),
                c.orders.to_string(),
                c.last_error
                    .as_deref()
                    .map_or_else(|| "-".to_string(), |e| zw_proto::abbreviate(e, 80))
            ]
        ),
        Kind::Edges => show!(
            EdgeProxy,
            "/api/v1/edge-proxies",
            [
                "ID",
                "REGION",
                "ADDRESS",
                "STATE",
                "CONNECTED",
                "VERSION",
                "LAST ACK",
                "LAST NACK"
            ],
            |e| [
                e.id.clone(),
                e.region.clone(),
                e.address.clone(),
                e.state.to_string(),
                if e.connected {
                    "yes".into()
                } else {
                    "no".into()
                },
                e.applied_version.map_or("-".into(), |v| v.to_string()),
                when(&e.last_ack_at),
                e.last_nack_error.as_deref().map_or("-".into(), |m| format!(
                    "{}: {}",
                    when(&e.last_nack_at),
                    m.lines().next().unwrap_or("")
                ))
            ]
        ),
        Kind::Regions => show!(
            Region,
            "/api/v1/regions",
            ["NAME", "BALANCER", "HTTPS"],
            |r| [
                r.name.clone(),
                r.balancer_address.clone().unwrap_or_else(|| "-".into()),
                r.https_address.clone().unwrap_or_else(|| "-".into())
            ]
        ),
        Kind::Images => show!(Image, "/api/v1/images", ["NAME", "COMMAND"], |i| [
            i.name.clone(),
            i.command.join(" ")
        ]),
    }
    Ok(())
}

pub(crate) fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}   "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

pub fn apply(args: ApplyArgs) -> ExitCode {
    finish(
        runtime().and_then(|rt| rt.block_on(apply_inner(args))),
        "apply",
    )
}

async fn apply_inner(args: ApplyArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    if text.len() > 1 << 20 {
        bail!("{}: larger than 1 MiB", args.file.display());
    }
    let spec: ApplySpec = if args.file.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("{}", args.file.display()))?
    } else {
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?
    };
    let c = Client::new(&args.conn)?;
    let body = serde_json::to_vec(&spec)?;
    let applied: Applied = serde_json::from_slice(
        &c.call(http::Method::POST, "/api/v1/apply", Some(body))
            .await?,
    )?;
    println!("deployment {} {}", applied.deployment.name, applied.action);
    let name = &applied.deployment.name;
    match applied.release {
        Some(v) if args.wait => {
            let timeout = std::time::Duration::from_secs(
                spec.rollout_timeout_secs
                    .unwrap_or(zw_store::ROLLOUT_TIMEOUT_MS as u64 / 1000),
            );
            super::release::wait(&c, name, v, applied.deployment.replicas, timeout).await?;
            println!("{name} runs release v{v}");
        }
        Some(v) => println!(
            "release v{v} rolling out (`zeitwork status {name}` shows how far; `apply --wait` waits)"
        ),
        None => println!("release unchanged (v{})", applied.deployment.release),
    }
    for d in &applied.domains {
        println!("domain {} -> {}", d.name, d.deployment);
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    /// What `apply --help` shows is a file `apply` accepts.
    #[test]
    fn the_help_example_parses() {
        let spec: zw_proto::api::ApplySpec = toml::from_str(apply_example!()).unwrap();
        assert_eq!(spec.domains, ["hello.example.com"]);
        assert_eq!(spec.deployment.replicas, 2);
    }
}
