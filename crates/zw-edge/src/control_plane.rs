//! The control-plane provider: a WebSocket to the operator that delivers whole, versioned
//! snapshots (DESIGN.md, "Control plane ↔ data plane protocol").
//!
//! Each snapshot is parsed and validated exactly like a file (same limits, same errors),
//! applied atomically, saved as the last-known-good, and acknowledged; a snapshot that
//! fails is refused with the reason (`nack`) while the running configuration stays.
//! Reconnects back off exponentially with full jitter ([`zw_proto::backoff`]).

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use zw_config::Limits;
use zw_proto::backoff::Backoff;
use zw_proto::protocol::{ConfigSnapshot, EdgeMessage, OperatorMessage, MAX_MESSAGE_BYTES};

use crate::lkg::LastKnownGood;
use crate::Edge;

/// The operator pings every few seconds; this much silence means the connection is dead.
const SILENCE: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and as whom an edge connects to the operator.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// `ws://host:port/api/v1/edge/connect`.
    pub url: String,
    /// A join token with the `edge` role (or the admin token).
    pub token: String,
    pub id: String,
    pub region: String,
    /// Where balancers reach this edge (`host:port`).
    pub address: String,
    /// Where balancers reach its admin endpoint for `/ready` checks.
    pub admin_address: Option<String>,
    /// Where the last-known-good snapshot is kept; `None` keeps none.
    pub state_dir: Option<PathBuf>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub limits: Limits,
}

/// Why a session ended.
enum End {
    /// Clean close, or the edge is stopping.
    Closed,
    /// Connected (so the backoff resets), then lost.
    Lost(String),
    /// Never got a working session.
    Failed(String),
}

impl ControlPlane {
    /// `ws://host:port`, `http://host:port` or a full `ws://…/api/v1/edge/connect`.
    pub fn normalize_url(url: &str) -> Result<String, crate::Error> {
        let bad = |why| crate::Error::ControlPlaneUrl {
            url: url.to_string(),
            why,
        };
        let rest = if let Some(r) = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("http://"))
        {
            r
        } else if url.starts_with("wss://") || url.starts_with("https://") {
            return Err(bad("TLS to the operator is not supported yet; use ws://"));
        } else {
            return Err(bad("expected ws://host:port"));
        };
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        let path = if path.is_empty() {
            "api/v1/edge/connect"
        } else {
            path
        };
        Ok(format!("ws://{authority}/{path}"))
    }

    fn lkg(&self) -> Option<LastKnownGood> {
        self.state_dir.as_deref().map(LastKnownGood::in_dir)
    }

    /// Applies the last-known-good snapshot, if there is one. `Ok(None)`: no file.
    /// `Err`: the file exists but is unusable (the edge stays without configuration).
    pub fn restore(&self, edge: &Edge) -> Result<Option<u64>, crate::Error> {
        let Some(lkg) = self.lkg() else {
            return Ok(None);
        };
        let Some(restored) = lkg.load(&self.limits)? else {
            return Ok(None);
        };
        let origin = format!(
            "{} (version {} from {})",
            lkg.path().display(),
            restored.version,
            restored.origin
        );
        edge.apply_snapshot(
            restored.config,
            crate::ConfigSource::LastKnownGood,
            &origin,
            Some(restored.version),
        )?;
        Ok(Some(restored.version))
    }

    /// Keeps a session to the operator open until `stop` fires.
    pub async fn run(self, edge: Edge, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(self.backoff_base, self.backoff_max);
        loop {
            let end = tokio::select! {
                end = self.session(&edge) => end,
                _ = stop.changed() => return,
            };
            match end {
                End::Closed => {
                    tracing::info!(url = %self.url, "control connection closed by the operator");
                    backoff.reset();
                }
                End::Lost(e) => {
                    tracing::warn!(url = %self.url, error = %e, "control connection lost; the running configuration stays");
                    backoff.reset();
                }
                End::Failed(e) => {
                    tracing::warn!(url = %self.url, error = %e, "cannot reach the operator; the running configuration stays")
                }
            }
            let ceiling = backoff.ceiling();
            let delay = backoff.next_delay(fastrand::f64());
            tracing::info!(
                attempt = backoff.attempt(),
                delay_ms = delay.as_millis() as u64,
                ceiling_ms = ceiling.as_millis() as u64,
                "reconnecting to the operator"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Gets the edge its platform certificate (kept in the state directory and reused
    /// while valid), for mutual TLS to worker ingresses.
    async fn enroll(&self, edge: &Edge) {
        let authority = self
            .url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap_or_default();
        let enrollment = zw_http::Enrollment {
            operator: authority,
            token: &self.token,
            role: zw_proto::api::TokenRole::Edge,
            name: &self.id,
            names: &[],
        };
        let dir = self.state_dir.as_ref().map(|d| d.join("tls"));
        match zw_http::enroll(&enrollment, dir.as_deref()).await {
            Ok(id) => match id.client_config() {
                Ok(c) => {
                    edge.set_platform_tls(c, id.not_after());
                    tracing::info!(
                        expires_unix = id.not_after(),
                        "platform certificate ready (mutual TLS to worker ingresses)"
                    );
                }
                Err(e) => tracing::error!(error = %e, "platform certificate unusable"),
            },
            Err(e) => {
                tracing::warn!(error = %e, "no platform certificate yet: https:// servers (worker ingresses) cannot be reached until there is one")
            }
        }
    }

    fn needs_certificate(&self, edge: &Edge) -> bool {
        let now = zw_proto::time::unix_millis() / 1000;
        edge.platform_tls_expiry()
            .is_none_or(|t| t - now < (zw_http::CERT_VALIDITY / 3).as_secs() as i64)
    }

    async fn session(&self, edge: &Edge) -> End {
        // A new certificate when there is none or a third of its validity is left;
        // sessions are long, so the message loop below checks too.
        if self.needs_certificate(edge) {
            self.enroll(edge).await;
        }
        let mut request = match self.url.as_str().into_client_request() {
            Ok(r) => r,
            Err(e) => return End::Failed(format!("bad operator URL: {e}")),
        };
        match http::HeaderValue::from_str(&format!("Bearer {}", self.token)) {
            Ok(v) => {
                request.headers_mut().insert(http::header::AUTHORIZATION, v);
            }
            Err(_) => return End::Failed("the join token is not a valid header value".into()),
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let connect = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
        let mut ws = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
                let body = resp
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                return End::Failed(format!(
                    "operator answered {}: {}",
                    resp.status(),
                    body.trim()
                ));
            }
            Ok(Err(e)) => return End::Failed(e.to_string()),
            Err(_) => return End::Failed(format!("no connection within {CONNECT_TIMEOUT:?}")),
        };
        let status = edge.status();
        let (version, hash) = match status.snapshot_version {
            Some(v) => (Some(v), status.hash.clone()),
            None => (None, None),
        };
        let hello = EdgeMessage::Hello {
            id: self.id.clone(),
            region: self.region.clone(),
            address: self.address.clone(),
            admin_address: self.admin_address.clone(),
            version,
            hash,
        };
        if let Err(e) = ws.send(text(&hello)).await {
            return End::Failed(format!("sending hello: {e}"));
        }
        tracing::info!(url = %self.url, id = %self.id, region = %self.region, ?version, "connected to the operator");
        loop {
            if self.needs_certificate(edge) {
                self.enroll(edge).await;
            }
            let msg = match tokio::time::timeout(SILENCE, ws.next()).await {
                Err(_) => return End::Lost(format!("operator silent for {SILENCE:?}")),
                Ok(None) => return End::Closed,
                Ok(Some(Err(e))) => return End::Lost(e.to_string()),
                Ok(Some(Ok(m))) => m,
            };
            let text_msg = match msg {
                Message::Text(t) => t,
                Message::Close(_) => return End::Closed,
                // pings are answered by the library on the next read or write
                _ => continue,
            };
            match OperatorMessage::from_json(&text_msg) {
                Ok(OperatorMessage::ConfigSnapshot(snap)) => {
                    let answer = self.receive(edge, snap).await;
                    if let Err(e) = ws.send(text(&answer)).await {
                        return End::Lost(format!("sending {}: {e}", kind(&answer)));
                    }
                }
                Ok(OperatorMessage::Error { message }) => {
                    return End::Failed(format!("operator refused this edge: {message}"))
                }
                Err(e) => return End::Lost(format!("unreadable message from the operator: {e}")),
            }
        }
    }

    /// Validates, applies and saves one snapshot; the answer to send.
    async fn receive(&self, edge: &Edge, snap: ConfigSnapshot) -> EdgeMessage {
        let ConfigSnapshot {
            version,
            nonce,
            hash,
            snapshot,
        } = snap;
        let (e, limits, lkg, origin) = (edge.clone(), self.limits, self.lkg(), self.url.clone());
        // Parsing and building a big snapshot takes a while: keep it off the request threads.
        let result = tokio::task::spawn_blocking(move || {
            let valid = zw_config::parse_str(snapshot.get(), zw_config::Format::Json)
                .and_then(|c| zw_config::validate(c, &limits))?;
            if valid.hash != hash {
                tracing::warn!(version, operator_hash = %hash, edge_hash = %valid.hash, "snapshot hash differs from the operator's (different versions?)");
            }
            e.apply_snapshot(valid, crate::ConfigSource::ControlPlane, &origin, Some(version))?;
            if let Some(lkg) = lkg {
                if let Err(err) = lkg.save(version, &hash, &origin, &snapshot) {
                    // Serving goes on; only a restart without the operator would suffer.
                    tracing::error!(path = %lkg.path().display(), error = %err, "could not save the last-known-good snapshot");
                }
            }
            Ok::<_, crate::Error>(())
        })
        .await
        .unwrap_or_else(|e| Err(crate::Error::Panicked(e.to_string())));
        match result {
            Ok(()) => EdgeMessage::Ack { nonce, version },
            Err(error) => {
                let error = error.to_string();
                edge.reject(&error, crate::ConfigSource::ControlPlane);
                tracing::error!(version, %error, "snapshot refused; still running the previous configuration");
                EdgeMessage::Nack {
                    nonce,
                    version_in_use: edge.status().snapshot_version,
                    // a nack carries the reason, not every one of a hundred thousand errors
                    error: zw_proto::abbreviate(&error, 16 * 1024),
                }
            }
        }
    }
}

fn text(m: &EdgeMessage) -> Message {
    Message::Text(serde_json::to_string(m).unwrap_or_default().into())
}

fn kind(m: &EdgeMessage) -> &'static str {
    match m {
        EdgeMessage::Hello { .. } => "hello",
        EdgeMessage::Ack { .. } => "ack",
        EdgeMessage::Nack { .. } => "nack",
    }
}

#[cfg(test)]
mod tests {
    use super::ControlPlane;

    #[test]
    fn urls() {
        assert_eq!(
            ControlPlane::normalize_url("ws://127.0.0.1:7070").unwrap(),
            "ws://127.0.0.1:7070/api/v1/edge/connect"
        );
        assert_eq!(
            ControlPlane::normalize_url("http://op:7070/").unwrap(),
            "ws://op:7070/api/v1/edge/connect"
        );
        assert_eq!(
            ControlPlane::normalize_url("ws://op/x/y").unwrap(),
            "ws://op/x/y"
        );
        assert!(ControlPlane::normalize_url("wss://op")
            .unwrap_err()
            .to_string()
            .contains("not supported"));
        assert!(ControlPlane::normalize_url("op:7070").is_err());
    }
}
