//! Zeitwork's control plane: the REST API over the state store ([`api`]), the compiler loop
//! that turns state into one routing snapshot per region ([`distribute`]), and the edge
//! sessions that push those snapshots ([`edge_ws`]).
#![forbid(unsafe_code)]

pub mod api;
pub mod distribute;
pub mod edge_ws;
pub mod error;

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use zw_store::Store;

pub use distribute::{Published, PublishedMap};

/// How the operator runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Operator-managed configuration merged into every region's snapshot (routers to
    /// shared services, middlewares…). Validated before use.
    pub static_config: zw_config::Config,
    /// How long the compiler waits after a change for more to arrive.
    pub debounce: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            static_config: zw_config::Config::default(),
            debounce: Duration::from_millis(10),
        }
    }
}

/// Shared by every handler and session.
#[derive(Clone)]
pub struct App {
    pub(crate) store: Store,
    pub(crate) published: watch::Sender<PublishedMap>,
    pub(crate) stop: watch::Sender<bool>,
}

/// A running control plane (compiler loop started; serve it with [`Operator::serve`]).
pub struct Operator {
    app: App,
    compiler: tokio::task::JoinHandle<()>,
}

impl Operator {
    pub fn start(store: Store, options: Options) -> Operator {
        let (published, _) = watch::channel(PublishedMap::default());
        let (stop, stop_rx) = watch::channel(false);
        let compiler = tokio::spawn(distribute::compile_loop(
            store.clone(),
            options.static_config,
            options.debounce,
            published.clone(),
            stop_rx,
        ));
        Operator {
            app: App {
                store,
                published,
                stop,
            },
            compiler,
        }
    }

    /// The HTTP application: `/health` and `/api/v1/...`.
    pub fn router(&self) -> axum::Router {
        api::router(self.app.clone())
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
        result
    }
}

/// For tests and embedding: the store behind an operator.
impl Operator {
    pub fn store(&self) -> &Store {
        &self.app.store
    }
}
