//! The request path: one pass through named phases that share one context
//! ([`RequestCtx`]).
//!
//! [`handle`] makes the context when the request arrives (request ID, the host, taken
//! once, the snapshot, the request's record) and [`phases`] runs, in order:
//!
//! 1. [`request_filter`] — CONNECT refused, Host checked, h2c upgrades declined, the path
//!    cleaned;
//! 2. [`route`] — the entry point's [`zw_rules::RoutingTable`] (503 before the first
//!    configuration, 400 on a bad escape, 404 when nothing matches);
//! 3. [`request_middlewares`] — the router's middlewares, request side; each may rewrite
//!    the request or answer it; a `buffering` one has the body read whole here;
//! 4. [`upstream_peer`] — the service's balancer picks a server that is up (503 if none;
//!    508 for a second cross-region hop);
//! 5. [`upstream_request`] — forwarding headers, hop-by-hop removal, Host, URI form;
//! 6. [`forward`] — pooled connection, timeouts (502 on connect failure, 504 on a slow
//!    upstream); a request the connection never sent goes to the balancer's next
//!    candidate once.
//!
//! Whichever answers — upstream, middleware or the edge itself — the answer leaves through
//!
//! 7. [`error_pages`] — for routers with an `errors` middleware only: a caught status
//!    gets the error service's page;
//! 8. [`response_body`] — for routers whose `buffering` or `contentType` middleware ran:
//!    the body read whole, a missing `Content-Type` guessed from its first bytes;
//! 9. [`response_filter`] — protocol version, hop-by-hop removal, the response side of
//!    every middleware that ran its request side (in reverse), explain headers, request ID;
//! 10. [`logging`] — the request's record ([`Exchange`]) goes into the response body and is
//!     written when the body is done: metrics, access log.
//!
//! Everything a request reads comes from the snapshot it loaded at the start; no phase
//! takes a lock.

// A phase that answers returns the answer as its `Err`: a response, moved once up to
// `handle`. Boxing it (what the lint asks) would allocate for every answer the edge makes.
#![allow(clippy::result_large_err)]

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use zw_config::UpstreamScheme;
use zw_rules::{RequestView, RouteReason};

use crate::balance::PickCtx;
use crate::body::ProxyBody;
use crate::exchange::Exchange;
use crate::h1::SendError;
use crate::middleware::{Action, MiddlewareCtx};
use crate::pool::{Conn, UpstreamError};
use crate::request_body::RequestBody;
use crate::snapshot::{LbService, RouterRt, ServiceKind, Snapshot};
use crate::Shared;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Names the instance behind a worker ingress (see `zw_config::Server::instance`).
const ZEITWORK_INSTANCE: HeaderName = HeaderName::from_static(zw_proto::INSTANCE_HEADER);
/// How long a request body may go without a byte before the request ends with 408, unless
/// [`crate::EdgeBuilder::body_read_timeout`] says otherwise.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Set on requests forwarded to another region's balancer. One cross-region hop is the
/// most a request needs (to a region that runs the app); a second means the regions'
/// balancer addresses lead round in a loop.
pub const ZEITWORK_HOP: HeaderName = HeaderName::from_static("zeitwork-hop");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// What a client's own request may not say about where it came from, unless its entry
/// point trusts it (Traefik's `forwardedheaders` list).
const UNTRUSTED_FORWARDED: [HeaderName; 10] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    X_FORWARDED_PORT,
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-uri"),
    HeaderName::from_static("x-forwarded-method"),
    HeaderName::from_static("x-forwarded-tls-client-cert"),
    HeaderName::from_static("x-forwarded-tls-client-cert-info"),
    X_REAL_IP,
];
const X_ROUTED_TO: HeaderName = HeaderName::from_static("x-routed-to");
const X_ROUTE_REASON: HeaderName = HeaderName::from_static("x-route-reason");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// What the request path needs to know about the client connection, computed once per
/// connection rather than per request.
pub(crate) struct ConnInfo {
    client_ip: IpAddr,
    /// `client_ip` as a header value, for `X-Forwarded-For` and `X-Real-IP`.
    client_ip_header: HeaderValue,
    /// The entry point's port, for `X-Forwarded-Port`.
    port_header: HeaderValue,
    /// Whether the connection is TLS: its requests are routed among the routers with
    /// `tls`, and go upstream with `X-Forwarded-Proto: https`.
    tls: bool,
    /// Whether the entry point keeps this client's `X-Forwarded-*` headers
    /// (`forwardedHeaders.trustedIPs`); else they are dropped on arrival.
    trust_forwarded: bool,
    /// The client's certificates (mutual TLS) as `passTLSClientCert` sends them: the
    /// base64 of each one's DER, comma-separated. Made once per connection.
    client_cert: Option<HeaderValue>,
    /// The same certificates, for `passTLSClientCert.info`.
    client_certs: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl ConnInfo {
    pub(crate) fn new(
        peer: SocketAddr,
        local_port: u16,
        tls: bool,
        trust_forwarded: bool,
        client_certs: &[rustls::pki_types::CertificateDer<'_>],
    ) -> Self {
        // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d; rules and headers
        // want a.b.c.d.
        let client_ip = zw_rules::canonical_ip(peer.ip());
        let client_ip_header = HeaderValue::from_str(&client_ip.to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
        ConnInfo {
            client_ip,
            client_ip_header,
            port_header: HeaderValue::from(local_port),
            tls,
            trust_forwarded,
            client_certs: client_certs
                .iter()
                .map(|c| c.clone().into_owned())
                .collect(),
            client_cert: (!client_certs.is_empty())
                .then(|| {
                    use base64::Engine;
                    let b64 = base64::engine::general_purpose::STANDARD;
                    let joined: Vec<String> = client_certs
                        .iter()
                        .map(|c| b64.encode(c.as_ref()))
                        .collect();
                    HeaderValue::from_str(&joined.join(",")).ok()
                })
                .flatten(),
        }
    }
}

/// What the phases of one request share. Made when the request arrives, filled in as
/// the phases learn things, and read by the response filter whatever phase answered.
struct RequestCtx<'s> {
    /// The snapshot this request runs on from start to end (none before the first
    /// configuration is applied).
    snap: Option<&'s Snapshot>,
    ep: usize,
    conn: &'s ConnInfo,
    request_id: HeaderValue,
    /// The host as the client sent it (the authority of an absolute-form or HTTP/2
    /// request, else the Host header), taken once. A Host header value is a cheap clone:
    /// it shares the connection's read buffer.
    host: HeaderValue,
    downstream_version: Version,
    /// The router that matched, once routing has run.
    router: Option<&'s RouterRt>,
    /// How many of the router's middlewares ran their request side. Their response side
    /// runs, in reverse, on whatever answers — the upstream, a later middleware, or the
    /// edge's own 502/503/504 — as Traefik's middleware chain wraps everything after it.
    middlewares_ran: usize,
    /// `X-Routed-To` / `X-Route-Reason`, when the snapshot asks for them.
    explain: Option<Explain<'s>>,
    /// What the middlewares' response side knows of the request (its `Origin`, notes
    /// their request side left).
    response: crate::middleware::ResponseCtx,
    /// The request's URI and headers, kept for an `errors` middleware's page request.
    saved: Option<(Uri, HeaderMap)>,
    /// What a `buffering` or `contentType` middleware that ran asks of the response body.
    response_body: ResponseBodyNeeds,
    /// Timings, log fields and the in-flight guard, handed to the response body at the
    /// end: the logging phase runs when the body is done.
    ex: Exchange,
}

/// A response that ends the request path early: the edge's own answer or a middleware's.
/// It still leaves through [`response_filter`] and [`logging`].
type Answer = Response<ProxyBody>;

/// Entry point of the request path (called per request by the listener): makes the
/// request's context, runs the phases, and sends whatever answered through the response
/// filter and logging.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    ep: usize,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let request_id = request_id(req.headers());
    let host = host_of(&req);
    let ex = Exchange::begin(shared.clone(), conn.client_ip, &request_id, &host, &req);
    let snap = shared.config.current.load_full();
    let mut ctx = RequestCtx {
        snap: snap.as_deref(),
        ep,
        conn: &conn,
        request_id,
        host,
        downstream_version: req.version(),
        router: None,
        middlewares_ran: 0,
        explain: None,
        response: crate::middleware::ResponseCtx::new(conn.tls),
        saved: None,
        response_body: ResponseBodyNeeds::default(),
        ex,
    };
    let mut resp = match phases(&mut ctx, req).await {
        Ok(resp) | Err(resp) => resp,
    };
    if ctx.saved.is_some() {
        resp = error_pages(&mut ctx, resp).await;
    }
    if ctx.response_body.any() {
        let router = ctx.router.map_or("", |r| r.name.as_ref());
        resp = response_body(ctx.response_body, router, resp).await;
    }
    response_filter(&mut resp, &mut ctx);
    logging(resp, ctx)
}

/// Phases 1 to 6, in order. Each may answer (a 400, a 404, a middleware's redirect, a 503
/// or a 502) by returning `Err`; the answer then leaves like a proxied response.
async fn phases(ctx: &mut RequestCtx<'_>, req: Request<Incoming>) -> Result<Answer, Answer> {
    let (mut parts, body, upgrade) = request_filter(ctx, req)?;
    let router = route(ctx, &parts)?;
    if router.error_pages {
        ctx.saved = Some((parts.uri.clone(), parts.headers.clone()));
    }
    let mut body = RequestBody::new(body, ctx.ex.shared.settings.body_read_timeout);
    request_middlewares(ctx, router, &mut parts, &mut body).await?;
    let peer = upstream_peer(ctx, router, &parts)?;
    upstream_request(ctx, &mut parts, peer, upgrade.is_some());
    forward(ctx, peer, Request::from_parts(parts, body), upgrade).await
}

/// Phase 1, before anything is looked up: refuses what no configuration could route
/// (CONNECT, a missing, repeated or invalid Host), answers ACME HTTP-01 challenges on the
/// challenge entry point, declines h2c upgrades, and cleans dot
/// segments and `//` out of the path, into the request itself. Returns the request's
/// parts and body, and the downstream half of a protocol upgrade (WebSocket).
#[allow(clippy::type_complexity)]
fn request_filter(
    ctx: &RequestCtx<'_>,
    mut req: Request<Incoming>,
) -> Result<(request::Parts, Incoming, Option<hyper::upgrade::OnUpgrade>), Answer> {
    // A reverse proxy is no forward proxy: tunnels are not offered.
    if req.method() == Method::CONNECT {
        return Err(local(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed\n",
        ));
    }
    if let Some(problem) = host_problem(&req) {
        ctx.ex.shared.metrics.bad_requests.fetch_add(1, Relaxed);
        return Err(local(StatusCode::BAD_REQUEST, problem));
    }
    // X-Forwarded-* from a client the entry point does not trust say whatever the client
    // wants: gone before any middleware (an ipStrategy, a forwardAuth) reads them, as
    // Traefik's forwardedHeaders does; the edge writes its own on the way upstream.
    // (One look over the few headers a request has decides; most carry none of these.)
    if !ctx.conn.trust_forwarded
        && req
            .headers()
            .keys()
            .any(|k| k.as_str().starts_with("x-forwarded-") || k == X_REAL_IP)
    {
        for name in UNTRUSTED_FORWARDED {
            req.headers_mut().remove(name);
        }
    }
    // The operator's orders: a token in the snapshot is answered on every entry point;
    // other paths under the prefix are routed as usual.
    if let Some(snap) = ctx.snap.filter(|s| !s.acme_challenges.is_empty()) {
        if let Some(token) = req.uri().path().strip_prefix(crate::acme::CHALLENGE_PREFIX) {
            if let Some(key_authorization) = snap.acme_challenges.get(token) {
                let mut resp = local(StatusCode::OK, "");
                *resp.body_mut() = ProxyBody::full(key_authorization.clone());
                return Err(resp);
            }
        }
    }
    if let Some(Some(tokens)) = ctx.ex.shared.settings.http01.get(ctx.ep) {
        if let Some(answer) = tokens.answer(req.uri().path()) {
            return Err(match answer {
                Some(key_authorization) => {
                    let mut resp = local(StatusCode::OK, "");
                    *resp.body_mut() = ProxyBody::full(key_authorization);
                    resp
                }
                None => local(StatusCode::NOT_FOUND, "No such ACME challenge\n"),
            });
        }
    }
    strip_h2c_upgrade(req.headers_mut());
    let upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    if let Cow::Owned(p) = zw_rules::clean_path(parts.uri.path()) {
        crate::middleware::set_path(&mut parts, &p);
    }
    Ok((parts, body, upgrade))
}

/// Phase 2: the entry point's [`zw_rules::RoutingTable`] picks a router, on borrowed
/// views of the request. Answers 503 before the first configuration, 400 on a malformed
/// percent-escape, 404 when nothing matches. Records the router in the context (metrics,
/// log, explain).
fn route<'s>(ctx: &mut RequestCtx<'s>, parts: &request::Parts) -> Result<&'s RouterRt, Answer> {
    let metrics = &ctx.ex.shared.metrics;
    let Some(snap) = ctx.snap else {
        metrics.no_config.fetch_add(1, Relaxed);
        return Err(local(
            StatusCode::SERVICE_UNAVAILABLE,
            "No configuration loaded yet\n",
        ));
    };
    let Some(table) = snap.tables.get(ctx.ep).map(|t| t.get(ctx.conn.tls)) else {
        return Err(local(StatusCode::NOT_FOUND, "Service Not Found\n"));
    };
    let Ok(path) = zw_rules::routing_path(parts.uri.path()) else {
        metrics.bad_requests.fetch_add(1, Relaxed);
        return Err(local(
            StatusCode::BAD_REQUEST,
            "Bad Request: malformed percent-escape in path\n",
        ));
    };
    let host = zw_rules::normalize_host(ctx.host.to_str().unwrap_or(""));
    let view = RequestView {
        method: parts.method.as_str(),
        host: &host,
        path: &path,
        query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        client_ip: Some(ctx.conn.client_ip),
    };
    let routed = table.route(&view).map(|r| (*r.value, r.priority, r.reason));
    let Some((router_idx, priority, reason)) = routed else {
        metrics.no_route.fetch_add(1, Relaxed);
        let mut resp = local(StatusCode::NOT_FOUND, "Service Not Found\n");
        if snap.routing_headers {
            // The case where an explanation helps most: say that nothing matched, and where.
            let ep_name = ctx
                .ex
                .shared
                .settings
                .entry_points
                .get(ctx.ep)
                .map_or("?", String::as_str);
            if let Ok(v) =
                HeaderValue::from_str(&format!("no router matched on entry point {ep_name}"))
            {
                resp.headers_mut().insert(X_ROUTE_REASON, v);
            }
        }
        return Err(resp);
    };
    let Some(router) = snap.routers.get(router_idx as usize) else {
        return Err(local(StatusCode::NOT_FOUND, "Service Not Found\n"));
    };
    ctx.router = Some(router);
    ctx.ex.router = router.metrics.get(ctx.ep).cloned().flatten();
    if let Some(log) = &mut ctx.ex.log {
        log.router = Some(router.name.clone());
    }
    ctx.explain = snap.routing_headers.then(|| Explain {
        router,
        priority,
        reason,
        service: "",
        server: String::new(),
    });
    Ok(router)
}

/// Phase 3: the router's middlewares, request side, in order. Each may rewrite the
/// request, answer it (a redirect, a 429), or hold it for a moment (a rate limit's wait
/// for its token); the response side of those that ran runs in [`response_filter`].
async fn request_middlewares(
    ctx: &mut RequestCtx<'_>,
    router: &RouterRt,
    parts: &mut request::Parts,
    body: &mut RequestBody,
) -> Result<(), Answer> {
    let host = ctx.host.clone();
    if !router.middlewares.is_empty() {
        ctx.response.origin = parts.headers.get(header::ORIGIN).cloned();
    }
    let mut mctx = MiddlewareCtx {
        parts,
        scheme: if ctx.conn.tls { "https" } else { "http" },
        host: host.to_str().unwrap_or(""),
        client_ip: ctx.conn.client_ip,
        client_cert: ctx.conn.client_cert.as_ref(),
        client_certs: &ctx.conn.client_certs,
        response: &mut ctx.response,
        body: None,
    };
    for (position, m) in router.middlewares.iter().enumerate() {
        mctx.response.position = position;
        if router.body_work {
            if let Some(max) = m.reads_body() {
                mctx.body = Some(hold_request_body(body, max).await?);
            }
        }
        let mut action = m.on_request(&mut mctx);
        // A deferred step's outcome is the middleware's action (it may defer again).
        while let Action::Defer(work) = action {
            let then = work.await;
            action = then(&mut mctx);
        }
        match action {
            Action::Continue | Action::Defer(_) => {}
            Action::Respond(rparts) => {
                return Err(Response::from_parts(rparts, ProxyBody::empty()));
            }
            Action::Answer(resp) => {
                return Err(resp.map(ProxyBody::full));
            }
            Action::Wait(d) => tokio::time::sleep(d).await,
            Action::Hold(guard) => ctx.ex.held.push(guard),
        }
        if router.body_work {
            if let Some(spec) = m.buffering() {
                buffer_request(mctx.parts, body, spec.request).await?;
                ctx.response_body.buffer = Some(spec.response);
            }
            ctx.response_body.sniff |= m.sniffs_content_type();
        }
        ctx.middlewares_ran += 1;
    }
    Ok(())
}

/// What the response body must go through before it leaves, for the middlewares that ran.
#[derive(Default, Clone, Copy)]
struct ResponseBodyNeeds {
    /// Read whole (`buffering`), within these limits.
    buffer: Option<zw_config::BodyLimits>,
    /// Given a `Content-Type` from its first bytes when it has none (`contentType`).
    sniff: bool,
}

impl ResponseBodyNeeds {
    fn any(&self) -> bool {
        self.buffer.is_some() || self.sniff
    }
}

/// A `buffering` middleware's request side: the client's body, read whole, goes on with
/// a `Content-Length` (413 over the maximum, by the declared length before any byte is
/// read; 408 or 400 when the client's body stalls or breaks).
async fn buffer_request(
    parts: &mut request::Parts,
    body: &mut RequestBody,
    limits: zw_config::BodyLimits,
) -> Result<(), Answer> {
    use crate::spool::SpoolError;
    use http_body::Body as _;
    let too_large = || bare(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large");
    if let (Some(max), Some(len)) = (limits.max, body.size_hint().exact()) {
        if len > max {
            return Err(too_large());
        }
    }
    let had_body = !body.is_end_stream();
    match body.spool(limits).await {
        Ok(len) => {
            if had_body || len > 0 {
                parts.headers.remove(header::TRANSFER_ENCODING);
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            Ok(())
        }
        Err(SpoolError::TooLarge(_)) => Err(too_large()),
        Err(SpoolError::Body(crate::request_body::RequestBodyError::Stalled(_))) => Err(local(
            StatusCode::REQUEST_TIMEOUT,
            "Request Timeout: the request body stopped arriving\n",
        )),
        Err(SpoolError::Body(e)) => {
            tracing::debug!(error = %e, "buffering: the client's request body broke off");
            Err(local(
                StatusCode::BAD_REQUEST,
                "Bad Request: the request body broke off\n",
            ))
        }
        Err(SpoolError::File(e)) => {
            tracing::error!(error = %e, "buffering: cannot hold a request body in a temporary file; check the temporary directory's space and permissions");
            Err(local(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error\n",
            ))
        }
    }
}

/// The request's body in memory for a middleware that reads it (`forwardAuth` with
/// `forwardBody`), at most `max` bytes: a larger body is answered 401, as Traefik does.
/// The body then goes upstream from memory too.
async fn hold_request_body(body: &mut RequestBody, max: u64) -> Result<bytes::Bytes, Answer> {
    use crate::spool::SpoolError;
    if let Some(held) = body.held() {
        // Read before, by a `buffering` middleware or an earlier reader.
        return match held.len() as u64 > max {
            true => Err(bare(StatusCode::UNAUTHORIZED, "")),
            false => Ok(held),
        };
    }
    let limits = zw_config::BodyLimits {
        memory: max,
        max: Some(max),
    };
    match body.spool(limits).await {
        Ok(_) => body
            .held()
            .ok_or_else(|| bare(StatusCode::INTERNAL_SERVER_ERROR, "")),
        Err(SpoolError::TooLarge(_)) => Err(bare(StatusCode::UNAUTHORIZED, "")),
        Err(SpoolError::Body(crate::request_body::RequestBodyError::Stalled(_))) => Err(local(
            StatusCode::REQUEST_TIMEOUT,
            "Request Timeout: the request body stopped arriving\n",
        )),
        Err(e) => {
            tracing::debug!(error = %e, "the request body could not be read for a middleware");
            Err(bare(StatusCode::INTERNAL_SERVER_ERROR, ""))
        }
    }
}

/// Phase 8, between whatever answered and the response filter, for routers whose `buffering` or
/// `contentType` middleware ran: the body is read whole (a `500` over the maximum, as
/// Traefik answers), then a body without `Content-Type` gets the one Go's
/// `DetectContentType` gives its first bytes.
async fn response_body(needs: ResponseBodyNeeds, router: &str, resp: Answer) -> Answer {
    use bytes::Bytes;
    use http_body_util::BodyExt;
    let status = resp.status();
    let (mut parts, mut body) = resp.into_parts();
    // Only responses that carry a body: not 1xx (a WebSocket's 101), 204 or 304.
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Response::from_parts(parts, body);
    }
    if let Some(limits) = needs.buffer {
        let limits = crate::spool::Limits {
            memory: limits.memory,
            max: limits.max,
        };
        match crate::spool::Spool::read(body, limits).await {
            Ok(spool) => {
                parts.headers.remove(header::TRANSFER_ENCODING);
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(spool.len()));
                body = ProxyBody::spooled(spool.into_body());
            }
            Err(e) => {
                tracing::warn!(router, error = %e, "buffering: the response is not sent");
                return bare(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
            }
        }
    }
    if needs.sniff && !parts.headers.contains_key(header::CONTENT_TYPE) {
        // Go sniffs the first write the proxy makes: here, the body's first data.
        let first = loop {
            match body.frame().await {
                Some(Ok(frame)) if frame.data_ref().is_some_and(Bytes::is_empty) => continue,
                Some(Ok(frame)) => break Some(frame),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "contentType: the response body broke off");
                    return local(StatusCode::BAD_GATEWAY, "Bad Gateway\n");
                }
                None => break None,
            }
        };
        if let Some(first) = first {
            if let Some(data) = first.data_ref() {
                let ct = zw_rules::detect_content_type(data);
                parts
                    .headers
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            }
            body = ProxyBody::prefixed(first, body);
        }
    }
    Response::from_parts(parts, body)
}

/// Phase 7, for routers with an `errors` middleware: an answer whose status the first
/// such middleware that ran catches gets the page its service serves at its query
/// instead (body and headers), keeping the status. Without a page (no server up, no
/// answer) the answer stays as it was.
async fn error_pages(ctx: &mut RequestCtx<'_>, answer: Answer) -> Answer {
    let (Some(router), Some(snap)) = (ctx.router, ctx.snap) else {
        return answer;
    };
    let status = answer.status();
    let Some(page) = router
        .middlewares
        .iter()
        .take(ctx.middlewares_ran)
        .filter_map(|m| m.error_page())
        .find(|p| p.catches(status.as_u16()))
    else {
        return answer;
    };
    let Some((uri, headers)) = ctx.saved.take() else {
        return answer;
    };
    let url: String = form_urlencoded::byte_serialize(
        uri.path_and_query()
            .map_or("/", |pq| pq.as_str())
            .as_bytes(),
    )
    .collect();
    let out = StatusCode::from_u16(page.rewritten(status.as_u16())).unwrap_or(status);
    let target = page
        .query
        .replace("{status}", out.as_str())
        .replace("{originalStatus}", status.as_str())
        .replace("{url}", &url);
    let Ok(req) = Request::get(target).body(RequestBody::empty()) else {
        return answer;
    };
    let (mut parts, body) = req.into_parts();
    parts.headers = headers;
    remove_hop_by_hop(&mut parts.headers, false);
    parts.headers.remove(header::CONTENT_LENGTH);
    let pick_ctx = PickCtx {
        client_ip: Some(ctx.conn.client_ip),
        headers: &parts.headers,
    };
    let Some(peer) = pick_peer(snap, page.service, &pick_ctx) else {
        return answer;
    };
    upstream_request(ctx, &mut parts, peer, false);
    let backend = &peer.server().state.backend;
    match send(peer.lb, backend, Request::from_parts(parts, body)).await {
        Ok(mut resp) => {
            *resp.status_mut() = out;
            resp
        }
        Err((e, _)) => {
            tracing::debug!(service = %peer.service, error = %e, "errors: the error page could not be had; the original answer goes out");
            answer
        }
    }
}

/// The server a request goes to: its service's load balancer and the server's index.
#[derive(Clone, Copy)]
struct Peer<'s> {
    service: &'s str,
    lb: &'s LbService,
    server: usize,
}

impl<'s> Peer<'s> {
    fn server(&self) -> &'s crate::balance::Server {
        &self.lb.servers[self.server]
    }
}

/// Phase 4: the router's service picks a server that is up (503 if none; 508 for a
/// second cross-region hop). The server's in-flight count starts here.
fn upstream_peer<'s>(
    ctx: &mut RequestCtx<'s>,
    router: &RouterRt,
    parts: &request::Parts,
) -> Result<Peer<'s>, Answer> {
    let pick_ctx = PickCtx {
        client_ip: Some(ctx.conn.client_ip),
        headers: &parts.headers,
    };
    let Some(peer) = ctx
        .snap
        .and_then(|snap| pick_peer(snap, router.service, &pick_ctx))
    else {
        return Err(local(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable: no healthy server\n",
        ));
    };
    let state = &peer.server().state;
    if state.cross_region && parts.headers.contains_key(ZEITWORK_HOP) {
        ctx.ex
            .shared
            .metrics
            .cross_region_loops
            .fetch_add(1, Relaxed);
        return Err(local(
            StatusCode::LOOP_DETECTED,
            "Loop Detected: this request was forwarded here from another region and would be \
             forwarded to another region again; a region's balancer_address leads back to \
             its own edges (see `zeitwork get regions`)\n",
        ));
    }
    ctx.ex.in_flight = Some(state.start_request());
    if let Some(log) = &mut ctx.ex.log {
        log.service = Some(peer.service.into());
        log.upstream = Some(state.url.authority.clone());
    }
    if let Some(x) = &mut ctx.explain {
        x.service = peer.service;
        x.server = state.url.authority.clone();
    }
    Ok(peer)
}

/// Phase 6: sends the request over a pooled connection (502 on connect failure, 504 on a
/// slow upstream); a request the connection never sent goes to the balancer's next
/// candidate once, whatever its method.
async fn forward(
    ctx: &mut RequestCtx<'_>,
    peer: Peer<'_>,
    req: Request<RequestBody>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Answer, Answer> {
    let lb = peer.lb;
    let mut backend = &peer.server().state.backend;
    if let Some(on_upgrade) = upgrade {
        return forward_upgrade(lb, backend, req, on_upgrade)
            .await
            .map_err(|e| upstream_error(&e, backend));
    }
    let mut sent = send(lb, backend, req).await;
    // Could not connect (a node or ingress that is gone): nothing was sent, so one
    // other server of the service gets the request, whatever its method.
    if let Err((e, Some(mut req))) = sent {
        let pick_ctx = PickCtx {
            client_ip: Some(ctx.conn.client_ip),
            headers: req.headers(),
        };
        sent = match failover(lb, peer.server, &pick_ctx) {
            Some(other) => {
                tracing::debug!(from = %backend.label, error = %e, to = %other.state.backend.label, "upstream unreachable; trying another server");
                retarget(&mut req, lb, other);
                ctx.ex.in_flight = Some(other.state.start_request());
                if let Some(log) = &mut ctx.ex.log {
                    log.upstream = Some(other.state.url.authority.clone());
                }
                if let Some(x) = &mut ctx.explain {
                    x.server = other.state.url.authority.clone();
                }
                backend = &other.state.backend;
                send(lb, backend, req).await
            }
            None => Err((e, None)),
        };
    }
    sent.map_err(|(e, _)| upstream_error(&e, backend))
}

struct Explain<'a> {
    router: &'a RouterRt,
    priority: i64,
    reason: RouteReason,
    service: &'a str,
    server: String,
}

fn finish_explain(resp: &mut Response<ProxyBody>, explain: Option<Explain<'_>>) {
    let Some(e) = explain else { return };
    let mut to = format!("router={}", e.router.name);
    if !e.service.is_empty() {
        to.push_str(&format!("; service={}; server={}", e.service, e.server));
    }
    let reason = if e.reason == RouteReason::Fallback {
        "fallback router: no rule matched".to_string()
    } else {
        format!(
            "rule {} matched (priority {}, index: {})",
            e.router.rule,
            e.priority,
            e.reason.as_str()
        )
    };
    if let Ok(v) = HeaderValue::from_str(&to) {
        resp.headers_mut().insert(X_ROUTED_TO, v);
    }
    if let Ok(v) = HeaderValue::from_str(&reason) {
        resp.headers_mut().insert(X_ROUTE_REASON, v);
    }
}

/// The balancer's next candidate for a request prepared for server `tried`, among those
/// that can take it as it is: at another address (instances behind one worker ingress
/// share it, and fail together), with the same scheme, and no path of its own to put in
/// front.
fn failover<'l>(
    lb: &'l LbService,
    tried: usize,
    ctx: &PickCtx<'_>,
) -> Option<&'l crate::balance::Server> {
    let adds_path = |s: &crate::balance::Server| s.preserve_path && !s.state.url.path.is_empty();
    let first = lb.servers.get(tried)?;
    if adds_path(first) {
        return None;
    }
    let accept = |s: &crate::balance::Server| {
        !Arc::ptr_eq(&s.state.backend, &first.state.backend)
            && s.state.url.scheme == first.state.url.scheme
            && !adds_path(s)
    };
    let i = lb
        .balancer
        .next_candidate(&lb.servers, ctx, tried, &accept)?;
    lb.servers.get(i)
}

/// Points a request prepared for one server at another of the same service.
fn retarget(req: &mut Request<RequestBody>, lb: &LbService, to: &crate::balance::Server) {
    match &to.state.instance {
        Some(i) => {
            req.headers_mut().insert(ZEITWORK_INSTANCE, i.clone());
        }
        None => {
            req.headers_mut().remove(ZEITWORK_INSTANCE);
        }
    }
    if !lb.pass_host_header {
        if let Ok(v) = HeaderValue::from_str(&to.state.url.authority) {
            if req.version() == Version::HTTP_2 {
                if let Ok(a) = http::uri::Authority::try_from(to.state.url.authority.as_str()) {
                    let mut parts = req.uri().clone().into_parts();
                    parts.authority = Some(a);
                    if let Ok(u) = Uri::from_parts(parts) {
                        *req.uri_mut() = u;
                    }
                }
            } else {
                req.headers_mut().insert(header::HOST, v);
            }
        }
    }
}

fn upstream_error(e: &UpstreamError, backend: &crate::pool::Backend) -> Response<ProxyBody> {
    tracing::debug!(backend = %backend.label, error = %e, "upstream failed");
    if matches!(e, UpstreamError::ResponseTimeout(..)) {
        backend.metrics.timeouts.fetch_add(1, Relaxed);
    }
    let status = e.status();
    local(
        status,
        match status {
            StatusCode::GATEWAY_TIMEOUT => "Gateway Timeout\n",
            StatusCode::BAD_REQUEST => "Bad Request: malformed request body\n",
            StatusCode::REQUEST_TIMEOUT => "Request Timeout: the request body stopped arriving\n",
            _ => "Bad Gateway\n",
        },
    )
}

/// A response made by the edge itself. Like Traefik's (Go's `http.Error`), it tells
/// browsers not to sniff the body into something other than text.
pub(crate) fn local(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    crate::middleware::http_error(status, body).map(ProxyBody::full)
}

/// An answer with a plain-text body and no `Content-Type`, as Traefik's `buffering` sends
/// its 413 and 500 (Go's sniffing is off for them).
fn bare(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    resp
}

/// The client's request ID when it sent a sane one, else a new random one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(X_REQUEST_ID) {
        if !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(|b| b.is_ascii_graphic()) {
            return v.clone();
        }
    }
    let mut buf = [0u8; 32];
    // 16 random bytes are 32 hex digits: the buffer's size, so this cannot fail
    let _ = hex::encode_to_slice(fastrand::u128(..).to_le_bytes(), &mut buf);
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("0"))
}

/// The authority the client asked for: absolute-form URI (and HTTP/2's `:authority`)
/// first, then the Host header; empty for neither.
fn host_of<B>(req: &Request<B>) -> HeaderValue {
    match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    }
    .unwrap_or(HeaderValue::from_static(""))
}

/// RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without a Host
/// header, and to any request with more than one Host line or a Host value that is not an
/// authority. (Routing on the first of two and passing both upstream lets two hops
/// disagree about where a request goes.)
fn host_problem<B>(req: &Request<B>) -> Option<&'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Some("Bad Request: more than one Host header\n");
    }
    match first {
        None if req.version() == Version::HTTP_11 => Some("Bad Request: no Host header\n"),
        None => None,
        Some(v) if v.is_empty() => None,
        Some(v) => match http::uri::Authority::try_from(v.as_bytes()) {
            Ok(a) if !a.as_str().contains('@') => None,
            _ => Some("Bad Request: invalid Host header\n"),
        },
    }
}

/// `Upgrade: h2c` asks to switch a cleartext HTTP/1.1 connection to HTTP/2; passed
/// through, everything after it would bypass routing, middlewares and forwarding headers.
/// The edge speaks h2c itself (prior knowledge), so it declines the upgrade the way RFC
/// 9113 §3.1 lets a server: by answering in HTTP/1.1, without the upgrade headers.
fn strip_h2c_upgrade(headers: &mut HeaderMap) {
    let h2c = headers.get_all(header::UPGRADE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("h2c")))
    });
    if h2c {
        headers.remove(header::UPGRADE);
        headers.remove(HeaderName::from_static("http2-settings"));
    }
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// The pure part of phase 4: follows weighted services down to a load balancer and lets
/// it pick a server.
fn pick_peer<'s>(snap: &'s Snapshot, mut service: u32, ctx: &PickCtx<'_>) -> Option<Peer<'s>> {
    for _ in 0..=snap.services.len() {
        let svc = snap.services.get(service as usize)?;
        match &svc.kind {
            ServiceKind::LoadBalancer(lb) => {
                return lb.balancer.pick(&lb.servers, ctx).map(|server| Peer {
                    service: &svc.name,
                    lb,
                    server,
                })
            }
            ServiceKind::Weighted { children, wrr } => {
                let pick = wrr.pick_by(|i| children.get(i).is_some_and(|c| snap.has_up(*c, 0)))?;
                service = *children.get(pick)?;
            }
        }
    }
    None
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus those the
/// `Connection` header names.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most requests carry none of them: one pass over the names (standard names compare
    // as tags) instead of a hash lookup for each.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // `TE: trailers` says the client accepts trailers; gRPC needs it to reach the
    // upstream (HTTP/2 allows no other TE value).
    let te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    // The Connection header's values, taken out whole (no copies); the names they list
    // are removed by `&str`, which neither allocates nor fails on an invalid name.
    let (mut first, mut more) = (None, Vec::new());
    if let http::header::Entry::Occupied(e) = headers.entry(header::CONNECTION) {
        for v in e.remove_entry_mult().1 {
            match first {
                None => first = Some(v),
                Some(_) => more.push(v),
            }
        }
    }
    for v in first.iter().chain(&more) {
        for token in v.to_str().unwrap_or("").split(',') {
            let token = token.trim();
            let kept = keep_upgrade && token.eq_ignore_ascii_case("upgrade");
            if !token.is_empty() && !kept {
                headers.remove(token);
            }
        }
    }
    for name in [
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        for v in first.into_iter().chain(more) {
            headers.append(header::CONNECTION, v);
        }
    } else {
        headers.remove(header::UPGRADE);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::PROXY_AUTHORIZATION
        || name == header::UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// Phase 5: turns the client's request into the upstream's.
fn upstream_request(
    ctx: &RequestCtx<'_>,
    parts: &mut request::Parts,
    peer: Peer<'_>,
    upgrade: bool,
) {
    let (lb, server) = (peer.lb, peer.server());
    let (host_value, conn, request_id) = (&ctx.host, ctx.conn, &ctx.request_id);
    let url = &server.state.url;
    let host_raw = host_value.to_str().unwrap_or("");
    remove_hop_by_hop(&mut parts.headers, upgrade);
    if upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }

    // The request's own path and query are reused as they are (no copy) unless the
    // server URL's path goes in front.
    let path_and_query = if server.preserve_path && !url.path.is_empty() {
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        http::uri::PathAndQuery::try_from(format!("{}{pq}", url.path)).ok()
    } else {
        parts.uri.path_and_query().cloned()
    }
    .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let host_for_upstream = if lb.pass_host_header && !host_raw.is_empty() {
        host_raw
    } else {
        url.authority.as_str()
    };
    let mut uri = http::uri::Parts::default();
    uri.path_and_query = Some(path_and_query);
    // Only the edge names the instance a worker ingress forwards to: a client's own
    // header is overwritten (elsewhere it means nothing, and costs nothing to leave).
    if let Some(instance) = &server.state.instance {
        parts.headers.insert(ZEITWORK_INSTANCE, instance.clone());
    }
    if server.state.cross_region {
        parts
            .headers
            .insert(ZEITWORK_HOP, HeaderValue::from_static("1"));
    }
    match url.scheme {
        UpstreamScheme::Http | UpstreamScheme::Https => {
            parts.version = Version::HTTP_11;
            if lb.pass_host_header
                && parts
                    .headers
                    .get(header::HOST)
                    .is_some_and(|h| h.as_bytes() == host_raw.as_bytes())
            {
                // the client's Host header is already right
            } else if let Ok(v) = HeaderValue::from_str(host_for_upstream) {
                parts.headers.insert(header::HOST, v);
            }
        }
        UpstreamScheme::H2c => {
            parts.version = Version::HTTP_2;
            parts.headers.remove(header::HOST);
            uri.scheme = Some(http::uri::Scheme::HTTP);
            uri.authority = http::uri::Authority::try_from(host_for_upstream).ok();
        }
    }
    if let Ok(uri) = Uri::from_parts(uri) {
        parts.uri = uri;
    }

    // The edge is where the internet ends: a client's own X-Forwarded-* were dropped on
    // arrival unless its entry point trusts it (`forwardedHeaders`); what is left came
    // from a trusted proxy in front, or from a middleware, and is kept. The client's
    // address is appended to X-Forwarded-For, as every proxy does.
    let xff = match parts.headers.get(X_FORWARDED_FOR) {
        Some(prior) if !prior.is_empty() => {
            let mut v = Vec::with_capacity(prior.len() + 2 + conn.client_ip_header.len());
            v.extend_from_slice(prior.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(conn.client_ip_header.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or_else(|_| conn.client_ip_header.clone())
        }
        _ => conn.client_ip_header.clone(),
    };
    parts.headers.insert(X_FORWARDED_FOR, xff);
    if !parts.headers.contains_key(X_REAL_IP) {
        parts
            .headers
            .insert(X_REAL_IP, conn.client_ip_header.clone());
    }
    if !parts.headers.contains_key(X_FORWARDED_PROTO) {
        parts.headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
        );
    }
    if !parts.headers.contains_key(X_FORWARDED_PORT) {
        parts
            .headers
            .insert(X_FORWARDED_PORT, conn.port_header.clone());
    }
    if !parts.headers.contains_key(X_FORWARDED_HOST) && !host_raw.is_empty() {
        parts.headers.insert(X_FORWARDED_HOST, host_value.clone());
    }
    parts.headers.insert(X_REQUEST_ID, request_id.clone());
}

/// Phase 6's one attempt at a server: sends the request over a pooled connection. An
/// HTTP/1.1 response's body gives its connection back to the pool once read whole.
async fn send(
    lb: &LbService,
    backend: &Arc<crate::pool::Backend>,
    mut req: Request<RequestBody>,
) -> Result<Response<ProxyBody>, (UpstreamError, Option<Request<RequestBody>>)> {
    let t = &lb.transport;
    let timeout = t.response_header_timeout;
    let timed_out = || UpstreamError::ResponseTimeout(backend.authority.clone(), timeout);
    // A request that never reached the upstream, or that a reused connection dropped
    // before any answer and may be replayed, goes again on another connection (the last
    // try on a new one): an idle connection the upstream closed just as it was taken is
    // never the client's error.
    for attempt in 0..3 {
        let conn = if attempt == 2 && backend.scheme != UpstreamScheme::H2c {
            backend.connect_h1(t).await.map(Conn::H1)
        } else {
            backend.checkout(t).await
        };
        // No connection: the request is untouched and goes back to the caller.
        let conn = match conn {
            Ok(c) => c,
            Err(e) => return Err((e, Some(req))),
        };
        match conn {
            Conn::H1(conn) => match crate::h1::send(conn, req, timeout).await {
                Ok(resp) => {
                    return Ok(resp.map(|b| ProxyBody::h1(b.pooled(backend.clone()))));
                }
                Err(SendError::Again(back, e)) => {
                    tracing::debug!(backend = %backend.label, error = %e, "upstream connection closed before the request was answered; sending it again");
                    req = *back;
                }
                Err(SendError::Upstream(e)) => {
                    return Err((UpstreamError::Exchange(backend.authority.clone(), e), None))
                }
                Err(SendError::Timeout) => return Err((timed_out(), None)),
                Err(SendError::Client(e)) => return Err((client_body_error(e), None)),
            },
            Conn::H2(mut tx) => {
                let e = match tokio::time::timeout(timeout, tx.try_send_request(req)).await {
                    Err(_) => return Err((timed_out(), None)),
                    Ok(Ok(resp)) => return Ok(resp.map(ProxyBody::upstream)),
                    Ok(Err(e)) => e,
                };
                let mut e = e;
                match e.take_message() {
                    Some(back) => req = back,
                    None => {
                        return Err((
                            UpstreamError::request(&backend.authority, e.into_error()),
                            None,
                        ))
                    }
                }
            }
        }
    }
    Err((
        UpstreamError::Exchange(backend.authority.clone(), crate::h1::H1Error::Closed),
        None,
    ))
}

/// The client's request body broke on its way up.
fn client_body_error(e: crate::request_body::RequestBodyError) -> UpstreamError {
    use crate::request_body::RequestBodyError as E;
    match e {
        E::Stalled(d) => UpstreamError::ClientBodyStalled(d),
        E::Client(e) => UpstreamError::ClientBody(Box::new(e)),
        // The edge's own temporary file: not the client's fault.
        E::Spool(e) => UpstreamError::ClientBody(Box::new(e)),
    }
}

/// Phase 6 for protocol upgrades (WebSocket): a dedicated connection; on `101` the two
/// upgraded streams are spliced together until either side closes.
async fn forward_upgrade(
    lb: &LbService,
    backend: &crate::pool::Backend,
    req: Request<RequestBody>,
    downstream: hyper::upgrade::OnUpgrade,
) -> Result<Response<ProxyBody>, UpstreamError> {
    let t = &lb.transport;
    let mut tx = backend.connect_upgrade(t).await?;
    let mut resp = match tokio::time::timeout(t.response_header_timeout, tx.send_request(req)).await
    {
        Err(_) => {
            return Err(UpstreamError::ResponseTimeout(
                backend.authority.clone(),
                t.response_header_timeout,
            ))
        }
        Ok(Err(e)) => return Err(UpstreamError::request(&backend.authority, e)),
        Ok(Ok(r)) => r,
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(down), Ok(up)) = (downstream.await, upstream.await) else {
                return;
            };
            let _ =
                tokio::io::copy_bidirectional(&mut TokioIo::new(down), &mut TokioIo::new(up)).await;
        });
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, ProxyBody::empty()));
    }
    Ok(resp.map(ProxyBody::upstream))
}

/// Phase 9, for every response: the client gets the protocol it spoke, hop-by-hop headers
/// go, the middlewares that ran their request side run their response side in reverse,
/// the explain headers are added, and the request ID is set last (a middleware does not
/// remove it).
fn response_filter(resp: &mut Response<ProxyBody>, ctx: &mut RequestCtx<'_>) {
    *resp.version_mut() = ctx.downstream_version;
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    // `Trailer` announces the trailer fields of this response, and hyper sends an HTTP/1.1
    // client only the trailers announced; Go's ReverseProxy announces them again too.
    let announced = resp
        .headers()
        .contains_key(header::TRAILER)
        .then(|| resp.headers_mut().remove(header::TRAILER))
        .flatten();
    remove_hop_by_hop(resp.headers_mut(), switching);
    if let Some(trailer) = announced {
        resp.headers_mut().insert(header::TRAILER, trailer);
    }
    let ran = ctx
        .router
        .and_then(|r| r.middlewares.get(..ctx.middlewares_ran))
        .unwrap_or_default();
    if !ran.is_empty() {
        let (mut parts, body) =
            std::mem::replace(resp, Response::new(ProxyBody::empty())).into_parts();
        let rctx = &mut ctx.response;
        for (position, m) in ran.iter().enumerate().rev() {
            rctx.position = position;
            m.on_response(&mut parts, rctx);
        }
        *resp = Response::from_parts(parts, body);
    }
    finish_explain(resp, ctx.explain.take());
    resp.headers_mut()
        .insert(X_REQUEST_ID, ctx.request_id.clone());
}

/// Phase 10: the status goes into the request's record, and the record into the response
/// body, which writes it (metrics, access log) when the body has been sent or dropped.
fn logging(mut resp: Response<ProxyBody>, ctx: RequestCtx<'_>) -> Response<ProxyBody> {
    let mut ex = ctx.ex;
    ex.status = resp.status().as_u16();
    resp.body_mut().set_exchange(ex);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn te_trailers_survives_for_grpc() {
        let mut h = HeaderMap::new();
        h.insert("te", "trailers, deflate".parse().unwrap());
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.get("te").unwrap(), "trailers");
        let mut h = HeaderMap::new();
        h.insert("te", "gzip".parse().unwrap());
        remove_hop_by_hop(&mut h, false);
        assert!(h.get("te").is_none());
    }

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_host_is_the_authority_first_then_the_host_header() {
        let r = req(Version::HTTP_11, "http://a.example:8080/x", &["b.example"]);
        assert_eq!(host_of(&r), "a.example:8080");
        assert_eq!(
            host_of(&req(Version::HTTP_11, "/x", &["b.example"])),
            "b.example"
        );
        assert_eq!(host_of(&req(Version::HTTP_10, "/x", &[])), "");
    }

    #[test]
    fn a_missing_repeated_or_invalid_host_is_a_bad_request() {
        assert!(host_problem(&req(Version::HTTP_11, "/", &["a.example"])).is_none());
        assert!(host_problem(&req(Version::HTTP_11, "/", &[]))
            .unwrap()
            .contains("no Host"));
        // HTTP/1.0 and HTTP/2 (which has :authority) may omit it.
        assert!(host_problem(&req(Version::HTTP_10, "/", &[])).is_none());
        assert!(host_problem(&req(Version::HTTP_2, "/", &[])).is_none());
        assert!(host_problem(&req(Version::HTTP_11, "/", &["a", "b"]))
            .unwrap()
            .contains("more than one"));
        for bad in ["a b", "user@a.example", "a.example/x"] {
            assert!(
                host_problem(&req(Version::HTTP_11, "/", &[bad])).is_some(),
                "{bad}"
            );
        }
    }

    #[test]
    fn h2c_upgrades_are_declined_and_websocket_upgrades_kept() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, "websocket, h2c".parse().unwrap());
        h.insert("http2-settings", "AAMAAABkAAQAAP__".parse().unwrap());
        strip_h2c_upgrade(&mut h);
        assert!(h.is_empty());

        let mut r = req(Version::HTTP_11, "/", &["a"]);
        r.headers_mut()
            .insert(header::UPGRADE, "websocket".parse().unwrap());
        r.headers_mut()
            .insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        strip_h2c_upgrade(r.headers_mut());
        assert!(is_upgrade(&r));
        *r.version_mut() = Version::HTTP_2;
        assert!(!is_upgrade(&r), "HTTP/2 has no Upgrade mechanism");
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, "abc-123".parse().unwrap());
        assert_eq!(request_id(&h), "abc-123");
        h.insert(X_REQUEST_ID, "has space".parse().unwrap());
        let made = request_id(&h);
        assert_eq!(made.len(), 32);
        assert_ne!(made, request_id(&HeaderMap::new()));
    }
}
