//! Property tests: any response the generators can write — every status class, both
//! versions, any header names and values (with tabs and obs-text), bodies framed by
//! length, by chunks (with extensions and trailers) or by the close, informational
//! responses in front — parses back to what was written, however the bytes are split
//! as they arrive. Any request head the edge writes parses, with one framing, as what it
//! was made from.

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use proptest::prelude::*;
use zw_h1::{parse_head, response_framing, write_head, Framing, Out, Step};

#[derive(Debug, Clone)]
enum BodyFraming {
    Length,
    Chunked {
        ext: bool,
        trailers: Vec<(String, String)>,
    },
    Close,
}

fn token() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9!#$%&'*+.^_`|~-]{0,15}".prop_filter("not a framing header", |n| {
        !matches!(
            n.as_str(),
            "content-length" | "transfer-encoding" | "connection" | "trailer"
        )
    })
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    // visible ASCII, spaces and tabs inside, obs-text; no leading or trailing whitespace
    prop::collection::vec(
        prop_oneof![0x21u8..0x7f, Just(b' '), Just(b'\t'), 0x80u8..=0xff],
        0..40,
    )
    .prop_map(|mut v| {
        while v.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            v.remove(0);
        }
        while v.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
            v.pop();
        }
        v
    })
}

fn framing() -> impl Strategy<Value = BodyFraming> {
    prop_oneof![
        Just(BodyFraming::Length),
        (
            any::<bool>(),
            prop::collection::vec((token(), "[a-z0-9]{0,8}"), 0..3)
        )
            .prop_map(|(ext, trailers)| BodyFraming::Chunked { ext, trailers }),
        Just(BodyFraming::Close),
    ]
}

#[derive(Debug, Clone)]
struct Written {
    informational: Vec<u16>,
    status: u16,
    http10: bool,
    headers: Vec<(String, Vec<u8>)>,
    framing: BodyFraming,
    chunks: Vec<Vec<u8>>,
}

fn response() -> impl Strategy<Value = Written> {
    (
        prop::collection::vec(prop_oneof![Just(100u16), Just(102), Just(103)], 0..3),
        prop_oneof![200u16..=208, 300u16..=308, 400u16..=451, 500u16..=511],
        any::<bool>(),
        prop::collection::vec((token(), value()), 0..12),
        framing(),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..5),
    )
        .prop_map(
            |(informational, status, http10, headers, framing, chunks)| {
                // 204 and 304 have no body (RFC 9112 §6.3 rule 1)
                let bodiless = status == 204 || status == 304;
                let (framing, chunks) = if bodiless {
                    (BodyFraming::Length, Vec::new())
                } else {
                    (framing, chunks)
                };
                Written {
                    informational,
                    status,
                    // chunked needs HTTP/1.1
                    http10: http10 && !matches!(framing, BodyFraming::Chunked { .. }),
                    headers,
                    framing,
                    chunks,
                }
            },
        )
}

fn wire(w: &Written) -> Vec<u8> {
    let mut out = Vec::new();
    for code in &w.informational {
        out.extend_from_slice(format!("HTTP/1.1 {code} Info\r\nx-info: 1\r\n\r\n").as_bytes());
    }
    let version = if w.http10 { "1.0" } else { "1.1" };
    out.extend_from_slice(format!("HTTP/{version} {} Some Reason\r\n", w.status).as_bytes());
    for (n, v) in &w.headers {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    let body: Vec<u8> = w.chunks.concat();
    match &w.framing {
        BodyFraming::Length => {
            out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            out.extend_from_slice(&body);
        }
        BodyFraming::Chunked { ext, trailers } => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for c in &w.chunks {
                let e = if *ext { ";name=value" } else { "" };
                out.extend_from_slice(format!("{:X}{e}\r\n", c.len()).as_bytes());
                out.extend_from_slice(c);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n");
            for (n, v) in trailers {
                out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Close => {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&body);
        }
    }
    out
}

/// Reads a response from `wire` arriving in pieces of `step` bytes: the final head, the
/// body, the trailers, and what was left after the body.
fn read(wire: &[u8], step: usize) -> (zw_h1::Head, Vec<u8>, Option<HeaderMap>, usize) {
    let mut pieces = wire.chunks(step);
    let mut buf = BytesMut::new();
    let mut more = |buf: &mut BytesMut| match pieces.next() {
        Some(p) => {
            buf.extend_from_slice(p);
            true
        }
        None => false,
    };
    let mut head = loop {
        match parse_head(&mut buf).expect("a head the generator wrote parses") {
            Some(h) if h.status.is_informational() => continue,
            Some(h) => break h,
            None => assert!(more(&mut buf), "the head ended early"),
        }
    };
    let mut framing =
        response_framing(&Method::GET, head.status, head.version, &mut head.headers).unwrap();
    let mut body = Vec::new();
    let mut trailers = None;
    loop {
        match &mut framing {
            Framing::Done => break,
            Framing::Length(left) => {
                if buf.is_empty() {
                    assert!(more(&mut buf), "the body ended early");
                    continue;
                }
                let n = (*left).min(buf.len() as u64) as usize;
                body.extend_from_slice(&buf.split_to(n));
                *left -= n as u64;
                if *left == 0 {
                    framing = Framing::Done;
                }
            }
            Framing::Close => {
                body.extend_from_slice(&buf.split());
                if !more(&mut buf) {
                    framing = Framing::Done;
                }
            }
            Framing::Chunked(c) => match c.step(&mut buf).expect("chunks parse") {
                Step::Data(d) => body.extend_from_slice(&d),
                Step::Trailers(t) => {
                    trailers = Some(t);
                    framing = Framing::Done;
                }
                Step::End => framing = Framing::Done,
                Step::More => assert!(more(&mut buf), "the chunks ended early"),
            },
        }
    }
    let mut left = buf.len();
    while more(&mut buf) {
        left = buf.len();
    }
    (head, body, trailers, left)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn responses_read_back_as_written(w in response(), step in 1usize..64) {
        let bytes = wire(&w);
        let (head, body, trailers, left) = read(&bytes, step);
        prop_assert_eq!(head.status, StatusCode::from_u16(w.status).unwrap());
        prop_assert_eq!(head.version, if w.http10 { Version::HTTP_10 } else { Version::HTTP_11 });
        for (n, v) in &w.headers {
            let got: Vec<&[u8]> = head.headers.get_all(n.as_str()).iter().map(HeaderValue::as_bytes).collect();
            prop_assert!(got.contains(&v.as_slice()), "{} lost", n);
        }
        prop_assert_eq!(body, w.chunks.concat());
        prop_assert_eq!(left, 0);
        if let BodyFraming::Chunked { trailers: sent, .. } = &w.framing {
            if sent.is_empty() {
                prop_assert!(trailers.is_none());
            } else {
                let got = trailers.expect("trailers");
                for (n, v) in sent {
                    prop_assert!(got.get_all(n.as_str()).iter().any(|x| x == v.as_str()));
                }
            }
        }
    }

    /// Whatever is cut off a valid response, reading never claims more than is there.
    #[test]
    fn truncated_heads_are_incomplete_never_wrong(w in response(), cut in 0usize..400) {
        let bytes = wire(&w);
        let cut = cut.min(bytes.len());
        let mut buf = BytesMut::from(&bytes[..cut]);
        let before = buf.len();
        if let Ok(Some(_)) = parse_head(&mut buf) {
            prop_assert!(buf.len() < before);
        }
    }

    #[test]
    fn request_heads_have_one_framing_and_say_what_they_were_made_from(
        method in prop_oneof![Just(Method::GET), Just(Method::POST), Just(Method::PUT), Just(Method::PATCH), Just(Method::DELETE), Just(Method::HEAD), Just(Method::OPTIONS)],
        path in "/[a-zA-Z0-9/._~%!$&'()*+,;=:@-]{0,40}(\\?[a-z0-9=&]{0,20})?",
        headers in prop::collection::vec((token(), value()), 0..10),
        client_framing in prop_oneof![Just(None), Just(Some(("content-length", "7"))), Just(Some(("transfer-encoding", "chunked")))],
        out in prop_oneof![Just(Out::None), (0u64..u64::MAX).prop_map(Out::Length), Just(Out::Chunked)],
    ) {
        let mut req = http::Request::builder().method(method.clone()).uri(path.as_str()).header("host", "up.test");
        for (n, v) in &headers {
            req = req.header(n.as_str(), HeaderValue::from_bytes(v).unwrap());
        }
        if let Some((n, v)) = client_framing {
            req = req.header(n, v);
        }
        let (parts, ()) = req.body(()).unwrap().into_parts();
        let mut buf = Vec::new();
        write_head(&mut buf, &parts, out);
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut fields);
        let n = parsed.parse(&buf).unwrap();
        prop_assert_eq!(n, httparse::Status::Complete(buf.len()));
        prop_assert_eq!(parsed.method, Some(method.as_str()));
        prop_assert_eq!(parsed.path, Some(path.as_str()));
        let count = |name: &str| parsed.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).count();
        let (cl, te) = (count("content-length"), count("transfer-encoding"));
        match out {
            Out::Length(len) => {
                prop_assert_eq!((cl, te), (1, 0));
                let v = parsed.headers.iter().find(|h| h.name == "content-length").unwrap().value;
                let want = len.to_string();
                prop_assert_eq!(v, want.as_bytes());
            }
            Out::Chunked => prop_assert_eq!((cl, te), (0, 1)),
            Out::None => {
                prop_assert_eq!(te, 0);
                prop_assert!(cl <= 1);
            }
        }
        for (name, v) in &headers {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            prop_assert!(parsed.headers.iter().any(|h| h.name == name.as_str() && h.value == v.as_slice()));
        }
    }
}
