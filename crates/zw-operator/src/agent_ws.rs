//! `GET /api/v1/agent/connect`: one WebSocket per node agent (`zw_proto::agent`).
//!
//! The session records the node from the agent's hello, then sends the node's whole set
//! of assignments whenever it differs from what was last sent (woken by every store
//! change), and records each heartbeat and instance report. Liveness by WebSocket pings,
//! as for edges; a node whose agent went silent is marked suspect, then lost, by the
//! scheduler loop ([`crate::schedule`]) from its last heartbeat, not by this session.

use std::time::Instant;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use zw_proto::agent::{AgentMessage, ControlMessage, MAX_MESSAGE_BYTES};

use crate::edge_ws::{keepalive, PING_EVERY};
use crate::App;

const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A request for an agent's logs, with where the answer goes.
pub(crate) type LogAsk = (
    Vec<zw_proto::agent::LogCursor>,
    tokio::sync::oneshot::Sender<Vec<zw_proto::agent::LogChunk>>,
);

/// Node id → its session's request queue, for the agents connected to this operator.
pub type Agents = std::sync::Arc<
    std::sync::Mutex<std::collections::HashMap<String, tokio::sync::mpsc::Sender<LogAsk>>>,
>;

fn agents(
    app: &App,
) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, tokio::sync::mpsc::Sender<LogAsk>>>
{
    app.agents.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) async fn connect(
    State(app): State<App>,
    axum::Extension(principal): axum::Extension<zw_store::Principal>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| session(app, principal, socket))
}

async fn send(socket: &mut WebSocket, msg: &ControlMessage) -> Result<(), String> {
    let text = serde_json::to_string(msg).map_err(|e| e.to_string())?;
    socket
        .send(Message::Text(text.into()))
        .await
        .map_err(|e| format!("send failed: {e}"))
}

async fn refuse(mut socket: WebSocket, message: String) {
    tracing::warn!(%message, "agent connection refused");
    let _ = send(&mut socket, &ControlMessage::Error { message }).await;
    let _ = socket.send(Message::Close(None)).await;
}

/// The store follows what the agent says it holds.
async fn sync(app: &App, node: &str, held: &[zw_proto::agent::InstanceReport]) {
    match app.store.agent_sync(node, held).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            node,
            instances = n,
            "instance states corrected from the agent's list"
        ),
        Err(e) => tracing::warn!(node, error = %e, "recording the agent's instances failed"),
    }
}

async fn session(app: App, principal: zw_store::Principal, mut socket: WebSocket) {
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, socket.recv()).await {
        Ok(Some(Ok(Message::Text(t)))) => {
            serde_json::from_str::<AgentMessage>(&t).map_err(|e| format!("bad hello: {e}"))
        }
        Ok(Some(Ok(_))) => Err("the first message must be a JSON hello".to_string()),
        Ok(_) => return,
        Err(_) => Err(format!("no hello within {HELLO_TIMEOUT:?}")),
    };
    let (node, instances) = match hello {
        Ok(AgentMessage::Hello {
            node_id,
            hostname,
            region,
            address,
            ingress_address,
            resources,
            drivers,
            instances,
        }) => {
            let said = zw_store::AgentHello {
                node_id: &node_id,
                hostname: &hostname,
                region: &region,
                address: &address,
                ingress_address: &ingress_address,
                resources,
                drivers: &drivers,
                token: principal.token_id(),
            };
            if let Err(e) = app.store.agent_hello(&said).await {
                return refuse(socket, e.to_string()).await;
            }
            tracing::info!(node = %node_id, %region, ingress = %ingress_address, instances = instances.len(), "agent connected");
            (node_id, instances)
        }
        Ok(_) => return refuse(socket, "the first message must be a hello".into()).await,
        Err(e) => return refuse(socket, e).await,
    };
    sync(&app, &node, &instances).await;
    let (ask_tx, mut asks) = tokio::sync::mpsc::channel::<LogAsk>(16);
    agents(&app).insert(node.clone(), ask_tx.clone());
    let mut pending: std::collections::HashMap<
        u64,
        tokio::sync::oneshot::Sender<Vec<zw_proto::agent::LogChunk>>,
    > = Default::default();
    let mut next_request = 0u64;

    let mut changes = app.store.changes();
    let mut stop = app.stop.subscribe();
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut last_heard = Instant::now();
    let mut last_sent = None;
    // Versions grow across this operator's sessions with the node, so an agent never
    // sees a version go back after a reconnect.
    let mut version = zw_proto::time::unix_millis().max(0) as u64;
    let reason = loop {
        changes.borrow_and_update();
        match app.store.assignments(&node).await {
            Ok(set) if last_sent.as_ref() != Some(&set) => {
                version += 1;
                let msg = ControlMessage::Assignments {
                    version,
                    instances: set
                        .iter()
                        .map(|a| crate::secrets::open(&app.sealing_key, a))
                        .collect(),
                };
                if let Err(e) = send(&mut socket, &msg).await {
                    break e;
                }
                tracing::debug!(node = %node, version, instances = set.len(), "assignments sent");
                last_sent = Some(set);
            }
            Ok(_) => {}
            Err(e) => tracing::error!(node = %node, error = %e, "reading assignments failed"),
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { break "operator stopping".into() },
            _ = stop.changed() => break "operator stopping".into(),
            _ = ping.tick() => if let Err(e) = keepalive(&mut socket, last_heard).await { break e },
            Some((instances, reply)) = asks.recv() => {
                next_request += 1;
                // answers that never came (the caller gave up) are not kept for ever
                pending.retain(|_, r| !r.is_closed());
                pending.insert(next_request, reply);
                if let Err(e) = send(&mut socket, &ControlMessage::Logs { request: next_request, instances }).await {
                    break e;
                }
            }
            msg = socket.recv() => {
                last_heard = Instant::now();
                match msg {
                    Some(Ok(Message::Text(t))) => match serde_json::from_str::<AgentMessage>(&t) {
                        Ok(AgentMessage::Heartbeat { resources, instances }) => {
                            if let Err(e) = app.store.agent_heartbeat(&node, resources).await {
                                tracing::warn!(node = %node, error = %e, "recording a heartbeat failed");
                            }
                            sync(&app, &node, &instances).await;
                        }
                        Ok(AgentMessage::Instance(r)) => {
                            tracing::info!(node = %node, instance = %r.id, state = %r.state, reason = r.reason.as_deref().unwrap_or(""), "instance state");
                            if let Err(e) = app.store.instance_report(&node, &r).await {
                                tracing::warn!(node = %node, instance = %r.id, error = %e, "recording an instance report failed");
                            }
                        }
                        Ok(AgentMessage::Logs { request, chunks }) => {
                            if let Some(reply) = pending.remove(&request) {
                                let _ = reply.send(chunks);
                            }
                        }
                        Ok(AgentMessage::Hello { .. }) => tracing::warn!(node = %node, "second hello ignored"),
                        Err(e) => break format!("bad message: {e}"),
                    },
                    Some(Ok(Message::Close(_))) | None => break "agent closed the connection".into(),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("connection error: {e}"),
                }
            }
        }
    };
    tracing::info!(node = %node, %reason, "agent disconnected");
    {
        let mut all = agents(&app);
        if all.get(&node).is_some_and(|t| t.same_channel(&ask_tx)) {
            all.remove(&node);
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}
