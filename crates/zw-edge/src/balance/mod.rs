//! Choosing a server for a request.
//!
//! Each algorithm is one file implementing [`Balance`]; the pure part of each (the
//! weighted schedule, the pair of random picks, the rendezvous score) is a plain function
//! with its own tests. Every algorithm skips servers that are down (failed health check)
//! or have weight 0; `None` means no server can take the request (→ 503).

mod hrw;
mod p2c;
mod round_robin;
mod wrr;

pub use hrw::{HashSource, Hrw};
pub use p2c::P2c;
pub use round_robin::RoundRobin;
pub use wrr::{smooth_wrr_schedule, SmoothWrr};

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::Arc;

use http::HeaderMap;
use zw_config::UpstreamUrl;

use crate::pool::Backend;

/// What a server is across configuration reloads: its health and load. Kept by
/// (service, URL) so that a reload does not reset a server's health or in-flight count.
#[derive(Debug)]
pub struct ServerState {
    pub url: UpstreamUrl,
    pub raw_url: String,
    /// For a worker ingress: the instance it forwards to (`Zeitwork-Instance`).
    pub instance: Option<http::HeaderValue>,
    /// Another region's balancer: requests to it carry `Zeitwork-Hop`.
    pub cross_region: bool,
    healthy: AtomicBool,
    in_flight: AtomicU32,
    pub backend: Arc<Backend>,
}

impl ServerState {
    pub fn new(
        url: UpstreamUrl,
        raw_url: String,
        instance: Option<http::HeaderValue>,
        cross_region: bool,
        backend: Arc<Backend>,
    ) -> Self {
        ServerState {
            url,
            raw_url,
            instance,
            cross_region,
            healthy: AtomicBool::new(true),
            in_flight: AtomicU32::new(0),
            backend,
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    pub fn set_healthy(&self, up: bool) -> bool {
        self.healthy.swap(up, Relaxed)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }
}

/// Decrements the server's in-flight count on drop.
#[derive(Debug)]
pub struct InFlight(Arc<ServerState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A server as one snapshot sees it.
#[derive(Debug, Clone)]
pub struct Server {
    pub state: Arc<ServerState>,
    pub weight: u32,
    pub preserve_path: bool,
}

impl Server {
    /// Whether the server may take traffic now.
    pub fn is_up(&self) -> bool {
        self.weight > 0 && self.state.is_healthy()
    }
}

/// What an algorithm may look at.
pub struct PickCtx<'a> {
    pub client_ip: Option<IpAddr>,
    pub headers: &'a HeaderMap,
}

/// A server selection algorithm.
pub trait Balance: Send + Sync + std::fmt::Debug {
    /// Index into `servers` of the server for this request, or `None` when no server is up.
    fn pick(&self, servers: &[Server], ctx: &PickCtx<'_>) -> Option<usize>;

    /// The next candidate for a request whose choice `tried` could not be reached: a
    /// server that is up and that `accept` allows, in the algorithm's own order (Pingora's
    /// `BackendSelection::iter`). By default the servers after `tried`, in turn.
    fn next_candidate(
        &self,
        servers: &[Server],
        _ctx: &PickCtx<'_>,
        tried: usize,
        accept: &dyn Fn(&Server) -> bool,
    ) -> Option<usize> {
        let n = servers.len();
        (1..n)
            .map(|k| (tried + k) % n)
            .find(|&i| servers[i].is_up() && accept(&servers[i]))
    }
}
