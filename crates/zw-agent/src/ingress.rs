//! The worker ingress: a TLS listener that admits only clients presenting an edge
//! certificate from the platform CA (mutual TLS, checked by rustls during the handshake),
//! and forwards each request to the local instance named by its `Zeitwork-Instance`
//! header.
//!
//! A request for an instance that is down here (it crashed, and the edges have not yet
//! received the snapshot without it) goes to another started instance of the same
//! deployment on this node, if there is one: a crash then costs no request in the tens
//! of milliseconds the news takes to reach the edges. Otherwise it gets a 503 with
//! `Zeitwork-Unavailable: instance`, which tells "this instance is down" from an answer of
//! the app.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::supervise::{InFlight, Routes};

pub const ZEITWORK_INSTANCE: HeaderName = HeaderName::from_static(zw_proto::INSTANCE_HEADER);
pub const ZEITWORK_UNAVAILABLE: HeaderName = HeaderName::from_static("zeitwork-unavailable");
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type Body = BoxBody<Bytes, hyper::Error>;

fn plain(status: StatusCode, text: &str, unavailable: bool) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(format!("{text}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    if unavailable {
        resp.headers_mut()
            .insert(ZEITWORK_UNAVAILABLE, HeaderValue::from_static("instance"));
    }
    resp
}

/// Serves the ingress on `listener` until `stop` fires. The TLS configuration can be
/// swapped (certificate renewal) through `tls`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<arc_swap::ArcSwap<zw_pki::rustls::ServerConfig>>,
    routes: Routes,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = crate::stopped(&mut stop) => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "ingress accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
        let routes = routes.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "ingress refused a client (no platform edge certificate)");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |req| {
                let routes = routes.clone();
                async move { Ok::<_, Infallible>(forward(req, &routes, peer).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http1_only()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// Where to send a request for instance `id`: to it while it is started, else to a
/// started sibling (same deployment, this node) other than `not`. With the route's count
/// of requests in flight.
fn pick(
    routes: &std::collections::HashMap<String, crate::supervise::Route>,
    id: &str,
    not: Option<SocketAddr>,
) -> Option<(SocketAddr, InFlight)> {
    let route = routes.get(id)?;
    if let Some(a) = route.addr.filter(|a| Some(*a) != not) {
        return Some((a, InFlight::new(&route.in_flight)));
    }
    let siblings: Vec<&crate::supervise::Route> = routes
        .values()
        .filter(|r| r.deployment == route.deployment)
        .filter(|r| r.addr.is_some_and(|a| Some(a) != not))
        .collect();
    let r = siblings.get(fastrand::usize(..siblings.len().max(1)))?;
    Some((r.addr?, InFlight::new(&r.in_flight)))
}

/// A request without a body whose method is safe to send twice.
fn replayable(req: &Request<Incoming>) -> bool {
    use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    matches!(
        *req.method(),
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    ) && !req.headers().contains_key(TRANSFER_ENCODING)
        && req
            .headers()
            .get(CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0")
}

/// Sends `req` to `addr` over a new loopback connection (cheap next to the TLS hop before
/// it). `Err` means no response came: the instance refused or dropped the connection.
async fn send(addr: SocketAddr, req: Request<Body>) -> Result<Response<Incoming>, String> {
    let upstream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = upstream.set_nodelay(true);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(upstream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.send_request(req).await.map_err(|e| e.to_string())
}

fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

async fn forward(mut req: Request<Incoming>, routes: &Routes, peer: SocketAddr) -> Response<Body> {
    let Some(id) = req
        .headers_mut()
        .remove(ZEITWORK_INSTANCE)
        .and_then(|v| v.to_str().ok().map(str::to_string))
    else {
        return plain(
            StatusCode::BAD_REQUEST,
            "no Zeitwork-Instance header: the ingress does not know which instance you want",
            false,
        );
    };
    let Some((addr, flight)) = pick(&routes.load(), &id, None) else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "instance {} is not running on this node",
                zw_proto::abbreviate(&id, 64)
            ),
            true,
        );
    };
    tracing::trace!(instance = %id, %addr, %peer, "forwarding");
    // A bodiless GET/HEAD/OPTIONS that got no response (the instance died under it) is
    // sent once more, to a started sibling: what Envoy calls retrying on reset and
    // connect-failure, for requests that are safe to repeat.
    let again = replayable(&req).then(|| {
        let mut copy = Request::new(());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        copy
    });
    let first = send(addr, req.map(|b| b.boxed())).await;
    let (resp, addr, flight) = match (first, again) {
        (Ok(resp), _) => (Ok(resp), addr, flight),
        (Err(e), Some(copy)) => match pick(&routes.load(), &id, Some(addr)) {
            Some((other, flight)) => {
                tracing::info!(instance = %id, %addr, error = %e, retry = %other, "no response from the instance; sent to a sibling");
                (send(other, copy.map(|()| empty())).await, other, flight)
            }
            None => (Err(e), addr, flight),
        },
        (Err(e), None) => (Err(e), addr, flight),
    };
    match resp {
        // The request counts as in flight until its response body has ended (or the
        // client went away): what a stopping instance waits for.
        Ok(resp) => resp.map(|b| {
            b.map_frame(move |f| {
                let _ = &flight;
                f
            })
            .boxed()
        }),
        Err(e) => {
            tracing::warn!(instance = %id, %addr, error = %e, "no response from the instance");
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("instance {id} did not answer: {e}"),
                true,
            )
        }
    }
}
