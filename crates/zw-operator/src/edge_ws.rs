//! `GET /api/v1/edge/connect`: one WebSocket per edge proxy (DESIGN.md, "Control plane ↔
//! data plane protocol").
//!
//! The session sends the edge its region's snapshot whenever that snapshot's version is
//! neither what the edge runs nor what was last sent to it: a version is never pushed twice
//! to an edge, and an edge that already runs the current version (it said so in its hello,
//! e.g. from its last-known-good) gets nothing. Pings every [`PING_EVERY`]; an edge silent
//! for [`PING_TIMEOUT`] is dropped.

use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use zw_proto::protocol::{ConfigSnapshot, EdgeMessage, OperatorMessage};

use crate::App;

pub const PING_EVERY: Duration = Duration::from_secs(5);
pub const PING_TIMEOUT: Duration = Duration::from_secs(20);
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a live edge's last-seen time is written (well inside the 45 s window in which
/// an edge counts as connected).
const SEEN_EVERY: Duration = Duration::from_secs(15);
/// Edges send hellos, acks and nacks (a nack carries a configuration error list).
const MAX_INBOUND_BYTES: usize = 1 << 20;

pub(crate) async fn connect(
    State(app): State<App>,
    axum::Extension(principal): axum::Extension<zw_store::Principal>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.max_message_size(MAX_INBOUND_BYTES)
        .max_frame_size(MAX_INBOUND_BYTES)
        .on_upgrade(move |socket| session(app, principal, socket))
}

/// On each ping tick: the peer must have answered within [`PING_TIMEOUT`]; then ping it.
pub(crate) async fn keepalive(socket: &mut WebSocket, last_heard: Instant) -> Result<(), String> {
    if last_heard.elapsed() > PING_TIMEOUT {
        return Err(format!("no answer to pings for {PING_TIMEOUT:?}"));
    }
    socket
        .send(Message::Ping(Default::default()))
        .await
        .map_err(|_| "send failed".to_string())
}

async fn refuse(mut socket: WebSocket, message: String) {
    tracing::warn!(%message, "edge connection refused");
    let text = OperatorMessage::Error { message }.to_json();
    let _ = socket.send(Message::Text(text.into())).await;
    let _ = socket.send(Message::Close(None)).await;
}

async fn session(app: App, principal: zw_store::Principal, mut socket: WebSocket) {
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, socket.recv()).await {
        Ok(Some(Ok(Message::Text(t)))) => {
            serde_json::from_str::<EdgeMessage>(&t).map_err(|e| e.to_string())
        }
        Ok(Some(Ok(_))) => Err("the first message must be a JSON hello".to_string()),
        Ok(_) => return,
        Err(_) => Err(format!("no hello within {HELLO_TIMEOUT:?}")),
    };
    let Ok(EdgeMessage::Hello {
        id,
        region,
        address,
        admin_address,
        version,
        hash,
    }) = hello
    else {
        let why = match hello {
            Err(e) => format!("bad hello: {e}"),
            Ok(_) => "the first message must be a hello".into(),
        };
        return refuse(socket, why).await;
    };
    let said = zw_store::EdgeHello {
        id: &id,
        region: &region,
        address: &address,
        admin_address: admin_address.as_deref(),
        version,
        hash: hash.as_deref(),
        token: principal.token_id(),
    };
    if let Err(e) = app.store.edge_hello(&said).await {
        return refuse(socket, e.to_string()).await;
    }
    tracing::info!(edge = %id, %region, %address, ?version, "edge connected");

    // What the edge runs, as (version, hash); what we last sent and await an answer for.
    let mut running: Option<(u64, String)> = version.zip(hash);
    let mut last_sent: Option<u64> = None;
    let mut pending: Option<(String, u64, String)> = None;
    let mut published = app.published.subscribe();
    let mut stop = app.stop.subscribe();
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut last_heard = Instant::now();
    let mut last_recorded = Instant::now();
    let reason = loop {
        let current = published.borrow_and_update().get(&region).cloned();
        if let Some(snap) = current {
            let runs_it = running
                .as_ref()
                .is_some_and(|(v, h)| *v == snap.version && *h == snap.hash);
            if !runs_it && last_sent != Some(snap.version) {
                let nonce = zw_store::random_hex(8);
                let raw = match serde_json::value::RawValue::from_string(snap.body.to_string()) {
                    Ok(r) => r,
                    Err(e) => break format!("stored snapshot is not JSON: {e}"),
                };
                let msg = OperatorMessage::ConfigSnapshot(ConfigSnapshot {
                    version: snap.version,
                    nonce: nonce.clone(),
                    hash: snap.hash.clone(),
                    snapshot: raw,
                });
                if let Err(e) = socket.send(Message::Text(msg.to_json().into())).await {
                    break format!("send failed: {e}");
                }
                tracing::debug!(edge = %id, version = snap.version, "snapshot sent");
                last_sent = Some(snap.version);
                pending = Some((nonce, snap.version, snap.hash.clone()));
            }
        }
        tokio::select! {
            r = published.changed() => if r.is_err() { break "operator stopping".into() },
            _ = stop.changed() => break "operator stopping".into(),
            _ = ping.tick() => if let Err(e) = keepalive(&mut socket, last_heard).await { break e },
            msg = socket.recv() => {
                last_heard = Instant::now();
                match msg {
                    Some(Ok(Message::Text(t))) => match serde_json::from_str::<EdgeMessage>(&t) {
                        Ok(EdgeMessage::Ack { nonce, version }) => {
                            let Some((_, v, hash)) = pending.take_if(|(n, v, _)| *n == nonce && *v == version) else {
                                tracing::warn!(edge = %id, %nonce, version, "ack for nothing we sent; ignored");
                                continue;
                            };
                            tracing::info!(edge = %id, version = v, "edge applied snapshot");
                            if let Err(e) = app.store.edge_ack(&id, v, &hash).await {
                                tracing::error!(edge = %id, error = %e, "recording an ack failed");
                            }
                            running = Some((v, hash));
                        }
                        Ok(EdgeMessage::Nack { nonce, version_in_use, error }) => {
                            pending.take_if(|(n, _, _)| *n == nonce);
                            tracing::warn!(edge = %id, ?version_in_use, %error, "edge refused snapshot; it keeps its previous one");
                            if let Err(e) = app.store.edge_nack(&id, version_in_use, &error).await {
                                tracing::error!(edge = %id, error = %e, "recording a nack failed");
                            }
                        }
                        Ok(EdgeMessage::Hello { .. }) => tracing::warn!(edge = %id, "second hello ignored"),
                        Err(e) => break format!("bad message: {e}"),
                    },
                    Some(Ok(Message::Pong(_))) => {
                        // the store only needs "seen recently" (CONNECTED_WITHIN_MS): one
                        // write per SEEN_EVERY, not one per ping, per edge
                        if last_recorded.elapsed() >= SEEN_EVERY {
                            last_recorded = Instant::now();
                            if let Err(e) = app.store.edge_seen(&id).await {
                                tracing::warn!(edge = %id, error = %e, "recording a pong failed");
                            }
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => break "edge closed the connection".into(),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("connection error: {e}"),
                }
            }
        }
    };
    tracing::info!(edge = %id, %reason, "edge disconnected");
    let _ = socket.send(Message::Close(None)).await;
    if let Err(e) = app.store.edge_disconnected(&id).await {
        tracing::warn!(edge = %id, error = %e, "recording a disconnect failed");
    }
}
