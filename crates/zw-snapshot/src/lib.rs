//! The snapshot compiler: platform state → one routing configuration per region.
//!
//! A pure function of its input, so the operator, the edge's database provider and the
//! tests all get the same answer for the same state. Every verified domain becomes a router
//! `Host(`domain`)` (wildcards `HostRegexp`) to its deployment's service; the service's
//! servers are the deployment's started instances in the region, or, when the region has
//! none, the balancers of the regions that have some (cross-region fallback). A deployment
//! with no started instance anywhere keeps its router and an empty server list, so clients
//! get a 503 "no healthy server" rather than a 404 that would suggest the domain is unknown.

use std::collections::{BTreeMap, BTreeSet};

use zw_config::{Config, Dur, HealthCheck, LoadBalancer, Router, Server, Service};

/// What the compiler reads: the routable part of the platform state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingState {
    /// Region name → balancer address (`host:port`), if the region has one.
    pub regions: BTreeMap<String, Option<String>>,
    pub deployments: BTreeMap<String, DeploymentRoute>,
    /// Verified domains only.
    pub domains: Vec<DomainRoute>,
    /// Started instances only.
    pub endpoints: Vec<Endpoint>,
    /// Certificates of verified domains, keys in clear (the operator opens them just
    /// before compiling; the store keeps them sealed).
    pub certificates: Vec<DomainCertificate>,
    /// ACME HTTP-01 tokens → key authorizations, answered by every edge.
    pub acme_challenges: BTreeMap<String, String>,
}

/// A domain's certificate chain and key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct DomainCertificate {
    pub domain: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for DomainCertificate {
    /// The key is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainCertificate")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeploymentRoute {
    /// HTTP path the edge checks actively; `None` leaves health to the agent.
    pub health_path: Option<String>,
    pub health_interval_secs: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DomainRoute {
    pub name: String,
    pub deployment: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub deployment: String,
    pub region: String,
    pub address: String,
    pub port: u16,
    /// Set for an instance behind a worker ingress: `address:port` is the ingress, reached
    /// over mutual TLS, and this names the instance there.
    pub instance: Option<String>,
}

/// Router and service names the compiler owns; `base` must not use them.
pub fn router_name(domain: &str) -> String {
    format!("domain-{domain}")
}

/// The HTTPS router of a domain that has a certificate.
pub fn tls_router_name(domain: &str) -> String {
    format!("domain-{domain}-tls")
}

pub fn service_name(deployment: &str) -> String {
    format!("deployment-{deployment}")
}

/// The configuration for edges in `region`: `base` (the operator's static configuration)
/// plus a router per verified domain. Fails when `base` already defines a name the
/// compiler generates.
pub fn compile(state: &RoutingState, region: &str, base: &Config) -> Result<Config, String> {
    let mut out = base.clone();
    let mut services_needed = BTreeSet::new();
    for d in &state.domains {
        if !state.deployments.contains_key(&d.deployment) {
            continue;
        }
        let name = router_name(&d.name);
        let rule = match d.name.strip_prefix("*.") {
            // one label, as `*.x` means in TRAEFIK-RULES.md
            Some(parent) => format!(
                "HostRegexp(`^[a-z0-9-]+\\.{}$`)",
                parent.replace('.', "\\.")
            ),
            None => format!("Host(`{}`)", d.name),
        };
        let router = Router {
            rule: Some(rule),
            service: service_name(&d.deployment),
            ..Router::default()
        };
        // A domain with a certificate is served over HTTPS too: the same route, on TLS.
        let tls_router = state
            .certificates
            .iter()
            .any(|c| c.domain == d.name)
            .then(|| Router {
                tls: Some(zw_config::RouterTls::default()),
                ..router.clone()
            });
        for (name, router) in
            std::iter::once((name, router)).chain(tls_router.map(|r| (tls_router_name(&d.name), r)))
        {
            if out.http.routers.insert(name.clone(), router).is_some() {
                return Err(format!(
                    "the static configuration defines router `{name}`, which the domain {} needs",
                    d.name
                ));
            }
        }
        services_needed.insert(d.deployment.as_str());
    }
    for deployment in services_needed {
        let name = service_name(deployment);
        let spec = &state.deployments[deployment];
        let mut local: Vec<(String, Option<String>)> = state
            .endpoints
            .iter()
            .filter(|e| e.deployment == deployment && e.region == region)
            .map(|e| {
                let scheme = if e.instance.is_some() {
                    "https"
                } else {
                    "http"
                };
                (
                    format!("{scheme}://{}", host_port(&e.address, e.port)),
                    e.instance.clone(),
                )
            })
            .collect();
        local.sort();
        local.dedup();
        let mut cross_region = false;
        let (urls, health) = if local.is_empty() {
            let regions: BTreeSet<&str> = state
                .endpoints
                .iter()
                .filter(|e| e.deployment == deployment)
                .map(|e| e.region.as_str())
                .collect();
            let remote: Vec<(String, Option<String>)> = regions
                .into_iter()
                .filter_map(|r| state.regions.get(r).cloned().flatten())
                .map(|addr| (format!("http://{addr}"), None))
                .collect();
            cross_region = true;
            // A remote balancer is checked by the edges over there, not from here.
            (remote, None)
        } else {
            let health = spec.health_path.as_ref().map(|path| HealthCheck {
                path: path.clone(),
                interval: Some(Dur(std::time::Duration::from_secs(u64::from(
                    spec.health_interval_secs.unwrap_or(5).max(1),
                )))),
                timeout: Some(Dur(std::time::Duration::from_secs(2))),
                ..HealthCheck::default()
            });
            (local, health)
        };
        let service = Service {
            load_balancer: Some(LoadBalancer {
                servers: urls
                    .into_iter()
                    .map(|(url, instance)| Server {
                        url,
                        instance,
                        cross_region,
                        ..Server::default()
                    })
                    .collect(),
                health_check: health,
                ..LoadBalancer::default()
            }),
            ..Service::default()
        };
        if out.http.services.insert(name.clone(), service).is_some() {
            return Err(format!(
                "the static configuration defines service `{name}`, which the deployment {deployment} needs"
            ));
        }
    }
    let routed: BTreeSet<&str> = state.domains.iter().map(|d| d.name.as_str()).collect();
    let certificates: Vec<_> = state
        .certificates
        .iter()
        .filter(|c| routed.contains(c.domain.as_str()))
        .collect();
    if !certificates.is_empty() {
        let tls = out.tls.get_or_insert_with(Default::default);
        for c in certificates {
            tls.certificates.push(zw_config::TlsCertificate {
                cert_file: zw_config::FileOrContent(c.cert_pem.clone()),
                key_file: zw_config::FileOrContent(c.key_pem.clone()),
                ..Default::default()
            });
        }
    }
    out.edge.acme_challenges.extend(
        state
            .acme_challenges
            .iter()
            .map(|(t, k)| (t.clone(), k.clone())),
    );
    Ok(out)
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> RoutingState {
        let mut s = RoutingState::default();
        s.regions.insert("eu".into(), Some("10.0.0.1:80".into()));
        s.regions.insert("us".into(), Some("10.1.0.1:80".into()));
        s.regions.insert("ap".into(), None);
        s.deployments.insert(
            "web".into(),
            DeploymentRoute {
                health_path: Some("/healthz".into()),
                health_interval_secs: None,
            },
        );
        s.domains.push(DomainRoute {
            name: "app.example.com".into(),
            deployment: "web".into(),
        });
        s.endpoints.push(Endpoint {
            deployment: "web".into(),
            region: "eu".into(),
            address: "10.0.0.7".into(),
            port: 31000,
            instance: None,
        });
        s.endpoints.push(Endpoint {
            deployment: "web".into(),
            region: "eu".into(),
            address: "fd00::7".into(),
            port: 31001,
            instance: None,
        });
        s
    }

    fn servers(c: &Config, deployment: &str) -> Vec<String> {
        c.http.services[&service_name(deployment)]
            .load_balancer
            .as_ref()
            .unwrap()
            .servers
            .iter()
            .map(|s| s.url.clone())
            .collect()
    }

    #[test]
    fn local_instances_are_the_servers() {
        let c = compile(&state(), "eu", &Config::default()).unwrap();
        let r = &c.http.routers["domain-app.example.com"];
        assert_eq!(r.rule.as_deref(), Some("Host(`app.example.com`)"));
        assert_eq!(
            servers(&c, "web"),
            ["http://10.0.0.7:31000", "http://[fd00::7]:31001"]
        );
        let lb = c.http.services["deployment-web"]
            .load_balancer
            .as_ref()
            .unwrap();
        assert_eq!(lb.health_check.as_ref().unwrap().path, "/healthz");
        zw_config::validate(c, &zw_config::Limits::default()).unwrap();
    }

    #[test]
    fn a_region_without_instances_forwards_to_a_region_with_some() {
        let c = compile(&state(), "us", &Config::default()).unwrap();
        assert_eq!(servers(&c, "web"), ["http://10.0.0.1:80"]);
        let lb = c.http.services["deployment-web"]
            .load_balancer
            .as_ref()
            .unwrap();
        assert!(lb.health_check.is_none());
    }

    #[test]
    fn no_instance_anywhere_means_an_empty_service_not_a_missing_router() {
        let mut s = state();
        s.endpoints.clear();
        let c = compile(&s, "eu", &Config::default()).unwrap();
        assert!(c.http.routers.contains_key("domain-app.example.com"));
        assert!(servers(&c, "web").is_empty());
        zw_config::validate(c, &zw_config::Limits::default()).unwrap();
    }

    #[test]
    fn wildcard_domains_match_one_label() {
        let mut s = state();
        s.domains[0].name = "*.apps.example.com".into();
        let c = compile(&s, "eu", &Config::default()).unwrap();
        let valid = zw_config::validate(c, &zw_config::Limits::default()).unwrap();
        let rule = &valid.rules["domain-*.apps.example.com"];
        let headers = http::HeaderMap::new();
        let matches = |host: &str| {
            rule.matches(&zw_rules::RequestView {
                method: "GET",
                host,
                path: "/",
                query: "",
                headers: &headers,
                client_ip: None,
            })
        };
        assert!(matches("a.apps.example.com"));
        assert!(!matches("a.b.apps.example.com"));
        assert!(!matches("apps.example.com"));
    }

    #[test]
    fn static_config_merges_and_collisions_are_errors() {
        let base: Config = serde_json::from_str(
            r#"{"http":{"routers":{"status":{"rule":"Path(`/status`)","service":"s"}},
                "services":{"s":{"loadBalancer":{"servers":[{"url":"http://127.0.0.1:1"}]}}}}}"#,
        )
        .unwrap();
        let c = compile(&state(), "eu", &base).unwrap();
        assert!(c.http.routers.contains_key("status"));
        assert!(c.http.routers.contains_key("domain-app.example.com"));

        let mut clash = base.clone();
        clash
            .http
            .routers
            .insert("domain-app.example.com".into(), Router::default());
        let e = compile(&state(), "eu", &clash).unwrap_err();
        assert!(e.contains("router `domain-app.example.com`"), "{e}");
    }

    #[test]
    fn output_is_deterministic() {
        let mut s = state();
        let a = zw_config::validate(
            compile(&s, "eu", &Config::default()).unwrap(),
            &Default::default(),
        )
        .unwrap();
        s.endpoints.reverse();
        let b = zw_config::validate(
            compile(&s, "eu", &Config::default()).unwrap(),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(a.hash, b.hash);
    }
}
