//! `buffering` and `contentType`: the middlewares that need the body. `buffering` (Traefik's `pkg/middlewares/buffering`, over oxy's `buffer`): the request
//! body is read whole before the request goes on — a body over `maxRequestBodyBytes`
//! (by its `Content-Length`, or by what arrives) is answered `413`, and the upstream gets
//! the body with a `Content-Length`, never chunked; the response body is read whole
//! before it goes to the client, and one over `maxResponseBodyBytes` becomes a `500`.
//! Past `mem…BodyBytes` (1 MiB unless set) a body waits in an unnamed temporary file.
//!
//! The request path does the reading (it holds the body); this type only carries the
//! limits to it, at the place in the router's list where it stands: a middleware before
//! it (an authentication) answers before any body is read.

use super::Middleware;

#[derive(Debug)]
pub struct Buffering(pub zw_config::BufferingSpec);

impl Middleware for Buffering {
    fn buffering(&self) -> Option<&zw_config::BufferingSpec> {
        Some(&self.0)
    }
}

/// `contentType` (Traefik's `pkg/middlewares/contenttype`): Traefik turns Go's content
/// sniffing off for proxied responses, and this middleware turns it back on — a response
/// that comes without `Content-Type` gets the one `http.DetectContentType` gives its
/// first bytes (`zw_rules::detect_content_type`); one with a `Content-Type` keeps it
/// (`content_type_test.go`). `autoDetect: false`, deprecated in v3, leaves it off.
#[derive(Debug)]
pub struct ContentType;

impl Middleware for ContentType {
    fn sniffs_content_type(&self) -> bool {
        true
    }
}
