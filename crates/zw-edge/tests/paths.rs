//! Path rewriting middlewares over real sockets, with cases from Traefik's own tests:
//! `replace_path_test.go`, `replace_path_regex_test.go` (`/whoami/and/whoami` with
//! `^/whoami/(.*)` → `/who-am-i/$1`), `strip_prefix_regex_test.go` (`/a/api/`,
//! `/b/([a-z0-9]+)/`).

use zw_edge::testkit::{get, TestEdge, Upstream};

fn config(up: &Upstream, middleware: &str) -> String {
    format!(
        "http:\n  routers:\n    r: {{rule: \"Host(`a.test`)\", service: s, middlewares: [m]}}\n  services:\n    s: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n  middlewares:\n    m:\n      {middleware}\n",
        up.url()
    )
}

/// (middleware, request path, path the upstream sees, header the upstream sees).
type Case<'a> = (&'a str, &'a str, &'a str, Option<(&'a str, &'a str)>);

#[tokio::test]
async fn paths_are_replaced_and_prefixes_stripped_as_traefik_does() {
    let up = Upstream::start("u").await;
    let cases: &[Case] = &[
        (
            "replacePath: {path: /foo}",
            "/bar?q=1",
            "/foo",
            Some(("x-replaced-path", "/bar")),
        ),
        (
            "replacePathRegex: {regex: \"^/whoami/(.*)\", replacement: \"/who-am-i/$1\"}",
            "/whoami/and/whoami",
            "/who-am-i/and/whoami",
            Some(("x-replaced-path", "/whoami/and/whoami")),
        ),
        (
            "replacePathRegex: {regex: \"^/whoami/(.*)\", replacement: \"/x/$1\"}",
            "/other",
            "/other",
            None,
        ),
        (
            "stripPrefixRegex: {regex: [\"/a/api/\"]}",
            "/a/api/test",
            "/test",
            Some(("x-forwarded-prefix", "/a/api/")),
        ),
        (
            "stripPrefixRegex: {regex: [\"/b/([a-z0-9]+)/\"]}",
            "/b/123/",
            "/",
            Some(("x-forwarded-prefix", "/b/123/")),
        ),
        // a match that does not start the path strips nothing
        (
            "stripPrefixRegex: {regex: [\"/api/\"]}",
            "/v1/api/x",
            "/v1/api/x",
            None,
        ),
    ];
    for (middleware, path, want_path, want_header) in cases {
        let edge = TestEdge::start(&config(&up, middleware)).await;
        let r = get(edge.addr, "a.test", path).await;
        let v = r.json();
        assert_eq!(v["path"], *want_path, "{middleware} on {path}: {v}");
        match want_header {
            Some((name, value)) => assert_eq!(v["headers"][*name], *value, "{middleware}: {v}"),
            None => assert!(
                v["headers"]["x-replaced-path"].is_null()
                    && v["headers"]["x-forwarded-prefix"].is_null(),
                "{v}"
            ),
        }
        if *path == "/bar?q=1" {
            assert_eq!(v["query"], "q=1", "the query is kept");
        }
    }
}
