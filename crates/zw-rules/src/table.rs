//! The routing table: routers ordered by priority, indexed by host.
//!
//! Routers are sorted once, at build time, by priority (higher first) and then by name
//! (ascending). Traefik breaks ties between equal priorities by provider and then
//! arbitrarily; we use the router name so that the same configuration always routes the
//! same way.
//!
//! Every router is filed under the hosts its rule requires:
//! * `exact` — rules that can only match a fixed set of hosts (`Host(`a.com`)`, or an `||`
//!   of such, or an `&&` with one);
//! * `wildcard` — rules like `Host(`*.a.com`)`, filed under the parent domain `a.com`;
//! * `any` — everything else (no host condition, `HostRegexp`, `!Host(…)`, `Host(`*`)`).
//!
//! A request consults only three lists — its exact host, its parent domain and `any` —
//! merged on the fly by rank, so matching cost does not grow with the number of hosts and
//! nothing is allocated.

use std::collections::HashMap;

use crate::rule::{Leaf, Node};
use crate::{RequestView, Rule};

/// One router to put in a table.
#[derive(Debug, Clone)]
pub struct RouterSpec<T> {
    pub name: String,
    pub rule: Rule,
    /// Explicit priority; `None` (or 0, as in Traefik) means the rule's length.
    pub priority: Option<i64>,
    pub value: T,
}

/// Why a request was routed where it was (for `X-Route-Reason` and `route test`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteReason {
    /// The rule matched; the router was filed under the request's exact host.
    ExactHost,
    /// The rule matched; the router was filed under the request's parent domain.
    WildcardHost,
    /// The rule matched; the router has no host condition the index could use.
    AnyHost,
    /// No rule matched; the fallback router took the request.
    Fallback,
}

impl RouteReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteReason::ExactHost => "host",
            RouteReason::WildcardHost => "wildcard-host",
            RouteReason::AnyHost => "any-host",
            RouteReason::Fallback => "fallback",
        }
    }
}

/// The result of routing one request.
#[derive(Debug)]
pub struct Route<'a, T> {
    pub name: &'a str,
    pub priority: i64,
    pub value: &'a T,
    pub reason: RouteReason,
}

#[derive(Debug)]
struct Entry<T> {
    name: Box<str>,
    rule: Rule,
    priority: i64,
    value: T,
}

/// An immutable routing table.
#[derive(Debug)]
pub struct RoutingTable<T> {
    entries: Vec<Entry<T>>,
    exact: HashMap<Box<str>, Vec<u32>>,
    wildcard: HashMap<Box<str>, Vec<u32>>,
    any: Vec<u32>,
    fallback: Option<(Box<str>, T)>,
}

enum HostKey {
    Exact(Box<str>),
    Wildcard(Box<str>),
}

/// The hosts a rule can possibly match, or `None` when it is not limited to a known set.
fn host_keys(node: &Node) -> Option<Vec<HostKey>> {
    match node {
        Node::Leaf(Leaf::HostExact(h)) => Some(vec![HostKey::Exact(h.clone())]),
        Node::Leaf(Leaf::HostWildcard(p)) => Some(vec![HostKey::Wildcard(p.clone())]),
        Node::Leaf(_) | Node::Not(_) => None,
        Node::And(l, r) => match (host_keys(l), host_keys(r)) {
            (Some(a), Some(b)) => Some(if a.len() <= b.len() { a } else { b }),
            (Some(a), None) | (None, Some(a)) => Some(a),
            (None, None) => None,
        },
        Node::Or(l, r) => {
            let mut a = host_keys(l)?;
            a.extend(host_keys(r)?);
            Some(a)
        }
    }
}

impl Rule {
    /// The host names the rule can match — exact names, and `*.parent` for a one-label
    /// wildcard — or `None` when it matches hosts not known in advance (no `Host`, or a
    /// `HostRegexp`). What TLS options and certificates are chosen by, before routing.
    pub fn host_names(&self) -> Option<Vec<String>> {
        host_keys(self.node()).map(|keys| {
            keys.into_iter()
                .map(|k| match k {
                    HostKey::Exact(h) => h.into(),
                    HostKey::Wildcard(p) => format!("*.{p}"),
                })
                .collect()
        })
    }
}

impl<T> RoutingTable<T> {
    /// Builds a table. Router names must be unique (the configuration layer checks);
    /// `fallback` takes requests no rule matches.
    pub fn new(routers: Vec<RouterSpec<T>>, fallback: Option<(String, T)>) -> Self {
        let mut entries: Vec<Entry<T>> = routers
            .into_iter()
            .map(|r| {
                let priority = match r.priority {
                    Some(p) if p != 0 => p,
                    _ => r.rule.default_priority(),
                };
                Entry {
                    name: r.name.into(),
                    rule: r.rule,
                    priority,
                    value: r.value,
                }
            })
            .collect();
        entries.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.name.cmp(&b.name))
        });

        let mut exact: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut wildcard: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut any = Vec::new();
        for (rank, e) in entries.iter().enumerate() {
            let rank = u32::try_from(rank).unwrap_or(u32::MAX);
            match host_keys(e.rule.node()) {
                None => any.push(rank),
                Some(keys) => {
                    for k in keys {
                        let list = match k {
                            HostKey::Exact(h) => exact.entry(h).or_default(),
                            HostKey::Wildcard(p) => wildcard.entry(p).or_default(),
                        };
                        // a rule naming the same host twice is filed once
                        if list.last() != Some(&rank) {
                            list.push(rank);
                        }
                    }
                }
            }
        }
        RoutingTable {
            entries,
            exact,
            wildcard,
            any,
            fallback: fallback.map(|(n, v)| (n.into(), v)),
        }
    }

    /// Number of routers, not counting the fallback.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.fallback.is_none()
    }

    /// Routers in the order they are tried.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| &*e.name)
    }

    /// The highest-priority router whose rule matches, else the fallback, else `None`.
    pub fn route(&self, req: &RequestView<'_>) -> Option<Route<'_, T>> {
        const EMPTY: &[u32] = &[];
        let exact = self.exact.get(req.host).map_or(EMPTY, Vec::as_slice);
        let wild = match req.host.split_once('.') {
            Some((label, parent)) if !label.is_empty() => {
                self.wildcard.get(parent).map_or(EMPTY, Vec::as_slice)
            }
            _ => EMPTY,
        };
        let lists = [
            (exact, RouteReason::ExactHost),
            (wild, RouteReason::WildcardHost),
            (self.any.as_slice(), RouteReason::AnyHost),
        ];
        let mut heads = [0usize; 3];
        loop {
            // pick the list whose next router ranks first
            let mut best: Option<(usize, u32)> = None;
            for (i, (list, _)) in lists.iter().enumerate() {
                if let Some(&rank) = list.get(heads[i]) {
                    if best.is_none_or(|(_, b)| rank < b) {
                        best = Some((i, rank));
                    }
                }
            }
            let Some((i, rank)) = best else { break };
            heads[i] += 1;
            let Some(e) = self.entries.get(rank as usize) else {
                break;
            };
            if e.rule.matches(req) {
                return Some(Route {
                    name: &e.name,
                    priority: e.priority,
                    value: &e.value,
                    reason: lists[i].1,
                });
            }
        }
        self.fallback.as_ref().map(|(name, value)| Route {
            name,
            priority: i64::MIN,
            value,
            reason: RouteReason::Fallback,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn table(routers: &[(&str, &str, Option<i64>)], fallback: bool) -> RoutingTable<String> {
        let specs = routers
            .iter()
            .map(|(name, rule, prio)| RouterSpec {
                name: name.to_string(),
                rule: Rule::compile(rule).unwrap(),
                priority: *prio,
                value: name.to_string(),
            })
            .collect();
        RoutingTable::new(
            specs,
            fallback.then(|| ("tier3".to_string(), "tier3".to_string())),
        )
    }

    fn route<'a>(
        t: &'a RoutingTable<String>,
        host: &'a str,
        path: &'a str,
        h: &'a HeaderMap,
    ) -> Option<&'a str> {
        let view = RequestView {
            method: "GET",
            host,
            path,
            query: "",
            headers: h,
            client_ip: None,
        };
        t.route(&view).map(|r| r.name)
    }

    #[test]
    fn longer_rule_wins_by_default() {
        let h = HeaderMap::new();
        let t = table(
            &[
                ("short", "Host(`a.com`)", None),
                ("long", "Host(`a.com`) && PathPrefix(`/api`)", None),
            ],
            false,
        );
        assert_eq!(route(&t, "a.com", "/api/x", &h), Some("long"));
        assert_eq!(route(&t, "a.com", "/other", &h), Some("short"));
        assert_eq!(route(&t, "b.com", "/api", &h), None);
    }

    #[test]
    fn explicit_priority_overrides_and_zero_means_default() {
        let h = HeaderMap::new();
        let t = table(
            &[
                ("short", "Host(`a.com`)", Some(100)),
                ("long", "Host(`a.com`) && PathPrefix(`/api`)", Some(0)),
            ],
            false,
        );
        assert_eq!(route(&t, "a.com", "/api/x", &h), Some("short"));
    }

    #[test]
    fn ties_break_by_name() {
        let h = HeaderMap::new();
        let t = table(
            &[
                ("b", "PathPrefix(`/`)", Some(5)),
                ("a", "PathPrefix(`/`)", Some(5)),
            ],
            false,
        );
        assert_eq!(route(&t, "x", "/", &h), Some("a"));
    }

    #[test]
    fn host_less_and_wildcard_routers_merge_in_priority_order() {
        let h = HeaderMap::new();
        let t = table(
            &[
                ("exact", "Host(`a.example.com`)", Some(10)),
                ("wild", "Host(`*.example.com`)", Some(20)),
                ("anyhigh", "PathPrefix(`/admin`)", Some(30)),
                ("anylow", "PathPrefix(`/`)", Some(1)),
            ],
            true,
        );
        assert_eq!(route(&t, "a.example.com", "/", &h), Some("wild"));
        assert_eq!(route(&t, "a.example.com", "/admin", &h), Some("anyhigh"));
        assert_eq!(route(&t, "b.example.com", "/", &h), Some("wild"));
        assert_eq!(route(&t, "example.com", "/", &h), Some("anylow"));
        assert_eq!(route(&t, "", "/", &h), Some("anylow"));
    }

    #[test]
    fn fallback_takes_the_rest() {
        let h = HeaderMap::new();
        let t = table(&[("a", "Host(`a.com`)", None)], true);
        let view = RequestView {
            method: "GET",
            host: "zzz",
            path: "/",
            query: "",
            headers: &h,
            client_ip: None,
        };
        let r = t.route(&view).unwrap();
        assert_eq!((r.name, r.reason), ("tier3", RouteReason::Fallback));
    }

    #[test]
    fn or_of_hosts_is_indexed_under_each() {
        let h = HeaderMap::new();
        let t = table(
            &[
                ("multi", "Host(`a.com`) || Host(`b.com`)", None),
                ("neg", "!Host(`a.com`)", Some(1)),
            ],
            false,
        );
        assert_eq!(route(&t, "a.com", "/", &h), Some("multi"));
        assert_eq!(route(&t, "b.com", "/", &h), Some("multi"));
        assert_eq!(route(&t, "c.com", "/", &h), Some("neg"));
    }

    #[test]
    fn index_agrees_with_a_linear_scan() {
        // Every router consulted by the index must be the one a full scan in priority
        // order picks; try a grid of hosts against a mix of rule shapes.
        let rules = [
            ("r1", "Host(`a.com`)"),
            ("r2", "Host(`*.a.com`) && PathPrefix(`/x`)"),
            ("r3", "HostRegexp(`^b`)"),
            ("r4", "Host(`a.com`) || PathPrefix(`/y`)"),
            ("r5", "!Host(`c.a.com`) && Path(`/z`)"),
            ("r6", "(Host(`c.a.com`) || Host(`d.com`)) && Method(`GET`)"),
            ("r7", "Host(`*`) && Path(`/w`)"),
        ];
        let t = table(
            &rules
                .iter()
                .map(|(n, r)| (*n, *r, None))
                .collect::<Vec<_>>(),
            false,
        );
        let h = HeaderMap::new();
        let mut all: Vec<(i64, &str, Rule)> = rules
            .iter()
            .map(|(n, r)| (r.len() as i64, *n, Rule::compile(r).unwrap()))
            .collect();
        all.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        for host in [
            "a.com",
            "c.a.com",
            "x.a.com",
            "b.com",
            "d.com",
            "",
            "q.q.a.com",
        ] {
            for path in ["/", "/x", "/y", "/z", "/w"] {
                let view = RequestView {
                    method: "GET",
                    host,
                    path,
                    query: "",
                    headers: &h,
                    client_ip: None,
                };
                let linear = all
                    .iter()
                    .find(|(_, _, r)| r.matches(&view))
                    .map(|(_, n, _)| *n);
                assert_eq!(
                    t.route(&view).map(|r| r.name),
                    linear,
                    "host={host} path={path}"
                );
            }
        }
    }
}
