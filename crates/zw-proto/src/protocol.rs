//! The control connection between an edge proxy and the operator (DESIGN.md, "Control
//! plane ↔ data plane protocol"): JSON text frames over a WebSocket at
//! `/api/v1/edge/connect`, liveness by WebSocket pings.
//!
//! 1. The edge says [`EdgeMessage::Hello`]: who it is and what it runs.
//! 2. The operator sends [`OperatorMessage::ConfigSnapshot`] whenever its region's snapshot
//!    has a version the edge does not run: always the whole snapshot, never a delta.
//! 3. The edge validates and applies it whole, then answers [`EdgeMessage::Ack`], or
//!    [`EdgeMessage::Nack`] with the reason while it keeps running what it had.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The largest control message either side accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EdgeMessage {
    Hello {
        id: String,
        region: String,
        /// Where balancers reach this edge's HTTP entry point (`host:port`).
        address: String,
        /// Where its admin endpoint (`/ready`) answers, for balancers' health checks.
        #[serde(default)]
        admin_address: Option<String>,
        /// The snapshot version it runs (from the operator or its last-known-good).
        version: Option<u64>,
        hash: Option<String>,
    },
    Ack {
        nonce: String,
        version: u64,
    },
    Nack {
        nonce: String,
        /// What the edge keeps running instead.
        version_in_use: Option<u64>,
        error: String,
    },
}

/// What the operator sends. (Not a serde-tagged enum: a tagged enum buffers its content,
/// and the snapshot must stay raw JSON until the edge parses it under its own limits.)
#[derive(Debug, Clone)]
pub enum OperatorMessage {
    ConfigSnapshot(ConfigSnapshot),
    /// The operator refuses the connection (bad hello, unknown region…); it closes next.
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigSnapshot {
    pub version: u64,
    pub nonce: String,
    /// `sha256:…` content hash of `snapshot` as `zw_config::validate` computes it.
    pub hash: String,
    /// A whole dynamic configuration in the `zw-config` model, as JSON.
    pub snapshot: Box<RawValue>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotWire {
    #[serde(rename = "type")]
    kind: String,
    version: u64,
    nonce: String,
    hash: String,
    snapshot: Box<RawValue>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorWire {
    #[serde(rename = "type")]
    kind: String,
    message: String,
}

#[derive(Deserialize)]
struct Tag {
    #[serde(rename = "type")]
    kind: String,
}

impl OperatorMessage {
    pub fn to_json(&self) -> String {
        let r = match self {
            OperatorMessage::ConfigSnapshot(s) => serde_json::to_string(&SnapshotWire {
                kind: "config_snapshot".into(),
                version: s.version,
                nonce: s.nonce.clone(),
                hash: s.hash.clone(),
                snapshot: s.snapshot.clone(),
            }),
            OperatorMessage::Error { message } => serde_json::to_string(&ErrorWire {
                kind: "error".into(),
                message: message.clone(),
            }),
        };
        // Serializing strings, integers and already-valid raw JSON cannot fail.
        r.unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<OperatorMessage, String> {
        let tag: Tag = serde_json::from_str(text).map_err(|e| e.to_string())?;
        match tag.kind.as_str() {
            "config_snapshot" => {
                let w: SnapshotWire = serde_json::from_str(text).map_err(|e| e.to_string())?;
                Ok(OperatorMessage::ConfigSnapshot(ConfigSnapshot {
                    version: w.version,
                    nonce: w.nonce,
                    hash: w.hash,
                    snapshot: w.snapshot,
                }))
            }
            "error" => {
                let w: ErrorWire = serde_json::from_str(text).map_err(|e| e.to_string())?;
                Ok(OperatorMessage::Error { message: w.message })
            }
            other => Err(format!("unknown message type `{other}`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let hello = EdgeMessage::Hello {
            id: "edge-1".into(),
            region: "eu".into(),
            address: "127.0.0.1:8080".into(),
            admin_address: None,
            version: None,
            hash: None,
        };
        let text = serde_json::to_string(&hello).unwrap();
        assert!(
            text.starts_with(r#"{"type":"hello","id":"edge-1""#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<EdgeMessage>(&text).unwrap(), hello);

        let text = r#"{"type":"config_snapshot","version":3,"nonce":"n","hash":"sha256:x","snapshot":{"http":{}}}"#;
        let snap = OperatorMessage::from_json(text).unwrap();
        match &snap {
            OperatorMessage::ConfigSnapshot(s) => {
                assert_eq!(s.version, 3);
                assert_eq!(s.snapshot.get(), r#"{"http":{}}"#);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(snap.to_json(), text);
        assert!(OperatorMessage::from_json(r#"{"type":"config_snapshot","version":3}"#).is_err());
        assert!(OperatorMessage::from_json(r#"{"type":"delta"}"#)
            .unwrap_err()
            .contains("delta"));
        assert!(serde_json::from_str::<EdgeMessage>(
            r#"{"type":"ack","nonce":"n","version":1,"x":1}"#
        )
        .is_err());
    }
}
