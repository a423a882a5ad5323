//! The TLS ClientHello, read without terminating TLS: server name (SNI) and ALPN.
//!
//! A ClientHello can span several TLS records — post-quantum key shares make it larger
//! than one packet, and a client may split it anywhere — so the handshake message is
//! reassembled from consecutive handshake records, up to [`MAX_HELLO`] bytes. [`parse`]
//! works on the bytes received so far and says when it needs more; it never consumes
//! them (the balancer forwards every byte to the backend unchanged).

/// The largest ClientHello handshake message accepted.
pub const MAX_HELLO: usize = 16 * 1024;
/// A TLS record's plaintext limit (RFC 8446 §5.1).
const MAX_RECORD: usize = 1 << 14;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The `server_name` extension's host name, lower-cased; `None` when absent.
    pub server_name: Option<String>,
    /// The ALPN protocols offered, in the client's order.
    pub alpn: Vec<String>,
    /// Bytes of the stream the ClientHello's records occupy.
    pub len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Read more bytes and call again.
    Incomplete,
    /// The stream does not start with a TLS handshake record.
    NotTls,
    /// A ClientHello, but malformed.
    Invalid(&'static str),
    /// Larger than [`MAX_HELLO`].
    TooLarge,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Incomplete => f.write_str("incomplete ClientHello"),
            Error::NotTls => f.write_str("not a TLS handshake"),
            Error::Invalid(why) => write!(f, "malformed ClientHello: {why}"),
            Error::TooLarge => write!(f, "ClientHello larger than {MAX_HELLO} bytes"),
        }
    }
}

impl std::error::Error for Error {}

/// Reads the ClientHello at the start of `stream`.
pub fn parse(stream: &[u8]) -> Result<ClientHello, Error> {
    let (message, len) = reassemble(stream)?;
    let mut r = Reader(&message[4..]);
    r.take(2).ok_or(Error::Invalid("no version"))?;
    r.take(32).ok_or(Error::Invalid("no random"))?;
    let sid = r.u8().ok_or(Error::Invalid("no session id"))?;
    if sid > 32 {
        return Err(Error::Invalid("session id longer than 32 bytes"));
    }
    r.take(sid as usize)
        .ok_or(Error::Invalid("short session id"))?;
    let suites = r.u16().ok_or(Error::Invalid("no cipher suites"))? as usize;
    if suites < 2 || !suites.is_multiple_of(2) {
        return Err(Error::Invalid("cipher suite list of odd or zero length"));
    }
    r.take(suites)
        .ok_or(Error::Invalid("short cipher suites"))?;
    let comp = r.u8().ok_or(Error::Invalid("no compression methods"))?;
    if comp == 0 {
        return Err(Error::Invalid("empty compression methods"));
    }
    r.take(comp as usize)
        .ok_or(Error::Invalid("short compression methods"))?;
    let mut hello = ClientHello {
        server_name: None,
        alpn: Vec::new(),
        len,
    };
    if r.0.is_empty() {
        return Ok(hello); // no extensions at all (SSL 3.0 style)
    }
    let ext_len = r.u16().ok_or(Error::Invalid("short extensions length"))? as usize;
    let mut exts = Reader(
        r.take(ext_len)
            .ok_or(Error::Invalid("extensions longer than the message"))?,
    );
    if !r.0.is_empty() {
        return Err(Error::Invalid("bytes after the extensions"));
    }
    let mut seen = Vec::new();
    while !exts.0.is_empty() {
        let kind = exts.u16().ok_or(Error::Invalid("truncated extension"))?;
        let n = exts.u16().ok_or(Error::Invalid("truncated extension"))? as usize;
        let data = exts
            .take(n)
            .ok_or(Error::Invalid("extension longer than the list"))?;
        if seen.contains(&kind) {
            return Err(Error::Invalid("an extension appears twice"));
        }
        seen.push(kind);
        match kind {
            0 => hello.server_name = server_name(data)?,
            16 => hello.alpn = alpn(data)?,
            _ => {}
        }
    }
    Ok(hello)
}

/// The ClientHello handshake message (header included) and the stream bytes it took.
fn reassemble(stream: &[u8]) -> Result<(Vec<u8>, usize), Error> {
    let mut message = Vec::new();
    let mut at = 0;
    loop {
        match stream.get(at) {
            None => return Err(Error::Incomplete),
            Some(0x16) => {}
            Some(_) if at == 0 => return Err(Error::NotTls),
            Some(_) => {
                return Err(Error::Invalid(
                    "handshake interrupted by another record type",
                ))
            }
        }
        if stream.get(at + 1).is_some_and(|&v| v != 0x03) {
            return Err(if at == 0 {
                Error::NotTls
            } else {
                Error::Invalid("bad record version")
            });
        }
        let head = stream.get(at..at + 5).ok_or(Error::Incomplete)?;
        let n = u16::from_be_bytes([head[3], head[4]]) as usize;
        if n == 0 || n > MAX_RECORD {
            return Err(Error::Invalid("record length out of range"));
        }
        let body = stream.get(at + 5..at + 5 + n).ok_or(Error::Incomplete)?;
        message.extend_from_slice(body);
        at += 5 + n;
        if message.len() >= 4 {
            if message[0] != 0x01 {
                return Err(Error::Invalid(
                    "the first handshake message is not a ClientHello",
                ));
            }
            let want = 4
                + (usize::from(message[1]) << 16
                    | usize::from(message[2]) << 8
                    | usize::from(message[3]));
            if want > MAX_HELLO + 4 {
                return Err(Error::TooLarge);
            }
            if message.len() >= want {
                if message.len() > want {
                    // Another handshake message shares the record: a client may not send
                    // one before the server's answer.
                    return Err(Error::Invalid("data after the ClientHello in its record"));
                }
                return Ok((message, at));
            }
        }
        if message.len() > MAX_HELLO + 4 {
            return Err(Error::TooLarge);
        }
    }
}

fn server_name(data: &[u8]) -> Result<Option<String>, Error> {
    let mut r = Reader(data);
    let n = r.u16().ok_or(Error::Invalid("short server_name"))? as usize;
    let mut list = Reader(
        r.take(n)
            .ok_or(Error::Invalid("server_name list longer than its extension"))?,
    );
    let mut name = None;
    while !list.0.is_empty() {
        let kind = list.u8().ok_or(Error::Invalid("truncated server name"))?;
        let n = list.u16().ok_or(Error::Invalid("truncated server name"))? as usize;
        let host = list
            .take(n)
            .ok_or(Error::Invalid("server name longer than its list"))?;
        if kind != 0 {
            continue; // only host_name is defined
        }
        if name.is_some() {
            return Err(Error::Invalid("two host names"));
        }
        let ok = !host.is_empty()
            && host.len() <= 255
            && host
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !ok {
            return Err(Error::Invalid("server name is not a host name"));
        }
        name = Some(String::from_utf8_lossy(host).to_ascii_lowercase());
    }
    Ok(name)
}

fn alpn(data: &[u8]) -> Result<Vec<String>, Error> {
    let mut r = Reader(data);
    let n = r.u16().ok_or(Error::Invalid("short ALPN"))? as usize;
    let mut list = Reader(
        r.take(n)
            .ok_or(Error::Invalid("ALPN list longer than its extension"))?,
    );
    let mut out = Vec::new();
    while !list.0.is_empty() {
        let n = list.u8().ok_or(Error::Invalid("truncated ALPN"))? as usize;
        let p = list
            .take(n)
            .filter(|p| !p.is_empty())
            .ok_or(Error::Invalid("bad ALPN protocol"))?;
        out.push(String::from_utf8_lossy(p).into_owned());
    }
    Ok(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}
