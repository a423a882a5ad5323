//! HTTP/1.1 message framing for the edge's upstream side (RFC 9112): the request head
//! the edge writes, and the response head and body framing it reads. Pure functions over
//! buffers; the edge's `h1` module does the I/O.
//!
//! Where the RFC leaves a choice, Go's `net/http` (what Traefik runs) decides: a
//! `Transfer-Encoding` other than `chunked` is refused (`transfer.go`,
//! `parseTransferEncoding`), differing `Content-Length`s are refused, and
//! `Transfer-Encoding` wins over `Content-Length`, which is then dropped.

use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// The largest response head read (status line and headers). Go allows 1 MiB, nginx's
/// `proxy_buffer_size` 4–8 KiB: this is large enough for any sane cookie set and small
/// enough to bound a hostile upstream.
pub const MAX_HEAD: usize = 64 * 1024;
/// At most this many header fields in a response head (hyper's default is 100).
pub const MAX_HEADERS: usize = 128;
/// A chunk-size line (with its extensions) longer than this is refused.
pub const MAX_CHUNK_LINE: usize = 4096;
/// The trailer section of a chunked response.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Why a response could not be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid or conflicting Content-Length in the response")]
    ContentLength,
    #[error("unsupported Transfer-Encoding in the response (only `chunked` is)")]
    TransferEncoding,
    #[error("malformed chunked response body: {0}")]
    Chunked(&'static str),
}

/// How the request body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    None,
    Length(u64),
    Chunked,
}

/// The request head for `parts`, into `buf` (cleared first): the request line in origin
/// form, the headers but the client's `Content-Length` and `Transfer-Encoding`, and the
/// framing `out` says. The edge frames the body itself, so a body can never be read two
/// ways.
pub fn write_head(buf: &mut Vec<u8>, parts: &http::request::Parts, out: Out) {
    buf.clear();
    buf.extend_from_slice(parts.method.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    if !parts.headers.contains_key(header::HOST) {
        if let Some(a) = parts.uri.authority() {
            buf.extend_from_slice(b"host: ");
            buf.extend_from_slice(a.as_str().as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
    }
    for (name, value) in &parts.headers {
        // The edge frames the body itself.
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    match out {
        Out::Length(n) => {
            buf.extend_from_slice(b"content-length: ");
            buf.extend_from_slice(itoa(n, &mut [0; 20]));
            buf.extend_from_slice(b"\r\n");
        }
        Out::Chunked => buf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // Methods whose requests normally carry a body say that this one has none, as
        // hyper and Go do.
        Out::None if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) => {
            buf.extend_from_slice(b"content-length: 0\r\n")
        }
        Out::None => {}
    }
    buf.extend_from_slice(b"\r\n");
}

pub fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// A response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: http::Version,
    pub headers: HeaderMap,
}

/// A chunk size in hex, without allocating.
pub fn hex(n: u64) -> HexBuf {
    let mut b = HexBuf {
        buf: [0; 16],
        start: 16,
    };
    let mut n = n;
    loop {
        b.start -= 1;
        b.buf[b.start] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            return b;
        }
    }
}

pub struct HexBuf {
    buf: [u8; 16],
    start: usize,
}

impl HexBuf {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Parses a complete response head off the front of `buf`; `None` when more is needed.
/// Header values are slices of the one buffer the head was read into: no copies.
pub fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Error::Head(e)),
    };
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(Error::Head(httparse::Error::Status))?;
    let version = match resp.version {
        Some(0) => http::Version::HTTP_10,
        _ => http::Version::HTTP_11,
    };
    // Where each name and value sits in the buffer, to slice the frozen head.
    let base = buf.as_ptr() as usize;
    let mut spans = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
    let count = resp.headers.len();
    for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
        let n = h.name.as_ptr() as usize - base;
        let v = h.value.as_ptr() as usize - base;
        *span = (n, n + h.name.len(), v, v + h.value.len());
    }
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        buf.advance(len);
        return Ok(Some(Head {
            status,
            version,
            headers: HeaderMap::new(),
        }));
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for &(n0, n1, v0, v1) in spans.iter().take(count) {
        let name = head
            .get(n0..n1)
            .and_then(|n| HeaderName::from_bytes(n).ok())
            .ok_or(Error::Head(httparse::Error::HeaderName))?;
        let value = HeaderValue::from_maybe_shared(head.slice(v0..v1))
            .map_err(|_| Error::Head(httparse::Error::HeaderValue))?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        status,
        version,
        headers,
    }))
}

/// How the response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// It has ended (or never began: HEAD, 204, 304).
    Done,
    Length(u64),
    Chunked(Chunk),
    /// At the upstream's close (no length given); the connection cannot be reused.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// RFC 9112 §6.3, in its order.
pub fn response_framing(
    method: &Method,
    status: StatusCode,
    version: http::Version,
    headers: &mut HeaderMap,
) -> Result<Framing, Error> {
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Done);
    }
    // Go ignores Transfer-Encoding in HTTP/1.0 messages (its issue 12785).
    if version != http::Version::HTTP_10 {
        let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
        if let Some(v) = te.next() {
            if te.next().is_some() || !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(Error::TransferEncoding);
            }
            // Transfer-Encoding overrides Content-Length, which would mislead the client.
            headers.remove(header::CONTENT_LENGTH);
            return Ok(Framing::Chunked(Chunk::Size));
        }
    }
    let mut length = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        let n = parse_length(v.as_bytes()).ok_or(Error::ContentLength)?;
        if length.is_some_and(|l| l != n) {
            return Err(Error::ContentLength);
        }
        length = Some(n);
    }
    Ok(match length {
        Some(0) => Framing::Done,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

/// Digits only (no sign, no spaces inside), at most 19 of them.
pub fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

pub fn keeps_alive(version: http::Version, headers: &HeaderMap) -> bool {
    let says = |token: &str| {
        headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if version == http::Version::HTTP_10 {
        says("keep-alive")
    } else {
        !says("close")
    }
}

/// What one decoding step over the read buffer gave.
pub enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    More,
}

impl Chunk {
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, Error> {
        loop {
            match self {
                Chunk::Size => {
                    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(Error::Chunked("chunk-size line too long"));
                        }
                        return Ok(Step::More);
                    };
                    let size = chunk_size(&buf[..lf])?;
                    buf.advance(lf + 1);
                    *self = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = (*left).min(buf.len() as u64) as usize;
                    let data = buf.split_to(n).freeze();
                    *left -= n as u64;
                    if *left == 0 {
                        *self = Chunk::DataEnd;
                    }
                    return Ok(Step::Data(data));
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Error::Chunked("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    *self = Chunk::Size;
                }
                Chunk::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        return Ok(Step::End);
                    }
                    let mut fields = [httparse::EMPTY_HEADER; 32];
                    return match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((n, fields))) => {
                            let mut trailers = HeaderMap::with_capacity(fields.len());
                            for f in fields.iter() {
                                let (Ok(name), Ok(value)) = (
                                    HeaderName::from_bytes(f.name.as_bytes()),
                                    HeaderValue::from_bytes(f.value),
                                ) else {
                                    return Err(Error::Chunked("malformed trailer field"));
                                };
                                trailers.append(name, value);
                            }
                            buf.advance(n);
                            // The section ended with its empty line: the body is over.
                            *self = Chunk::Size;
                            Ok(Step::Trailers(trailers))
                        }
                        Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILERS => {
                            Err(Error::Chunked("trailer section too large"))
                        }
                        Ok(httparse::Status::Partial) => Ok(Step::More),
                        Err(_) => Err(Error::Chunked("malformed trailer section")),
                    };
                }
            }
        }
    }
}

/// `1*HEXDIG [ BWS ";" chunk-ext ] CRLF` (the LF already cut off); a bare LF is refused.
pub fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let Some(line) = line.strip_suffix(b"\r") else {
        return Err(Error::Chunked("chunk-size line not ended by CRLF"));
    };
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 {
        return Err(Error::Chunked("no chunk size"));
    }
    let rest = line.get(digits..).unwrap_or_default();
    let rest = rest.trim_ascii_start();
    if !rest.is_empty() && !rest.starts_with(b";") {
        return Err(Error::Chunked("junk after the chunk size"));
    }
    let mut size: u64 = 0;
    for &d in line.get(..digits).unwrap_or_default() {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(v)))
            .ok_or(Error::Chunked("chunk size overflows"))?;
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(framing: Framing, wire: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), Error> {
        let mut buf = BytesMut::from(wire);
        let mut out = Vec::new();
        let Framing::Chunked(mut c) = framing else {
            unreachable!()
        };
        loop {
            match c.step(&mut buf)? {
                Step::Data(d) => out.extend_from_slice(&d),
                Step::Trailers(t) => return Ok((out, Some(t))),
                Step::End => return Ok((out, None)),
                Step::More => return Err(Error::Chunked("truncated")),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let chunked = Framing::Chunked(Chunk::Size);
        let (b, t) = body_of(chunked, b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n").unwrap();
        assert_eq!(b, b"hello world");
        assert!(t.is_none());
        let (b, t) = body_of(chunked, b"A\r\n0123456789\r\n0\r\nx-sum: 42\r\n\r\n").unwrap();
        assert_eq!(b, b"0123456789");
        assert_eq!(t.unwrap()["x-sum"], "42");
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        let chunked = Framing::Chunked(Chunk::Size);
        for wire in [
            &b"5\nhello\r\n0\r\n\r\n"[..], // bare LF
            b"5\r\nhelloX\r\n0\r\n\r\n",   // data longer than its size
            b"\r\nhello\r\n",              // no size
            b"5 x\r\nhello\r\n",           // junk after the size
            b"fffffffffffffffff\r\n",      // overflow
            b"-5\r\nhello\r\n",            // sign
        ] {
            assert!(
                body_of(chunked, wire).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn lengths_are_digits_and_agree() {
        let mut h = HeaderMap::new();
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        let v11 = http::Version::HTTP_11;
        assert_eq!(
            response_framing(&Method::GET, StatusCode::OK, v11, &mut h).unwrap(),
            Framing::Length(5)
        );
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("6"));
        assert!(response_framing(&Method::GET, StatusCode::OK, v11, &mut h).is_err());
        for bad in ["+5", "5 5", "0x5", "", "99999999999999999999"] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_str(bad).unwrap());
            assert!(
                response_framing(&Method::GET, StatusCode::OK, v11, &mut h).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn transfer_encoding_wins_over_length_and_only_chunked_is_understood() {
        let v11 = http::Version::HTTP_11;
        let mut h = HeaderMap::new();
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert_eq!(
            response_framing(&Method::GET, StatusCode::OK, v11, &mut h).unwrap(),
            Framing::Chunked(Chunk::Size)
        );
        assert!(!h.contains_key(header::CONTENT_LENGTH));
        let mut h = HeaderMap::new();
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        assert!(response_framing(&Method::GET, StatusCode::OK, v11, &mut h).is_err());
        // HEAD, 204 and 304 have no body whatever the headers say.
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        for (m, s) in [
            (Method::HEAD, StatusCode::OK),
            (Method::GET, StatusCode::NO_CONTENT),
            (Method::GET, StatusCode::NOT_MODIFIED),
        ] {
            assert_eq!(response_framing(&m, s, v11, &mut h).unwrap(), Framing::Done);
        }
        // No length and no chunking: the body ends at the close.
        let mut h = HeaderMap::new();
        assert_eq!(
            response_framing(&Method::GET, StatusCode::OK, v11, &mut h).unwrap(),
            Framing::Close
        );
    }

    #[test]
    fn heads_parse_without_copies_and_keep_the_body_bytes() {
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc"[..]);
        let head = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.headers["x-a"], "b");
        assert_eq!(&buf[..], b"abc");
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Len"[..]);
        assert!(parse_head(&mut partial).unwrap().is_none());
        let mut folded = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\n\r\n"[..]);
        assert!(
            parse_head(&mut folded).is_err(),
            "obsolete line folding is refused"
        );
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let mut h = HeaderMap::new();
        assert!(keeps_alive(http::Version::HTTP_11, &h));
        assert!(!keeps_alive(http::Version::HTTP_10, &h));
        h.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        assert!(keeps_alive(http::Version::HTTP_10, &h));
        h.insert(header::CONNECTION, HeaderValue::from_static("foo, close"));
        assert!(!keeps_alive(http::Version::HTTP_11, &h));
    }

    #[test]
    fn numbers_are_written_without_allocating() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(
            itoa(u64::MAX, &mut [0; 20]),
            u64::MAX.to_string().as_bytes()
        );
        assert_eq!(hex(0).as_bytes(), b"0");
        assert_eq!(hex(0x1a2b).as_bytes(), b"1a2b");
        assert_eq!(hex(u64::MAX).as_bytes(), b"ffffffffffffffff");
    }
}
