//! The middlewares that need the body, over real sockets: `buffering` (Traefik's
//! `buffering_test.go`: a request body over `maxRequestBodyBytes` is a 413, a response body
//! over `maxResponseBodyBytes` a 500; oxy's `buffer`: the upstream gets a length, never
//! chunks, and bodies past the memory size wait in a file) and `contentType`
//! (`content_type_test.go`: a response without `Content-Type` gets Go's guess, one with
//! it keeps it).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zw_edge::testkit::{TestEdge, Upstream};

fn config(up: &Upstream, middleware: &str) -> String {
    format!(
        "http:\n  routers:\n    r: {{rule: \"Host(`a.test`)\", service: s, middlewares: [m]}}\n  services:\n    s: {{loadBalancer: {{servers: [{{url: \"{}\"}}]}}}}\n  middlewares:\n    m:\n{middleware}",
        up.url()
    )
}

/// How a request body goes out.
enum Framing {
    Length,
    Chunked,
}

/// One HTTP/1.1 `POST` of `body` to `path`; the status, the lowercased head, the body.
async fn post(
    edge: SocketAddr,
    path: &str,
    body: &[u8],
    framing: Framing,
) -> (u16, String, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(edge).await.unwrap();
    let head = match framing {
        Framing::Length => format!(
            "POST {path} HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        ),
        Framing::Chunked => format!(
            "POST {path} HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n"
        ),
    };
    s.write_all(head.as_bytes()).await.unwrap();
    match framing {
        Framing::Length => {
            // The edge may answer (413) before it has read all of it.
            let _ = s.write_all(body).await;
        }
        Framing::Chunked => {
            for chunk in body.chunks(1000) {
                let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
                if s.write_all(&framed).await.is_err() {
                    break;
                }
            }
            let _ = s.write_all(b"0\r\n\r\n").await;
        }
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
    let body = buf.get(split + 4..).unwrap_or_default().to_vec();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, body)
}

/// A body of `n` bytes that is not all one byte.
fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn buffering_refuses_request_bodies_over_the_maximum_and_sends_the_rest_with_a_length() {
    let up = Upstream::start("u").await;
    let m = "      buffering: {maxRequestBodyBytes: 5000, memRequestBodyBytes: 100}\n";
    let edge = TestEdge::start(&config(&up, m)).await;

    // Declared too large: refused before a byte is read.
    let (status, head, body) = post(edge.addr, "/echo", &payload(5001), Framing::Length).await;
    assert_eq!(status, 413, "{head}");
    assert_eq!(body, b"Request Entity Too Large");
    // Chunked, so only what arrives tells: refused all the same.
    let (status, head, _) = post(edge.addr, "/echo", &payload(6000), Framing::Chunked).await;
    assert_eq!(status, 413, "{head}");
    assert_eq!(up.hits(), 0, "no refused body reached the upstream");

    // At the maximum, chunked, past the memory size (so through the temporary file): the
    // upstream gets every byte, with a length and no chunks.
    let sent = payload(5000);
    let (status, head, body) = post(edge.addr, "/echo", &sent, Framing::Chunked).await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("x-echo-content-length: 5000"), "{head}");
    assert!(head.contains("x-echo-transfer-encoding: none"), "{head}");
    assert_eq!(body, sent, "the body arrives whole and in order");
    // Under the memory size: the same.
    let (status, head, body) = post(edge.addr, "/echo", b"small", Framing::Chunked).await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("x-echo-content-length: 5"), "{head}");
    assert_eq!(body, b"small");
}

#[tokio::test]
async fn buffering_turns_a_response_over_the_maximum_into_a_500() {
    let up = Upstream::start("u").await;
    let m = "      buffering: {maxResponseBodyBytes: 1000, memResponseBodyBytes: 10}\n";
    let edge = TestEdge::start(&config(&up, m)).await;
    let (status, head, _) = post(edge.addr, "/bytes/1001", b"", Framing::Length).await;
    assert_eq!(status, 500, "{head}");
    // At the maximum, spilled to a file past 10 bytes: whole.
    let (status, head, body) = post(edge.addr, "/bytes/1000", b"", Framing::Length).await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("content-length: 1000"), "{head}");
    let want: Vec<u8> = (0..1000).map(|i| b'0' + (i % 10) as u8).collect();
    assert_eq!(body, want);
}

#[tokio::test]
async fn content_type_guesses_a_missing_content_type_from_the_first_bytes() {
    let up = Upstream::start("u").await;
    let edge = TestEdge::start(&config(&up, "      contentType: {}\n")).await;
    // /echo answers with what it got and no Content-Type.
    for (body, want) in [
        (
            &b"<!DOCTYPE html><html><body>hi</body></html>"[..],
            "text/html; charset=utf-8",
        ),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image/png"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"{\"json\": true}", "text/plain; charset=utf-8"),
        (b"\x00\x01\x02\x03", "application/octet-stream"),
    ] {
        let (status, head, got) = post(edge.addr, "/echo", body, Framing::Length).await;
        assert_eq!(status, 200, "{head}");
        assert!(
            head.contains(&format!("content-type: {want}")),
            "{want}: {head}"
        );
        assert_eq!(got, body, "the bytes looked at are still sent");
    }
    // Go sniffs only a write that has bytes: an empty body gets none.
    let (_, head, _) = post(edge.addr, "/echo", b"", Framing::Length).await;
    assert!(!head.contains("content-type"), "{head}");

    // Without the middleware, nothing is guessed (Traefik v3's default).
    let plain = TestEdge::start(&zw_edge::testkit::one_route("Host(`a.test`)", &up.url())).await;
    let (_, head, _) = post(plain.addr, "/echo", b"<html>", Framing::Length).await;
    assert!(!head.contains("content-type"), "{head}");
}
