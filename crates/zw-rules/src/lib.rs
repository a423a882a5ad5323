//! The Traefik v3 HTTP rule language: parse, compile, index and match.
//!
//! A rule such as ``Host(`example.com`) && PathPrefix(`/api`)`` is parsed into an [`Expr`]
//! (syntax and arity checked, with byte positions in every error), compiled into a
//! [`Rule`] (values validated, regular expressions translated from Go RE2 to Rust and
//! compiled), and gathered into a [`RoutingTable`] that answers "which router takes this
//! request" without looking at routers that cannot match the request's host.
//!
//! The semantics follow Traefik v3.7 as pinned down in the project's `TRAEFIK-RULES.md`;
//! where Traefik leaves a choice open (ties between equal priorities) we decide
//! deterministically and say so on the item.
//!
//! It also holds the few other pieces of Go's HTTP behaviour the edge reproduces byte for
//! byte: `X-Forwarded-For` walking ([`forwarded_client`]) and content sniffing
//! ([`detect_content_type`]).
//!
//! This crate does no I/O.
#![forbid(unsafe_code)]

mod ast;
mod goregex;
mod ip;
mod normalize;
mod parser;
mod request;
mod rule;
mod sniff;
mod table;

pub use ast::{Expr, MatcherCall, MatcherKind};
pub use goregex::translate_go_regex;
pub use ip::{canonical as canonical_ip, forwarded_client, IpNet};
pub use normalize::{clean_path, normalize_host, routing_path, PathError};
pub use parser::{parse, MAX_DEPTH, MAX_RULE_LEN};
pub use request::RequestView;
pub use rule::{compile_go_regex, Rule};
pub use sniff::{detect_content_type, SNIFF_LEN};
pub use table::{Route, RouteReason, RouterSpec, RoutingTable};

use std::fmt;

/// A rule that could not be parsed or compiled.
///
/// `position` is a byte offset into the rule text; `Display` shows it together with the
/// message, e.g. ``at byte 14: unknown matcher `pathPrefix` ``.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RuleError {
    pub position: usize,
    pub message: String,
}

impl RuleError {
    pub(crate) fn new(position: usize, message: impl Into<String>) -> Self {
        Self {
            position,
            message: message.into(),
        }
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: {}", self.position, self.message)
    }
}
