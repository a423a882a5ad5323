//! Access-control middlewares over real sockets: `rateLimit` and `ipAllowList`, each
//! client from its own loopback address. Semantics: Traefik's
//! `pkg/middlewares/ratelimiter` (`rate_limiter_test.go`: burst then average, 429 with
//! `Retry-After`, the client address as the default source) and
//! `pkg/middlewares/ipallowlist` (`ip_allowlist_test.go`: 403 outside `sourceRange`).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zw_edge::testkit::{TestEdge, Upstream};

/// One HTTP/1.1 `GET /` from `from` (a loopback address) to the edge; the status and the
/// response head, lowercased.
async fn get_from(edge: SocketAddr, from: [u8; 4], headers: &str) -> (u16, String) {
    send(edge, from, "GET", headers).await
}

/// One HTTP/1.1 request from 127.0.0.1.
async fn request(edge: SocketAddr, method: &str, headers: &str) -> (u16, String) {
    send(edge, [127, 0, 0, 1], method, headers).await
}

async fn send(edge: SocketAddr, from: [u8; 4], method: &str, headers: &str) -> (u16, String) {
    let text = exchange(edge, from, method, ("a.test", "/"), headers).await;
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    (status_of(&text), head)
}

/// One HTTP/1.1 request for `host` and `path` from `from`, `Connection: close`; the
/// whole response.
async fn exchange(
    edge: SocketAddr,
    from: [u8; 4],
    method: &str,
    (host, path): (&str, &str),
    headers: &str,
) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let mut s = socket.connect(edge).await.unwrap();
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n{headers}\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf).to_string()
}

fn status_of(text: &str) -> u16 {
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn config(up: &Upstream, middleware: &str) -> String {
    format!(
        "http:\n  routers:\n    r: {{rule: \"Host(`a.test`)\", service: s, middlewares: [m]}}\n  services:\n    s: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n  middlewares:\n    m:\n{middleware}",
        up.url()
    )
}

#[tokio::test]
async fn a_rate_limit_admits_the_burst_per_client_then_answers_429_with_retry_after() {
    let up = Upstream::start("u").await;
    // 5 a minute: the burst is all a test run sees of it, whatever the machine's speed.
    let limit = "      rateLimit: {average: 5, period: 1m, burst: 5}\n";
    let edge = TestEdge::start(&config(&up, limit)).await;
    let mut statuses = Vec::new();
    let mut retry = String::new();
    for _ in 0..8 {
        let (status, head) = get_from(edge.addr, [127, 0, 0, 1], "").await;
        if status == 429 {
            retry = head;
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    let after: u64 = retry
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        (1..=12).contains(&after),
        "a token comes every 12 s: {retry}"
    );

    // Another client has its own bucket; a forged X-Forwarded-For changes nothing.
    assert_eq!(get_from(edge.addr, [127, 0, 0, 2], "").await.0, 200);
    assert_eq!(
        get_from(edge.addr, [127, 0, 0, 1], "x-forwarded-for: 10.9.9.9\r\n")
            .await
            .0,
        429
    );

    // A reload that leaves the limit as it was keeps the buckets; one that changes it
    // starts afresh.
    let v = edge.edge.status().version;
    edge.write_config(&config(&up, limit).replace("service: s,", "service: s, priority: 5,"));
    edge.wait_version_above(v).await;
    assert_eq!(get_from(edge.addr, [127, 0, 0, 1], "").await.0, 429);
    let v = edge.edge.status().version;
    edge.write_config(&config(&up, &limit.replace("burst: 5", "burst: 6")));
    edge.wait_version_above(v).await;
    assert_eq!(get_from(edge.addr, [127, 0, 0, 1], "").await.0, 200);

    let metrics = edge.admin_get("/metrics").await.body;
    // After the change only the one client asked again.
    assert!(
        metrics.contains("zeitwork_ratelimit_sources{middleware=\"m\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("zeitwork_ratelimit_evictions_total{middleware=\"m\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_rate_limit_by_header_counts_each_value_apart() {
    let up = Upstream::start("u").await;
    let limit = "      rateLimit:\n        average: 1\n        period: 1m\n        sourceCriterion: {requestHeaderName: X-User}\n";
    let edge = TestEdge::start(&config(&up, limit)).await;
    assert_eq!(
        get_from(edge.addr, [127, 0, 0, 1], "x-user: ann\r\n")
            .await
            .0,
        200
    );
    assert_eq!(
        get_from(edge.addr, [127, 0, 0, 1], "x-user: ann\r\n")
            .await
            .0,
        429
    );
    assert_eq!(
        get_from(edge.addr, [127, 0, 0, 1], "x-user: bob\r\n")
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn an_allow_list_admits_its_ranges_only() {
    let up = Upstream::start("u").await;
    let edge = TestEdge::start(&config(
        &up,
        "      ipAllowList: {sourceRange: [127.0.0.2/32, 10.0.0.0/8]}\n",
    ))
    .await;
    assert_eq!(get_from(edge.addr, [127, 0, 0, 2], "").await.0, 200);
    assert_eq!(get_from(edge.addr, [127, 0, 0, 1], "").await.0, 403);
    // X-Forwarded-For from the client is not believed.
    assert_eq!(
        get_from(edge.addr, [127, 0, 0, 1], "x-forwarded-for: 10.1.2.3\r\n")
            .await
            .0,
        403
    );

    // Traefik's older name, and another status.
    let edge = TestEdge::start(&config(
        &up,
        "      ipWhiteList: {sourceRange: [127.0.0.2], rejectStatusCode: 404}\n",
    ))
    .await;
    assert_eq!(get_from(edge.addr, [127, 0, 0, 3], "").await.0, 404);
    assert_eq!(get_from(edge.addr, [127, 0, 0, 2], "").await.0, 200);
}

/// Traefik's `inflightreq_test.go`: over `amount` requests at once, 429; a request counts
/// until its response is done.
#[tokio::test]
async fn in_flight_requests_are_capped_per_host_until_their_responses_end() {
    let up = Upstream::start("u").await;
    let edge = TestEdge::start(&config(&up, "      inFlightReq: {amount: 2}\n")).await;
    let slow = |addr: SocketAddr| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /slow/700 HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf)
            .split(' ')
            .nth(1)
            .unwrap_or("")
            .to_string()
    };
    let (a, b) = (tokio::spawn(slow(edge.addr)), tokio::spawn(slow(edge.addr)));
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    assert_eq!(
        get_from(edge.addr, [127, 0, 0, 1], "").await.0,
        429,
        "a third at once"
    );
    assert_eq!(
        (a.await.unwrap(), b.await.unwrap()),
        ("200".into(), "200".into())
    );
    assert_eq!(
        get_from(edge.addr, [127, 0, 0, 1], "").await.0,
        200,
        "counted down when done"
    );
}

/// Traefik's `header_test.go` (`TestNewHeader_CORSPreflights`, `TestNewHeader_CORSResponses`)
/// and the security headers of `secure_test.go`.
#[tokio::test]
async fn cors_preflights_are_answered_and_responses_carry_cors_and_security_headers() {
    let up = Upstream::start("u").await;
    let m = "      headers:\n        accessControlAllowMethods: [GET, OPTIONS, PUT]\n        accessControlAllowHeaders: [origin, X-Requested-With]\n        accessControlAllowOriginList: [https://foo.bar.org]\n        accessControlAllowOriginListRegex: [\"^https://([a-z]+)\\\\.bar\\\\.org$\"]\n        accessControlMaxAge: 600\n        accessControlExposeHeaders: [X-Custom]\n        accessControlAllowCredentials: true\n        addVaryHeader: true\n        frameDeny: true\n        contentTypeNosniff: true\n        browserXssFilter: true\n        contentSecurityPolicy: \"default-src 'self'\"\n        referrerPolicy: same-origin\n        stsSeconds: 31536000\n        stsIncludeSubdomains: true\n        stsPreload: true\n";
    let edge = TestEdge::start(&config(&up, m)).await;

    let (status, head) = request(
        edge.addr,
        "OPTIONS",
        "origin: https://foo.bar.org\r\naccess-control-request-method: GET\r\n",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    for want in [
        "access-control-allow-origin: https://foo.bar.org",
        "access-control-allow-methods: GET,OPTIONS,PUT",
        "access-control-allow-headers: origin,X-Requested-With",
        "access-control-allow-credentials: true",
        "access-control-max-age: 600",
    ] {
        assert!(
            head.contains(&want.to_ascii_lowercase()),
            "preflight lacks {want}: {head}"
        );
    }
    assert!(
        !head.contains("x-upstream"),
        "a preflight does not reach the upstream"
    );

    // An origin matching the regex is echoed; an unlisted one gets no Allow-Origin.
    let (status, head) = request(edge.addr, "GET", "origin: https://baz.bar.org\r\n").await;
    assert_eq!(status, 200);
    for want in [
        "access-control-allow-origin: https://baz.bar.org",
        "access-control-expose-headers: x-custom",
        "vary: origin",
        "x-frame-options: deny",
        "x-content-type-options: nosniff",
        "x-xss-protection: 1; mode=block",
        "content-security-policy: default-src 'self'",
        "referrer-policy: same-origin",
    ] {
        assert!(head.contains(want), "lacks {want}: {head}");
    }
    assert!(
        !head.contains("strict-transport-security"),
        "no HSTS over plain HTTP: {head}"
    );
    let (_, head) = request(edge.addr, "GET", "origin: https://evil.example\r\n").await;
    assert!(!head.contains("access-control-allow-origin"), "{head}");

    // forceSTSHeader puts HSTS on plain HTTP too.
    let edge = TestEdge::start(&config(
        &up,
        "      headers: {stsSeconds: 60, forceSTSHeader: true}\n",
    ))
    .await;
    let (_, head) = request(edge.addr, "GET", "").await;
    assert!(
        head.contains("strict-transport-security: max-age=60"),
        "{head}"
    );
}

/// The host check and the proxy-aware security headers of unrolled/secure, which Traefik's
/// `headers` middleware hands `allowedHosts`, `hostsProxyHeaders`, `sslProxyHeaders` and
/// `publicKey` to (`secure_test.go`: `TestBadSingleHost` — 500; `TestGoodSingleHostWith
/// ProxyHeaders`; `TestSTSHeaderWithSSLProxyHeaders`; `TestHPKP`; `TestBadHostWithDevelopment
/// Mode`-style: development mode lets any host through).
#[tokio::test]
async fn allowed_hosts_refuse_other_hosts_and_ssl_proxy_headers_mark_requests_secure() {
    let up = Upstream::start("u").await;
    let m = "      headers:\n        allowedHosts: [A.test, front.test]\n        hostsProxyHeaders: [X-Original-Host]\n        sslProxyHeaders: {X-Forwarded-Proto: https, X-Front-Tls: \"on\"}\n        stsSeconds: 60\n        publicKey: 'pin-sha256=\"abc\"; max-age=5'\n        frameDeny: true\n";
    let edge = TestEdge::start(&config(&up, m)).await;

    // The Host header names an allowed host (case aside): through, no HSTS over plain HTTP.
    let (status, head) = request(edge.addr, "GET", "").await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("x-frame-options: deny"), "{head}");
    assert!(!head.contains("strict-transport-security"), "{head}");
    assert!(!head.contains("public-key-pins"), "{head}");

    // A proxy in front says the client used TLS: HSTS and the key pins go on.
    let (status, head) = request(edge.addr, "GET", "x-front-tls: on\r\n").await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("strict-transport-security: max-age=60"),
        "{head}"
    );
    assert!(
        head.contains("public-key-pins: pin-sha256=\"abc\"; max-age=5"),
        "{head}"
    );
    // Another value of the header is no proof; nor is an X-Forwarded-Proto from a client
    // the entry point does not trust (dropped on arrival, before any middleware).
    for h in ["x-front-tls: off\r\n", "x-forwarded-proto: https\r\n"] {
        let (_, head) = request(edge.addr, "GET", h).await;
        assert!(!head.contains("strict-transport-security"), "{h}: {head}");
    }

    // The first non-empty proxy header names the host in place of Host.
    let text = exchange(
        edge.addr,
        [127, 0, 0, 1],
        "GET",
        ("a.test", "/"),
        "x-original-host: evil.test\r\n",
    )
    .await;
    assert_eq!(status_of(&text), 500, "{text}");
    assert!(text.ends_with("Bad Host\n"), "{text}");
    assert!(
        !text.contains("x-upstream"),
        "a bad host never reaches the upstream"
    );
    let (status, head) = request(edge.addr, "GET", "x-original-host: front.test\r\n").await;
    assert_eq!(status, 200, "{head}");
    // The port is part of the host, as in Go's r.Host.
    let text = exchange(edge.addr, [127, 0, 0, 1], "GET", ("a.test:80", "/"), "").await;
    assert_eq!(status_of(&text), 500, "{text}");

    // Development mode turns the host check, HSTS and the pins off.
    let dev = format!("{m}        isDevelopment: true\n");
    let edge = TestEdge::start(&config(&up, &dev)).await;
    let (status, head) = request(
        edge.addr,
        "GET",
        "x-original-host: evil.test\r\nx-front-tls: on\r\n",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert!(!head.contains("strict-transport-security"), "{head}");
    assert!(!head.contains("public-key-pins"), "{head}");
}

/// `chain` (Traefik's docs, `middlewares/http/chain`): a router naming a chain runs its
/// members in order, a chain inside a chain included — here an allow list that admits
/// loopback, then a header, then a rate limit of one request a minute.
#[tokio::test]
async fn a_chain_runs_its_members_in_order_and_may_hold_chains() {
    let up = Upstream::start("u").await;
    let cfg = format!(
        "http:\n  routers:\n    r: {{rule: \"Host(`a.test`)\", service: s, middlewares: [m]}}\n  services:\n    s: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n  middlewares:\n    m:\n      chain: {{middlewares: [local, inner]}}\n    inner:\n      chain: {{middlewares: [tag, once]}}\n    local:\n      ipAllowList: {{sourceRange: [127.0.0.0/8]}}\n    tag:\n      headers: {{customResponseHeaders: {{X-Chained: \"yes\"}}}}\n    once:\n      rateLimit: {{average: 1, period: 1m, burst: 1}}\n",
        up.url()
    );
    let edge = TestEdge::start(&cfg).await;
    let (first, head) = request(edge.addr, "GET", "").await;
    assert_eq!(first, 200, "{head}");
    assert!(head.contains("x-chained: yes"), "{head}");
    let (second, head) = request(edge.addr, "GET", "").await;
    assert_eq!(second, 429, "the chain's rate limit ran: {head}");
    // the header middleware came before the limit in the chain, so its response header
    // is on the 429 too (response side runs for every middleware that ran)
    assert!(head.contains("x-chained: yes"), "{head}");
}

/// A chain that contains itself, or names a middleware that does not exist, is a
/// validation error at the member's path (Traefik: "recursion detected").
#[test]
fn chains_that_loop_or_name_nothing_are_refused() {
    let text = "http:\n  middlewares:\n    a:\n      chain: {middlewares: [b]}\n    b:\n      chain: {middlewares: [a, nope]}\n";
    let config = zw_config::parse_str(text, zw_config::Format::Yaml).unwrap();
    let err = zw_config::validate(config, &zw_config::Limits::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("http.middlewares.b.chain.middlewares[0]: \"a\" leads back"),
        "{err}"
    );
    assert!(
        err.contains("http.middlewares.b.chain.middlewares[1]: unknown middleware \"nope\""),
        "{err}"
    );
}

/// `forwardedHeaders.trustedIPs` and `ipStrategy` (Traefik's `forwardedheaders_test.go`
/// and `ip/strategy_test.go`): a trusted client's X-Forwarded-For is kept (the client's
/// address appended on the way upstream) and `depth` reads it; an untrusted client's is
/// dropped on arrival, so `depth` finds no address — the allow list refuses it and the
/// upstream sees only the edge's own X-Forwarded-For. `excludedIPs` takes the rightmost
/// address outside them.
#[tokio::test]
async fn trusted_forwarded_headers_feed_the_ip_strategy_and_others_are_dropped() {
    let up = Upstream::start("u").await;
    let cfg = format!(
        "http:\n  routers:\n    r: {{rule: \"Host(`a.test`)\", service: s, middlewares: [only-office]}}\n    x: {{rule: \"Host(`x.test`)\", service: s, middlewares: [skip-cdn]}}\n  services:\n    s: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n  middlewares:\n    only-office:\n      ipAllowList: {{sourceRange: [203.0.113.0/24], ipStrategy: {{depth: 1}}}}\n    skip-cdn:\n      ipAllowList: {{sourceRange: [198.51.100.7], ipStrategy: {{excludedIPs: [192.0.2.0/24]}}}}\n",
        up.url()
    );
    // 127.0.0.2 is the proxy in front (trusted); 127.0.0.3 is anyone.
    let builder = zw_edge::Edge::builder(vec!["web".into()])
        .forwarded_headers(
            "web",
            zw_config::ForwardedTrust::Networks(vec!["127.0.0.2/32".parse().unwrap()]),
        )
        .unwrap();
    let edge = TestEdge::start_built(&cfg, std::time::Duration::from_secs(5), builder).await;
    let xff = "x-forwarded-for: 10.0.0.9, 203.0.113.5\r\n";

    let (status, head) = get_from(edge.addr, [127, 0, 0, 2], xff).await;
    assert_eq!(status, 200, "depth 1 is the office address: {head}");
    let (status, _) = get_from(edge.addr, [127, 0, 0, 3], xff).await;
    assert_eq!(status, 403, "from an untrusted client the header is gone");

    // What the upstream sees: the trusted chain with the client appended, or only the client.
    let seen_xff = |head: &str| -> String {
        let body = head.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["headers"]["x-forwarded-for"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let cfg_plain = format!(
        "http:\n  routers:\n    r: {{rule: \"Host(`a.test`)\", service: s}}\n  services:\n    s: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n",
        up.url()
    );
    let builder = zw_edge::Edge::builder(vec!["web".into()])
        .forwarded_headers(
            "web",
            zw_config::ForwardedTrust::Networks(vec!["127.0.0.2/32".parse().unwrap()]),
        )
        .unwrap();
    let plain = TestEdge::start_built(&cfg_plain, std::time::Duration::from_secs(5), builder).await;
    let raw = raw_get(plain.addr, [127, 0, 0, 2], "a.test", xff).await;
    assert_eq!(seen_xff(&raw), "10.0.0.9, 203.0.113.5, 127.0.0.2");
    let raw = raw_get(plain.addr, [127, 0, 0, 3], "a.test", xff).await;
    assert_eq!(seen_xff(&raw), "127.0.0.3");

    // excludedIPs: the rightmost address outside 192.0.2.0/24
    let (status, head) = raw_status(
        edge.addr,
        [127, 0, 0, 2],
        "x.test",
        "x-forwarded-for: 198.51.100.7, 192.0.2.1, 192.0.2.2\r\n",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    let (status, _) = raw_status(
        edge.addr,
        [127, 0, 0, 2],
        "x.test",
        "x-forwarded-for: 198.51.100.8, 192.0.2.1\r\n",
    )
    .await;
    assert_eq!(status, 403);
}

/// A GET for `host` from `from`; the whole response as text.
async fn raw_get(edge: SocketAddr, from: [u8; 4], host: &str, headers: &str) -> String {
    exchange(edge, from, "GET", (host, "/"), headers).await
}

async fn raw_status(edge: SocketAddr, from: [u8; 4], host: &str, headers: &str) -> (u16, String) {
    let text = raw_get(edge, from, host, headers).await;
    (status_of(&text), text)
}

/// `encodedCharacters` over a socket: the path reaches the middleware as the client wrote
/// it, so `%2F` is refused (400) and allowed where the config says so.
#[tokio::test]
async fn encoded_characters_in_the_path_are_refused_unless_allowed() {
    let up = Upstream::start("u").await;
    let cfg = format!(
        "http:\n  routers:\n    r: {{rule: \"Host(`a.test`)\", service: s, middlewares: [strict]}}\n    x: {{rule: \"Host(`x.test`)\", service: s, middlewares: [slashes]}}\n  services:\n    s: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n  middlewares:\n    strict:\n      encodedCharacters: {{}}\n    slashes:\n      encodedCharacters: {{allowEncodedSlash: true}}\n",
        up.url()
    );
    let edge = TestEdge::start(&cfg).await;
    let get = |host: &'static str, path: &'static str| {
        let addr = edge.addr;
        async move {
            let text = exchange(addr, [127, 0, 0, 1], "GET", (host, path), "").await;
            status_of(&text)
        }
    };
    assert_eq!(get("a.test", "/files/a%2Fb").await, 400);
    assert_eq!(get("a.test", "/q%3Fx").await, 400);
    assert_eq!(get("a.test", "/caf%C3%A9").await, 200);
    assert_eq!(
        get("x.test", "/files/a%2Fb").await,
        200,
        "allowEncodedSlash"
    );
    assert_eq!(get("x.test", "/q%3Fx").await, 400);
}

/// `errors` (Traefik's `custom_errors_test.go`): an upstream answer in the ranges gets the
/// error service's page at `query` — `{status}` and `{url}` filled in — with the
/// original status; other answers pass untouched; a rate limit after the middleware
/// that answers 429 is caught too, one before it is not; the edge's own 503 (no server
/// up) gets the page as well.
#[tokio::test]
async fn errors_serve_the_error_service_page_with_the_original_status() {
    let app = Upstream::start("app").await;
    let pages = Upstream::start("pages").await;
    let cfg = format!(
        "http:\n  routers:\n    r: {{rule: \"Host(`a.test`)\", service: app, middlewares: [oops, once]}}\n    d: {{rule: \"Host(`down.test`)\", service: gone, middlewares: [oops]}}\n    w: {{rule: \"Host(`rw.test`)\", service: app, middlewares: [rewrite]}}\n  services:\n    app: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n    pages: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n    gone: {{loadBalancer: {{servers: []}}}}\n  middlewares:\n    oops:\n      errors: {{status: [\"500-599\", \"404,429\"], service: pages, query: \"/{{status}}.html?from={{url}}\"}}\n    once:\n      rateLimit: {{average: 1, period: 1m, burst: 2}}\n    rewrite:\n      errors: {{status: [\"500-599\"], service: pages, query: \"/{{status}}-{{originalStatus}}.html\", statusRewrites: {{\"502-504\": 500}}}}\n",
        app.url(),
        pages.url()
    );
    let edge = TestEdge::start(&cfg).await;
    let get = |host: &'static str, path: &'static str| {
        let addr = edge.addr;
        async move { exchange(addr, [127, 0, 0, 1], "GET", (host, path), "").await }
    };
    let page = get("a.test", "/status/503").await;
    assert_eq!(status_of(&page), 503, "the original status: {page}");
    assert!(
        page.to_ascii_lowercase().contains("x-upstream: pages"),
        "{page}"
    );
    assert!(page.contains("\"path\":\"/503.html\""), "{page}");
    assert!(
        page.contains("from=%2Fstatus%2F503"),
        "{{url}} is the request's, escaped: {page}"
    );
    // the second request uses the last token; an answer outside the ranges is untouched
    let ok = get("a.test", "/fine").await;
    assert_eq!(status_of(&ok), 200);
    assert!(ok.to_ascii_lowercase().contains("x-upstream: app"), "{ok}");
    // the rate limit comes after `oops`: its 429 gets the page
    let limited = get("a.test", "/").await;
    assert_eq!(status_of(&limited), 429, "{limited}");
    assert!(limited.contains("\"path\":\"/429.html\""), "{limited}");
    // statusRewrites: 503 goes out as 500, and the page is asked for both
    let rw = get("rw.test", "/status/503").await;
    assert_eq!(status_of(&rw), 500, "{rw}");
    assert!(rw.contains("\"path\":\"/500-503.html\""), "{rw}");
    // no server up: the edge's own 503 gets the page too
    let down = get("down.test", "/x").await;
    assert_eq!(status_of(&down), 503, "{down}");
    assert!(down.contains("\"path\":\"/503.html\""), "{down}");
}
