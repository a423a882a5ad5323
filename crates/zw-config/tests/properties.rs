//! Property tests: no input makes loading or validation panic, and the hash does not
//! depend on the format a configuration is written in.

use proptest::prelude::*;
use zw_config::{parse_str, validate, Format, Limits};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        for format in [Format::Toml, Format::Yaml, Format::Json] {
            if let Ok(cfg) = parse_str(&text, format) {
                let _ = validate(cfg, &Limits::default());
            }
        }
    }

    #[test]
    fn config_shaped_yaml_never_panics(
        names in prop::collection::vec("[a-z]{1,6}", 1..5),
        rules in prop::collection::vec("[A-Za-z()`\"&|! /.*0-9-]{0,30}", 1..5),
        urls in prop::collection::vec("(http|h2c|https|ftp)://[a-z0-9.:\\[\\]]{0,20}(/[a-z]{0,5})?", 1..4),
        strategy in "(wrr|p2c|hrw|roundRobin|bogus)",
        weight in -5i64..10,
    ) {
        let mut y = String::from("http:\n  routers:\n");
        for (n, r) in names.iter().zip(rules.iter().cycle()) {
            y.push_str(&format!("    {n}: {{rule: {:?}, service: {n}, priority: {weight}}}\n", r));
        }
        y.push_str("  services:\n");
        for (n, u) in names.iter().zip(urls.iter().cycle()) {
            y.push_str(&format!("    {n}: {{loadBalancer: {{strategy: {strategy}, servers: [{{url: {u:?}, weight: {weight}}}]}}}}\n"));
        }
        if let Ok(cfg) = parse_str(&y, Format::Yaml) {
            let _ = validate(cfg, &Limits::default());
        }
    }

    /// The `tls` section: any value in any of its fields is loaded or refused with
    /// errors, never a panic.
    #[test]
    fn tls_shaped_yaml_never_panics(
        pem in "(-----BEGIN (CERTIFICATE|PRIVATE KEY|EC PRIVATE KEY)-----\n[A-Za-z0-9+/=\n]{0,80}-----END [A-Z ]{0,20}-----\n){0,2}",
        path in "(/nonexistent/[a-z]{1,5}|/dev/null|)",
        version in "(VersionTLS1[0-4]|bogus|)",
        suite in "(TLS_[A-Z0-9_]{0,40})",
        curve in "(X25519|CurveP(256|384|521)|[a-z]{0,4})",
        auth in "(NoClientCert|VerifyClientCertIfGiven|RequireAndVerifyClientCert|RequestClientCert|[A-Za-z]{0,6})",
        alpn in "(h2|http/1.1|acme-tls/1|[a-z/0-9.]{0,8})",
        store in "(default|[a-z]{1,5})",
        strict in any::<bool>(),
        options in "(default|modern|[a-z]{1,4})",
    ) {
        let y = format!(
            "http:\n  routers:\n    r: {{rule: \"Host(`a.test`)\", service: s, tls: {{options: {options}}}}}\n  services:\n    s: {{loadBalancer: {{servers: [{{url: \"http://127.0.0.1:1\"}}]}}}}\ntls:\n  certificates:\n    - {{certFile: {pem:?}, keyFile: {pem:?}, stores: [{store}]}}\n    - {{certFile: {path:?}, keyFile: {path:?}}}\n  stores:\n    {store}: {{defaultCertificate: {{certFile: {pem:?}, keyFile: {path:?}}}}}\n  options:\n    {options}: {{minVersion: {version:?}, maxVersion: {version:?}, cipherSuites: [{suite:?}], curvePreferences: [{curve:?}], sniStrict: {strict}, alpnProtocols: [{alpn:?}], clientAuth: {{caFiles: [{pem:?}, {path:?}], clientAuthType: {auth:?}}}}}\n"
        );
        if let Ok(cfg) = parse_str(&y, Format::Yaml) {
            let _ = validate(cfg, &Limits::default());
        }
    }

    /// The access middlewares: any value in any field loads or is refused with errors.
    #[test]
    fn access_middlewares_never_panic(
        average in -5i64..1_000_000,
        period in "([0-9]{1,4}(ns|ms|s|m|h)|0|-1s|)",
        burst in -5i64..100_000,
        depth in 0u32..4,
        subnet in 0u16..300,
        header in "[A-Za-z-]{0,8}|[ \t:]{1,3}",
        host in any::<bool>(),
        range in "([0-9.]{1,15}(/[0-9]{1,3})?|[0-9a-f:]{2,20}(/[0-9]{1,3})?|[a-z]{0,5})",
        status in 0u16..1000,
    ) {
        let y = format!(
            "http:\n  middlewares:\n    rl:\n      rateLimit: {{average: {average}, period: {period:?}, burst: {burst}, sourceCriterion: {{ipStrategy: {{depth: {depth}, ipv6Subnet: {subnet}}}, requestHeaderName: {header:?}, requestHost: {host}}}}}\n    al:\n      ipAllowList: {{sourceRange: [{range:?}], rejectStatusCode: {status}, ipStrategy: {{ipv6Subnet: {subnet}}}}}\n"
        );
        if let Ok(cfg) = parse_str(&y, Format::Yaml) {
            let _ = validate(cfg, &Limits::default());
        }
    }

    /// `headers`: any value in any of its keys (custom headers, CORS, security, the host
    /// check, the proxy headers) loads or is refused with errors naming the key.
    #[test]
    fn headers_middleware_never_panics(
        name in "[A-Za-z-]{0,8}|[ \t:\n]{1,3}",
        value in "[ -~]{0,12}|[\x00-\x1f]{1,2}",
        number in -5i64..100_000_000,
        flag in any::<bool>(),
        regex in r"[a-z^$.*()\[\]+?{}]{0,10}",
    ) {
        // JSON strings are YAML's double-quoted scalars.
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let (name, value, regex) = (q(&name), q(&value), q(&regex));
        let y = format!(
            "http:\n  middlewares:\n    h:\n      headers:\n        customRequestHeaders: {{{name}: {value}}}\n        customResponseHeaders: {{{name}: {value}}}\n        accessControlAllowCredentials: {flag}\n        accessControlAllowHeaders: [{value}]\n        accessControlAllowMethods: [{value}]\n        accessControlAllowOriginList: [{value}]\n        accessControlAllowOriginListRegex: [{regex}]\n        accessControlExposeHeaders: [{value}]\n        accessControlMaxAge: {number}\n        addVaryHeader: {flag}\n        allowedHosts: [{value}]\n        hostsProxyHeaders: [{name}]\n        sslProxyHeaders: {{{name}: {value}}}\n        stsSeconds: {number}\n        stsIncludeSubdomains: {flag}\n        stsPreload: {flag}\n        forceSTSHeader: {flag}\n        frameDeny: {flag}\n        customFrameOptionsValue: {value}\n        contentTypeNosniff: {flag}\n        browserXssFilter: {flag}\n        customBrowserXSSValue: {value}\n        contentSecurityPolicy: {value}\n        contentSecurityPolicyReportOnly: {value}\n        publicKey: {value}\n        referrerPolicy: {value}\n        permissionsPolicy: {value}\n        isDevelopment: {flag}\n"
        );
        let cfg = parse_str(&y, Format::Yaml);
        prop_assert!(cfg.is_ok(), "every key is known: {:?}", cfg.err());
        if let Ok(cfg) = cfg {
            if let Err(errors) = validate(cfg, &Limits::default()) {
                for e in &errors.0 {
                    prop_assert!(e.path.contains("middlewares.h.headers"), "{e:?}");
                }
            }
        }
    }

    /// `buffering` and `contentType`: any number in any size, any retry expression, any
    /// switch: loaded, or refused with errors naming the key.
    #[test]
    fn body_middlewares_never_panic(
        sizes in prop::array::uniform4(any::<i64>()),
        retry in "[A-Za-z()<=&| 0-9]{0,20}",
        detect in prop::option::of(any::<bool>()),
    ) {
        let [max_req, mem_req, max_resp, mem_resp] = sizes;
        let retry = serde_json::to_string(&retry).unwrap_or_default();
        let detect = detect.map_or(String::new(), |d| format!("autoDetect: {d}"));
        let y = format!(
            "http:\n  middlewares:\n    b:\n      buffering: {{maxRequestBodyBytes: {max_req}, memRequestBodyBytes: {mem_req}, maxResponseBodyBytes: {max_resp}, memResponseBodyBytes: {mem_resp}, retryExpression: {retry}}}\n    c:\n      contentType: {{{detect}}}\n"
        );
        let cfg = parse_str(&y, Format::Yaml);
        prop_assert!(cfg.is_ok(), "{:?}", cfg.err());
        if let Ok(cfg) = cfg {
            if let Err(errors) = validate(cfg, &Limits::default()) {
                for e in &errors.0 {
                    prop_assert!(e.path.contains("middlewares.b.buffering."), "{e:?}");
                }
            }
        }
    }

    /// `forwardAuth`: any address, TLS settings (PEM text, paths, switches), cookie names,
    /// body switch and size: loaded, or refused with errors naming the key.
    #[test]
    fn forward_auth_never_panics(
        address in "(http|https|h2c|ftp)://[a-z0-9.:]{0,12}(/[a-z?=]{0,6})?",
        pem in "(-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]{0,40}-----END CERTIFICATE-----\n|/nonexistent/[a-z]{1,4}|)",
        insecure in any::<bool>(),
        cookie in "[ -~]{0,8}",
        body in any::<bool>(),
        max in -3i64..100,
        with_tls in any::<bool>(),
    ) {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let tls = if with_tls {
            format!(", tls: {{ca: {p}, cert: {p}, key: {p}, insecureSkipVerify: {insecure}, caOptional: true}}", p = q(&pem))
        } else {
            String::new()
        };
        let y = format!(
            "http:\n  middlewares:\n    f:\n      forwardAuth: {{address: {}, addAuthCookiesToResponse: [{}], forwardBody: {body}, maxBodySize: {max}{tls}}}\n",
            q(&address),
            q(&cookie)
        );
        let cfg = parse_str(&y, Format::Yaml);
        prop_assert!(cfg.is_ok(), "{:?}", cfg.err());
        if let Ok(cfg) = cfg {
            if let Err(errors) = validate(cfg, &Limits::default()) {
                for e in &errors.0 {
                    prop_assert!(e.path.contains("middlewares.f.forwardAuth"), "{e:?}");
                }
            }
        }
    }

    /// basicAuth: well-formed hashes of every kind load, a mutated magic or length is an
    /// error naming the user's line, and no field value panics.
    #[test]
    fn basic_auth_users_load_or_name_the_line(
        kind in 0usize..4,
        salt in "[./0-9A-Za-z]{0,8}",
        sum in "[./0-9A-Za-z]{53}",
        sha in proptest::collection::vec(any::<u8>(), 20),
        cost in 4u8..32,
        mutate in 0usize..4,
        name in "[a-z][a-z0-9]{0,7}",
        realm in "[ -~]{0,12}",
        field in "[A-Za-z-]{0,8}|[ :]{1,2}",
        remove in any::<bool>(),
    ) {
        use base64::Engine;
        let hash = match kind {
            0 => format!("$apr1${salt}${}", &sum[..22]),
            1 => format!("$1${salt}${}", &sum[..22]),
            2 => format!("$2y${cost:02}${sum}"),
            _ => format!("{{SHA}}{}", base64::engine::general_purpose::STANDARD.encode(&sha)),
        };
        prop_assert!(zw_config::parse_hash(&hash).is_ok(), "{hash}");
        let line = match mutate {
            0 => format!("{name}:{hash}"),
            1 => format!("{name}:{}", hash.replacen('$', "%", 1).replacen('{', "(", 1)),
            2 => format!("{name}:{}", &hash[..hash.len() - 1]),
            _ => format!("{name}{hash}"),
        };
        let y = format!(
            "http:\n  middlewares:\n    auth:\n      basicAuth: {{users: [{line:?}], realm: {realm:?}, headerField: {field:?}, removeHeader: {remove}}}\n"
        );
        if let Ok(cfg) = parse_str(&y, Format::Yaml) {
            match validate(cfg, &Limits::default()) {
                Ok(v) => prop_assert!(mutate == 0, "{line} loaded: {:?}", v.parsed.middlewares),
                Err(e) => {
                    let text = e.to_string();
                    prop_assert!(text.contains("http.middlewares.auth.basicAuth"), "{text}");
                    if mutate != 0 {
                        prop_assert!(text.contains("users[0]"), "{line}: {text}");
                    }
                }
            }
        }
    }

    /// `Authorization: Basic`: what base64 of `user:password` carries comes back out;
    /// any other value is no credentials, never a panic.
    #[test]
    fn basic_credentials_round_trip(
        user in "[^:]{0,12}",
        password in ".{0,12}",
        scheme in "(Basic|basic|BASIC) ",
        junk in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let value = format!("{scheme}{token}");
        prop_assert_eq!(
            zw_config::basic_credentials(value.as_bytes()),
            Some((user.clone(), password.clone()))
        );
        let _ = zw_config::basic_credentials(&junk);
    }

    /// `Authorization: Digest`: every field written (quoted or not, any spacing) is read
    /// back as written; any other value is no fields, never a panic.
    #[test]
    fn digest_params_round_trip(
        fields in proptest::collection::btree_map("[a-z][a-z0-9_-]{0,8}", "[ -!#-+--~]{0,16}", 1..8),
        quote in proptest::collection::vec(any::<bool>(), 8),
        space in "[ ]{0,2}",
        junk in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let mut text = String::from("Digest ");
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                text.push(',');
                text.push_str(&space);
            }
            // an unquoted value cannot hold a comma or start with a quote
            let bare = !v.contains(',') && !v.starts_with('"') && !v.starts_with(' ') && !v.ends_with(' ');
            if quote[i % 8] || !bare {
                text.push_str(&format!("{k}=\"{v}\""));
            } else {
                text.push_str(&format!("{k}={v}"));
            }
        }
        let got = zw_config::digest_params(text.as_bytes());
        let want: std::collections::BTreeMap<String, String> =
            fields.iter().map(|(k, v)| (k.clone(), v.trim_end().to_string())).collect();
        prop_assert_eq!(got, Some(want), "{}", text);
        let _ = zw_config::digest_params(&junk);
    }

    #[test]
    fn hash_is_independent_of_format(
        routers in prop::collection::btree_map("[a-z]{1,8}", ("[a-z]{1,8}\\.test", 0i64..100), 1..6),
        port in 1u16..65535,
    ) {
        let mut v = serde_json::json!({"http": {"routers": {}, "services": {"s": {"loadBalancer": {"servers": [{"url": format!("http://127.0.0.1:{port}")}]}}}}});
        for (name, (host, prio)) in &routers {
            v["http"]["routers"][name] = serde_json::json!({"rule": format!("Host(`{host}`)"), "service": "s", "priority": prio});
        }
        let json = v.to_string();
        let yaml = yaml_text(&v);
        let toml = toml_text(&v);
        let h = |text: &str, f: Format| validate(parse_str(text, f).unwrap(), &Limits::default()).unwrap().hash;
        let hj = h(&json, Format::Json);
        prop_assert_eq!(&hj, &h(&yaml, Format::Yaml));
        prop_assert_eq!(&hj, &h(&toml, Format::Toml));
    }
}

/// A block-style YAML rendering of the small JSON shape above.
fn yaml_text(v: &serde_json::Value) -> String {
    let mut out = String::from("http:\n  routers:\n");
    for (name, r) in v["http"]["routers"].as_object().unwrap() {
        out.push_str(&format!(
            "    {name}:\n      rule: '{}'\n      service: s\n      priority: {}\n",
            r["rule"].as_str().unwrap(),
            r["priority"]
        ));
    }
    let url = v["http"]["services"]["s"]["loadBalancer"]["servers"][0]["url"]
        .as_str()
        .unwrap();
    out.push_str(&format!(
        "  services:\n    s:\n      loadBalancer:\n        servers:\n          - url: \"{url}\"\n"
    ));
    out
}

/// A TOML rendering of the small JSON shape above (the `toml` crate here only parses).
fn toml_text(v: &serde_json::Value) -> String {
    let mut out = String::new();
    for (name, r) in v["http"]["routers"].as_object().unwrap() {
        out.push_str(&format!(
            "[http.routers.{name}]\nrule = {:?}\nservice = \"s\"\npriority = {}\n",
            r["rule"].as_str().unwrap(),
            r["priority"]
        ));
    }
    let url = v["http"]["services"]["s"]["loadBalancer"]["servers"][0]["url"]
        .as_str()
        .unwrap();
    out.push_str(&format!(
        "[[http.services.s.loadBalancer.servers]]\nurl = {url:?}\n"
    ));
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `certificatesResolvers.<name>.acme` with every field present or not, of every type
    /// it can take: a resolver parses with what was written, or every error names a path
    /// under it; nothing panics.
    #[test]
    fn acme_resolvers_parse_as_written_or_name_the_field(
        email in prop::option::of("[a-z]{0,8}@?[a-z.]{0,8}"),
        ca_server in prop::option::of("(https|http|ftp)://[a-z.:0-9]{0,12}(/dir)?"),
        storage in prop::option::of("[a-z/._-]{0,16}"),
        key_type in prop::option::of("(EC256|EC384|RSA2048|RSA3072|RSA4096|RSA8192|ec256|bogus)"),
        hours in prop::option::of(-10i64..100_000),
        http_ep in prop::option::of(prop::option::of("(web|websecure|nowhere)")),
        tls_challenge in any::<bool>(),
        ca_files in prop::collection::vec("[a-z]{1,6}\\.pem", 0..3),
    ) {
        let mut acme = serde_json::Map::new();
        if let Some(e) = &email { acme.insert("email".into(), e.clone().into()); }
        if let Some(c) = &ca_server { acme.insert("caServer".into(), c.clone().into()); }
        if let Some(s) = &storage { acme.insert("storage".into(), s.clone().into()); }
        if let Some(k) = &key_type { acme.insert("keyType".into(), k.clone().into()); }
        if let Some(h) = hours { acme.insert("certificatesDuration".into(), h.into()); }
        if let Some(ep) = &http_ep {
            let mut h = serde_json::Map::new();
            if let Some(ep) = ep { h.insert("entryPoint".into(), ep.clone().into()); }
            acme.insert("httpChallenge".into(), h.into());
        }
        if tls_challenge { acme.insert("tlsChallenge".into(), serde_json::json!({})); }
        acme.insert("caCertificates".into(), ca_files.clone().into());
        let text = serde_json::json!({
            "entryPoints": {"web": {"address": ":80"}, "websecure": {"address": ":443"}},
            "providers": {"file": {"filename": "d.yml"}},
            "certificatesResolvers": {"r": {"acme": acme}},
        })
        .to_string();
        match zw_config::parse_static(&text, Format::Json) {
            Ok(st) => {
                let r = &st.resolvers[0];
                prop_assert_eq!(&r.name, "r");
                prop_assert_eq!(r.email.as_deref(), email.as_deref().filter(|e| !e.is_empty()));
                prop_assert_eq!(r.ca_server.as_str(), ca_server.as_deref().unwrap_or(zw_config::LETS_ENCRYPT));
                prop_assert!(r.ca_server.starts_with("https://"));
                prop_assert_eq!(r.storage.to_str(), Some(storage.as_deref().unwrap_or("acme.json")));
                prop_assert_eq!(r.certificates_duration.as_secs(), hours.unwrap_or(2160) as u64 * 3600);
                prop_assert_eq!(r.tls_challenge, tls_challenge);
                use zw_config::KeyType as K;
                let want_kt = match key_type.as_deref() {
                    None | Some("EC256") => Some(K::Ec256),
                    Some("EC384") => Some(K::Ec384),
                    Some("RSA2048") => Some(K::Rsa2048),
                    Some("RSA3072") => Some(K::Rsa3072),
                    Some("RSA4096") => Some(K::Rsa4096),
                    _ => None,
                };
                prop_assert_eq!(Some(r.key_type), want_kt, "only the kinds made load");
                let want_ep = http_ep.clone().flatten();
                prop_assert_eq!(r.http_challenge.as_deref(), want_ep.as_deref());
                prop_assert!(r.http_challenge.is_some() || r.tls_challenge);
                prop_assert!(ca_files.len() <= 1);
            }
            Err(e) => {
                for err in &e.0 {
                    prop_assert!(err.path.starts_with("certificatesResolvers.r"), "{}", e);
                }
            }
        }
    }
}
