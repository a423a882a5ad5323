//! `zeitwork releases`, `rollback`, `secrets` and `status`, and the wait for a release to
//! roll out that `deploy`, `apply`, `rollback` and `secrets` share.

use std::io::Read;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use zw_proto::api::*;

use super::client::{finish, runtime, Client, Conn};
use super::deploy::Progress;

fn path(name: &str) -> String {
    format!(
        "/api/v1/deployments/{}",
        form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
    )
}

async fn get<T: serde::de::DeserializeOwned>(c: &Client, p: &str) -> anyhow::Result<T> {
    Ok(serde_json::from_slice(
        &c.call(http::Method::GET, p, None).await?,
    )?)
}

/// Waits until release `version` of `name` runs (every replica healthy on it, the old
/// ones drained and stopping); an error names why it was halted.
pub(crate) async fn wait(
    c: &Client,
    name: &str,
    version: u64,
    want: u32,
    timeout: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    // The operator halts a release at its deadline; allow it time to say so.
    let deadline = start + timeout + Duration::from_secs(10);
    let mut progress = Progress::new(start);
    loop {
        let rel: Release = get(c, &format!("{}/releases/{version}", path(name))).await?;
        match rel.status {
            ReleaseStatus::Running | ReleaseStatus::Retired => {
                progress.done();
                return Ok(());
            }
            ReleaseStatus::Failed => {
                progress.done();
                let d: Deployment = get(c, &path(name)).await?;
                let stays = if d.release == version {
                    format!("there is no earlier release to go back to: its instances keep being retried (`zeitwork destroy {name}` stops them)")
                } else {
                    format!("{name} stays on v{}", d.release)
                };
                bail!(
                    "release v{version} of {name} was halted: {}; {stays} (see `zeitwork status {name}` and `zeitwork logs {name}`)",
                    rel.reason.as_deref().unwrap_or("failed")
                );
            }
            ReleaseStatus::Superseded => {
                progress.done();
                bail!("release v{version} of {name} was replaced by a newer release before it finished rolling out");
            }
            ReleaseStatus::Rolling => {}
        }
        let instances: Vec<Instance> = c
            .list(&format!(
                "/api/v1/instances?deployment={}",
                form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
            ))
            .await?;
        let new: Vec<&Instance> = instances
            .iter()
            .filter(|i| i.release == version && !i.draining)
            .collect();
        let healthy = new
            .iter()
            .filter(|i| i.state == InstanceState::Started)
            .count();
        let old = instances.len() - new.len();
        let mut line = format!("rolling to v{version}: {healthy}/{want} new healthy");
        if old > 0 {
            line.push_str(&format!(", {old} old left"));
        }
        if let Some(f) = new.iter().find(|i| i.state == InstanceState::Failed) {
            line.push_str(&format!(
                " (last failure: {}: {})",
                f.id,
                f.reason.as_deref().unwrap_or("failed")
            ));
        }
        progress.show(line);
        if Instant::now() > deadline {
            progress.done();
            bail!(
                "release v{version} of {name} did not roll out within {timeout:?}; last state: {}",
                progress.last()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Args)]
pub struct ReleasesArgs {
    /// The app.
    name: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Conn,
}

pub fn releases(args: ReleasesArgs) -> ExitCode {
    finish(
        runtime().and_then(|rt| {
            rt.block_on(async {
                let c = Client::new(&args.conn)?;
                let list: Releases = get(&c, &format!("{}/releases", path(&args.name))).await?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&list.items)?);
                    return Ok(());
                }
                print_releases(&list.items);
                Ok(())
            })
        }),
        "releases",
    )
}

fn print_releases(items: &[Release]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|r| {
            let mut status = r.status.to_string();
            if let Some(why) = &r.reason {
                status.push_str(&format!(": {}", zw_proto::abbreviate(why, 80)));
            }
            vec![
                format!(
                    "{}v{}",
                    if r.status == ReleaseStatus::Running {
                        "* "
                    } else {
                        "  "
                    },
                    r.version
                ),
                status,
                r.created_at.to_string(),
                r.created_by.clone(),
                r.description.clone(),
            ]
        })
        .collect();
    super::client::print_table(&["RELEASE", "STATUS", "CREATED", "BY", "CHANGE"], &rows);
}

pub(crate) fn version_arg(s: &str) -> Result<u64, String> {
    s.trim_start_matches(['v', 'V'])
        .parse()
        .map_err(|_| format!("`{s}`: expected a release like v3 or 3"))
}

#[derive(Args)]
#[command(
    after_help = "A rollback makes a new release equal to the one named (default: the one that ran \
before the running one), with its command, environment and secrets, and rolls to it like a \
deploy: no request is lost."
)]
pub struct RollbackArgs {
    name: String,
    /// The release to go back to (`v3` or `3`).
    #[arg(value_name = "RELEASE", value_parser = version_arg)]
    release: Option<u64>,
    /// How long the new release may take to roll out.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = super::duration)]
    timeout: Duration,
    #[command(flatten)]
    conn: Conn,
}

pub fn rollback(args: RollbackArgs) -> ExitCode {
    finish(
        runtime().and_then(|rt| {
            rt.block_on(async {
                let c = Client::new(&args.conn)?;
                let body = serde_json::to_vec(&RollbackRequest {
                    version: args.release,
                })?;
                let rel: Release = serde_json::from_slice(
                    &c.call(
                        http::Method::POST,
                        &format!("{}/rollback", path(&args.name)),
                        Some(body),
                    )
                    .await?,
                )?;
                let d: Deployment = get(&c, &path(&args.name)).await?;
                eprintln!(
                    "{}: release v{} ({})",
                    args.name, rel.version, rel.description
                );
                wait(&c, &args.name, rel.version, d.replicas, args.timeout).await?;
                println!(
                    "{} runs release v{} ({})",
                    args.name, rel.version, rel.description
                );
                Ok(())
            })
        }),
        "rollback",
    )
}

#[derive(Args)]
pub struct SecretsArgs {
    #[command(subcommand)]
    command: SecretsCommand,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Set secrets (a new release): `KEY=VALUE`, or `KEY` alone to read its value from
    /// standard input (kept out of the shell's history and the process list).
    Set {
        name: String,
        #[arg(required = true, value_name = "KEY[=VALUE]")]
        pairs: Vec<String>,
        /// How long the new release may take to roll out.
        #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = super::duration)]
        timeout: Duration,
    },
    /// Remove secrets (a new release).
    Unset {
        name: String,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
        #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = super::duration)]
        timeout: Duration,
    },
    /// The secrets' names and when each was set (never a value).
    List { name: String },
}

pub fn secrets(args: SecretsArgs) -> ExitCode {
    finish(
        runtime().and_then(|rt| rt.block_on(secrets_inner(args))),
        "secrets",
    )
}

async fn secrets_inner(args: SecretsArgs) -> anyhow::Result<()> {
    let conn = args.conn;
    let (name, patch, timeout) = match args.command {
        SecretsCommand::List { name } => {
            let c = Client::new(&conn)?;
            let list: Secrets = get(&c, &format!("{}/secrets", path(&name))).await?;
            let rows: Vec<Vec<String>> = list
                .items
                .iter()
                .map(|s| vec![s.name.clone(), s.set_at.to_string()])
                .collect();
            super::client::print_table(&["NAME", "SET"], &rows);
            return Ok(());
        }
        SecretsCommand::Set {
            name,
            pairs,
            timeout,
        } => {
            let mut patch = SecretsPatch::default();
            let mut stdin_used = false;
            for p in pairs {
                let (k, v) = match p.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => {
                        if stdin_used {
                            bail!("only one secret can be read from standard input");
                        }
                        stdin_used = true;
                        let mut v = String::new();
                        std::io::stdin()
                            .take(12 << 10)
                            .read_to_string(&mut v)
                            .context("reading the value from standard input")?;
                        (p, v.trim_end_matches(['\n', '\r']).to_string())
                    }
                };
                patch.set.insert(k, v);
            }
            (name, patch, timeout)
        }
        SecretsCommand::Unset {
            name,
            keys,
            timeout,
        } => (
            name,
            SecretsPatch {
                set: Default::default(),
                unset: keys,
            },
            timeout,
        ),
    };
    let c = Client::new(&conn)?;
    let rel: Release = serde_json::from_slice(
        &c.call(
            http::Method::PATCH,
            &format!("{}/secrets", path(&name)),
            Some(serde_json::to_vec(&patch)?),
        )
        .await?,
    )?;
    let d: Deployment = get(&c, &path(&name)).await?;
    eprintln!("{name}: release v{} ({})", rel.version, rel.description);
    wait(&c, &name, rel.version, d.replicas, timeout).await?;
    println!("{name} runs release v{} ({})", rel.version, rel.description);
    Ok(())
}

#[derive(Args)]
pub struct StatusArgs {
    name: String,
    #[command(flatten)]
    conn: Conn,
}

pub fn status(args: StatusArgs) -> ExitCode {
    finish(
        runtime().and_then(|rt| rt.block_on(status_inner(args))),
        "status",
    )
}

async fn status_inner(args: StatusArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.conn)?;
    let name = &args.name;
    let d: Deployment = get(&c, &path(name)).await?;
    let releases: Releases = get(&c, &format!("{}/releases", path(name))).await?;
    let q = form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>();
    let instances: Vec<Instance> = c.list(&format!("/api/v1/instances?deployment={q}")).await?;
    let domains: Vec<Domain> = c.list(&format!("/api/v1/domains?deployment={q}")).await?;
    let certs: Vec<TlsCertificateInfo> = c.list("/api/v1/tls-certificates").await?;
    let started = instances
        .iter()
        .filter(|i| i.release == d.release && i.state == InstanceState::Started && !i.draining)
        .count();
    println!(
        "{name}: release v{}, {started}/{} replicas healthy, strategy {} (surge {})",
        d.release, d.replicas, d.strategy, d.max_surge
    );
    println!();
    print_releases(&releases.items[..releases.items.len().min(5)]);
    println!();
    let rows: Vec<Vec<String>> = instances
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                format!("v{}", i.release),
                if i.draining {
                    format!("{} (draining)", i.state)
                } else {
                    i.state.to_string()
                },
                i.node.clone(),
                i.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    super::client::print_table(&["INSTANCE", "RELEASE", "STATE", "NODE", "REASON"], &rows);
    println!();
    let regions: Vec<Region> = c.list("/api/v1/regions").await?;
    let region = regions.iter().find(|r| d.regions.contains(&r.name));
    let rows: Vec<Vec<String>> = domains
        .iter()
        .map(|dom| {
            let verified = if dom.verified_at.is_some() {
                "verified".to_string()
            } else {
                format!(
                    "not verified{}",
                    dom.check_error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                )
            };
            let cert = certs
                .iter()
                .find(|c| c.domain == dom.name)
                .map_or("none".to_string(), |c| c.status.clone());
            let url = region
                .and_then(|r| r.balancer_address.as_deref())
                .map(|b| {
                    format!(
                        "http://{}:{}/",
                        dom.name,
                        b.rsplit(':').next().unwrap_or("80")
                    )
                })
                .unwrap_or_default();
            vec![dom.name.clone(), verified, cert, url]
        })
        .collect();
    super::client::print_table(&["DOMAIN", "STATE", "CERTIFICATE", "URL"], &rows);
    Ok(())
}
