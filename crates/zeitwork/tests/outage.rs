//! The operator dies under load: the edges keep serving without a single failed request,
//! back off while it is gone, and converge when it returns. (Its own test binary: it runs
//! for over a minute and should not share the machine with the latency measurements.)

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const OUTAGE: Duration = Duration::from_secs(60);

/// `(done, succeeded, failed, errored, 2xx)` from h2load's summary.
fn h2load_summary(out: &str) -> (u64, u64, u64, u64, u64) {
    let num = |line: &str, label: &str| -> u64 {
        line.split(',')
            .find(|p| p.trim().ends_with(label))
            .and_then(|p| p.trim().split(' ').next()?.parse().ok())
            .unwrap_or(u64::MAX)
    };
    let req = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("no summary:\n{out}"));
    let codes = out
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or_else(|| panic!("no status codes:\n{out}"));
    let codes = codes.trim_start_matches("status codes:");
    (
        num(req, "done"),
        num(req, "succeeded"),
        num(req, "failed"),
        num(req, "errored"),
        num(codes, "2xx"),
    )
}

#[test]
fn edges_serve_through_an_operator_outage_and_converge_after() {
    if !tool("h2load") {
        return;
    }
    let (_rt, up) = upstream("app");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut op = Operator::start(&dir.path().join("op"), port, None);
    let token = seed(&op, up.addr);
    add_domain(&op, "app.example.com");
    let edges = [
        Edge::start(op.addr, &token, "edge-1", &dir.path().join("e1"), &[]),
        Edge::start(
            op.addr,
            &edge_token(&op),
            "edge-2",
            &dir.path().join("e2"),
            &[],
        ),
    ];
    for e in &edges {
        eventually(Duration::from_secs(20), "routed", || {
            (e.get("app.example.com", "/").0 == 200).then_some(())
        });
    }

    // Paced load on both edges for the whole outage and a little more (bounded by -D).
    let load: Vec<_> = edges
        .iter()
        .map(|e| {
            Command::new("h2load")
                .args([
                    "--h1",
                    "-c",
                    "2",
                    "--rps",
                    "100",
                    "-D",
                    &(OUTAGE.as_secs() + 10).to_string(),
                    "-H",
                    ":authority: app.example.com",
                ])
                .arg(format!("http://{}/load", e.http))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("h2load")
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    op.proc.kill();
    std::thread::sleep(OUTAGE);
    op = Operator::start(&dir.path().join("op"), port, None);

    // converge: a change made after the restart reaches both edges
    add_domain(&op, "after.example.com");
    for e in &edges {
        eventually(
            Duration::from_secs(30),
            "the post-outage change routed",
            || (e.get("after.example.com", "/").0 == 200).then_some(()),
        );
    }
    for (e, child) in edges.iter().zip(load) {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let (done, succeeded, failed, errored, ok) = h2load_summary(&text);
        println!("{}: {done} requests during the outage window, {succeeded} succeeded, {failed} failed, {errored} errored", e.proc.name);
        assert!(done > 1000, "{text}");
        assert_eq!((failed, errored), (0, 0), "{}: {text}", e.proc.name);
        assert_eq!(ok, done, "every response a 2xx: {text}");
    }

    // the reconnect schedule: ceilings 0.5 s, 1 s, 2 s, 4 s, then 8 s (the configured max),
    // each delay within its ceiling, reset by the successful reconnect
    for e in &edges {
        let retries: Vec<(u64, u64, u64)> = e
            .proc
            .logs()
            .iter()
            .filter(|l| message(l) == "reconnecting to the operator")
            .map(|l| {
                let f = &l["fields"];
                (
                    f["attempt"].as_u64().unwrap(),
                    f["delay_ms"].as_u64().unwrap(),
                    f["ceiling_ms"].as_u64().unwrap(),
                )
            })
            .collect();
        let story: Vec<String> = e
            .proc
            .logs()
            .iter()
            .filter(|l| {
                l["target"]
                    .as_str()
                    .is_some_and(|t| t.contains("control_plane"))
            })
            .map(|l| format!("{} {} {}", l["timestamp"], message(l), l["fields"]))
            .collect();
        let story = story.join("\n");
        assert!(retries.len() >= 8, "{}: {retries:?}\n{story}", e.proc.name);
        for (i, &(attempt, delay, ceiling)) in retries.iter().enumerate() {
            assert_eq!(
                attempt,
                i as u64 + 1,
                "{}: attempts count up from 1 during one outage: {retries:?}",
                e.proc.name
            );
            assert_eq!(
                ceiling,
                (500u64 << i.min(4)).min(8000),
                "{}: {retries:?}",
                e.proc.name
            );
            assert!(delay <= ceiling);
        }
        let total: u64 = retries.iter().map(|r| r.1).sum();
        println!(
            "{}: {} reconnect attempts over the outage, delays summing to {:.1} s (full jitter)",
            e.proc.name,
            retries.len(),
            total as f64 / 1000.0
        );
        assert!(
            total < OUTAGE.as_millis() as u64 + 8000,
            "{}: waited longer than the outage plus one ceiling",
            e.proc.name
        );
        let connects = e
            .proc
            .logs()
            .iter()
            .filter(|l| message(l) == "connected to the operator")
            .count();
        assert_eq!(
            connects, 2,
            "{}: connected once before and once after",
            e.proc.name
        );
    }
}
