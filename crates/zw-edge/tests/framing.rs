//! What the edge does with malformed or ambiguous HTTP/1.1 from clients, over raw sockets
//! (a real client library would not send these bytes).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zw_edge::testkit::{one_route, TestEdge, Upstream};

/// Sends `raw`, returns everything the edge answers until it closes (or 5 s pass).
async fn raw(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

fn status(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, with two Host lines, or
/// with a Host that is not an authority. (The edge once routed on the first of two Host
/// headers and passed both upstream, and accepted `Host: raw.test x`.)
#[tokio::test]
async fn host_must_be_one_valid_authority() {
    let up = Upstream::start("u").await;
    let edge = TestEdge::start(&one_route("PathPrefix(`/`)", &up.url())).await;
    for (req, want, why) in [
        (
            "GET / HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n",
            200,
            "one host",
        ),
        (
            "GET / HTTP/1.1\r\nconnection: close\r\n\r\n",
            400,
            "no host",
        ),
        (
            "GET / HTTP/1.1\r\nhost: a.test\r\nhost: b.test\r\nconnection: close\r\n\r\n",
            400,
            "two hosts",
        ),
        (
            "GET / HTTP/1.1\r\nhost: raw.test x\r\nconnection: close\r\n\r\n",
            400,
            "space in host",
        ),
        (
            "GET / HTTP/1.1\r\nhost: user@a.test\r\nconnection: close\r\n\r\n",
            400,
            "userinfo",
        ),
        ("GET / HTTP/1.0\r\n\r\n", 200, "HTTP/1.0 may omit Host"),
    ] {
        let resp = raw(edge.addr, req.as_bytes()).await;
        assert_eq!(status(&resp), want, "{why}: {resp}");
        if want == 400 {
            assert!(
                resp.contains("Host"),
                "{why}: the answer says what is wrong: {resp}"
            );
        }
    }
    assert_eq!(up.hits(), 2, "no bad request reached the upstream");
    edge.shutdown().await;
}

/// `Upgrade: h2c` is declined (answered in HTTP/1.1, the upgrade headers not passed on),
/// so nothing after it can bypass routing and the forwarding headers.
#[tokio::test]
async fn h2c_upgrades_are_declined() {
    let up = Upstream::start("u").await;
    let edge = TestEdge::start(&one_route("PathPrefix(`/`)", &up.url())).await;
    let resp = raw(
        edge.addr,
        b"GET / HTTP/1.1\r\nhost: a.test\r\nconnection: Upgrade, HTTP2-Settings, close\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert_eq!(status(&resp), 200, "{resp}");
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    let seen: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let headers = &seen["headers"];
    assert!(headers["upgrade"].is_null(), "{seen}");
    assert!(headers["http2-settings"].is_null(), "{seen}");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "{seen}");
    edge.shutdown().await;
}

/// A malformed chunked body is the client's error: 400, not a 502 blamed on the upstream.
#[tokio::test]
async fn a_malformed_chunked_body_is_a_bad_request() {
    let up = Upstream::start("u").await;
    let edge = TestEdge::start(&one_route("PathPrefix(`/`)", &up.url())).await;
    for (body, why) in [
        ("5\r\nhello\r\nzz\r\n", "chunk size not hex"),
        ("ffffffffffffffffff\r\nx\r\n", "chunk size overflows"),
    ] {
        let req = format!(
            "POST /echo HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n{body}"
        );
        let resp = raw(edge.addr, req.as_bytes()).await;
        assert_eq!(status(&resp), 400, "{why}: {resp}");
    }
    edge.shutdown().await;
}

/// Both `Transfer-Encoding` and `Content-Length`: hyper (the edge's HTTP/1 server) drops
/// the Content-Length, reads the chunked body, and closes the connection after answering
/// (RFC 9112 §6.1's lenient option; a strict 400 is not possible through hyper 1.x, which
/// removes the header before the request reaches the edge). What matters for smuggling:
/// the upstream sees one framing, and bytes after the body are never read as a request.
#[tokio::test]
async fn both_framings_cannot_smuggle_a_second_request() {
    let up = Upstream::start("u").await;
    let edge = TestEdge::start(&one_route("PathPrefix(`/`)", &up.url())).await;
    let resp = raw(
        edge.addr,
        b"POST /echo HTTP/1.1\r\nhost: a.test\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a.test\r\n\r\n",
    )
    .await;
    assert_eq!(status(&resp), 200, "{resp}");
    assert!(
        resp.ends_with("hello"),
        "the chunked body was forwarded: {resp}"
    );
    assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "one answer: {resp}");
    assert_eq!(up.hits(), 1, "the bytes after the body were not a request");
    edge.shutdown().await;
}

/// A client that sends part of a request body and then nothing gets a 408 once the body
/// read timeout passes, and the upstream connection is let go — the request no longer
/// waits out the 60 s response timeout with an upstream connection held.
#[tokio::test]
async fn a_stalled_request_body_is_a_request_timeout() {
    let up = Upstream::start("u").await;
    let builder =
        zw_edge::Edge::builder(vec!["web".into()]).body_read_timeout(Duration::from_millis(300));
    let edge = TestEdge::start_built(
        &one_route("PathPrefix(`/`)", &up.url()),
        Duration::from_secs(5),
        builder,
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: a.test\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let resp = String::from_utf8_lossy(&out).to_string();
    assert_eq!(status(&resp), 408, "{resp}");
    // a body that keeps coming, however slowly, is not cut
    let mut s = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nhost: a.test\r\ncontent-length: 8\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for b in b"slowbody" {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(&[*b]).await.unwrap();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let resp = String::from_utf8_lossy(&out).to_string();
    assert_eq!(status(&resp), 200, "{resp}");
    assert!(resp.ends_with("slowbody"), "{resp}");
    edge.shutdown().await;
}

/// Slowloris: a header block trickled one byte every two seconds is cut off when the
/// 30 s header timeout passes, while other clients are served throughout. (This held
/// under attack on loopback; kept so that it keeps holding.)
#[tokio::test]
async fn slowloris_is_cut_off_at_the_header_timeout() {
    let up = Upstream::start("u").await;
    let edge = TestEdge::start(&one_route("PathPrefix(`/`)", &up.url())).await;
    let mut s = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\nx-slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    // bounded: at most 40 s, one byte every 2 s
    while started.elapsed() < Duration::from_secs(40) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut b = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(10), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {
                closed = true; // an error status, then the close
                break;
            }
            Err(_) => {}
        }
        if s.write_all(b"a").await.is_err() {
            closed = true;
            break;
        }
        let ok = zw_edge::testkit::get(edge.addr, "a.test", "/").await;
        assert_eq!(ok.status, 200, "others are served during the attack");
    }
    let took = started.elapsed();
    assert!(closed, "still open after {took:?}");
    assert!(
        took >= Duration::from_secs(28),
        "cut off early, after {took:?}"
    );
    edge.shutdown().await;
}
