//! Loading Traefik file-provider configurations and validating them.

use std::fs;

use zw_config::{
    load_path, parse_str, validate, Format, Limits, Strategy, UpstreamScheme, UpstreamUrl,
};

const YAML: &str = r#"
http:
  routers:
    api:
      rule: "Host(`api.example.com`) && PathPrefix(`/v1`)"
      service: api
      middlewares: [strip, hdrs@file]
      entryPoints: [web]
    catchall:
      fallback: true
      service: tier3
  services:
    api:
      loadBalancer:
        strategy: p2c
        servers:
          - url: http://127.0.0.1:8081
            weight: 3
          - url: h2c://127.0.0.1:8082
        healthCheck:
          path: /health
          interval: 10s
          timeout: 2s
    tier3:
      loadBalancer:
        servers:
          - url: http://127.0.0.1:9000
  middlewares:
    strip:
      stripPrefix:
        prefixes: ["/v1"]
    hdrs:
      headers:
        customRequestHeaders:
          X-Env: prod
"#;

const TOML: &str = r#"
[http.routers.api]
rule = "Host(`api.example.com`) && PathPrefix(`/v1`)"
service = "api"
middlewares = ["strip", "hdrs@file"]
entryPoints = ["web"]

[http.routers.catchall]
fallback = true
service = "tier3"

[http.services.api.loadBalancer]
strategy = "p2c"
[[http.services.api.loadBalancer.servers]]
url = "http://127.0.0.1:8081"
weight = 3
[[http.services.api.loadBalancer.servers]]
url = "h2c://127.0.0.1:8082"
[http.services.api.loadBalancer.healthCheck]
path = "/health"
interval = "10s"
timeout = "2s"

[[http.services.tier3.loadBalancer.servers]]
url = "http://127.0.0.1:9000"

[http.middlewares.strip.stripPrefix]
prefixes = ["/v1"]
[http.middlewares.hdrs.headers.customRequestHeaders]
X-Env = "prod"
"#;

fn errors_of(text: &str, format: Format) -> Vec<String> {
    let cfg = match parse_str(text, format) {
        Ok(c) => c,
        Err(e) => return e.0.iter().map(ToString::to_string).collect(),
    };
    match validate(cfg, &Limits::default()) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn traefik_yaml_and_toml_load_and_hash_alike() {
    let y = validate(parse_str(YAML, Format::Yaml).unwrap(), &Limits::default()).unwrap();
    let t = validate(parse_str(TOML, Format::Toml).unwrap(), &Limits::default()).unwrap();
    assert_eq!(
        y.hash, t.hash,
        "same configuration in two formats must hash alike"
    );
    assert!(y.hash.starts_with("sha256:"));
    let json = serde_json::to_string(&y.config).unwrap();
    let j = validate(parse_str(&json, Format::Json).unwrap(), &Limits::default()).unwrap();
    assert_eq!(j.hash, y.hash);
    let api = &y.config.http.services["api"];
    assert_eq!(api.load_balancer.as_ref().unwrap().strategy, Strategy::P2c);
    assert_eq!(y.rules.len(), 1, "the fallback router has no rule");
}

#[test]
fn a_change_changes_the_hash() {
    let a = validate(parse_str(YAML, Format::Yaml).unwrap(), &Limits::default()).unwrap();
    let b = validate(
        parse_str(&YAML.replace("weight: 3", "weight: 4"), Format::Yaml).unwrap(),
        &Limits::default(),
    )
    .unwrap();
    assert_ne!(a.hash, b.hash);
}

#[test]
fn errors_name_the_path() {
    let bad = YAML.replace(
        "service: api\n      middlewares",
        "service: apii\n      middlewares",
    );
    assert_eq!(
        errors_of(&bad, Format::Yaml),
        vec!["http.routers.api.service: unknown service \"apii\""]
    );
    let bad = YAML.replace("PathPrefix(`/v1`)", "pathPrefix(`/v1`)");
    let errs = errors_of(&bad, Format::Yaml);
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("http.routers.api.rule: at byte 27: unknown matcher `pathPrefix`"),
        "{errs:?}"
    );
    let bad = YAML.replace("[strip, hdrs@file]", "[strip, nope, x@docker]");
    let errs = errors_of(&bad, Format::Yaml);
    assert!(
        errs.contains(&"http.routers.api.middlewares[1]: unknown middleware \"nope\"".to_string()),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("http.routers.api.middlewares[2]: provider `@docker`")),
        "{errs:?}"
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let bad = YAML
        .replace("url: http://127.0.0.1:8081", "url: ftp://127.0.0.1:8081")
        .replace("prefixes: [\"/v1\"]", "prefixes: [\"v1\"]")
        .replace("path: /health", "path: health");
    let errs = errors_of(&bad, Format::Yaml);
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(errs.iter().any(|e| e
        .starts_with("http.services.api.loadBalancer.servers[0].url: unsupported scheme `ftp`")));
    assert!(errs
        .iter()
        .any(|e| e == "http.middlewares.strip.stripPrefix.prefixes[0]: must start with `/`"));
    assert!(errs
        .iter()
        .any(|e| e == "http.services.api.loadBalancer.healthCheck.path: must start with `/`"));
}

#[test]
fn unknown_and_unsupported_keys_are_reported_by_name() {
    let bad = YAML.replace(
        "      entryPoints: [web]",
        "      entryPoints: [web]\n      observability: {}\n      rulz: x",
    );
    let errs = errors_of(&bad, Format::Yaml);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with(
            "http.routers.api.observability: this Traefik option is not supported by Zeitwork yet"
        ),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("http.routers.api.rulz: unknown key"),
        "{errs:?}"
    );
    let errs = errors_of(
        "http:\n  middlewares:\n    rl:\n      compress:\n        minResponseBodyBytes: 1\n",
        Format::Yaml,
    );
    assert!(
        errs.iter()
            .any(|e| e
                .starts_with("http.middlewares.rl.compress: this Traefik option is not supported")),
        "{errs:?}"
    );
    let errs = errors_of("tcp:\n  routers: {}\n", Format::Yaml);
    assert!(errs[0].starts_with("tcp: this Traefik option"), "{errs:?}");
}

#[test]
fn type_errors_name_the_path() {
    let errs = errors_of("http:\n  routers:\n    a:\n      rule: \"Path(`/`)\"\n      service: s\n      priority: high\n", Format::Yaml);
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("http.routers.a.priority: invalid type"),
        "{errs:?}"
    );
    let errs = errors_of("{\"http\": {\"routers\": [", Format::Json);
    assert!(errs[0].contains("invalid JSON"), "{errs:?}");
}

#[test]
fn weighted_services_must_not_loop() {
    let cfg = r#"
http:
  services:
    a: {weighted: {services: [{name: b, weight: 1}]}}
    b: {weighted: {services: [{name: c}]}}
    c: {weighted: {services: [{name: a}]}}
    d: {weighted: {services: [{name: leaf}]}}
    leaf: {loadBalancer: {servers: [{url: "http://127.0.0.1:1"}]}}
"#;
    let errs = errors_of(cfg, Format::Yaml);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("loop"), "{errs:?}");
}

#[test]
fn only_one_fallback_per_entry_point() {
    let cfg = r#"
http:
  routers:
    f1: {fallback: true, service: s}
    f2: {fallback: true, service: s}
    f3: {fallback: true, service: s, rule: "Path(`/`)"}
  services:
    s: {loadBalancer: {servers: [{url: "http://127.0.0.1:1"}]}}
"#;
    let errs = errors_of(cfg, Format::Yaml);
    assert!(
        errs.iter()
            .any(|e| e
                .starts_with("http.routers.f2.fallback: router \"f1\" is already the fallback")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("http.routers.f3.rule: a fallback router")),
        "{errs:?}"
    );
}

#[test]
fn directory_merges_and_reports_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("routers.yaml"),
        "http:\n  routers:\n    a: {rule: \"Path(`/`)\", service: s}\n",
    )
    .unwrap();
    fs::create_dir(dir.path().join("more")).unwrap();
    fs::write(
        dir.path().join("more/services.toml"),
        "[[http.services.s.loadBalancer.servers]]\nurl = \"http://127.0.0.1:1\"\n",
    )
    .unwrap();
    fs::write(dir.path().join("README.txt"), "not config").unwrap();
    fs::write(dir.path().join(".hidden.yaml"), "garbage: [").unwrap();
    let loaded = load_path(dir.path(), &Limits::default()).unwrap();
    assert_eq!(loaded.files.len(), 2);
    let valid = validate(loaded.config, &Limits::default()).unwrap();
    assert_eq!(valid.config.http.routers.len(), 1);

    // splitting a file does not change its hash
    let single = tempfile::tempdir().unwrap();
    let one = single.path().join("all.yaml");
    fs::write(&one, "http:\n  routers:\n    a: {rule: \"Path(`/`)\", service: s}\n  services:\n    s: {loadBalancer: {servers: [{url: \"http://127.0.0.1:1\"}]}}\n").unwrap();
    let v1 = validate(
        load_path(&one, &Limits::default()).unwrap().config,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(v1.hash, valid.hash);

    fs::write(
        dir.path().join("dup.json"),
        r#"{"http":{"routers":{"a":{"rule":"Path(`/x`)","service":"s"}}}}"#,
    )
    .unwrap();
    let err = load_path(dir.path(), &Limits::default())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("http.routers.a: defined in both"), "{err}");
    assert!(
        err.contains("dup.json") && err.contains("routers.yaml"),
        "{err}"
    );
}

#[test]
fn limits_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("big.yaml");
    fs::write(&f, "x".repeat(2048)).unwrap();
    let limits = Limits {
        max_file_bytes: 1024,
        ..Limits::default()
    };
    assert!(load_path(&f, &limits)
        .unwrap_err()
        .to_string()
        .contains("the limit is 1024"));
    let mut routers =
        String::from("http:\n  services:\n    s: {loadBalancer: {servers: []}}\n  routers:\n");
    for i in 0..11 {
        routers.push_str(&format!(
            "    r{i}: {{rule: \"Path(`/{i}`)\", service: s}}\n"
        ));
    }
    let limits = Limits {
        max_routers: 10,
        ..Limits::default()
    };
    let err = validate(parse_str(&routers, Format::Yaml).unwrap(), &limits)
        .unwrap_err()
        .to_string();
    assert_eq!(err, "http.routers: 11 routers; the limit is 10");
    assert!(
        load_path(&dir.path().join("missing.yaml"), &Limits::default())
            .unwrap_err()
            .to_string()
            .contains("cannot read")
    );
    fs::write(dir.path().join("x.ini"), "").unwrap();
    assert!(load_path(&dir.path().join("x.ini"), &Limits::default())
        .unwrap_err()
        .to_string()
        .contains("unknown format"));
}

#[test]
fn upstream_urls() {
    let u = UpstreamUrl::parse("http://10.0.0.1:8080/base/").unwrap();
    assert_eq!(
        (u.scheme, u.authority.as_str(), u.path.as_str()),
        (UpstreamScheme::Http, "10.0.0.1:8080", "/base")
    );
    let u = UpstreamUrl::parse("h2c://[::1]:9000").unwrap();
    assert_eq!(
        (u.scheme, u.authority.as_str(), u.port),
        (UpstreamScheme::H2c, "[::1]:9000", 9000)
    );
    assert_eq!(UpstreamUrl::parse("http://backend").unwrap().port, 80);
    let tls = UpstreamUrl::parse("https://10.0.0.5").unwrap();
    assert_eq!((tls.scheme, tls.port), (UpstreamScheme::Https, 443));
    assert!(UpstreamUrl::parse("ftp://x")
        .unwrap_err()
        .contains("unsupported scheme"));
    assert!(UpstreamUrl::parse("http://:80").is_err());
    assert!(UpstreamUrl::parse("http://x:99999").is_err());
    assert!(UpstreamUrl::parse("localhost:80").is_err());
}

#[test]
fn empty_documents_are_empty_configs() {
    assert!(validate(parse_str("", Format::Yaml).unwrap(), &Limits::default()).is_ok());
    assert!(validate(parse_str("", Format::Toml).unwrap(), &Limits::default()).is_ok());
    assert!(parse_str("[1,2]", Format::Json).is_err());
}

/// A YAML file that expands far beyond its size is refused before any value is built:
/// a 1 MB scalar aliased 1,000 times once cost 2.45 GB, and 20,000 nested `[` seconds of
/// CPU with reloads blocked.
#[test]
fn yaml_that_expands_or_nests_without_bound_is_refused() {
    let big = "x".repeat(1 << 20);
    let mut bomb = format!("a: &big \"{big}\"\nb: [");
    for i in 0..1000 {
        if i > 0 {
            bomb.push_str(", ");
        }
        bomb.push_str("*big");
    }
    bomb.push_str("]\n");
    let e = zw_config::parse_str(&bomb, zw_config::Format::Yaml)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("invalid YAML") && e.to_lowercase().contains("budget"),
        "{e}"
    );

    let deep = format!("a: {}{}\n", "[".repeat(20_000), "]".repeat(20_000));
    let e = zw_config::parse_str(&deep, zw_config::Format::Yaml)
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid YAML"), "{e}");

    // anchors within reason still work, as Traefik users write them
    let ok = "http:\n  services:\n    s: &lb {loadBalancer: {servers: [{url: \"http://127.0.0.1:1\"}]}}\n    t: *lb\n";
    let cfg = zw_config::parse_str(ok, zw_config::Format::Yaml).unwrap();
    assert_eq!(cfg.http.services.len(), 2);
}

/// Validation hands over what it parsed, with references as indices, so that the edge's
/// snapshot builds from it without parsing (and failing) a second time.
#[test]
fn validation_keeps_what_it_parsed() {
    use zw_config::{HashSource, ParsedMiddleware, ParsedService};
    let text = r#"
http:
  routers:
    a: { rule: "Host(`a`)", service: mix@file, middlewares: [hdr, redir@file] }
    b: { rule: "Host(`b`)", service: hashed }
  services:
    mix:
      weighted: { services: [ { name: hashed, weight: 3 }, { name: plain } ] }
    hashed:
      loadBalancer:
        strategy: hrw
        hashKey: { header: X-User }
        servers: [ { url: "http://127.0.0.1:8081/base/" } ]
        healthCheck: { path: /health, headers: { X-Probe: "1" } }
    plain:
      loadBalancer:
        servers: [ { url: "h2c://[::1]:9000" } ]
        healthCheck: { path: /health, method: HEAD }
  middlewares:
    hdr:
      headers: { customRequestHeaders: { X-Gone: "", X-Set: "v" } }
    redir:
      redirectRegex: { regex: "^http://(.*)$", replacement: "https://$1" }
"#;
    let v = validate(parse_str(text, Format::Yaml).unwrap(), &Limits::default()).unwrap();
    let p = &v.parsed;
    // routers and services in name order: a, b / hashed, mix, plain / hdr, redir
    assert_eq!(p.routers[0].service, 1);
    assert_eq!(p.routers[0].middlewares, vec![0, 1]);
    assert_eq!(p.routers[1].service, 0);
    let ParsedService::Weighted(children) = &p.services[1] else {
        panic!("mix is weighted")
    };
    assert_eq!(children, &vec![(0, 3), (2, 1)]);
    let ParsedService::LoadBalancer(hashed) = &p.services[0] else {
        panic!("hashed is a load balancer")
    };
    assert_eq!(
        hashed.hash_key,
        HashSource::Header("x-user".parse().unwrap())
    );
    assert_eq!(hashed.servers[0].url.authority, "127.0.0.1:8081");
    assert_eq!(hashed.servers[0].url.path, "/base");
    let hc = hashed.health_check.as_ref().unwrap();
    assert_eq!(hc.method, http::Method::GET, "GET when no method is set");
    assert_eq!(hc.headers[0].0, "x-probe");
    let ParsedService::LoadBalancer(plain) = &p.services[2] else {
        panic!("plain is a load balancer")
    };
    assert_eq!(plain.hash_key, HashSource::ClientIp);
    assert_eq!(plain.servers[0].url.scheme, UpstreamScheme::H2c);
    assert_eq!(
        plain.health_check.as_ref().unwrap().method,
        http::Method::HEAD
    );
    let ParsedMiddleware::Headers { request, .. } = &p.middlewares[0] else {
        panic!("hdr is a headers middleware")
    };
    assert_eq!(request[0].0, "x-gone");
    assert!(request[0].1.is_none(), "an empty value removes the header");
    assert_eq!(request[1].1.as_ref().unwrap(), "v");
    let ParsedMiddleware::RedirectRegex { regex, .. } = &p.middlewares[1] else {
        panic!("redir is a redirectRegex")
    };
    assert!(regex.is_match("http://a/x"));
}

fn self_signed(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

/// Traefik's `tls` keys load as they are; what cannot be served is an error naming its
/// path, found before the configuration is applied.
#[test]
fn tls_material_and_options_are_checked_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(&["a.test"]);
    let (_, other_key) = self_signed(&["a.test"]);
    let put = |name: &str, text: &str| {
        let p = dir.path().join(name);
        fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (cert_f, key_f, other_f) = (
        put("a.pem", &cert),
        put("a.key", &key),
        put("b.key", &other_key),
    );
    let routes = "http:\n  routers:\n    r: {rule: \"Host(`a.test`)\", service: s, tls: {options: modern}}\n  services:\n    s: {loadBalancer: {servers: [{url: \"http://127.0.0.1:1\"}]}}\n";
    let good = format!(
        "{routes}tls:\n  certificates:\n    - {{certFile: {cert_f}, keyFile: {key_f}}}\n  options:\n    modern: {{minVersion: VersionTLS13, cipherSuites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256], curvePreferences: [X25519, CurveP256]}}\n  stores:\n    default: {{defaultCertificate: {{certFile: {cert_f}, keyFile: {key_f}}}}}\n"
    );
    let v = validate(parse_str(&good, Format::Yaml).unwrap(), &Limits::default()).unwrap();
    assert_eq!(v.parsed.routers[0].tls.as_deref(), Some("modern"));
    assert!(v.parsed.tls.named.contains_key("modern"));
    assert!(v.parsed.tls.store.lookup("a.test").is_some());

    let errors = errors_of(
        &format!(
            "{}tls:\n  certificates:\n    - {{certFile: {cert_f}, keyFile: {other_f}}}\n    - {{certFile: {}/missing.pem, keyFile: {key_f}}}\n    - {{certFile: {key_f}, keyFile: {key_f}, stores: [other]}}\n  options:\n    modern: {{maxVersion: VersionTLS11, cipherSuites: [TLS_RSA_WITH_RC4_128_SHA], curvePreferences: [CurveP521], clientAuth: {{clientAuthType: RequireAndVerifyClientCert}}, sniStrict: true, alpnProtocols: [spdy/3]}}\n",
            routes.replace("options: modern", "options: modern, certResolver: le"),
            dir.path().display()
        ),
        Format::Yaml,
    );
    let want = [
        "http.routers.r.tls.certResolver: names no certificate resolver: `le` must be defined in the static configuration",
        "tls.certificates[0]: the private key does not belong to the certificate",
        "tls.certificates[1].certFile: cannot read",
        "tls.certificates[2].stores[0]: unknown store `other`",
        "tls.certificates[2].certFile: no certificate in it",
        "tls.options.modern.maxVersion: TLS 1.0 and 1.1 are not offered",
        "tls.options.modern.cipherSuites[0]: `TLS_RSA_WITH_RC4_128_SHA` is not a cipher suite",
        "tls.options.modern.curvePreferences[0]: `CurveP521` is not a curve",
        "tls.options.modern.clientAuth: `RequireAndVerifyClientCert` verifies client certificates: name their CAs in `caFiles`",
        "tls.options.modern.alpnProtocols[0]: `spdy/3` is not a protocol",
    ];
    for w in want {
        assert!(
            errors.iter().any(|e| e.starts_with(w)),
            "missing {w:?} in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), want.len(), "{errors:#?}");

    let errors = errors_of(&routes.replace("modern", "nope"), Format::Yaml);
    assert_eq!(
        errors,
        vec!["http.routers.r.tls.options: unknown TLS options \"nope\" (define them under tls.options)"]
    );
}

/// A renewed certificate file is a new configuration (its hash changes), though the
/// configuration's text does not.
#[test]
fn a_changed_certificate_file_changes_the_hash() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    let text = format!(
        "tls:\n  certificates:\n    - {{certFile: {}, keyFile: {}}}\n",
        c.display(),
        k.display()
    );
    let hash = || {
        validate(parse_str(&text, Format::Yaml).unwrap(), &Limits::default())
            .unwrap()
            .hash
    };
    let (cert, key) = self_signed(&["a.test"]);
    fs::write(&c, cert).unwrap();
    fs::write(&k, key).unwrap();
    let first = hash();
    assert_eq!(first, hash());
    let (cert, key) = self_signed(&["a.test"]);
    fs::write(&c, cert).unwrap();
    fs::write(&k, key).unwrap();
    assert_ne!(first, hash());
}

/// Traefik's static configuration: entry points (`:port` is every interface), the file
/// provider, and what the entry points add to every dynamic configuration — the
/// redirection router (Traefik: `<from>-to-<to>`, priority MaxInt32 - 1) and entry point
/// TLS on the routers that name the entry point.
#[test]
fn a_static_configuration_adds_its_redirections_and_entry_point_tls() {
    use zw_config::{is_static, parse_static};
    let text = "entryPoints:\n  web:\n    address: :80\n    http:\n      redirections:\n        entryPoint: {to: websecure, scheme: https, permanent: true}\n  websecure:\n    address: 127.0.0.1:443\n    http:\n      tls: {options: modern}\n    proxyProtocol: {trustedIPs: [10.0.0.0/8]}\n    forwardedHeaders: {trustedIPs: [203.0.113.0/24]}\n    transport: {respondingTimeouts: {writeTimeout: 5s}}\nproviders:\n  file: {directory: /etc/zeitwork/dynamic, watch: false}\n";
    assert!(is_static(text, Format::Yaml));
    assert!(!is_static(YAML, Format::Yaml));
    let st = parse_static(text, Format::Yaml).unwrap();
    assert_eq!(st.entry_points[0].name, "web");
    assert_eq!(st.entry_points[0].address.to_string(), "0.0.0.0:80");
    let r = st.entry_points[0].redirect.as_ref().unwrap();
    assert_eq!(
        (r.to.as_str(), r.port, r.priority),
        ("websecure", 443, 2_147_483_646)
    );
    assert_eq!(st.entry_points[1].proxy_protocol.as_ref().unwrap().len(), 1);
    let trust = st.entry_points[1].forwarded_headers.as_ref().unwrap();
    assert!(trust.trusts("203.0.113.9".parse().unwrap()));
    assert!(!trust.trusts("10.0.0.1".parse().unwrap()));
    assert_eq!(
        st.entry_points[0].forwarded_headers, None,
        "no one's by default"
    );
    assert_eq!(
        st.entry_points[1].write_timeout,
        Some(std::time::Duration::from_secs(5))
    );
    assert_eq!(
        st.dynamic.as_deref(),
        Some(std::path::Path::new("/etc/zeitwork/dynamic"))
    );
    assert!(!st.watch);

    let mut dynamic = parse_str(
        "http:\n  routers:\n    app: {rule: \"Host(`a.test`)\", service: s, entryPoints: [websecure]}\n    other: {rule: \"Host(`b.test`)\", service: s}\n  services:\n    s: {loadBalancer: {servers: [{url: \"http://127.0.0.1:1\"}]}}\ntls:\n  options:\n    modern: {minVersion: VersionTLS13}\n",
        Format::Yaml,
    )
    .unwrap();
    st.apply_to(&mut dynamic).unwrap();
    let app = &dynamic.http.routers["app"];
    assert_eq!(app.tls.as_ref().unwrap().options.as_deref(), Some("modern"));
    assert!(
        dynamic.http.routers["other"].tls.is_none(),
        "it does not name websecure"
    );
    let redirect = &dynamic.http.routers["web-to-websecure"];
    assert_eq!(redirect.entry_points, vec!["web"]);
    assert_eq!(redirect.middlewares, vec!["redirect-web-to-websecure"]);
    let m = dynamic.http.middlewares["redirect-web-to-websecure"]
        .redirect_scheme
        .as_ref()
        .unwrap();
    assert_eq!(
        (m.scheme.as_str(), m.port.as_deref(), m.permanent),
        ("https", Some("443"), true)
    );
    validate(dynamic, &Limits::default()).unwrap();
}

/// `certificatesResolvers.<name>.acme` as Traefik documents it (`https/acme.md`): defaults
/// (Let's Encrypt, `acme.json`, 2160 hours), routers that name the resolver validate, and
/// the certificates asked for are a router's `domains`, else its rule's `Host` names.
#[test]
fn acme_resolvers_validate_and_routers_ask_them_for_their_hosts() {
    use zw_config::{acme_domains, parse_static, AcmeDomains, KeyType, LETS_ENCRYPT};
    let text = "entryPoints:\n  web: {address: \":80\"}\n  websecure:\n    address: \":443\"\n    http: {tls: {certResolver: le}}\nproviders: {file: {filename: d.yml}}\ncertificatesResolvers:\n  le:\n    acme: {email: ops@a.test, httpChallenge: {entryPoint: web}}\n  staging:\n    acme: {caServer: \"https://acme-staging.example/dir\", storage: /var/lib/st.json, keyType: EC384, certificatesDuration: 24, tlsChallenge: {}}\n";
    let st = parse_static(text, Format::Yaml).unwrap();
    let le = &st.resolvers[0];
    assert_eq!(le.name, "le");
    assert_eq!(le.ca_server, LETS_ENCRYPT);
    assert_eq!(le.storage, std::path::PathBuf::from("acme.json"));
    assert_eq!(le.key_type, KeyType::Ec256);
    assert_eq!(le.certificates_duration.as_secs(), 2160 * 3600);
    assert_eq!(le.http_challenge.as_deref(), Some("web"));
    assert!(!le.tls_challenge);
    assert_eq!(le.email.as_deref(), Some("ops@a.test"));
    let staging = &st.resolvers[1];
    assert!(staging.tls_challenge);
    assert_eq!(staging.key_type, KeyType::Ec384);
    assert_eq!(staging.certificates_duration.as_secs(), 24 * 3600);

    let mut dynamic = parse_str(
        "http:\n  routers:\n    app: {rule: \"Host(`A.test`) || Host(`b.test`)\", service: s, entryPoints: [websecure]}\n    api: {rule: \"Host(`api.test`)\", service: s, tls: {certResolver: staging, domains: [{main: api.test, sans: [www.api.test]}]}}\n    open: {rule: \"PathPrefix(`/`)\", service: s}\n  services:\n    s: {loadBalancer: {servers: [{url: \"http://127.0.0.1:1\"}]}}\n",
        Format::Yaml,
    )
    .unwrap();
    st.apply_to(&mut dynamic).unwrap();
    let names = |r: &str, n: &[&str]| AcmeDomains {
        resolver: r.into(),
        names: n.iter().map(|s| s.to_string()).collect(),
    };
    assert_eq!(
        acme_domains(&dynamic),
        vec![
            names("le", &["a.test", "b.test"]),
            names("staging", &["api.test", "www.api.test"])
        ]
    );
    validate(dynamic.clone(), &Limits::default()).unwrap();
    dynamic
        .http
        .routers
        .get_mut("api")
        .unwrap()
        .tls
        .as_mut()
        .unwrap()
        .cert_resolver = Some("nope".into());
    let e = validate(dynamic, &Limits::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("http.routers.api.tls.certResolver: names no certificate resolver of the static configuration (it defines `le`, `staging`)"),
        "{e}"
    );

    let bad = "entryPoints:\n  web: {address: \":80\"}\nproviders: {file: {filename: d.yml}}\ncertificatesResolvers:\n  a: {acme: {caServer: \"http://plain\", httpChallenge: {entryPoint: nowhere}, caCertificates: [x, y]}}\n  b: {acme: {tlsChallenge: {}, keyType: RSA8192}}\n  e: {acme: {email: a@b.c}}\n  c: {acme: {certificatesDuration: 0, httpChallenge: {entryPoint: web}}}\n  d: {other: {}}\n";
    let e = parse_static(bad, Format::Yaml).unwrap_err().to_string();
    for want in [
        "certificatesResolvers.a.acme.caServer: an ACME directory URL starting with https://",
        "certificatesResolvers.a.acme.httpChallenge.entryPoint: names no entry point",
        "certificatesResolvers.b.acme.keyType: RSA8192 keys are not made",
        "certificatesResolvers.c.acme.certificatesDuration: hours from 1",
        "certificatesResolvers.d: only ACME resolvers exist",
        "certificatesResolvers.e.acme: set httpChallenge.entryPoint",
        "certificatesResolvers.d.other: unknown key",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

/// `rateLimit` and `ipAllowList` as Traefik writes them; what would read a spoofable
/// `X-Forwarded-For` is refused by path.
#[test]
fn access_middlewares_validate_by_path() {
    use zw_config::{ParsedMiddleware, Source};
    let ok = "http:\n  middlewares:\n    rl: {rateLimit: {average: 100, burst: 50, sourceCriterion: {ipStrategy: {ipv6Subnet: 64}}}}\n    al: {ipAllowList: {sourceRange: [10.0.0.0/8, \"::1\"]}}\n";
    let v = validate(parse_str(ok, Format::Yaml).unwrap(), &Limits::default()).unwrap();
    // sorted: al, rl
    let ParsedMiddleware::RateLimit(spec) = &v.parsed.middlewares[1] else {
        panic!("rateLimit")
    };
    assert_eq!(spec.rate, Some(100.0));
    assert_eq!(spec.burst, 50);
    assert_eq!(
        spec.max_delay,
        std::time::Duration::from_millis(5),
        "half a token at 100/s"
    );
    assert_eq!(
        spec.source,
        Source::ClientIp(zw_config::IpStrategySpec {
            ipv6_subnet: Some(64),
            ..Default::default()
        })
    );
    let ParsedMiddleware::IpAllowList { ranges, reject, .. } = &v.parsed.middlewares[0] else {
        panic!("ipAllowList")
    };
    assert_eq!((ranges.len(), reject.as_u16()), (2, 403));

    let errs = errors_of(
        "http:\n  middlewares:\n    a: {rateLimit: {average: -1, sourceCriterion: {ipStrategy: {depth: 1, excludedIPs: [1.2.3.4, nonsense]}, requestHost: true}, redis: {endpoints: [x]}}}\n    b: {ipAllowList: {sourceRange: [nonsense], rejectStatusCode: 999}}\n    c: {ipAllowList: {}}\n    d: {inFlightReq: {amount: 0}}\n    e: {replacePath: {path: x}}\n    f: {replacePathRegex: {regex: \"(\", replacement: \" \"}}\n    g: {stripPrefixRegex: {regex: []}}\n    h: {errors: {status: [\"5xx\", \"404\"], service: nope, statusRewrites: {\"4xx\": 404, \"418\": 999}}}\n",
        Format::Yaml,
    );
    for want in [
        "http.middlewares.a.rateLimit.redis.endpoints[0]: `x`: expected `host:port`",
        "http.middlewares.a.rateLimit.average: must not be negative",
        "http.middlewares.a.rateLimit.sourceCriterion: set one of",
        "http.middlewares.a.rateLimit.sourceCriterion.ipStrategy.excludedIPs[1]:",
        "http.middlewares.b.ipAllowList.sourceRange[0]:",
        "http.middlewares.b.ipAllowList.rejectStatusCode: must be an HTTP status code",
        "http.middlewares.c.ipAllowList.sourceRange: needs at least one",
        "http.middlewares.d.inFlightReq.amount: must be at least 1",
        "http.middlewares.e.replacePath.path: must start with `/`",
        "http.middlewares.f.replacePathRegex.regex:",
        "http.middlewares.f.replacePathRegex.replacement: must not be empty",
        "http.middlewares.g.stripPrefixRegex.regex: needs at least one expression",
        "http.middlewares.h.errors.status[0]: `5xx` is not a status code or range",
        "http.middlewares.h.errors.service: unknown service \"nope\"",
        "http.middlewares.h.errors.statusRewrites.4xx: `4xx` is not a status code or range",
        "http.middlewares.h.errors.statusRewrites.418: 999 is not an HTTP status code",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {errs:#?}"
        );
    }
}
