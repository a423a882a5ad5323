//! `errors` (Traefik's `pkg/middlewares/customerrors`): an answer whose status is in the
//! middleware's ranges — from the upstream, from a middleware after it, or the edge's own
//! 502/503/504 — is replaced by the page `service` serves at `query` (`{status}` and
//! `{url}` filled in), with the original status kept. The page request is a `GET` with
//! the original request's headers, sent like any request to that service. When the page
//! cannot be had (no server up, no answer), the original answer goes out.
//!
//! The work happens in the request path's error-page phase (`proxy::error_pages`); this
//! type only carries the settings there.

use zw_config::ErrorPageSpec;

use super::Middleware;

#[derive(Debug)]
pub struct Errors(pub ErrorPageSpec);

impl Middleware for Errors {
    fn error_page(&self) -> Option<&ErrorPageSpec> {
        Some(&self.0)
    }
}
