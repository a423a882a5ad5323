//! `basicAuth` over real sockets, with the cases of Traefik's
//! `pkg/middlewares/auth/basic_auth_test.go` (TestBasicAuthFail, TestBasicAuthSuccess,
//! TestBasicAuthUserHeader, TestBasicAuthHeaderRemoved, TestBasicAuthHeaderPresent,
//! TestBasicAuthUsersFromFile) and its docs' hashes.

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use zw_edge::testkit::{Client, Resp, TestEdge, Upstream};

// test:test, from Traefik's docs and tests (`openssl passwd -apr1 -salt H6uskkkW test`
// gives the same)
const APR1_TEST: &str = "$apr1$H6uskkkW$IgXLP6ewTrSuBkTrqE8wj/";
// test2:test2, from Traefik's docs
const APR1_TEST2: &str = "$apr1$d9hr9HBB$4HxwgUir3HP4EsggP/QNo0";
// test2:overridden (TestBasicAuthUsersFromFile)
const APR1_OVERRIDDEN: &str = "$apr1$mK.GtItK$ncnLYvNLek0weXdxo68690";
// s3cret, by glibc's crypt(3): python3 -c "import crypt; print(crypt.crypt('s3cret',
// crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))"
const BCRYPT_S3CRET: &str = "$2b$04$1AlUZ3.92sFjgdWijI2RFuRh3D0r8/aYlfWKrNmLZPGTn9XEzijf.";
// test, `htpasswd -nbs`'s format: {SHA} and base64(sha1("test"))
const SHA_TEST: &str = "{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M=";

fn config(up: &Upstream, basic_auth: &str) -> String {
    format!(
        "http:\n  routers:\n    r: {{rule: \"Host(`a.test`)\", service: s, middlewares: [auth]}}\n  services:\n    s: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n  middlewares:\n    auth:\n      basicAuth:\n{basic_auth}",
        up.url()
    )
}

/// A GET for a.test with `Authorization: Basic` for these credentials (none: no header).
async fn get(edge: &TestEdge, credentials: Option<(&str, &str)>) -> Resp {
    let mut req = http::Request::get("/").header("host", "a.test");
    if let Some((user, password)) = credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        req = req.header("authorization", format!("Basic {token}"));
    }
    let mut c = Client::h1(edge.addr).await.unwrap();
    c.send(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap()
}

/// What the upstream saw of a request header (the test upstream echoes them).
fn seen(r: &Resp, header: &str) -> Option<String> {
    r.json()["headers"][header].as_str().map(str::to_string)
}

#[tokio::test]
async fn the_right_password_gets_through_and_anything_else_gets_401_with_the_realm() {
    let up = Upstream::start("u").await;
    let edge = TestEdge::start(&config(
        &up,
        &format!("        users: [\"test:{APR1_TEST}\"]\n"),
    ))
    .await;
    let ok = get(&edge, Some(("test", "test"))).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.upstream(), "u");
    // TestBasicAuthHeaderPresent: without removeHeader the upstream sees Authorization
    assert!(seen(&ok, "authorization").is_some_and(|a| a.starts_with("Basic ")));

    for creds in [
        None,
        Some(("test", "wrong")),
        Some(("nobody", "test")),
        Some(("test", "")),
    ] {
        let r = get(&edge, creds).await;
        assert_eq!(r.status, 401, "{creds:?}: {r:?}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"traefik\""),
            "{creds:?}"
        );
        assert_ne!(r.upstream(), "u", "a refused request never reaches the app");
    }
    // not Basic, or not base64: refused the same way
    let mut c = Client::h1(edge.addr).await.unwrap();
    for value in ["Bearer abc", "Basic !!!", "Basic"] {
        let req = http::Request::get("/")
            .header("host", "a.test")
            .header("authorization", value)
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(c.send(req).await.unwrap().status, 401, "{value}");
    }
}

#[tokio::test]
async fn header_field_names_the_user_upstream_and_remove_header_drops_the_credentials() {
    let up = Upstream::start("u").await;
    let edge = TestEdge::start(&config(
        &up,
        &format!(
            "        users: [\"test:{APR1_TEST}\"]\n        headerField: X-Webauth-User\n        removeHeader: true\n        realm: staff\n"
        ),
    ))
    .await;
    let ok = get(&edge, Some(("test", "test"))).await;
    assert_eq!(ok.status, 200);
    assert_eq!(seen(&ok, "x-webauth-user").as_deref(), Some("test"));
    assert_eq!(seen(&ok, "authorization"), None);
    let no = get(&edge, None).await;
    assert_eq!(no.header("www-authenticate"), Some("Basic realm=\"staff\""));
}

/// TestBasicAuthUsersFromFile: the file's users (comments skipped) and the inline ones;
/// an inline user overrides the file's of the same name.
#[tokio::test]
async fn users_come_from_the_file_and_inline_ones_override_it() {
    let up = Upstream::start("u").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    std::fs::write(
        &file,
        format!("#Comment\ntest:{APR1_TEST}\n\n  test2:{APR1_TEST2}  \n"),
    )
    .unwrap();
    let edge = TestEdge::start(&config(
        &up,
        &format!(
            "        usersFile: {}\n        users: [\"test2:{APR1_OVERRIDDEN}\", \"hash:{BCRYPT_S3CRET}\", \"sha:{SHA_TEST}\"]\n",
            file.display()
        ),
    ))
    .await;
    for (user, password, want) in [
        ("test", "test", 200),
        ("test2", "overridden", 200),
        ("test2", "test2", 401),
        ("hash", "s3cret", 200),
        ("hash", "s3cre", 401),
        ("sha", "test", 200),
        ("sha", "tesT", 401),
        ("foo", "foo", 401),
    ] {
        let r = get(&edge, Some((user, password))).await;
        assert_eq!(r.status, want, "{user}:{password}");
    }
}

/// Many bcrypt checks at once: they run on the blocking pool, and a request without
/// credentials is answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bcrypt_checks_run_beside_other_requests() {
    let up = Upstream::start("u").await;
    let edge = TestEdge::start(&config(
        &up,
        &format!("        users: [\"hash:{BCRYPT_S3CRET}\"]\n"),
    ))
    .await;
    let checks: Vec<_> = (0..16)
        .map(|i| {
            let addr = edge.addr;
            tokio::spawn(async move {
                let token = base64::engine::general_purpose::STANDARD.encode(if i % 2 == 0 {
                    "hash:s3cret"
                } else {
                    "hash:nope"
                });
                let mut c = Client::h1(addr).await.unwrap();
                let req = http::Request::get("/")
                    .header("host", "a.test")
                    .header("authorization", format!("Basic {token}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                (i, c.send(req).await.unwrap().status)
            })
        })
        .collect();
    assert_eq!(get(&edge, None).await.status, 401);
    for c in checks {
        let (i, status) = c.await.unwrap();
        assert_eq!(status, if i % 2 == 0 { 200 } else { 401 }, "request {i}");
    }
}

/// A config Traefik would load but whose users could never log in (a plain-text
/// password, a line without `:`) is refused, with the path and what to do.
#[test]
fn unusable_users_are_validation_errors() {
    for (users, want) in [
        ("[\"test:test\"]", "users[0]"),
        ("[\"test\"]", "users[0]"),
        ("[\"a:b:c\"]", "users[0]"),
        ("[]", "basicAuth"),
    ] {
        let text =
            format!("http:\n  middlewares:\n    auth:\n      basicAuth:\n        users: {users}\n");
        let limits = zw_config::Limits::default();
        let config = zw_config::parse_str(&text, zw_config::Format::Yaml).unwrap();
        let err = zw_config::validate(config, &limits)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("http.middlewares.auth.basicAuth.{want}"))
                || err.contains("http.middlewares.auth.basicAuth:"),
            "{users}: {err}"
        );
        assert!(err.contains("htpasswd"), "{users}: says what to do: {err}");
    }
}

/// An authentication server: `Authorization: Bearer good` → 204 with `X-Auth-User`,
/// `X-Auth-Role` and two cookies (`session`, `tracking`); a path with `redirect` → 302 to
/// a relative `/login`; anything else → 401 `denied` with `WWW-Authenticate`. It records
/// each check's headers, and its body.
struct AuthServer {
    addr: std::net::SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String, http::HeaderMap)>>>,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Bytes>>>,
}

impl AuthServer {
    async fn start() -> AuthServer {
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String, http::HeaderMap)>>> =
            Default::default();
        let bodies: std::sync::Arc<std::sync::Mutex<Vec<Bytes>>> = Default::default();
        let (log, body_log) = (seen.clone(), bodies.clone());
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let (log, body_log) = (log.clone(), body_log.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (log, body_log) = (log.clone(), body_log.clone());
                        async move {
                            log.lock().unwrap().push((
                                req.method().to_string(),
                                req.uri().to_string(),
                                req.headers().clone(),
                            ));
                            let (parts, body) = req.into_parts();
                            use http_body_util::BodyExt;
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            body_log.lock().unwrap().push(body);
                            let req = http::Request::from_parts(parts, ());
                            let good = req
                                .headers()
                                .get("authorization")
                                .is_some_and(|v| v == "Bearer good");
                            let resp = if req.uri().path().contains("redirect") {
                                http::Response::builder()
                                    .status(302)
                                    .header("location", "/login")
                                    .body(Full::new(Bytes::new()))
                            } else if good {
                                http::Response::builder()
                                    .status(204)
                                    .header("x-auth-user", "alice")
                                    .header("x-auth-role", "admin")
                                    .header("x-auth-extra", "e")
                                    .header("x-other", "o")
                                    .header("set-cookie", "session=s1; Path=/; HttpOnly")
                                    .header("set-cookie", "tracking=t1; Path=/")
                                    .body(Full::new(Bytes::new()))
                            } else {
                                http::Response::builder()
                                    .status(401)
                                    .header("www-authenticate", "Bearer realm=\"x\"")
                                    .header("connection", "x-hop")
                                    .header("x-hop", "1")
                                    .body(Full::new(Bytes::from_static(b"denied")))
                            };
                            Ok::<_, std::convert::Infallible>(resp.unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        AuthServer { addr, seen, bodies }
    }

    fn last_body(&self) -> Bytes {
        self.bodies.lock().unwrap().last().cloned().unwrap()
    }

    fn last(&self) -> (String, String, http::HeaderMap) {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

fn forward_config(up: &Upstream, auth: &AuthServer, extra: &str) -> String {
    format!(
        "http:\n  routers:\n    r: {{rule: \"Host(`a.test`)\", service: s, middlewares: [auth]}}\n  services:\n    s: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n  middlewares:\n    auth:\n      forwardAuth:\n        address: http://{}/verify?app=a\n{extra}",
        up.url(),
        auth.addr
    )
}

async fn send(edge: &TestEdge, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    send_with(edge, method, path, headers, b"").await
}

async fn send_with(
    edge: &TestEdge,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> Resp {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "a.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut c = Client::h1(edge.addr).await.unwrap();
    c.send(req.body(Full::new(Bytes::from_static(body))).unwrap())
        .await
        .unwrap()
}

/// Traefik's `forward_test.go`: TestForwardAuthSuccess (2xx lets through, the listed
/// response headers reach the upstream), TestForwardAuthFail (the server's status, headers
/// and body reach the client), hop-by-hop headers of the server's answer left out, and
/// `Test_writeHeader`'s X-Forwarded-* (the client's own only with trustForwardHeader).
#[tokio::test]
async fn forward_auth_admits_on_2xx_and_passes_the_refusal_through() {
    let up = Upstream::start("u").await;
    let auth = AuthServer::start().await;
    let edge = TestEdge::start(&forward_config(
        &up,
        &auth,
        "        authResponseHeaders: [X-Auth-User]\n        authResponseHeadersRegex: \"^X-Auth-R\"\n",
    ))
    .await;

    let ok = send(
        &edge,
        "POST",
        "/app?x=1",
        &[
            ("authorization", "Bearer good"),
            ("x-auth-user", "mallory"),
            ("x-forwarded-for", "6.6.6.6"),
        ],
    )
    .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.upstream(), "u");
    assert_eq!(
        seen(&ok, "x-auth-user").as_deref(),
        Some("alice"),
        "the server's value replaces the client's"
    );
    assert_eq!(
        seen(&ok, "x-auth-role").as_deref(),
        Some("admin"),
        "matched by the regex"
    );
    assert_eq!(seen(&ok, "x-other"), None, "not listed, not copied");
    let (method, uri, h) = auth.last();
    assert_eq!((method.as_str(), uri.as_str()), ("GET", "/verify?app=a"));
    let hv = |n: &str| {
        h.get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(hv("x-forwarded-method"), "POST");
    assert_eq!(hv("x-forwarded-proto"), "http");
    assert_eq!(hv("x-forwarded-host"), "a.test");
    assert_eq!(hv("x-forwarded-uri"), "/app?x=1");
    assert_eq!(
        hv("x-forwarded-for"),
        "127.0.0.1",
        "an untrusted X-Forwarded-For is replaced"
    );
    assert_eq!(
        hv("authorization"),
        "Bearer good",
        "the credentials reach the server"
    );

    let no = send(&edge, "GET", "/", &[]).await;
    assert_eq!(no.status, 401);
    assert_eq!(no.body, "denied");
    assert_eq!(no.header("www-authenticate"), Some("Bearer realm=\"x\""));
    assert_eq!(
        no.header("x-hop"),
        None,
        "hop-by-hop headers of the server's answer stay there"
    );
    assert_ne!(no.upstream(), "u");
}

/// `trustForwardHeader` keeps the client's X-Forwarded-*; `preserveRequestMethod` sends the
/// request's method; `authRequestHeaders` limits what the server sees; a relative
/// `Location` is made absolute against the server unless `preserveLocationHeader`
/// (TestForwardAuthRedirect / TestForwardAuthPreserveLocationHeader).
#[tokio::test]
async fn forward_auth_options_shape_the_check_and_the_redirect() {
    let up = Upstream::start("u").await;
    let auth = AuthServer::start().await;
    // trustForwardHeader reads what the entry point kept: here it trusts the client
    // (`forwardedHeaders`), as a Traefik entry point behind a trusted proxy would.
    let builder = zw_edge::Edge::builder(vec!["web".into()])
        .forwarded_headers("web", zw_config::ForwardedTrust::Everyone)
        .unwrap();
    let edge = TestEdge::start_built(
        &forward_config(
            &up,
            &auth,
            "        trustForwardHeader: true\n        preserveRequestMethod: true\n        authRequestHeaders: [Authorization, X-Forwarded-For]\n",
        ),
        std::time::Duration::from_secs(5),
        builder,
    )
    .await;
    let r = send(
        &edge,
        "DELETE",
        "/x",
        &[
            ("authorization", "Bearer good"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-host", "b.test"),
            ("cookie", "c=1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let (method, _, h) = auth.last();
    assert_eq!(method, "DELETE");
    let hv = |n: &str| {
        h.get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(hv("x-forwarded-for"), "10.0.0.1, 127.0.0.1");
    assert_eq!(hv("x-forwarded-host"), "b.test");
    assert_eq!(hv("cookie"), "", "not in authRequestHeaders");

    // the redirect: absolute against the server, or as sent
    let edge =
        TestEdge::start(&forward_config(&up, &auth, "").replace("/verify?app=a", "/redirect"))
            .await;
    let r = send(&edge, "GET", "/", &[]).await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some(format!("http://{}/login", auth.addr).as_str())
    );
    let edge = TestEdge::start(
        &forward_config(&up, &auth, "        preserveLocationHeader: true\n")
            .replace("/verify?app=a", "/redirect"),
    )
    .await;
    let r = send(&edge, "GET", "/", &[]).await;
    assert_eq!(r.header("location"), Some("/login"));

    // a server that is not there: 500, as in Traefik
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cfg = format!(
        "http:\n  routers:\n    r: {{rule: \"Host(`a.test`)\", service: s, middlewares: [auth]}}\n  services:\n    s: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n  middlewares:\n    auth:\n      forwardAuth: {{address: \"http://{gone}/\"}}\n",
        up.url()
    );
    let edge = TestEdge::start(&cfg).await;
    assert_eq!(send(&edge, "GET", "/", &[]).await.status, 500);
}

async fn send_body(edge: &TestEdge, path: &str, body: &'static [u8]) -> Resp {
    send_with(
        edge,
        "POST",
        path,
        &[("authorization", "Bearer good")],
        body,
    )
    .await
}

/// `forwardBody` and `maxBodySize` (Traefik's `forward_test.go`:
/// `TestForwardAuthForwardBody` — the server gets the body, the upstream still does;
/// `TestForwardAuthForwardBodySizeLimit` — a larger body is a 401 and reaches neither;
/// `TestForwardAuthNotForwardBody` — without it the check has no body, and here no
/// `Content-Length` that promises one).
#[tokio::test]
async fn forward_auth_sends_the_body_when_asked_and_within_the_limit() {
    let up = Upstream::start("u").await;
    let auth = AuthServer::start().await;
    let edge = TestEdge::start(&forward_config(
        &up,
        &auth,
        "        forwardBody: true
        maxBodySize: 20
",
    ))
    .await;
    let r = send_body(&edge, "/echo", b"hello, auth").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(auth.last_body(), "hello, auth", "the server saw the body");
    let (_, _, h) = auth.last();
    assert_eq!(
        h.get("content-length").map(|v| v.as_bytes()),
        Some(&b"11"[..])
    );
    assert_eq!(r.body, "hello, auth", "the upstream got it too");
    let r = send_body(&edge, "/echo", b"twenty-one bytes long").await;
    assert_eq!(r.status, 401, "over maxBodySize: {r:?}");
    assert_ne!(r.upstream(), "u");

    let edge = TestEdge::start(&forward_config(&up, &auth, "")).await;
    let r = send_body(&edge, "/echo", b"kept for the upstream").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(auth.last_body(), "", "no body without forwardBody");
    let (_, _, h) = auth.last();
    assert_eq!(
        h.get("content-length"),
        None,
        "nor a length that promises one"
    );
    assert_eq!(r.body, "kept for the upstream");
}

/// `addAuthCookiesToResponse` (Traefik's `forward.go`, `buildModifier`): the listed cookies of the server's answer go to the client in place of the upstream's of
/// the same name; the others of either side stay as they were. Here the "upstream's"
/// cookies come from a `headers` middleware after the check, which answers in its place.
#[tokio::test]
async fn forward_auth_adds_the_listed_cookies_to_the_response() {
    let up = Upstream::start("u").await;
    let auth = AuthServer::start().await;
    let cfg = format!(
        "http:\n  routers:\n    r: {{rule: \"Host(`a.test`)\", service: s, middlewares: [auth, cookies]}}\n  services:\n    s: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n  middlewares:\n    auth:\n      forwardAuth:\n        address: http://{}/verify\n        addAuthCookiesToResponse: [session]\n    cookies:\n      headers: {{customResponseHeaders: {{Set-Cookie: \"session=upstream; Path=/\"}}}}\n",
        up.url(),
        auth.addr
    );
    let edge = TestEdge::start(&cfg).await;
    let r = send(&edge, "GET", "/", &[("authorization", "Bearer good")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let cookies: Vec<&str> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(cookies, ["session=s1; Path=/; HttpOnly"], "{cookies:?}");

    // Not listed: the server's cookies stay with the server.
    let edge = TestEdge::start(&cfg.replace("[session]", "[other]")).await;
    let r = send(&edge, "GET", "/", &[("authorization", "Bearer good")]).await;
    let cookies: Vec<&str> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(cookies, ["session=upstream; Path=/"], "{cookies:?}");
}

/// `curl --digest` against the edge: the hashes are Traefik's docs' (`test:traefik:test`,
/// `test2:traefik:test2`, from `htdigest`).
fn curl_digest(
    edge: std::net::SocketAddr,
    path: &str,
    user: &str,
    extra: &[&str],
) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--digest",
            "-u",
            user,
            "-H",
            "Host: a.test",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{num_connects}",
        ])
        .args(extra)
        .arg(format!("http://{edge}{path}"))
        .output()
        .expect("curl (CI installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let status = text
        .split(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// digestAuth (Traefik's `digest_auth_test.go`: TestDigestAuthFail, TestDigestAuthSuccess,
/// TestDigestAuthUsersFromFile) with a real client: curl answers the challenge, a wrong
/// password gets 401 again, the challenge carries the realm, MD5 and `qop="auth"`; a
/// replayed answer (an old nonce count) is `stale`, and a user of another realm is
/// unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_auth_admits_curl_with_the_right_password() {
    let up = Upstream::start("u").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("digest");
    std::fs::write(&file, "# comment\ntest2:traefik:518845800f9e2bfb1f1f740ec24f074e\nother:elsewhere:518845800f9e2bfb1f1f740ec24f074e\n").unwrap();
    let cfg = format!(
        "http:\n  routers:\n    r: {{rule: \"Host(`a.test`)\", service: s, middlewares: [auth]}}\n  services:\n    s: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n  middlewares:\n    auth:\n      digestAuth:\n        users: [\"test:traefik:a2688e031edb4be6a3797f3882655c05\"]\n        usersFile: {}\n        headerField: X-Webauth-User\n        removeHeader: true\n",
        up.url(),
        file.display()
    );
    let edge = TestEdge::start(&cfg).await;
    let addr = edge.addr;
    let results = tokio::task::spawn_blocking(move || {
        [
            curl_digest(addr, "/x?y=1", "test:test", &[]),
            curl_digest(addr, "/", "test2:test2", &[]),
            curl_digest(addr, "/", "test:wrong", &[]),
            curl_digest(addr, "/", "other:test2", &[]),
        ]
    })
    .await
    .unwrap();
    assert_eq!(results[0].0, 200, "{results:?}");
    assert_eq!(results[1].0, 200, "from the file: {results:?}");
    assert_eq!(results[2].0, 401, "{results:?}");
    assert_eq!(results[3].0, 401, "another realm's user: {results:?}");

    // The challenge, and what the upstream sees once in.
    let r = send(&edge, "GET", "/", &[]).await;
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").unwrap_or("").to_string();
    assert!(
        challenge.starts_with("Digest realm=\"traefik\", nonce=\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("algorithm=MD5, qop=\"auth\""),
        "{challenge}"
    );
    let field = |k: &str| {
        challenge
            .split(&format!("{k}=\""))
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("")
            .to_string()
    };
    let (nonce, opaque) = (field("nonce"), field("opaque"));
    let md5 = |s: String| {
        use md5::Digest;
        hex::encode(md5::Md5::digest(s.as_bytes()))
    };
    let answer = |nc: &str| {
        let ha2 = md5("GET:/".to_string());
        let response = md5(format!(
            "a2688e031edb4be6a3797f3882655c05:{nonce}:{nc}:abc:auth:{ha2}"
        ));
        format!("Digest username=\"test\", realm=\"traefik\", nonce=\"{nonce}\", uri=\"/\", qop=auth, nc={nc}, cnonce=\"abc\", response=\"{response}\", opaque=\"{opaque}\"")
    };
    let first = answer("00000001");
    let ok = send(&edge, "GET", "/", &[("authorization", first.as_str())]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(seen(&ok, "x-webauth-user").as_deref(), Some("test"));
    assert_eq!(seen(&ok, "authorization"), None, "removeHeader");
    // the same answer again: its count is not new
    let again = send(&edge, "GET", "/", &[("authorization", first.as_str())]).await;
    assert_eq!(again.status, 401);
    assert!(
        again
            .header("www-authenticate")
            .unwrap_or("")
            .ends_with("stale=true"),
        "{again:?}"
    );
    let next = answer("00000002");
    assert_eq!(
        send(&edge, "GET", "/", &[("authorization", next.as_str())])
            .await
            .status,
        200
    );
}
