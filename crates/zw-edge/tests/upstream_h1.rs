//! The edge's HTTP/1.1 upstream side against raw upstreams that script their answers
//! byte for byte and record every byte the edge sends them: every way a response can be
//! framed (RFC 9112 §6.3), keep-alive and its races, and that nothing the edge writes can
//! be read by the upstream as a request the client did not make.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use zw_edge::testkit::{one_route, Client, TestEdge};

/// What the upstream does with one request.
enum Reply {
    /// These bytes; the connection stays open.
    Send(&'static [u8]),
    /// These bytes, then close.
    SendClose(&'static [u8]),
    /// Close without a byte (a server that timed the connection out as it arrived).
    Close,
}

/// One request as the upstream read it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    head: String,
    body: Vec<u8>,
}

type Script = dyn Fn(usize, usize, &Seen) -> Reply + Send + Sync;

/// An upstream that parses what arrives strictly (one framing per request, or the test
/// fails) and answers by script: `(connection index, request index on it, request)`.
struct Raw {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    /// Every request, per connection.
    seen: Arc<Mutex<Vec<Vec<Seen>>>>,
    /// Bytes that were not a whole request when their connection ended.
    leftovers: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Raw {
    async fn start(script: impl Fn(usize, usize, &Seen) -> Reply + Send + Sync + 'static) -> Raw {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let leftovers = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let (a, s, l) = (accepts.clone(), seen.clone(), leftovers.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let index = a.fetch_add(1, Ordering::SeqCst);
                s.lock().unwrap().push(Vec::new());
                let (s, l, script) = (s.clone(), l.clone(), script.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut n = 0;
                    'conn: loop {
                        while let Some((req, used)) = parse_request(&buf) {
                            buf.drain(..used);
                            s.lock().unwrap()[index].push(req.clone());
                            let reply = script(index, n, &req);
                            n += 1;
                            match reply {
                                Reply::Send(b) => {
                                    if conn.write_all(b).await.is_err() {
                                        break 'conn;
                                    }
                                }
                                Reply::SendClose(b) => {
                                    let _ = conn.write_all(b).await;
                                    break 'conn;
                                }
                                Reply::Close => break 'conn,
                            }
                        }
                        let mut chunk = [0u8; 4096];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    if !buf.is_empty() {
                        l.lock().unwrap().push(buf);
                    }
                });
            }
        });
        Raw {
            addr,
            accepts,
            seen,
            leftovers,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    fn all(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Every byte the edge sent was a whole request, framed one way.
    fn assert_clean(&self) {
        let left = self.leftovers.lock().unwrap();
        assert!(
            left.iter().all(|b| b.is_empty()),
            "the upstream got bytes that were not a whole request: {:?}",
            left.iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect::<Vec<_>>()
        );
    }
}

/// One whole request off the front of `buf`, strictly: a head, then a body framed by
/// exactly one of Content-Length and chunked. Panics on anything a server could read two
/// ways.
fn parse_request(buf: &[u8]) -> Option<(Seen, usize)> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut fields);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return None,
        Err(e) => panic!(
            "the upstream got a malformed request ({e}): {:?}",
            String::from_utf8_lossy(buf)
        ),
    };
    let header = |name: &str| -> Vec<String> {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
            .collect()
    };
    let (lengths, te) = (header("content-length"), header("transfer-encoding"));
    assert!(
        lengths.is_empty() || te.is_empty(),
        "both Content-Length and Transfer-Encoding: {:?}",
        String::from_utf8_lossy(&buf[..head_len])
    );
    assert!(lengths.len() <= 1, "two Content-Lengths");
    assert!(
        te.iter().all(|t| t == "chunked"),
        "Transfer-Encoding {te:?}"
    );
    let rest = &buf[head_len..];
    let (body, used) = if !te.is_empty() {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let line_end = rest[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size_text = String::from_utf8_lossy(&rest[at..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
            at = line_end + 2;
            if size == 0 {
                // no trailers expected from the edge in these tests, or any trailer lines
                let end = rest[at..].windows(2).position(|w| w == b"\r\n")? + at;
                if end != at {
                    let all = rest[at..].windows(4).position(|w| w == b"\r\n\r\n")? + at;
                    at = all + 4;
                } else {
                    at += 2;
                }
                break (body, head_len + at);
            }
            if rest.len() < at + size + 2 {
                return None;
            }
            body.extend_from_slice(&rest[at..at + size]);
            assert_eq!(
                &rest[at + size..at + size + 2],
                b"\r\n",
                "chunk not ended by CRLF"
            );
            at += size + 2;
        }
    } else {
        let n: usize = lengths
            .first()
            .map_or(0, |l| l.parse().expect("a numeric length"));
        if rest.len() < n {
            return None;
        }
        (rest[..n].to_vec(), head_len + n)
    };
    Some((
        Seen {
            method: req.method.unwrap_or_default().to_string(),
            path: req.path.unwrap_or_default().to_string(),
            head: String::from_utf8_lossy(&buf[..head_len]).to_lowercase(),
            body,
        },
        used,
    ))
}

async fn edge_for(up: &Raw) -> TestEdge {
    TestEdge::start(&one_route("PathPrefix(`/`)", &up.url())).await
}

/// Sends `raw` to the edge and reads until it closes; the answer as text.
async fn raw(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// A response without a length ends when the upstream closes (RFC 9112 §6.3 rule 8);
/// that connection is not reused.
#[tokio::test]
async fn a_response_that_ends_by_closing_is_whole_and_its_connection_not_reused() {
    let up = Raw::start(|_, _, _| {
        Reply::SendClose(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end")
    })
    .await;
    let edge = edge_for(&up).await;
    let mut c = Client::h1(edge.addr).await.unwrap();
    for _ in 0..3 {
        let r = c.get("a.test", "/").await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "until the end"));
    }
    assert_eq!(
        up.accepts(),
        3,
        "one connection per close-delimited response"
    );
    up.assert_clean();
    edge.shutdown().await;
}

/// Chunks are decoded and re-framed for the client, trailers reach a client that asked
/// for them (`TE: trailers`), and the connection is reused afterwards.
#[tokio::test]
async fn chunked_responses_with_trailers_pass_and_keep_the_connection() {
    let up = Raw::start(|_, _, _| {
        Reply::Send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-sum: 42\r\n\r\n")
    })
    .await;
    let edge = edge_for(&up).await;
    let resp = raw(
        edge.addr,
        b"GET / HTTP/1.1\r\nhost: a.test\r\nte: trailers\r\n\r\nGET / HTTP/1.1\r\nhost: a.test\r\nte: trailers\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.matches("HTTP/1.1 200 OK").count(), 2, "{resp}");
    let first = resp.split("HTTP/1.1 200").nth(1).unwrap().to_lowercase();
    assert!(first.contains("transfer-encoding: chunked"), "{first}");
    assert!(
        first.contains("hello") && first.contains(" world"),
        "{first}"
    );
    assert!(first.contains("x-sum: 42"), "trailers went on: {first}");
    assert_eq!(
        up.accepts(),
        1,
        "the connection was reused after the last chunk"
    );
    up.assert_clean();
    edge.shutdown().await;
}

/// `100 Continue` and `103 Early Hints` before the answer are read past; the client gets
/// the final response.
#[tokio::test]
async fn informational_responses_come_before_the_answer() {
    let up = Raw::start(|_, _, _| {
        Reply::Send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\ndone")
    })
    .await;
    let edge = edge_for(&up).await;
    let mut c = Client::h1(edge.addr).await.unwrap();
    for _ in 0..2 {
        let req = http::Request::post("/")
            .header("host", "a.test")
            .header("expect", "100-continue")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let r = c.send(req).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (201, "done"));
    }
    assert_eq!(up.accepts(), 1);
    assert!(up.all().iter().all(|s| s.body == b"payload"));
    up.assert_clean();
    edge.shutdown().await;
}

/// HEAD, 204 and 304 have no body whatever their headers say (RFC 9112 §6.3 rule 1): the
/// edge answers at once and the next request reuses the connection.
#[tokio::test]
async fn head_204_and_304_end_at_their_head() {
    let up = Raw::start(|_, _, seen| {
        Reply::Send(match (seen.method.as_str(), seen.path.as_str()) {
            ("HEAD", _) => b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n",
            (_, "/204") => b"HTTP/1.1 204 No Content\r\n\r\n",
            (_, "/304") => {
                b"HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\ncontent-length: 1000\r\n\r\n"
            }
            _ => OK,
        })
    })
    .await;
    let edge = edge_for(&up).await;
    let mut c = Client::h1(edge.addr).await.unwrap();
    let head = http::Request::head("/")
        .header("host", "a.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), c.send(head))
        .await
        .expect("no wait for a HEAD body")
        .unwrap();
    assert_eq!((r.status, r.header("content-length")), (200, Some("1000")));
    for (path, status) in [("/204", 204), ("/304", 304), ("/", 200)] {
        let r = tokio::time::timeout(Duration::from_secs(5), c.get("a.test", path))
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(r.status, status, "{path}");
        assert_eq!(r.body, if status == 200 { "ok" } else { "" });
    }
    assert_eq!(up.accepts(), 1, "one connection served all four");
    up.assert_clean();
    edge.shutdown().await;
}

/// An upstream that closes an idle pooled connection just as the edge reuses it (it read
/// the request and closed without a byte): a GET goes again on a new connection and the
/// client never sees an error; a POST, whose bytes were sent, is not sent twice.
#[tokio::test]
async fn an_idle_connection_closed_as_it_is_reused_is_retried_when_replayable() {
    // On every connection: answer the first request, close on the second.
    let up = Raw::start(|_, n, _| {
        if n == 0 {
            Reply::Send(OK)
        } else {
            Reply::Close
        }
    })
    .await;
    let edge = edge_for(&up).await;
    let mut c = Client::h1(edge.addr).await.unwrap();
    for i in 0..6 {
        let r = c.get("a.test", &format!("/{i}")).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "ok"), "request {i}");
    }
    let gets = up.all();
    assert!(
        gets.iter().filter(|s| s.path == "/1").count() == 2,
        "/1 went twice: once to the closing connection, once again"
    );

    let post = http::Request::post("/pay")
        .header("host", "a.test")
        .body(Full::new(Bytes::from_static(b"once")))
        .unwrap();
    let r = c.send(post).await.unwrap();
    assert_eq!(
        r.status, 502,
        "a non-idempotent request whose bytes left is not replayed"
    );
    let posts = up.all().into_iter().filter(|s| s.method == "POST").count();
    assert_eq!(posts, 1, "the upstream saw the POST once");
    up.assert_clean();
    edge.shutdown().await;
}

/// An upstream that closes idle connections after a moment: the edge notices at checkout
/// and connects anew, without sending anything to the closed one.
#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_used() {
    let up = Raw::start(|_, _, _| Reply::SendClose(OK)).await;
    let edge = edge_for(&up).await;
    let mut c = Client::h1(edge.addr).await.unwrap();
    for _ in 0..4 {
        let post = http::Request::post("/")
            .header("host", "a.test")
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap();
        let r = c.send(post).await.unwrap();
        assert_eq!(r.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(up.all().len(), 4, "each POST reached the upstream once");
    assert_eq!(up.accepts(), 4);
    up.assert_clean();
    edge.shutdown().await;
}

/// Response framing that could desynchronise the connection: bytes after a body, a
/// length and chunking together, conflicting lengths, a transfer coding the edge cannot
/// undo. The edge never reads the next answer from the wrong place.
#[tokio::test]
async fn ambiguous_response_framing_never_desynchronises_the_connection() {
    let up = Raw::start(|_, _, seen| {
        Reply::Send(match seen.path.as_str() {
            // five bytes of body, then the start of a forged response
            "/extra" => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged",
            "/both" => b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "/two-lengths" => b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 5\r\n\r\nhello",
            "/gzip" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nxx",
            "/folded" => b"HTTP/1.1 200 OK\r\nx-a: b\r\n c\r\ncontent-length: 2\r\n\r\nok",
            _ => OK,
        })
    })
    .await;
    let edge = edge_for(&up).await;
    let mut c = Client::h1(edge.addr).await.unwrap();
    let r = c.get("a.test", "/extra").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "hello"));
    let r = c.get("a.test", "/").await.unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "ok"),
        "not the forged response"
    );
    let r = c.get("a.test", "/both").await.unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello"),
        "chunked wins over the length"
    );
    assert_eq!(r.header("content-length"), None);
    for path in ["/two-lengths", "/gzip", "/folded"] {
        let r = c.get("a.test", path).await.unwrap();
        assert_eq!(r.status, 502, "{path}");
    }
    let r = c.get("a.test", "/").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    up.assert_clean();
    edge.shutdown().await;
}

/// What the upstream reads is exactly the requests the client made, one framing each:
/// a client's Content-Length is the length of what is sent; an HTTP/2 body without one
/// goes chunked; a client's chunked body with a Content-Length beside it goes once; a
/// `Transfer-Encoding` the client sends never reaches the upstream beside a length.
#[tokio::test]
async fn the_upstream_reads_only_the_requests_the_client_made() {
    let up = Raw::start(|_, _, _| Reply::Send(OK)).await;
    let edge = edge_for(&up).await;

    // HTTP/1.1, length and chunked, pipelined, with bytes after the last that are not a
    // request to the edge either.
    let resp = raw(
        edge.addr,
        b"POST /a HTTP/1.1\r\nhost: a.test\r\ncontent-length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nPOST /c HTTP/1.1\r\nhost: a.test\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n2\r\nxy\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a.test\r\n\r\n",
    )
    .await;
    assert_eq!(resp.matches("HTTP/1.1 200 OK").count(), 3, "{resp}");

    // HTTP/2 with and without a length.
    let mut h2 = Client::h2(edge.addr).await.unwrap();
    let with_len = http::Request::post("http://a.test/d")
        .header("content-length", "4")
        .body(Full::new(Bytes::from_static(b"four")))
        .unwrap();
    assert_eq!(h2.send(with_len).await.unwrap().status, 200);

    let seen = up.all();
    let got: Vec<(&str, &[u8])> = seen
        .iter()
        .map(|s| (s.path.as_str(), s.body.as_slice()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("/a", &b"hello"[..]),
            ("/b", b"abc"),
            ("/c", b"xy"),
            ("/d", b"four")
        ],
        "exactly the client's requests, bodies intact"
    );
    assert!(seen.iter().all(|s| !s.path.contains("smuggled")));
    up.assert_clean();
    edge.shutdown().await;
}

/// A body streamed with no length (HTTP/2 without `content-length`) goes up chunked and
/// ends with the last chunk; the connection then serves the next request.
#[tokio::test]
async fn a_body_of_unknown_length_goes_up_chunked() {
    let up = Raw::start(|_, _, _| Reply::Send(OK)).await;
    let edge = edge_for(&up).await;
    let s = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let (sender, body) = {
        let (s, r) = tokio::sync::mpsc::channel::<
            Result<http_body::Frame<Bytes>, std::convert::Infallible>,
        >(4);
        (s, http_body_util::StreamBody::new(tokio_stream_like(r)))
    };
    let req = http::Request::post("http://a.test/stream")
        .body(body)
        .unwrap();
    let pending = tokio::spawn(async move { tx.send_request(req).await.map(|r| r.status()) });
    for part in [&b"one "[..], b"two ", b"three"] {
        sender
            .send(Ok(http_body::Frame::data(Bytes::from_static(part))))
            .await
            .unwrap();
    }
    drop(sender);
    let status = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    let seen = up.all();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].head.contains("transfer-encoding: chunked"),
        "{}",
        seen[0].head
    );
    assert!(!seen[0].head.contains("content-length"), "{}", seen[0].head);
    assert_eq!(seen[0].body, b"one two three");
    up.assert_clean();
    edge.shutdown().await;
}

/// A receiver as a stream of frames (no extra crate for one test).
fn tokio_stream_like<T>(
    mut r: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| r.poll_recv(cx))
}
