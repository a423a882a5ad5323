//! HTTP/2 attacks over raw frames (a real client library will not send them): each ends
//! the attacker's connection within a bounded time, and the edge keeps serving everyone
//! else. These held when the edge was attacked on loopback; the tests keep them holding.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zw_edge::testkit::{get, one_route, TestEdge, Upstream};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `GET / ` for `a.test` in HPACK: static-table entries and one literal.
fn request_headers() -> Vec<u8> {
    // :method GET, :scheme http, :path /, then :authority (index 1) as a literal
    let mut h = vec![0x82, 0x86, 0x84, 0x01, 6];
    h.extend_from_slice(b"a.test");
    h
}

async fn open(edge: &TestEdge) -> TcpStream {
    let mut s = TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    s
}

/// Writes `frames` (stopping quietly when the edge has closed), then reads until the
/// edge sends GOAWAY or closes; returns how long that took after the writing began and
/// whether a GOAWAY came.
async fn attack(mut s: TcpStream, frames: impl Iterator<Item = Vec<u8>>) -> (Duration, bool) {
    let started = Instant::now();
    let (mut rd, mut wr) = s.split();
    let write = async {
        for f in frames {
            if wr.write_all(&f).await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await
    };
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return has_goaway(&buf),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if has_goaway(&buf) {
                return true;
            }
        }
    };
    let goaway = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            g = read => g,
            _ = write => unreachable!(),
        }
    })
    .await
    .expect("the edge neither sent GOAWAY nor closed within 10 s");
    (started.elapsed(), goaway)
}

fn has_goaway(buf: &[u8]) -> bool {
    let mut at = 0;
    while let Some(head) = buf.get(at..at + 9) {
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        if head[3] == GOAWAY {
            return true;
        }
        at += 9 + len;
    }
    false
}

async fn still_serves(edge: &TestEdge) {
    assert_eq!(
        get(edge.addr, "a.test", "/").await.status,
        200,
        "others are served"
    );
}

/// Rapid reset (CVE-2023-44487): streams opened and reset at once, thousands of times.
#[tokio::test]
async fn rapid_reset_gets_goaway() {
    let up = Upstream::start("u").await;
    let edge = TestEdge::start(&one_route("PathPrefix(`/`)", &up.url())).await;
    let s = open(&edge).await;
    let frames = (0..5_000u32).flat_map(|i| {
        let id = 2 * i + 1;
        [
            frame(HEADERS, END_HEADERS | END_STREAM, id, &request_headers()),
            frame(RST_STREAM, 0, id, &8u32.to_be_bytes()),
        ]
    });
    let (took, goaway) = attack(s, frames).await;
    assert!(goaway, "GOAWAY after {took:?}");
    still_serves(&edge).await;
    // far fewer than the 5,000 requests reached the upstream
    assert!(
        up.hits() < 1_000,
        "{} requests reached the upstream",
        up.hits()
    );
    edge.shutdown().await;
}

/// CONTINUATION flood: a header block that never ends.
#[tokio::test]
async fn an_endless_header_block_is_cut_off() {
    let up = Upstream::start("u").await;
    let edge = TestEdge::start(&one_route("PathPrefix(`/`)", &up.url())).await;
    let s = open(&edge).await;
    let mut literal = vec![0x00, 4];
    literal.extend_from_slice(b"x-aa");
    literal.push(0x7f);
    literal.push(0x81);
    literal.push(0x07); // length 0x7f + 0x81 + 7*128 = 1024
    literal.extend(std::iter::repeat_n(b'a', 1024));
    let first = frame(HEADERS, 0, 1, &request_headers());
    let frames =
        std::iter::once(first).chain((0..20_000).map(move |_| frame(CONTINUATION, 0, 1, &literal)));
    let (took, _) = attack(s, frames).await;
    assert!(took < Duration::from_secs(5), "cut off after {took:?}");
    still_serves(&edge).await;
    edge.shutdown().await;
}

/// Zero-length DATA frames without end: nothing to read, endless work to do.
#[tokio::test]
async fn empty_data_frames_do_not_hold_the_edge() {
    let up = Upstream::start("u").await;
    let edge = TestEdge::start(&one_route("PathPrefix(`/`)", &up.url())).await;
    let mut s = open(&edge).await;
    // a POST whose body never comes: :method POST is static index 3
    let mut h = vec![0x83, 0x86, 0x84, 0x01, 6];
    h.extend_from_slice(b"a.test");
    s.write_all(&frame(HEADERS, END_HEADERS, 1, &h))
        .await
        .unwrap();
    let started = Instant::now();
    let mut sent = 0u32;
    // bounded in count and time
    while sent < 200_000 && started.elapsed() < Duration::from_secs(3) {
        let burst: Vec<u8> = (0..1000).flat_map(|_| frame(DATA, 0, 1, &[])).collect();
        if s.write_all(&burst).await.is_err() {
            break;
        }
        sent += 1000;
    }
    // whatever the edge chose (GOAWAY, or absorbing them), everyone else is served
    still_serves(&edge).await;
    drop(s);
    edge.shutdown().await;
}

/// An HPACK bomb: a header block that asks for a huge dynamic table, then a header list
/// past the limit built from one small indexed entry repeated.
#[tokio::test]
async fn an_hpack_bomb_is_refused() {
    let up = Upstream::start("u").await;
    let edge = TestEdge::start(&one_route("PathPrefix(`/`)", &up.url())).await;
    let s = open(&edge).await;
    // a 4 KiB literal added to the dynamic table (incremental indexing, new name)...
    let mut block = request_headers();
    block.extend_from_slice(&[0x40, 4]);
    block.extend_from_slice(b"x-bb");
    block.extend_from_slice(&[0x7f, 0x81, 0x1f]); // 0x7f + 0x81 + 31*128 = 4096
    block.extend(std::iter::repeat_n(b'b', 4096));
    // ...then referenced 10,000 times (dynamic index 62), 40 MB once decoded
    block.extend(std::iter::repeat_n(0xbe, 10_000));
    let frames = block
        .chunks(16_000)
        .enumerate()
        .map(|(i, c)| {
            let last = (i + 1) * 16_000 >= block.len();
            let flags = if last { END_HEADERS | END_STREAM } else { 0 };
            frame(if i == 0 { HEADERS } else { CONTINUATION }, flags, 1, c)
        })
        .collect::<Vec<_>>();
    let (took, _) = attack(s, frames.into_iter()).await;
    assert!(took < Duration::from_secs(5), "refused after {took:?}");
    assert_eq!(up.hits(), 0, "the bomb reached no upstream");
    still_serves(&edge).await;
    edge.shutdown().await;
}

/// A client that opens a stream with a zero flow-control window and never raises it: the
/// response is held back, and once the write timeout passes without the client taking
/// data, the stream is reset and the exchange (with its upstream connection) released —
/// where it once held the upstream connection for as long as the client liked. A client
/// that reads gets the whole body.
#[tokio::test]
async fn a_stream_with_a_closed_window_is_reset_and_its_upstream_released() {
    let up = Upstream::start("u").await;
    let builder =
        zw_edge::Edge::builder(vec!["web".into()]).write_timeout(Duration::from_millis(300));
    let edge = TestEdge::start_built(
        &one_route("PathPrefix(`/`)", &up.url()),
        Duration::from_secs(5),
        builder,
    )
    .await;
    let mut s = TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    // SETTINGS_INITIAL_WINDOW_SIZE (0x4) = 0
    s.write_all(&frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]))
        .await
        .unwrap();
    let mut h = vec![0x82, 0x86, 0x04, 13];
    h.extend_from_slice(b"/bytes/400000");
    h.extend_from_slice(&[0x01, 6]);
    h.extend_from_slice(b"a.test");
    s.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &h))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let reset = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if frames(&buf).any(|(kind, stream)| kind == RST_STREAM && stream == 1) {
                return true;
            }
        }
    })
    .await
    .expect("no reset within 10 s");
    assert!(
        reset,
        "the edge closed the connection instead of resetting the stream"
    );
    let metrics = get(edge.admin, "admin", "/metrics").await.body;
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(u64::MAX)
    };
    assert_eq!(
        value("zeitwork_http2_streams_stalled_total"),
        1,
        "{metrics}"
    );
    assert_eq!(
        value("zeitwork_requests_in_flight"),
        0,
        "the exchange is released"
    );

    // a client that reads is not cut, however long the body
    let mut c = zw_edge::testkit::Client::h2(edge.addr).await.unwrap();
    let r = c.get("a.test", "/bytes/4000000").await.unwrap();
    assert_eq!((r.status, r.body.len()), (200, 4_000_000));
    edge.shutdown().await;
}

/// (type, stream) of each whole frame in `buf`.
fn frames(buf: &[u8]) -> impl Iterator<Item = (u8, u32)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let head = buf.get(at..at + 9)?;
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        at += 9 + len;
        Some((head[3], stream))
    })
}
