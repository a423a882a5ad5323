//! The REST API over real HTTP, against SQLite and (when configured) PostgreSQL.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use zw_operator::{Operator, Options};
use zw_store::testkit::TestDb;
use zw_store::Store;

struct Api {
    addr: SocketAddr,
    token: String,
    store: Store,
    _db: TestDb,
}

impl Api {
    async fn start(db: TestDb) -> Api {
        let store = Store::open(&db.url).await.unwrap();
        let token = store.bootstrap_admin().await.unwrap().unwrap();
        let op = Operator::start(store.clone(), Options::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(op.serve(listener, std::future::pending()));
        Api {
            addr,
            token,
            store,
            _db: db,
        }
    }

    async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        token: Option<&str>,
    ) -> (u16, Value) {
        self.typed(method, path, body, token, None).await
    }

    async fn typed(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        token: Option<&str>,
        content_type: Option<&str>,
    ) -> (u16, Value) {
        let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "op");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = send
            .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, v)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.raw(method, path, body, Some(&self.token)).await
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(method, path, body).await;
        assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
        v
    }
}

/// Every resource: create, read, list, update, delete.
#[tokio::test]
async fn every_endpoint_works() {
    for db in TestDb::all().await {
        let backend = db.backend;
        let api = Api::start(db).await;
        let (s, body) = api.raw("GET", "/health", vec![], None).await;
        assert_eq!((s, body), (200, Value::String("ok\n".into())));

        // regions
        let r = api
            .ok(
                "POST",
                "/api/v1/regions",
                Some(json!({"name": "eu", "balancer_address": "127.0.0.1:8000"})),
            )
            .await;
        assert_eq!(r["name"], "eu");
        api.ok("POST", "/api/v1/regions", Some(json!({"name": "us"})))
            .await;
        assert_eq!(
            api.ok("GET", "/api/v1/regions/eu", None).await["balancer_address"],
            "127.0.0.1:8000"
        );
        let r = api
            .ok(
                "PATCH",
                "/api/v1/regions/us",
                Some(json!({"balancer_address": "127.0.0.2:8000"})),
            )
            .await;
        assert_eq!(r["balancer_address"], "127.0.0.2:8000");
        assert_eq!(
            api.ok("GET", "/api/v1/regions", None).await["items"]
                .as_array()
                .unwrap()
                .len(),
            2
        );

        // nodes, with the seeds' filters
        let w = api.ok("POST", "/api/v1/nodes", Some(json!({"hostname": "w1", "address": "127.0.0.1", "region": "eu", "type": "worker"}))).await;
        let node = w["id"].as_str().unwrap().to_string();
        api.ok("POST", "/api/v1/nodes", Some(json!({"hostname": "w2", "address": "127.0.0.1", "region": "eu", "type": "worker", "state": "draining"}))).await;
        api.ok(
            "POST",
            "/api/v1/nodes",
            Some(json!({"hostname": "e1", "address": "127.0.0.1", "region": "eu", "type": "edge"})),
        )
        .await;
        let ready = api
            .ok("GET", "/api/v1/nodes?type=worker&state=ready", None)
            .await;
        let ids: Vec<&str> = ready["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [node.as_str()], "{backend:?}");
        let n = api
            .ok(
                "PATCH",
                &format!("/api/v1/nodes/{node}"),
                Some(json!({"resources": {"cpu_millis": 4000, "memory_mb": 8192}})),
            )
            .await;
        assert_eq!(n["resources"]["cpu_millis"], 4000);
        let n = api
            .ok(
                "POST",
                &format!("/api/v1/nodes/{node}/heartbeat"),
                Some(json!({})),
            )
            .await;
        assert!(n["last_heartbeat_at"].is_string());
        assert_eq!(
            api.ok("GET", &format!("/api/v1/nodes/{node}"), None).await["hostname"],
            "w1"
        );

        // images and deployments
        api.ok("POST", "/api/v1/images", Some(json!({"name": "hello", "command": ["/bin/hello", "--port", "8080"], "env": {"MODE": "prod"}}))).await;
        assert_eq!(
            api.ok("GET", "/api/v1/images/hello", None).await["env"]["MODE"],
            "prod"
        );
        api.ok(
            "POST",
            "/api/v1/images",
            Some(json!({"name": "other", "command": ["/bin/other"]})),
        )
        .await;
        api.ok("DELETE", "/api/v1/images/other", None).await;
        assert_eq!(
            api.ok("GET", "/api/v1/images", None).await["items"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        let d = api
            .ok(
                "POST",
                "/api/v1/deployments",
                Some(json!({"name": "web", "image": "hello", "regions": ["eu"], "port": 8080})),
            )
            .await;
        assert_eq!(
            (d["replicas"].as_u64(), d["status"].as_str()),
            (Some(1), Some("pending"))
        );
        let d = api
            .ok(
                "PATCH",
                "/api/v1/deployments/web",
                Some(json!({"replicas": 3, "status": "running"})),
            )
            .await;
        assert_eq!(d["replicas"], 3);
        assert_eq!(
            api.ok("GET", "/api/v1/deployments", None).await["items"][0]["name"],
            "web"
        );

        // instances
        let i = api
            .ok(
                "POST",
                "/api/v1/instances",
                Some(json!({"deployment": "web", "node": node})),
            )
            .await;
        let inst = i["id"].as_str().unwrap().to_string();
        assert_eq!(i["state"], "created");
        let i = api
            .ok(
                "PATCH",
                &format!("/api/v1/instances/{inst}"),
                Some(json!({"state": "started", "address": "127.0.0.1", "port": 31000})),
            )
            .await;
        assert_eq!(i["state"], "started");
        assert_eq!(
            api.ok(
                "GET",
                "/api/v1/instances?deployment=web&state=started",
                None
            )
            .await["items"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            api.ok("GET", "/api/v1/instances?state=stopped", None).await["items"]
                .as_array()
                .unwrap()
                .len(),
            0
        );

        // domains
        let dom = api
            .ok(
                "POST",
                "/api/v1/domains",
                Some(json!({"name": "app.example.com", "deployment": "web"})),
            )
            .await;
        assert!(dom["verified_at"].is_null());
        let dom = api
            .ok(
                "PATCH",
                "/api/v1/domains/app.example.com",
                Some(json!({"verified": true})),
            )
            .await;
        assert!(dom["verified_at"].is_string());
        assert_eq!(
            api.ok("GET", "/api/v1/domains?deployment=web", None).await["items"]
                .as_array()
                .unwrap()
                .len(),
            1
        );

        // the snapshot follows (pushed by the compiler loop; give it a moment)
        let mut snap = Value::Null;
        for _ in 0..100 {
            let (s, v) = api.call("GET", "/api/v1/snapshots/eu", None).await;
            if s == 200 && v["snapshot"]["http"]["routers"]["domain-app.example.com"].is_object() {
                snap = v;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(
            snap["snapshot"]["http"]["services"]["deployment-web"]["loadBalancer"]["servers"][0]
                ["url"],
            "http://127.0.0.1:31000",
            "{backend:?}: {snap}"
        );
        // us has no instance: its edges forward to eu's balancer (its snapshot is
        // compiled after eu's; give it the same moment)
        let mut us = Value::Null;
        for _ in 0..100 {
            let (s, v) = api.call("GET", "/api/v1/snapshots/us", None).await;
            if s == 200 && v["snapshot"]["http"]["routers"]["domain-app.example.com"].is_object() {
                us = v;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(
            us["snapshot"]["http"]["services"]["deployment-web"]["loadBalancer"]["servers"][0]
                ["url"],
            "http://127.0.0.1:8000"
        );

        // edge proxies and join tokens
        let e = api
            .ok(
                "POST",
                "/api/v1/edge-proxies",
                Some(json!({"id": "edge-a", "region": "eu", "address": "127.0.0.1:8080"})),
            )
            .await;
        assert_eq!(
            (e["connected"].as_bool(), e["state"].as_str()),
            (Some(false), Some("active"))
        );
        let e = api
            .ok(
                "PATCH",
                "/api/v1/edge-proxies/edge-a",
                Some(json!({"state": "draining"})),
            )
            .await;
        assert_eq!(e["state"], "draining");
        assert_eq!(
            api.ok("GET", "/api/v1/edge-proxies?region=eu", None).await["items"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            api.ok("GET", "/api/v1/edge-proxies/edge-a", None).await["id"],
            "edge-a"
        );
        let t = api
            .ok("POST", "/api/v1/join-tokens", Some(json!({"role": "edge"})))
            .await;
        let join = t["token"].as_str().unwrap().to_string();
        let listed = api.ok("GET", "/api/v1/join-tokens", None).await;
        assert!(
            listed["items"][0].get("token").is_none(),
            "a token is shown once"
        );
        // the edge token reads the edge list (the balancers' discovery) and nothing else
        assert_eq!(
            api.raw("GET", "/api/v1/edge-proxies", vec![], Some(&join))
                .await
                .0,
            200
        );
        let (s, v) = api.raw("GET", "/api/v1/nodes", vec![], Some(&join)).await;
        assert_eq!((s, v["code"].as_str()), (403, Some("forbidden")));
        api.ok(
            "DELETE",
            &format!("/api/v1/join-tokens/{}", t["id"].as_str().unwrap()),
            None,
        )
        .await;
        assert_eq!(
            api.raw("GET", "/api/v1/edge-proxies", vec![], Some(&join))
                .await
                .0,
            401
        );

        // apply: an update of the same deployment, with a second domain
        let applied = api.ok("POST", "/api/v1/apply", Some(json!({
            "deployment": {"name": "web", "image": "hello", "regions": ["eu", "us"], "port": 8080, "replicas": 2},
            "domains": ["app.example.com", "www.example.com"]
        }))).await;
        assert_eq!(applied["action"], "updated");
        assert_eq!(applied["domains"].as_array().unwrap().len(), 2);

        // the OpenAPI document describes the endpoints
        let doc = api.ok("GET", "/api/v1/openapi.json", None).await;
        for p in [
            "/api/v1/regions",
            "/api/v1/nodes/{id}/heartbeat",
            "/api/v1/edge-proxies",
            "/api/v1/apply",
            "/api/v1/join-tokens",
        ] {
            assert!(
                doc["paths"][p].is_object(),
                "{p} missing from the OpenAPI document"
            );
        }
        assert!(doc["components"]["schemas"]["Deployment"].is_object());

        // deletes
        api.ok("DELETE", "/api/v1/domains/www.example.com", None)
            .await;
        api.ok("DELETE", &format!("/api/v1/instances/{inst}"), None)
            .await;
        api.ok("DELETE", "/api/v1/edge-proxies/edge-a", None).await;
        api.ok("DELETE", "/api/v1/deployments/web", None).await;
        let others: Vec<String> = api.ok("GET", "/api/v1/nodes", None).await["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_string())
            .collect();
        for id in others {
            api.ok("DELETE", &format!("/api/v1/nodes/{id}"), None).await;
        }
        api.ok("DELETE", "/api/v1/regions/us", None).await;
        let (s, v) = api.call("GET", "/api/v1/regions/us", None).await;
        assert_eq!((s, v["code"].as_str()), (404, Some("not_found")));
        api.store.close().await;
    }
}

/// method, path, body, token ("admin" for the admin's), status, code, field
type Case<'a> = (
    &'a str,
    &'a str,
    Vec<u8>,
    Option<&'a str>,
    u16,
    &'a str,
    Option<&'a str>,
);

#[tokio::test]
async fn bad_input_is_a_clear_4xx_and_writes_nothing() {
    for db in TestDb::all().await {
        let backend = db.backend;
        let api = Api::start(db).await;
        api.ok("POST", "/api/v1/regions", Some(json!({"name": "eu"})))
            .await;
        api.ok(
            "POST",
            "/api/v1/images",
            Some(json!({"name": "hello", "command": ["/bin/hello"]})),
        )
        .await;
        // the compiler records eu's first snapshot on its own time; let it, before counting
        for _ in 0..200 {
            if api.call("GET", "/api/v1/snapshots/eu", None).await.0 == 200 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let before = api.store.counts().await.unwrap();

        let cases: Vec<Case> = vec![
            // no token, a wrong token, a malformed header
            ("GET", "/api/v1/regions", vec![], None, 401, "unauthorized", None),
            ("POST", "/api/v1/regions", br#"{"name":"x"}"#.to_vec(), Some("zw_admin_wrong"), 401, "unauthorized", None),
            ("GET", "/api/v1/openapi.json", vec![], Some(""), 401, "unauthorized", None),
            // wrong types
            ("POST", "/api/v1/regions", br#"{"name":5}"#.to_vec(), Some("admin"), 400, "bad_request", Some("name")),
            ("POST", "/api/v1/deployments", br#"{"name":"web","image":"hello","regions":["eu"],"port":"http"}"#.to_vec(), Some("admin"), 400, "bad_request", Some("port")),
            ("POST", "/api/v1/deployments", br#"{"name":"web","image":"hello","regions":["eu"],"port":70000}"#.to_vec(), Some("admin"), 400, "bad_request", Some("port")),
            ("POST", "/api/v1/nodes", br#"{"hostname":"w","address":"127.0.0.1","region":"eu","type":"gpu"}"#.to_vec(), Some("admin"), 400, "bad_request", Some("type")),
            // unknown fields, at the top and nested
            ("POST", "/api/v1/regions", br#"{"name":"x","balancer":"1.2.3.4:80"}"#.to_vec(), Some("admin"), 400, "bad_request", Some("balancer")),
            ("POST", "/api/v1/deployments", br#"{"name":"web","image":"hello","regions":["eu"],"port":80,"health_check":{"path":"/h","timeout":1}}"#.to_vec(), Some("admin"), 400, "bad_request", Some("health_check.timeout")),
            // not JSON, trailing garbage
            ("POST", "/api/v1/regions", b"name=x".to_vec(), Some("admin"), 400, "bad_request", None),
            ("POST", "/api/v1/regions", br#"{"name":"x"} {}"#.to_vec(), Some("admin"), 400, "bad_request", None),
            // oversize
            ("POST", "/api/v1/images", format!(r#"{{"name":"big","command":["{}"]}}"#, "a".repeat(2 << 20)).into_bytes(), Some("admin"), 413, "payload_too_large", None),
            // valid JSON, invalid values
            ("POST", "/api/v1/regions", br#"{"name":"Europe West"}"#.to_vec(), Some("admin"), 422, "invalid", Some("name")),
            ("POST", "/api/v1/regions", br#"{"name":"eu2","balancer_address":"nowhere"}"#.to_vec(), Some("admin"), 422, "invalid", Some("balancer_address")),
            ("POST", "/api/v1/deployments", br#"{"name":"web","image":"nope","regions":["eu"],"port":80}"#.to_vec(), Some("admin"), 422, "invalid", Some("image")),
            ("POST", "/api/v1/domains", br#"{"name":"a`) || Host(`b","deployment":"web"}"#.to_vec(), Some("admin"), 422, "invalid", Some("name")),
            ("POST", "/api/v1/instances", br#"{"deployment":"web","node":"node-x"}"#.to_vec(), Some("admin"), 422, "invalid", Some("deployment")),
            ("POST", "/api/v1/instances", br#"{"deployment":"web","node":"node-x","state":"started"}"#.to_vec(), Some("admin"), 422, "invalid", Some("state")),
            // conflicts
            ("POST", "/api/v1/regions", br#"{"name":"eu"}"#.to_vec(), Some("admin"), 409, "conflict", Some("name")),
            ("DELETE", "/api/v1/images/hello-nope", vec![], Some("admin"), 404, "not_found", None),
            // query parameters
            ("GET", "/api/v1/nodes?type=gpu", vec![], Some("admin"), 400, "bad_request", Some("type")),
            ("GET", "/api/v1/regions?limit=many", vec![], Some("admin"), 400, "bad_request", Some("limit")),
            ("GET", "/api/v1/regions?colour=blue", vec![], Some("admin"), 400, "bad_request", Some("colour")),
            ("GET", "/api/v1/nothing", vec![], Some("admin"), 404, "not_found", None),
        ];
        for (method, path, body, token, status, code, field) in cases {
            let token = token.map(|t| if t == "admin" { api.token.as_str() } else { t });
            let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).to_string();
            let (s, v) = api.raw(method, path, body, token).await;
            assert_eq!(s, status, "{backend:?} {method} {path} {shown}: {v}");
            assert_eq!(v["code"], code, "{method} {path}: {v}");
            assert_eq!(v["field"].as_str(), field, "{method} {path}: {v}");
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
            if s == 401 {
                assert!(!v.to_string().contains("eu"), "a 401 leaks nothing: {v}");
            }
        }
        // a body that says it is not JSON is not read as JSON (curl's `-d` sends form
        // encoding unless told otherwise)
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/jsonx",
        ] {
            let (s, v) = api
                .typed(
                    "POST",
                    "/api/v1/regions",
                    br#"{"name":"ct"}"#.to_vec(),
                    Some(&api.token),
                    Some(ct),
                )
                .await;
            assert_eq!(
                (s, v["code"].as_str()),
                (415, Some("unsupported_media_type")),
                "{ct}: {v}"
            );
            assert!(
                v["message"].as_str().unwrap().contains("application/json"),
                "{v}"
            );
        }
        // an image whose root filesystem path holds a NUL cannot be a path on any node
        let (s, v) = api
            .raw(
                "POST",
                "/api/v1/images",
                br#"{"name":"nul","command":["/x"],"rootfs":{"dir":"/srv/a\u0000b"}}"#.to_vec(),
                Some(&api.token),
            )
            .await;
        assert_eq!((s, v["field"].as_str()), (422, Some("rootfs")), "{v}");
        assert_eq!(
            api.store.counts().await.unwrap(),
            before,
            "{backend:?}: nothing was written"
        );
        for ct in [
            "application/json; charset=utf-8",
            "application/merge-patch+json",
        ] {
            let name = if ct.contains("merge") { "ct2" } else { "ct1" };
            let body = format!(r#"{{"name":"{name}"}}"#).into_bytes();
            let (s, v) = api
                .typed("POST", "/api/v1/regions", body, Some(&api.token), Some(ct))
                .await;
            assert_eq!(s, 201, "{ct}: {v}");
        }
        api.store.close().await;
    }
}

#[tokio::test]
async fn lists_are_paginated() {
    let api = Api::start(TestDb::sqlite()).await;
    for i in 0..7 {
        api.ok(
            "POST",
            "/api/v1/regions",
            Some(json!({"name": format!("r{i}")})),
        )
        .await;
    }
    let mut names = Vec::new();
    let mut path = "/api/v1/regions?limit=3".to_string();
    loop {
        let page = api.ok("GET", &path, None).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        names.extend(
            items
                .iter()
                .map(|r| r["name"].as_str().unwrap().to_string()),
        );
        match page["next"].as_str() {
            Some(n) => path = format!("/api/v1/regions?limit=3&after={n}"),
            None => break,
        }
    }
    assert_eq!(names, ["r0", "r1", "r2", "r3", "r4", "r5", "r6"]);
}

/// `POST /api/v1/certificates`: the join token decides the role; the CA signs only the
/// request's key, with the names the request was allowed to ask for.
#[tokio::test]
async fn certificates_follow_the_token_role() {
    for db in TestDb::all().await {
        let api = Api::start(db).await;
        let token = |role: &'static str| {
            let api = &api;
            async move {
                api.ok("POST", "/api/v1/join-tokens", Some(json!({ "role": role })))
                    .await["token"]
                    .as_str()
                    .unwrap()
                    .to_string()
            }
        };
        let (edge_token, agent_token) = (token("edge").await, token("agent").await);
        let ask = |tok: String, body: Value| {
            let api = &api;
            async move {
                api.raw(
                    "POST",
                    "/api/v1/certificates",
                    body.to_string().into_bytes(),
                    Some(&tok),
                )
                .await
            }
        };
        let csr = zw_pki::Csr::generate("n").unwrap();
        // An agent token gets a node certificate for its address.
        let (s, v) = ask(
            agent_token.clone(),
            json!({ "csr": csr.csr_pem, "name": "node-1", "names": ["127.0.0.1"] }),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let node = zw_pki::Identity::from_pem(
            v["ca"].as_str().unwrap().into(),
            v["certificate"].as_str().unwrap().into(),
            csr.key_pem.clone(),
        )
        .unwrap();
        assert!(node.server_config().is_ok());
        // The same CA answers every request.
        let csr2 = zw_pki::Csr::generate("e").unwrap();
        let (s, v2) = ask(
            edge_token.clone(),
            json!({ "csr": csr2.csr_pem, "name": "edge-1" }),
        )
        .await;
        assert_eq!(s, 200, "{v2}");
        assert_eq!(v2["ca"], v["ca"]);
        // An edge token cannot buy a node certificate, nor the other way round.
        let (s, v) = ask(
            edge_token.clone(),
            json!({ "csr": csr2.csr_pem, "name": "x", "role": "agent" }),
        )
        .await;
        assert_eq!((s, v["field"].as_str()), (422, Some("role")), "{v}");
        // The admin must say which.
        let (s, v) = api
            .call(
                "POST",
                "/api/v1/certificates",
                Some(json!({ "csr": csr2.csr_pem, "name": "x" })),
            )
            .await;
        assert_eq!((s, v["field"].as_str()), (422, Some("role")), "{v}");
        // Junk and bad names are refused with the field named.
        let (s, v) = ask(agent_token.clone(), json!({ "csr": "junk", "name": "n" })).await;
        assert_eq!((s, v["field"].as_str()), (422, Some("csr")), "{v}");
        let (s, v) = ask(
            agent_token.clone(),
            json!({ "csr": csr.csr_pem, "name": "n", "names": ["not a host"] }),
        )
        .await;
        assert_eq!((s, v["field"].as_str()), (422, Some("names[0]")), "{v}");
        // Another node's address is not for the asking.
        api.ok("POST", "/api/v1/regions", Some(json!({ "name": "eu" })))
            .await;
        let agent_token_id = api
            .store
            .authenticate(&agent_token)
            .await
            .unwrap()
            .unwrap()
            .token_id()
            .unwrap()
            .to_string();
        api.store
            .agent_hello(&zw_store::AgentHello {
                node_id: "node-1",
                hostname: "h",
                region: "eu",
                address: "10.0.0.7",
                ingress_address: "10.0.0.7:7443",
                resources: Default::default(),
                drivers: &[],
                token: Some(&agent_token_id),
            })
            .await
            .unwrap();
        let (s, v) = ask(
            agent_token.clone(),
            json!({ "csr": csr.csr_pem, "name": "node-2", "names": ["10.0.0.7"] }),
        )
        .await;
        assert_eq!((s, v["field"].as_str()), (409, Some("names[0]")), "{v}");
        let (s, v) = ask(
            agent_token.clone(),
            json!({ "csr": csr.csr_pem, "name": "node-1", "names": ["10.0.0.7"] }),
        )
        .await;
        assert_eq!(s, 200, "the node itself may renew: {v}");
        // ... but only for what the operator recorded for it
        let (s, v) = ask(
            agent_token.clone(),
            json!({ "csr": csr.csr_pem, "name": "node-1", "names": ["10.0.0.8"] }),
        )
        .await;
        assert_eq!((s, v["field"].as_str()), (403, Some("names[0]")), "{v}");
        // A join token enrolls one identity: node-1's token gets nothing for node-3, and
        // another agent token gets nothing for node-1 (once, it got a server certificate
        // with node-1's name and address).
        let (s, v) = ask(
            agent_token.clone(),
            json!({ "csr": csr.csr_pem, "name": "node-3", "names": ["127.0.0.1"] }),
        )
        .await;
        assert_eq!(s, 403, "{v}");
        assert!(
            v["message"].as_str().unwrap().contains("enrolled `node-1`"),
            "{v}"
        );
        let other = token("agent").await;
        let (s, v) = ask(
            other.clone(),
            json!({ "csr": csr.csr_pem, "name": "node-1", "names": ["10.0.0.7"] }),
        )
        .await;
        assert_eq!(s, 403, "{v}");
        // Edge tokens likewise.
        let (s, v) = ask(
            edge_token.clone(),
            json!({ "csr": csr2.csr_pem, "name": "edge-2" }),
        )
        .await;
        assert_eq!(s, 403, "{v}");
        // A join token opens nothing else.
        let (s, _) = api
            .raw("GET", "/api/v1/deployments", vec![], Some(&agent_token))
            .await;
        assert_eq!(s, 403);
        let (s, _) = api.raw("POST", "/api/v1/certificates", vec![], None).await;
        assert_eq!(s, 401);
    }
}
