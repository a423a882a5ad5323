//! Zeitwork's shared vocabulary: the operator's API resources ([`api`]), the operator–edge
//! control protocol ([`protocol`]) and the operator–agent one ([`agent`]), the reconnect
//! schedule ([`backoff`]), health rise and fall ([`health`]) and RFC 3339 times
//! ([`time`]). The snapshot compiler is `zw-snapshot`, so that agents and balancers do
//! not build the rule language and configuration formats.
//!
//! Pure, but for [`fsutil`] (the one way every stateful process writes a file): the
//! operator, the edges and the CLI agree on every type, and it is tested without I/O.
#![forbid(unsafe_code)]

/// The header an edge names the instance in when it sends a request to a worker node's
/// ingress (several instances of a node share the ingress's address). Only the edge sets
/// it; the ingress strips it before the instance sees the request.
pub const INSTANCE_HEADER: &str = "zeitwork-instance";

pub mod agent;
pub mod api;
pub mod backoff;
pub mod fsutil;
pub mod health;
pub mod protocol;
pub mod time;

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary:
/// for quoting untrusted or unbounded text in messages.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` cut to at most `max` bytes, with `…` added when something was cut.
pub fn abbreviate(s: &str, max: usize) -> String {
    let cut = truncate(s, max);
    if cut.len() < s.len() {
        format!("{cut}…")
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn truncate_respects_characters() {
        assert_eq!(super::truncate("abc", 5), "abc");
        assert_eq!(super::truncate("abc", 2), "ab");
        assert_eq!(super::truncate("aé", 2), "a");
        assert_eq!(super::truncate("", 0), "");
        assert_eq!(super::abbreviate("abcdef", 3), "abc…");
        assert_eq!(super::abbreviate("abc", 3), "abc");
    }
}
