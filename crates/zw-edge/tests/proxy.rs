//! The edge over real sockets, against real upstream servers on 127.0.0.1:0.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zw_edge::testkit::{get, one_route, Client, TestEdge, Upstream};

fn req(host: &str, path: &str) -> http::request::Builder {
    Request::get(path).header("host", host)
}

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

/// Router name picked for a request, read from X-Routed-To (routing headers on).
fn routed(r: &zw_edge::testkit::Resp) -> String {
    let to = r.header("x-routed-to").unwrap_or("");
    to.split(';')
        .next()
        .unwrap_or("")
        .trim_start_matches("router=")
        .to_string()
}

#[tokio::test]
async fn routes_by_every_matcher() {
    let up = Upstream::start("u").await;
    let u = up.url();
    let cfg = format!(
        r#"
edge: {{routingHeaders: true}}
http:
  services:
    s: {{loadBalancer: {{servers: [{{url: "{u}"}}]}}}}
  routers:
    host:        {{rule: "Host(`host.test`)", service: s}}
    hostregexp:  {{rule: "HostRegexp(`^[a-z]+\\.regexp\\.test$`)", service: s}}
    path:        {{rule: "Host(`p.test`) && Path(`/exact`)", service: s}}
    pathprefix:  {{rule: "Host(`p.test`) && PathPrefix(`/pre`)", service: s}}
    pathregexp:  {{rule: "Host(`p.test`) && PathRegexp(`^/items/[0-9]+$`)", service: s}}
    header:      {{rule: "Host(`h.test`) && Header(`X-Env`, `canary`)", service: s}}
    headerre:    {{rule: "Host(`h.test`) && HeaderRegexp(`X-Env`, `^stag`)", service: s}}
    method:      {{rule: "Host(`m.test`) && Method(`POST`)", service: s}}
    query:       {{rule: "Host(`q.test`) && Query(`debug`, `1`)", service: s}}
    queryre:     {{rule: "Host(`q.test`) && QueryRegexp(`id`, `^[0-9]+$`)", service: s}}
    clientip:    {{rule: "Host(`c.test`) && ClientIP(`127.0.0.0/8`)", service: s}}
    clientip10:  {{rule: "Host(`c10.test`) && ClientIP(`10.0.0.0/8`)", service: s}}
    wildcard:    {{rule: "Host(`*.wild.test`)", service: s}}
"#
    );
    let edge = TestEdge::start(&cfg).await;
    let mut c = Client::h1(edge.addr).await.unwrap();
    let cases: Vec<(http::request::Builder, &str)> = vec![
        (req("HOST.test:8080", "/"), "host"),
        (req("abc.regexp.test", "/"), "hostregexp"),
        (req("p.test", "/exact"), "path"),
        (req("p.test", "/prefix-and-more"), "pathprefix"),
        (req("p.test", "/items/42"), "pathregexp"),
        (req("h.test", "/").header("x-env", "canary"), "header"),
        (req("h.test", "/").header("x-env", "staging"), "headerre"),
        (Request::post("/").header("host", "m.test"), "method"),
        (req("q.test", "/?debug=1"), "query"),
        (req("q.test", "/?id=123"), "queryre"),
        (req("c.test", "/"), "clientip"),
        (req("a.wild.test", "/"), "wildcard"),
        // paths are decoded (but not reserved characters) and cleaned before routing
        (req("p.test", "/a/../ex%61ct"), "path"),
    ];
    for (r, want) in cases {
        let resp = c.send(r.body(empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status, 200, "{want}: {resp:?}");
        assert_eq!(routed(&resp), want, "{resp:?}");
        assert_eq!(resp.upstream(), "u");
        let reason = resp.header("x-route-reason").unwrap_or("");
        assert!(
            reason.starts_with("rule ") && reason.contains("matched (priority "),
            "{reason}"
        );
    }
    let r = c
        .send(req("p.test", "/exact").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        r.header("x-routed-to"),
        Some(format!("router=path; service=s; server={}", up.addr).as_str())
    );
    assert_eq!(
        r.header("x-route-reason"),
        Some("rule Host(`p.test`) && Path(`/exact`) matched (priority 32, index: host)")
    );
    for (r, why) in [
        (
            req("h.test", "/").header("x-env", "prod"),
            "header value differs",
        ),
        (Request::get("/").header("host", "m.test"), "method differs"),
        (req("q.test", "/?id=abc"), "query regexp fails"),
        (req("c10.test", "/"), "client is 127.0.0.1, not 10/8"),
        (req("b.a.wild.test", "/"), "wildcard matches one label only"),
        (req("p.test", "/items/42/x"), "regexp anchored"),
    ] {
        let resp = c.send(r.body(empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status, 404, "{why}: {resp:?}");
        assert_eq!(resp.body, "Service Not Found\n");
        // the edge's own answers say why, and are not to be sniffed (as Traefik's are not)
        assert_eq!(
            resp.header("x-route-reason"),
            Some("no router matched on entry point web"),
            "{why}"
        );
        assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    }
    // Traefik upper-cases a rule's method and compares exactly; a one-argument Query()
    // wants the key with an empty value.
    let cfg_more = r#"
    m2: {rule: "Host(`m2.test`) && Method(`post`)", service: s}
    q1: {rule: "Host(`q1.test`) && Query(`mobile`)", service: s}
"#;
    let v0 = edge.edge.status().version;
    edge.write_config(&format!("{cfg}{}", cfg_more.trim_start_matches('\n')));
    edge.wait_version_above(v0).await;
    for (r, want) in [
        (Request::post("/").header("host", "m2.test"), 200),
        (Request::get("/").header("host", "m2.test"), 404),
        (req("q1.test", "/?mobile"), 200),
        (req("q1.test", "/?mobile="), 200),
        (req("q1.test", "/?mobile=true"), 404),
    ] {
        let resp = c.send(r.body(empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status, want, "{resp:?}");
    }
    let bad = c
        .send(req("p.test", "/bad%zzescape").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
    edge.shutdown().await;
}

#[tokio::test]
async fn priorities_length_then_explicit_then_fallback() {
    let (a, b, f) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("tier3").await,
    );
    let cfg = format!(
        r#"
http:
  services:
    a: {{loadBalancer: {{servers: [{{url: "{}"}}]}}}}
    b: {{loadBalancer: {{servers: [{{url: "{}"}}]}}}}
    tier3: {{loadBalancer: {{servers: [{{url: "{}"}}]}}}}
  routers:
    short: {{rule: "Host(`x.test`)", service: a}}
    long:  {{rule: "Host(`x.test`) && PathPrefix(`/api`)", service: b}}
    boss:  {{rule: "PathPrefix(`/admin`)", service: a, priority: 1000}}
    rest:  {{fallback: true, service: tier3}}
"#,
        a.url(),
        b.url(),
        f.url()
    );
    let edge = TestEdge::start(&cfg).await;
    assert_eq!(
        get(edge.addr, "x.test", "/api/v1").await.upstream(),
        "b",
        "longer rule wins"
    );
    assert_eq!(get(edge.addr, "x.test", "/other").await.upstream(), "a");
    assert_eq!(
        get(edge.addr, "x.test", "/admin").await.upstream(),
        "a",
        "explicit priority wins"
    );
    assert_eq!(
        get(edge.addr, "unknown.test", "/").await.upstream(),
        "tier3",
        "fallback takes the rest"
    );
    edge.shutdown().await;
}

/// A server that refuses connections (a node that is gone, before the next snapshot says
/// so): nothing was sent, so the request goes to another server, whatever its method.
#[tokio::test]
async fn an_unreachable_server_is_passed_over_for_a_live_one() {
    let live = Upstream::start("live").await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cfg = format!(
        "http:\n  services:\n    s: {{loadBalancer: {{strategy: roundRobin, servers: [{{url: \"http://{dead}\"}}, {{url: \"{}\"}}]}}}}\n  routers:\n    r: {{rule: \"PathPrefix(`/`)\", service: s}}\n",
        live.url()
    );
    let edge = TestEdge::start(&cfg).await;
    let mut c = Client::h1(edge.addr).await.unwrap();
    for method in ["GET", "POST", "GET", "DELETE"] {
        let r = c
            .send(
                req("lb.test", "/")
                    .method(method)
                    .body(Full::new(Bytes::from_static(b"payload")))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.upstream()),
            (200, "live".to_string()),
            "{method}"
        );
    }
    edge.shutdown().await;
}

async fn distribution(
    strategy: &str,
    weights: [u32; 3],
    n: usize,
    extra: &str,
) -> (HashMap<String, usize>, Vec<Upstream>) {
    let ups = vec![
        Upstream::start("s0").await,
        Upstream::start("s1").await,
        Upstream::start("s2").await,
    ];
    let servers: Vec<String> = ups
        .iter()
        .zip(weights)
        .map(|(u, w)| format!("{{url: \"{}\", weight: {w}}}", u.url()))
        .collect();
    let cfg = format!(
        "http:\n  services:\n    s: {{loadBalancer: {{strategy: {strategy}, {extra} servers: [{}]}}}}\n  routers:\n    r: {{rule: \"PathPrefix(`/`)\", service: s}}\n",
        servers.join(", ")
    );
    let edge = TestEdge::start(&cfg).await;
    let mut c = Client::h1(edge.addr).await.unwrap();
    let mut seen = HashMap::new();
    for i in 0..n {
        let r = c
            .send(
                req("lb.test", "/")
                    .header("x-user", format!("user-{}", i % 50))
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        *seen.entry(r.upstream()).or_insert(0) += 1;
    }
    edge.shutdown().await;
    (seen, ups)
}

#[tokio::test]
async fn wrr_follows_weights_exactly() {
    // 600 requests = 100 full periods of a 3:2:1 schedule
    let (seen, _ups) = distribution("wrr", [3, 2, 1], 600, "").await;
    assert_eq!(
        (seen["s0"], seen["s1"], seen["s2"]),
        (300, 200, 100),
        "{seen:?}"
    );
}

#[tokio::test]
async fn round_robin_ignores_weights_but_not_zero() {
    let (seen, _ups) = distribution("roundRobin", [5, 1, 0], 300, "").await;
    assert_eq!((seen["s0"], seen["s1"]), (150, 150), "{seen:?}");
    assert!(!seen.contains_key("s2"), "weight 0 takes no traffic");
}

#[tokio::test]
async fn hrw_on_client_ip_sticks_to_one_server() {
    let (seen, _ups) = distribution("hrw", [1, 1, 1], 100, "").await;
    assert_eq!(seen.len(), 1, "one client IP, one server: {seen:?}");
}

/// Three upstreams behind an `hrw` service keyed by `hash_key` (YAML); each of `users`
/// keys (the header value `value(user)`) is sent four times and must land on one server
/// every time. Returns the servers the users ended up on.
async fn hrw_stickiness(
    hash_key: &str,
    header: &str,
    value: impl Fn(usize) -> String,
    users: usize,
) -> std::collections::HashSet<String> {
    let ups = [
        Upstream::start("s0").await,
        Upstream::start("s1").await,
        Upstream::start("s2").await,
    ];
    let cfg = format!(
        "http:\n  services:\n    s: {{loadBalancer: {{strategy: hrw, hashKey: {hash_key}, servers: [{}]}}}}\n  routers:\n    r: {{rule: \"PathPrefix(`/`)\", service: s}}\n",
        ups.iter().map(|u| format!("{{url: \"{}\"}}", u.url())).collect::<Vec<_>>().join(", ")
    );
    let edge = TestEdge::start(&cfg).await;
    let mut c = Client::h1(edge.addr).await.unwrap();
    let mut servers = std::collections::HashSet::new();
    for user in 0..users {
        let mut first = None;
        for _ in 0..4 {
            let r = c
                .send(
                    req("lb.test", "/")
                        .header(header, value(user))
                        .body(empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            let got = r.upstream();
            assert_eq!(
                first.get_or_insert_with(|| got.clone()),
                &got,
                "key {} moved",
                value(user)
            );
        }
        servers.extend(first);
    }
    edge.shutdown().await;
    servers
}

#[tokio::test]
async fn hrw_on_a_header_spreads_users_and_keeps_each_on_its_server() {
    let (seen, _ups) = distribution("hrw", [1, 1, 1], 300, "hashKey: {header: X-User},").await;
    assert_eq!(seen.len(), 3, "50 users over 3 servers: {seen:?}");
    let servers = hrw_stickiness("{header: X-User}", "x-user", |u| format!("u{u}"), 20).await;
    assert_eq!(servers.len(), 3, "20 users use all three servers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_sends_less_to_the_slow_server() {
    let (fast, slow) = (Upstream::start("fast").await, Upstream::start("slow").await);
    // Both servers get the same requests; the second is slow because its URL path
    // (`/slow/40`, kept by preservePath) makes it wait 40 ms before answering.
    let cfg = format!(
        "http:\n  services:\n    s: {{loadBalancer: {{strategy: p2c, servers: [{{url: \"{}\"}}, {{url: \"{}/slow/40\", preservePath: true}}]}}}}\n  routers:\n    r: {{rule: \"PathPrefix(`/`)\", service: s}}\n",
        fast.url(),
        slow.url()
    );
    let edge = TestEdge::start(&cfg).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let addr = edge.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::h1(addr).await.unwrap();
            for _ in 0..25 {
                c.get("lb.test", "/").await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (f, s) = (fast.hits(), slow.hits());
    assert_eq!(f + s, 200);
    // with 8 concurrent clients the slow server has requests in flight most of the time,
    // so it loses most comparisons; round robin would give it 100
    assert!(s < 60, "slow server got {s} of 200 (fast {f})");
    edge.shutdown().await;
}

#[tokio::test]
async fn health_checks_eject_and_return_servers() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let cfg = format!(
        "http:\n  services:\n    s:\n      loadBalancer:\n        servers: [{{url: \"{}\"}}, {{url: \"{}\"}}]\n        healthCheck: {{path: /health, interval: 50ms, timeout: 500ms, unhealthyThreshold: 2, healthyThreshold: 2}}\n  routers:\n    r: {{rule: \"PathPrefix(`/`)\", service: s}}\n",
        a.url(),
        b.url()
    );
    let edge = TestEdge::start(&cfg).await;
    let mut c = Client::h1(edge.addr).await.unwrap();
    b.set_healthy(false);
    let mut ejected = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if edge
            .admin_get("/metrics")
            .await
            .body
            .contains(&format!("server=\"{}\"}} 0", b.url()))
        {
            ejected = true;
            break;
        }
    }
    assert!(ejected, "b was not marked down within 2 s");
    for _ in 0..20 {
        assert_eq!(c.get("x", "/").await.unwrap().upstream(), "a");
    }
    a.set_healthy(false);
    let mut none = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let r = c.get("x", "/").await.unwrap();
        if r.status == 503 {
            none = true;
            break;
        }
    }
    assert!(none, "with every server down the answer must be 503");
    b.set_healthy(true);
    let mut back = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if c.get("x", "/").await.unwrap().upstream() == "b" {
            back = true;
            break;
        }
    }
    assert!(back, "b did not come back");
    edge.shutdown().await;
}

#[tokio::test]
async fn error_statuses() {
    let up = Upstream::start("u").await;
    // a port nobody listens on: bind, read the port, close
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // a listener whose accept queue is full and never drained: connects hang
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let hang = socket.listen(0).unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(hang_addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let cfg = format!(
        r#"
http:
  serversTransports:
    quick: {{forwardingTimeouts: {{dialTimeout: 300ms, responseHeaderTimeout: 300ms}}}}
  services:
    ok: {{loadBalancer: {{serversTransport: quick, servers: [{{url: "{u}"}}]}}}}
    refused: {{loadBalancer: {{servers: [{{url: "http://{closed}"}}]}}}}
    hang: {{loadBalancer: {{serversTransport: quick, servers: [{{url: "http://{hang_addr}"}}]}}}}
    empty: {{loadBalancer: {{servers: []}}}}
  routers:
    ok: {{rule: "Host(`ok.test`)", service: ok}}
    refused: {{rule: "Host(`refused.test`)", service: refused}}
    hang: {{rule: "Host(`hang.test`)", service: hang}}
    empty: {{rule: "Host(`empty.test`)", service: empty}}
"#,
        u = up.url()
    );
    let edge = TestEdge::start(&cfg).await;
    assert_eq!(get(edge.addr, "nothing.test", "/").await.status, 404);
    let r = get(edge.addr, "refused.test", "/").await;
    assert_eq!((r.status, r.body.as_str()), (502, "Bad Gateway\n"));
    let r = get(edge.addr, "hang.test", "/").await;
    assert_eq!(r.status, 502, "connect timeout is a 502: {r:?}");
    let r = get(edge.addr, "empty.test", "/").await;
    assert_eq!(r.status, 503);
    let r = get(edge.addr, "ok.test", "/slow/2000").await;
    assert_eq!((r.status, r.body.as_str()), (504, "Gateway Timeout\n"));
    let r = get(edge.addr, "ok.test", "/status/500").await;
    assert_eq!(
        (r.status, r.upstream().as_str()),
        (500, "u"),
        "upstream 5xx passes through"
    );
    let r = get(edge.addr, "ok.test", "/status/503").await;
    assert_eq!((r.status, r.upstream().as_str()), (503, "u"));
    let metrics = edge.admin_get("/metrics").await.body;
    assert!(
        metrics.contains(&format!(
            "zeitwork_upstream_connect_errors_total{{backend=\"http://{closed}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "zeitwork_upstream_timeouts_total{{backend=\"http://{}\"}} 1",
            up.addr
        )),
        "{metrics}"
    );
    drop(fillers);
    edge.shutdown().await;
}

#[tokio::test]
async fn forwarding_headers_and_hop_by_hop() {
    let up = Upstream::start("u").await;
    let cfg = one_route("Host(`fw.test`)", &up.url());
    let edge = TestEdge::start(&cfg).await;
    let mut c = Client::h1(edge.addr).await.unwrap();
    let r = c
        .send(
            req("fw.test", "/p?q=1")
                .header("x-forwarded-for", "6.6.6.6")
                .header("x-request-id", "trace-123")
                .header("connection", "x-secret")
                .header("x-secret", "hop")
                .header("proxy-authorization", "Basic Zm9v")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let j = r.json();
    let h = &j["headers"];
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "client-sent XFF is replaced, not trusted"
    );
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "fw.test");
    assert_eq!(h["x-forwarded-port"], edge.addr.port().to_string());
    assert_eq!(h["host"], "fw.test", "passHostHeader defaults to true");
    assert_eq!(h["x-request-id"], "trace-123");
    assert!(
        h.get("x-secret").is_none() && h.get("proxy-authorization").is_none(),
        "{h}"
    );
    assert_eq!(j["path"], "/p");
    assert_eq!(j["query"], "q=1");
    assert_eq!(r.header("x-request-id"), Some("trace-123"));
    assert!(
        r.header("x-hop").is_none(),
        "response hop-by-hop headers are removed"
    );
    // a generated id when the client sends none, the same on both sides
    let r = c.get("fw.test", "/").await.unwrap();
    let id = r.header("x-request-id").unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(r.json()["headers"]["x-request-id"], id.as_str());
    edge.shutdown().await;
}

#[tokio::test]
async fn middlewares_rewrite_and_redirect() {
    let up = Upstream::start("u").await;
    let cfg = format!(
        r#"
http:
  services:
    s: {{loadBalancer: {{passHostHeader: false, servers: [{{url: "{u}"}}]}}}}
  middlewares:
    strip: {{stripPrefix: {{prefixes: ["/api"]}}}}
    add: {{addPrefix: {{prefix: "/v2"}}}}
    hdr: {{headers: {{customRequestHeaders: {{X-Added: yes, User-Agent: ""}}, customResponseHeaders: {{X-Served-By: zeitwork}}}}}}
    tohttps: {{redirectScheme: {{scheme: https, permanent: true}}}}
    moved: {{redirectRegex: {{regex: "^http://old\\.test/(.*)", replacement: "http://new.test/${{1}}"}}}}
  routers:
    api: {{rule: "Host(`mw.test`)", service: s, middlewares: [strip, add, hdr]}}
    secure: {{rule: "Host(`secure.test`)", service: s, middlewares: [tohttps]}}
    old: {{rule: "Host(`old.test`)", service: s, middlewares: [moved]}}
"#,
        u = up.url()
    );
    let edge = TestEdge::start(&cfg).await;
    let mut c = Client::h1(edge.addr).await.unwrap();
    let r = c
        .send(
            req("mw.test", "/api/users?x=1")
                .header("user-agent", "curl")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let j = r.json();
    assert_eq!(j["path"], "/v2/users");
    assert_eq!(j["query"], "x=1");
    assert_eq!(j["headers"]["x-added"], "yes");
    assert_eq!(j["headers"]["x-forwarded-prefix"], "/api");
    assert!(
        j["headers"].get("user-agent").is_none(),
        "empty value removes the header"
    );
    assert_eq!(
        j["headers"]["host"],
        up.addr.to_string(),
        "passHostHeader: false sends the server's address"
    );
    assert_eq!(r.header("x-served-by"), Some("zeitwork"));

    let r = c.get("secure.test:8080", "/login?next=/").await.unwrap();
    assert_eq!(
        (r.status, r.header("location")),
        (301, Some("https://secure.test/login?next=/"))
    );
    let r = c
        .send(
            Request::post("/form")
                .header("host", "secure.test")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 308, "non-GET permanent redirects keep the method");
    let r = c.get("old.test", "/a/b").await.unwrap();
    assert_eq!(
        (r.status, r.header("location")),
        (302, Some("http://new.test/a/b"))
    );
    assert_eq!(up.hits(), 1, "redirects never reach the upstream");
    edge.shutdown().await;
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let up = Upstream::start("u").await;
    let cfg = one_route("PathPrefix(`/`)", &up.url());
    let edge = TestEdge::start(&cfg).await;
    for _ in 0..50 {
        // a new client connection each time: reuse must come from the upstream pool
        assert_eq!(get(edge.addr, "x", "/").await.status, 200);
    }
    let m = edge.admin_get("/metrics").await.body;
    let label = format!("backend=\"http://{}\"", up.addr);
    assert!(
        m.contains(&format!(
            "zeitwork_upstream_connections_opened_total{{{label}}} 1\n"
        )),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "zeitwork_upstream_connections_reused_total{{{label}}} 49\n"
        )),
        "{m}"
    );
    assert!(m.contains("zeitwork_requests_total{entrypoint=\"web\",router=\"r\",service=\"s\",code=\"200\"} 50"), "{m}");
    edge.shutdown().await;
}

#[tokio::test]
async fn websocket_upgrade_is_proxied() {
    let up = Upstream::start("ws").await;
    let cfg = one_route("Path(`/ws`)", &up.url());
    let edge = TestEdge::start(&cfg).await;
    let mut s = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"hello through the edge"[..], b"second frame"] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, msg);
    }
    edge.shutdown().await;
}

#[tokio::test]
async fn http2_downstream_and_h2c_upstream() {
    let up = Upstream::start("h2").await;
    let cfg = format!(
        "http:\n  services:\n    h1: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n    h2: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n  routers:\n    a: {{rule: \"Host(`h1.test`)\", service: h1}}\n    b: {{rule: \"Host(`h2.test`)\", service: h2}}\n",
        up.url(),
        up.h2c_url()
    );
    let edge = TestEdge::start(&cfg).await;
    let mut c = Client::h2(edge.addr).await.unwrap();
    let r = c.get("h1.test", "/x").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["version"],
        "HTTP/1.1",
        "h2 client, HTTP/1.1 upstream"
    );
    assert_eq!(r.json()["headers"]["host"], "h1.test");
    let r = c.get("h2.test", "/y").await.unwrap();
    assert_eq!(r.json()["version"], "HTTP/2.0", "h2c upstream");
    // concurrent streams on one client connection
    let mut tasks = Vec::new();
    for i in 0..20 {
        let Client::H2(tx) = &c else { unreachable!() };
        let mut tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let r = tx
                .send_request(
                    Request::get(format!("http://h2.test/slow/{}", 10 + i))
                        .body(empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            r.status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    edge.shutdown().await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests() {
    let up = Upstream::start("u").await;
    let cfg = one_route("PathPrefix(`/`)", &up.url());
    let mut edge = TestEdge::start(&cfg).await;
    let addr = edge.addr;
    let slow = tokio::spawn(async move { get(addr, "x", "/slow/500").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopped = edge.begin_shutdown();
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request completes");
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn access_log_has_one_json_line_per_request() {
    let up = Upstream::start("u").await;
    let cfg = one_route("Host(`log.test`)", &up.url());
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("access.log");
    let edge = zw_edge::testkit::TestEdge::start_with_access_log(&cfg, &log_path).await;
    let mut c = Client::h1(edge.addr).await.unwrap();
    let ok = c
        .send(
            req("log.test", "/hello?q=1")
                .header("x-request-id", "req-1")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(c.get("nowhere.test", "/x").await.unwrap().status, 404);
    let mut lines = Vec::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        lines = std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        if lines.len() >= 2 {
            break;
        }
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["request_id"], "req-1");
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert_eq!(
        (
            first["method"].as_str(),
            first["host"].as_str(),
            first["path"].as_str()
        ),
        (Some("GET"), Some("log.test"), Some("/hello"))
    );
    assert_eq!(
        (
            first["status"].as_u64(),
            first["router"].as_str(),
            first["service"].as_str()
        ),
        (Some(200), Some("r"), Some("s"))
    );
    assert_eq!(first["upstream"], up.addr.to_string());
    assert_eq!(
        first["bytes"].as_u64(),
        Some(ok.body.len() as u64),
        "bytes sent to the client"
    );
    assert!(first["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    let second: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(
        (second["status"].as_u64(), second["router"].is_null()),
        (Some(404), true)
    );
    edge.shutdown().await;
}

#[tokio::test]
async fn request_and_response_bodies_stream_through() {
    let up = Upstream::start("u").await;
    let cfg = one_route("PathPrefix(`/`)", &up.url());
    let edge = TestEdge::start(&cfg).await;
    let mut c = Client::h1(edge.addr).await.unwrap();
    // 1 MiB request body with a content length
    // printable ASCII, so that the test client's text view of the body is byte-exact
    let body: Vec<u8> = (0..1 << 20).map(|i: u32| b'!' + (i % 94) as u8).collect();
    let r = c
        .send(
            Request::post("/echo")
                .header("host", "b.test")
                .body(Full::new(Bytes::from(body.clone())))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len());
    assert!(
        r.body.as_bytes() == body.as_slice(),
        "body changed in transit"
    );
    // 5 MiB response body
    let r = c.get("b.test", "/bytes/5242880").await.unwrap();
    assert_eq!(r.body.len(), 5 << 20);
    assert!(r.body.starts_with("0123456789012"));
    // the same connection keeps working afterwards (and the upstream one was pooled)
    assert_eq!(c.get("b.test", "/").await.unwrap().status, 200);
    // a chunked request body (no content length), over a raw socket
    let mut s = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: b.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("hello world"), "{text}");
    // HEAD: headers only, and the pooled connection stays usable
    let r = c
        .send(
            Request::head("/bytes/100")
                .header("host", "b.test")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(
        c.get("b.test", "/bytes/10").await.unwrap().body,
        "0123456789"
    );
    let m = edge.admin_get("/metrics").await.body;
    assert!(
        m.contains(&format!(
            "zeitwork_upstream_connections_opened_total{{backend=\"http://{}\"}} 1\n",
            up.addr
        )) || m.contains(&format!(
            "zeitwork_upstream_connections_opened_total{{backend=\"http://{}\"}} 2\n",
            up.addr
        )),
        "{m}"
    );
    edge.shutdown().await;
}

#[tokio::test]
async fn weighted_services_split_traffic_and_skip_a_child_with_no_healthy_server() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let cfg = format!(
        r#"
http:
  services:
    blue: {{loadBalancer: {{servers: [{{url: "{}"}}], healthCheck: {{path: /health, interval: 50ms, timeout: 500ms}}}}}}
    green: {{loadBalancer: {{servers: [{{url: "{}"}}]}}}}
    canary: {{weighted: {{services: [{{name: blue, weight: 3}}, {{name: green@file, weight: 1}}]}}}}
  routers:
    r: {{rule: "PathPrefix(`/`)", service: canary}}
"#,
        a.url(),
        b.url()
    );
    let edge = TestEdge::start(&cfg).await;
    let mut c = Client::h1(edge.addr).await.unwrap();
    let mut seen = HashMap::new();
    for _ in 0..400 {
        *seen
            .entry(c.get("w.test", "/").await.unwrap().upstream())
            .or_insert(0) += 1;
    }
    assert_eq!((seen["a"], seen["b"]), (300, 100), "{seen:?}");
    a.set_healthy(false);
    let mut all_green = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut only_b = true;
        for _ in 0..8 {
            only_b &= c.get("w.test", "/").await.unwrap().upstream() == "b";
        }
        if only_b {
            all_green = true;
            break;
        }
    }
    assert!(
        all_green,
        "with blue's only server down, green takes everything"
    );
    edge.shutdown().await;
}

#[tokio::test]
async fn hrw_on_a_cookie_keeps_a_session_on_one_server() {
    let servers = hrw_stickiness(
        "{cookie: session}",
        "cookie",
        |u| format!("theme=dark; session=s{u}"),
        30,
    )
    .await;
    assert_eq!(servers.len(), 3, "30 sessions use all three servers");
}

#[tokio::test]
async fn routers_listen_only_on_their_entry_points() {
    let up = Upstream::start("u").await;
    let cfg = format!(
        "http:\n  services:\n    s: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n  routers:\n    secure: {{rule: \"Host(`e.test`)\", service: s, entryPoints: [websecure]}}\n    plain: {{rule: \"Host(`e.test`) && Path(`/plain`)\", service: s, entryPoints: [web]}}\n",
        up.url()
    );
    let edge = TestEdge::start(&cfg).await;
    assert_eq!(
        get(edge.addr, "e.test", "/").await.status,
        404,
        "websecure router is not on web"
    );
    assert_eq!(get(edge.addr, "e.test", "/plain").await.status, 200);
    edge.shutdown().await;
}

/// A middleware's response side runs on whatever answers after it: the upstream, the
/// edge's own 502, 503 and 504, and a redirect by a middleware later in the chain — not
/// one earlier in the chain, which answers before it runs. That is Traefik's chain: each
/// middleware wraps the handler after it (`pkg/middlewares/headers` modifies the response
/// through its `ResponseWriter` whoever writes it).
#[tokio::test]
async fn a_middlewares_response_headers_reach_every_answer_after_it() {
    let up = Upstream::start("u").await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cfg = format!(
        r#"
http:
  serversTransports:
    quick: {{forwardingTimeouts: {{responseHeaderTimeout: 300ms}}}}
  services:
    ok: {{loadBalancer: {{servers: [{{url: "{u}"}}]}}}}
    refused: {{loadBalancer: {{servers: [{{url: "http://{closed}"}}]}}}}
    slow: {{loadBalancer: {{serversTransport: quick, servers: [{{url: "{u}/slow/3000", preservePath: true}}]}}}}
    empty: {{loadBalancer: {{servers: []}}}}
  middlewares:
    hdr: {{headers: {{customResponseHeaders: {{X-Served-By: zeitwork}}}}}}
    tohttps: {{redirectScheme: {{scheme: https}}}}
  routers:
    ok: {{rule: "Host(`ok.test`)", service: ok, middlewares: [hdr]}}
    refused: {{rule: "Host(`refused.test`)", service: refused, middlewares: [hdr]}}
    slow: {{rule: "Host(`slow.test`)", service: slow, middlewares: [hdr]}}
    empty: {{rule: "Host(`empty.test`)", service: empty, middlewares: [hdr]}}
    after: {{rule: "Host(`after.test`)", service: ok, middlewares: [hdr, tohttps]}}
    before: {{rule: "Host(`before.test`)", service: ok, middlewares: [tohttps, hdr]}}
"#,
        u = up.url()
    );
    let edge = TestEdge::start(&cfg).await;
    for (host, status, header) in [
        ("ok.test", 200, Some("zeitwork")),
        ("refused.test", 502, Some("zeitwork")),
        ("slow.test", 504, Some("zeitwork")),
        ("empty.test", 503, Some("zeitwork")),
        ("after.test", 302, Some("zeitwork")),
        ("before.test", 302, None),
        // no router, no middleware
        ("nothing.test", 404, None),
    ] {
        let r = get(edge.addr, host, "/").await;
        assert_eq!(
            (r.status, r.header("x-served-by")),
            (status, header),
            "{host}"
        );
        // and every answer the edge writes itself still says what it is
        if status != 200 && status != 302 {
            assert_eq!(
                r.header("x-content-type-options"),
                Some("nosniff"),
                "{host}"
            );
        }
    }
    edge.shutdown().await;
}

/// With `hrw`, a key whose server cannot be reached goes where it would go if that
/// server were not configured at all: the balancer's own next choice (the key's
/// next-highest score), not simply the server listed after it.
#[tokio::test]
async fn hrw_fails_over_as_if_the_dead_server_were_gone() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let svc = |servers: &str| {
        format!(
            "http:\n  services:\n    s: {{loadBalancer: {{strategy: hrw, hashKey: {{header: X-User}}, servers: [{servers}]}}}}\n  routers:\n    r: {{rule: \"PathPrefix(`/`)\", service: s}}\n"
        )
    };
    let live = format!("{{url: \"{}\"}}, {{url: \"{}\"}}", a.url(), b.url());
    let with_dead = TestEdge::start(&svc(&format!("{live}, {{url: \"http://{closed}\"}}"))).await;
    let without = TestEdge::start(&svc(&live)).await;
    let upstream = |edge: std::net::SocketAddr, user: String| async move {
        let mut c = Client::h1(edge).await.unwrap();
        let r = c
            .send(
                req("lb.test", "/")
                    .header("x-user", user)
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        r.header("x-upstream").unwrap_or_default().to_string()
    };
    let mut moved_to = std::collections::BTreeSet::new();
    for u in 0..60 {
        let there = upstream(with_dead.addr, format!("u{u}")).await;
        let alone = upstream(without.addr, format!("u{u}")).await;
        assert_eq!(there, alone, "user u{u}");
        moved_to.insert(there);
    }
    assert_eq!(moved_to.len(), 2, "{moved_to:?}");
    with_dead.shutdown().await;
    without.shutdown().await;
}
