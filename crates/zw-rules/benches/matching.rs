//! Matching cost against tables of 10, 1k and 100k routers.
//!
//! Each table has N host routers (`Host(`app-i.example.com`) && PathPrefix(`/api`)`), a
//! wildcard router and a few host-less routers (the usual shape of a platform's table). The
//! probe hits a host in the middle of the table, a host with no router (falls through to
//! the host-less routers), and a wildcard host.

use divan::{black_box, Bencher};
use http::HeaderMap;
use zw_rules::{RequestView, RouterSpec, RoutingTable, Rule};

fn main() {
    divan::main();
}

fn build(n: usize) -> RoutingTable<usize> {
    let mut specs: Vec<RouterSpec<usize>> = (0..n)
        .map(|i| RouterSpec {
            name: format!("app-{i}"),
            rule: Rule::compile(&format!(
                "Host(`app-{i}.example.com`) && PathPrefix(`/api`)"
            ))
            .unwrap(),
            priority: None,
            value: i,
        })
        .collect();
    for (i, rule) in [
        "PathPrefix(`/.well-known/acme-challenge/`)",
        "Path(`/healthz`)",
        "Host(`*.preview.example.com`)",
    ]
    .iter()
    .enumerate()
    {
        specs.push(RouterSpec {
            name: format!("extra-{i}"),
            rule: Rule::compile(rule).unwrap(),
            priority: None,
            value: n + i,
        });
    }
    RoutingTable::new(specs, Some(("fallback".into(), usize::MAX)))
}

const SIZES: &[usize] = &[10, 1_000, 100_000];

fn probe(b: Bencher<'_, '_>, n: usize, host: String, path: &'static str) {
    let table = build(n);
    let headers = HeaderMap::new();
    b.bench(|| {
        let view = RequestView {
            method: "GET",
            host: black_box(&host),
            path: black_box(path),
            query: "",
            headers: &headers,
            client_ip: None,
        };
        black_box(table.route(&view).map(|r| *r.value))
    });
}

#[divan::bench(args = SIZES)]
fn exact_host_hit(b: Bencher<'_, '_>, n: usize) {
    probe(b, n, format!("app-{}.example.com", n / 2), "/api/users");
}

#[divan::bench(args = SIZES)]
fn unknown_host_to_fallback(b: Bencher<'_, '_>, n: usize) {
    probe(b, n, "nobody.example.org".into(), "/index.html");
}

#[divan::bench(args = SIZES)]
fn wildcard_host(b: Bencher<'_, '_>, n: usize) {
    probe(b, n, "pr-42.preview.example.com".into(), "/");
}

/// The same table without the index (every router tried in priority order), to show what
/// the index saves.
#[divan::bench(args = SIZES)]
fn linear_scan_for_comparison(b: Bencher<'_, '_>, n: usize) {
    let rules: Vec<Rule> = (0..n)
        .map(|i| {
            Rule::compile(&format!(
                "Host(`app-{i}.example.com`) && PathPrefix(`/api`)"
            ))
            .unwrap()
        })
        .collect();
    let headers = HeaderMap::new();
    let host = format!("app-{}.example.com", n / 2);
    b.bench(|| {
        let view = RequestView {
            method: "GET",
            host: black_box(&host),
            path: "/api/users",
            query: "",
            headers: &headers,
            client_ip: None,
        };
        black_box(rules.iter().position(|r| r.matches(&view)))
    });
}
