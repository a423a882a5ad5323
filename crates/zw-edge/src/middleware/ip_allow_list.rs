//! `ipAllowList` (Traefik's `pkg/middlewares/ipallowlist`): requests from a client address
//! outside `sourceRange` get `rejectStatusCode` (default 403). The client address is the
//! connection's peer, or the PROXY protocol's behind a balancer, or what `ipStrategy`
//! reads from a trusted `X-Forwarded-For`; a request it finds no address for is refused.

use std::net::IpAddr;

use http::StatusCode;

use super::{Action, Middleware, MiddlewareCtx};

#[derive(Debug)]
pub struct IpAllowList {
    ranges: Vec<zw_rules::IpNet>,
    strategy: zw_config::IpStrategySpec,
    reject: StatusCode,
}

impl IpAllowList {
    pub fn new(
        ranges: &[zw_rules::IpNet],
        strategy: &zw_config::IpStrategySpec,
        reject: StatusCode,
    ) -> Self {
        IpAllowList {
            ranges: ranges.to_vec(),
            strategy: strategy.clone(),
            reject,
        }
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|n| n.contains(ip))
    }
}

impl Middleware for IpAllowList {
    fn on_request(&self, ctx: &mut MiddlewareCtx<'_>) -> Action {
        if super::strategy_ip(&self.strategy, ctx).is_some_and(|ip| self.allows(ip)) {
            return Action::Continue;
        }
        Action::Respond(super::answer(self.reject))
    }
}
