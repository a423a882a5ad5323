//! Entry points behind an L4 balancer: the PROXY protocol header names the client.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zw_edge::testkit::{TestEdge, Upstream};

/// `doc` takes clients from 203.0.113.0/24 (by `ClientIP`), `other` everyone else.
fn config(doc: &Upstream, other: &Upstream) -> String {
    format!(
        r#"
http:
  routers:
    doc:
      rule: "ClientIP(`203.0.113.0/24`)"
      priority: 100
      service: doc
    other:
      rule: "PathPrefix(`/`)"
      service: other
  services:
    doc:
      loadBalancer:
        servers: [{{url: "{}"}}]
    other:
      loadBalancer:
        servers: [{{url: "{}"}}]
"#,
        doc.url(),
        other.url()
    )
}

/// Sends `header` then one request; the raw response, or "" when the edge closed first.
async fn exchange(addr: SocketAddr, header: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(
        b"GET /who HTTP/1.1\r\nhost: app\r\nx-forwarded-for: 6.6.6.6\r\nconnection: close\r\n\r\n",
    );
    // the edge may close before reading everything: a write error is an answer too
    let _ = s.write_all(&bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn header_value<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    resp.lines().take_while(|l| !l.is_empty()).find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    })
}

#[tokio::test]
async fn the_header_address_is_the_client_everywhere() {
    let (doc, other) = (Upstream::start("doc").await, Upstream::start("other").await);
    let edge = TestEdge::start_behind_balancer(&config(&doc, &other), "127.0.0.0/8").await;

    let v2 = zw_proxy_protocol::encode_v2("203.0.113.7:40000".parse().unwrap(), edge.addr);
    let resp = exchange(edge.addr, &v2).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(
        header_value(&resp, "x-upstream"),
        Some("doc"),
        "ClientIP matched the proxied address"
    );
    let body = resp.split("\r\n\r\n").nth(1).unwrap();
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    let headers = &json["headers"];
    assert_eq!(headers["x-forwarded-for"], "203.0.113.7", "{headers}");
    assert_eq!(headers["x-real-ip"], "203.0.113.7");

    let v1 = zw_proxy_protocol::encode_v1("198.51.100.9:1234".parse().unwrap(), edge.addr);
    let resp = exchange(edge.addr, v1.as_bytes()).await;
    assert_eq!(header_value(&resp, "x-upstream"), Some("other"), "{resp}");
    let json: serde_json::Value =
        serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json["headers"]["x-forwarded-for"], "198.51.100.9");

    // the balancer's own health check (LOCAL) keeps the connection's address
    let resp = exchange(edge.addr, &zw_proxy_protocol::encode_v2_local()).await;
    let json: serde_json::Value =
        serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json["headers"]["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn missing_malformed_or_untrusted_headers_close_the_connection() {
    let (doc, other) = (Upstream::start("doc").await, Upstream::start("other").await);
    let edge = TestEdge::start_behind_balancer(&config(&doc, &other), "127.0.0.0/8").await;
    for header in [
        &b""[..],
        b"PROXY TCP4 1.2.3.4\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\n",
        b"\r\n\r\n\x00\r\nQUIT\n\x11\x11\x00\x00",
    ] {
        let resp = exchange(edge.addr, header).await;
        assert_eq!(
            resp,
            "",
            "{:?} got an answer",
            String::from_utf8_lossy(header)
        );
    }
    assert_eq!(doc.hits() + other.hits(), 0, "nothing reached an upstream");

    // a valid header from a source outside the trusted networks
    let strict = TestEdge::start_behind_balancer(&config(&doc, &other), "10.0.0.0/8").await;
    let v2 = zw_proxy_protocol::encode_v2("203.0.113.7:40000".parse().unwrap(), strict.addr);
    assert_eq!(exchange(strict.addr, &v2).await, "");
    assert_eq!(doc.hits() + other.hits(), 0);

    let metrics = zw_edge::testkit::get(edge.admin, "admin", "/metrics").await;
    let text = metrics.body;
    assert!(
        text.contains("zeitwork_proxy_protocol_rejections_total 4"),
        "{text}"
    );
}
