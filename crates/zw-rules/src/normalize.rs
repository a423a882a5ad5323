//! What matchers see: the normalized host and the routing path.

use std::borrow::Cow;

/// Normalizes an authority or `Host` header value the way Traefik's host matchers see it:
/// trimmed, port stripped, IPv6 brackets removed, lower-cased, one trailing dot dropped.
/// Borrows when nothing changes (the common case on the request path).
pub fn normalize_host(authority: &str) -> Cow<'_, str> {
    let mut h = authority.trim();
    if let Some(rest) = h.strip_prefix('[') {
        h = rest.split_once(']').map_or(rest, |(inside, _)| inside);
    } else if let Some((host, port)) = h.rsplit_once(':') {
        // Only a host:port split; a bare IPv6 address has more than one colon.
        if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) {
            h = host;
        }
    }
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(h.to_ascii_lowercase())
    } else {
        Cow::Borrowed(h)
    }
}

/// The escaped path could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed percent-escape in path at byte {0}")]
pub struct PathError(pub usize);

/// RFC 3986 reserved characters, plus `%` itself: their escapes stay escaped so that
/// `/a%2Fb` does not route as `/a/b`.
fn stays_escaped(b: u8) -> bool {
    matches!(
        b,
        b':' | b'/'
            | b'?'
            | b'#'
            | b'['
            | b']'
            | b'@'
            | b'!'
            | b'$'
            | b'&'
            | b'\''
            | b'('
            | b')'
            | b'*'
            | b'+'
            | b','
            | b';'
            | b'='
            | b'%'
    )
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The path that `Path`, `PathPrefix` and `PathRegexp` see: the escaped path with every
/// `%XX` decoded except reserved characters and `%25`. A malformed escape is an error
/// (the proxy answers 400). Escapes that would decode to invalid UTF-8 stay escaped.
pub fn routing_path(escaped: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = escaped.as_bytes();
    let Some(first) = bytes.iter().position(|&b| b == b'%') else {
        return Ok(Cow::Borrowed(escaped));
    };
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..first]);
    let mut i = first;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError(i));
        };
        let v = hi * 16 + lo;
        if stays_escaped(v) {
            out.extend_from_slice(&bytes[i..i + 3]);
        } else {
            out.push(v);
        }
        i += 3;
    }
    match String::from_utf8(out) {
        Ok(s) => Ok(Cow::Owned(s)),
        Err(_) => {
            // Decode only ASCII escapes; multi-byte sequences that are not valid UTF-8 stay
            // escaped, so matching still sees every byte of the request.
            let mut ascii = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%' {
                    let v = hex(bytes[i + 1]).unwrap_or(0) * 16 + hex(bytes[i + 2]).unwrap_or(0);
                    if v < 0x80 && !stays_escaped(v) {
                        ascii.push(v);
                    } else {
                        ascii.extend_from_slice(&bytes[i..i + 3]);
                    }
                    i += 3;
                } else {
                    ascii.push(bytes[i]);
                    i += 1;
                }
            }
            Ok(Cow::Owned(String::from_utf8_lossy(&ascii).into_owned()))
        }
    }
}

/// Removes `.` and `..` segments and collapses `//`, keeping a trailing slash, as Traefik
/// does before routing (its `sanitizePath`, on by default). `..` never climbs above `/`.
/// Borrows when the path is already clean.
pub fn clean_path(path: &str) -> Cow<'_, str> {
    let dirty = !path.starts_with('/')
        || path.contains("//")
        || path.split('/').any(|seg| seg == "." || seg == "..");
    if !dirty {
        return Cow::Borrowed(path);
    }
    let mut segs: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let trailing = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    let mut out = String::with_capacity(path.len());
    for s in &segs {
        out.push('/');
        out.push_str(s);
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host(" example.com. "), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
        assert_eq!(normalize_host("[2001:DB8::1]"), "2001:db8::1");
        assert_eq!(normalize_host("2001:db8::1"), "2001:db8::1");
        assert_eq!(normalize_host(""), "");
        assert!(matches!(normalize_host("plain.example"), Cow::Borrowed(_)));
    }

    #[test]
    fn routing_path_decodes_all_but_reserved() {
        assert_eq!(routing_path("/foo%20bar").unwrap(), "/foo bar");
        assert_eq!(routing_path("/foo%2Fbar").unwrap(), "/foo%2Fbar");
        assert_eq!(routing_path("/a%25b").unwrap(), "/a%25b");
        assert_eq!(routing_path("/caf%C3%A9").unwrap(), "/café");
        assert_eq!(routing_path("/%41%3f").unwrap(), "/A%3f");
        assert_eq!(routing_path("/bad%zz"), Err(PathError(4)));
        assert_eq!(routing_path("/bad%2"), Err(PathError(4)));
        assert_eq!(routing_path("/x%FF%41").unwrap(), "/x%FFA");
        assert!(matches!(routing_path("/plain").unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn path_cleaning() {
        assert_eq!(clean_path("/a//b/./c/../d"), "/a/b/d");
        assert_eq!(clean_path("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(clean_path("/a/b/"), "/a/b/");
        assert_eq!(clean_path("/a/b/.."), "/a/");
        assert_eq!(clean_path("//"), "/");
        assert!(matches!(clean_path("/already/clean"), Cow::Borrowed(_)));
    }
}
