//! `zeitwork route test`: which router takes a request, without sending traffic.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Subcommand};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::json;
use zw_config::Limits;
use zw_rules::{RequestView, RouterSpec, RoutingTable, Rule};

/// Longest accepted input line (one request).
const MAX_LINE: usize = 1 << 20;

#[derive(Subcommand)]
pub enum RouteCommand {
    /// Read requests as JSON lines on stdin and print, per line, whether a rule matches
    /// (`{"matched":true}`) or which router and service a configuration picks
    /// (`{"router":"api","service":"api"}`).
    ///
    /// Request fields (all optional; a missing one is absent, an absent path is `/`):
    /// {"method":"GET","host":"example.com","path":"/a%20b","query":"x=1",
    ///  "headers":{"X-Env":"prod","Accept":["a","b"]},"client_ip":"10.0.0.1"}
    #[command(group(ArgGroup::new("what").required(true).args(["rule", "config"])))]
    Test {
        /// One rule, e.g. "Host(`example.com`) && PathPrefix(`/api`)".
        #[arg(long, value_name = "RULE")]
        rule: Option<String>,
        /// A whole configuration (file or directory).
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// With --config: only routers of this entry point (default: all routers).
        #[arg(long, value_name = "NAME", requires = "config")]
        entry_point: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    method: Option<String>,
    host: Option<String>,
    path: Option<String>,
    query: Option<QueryInput>,
    #[serde(default)]
    headers: BTreeMap<String, OneOrMany>,
    client_ip: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum QueryInput {
    Raw(String),
    Map(BTreeMap<String, OneOrMany>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn values(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

enum Matcher {
    Rule(Rule),
    Table(RoutingTable<Route>),
}

pub fn run(cmd: RouteCommand) -> ExitCode {
    let RouteCommand::Test {
        rule,
        config,
        entry_point,
    } = cmd;
    let matcher = match (rule, config) {
        (Some(r), _) => match Rule::compile(&r) {
            Ok(rule) => Matcher::Rule(rule),
            Err(e) => return fatal(format!("invalid rule: {e}")),
        },
        (None, Some(path)) => {
            let limits = Limits::default();
            match zw_config::load_path(&path, &limits)
                .and_then(|l| zw_config::validate(l.config, &limits))
            {
                Ok(valid) => Matcher::Table(table(valid, entry_point.as_deref())),
                Err(e) => return fatal(format!("invalid configuration: {e}")),
            }
        }
        (None, None) => return fatal("give --rule or --config".into()),
    };
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failed = false;
    for (n, line) in stdin.lock().lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                let _ = writeln!(
                    out,
                    "{}",
                    json!({ "error": format!("line {}: {e}", n + 1) })
                );
                failed = true;
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let answer = if line.len() > MAX_LINE {
            Err(format!("line is longer than {MAX_LINE} bytes"))
        } else {
            serde_json::from_str::<Input>(&line)
                .map_err(|e| e.to_string())
                .and_then(|input| evaluate(&matcher, &input))
        };
        match answer {
            Ok(v) => {
                let _ = writeln!(out, "{v}");
            }
            Err(e) => {
                failed = true;
                let _ = writeln!(
                    out,
                    "{}",
                    json!({ "error": format!("line {}: {e}", n + 1) })
                );
            }
        }
    }
    let _ = out.flush();
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn fatal(msg: String) -> ExitCode {
    println!("{}", json!({ "error": msg }));
    ExitCode::from(2)
}

/// What a request that a router matches goes through: its middlewares in order (chains
/// spliced in, as the edge runs them), then its service.
#[derive(Clone)]
struct Route {
    service: String,
    middlewares: Vec<String>,
}

/// The routing table the edge would build for one entry point (or all routers).
fn table(valid: zw_config::ValidConfig, entry_point: Option<&str>) -> RoutingTable<Route> {
    let mut rules = valid.rules;
    let mut specs = Vec::new();
    let mut fallback = None;
    let middleware_names: Vec<&String> = valid.config.http.middlewares.keys().collect();
    for ((name, r), parsed) in valid.config.http.routers.iter().zip(&valid.parsed.routers) {
        let name = name.clone();
        if let Some(ep) = entry_point {
            if !r.listens_on(ep) {
                continue;
            }
        }
        let service = Route {
            service: zw_config::ref_name(&r.service).to_string(),
            middlewares: parsed
                .middlewares
                .iter()
                .filter_map(|i| middleware_names.get(*i as usize).map(|n| n.to_string()))
                .collect(),
        };
        match rules.remove(&name) {
            Some(rule) => specs.push(RouterSpec {
                name,
                rule,
                priority: r.priority,
                value: service,
            }),
            None => fallback = Some((name, service)),
        }
    }
    RoutingTable::new(specs, fallback)
}

fn evaluate(matcher: &Matcher, input: &Input) -> Result<serde_json::Value, String> {
    let mut headers = HeaderMap::new();
    for (name, values) in &input.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name `{name}`"))?;
        for v in values.values() {
            headers.append(
                name.clone(),
                HeaderValue::from_str(v)
                    .map_err(|_| format!("invalid value for header `{name}`"))?,
            );
        }
    }
    let query = match &input.query {
        None => String::new(),
        Some(QueryInput::Raw(q)) => q.strip_prefix('?').unwrap_or(q).to_string(),
        Some(QueryInput::Map(m)) => {
            let mut parts = Vec::new();
            for (k, vs) in m {
                for v in vs.values() {
                    parts.push(format!("{}={}", form_encode(k), form_encode(v)));
                }
            }
            parts.join("&")
        }
    };
    let client_ip = match &input.client_ip {
        None => None,
        Some(ip) => Some(
            ip.parse::<IpAddr>()
                .map_err(|_| format!("`{ip}` is not an IP address"))?,
        ),
    };
    let raw_path = input.path.as_deref().unwrap_or("/");
    let cleaned = zw_rules::clean_path(raw_path);
    let path =
        zw_rules::routing_path(&cleaned).map_err(|e| format!("{e} (the edge would answer 400)"))?;
    let host = zw_rules::normalize_host(input.host.as_deref().unwrap_or(""));
    let view = RequestView {
        method: input.method.as_deref().unwrap_or(""),
        host: &host,
        path: &path,
        query: &query,
        headers: &headers,
        client_ip,
    };
    Ok(match matcher {
        Matcher::Rule(rule) => json!({ "matched": rule.matches(&view) }),
        Matcher::Table(t) => match t.route(&view) {
            Some(r) => json!({
                "router": r.name,
                "service": r.value.service,
                "middlewares": r.value.middlewares,
            }),
            None => json!({ "router": null, "service": null }),
        },
    })
}

fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
