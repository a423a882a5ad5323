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
