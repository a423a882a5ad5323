//! `ipAllowList` (Traefik's `pkg/middlewares/ipallowlist`): requests from a client address
//! outside `sourceRange` get `rejectStatusCode` (default 403). The client address is the
//! connection's peer, or the PROXY protocol's behind a balancer.

use std::net::IpAddr;

use http::StatusCode;

use super::{Action, Middleware, MiddlewareCtx};

#[derive(Debug)]
pub struct IpAllowList {
    ranges: Vec<zw_rules::IpNet>,
    reject: StatusCode,
}

impl IpAllowList {
    pub fn new(ranges: &[zw_rules::IpNet], reject: StatusCode) -> Self {
        IpAllowList {
            ranges: ranges.to_vec(),
            reject,
        }
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|n| n.contains(ip))
    }
}

impl Middleware for IpAllowList {
    fn on_request(&self, ctx: &mut MiddlewareCtx<'_>) -> Action {
        if self.allows(ctx.client_ip) {
            return Action::Continue;
        }
        Action::Respond(super::answer(self.reject))
    }
}
