//! `inFlightReq` (Traefik's `pkg/middlewares/inflightreq`): at most `amount` requests of
//! one source at once — by default the request's host, as in Traefik — and 429 for the
//! ones over it. A request counts until its response body is done (the guard lives in the
//! request's record), not only until its headers are sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::StatusCode;
use zw_config::Source;

use super::{Action, Middleware, MiddlewareCtx};

/// Requests in flight, by source.
#[derive(Debug, Default)]
pub struct Counts(Mutex<HashMap<Box<[u8]>, u64>>);

/// One request counted; uncounted when dropped.
struct Guard {
    counts: Arc<Counts>,
    key: Box<[u8]>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut m = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

#[derive(Debug)]
pub struct InFlightReq {
    amount: u64,
    source: Source,
    counts: Arc<Counts>,
}

impl InFlightReq {
    pub fn new(amount: u64, source: &Source, counts: Arc<Counts>) -> Self {
        InFlightReq {
            amount,
            source: source.clone(),
            counts,
        }
    }
}

impl Middleware for InFlightReq {
    fn on_request(&self, ctx: &mut MiddlewareCtx<'_>) -> Action {
        let key: Box<[u8]> = match &self.source {
            Source::ClientIp(strategy) => super::strategy_ip(strategy, ctx)
                .map_or(Box::default(), |ip| {
                    super::rate_limit::ip_key(ip, strategy.ipv6_subnet).into()
                }),
            Source::Header(h) => ctx
                .parts
                .headers
                .get(h)
                .map_or(&b""[..], |v| v.as_bytes())
                .into(),
            Source::Host => zw_rules::normalize_host(ctx.host).as_bytes().into(),
        };
        let mut m = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key.clone()).or_insert(0);
        if *n >= self.amount {
            return Action::Respond(super::answer(StatusCode::TOO_MANY_REQUESTS));
        }
        *n += 1;
        drop(m);
        Action::Hold(Box::new(Guard {
            counts: self.counts.clone(),
            key,
        }))
    }
}
