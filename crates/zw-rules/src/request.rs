//! The view of a request that matchers evaluate.

use std::net::IpAddr;

/// What a rule looks at. Build it once per request; every field borrows.
///
/// `host` must already be normalized with [`crate::normalize_host`] (empty when the request
/// has no host) and `path` be the routing path from [`crate::routing_path`].
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    /// The raw (still escaped) query string without `?`; empty when there is none.
    pub query: &'a str,
    pub headers: &'a http::HeaderMap,
    /// The connection's peer address (after PROXY protocol, when enabled).
    pub client_ip: Option<IpAddr>,
}
