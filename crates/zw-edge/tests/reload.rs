//! Hot reload: configuration changes under load never fail a request, and each response
//! comes entirely from one configuration — the one running before the change or after it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zw_edge::testkit::{get, one_route, Client, TestEdge, Upstream};

const GENERATIONS: u64 = 100;

/// Configuration generation `g`: the main router's service uses two of four upstreams
/// (which two, and their weights, change every generation), a headers middleware stamps
/// `X-Gen: g` on responses, and a varying number of extra routers come and go.
fn config(g: u64, ups: &[Upstream]) -> String {
    let a = &ups[(g % 4) as usize];
    let b = &ups[((g + 1) % 4) as usize];
    let mut extra = String::new();
    for i in 0..(g * 7 % 40) {
        extra.push_str(&format!("    extra-{i}: {{rule: \"Host(`extra-{i}.test`) && PathPrefix(`/g{g}`)\", service: s}}\n"));
    }
    format!(
        "http:\n  middlewares:\n    gen: {{headers: {{customResponseHeaders: {{X-Gen: \"{g}\"}}}}}}\n  services:\n    s: {{loadBalancer: {{servers: [{{url: \"{}\", weight: {}}}, {{url: \"{}\", weight: 1}}]}}}}\n  routers:\n    main: {{rule: \"PathPrefix(`/`)\", service: s, middlewares: [gen]}}\n{extra}",
        a.url(),
        1 + g % 3,
        b.url()
    )
}

/// The upstreams generation `g` may send to.
fn allowed(g: u64, ups: &[Upstream]) -> [String; 2] {
    [
        ups[(g % 4) as usize].name.clone(),
        ups[((g + 1) % 4) as usize].name.clone(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_rewrites_under_load_fail_nothing() {
    let ups = Arc::new(vec![
        Upstream::start("u0").await,
        Upstream::start("u1").await,
        Upstream::start("u2").await,
        Upstream::start("u3").await,
    ]);
    let edge = TestEdge::start(&config(0, &ups)).await;
    let base_version = edge.edge.status().version;

    // generation known to be applied (lower bound) and last written (upper bound)
    let applied = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(60);

    let mut clients = Vec::new();
    for _ in 0..4 {
        let (applied, written, done, ups) =
            (applied.clone(), written.clone(), done.clone(), ups.clone());
        let addr = edge.addr;
        clients.push(tokio::spawn(async move {
            let mut c = Client::h1(addr).await.unwrap();
            let (mut ok, mut failures) = (0u64, Vec::new());
            let mut gens_seen = std::collections::BTreeSet::new();
            while !done.load(SeqCst) && Instant::now() < deadline && ok < 1_000_000 {
                let lo = applied.load(SeqCst);
                let r = match c.get("reload.test", "/").await {
                    Ok(r) => r,
                    Err(e) => {
                        failures.push(format!("request error: {e}"));
                        c = Client::h1(addr).await.unwrap();
                        continue;
                    }
                };
                let hi = written.load(SeqCst);
                let gen: u64 = r
                    .header("x-gen")
                    .and_then(|g| g.parse().ok())
                    .unwrap_or(u64::MAX);
                if r.status != 200 {
                    failures.push(format!("status {} body {}", r.status, r.body));
                } else if gen < lo || gen > hi {
                    failures.push(format!("generation {gen} outside [{lo}, {hi}]"));
                } else if !allowed(gen, &ups).contains(&r.upstream()) {
                    failures.push(format!(
                        "generation {gen} answered by {} (allowed {:?})",
                        r.upstream(),
                        allowed(gen, &ups)
                    ));
                } else {
                    ok += 1;
                    gens_seen.insert(gen);
                }
            }
            (ok, failures, gens_seen.len())
        }));
    }

    let mut version = base_version;
    for g in 1..=GENERATIONS {
        written.store(g, SeqCst);
        edge.write_config(&config(g, &ups));
        version = edge.wait_version_above(version).await;
        applied.store(g, SeqCst);
        // let some requests run on each generation
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    done.store(true, SeqCst);

    let (mut total, mut distinct) = (0, 0);
    for c in clients {
        let (ok, failures, gens) = c.await.unwrap();
        assert!(
            failures.is_empty(),
            "{} failures, first: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        total += ok;
        distinct = distinct.max(gens);
    }
    assert_eq!(
        edge.edge.status().version,
        base_version + GENERATIONS,
        "every rewrite was applied once"
    );
    assert!(total > 500, "only {total} requests ran during the reloads");
    assert!(distinct > 50, "clients saw only {distinct} generations");
    let m = edge.admin_get("/metrics").await.body;
    assert!(
        m.contains(&format!(
            "zeitwork_config_applies_total {}",
            GENERATIONS + 1
        )),
        "{m}"
    );
    assert!(m.contains("zeitwork_config_rejections_total 0"));
    eprintln!("{total} requests across {GENERATIONS} reloads, zero failures");
    edge.shutdown().await;
}

#[tokio::test]
async fn an_invalid_change_is_rejected_whole_and_visible() {
    let up = Upstream::start("old").await;
    let good = one_route("Host(`a.test`)", &up.url());
    let edge = TestEdge::start(&good).await;
    let before = edge.admin_get("/debug/config").await.json();
    assert_eq!(before["source"], "file");
    assert!(before["last_error"].is_null());

    // a valid new router next to a broken one: nothing of it may apply
    let bad = format!("{good}    r2: {{rule: \"Host(`b.test`)\", service: s}}\n    broken: {{rule: \"Host(`c.test`) &&\", service: nope}}\n");
    edge.write_config(&bad);
    let mut status = serde_json::Value::Null;
    for _ in 0..250 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = edge.admin_get("/debug/config").await.json();
        if !status["last_error"].is_null() {
            break;
        }
    }
    let err = status["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains("http.routers.broken.rule: at byte"),
        "{status}"
    );
    assert!(
        err.contains("http.routers.broken.service: unknown service \"nope\""),
        "{status}"
    );
    assert_eq!(
        status["version"], before["version"],
        "the running version is unchanged"
    );
    assert_eq!(status["hash"], before["hash"]);
    assert_eq!(get(edge.addr, "a.test", "/").await.upstream(), "old");
    assert_eq!(
        get(edge.addr, "b.test", "/").await.status,
        404,
        "the valid part of a broken change is not applied"
    );
    assert!(edge
        .admin_get("/metrics")
        .await
        .body
        .contains("zeitwork_config_rejections_total 1"));
    assert_eq!(
        edge.admin_get("/ready").await.status,
        200,
        "still ready on the previous configuration"
    );

    // fixing the file applies it
    edge.write_config(&format!(
        "{good}    r2: {{rule: \"Host(`b.test`)\", service: s}}\n"
    ));
    edge.wait_version_above(before["version"].as_u64().unwrap_or(0))
        .await;
    assert_eq!(get(edge.addr, "b.test", "/").await.upstream(), "old");
    assert!(edge.admin_get("/debug/config").await.json()["last_error"].is_null());
    edge.shutdown().await;
}

/// A duration with a multi-byte character (`1¢`) once panicked in the parser, which killed
/// the watcher's load task: the file provider never looked at the file again. Now it is an
/// ordinary rejected change, and the next good change applies.
#[tokio::test]
async fn a_change_the_parser_chokes_on_does_not_stop_watching() {
    let up = Upstream::start("old").await;
    let good = one_route("Host(`a.test`)", &up.url());
    let edge = TestEdge::start(&good).await;
    let before = edge.admin_get("/debug/config").await.json();
    let version = before["version"].as_u64().unwrap_or(0);

    for bad in ["1¢", "1\u{a0}s"] {
        edge.write_config(&format!(
            "{good}  serversTransports:\n    t: {{forwardingTimeouts: {{dialTimeout: \"{bad}\"}}}}\n"
        ));
        let mut status = serde_json::Value::Null;
        for _ in 0..250 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            status = edge.admin_get("/debug/config").await.json();
            if status["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(bad))
            {
                break;
            }
        }
        let err = status["last_error"].as_str().unwrap_or_default();
        assert!(err.contains("dialTimeout"), "{bad:?}: {status}");
        assert_eq!(status["version"], before["version"]);
    }

    edge.write_config(&format!(
        "{good}    r2: {{rule: \"Host(`b.test`)\", service: s}}\n"
    ));
    edge.wait_version_above(version).await;
    assert_eq!(get(edge.addr, "b.test", "/").await.upstream(), "old");
    edge.shutdown().await;
}

/// A file emptied while a configuration runs (an editor truncating before it writes) is
/// skipped, as Traefik skips an empty configuration: the routes stay, and the next real
/// content is applied.
#[tokio::test]
async fn an_emptied_file_keeps_the_running_configuration() {
    let up = Upstream::start("old").await;
    let good = one_route("Host(`a.test`)", &up.url());
    let edge = TestEdge::start(&good).await;
    let version = edge.admin_get("/debug/config").await.json()["version"]
        .as_u64()
        .unwrap_or(0);
    for empty in ["", "\n", "http: {}\n"] {
        edge.write_config(empty);
        // a few polls of the file (every 20 ms)
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            get(edge.addr, "a.test", "/").await.upstream(),
            "old",
            "{empty:?}"
        );
    }
    let status = edge.admin_get("/debug/config").await.json();
    assert_eq!(status["version"].as_u64(), Some(version), "{status}");
    edge.write_config(&format!(
        "{good}    r2: {{rule: \"Host(`b.test`)\", service: s}}\n"
    ));
    edge.wait_version_above(version).await;
    assert_eq!(get(edge.addr, "b.test", "/").await.upstream(), "old");
    edge.shutdown().await;
}
