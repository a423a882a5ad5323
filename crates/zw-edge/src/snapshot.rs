//! Compiling a validated configuration into the immutable snapshot requests run on.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use zw_config::{ParsedService, Strategy, UpstreamScheme, ValidConfig};
use zw_rules::{RouterSpec, RoutingTable};

use crate::balance::{Balance, Hrw, P2c, RoundRobin, Server, ServerState, SmoothWrr};
use crate::health::{HealthSpec, Supervisor};
use crate::metrics::RouterMetrics;
use crate::middleware::{self, Middleware};
use crate::pool::{Backend, Transport};
use crate::tls::TlsRuntime;

/// One applied configuration. Requests hold an `Arc` to the snapshot they started on, so
/// a reload never changes anything under an in-flight request.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub hash: String,
    /// The routing tables of each entry point, indexed like the edge's entry points.
    pub tables: Vec<EntryTables>,
    /// The TLS server configurations handshakes get.
    pub tls: TlsRuntime,
    pub routers: Vec<RouterRt>,
    pub services: Vec<ServiceRt>,
    pub routing_headers: bool,
    /// ACME HTTP-01 tokens → key authorizations (the operator's orders), answered on every
    /// entry point.
    pub acme_challenges: std::collections::HashMap<String, String>,
}

/// An entry point's routers: those for requests that came over TLS (routers with `tls`)
/// and those for the others.
#[derive(Debug)]
pub struct EntryTables {
    pub plain: RoutingTable<u32>,
    pub tls: RoutingTable<u32>,
}

impl EntryTables {
    pub fn get(&self, tls: bool) -> &RoutingTable<u32> {
        if tls {
            &self.tls
        } else {
            &self.plain
        }
    }
}

#[derive(Debug)]
pub struct RouterRt {
    pub name: Box<str>,
    pub rule: Box<str>,
    pub middlewares: Vec<Arc<dyn Middleware>>,
    pub service: u32,
    /// Whether one of its middlewares is `errors` (the request's URI and headers are then
    /// kept for the page request).
    pub error_pages: bool,
    /// Whether one of its middlewares reads, buffers or sniffs a body: the request path
    /// asks the middlewares about bodies only then.
    pub body_work: bool,
    /// Per entry point (same index as `Snapshot::tables`), where the router listens.
    pub metrics: Vec<Option<Arc<RouterMetrics>>>,
}

#[derive(Debug)]
pub struct ServiceRt {
    pub name: Box<str>,
    pub kind: ServiceKind,
}

#[derive(Debug)]
pub enum ServiceKind {
    LoadBalancer(LbService),
    Weighted { children: Vec<u32>, wrr: SmoothWrr },
}

#[derive(Debug)]
pub struct LbService {
    pub servers: Vec<Server>,
    pub balancer: Box<dyn Balance>,
    pub pass_host_header: bool,
    pub transport: Transport,
}

impl Snapshot {
    /// Whether a service (following weighted children) has a server that is up.
    pub fn has_up(&self, service: u32, depth: usize) -> bool {
        if depth > self.services.len() {
            return false;
        }
        match self.services.get(service as usize).map(|s| &s.kind) {
            Some(ServiceKind::LoadBalancer(lb)) => lb.servers.iter().any(Server::is_up),
            Some(ServiceKind::Weighted { children, .. }) => {
                children.iter().any(|c| self.has_up(*c, depth + 1))
            }
            None => false,
        }
    }
}

/// State that outlives snapshots: server health and load, connection pools, metrics, and
/// the running health checks. Touched only when a configuration is applied and when
/// metrics are rendered, never on the request path.
#[derive(Debug, Default)]
pub struct Registry {
    pub servers: HashMap<(String, String), Arc<ServerState>>,
    pub backends: HashMap<(String, usize), Arc<Backend>>,
    pub routers: BTreeMap<(String, String, String), Arc<RouterMetrics>>,
    pub health: Supervisor,
    /// The platform client certificate for `https://` servers, once the edge has one.
    pub tls: crate::pool::PlatformTls,
    /// TLS session cache and ticket keys: kept across snapshots, so that a new
    /// configuration does not make every returning client do a full handshake.
    pub sessions: zw_tls::Sessions,
    /// Middleware state kept across snapshots (rate-limit buckets).
    pub kept: middleware::Kept,
}

fn transport_of(valid: &ValidConfig, name: Option<&str>) -> Transport {
    let mut t = Transport::default();
    let Some(st) = name
        .map(zw_config::ref_name)
        .and_then(|n| valid.config.http.servers_transports.get(n))
    else {
        return t;
    };
    let ft = &st.forwarding_timeouts;
    if let Some(d) = ft.dial_timeout {
        t.dial_timeout = d.0;
    }
    if let Some(d) = ft.response_header_timeout {
        // 0 means no timeout in Traefik; we keep a day as the ceiling.
        t.response_header_timeout = if d.0.is_zero() {
            std::time::Duration::from_secs(86_400)
        } else {
            d.0
        };
    }
    if let Some(d) = ft.idle_conn_timeout {
        t.idle_timeout = d.0;
    }
    if let Some(n) = st.max_idle_conns_per_host {
        t.max_idle = n as usize;
    }
    t
}

/// Builds a snapshot and brings the registry in line with it (new servers registered,
/// removed ones dropped, health checks reconciled). Validation parsed every value and
/// resolved every reference, so this cannot fail.
pub fn build(
    valid: ValidConfig,
    entry_points: &[String],
    reg: &mut Registry,
    version: u64,
) -> Snapshot {
    let http = &valid.config.http;
    let parsed = &valid.parsed;

    let mut services = Vec::with_capacity(http.services.len());
    let mut used_servers = HashMap::new();
    let mut used_backends = HashMap::new();
    let mut health_desired = Vec::new();
    for (name, psvc) in http.services.keys().zip(&parsed.services) {
        let kind = match psvc {
            ParsedService::LoadBalancer(plb) => {
                let lb = &plb.config;
                let transport = transport_of(&valid, lb.servers_transport.as_deref());
                let mut servers = Vec::with_capacity(plb.servers.len());
                for (s, ps) in lb.servers.iter().zip(&plb.servers) {
                    let url = &ps.url;
                    // Instances behind one ingress share its URL; the instance tells them apart.
                    let key = match &s.instance {
                        Some(i) => (name.clone(), format!("{}#{i}", s.url)),
                        None => (name.clone(), s.url.clone()),
                    };
                    // A worker ingress (an instance) speaks the platform's mutual TLS; another
                    // `https://` server the TLS of its transport.
                    let public_tls = plb
                        .upstream_tls
                        .as_ref()
                        .filter(|_| ps.instance.is_none() && url.scheme == UpstreamScheme::Https);
                    let bkey = (
                        format!(
                            "{:?}://{}#{}",
                            url.scheme,
                            url.authority,
                            public_tls.map_or("", |t| t.identity.as_str())
                        ),
                        transport.max_idle,
                    );
                    let backend = used_backends
                        .get(&bkey)
                        .or_else(|| reg.backends.get(&bkey))
                        .cloned()
                        .unwrap_or_else(|| {
                            Arc::new(Backend::with_tls(
                                url,
                                transport.max_idle,
                                reg.tls.clone(),
                                public_tls.map(|t| (t.config.clone(), t.server_name.as_deref())),
                            ))
                        });
                    used_backends.insert(bkey, backend.clone());
                    let state = match reg.servers.get(&key) {
                        Some(st)
                            if st.url == *url
                                && st.cross_region == s.cross_region
                                && Arc::ptr_eq(&st.backend, &backend) =>
                        {
                            st.clone()
                        }
                        _ => Arc::new(ServerState::new(
                            url.clone(),
                            s.url.clone(),
                            ps.instance.clone(),
                            s.cross_region,
                            backend,
                        )),
                    };
                    if let (Some(hc), Some(phc)) = (&lb.health_check, &plb.health_check) {
                        health_desired.push((
                            key.clone(),
                            state.clone(),
                            HealthSpec::from_config(hc, phc),
                        ));
                    }
                    used_servers.insert(key, state.clone());
                    servers.push(Server {
                        state,
                        weight: s.weight.unwrap_or(1),
                        preserve_path: s.preserve_path,
                    });
                }
                let balancer: Box<dyn Balance> = match lb.strategy {
                    Strategy::Wrr => Box::new(SmoothWrr::new(
                        &servers.iter().map(|s| s.weight).collect::<Vec<_>>(),
                    )),
                    Strategy::RoundRobin => Box::new(RoundRobin::default()),
                    Strategy::P2c => Box::new(P2c),
                    Strategy::Hrw => {
                        let urls: Vec<&str> = lb.servers.iter().map(|s| s.url.as_str()).collect();
                        Box::new(Hrw::new(plb.hash_key.clone(), &urls))
                    }
                };
                ServiceKind::LoadBalancer(LbService {
                    servers,
                    balancer,
                    pass_host_header: lb.pass_host_header.unwrap_or(true),
                    transport,
                })
            }
            ParsedService::Weighted(children) => ServiceKind::Weighted {
                wrr: SmoothWrr::new(&children.iter().map(|(_, w)| *w).collect::<Vec<_>>()),
                children: children.iter().map(|(c, _)| *c).collect(),
            },
        };
        services.push(ServiceRt {
            name: name.as_str().into(),
            kind,
        });
    }

    let mut kept = middleware::Kept::new();
    let middlewares: Vec<Option<Arc<dyn Middleware>>> = http
        .middlewares
        .keys()
        .zip(&parsed.middlewares)
        .map(|(name, m)| middleware::build(name, m, &reg.kept, &mut kept))
        .collect();
    reg.kept = kept;

    // Per entry point, twice: [plain, tls].
    let mut specs: Vec<[Vec<RouterSpec<u32>>; 2]> =
        entry_points.iter().map(|_| Default::default()).collect();
    let mut fallbacks: Vec<[Option<(String, u32)>; 2]> =
        entry_points.iter().map(|_| Default::default()).collect();
    let mut routers = Vec::with_capacity(http.routers.len());
    let mut rules = valid.rules.clone();
    for ((name, r), pr) in http.routers.iter().zip(&parsed.routers) {
        let idx = routers.len() as u32;
        let service_name = zw_config::ref_name(&r.service);
        let mws: Vec<Arc<dyn Middleware>> = pr
            .middlewares
            .iter()
            .filter_map(|m| middlewares.get(*m as usize).cloned().flatten())
            .collect();
        let error_pages = mws.iter().any(|m| m.error_page().is_some());
        let body_work = mws.iter().any(|m| {
            m.reads_body().is_some() || m.buffering().is_some() || m.sniffs_content_type()
        });
        let mut metrics = vec![None; entry_points.len()];
        let rule = rules.remove(name);
        for (ep_idx, ep) in entry_points.iter().enumerate() {
            if !r.listens_on(ep) {
                continue;
            }
            let m = reg
                .routers
                .entry((ep.clone(), name.clone(), service_name.to_string()))
                .or_insert_with(|| Arc::new(RouterMetrics::new(ep, name, service_name)))
                .clone();
            metrics[ep_idx] = Some(m);
            let side = usize::from(pr.tls.is_some());
            match &rule {
                Some(rule) => specs[ep_idx][side].push(RouterSpec {
                    name: name.clone(),
                    rule: rule.clone(),
                    priority: r.priority,
                    value: idx,
                }),
                None => fallbacks[ep_idx][side] = Some((name.clone(), idx)),
            }
        }
        if metrics.iter().all(Option::is_none) {
            tracing::warn!(router = %name, entry_points = ?r.entry_points, "router listens on no entry point of this edge; it takes no traffic here");
        }
        routers.push(RouterRt {
            name: name.as_str().into(),
            rule: r.rule.clone().unwrap_or_else(|| "(fallback)".into()).into(),
            middlewares: mws,
            service: pr.service,
            error_pages,
            body_work,
            metrics,
        });
    }
    let tables = specs
        .into_iter()
        .zip(fallbacks)
        .map(|([plain, tls], [plain_fb, tls_fb])| EntryTables {
            plain: RoutingTable::new(plain, plain_fb),
            tls: RoutingTable::new(tls, tls_fb),
        })
        .collect();
    let tls = TlsRuntime::new(
        &parsed.tls,
        &reg.sessions,
        http.routers
            .iter()
            .zip(&parsed.routers)
            .filter_map(|((name, _), pr)| {
                let options = pr.tls.as_deref()?;
                Some((
                    name.as_str(),
                    options,
                    valid.rules.get(name).and_then(|r| r.host_names()),
                ))
            }),
    );

    reg.health.reconcile(health_desired, &used_servers);
    reg.servers = used_servers;
    reg.backends = used_backends;

    Snapshot {
        version,
        hash: valid.hash,
        tables,
        tls,
        routers,
        services,
        routing_headers: valid.config.edge.routing_headers,
        acme_challenges: valid.config.edge.acme_challenges.into_iter().collect(),
    }
}
