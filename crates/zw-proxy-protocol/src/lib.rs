//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2): the header an L4
//! balancer sends before the client's bytes so the next hop learns the client's address.
//!
//! [`parse`] reads a header from the start of a buffer and says how many bytes it took,
//! or that more bytes are needed; it never reads past the header, so what follows is the
//! client's own stream. [`encode_v1`] and [`encode_v2`] write one. Pure: no I/O.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\x00\r\nQUIT\n";
/// The longest v1 header, CRLF included (the specification's limit).
pub const V1_MAX: usize = 107;
/// The longest v2 header we accept (16 fixed bytes, addresses and TLVs). The format allows
/// 64 KiB; balancers send a few hundred bytes at most.
pub const V2_MAX: usize = 4096;

/// A complete header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes the header occupies at the start of the stream.
    pub len: usize,
    pub version: u8,
    /// The client (`source`) and the address it connected to (`destination`); `None` for
    /// v2 `LOCAL` (the balancer's own connection, e.g. a health check) and v1 `UNKNOWN`,
    /// where the connection's own addresses stand.
    pub addresses: Option<Addresses>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The buffer holds the start of a header; read more and try again.
    Incomplete,
    /// Not a PROXY protocol header at all.
    NotProxyProtocol,
    /// A header, but a broken one.
    Invalid(&'static str),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Incomplete => f.write_str("incomplete PROXY protocol header"),
            Error::NotProxyProtocol => f.write_str("no PROXY protocol header"),
            Error::Invalid(why) => write!(f, "invalid PROXY protocol header: {why}"),
        }
    }
}

impl std::error::Error for Error {}

/// Parses the header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Header, Error> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Err(Error::Incomplete)
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return if n < 6 {
            Err(Error::Incomplete)
        } else {
            parse_v1(buf)
        };
    }
    Err(Error::NotProxyProtocol)
}

fn parse_v1(buf: &[u8]) -> Result<Header, Error> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let end = window.windows(2).position(|w| w == b"\r\n");
    // Only the line itself is ours to judge: after the CRLF come the client's bytes.
    let mut head = &window[..end.unwrap_or(window.len())];
    if end.is_none() && head.last() == Some(&b'\r') {
        head = &head[..head.len() - 1]; // a CR waiting for its LF
    }
    if head.iter().any(|&b| b == b'\r' || b == b'\n') {
        return Err(Error::Invalid("v1 header with a bare CR or LF"));
    }
    let Some(cr) = end else {
        return if buf.len() >= V1_MAX {
            Err(Error::Invalid("v1 header longer than 107 bytes"))
        } else {
            Err(Error::Incomplete)
        };
    };
    let line = std::str::from_utf8(&window[6..cr])
        .map_err(|_| Error::Invalid("v1 header is not ASCII"))?;
    let len = cr + 2;
    let mut parts = line.split(' ');
    let proto = parts.next().unwrap_or("");
    if proto == "UNKNOWN" {
        // "the receiver must ignore anything presented before the CRLF"
        return Ok(Header {
            len,
            version: 1,
            addresses: None,
        });
    }
    let fields: Vec<&str> = parts.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(Error::Invalid(
            "v1 header needs protocol, two addresses and two ports",
        ));
    };
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (
            IpAddr::V4(
                src.parse::<Ipv4Addr>()
                    .map_err(|_| Error::Invalid("bad v1 IPv4 source"))?,
            ),
            IpAddr::V4(
                dst.parse::<Ipv4Addr>()
                    .map_err(|_| Error::Invalid("bad v1 IPv4 destination"))?,
            ),
        ),
        "TCP6" => (
            IpAddr::V6(
                src.parse::<Ipv6Addr>()
                    .map_err(|_| Error::Invalid("bad v1 IPv6 source"))?,
            ),
            IpAddr::V6(
                dst.parse::<Ipv6Addr>()
                    .map_err(|_| Error::Invalid("bad v1 IPv6 destination"))?,
            ),
        ),
        _ => return Err(Error::Invalid("v1 protocol must be TCP4, TCP6 or UNKNOWN")),
    };
    let port = |p: &str| -> Result<u16, Error> {
        let ok = !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && (p == "0" || !p.starts_with('0'));
        if !ok {
            return Err(Error::Invalid("bad v1 port"));
        }
        p.parse().map_err(|_| Error::Invalid("bad v1 port"))
    };
    Ok(Header {
        len,
        version: 1,
        addresses: Some(Addresses {
            source: SocketAddr::new(src, port(sport)?),
            destination: SocketAddr::new(dst, port(dport)?),
        }),
    })
}

fn parse_v2(buf: &[u8]) -> Result<Header, Error> {
    if buf.len() < 16 {
        return Err(Error::Incomplete);
    }
    let (ver_cmd, fam, body_len) = (
        buf[12],
        buf[13],
        u16::from_be_bytes([buf[14], buf[15]]) as usize,
    );
    if ver_cmd >> 4 != 2 {
        return Err(Error::Invalid("v2 version must be 2"));
    }
    let command = ver_cmd & 0x0f;
    if command > 1 {
        return Err(Error::Invalid("v2 command must be LOCAL or PROXY"));
    }
    let len = 16 + body_len;
    if len > V2_MAX {
        return Err(Error::Invalid("v2 header longer than 4096 bytes"));
    }
    if buf.len() < len {
        return Err(Error::Incomplete);
    }
    let body = &buf[16..len];
    let (family, transport) = (fam >> 4, fam & 0x0f);
    if transport > 2 || family > 3 {
        return Err(Error::Invalid("v2 unknown address family or transport"));
    }
    let addr_len = match family {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    };
    if body.len() < addr_len {
        return Err(Error::Invalid(
            "v2 address block shorter than its family needs",
        ));
    }
    check_tlvs(&body[addr_len..])?;
    // LOCAL: the balancer speaking for itself; keep the connection's addresses.
    if command == 0 {
        return Ok(Header {
            len,
            version: 2,
            addresses: None,
        });
    }
    let addresses = match family {
        1 => {
            let ip = |o: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    body[o],
                    body[o + 1],
                    body[o + 2],
                    body[o + 3],
                ))
            };
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            Some(Addresses {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            })
        }
        2 => {
            let ip = |o: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&body[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(a))
            };
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            Some(Addresses {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            })
        }
        // UNSPEC or UNIX sockets: no IP to report; the connection's addresses stand.
        _ => None,
    };
    Ok(Header {
        len,
        version: 2,
        addresses,
    })
}

/// TLVs must tile the rest of the header exactly.
fn check_tlvs(mut rest: &[u8]) -> Result<(), Error> {
    while !rest.is_empty() {
        if rest.len() < 3 {
            return Err(Error::Invalid("v2 truncated TLV"));
        }
        let n = u16::from_be_bytes([rest[1], rest[2]]) as usize;
        if rest.len() < 3 + n {
            return Err(Error::Invalid("v2 TLV longer than the header"));
        }
        rest = &rest[3 + n..];
    }
    Ok(())
}

/// A v2 `PROXY` header for a TCP connection from `source` to `destination`. Mixed
/// families are written as IPv6 (IPv4 addresses mapped).
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(52);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21); // version 2, PROXY
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11); // INET, STREAM
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(0x21); // INET6, STREAM
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

/// A v2 `LOCAL` header: the sender's own connection (health checks).
pub fn encode_v2_local() -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    out
}

/// A v1 header (`PROXY TCP4 … \r\n`). Mixed families are written as TCP6.
pub fn encode_v1(source: SocketAddr, destination: SocketAddr) -> String {
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => format!(
            "PROXY TCP4 {s} {d} {} {}\r\n",
            source.port(),
            destination.port()
        ),
        (s, d) => format!(
            "PROXY TCP6 {} {} {} {}\r\n",
            v6(s),
            v6(d),
            source.port(),
            destination.port()
        ),
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

#[cfg(test)]
mod tests;
