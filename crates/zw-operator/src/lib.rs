//! Zeitwork's control plane: the REST API over the state store ([`api`]), the compiler loop
//! that turns state into one routing snapshot per region ([`distribute`]), the edge
//! sessions that push those snapshots ([`edge_ws`]), the agent sessions that push each
//! node its instances ([`agent_ws`]), the scheduler, and the platform CA.
#![forbid(unsafe_code)]

pub mod acme;
pub mod agent_ws;
pub mod api;
pub(crate) mod ca;
pub mod distribute;
pub mod edge_ws;
pub mod error;
pub(crate) mod logs;
mod schedule;
mod secrets;
pub mod verify;

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use zw_store::Store;

pub use distribute::{Published, PublishedMap};
pub use zw_pki::SealingKey;

/// How the operator runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Operator-managed configuration merged into every region's snapshot (routers to
    /// shared services, middlewares…). Validated before use.
    pub static_config: zw_config::Config,
    /// How long the compiler waits after a change for more to arrive.
    pub debounce: Duration,
    /// A worker node whose agent has not heartbeated for this long is suspect (still
    /// routed, no new instances)…
    pub suspect_after: Duration,
    /// …and for this long lost: its instances are placed elsewhere.
    pub lost_after: Duration,
    /// Seals the secrets the store keeps (the platform CA's key). Every operator on one
    /// database needs the same key.
    pub sealing_key: zw_pki::SealingKey,
    /// Order certificates for verified domains from this ACME CA (none: domains are
    /// served over plain HTTP only, or with certificates from elsewhere).
    pub acme: Option<acme::AcmeOptions>,
    /// Without `acme`: sign certificates for verified `*.localhost` domains with a local
    /// CA of the operator's (`zeitwork up`), valid this long (renewed at two thirds).
    pub local_issuer: Option<Duration>,
    /// How a new domain is proven to lead here before it is routed.
    pub domain_check: verify::DomainCheck,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            static_config: zw_config::Config::default(),
            debounce: Duration::from_millis(10),
            suspect_after: Duration::from_secs(10),
            lost_after: Duration::from_secs(30),
            // tests and embedders that do not say: a fresh key, good for one store
            sealing_key: zw_pki::SealingKey::generate()
                .unwrap_or_else(|e| panic!("no sealing key: {e}")),
            acme: None,
            local_issuer: None,
            domain_check: verify::DomainCheck::Dns,
        }
    }
}

/// Shared by every handler and session.
#[derive(Clone)]
pub struct App {
    pub(crate) store: Store,
    pub(crate) published: watch::Sender<PublishedMap>,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) ca: std::sync::Arc<tokio::sync::OnceCell<std::sync::Arc<zw_pki::Ca>>>,
    pub(crate) sealing_key: zw_pki::SealingKey,
    /// The agents connected to this operator, for requests to them (logs).
    pub(crate) agents: agent_ws::Agents,
}

/// A running control plane (compiler loop started; serve it with [`Operator::serve`]).
pub struct Operator {
    app: App,
    compiler: tokio::task::JoinHandle<()>,
    scheduler: tokio::task::JoinHandle<()>,
}

impl Operator {
    pub fn start(store: Store, options: Options) -> Operator {
        let (published, _) = watch::channel(PublishedMap::default());
        let (stop, stop_rx) = watch::channel(false);
        let compiler = tokio::spawn(distribute::compile_loop(
            store.clone(),
            options.static_config,
            options.debounce,
            options.sealing_key.clone(),
            published.clone(),
            stop_rx.clone(),
        ));
        let scheduler = tokio::spawn(schedule::run(
            store.clone(),
            options.suspect_after,
            options.lost_after,
            stop_rx.clone(),
        ));
        let app = App {
            store,
            published,
            stop,
            ca: Default::default(),
            sealing_key: options.sealing_key,
            agents: Default::default(),
        };
        let issuer = match (options.acme, options.local_issuer) {
            (Some(acme), _) => Some(acme::Issuer::Acme(acme)),
            (None, Some(validity)) => Some(acme::Issuer::Local(validity)),
            (None, None) => None,
        };
        tokio::spawn(verify::run(
            app.clone(),
            options.domain_check,
            stop_rx.clone(),
        ));
        if let Some(issuer) = issuer {
            tokio::spawn(acme::run(app.clone(), issuer, stop_rx));
        }
        // Make (or load) the CA now, so the first start creates it and a broken stored
        // CA is reported at start rather than at the first enrollment.
        let early = app.clone();
        tokio::spawn(async move {
            if let Err(e) = ca::ca(&early).await {
                tracing::error!(error = %e.body.message, "the platform CA is unusable; agents and edges cannot get certificates");
            }
        });
        Operator {
            app,
            compiler,
            scheduler,
        }
    }

    /// The HTTP application: `/health` and `/api/v1/...`.
    pub fn router(&self) -> axum::Router {
        api::router(self.app.clone())
    }

    /// The root certificate (PEM) of the local issuer (see [`Options::local_issuer`]),
    /// made on first use: what a user trusts to reach `https://*.localhost`.
    pub async fn local_issuer_root(&self) -> Result<String, String> {
        acme::local_root(&self.app).await
    }

    /// What is published now, per region.
    pub fn published(&self) -> watch::Receiver<PublishedMap> {
        self.app.published.subscribe()
    }

    /// Serves the API until `shutdown` completes, then closes edge sessions and stops.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let stop = self.app.stop.clone();
        let router = self.router();
        let result = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                // Sessions end on this; then the server's graceful shutdown can finish.
                let _ = stop.send(true);
            })
            .await;
        let _ = self.app.stop.send(true);
        let _ = self.compiler.await;
        let _ = self.scheduler.await;
        result
    }
}

/// For tests and embedding: the store behind an operator.
impl Operator {
    pub fn store(&self) -> &Store {
        &self.app.store
    }
}
