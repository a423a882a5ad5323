//! The control connection between a node agent and the operator: JSON text frames over a
//! WebSocket at `/api/v1/agent/connect`, opened by the agent (a node needs no inbound
//! connection from the operator).
//!
//! 1. The agent says [`AgentMessage::Hello`]: its node, its ingress, what it can run, and
//!    every instance it holds. The operator records the node (creating it on first contact).
//! 2. The operator sends [`ControlMessage::Assignments`]: the whole set of instances the
//!    node should run, with a version that grows. The agent starts what is missing and
//!    stops what is no longer listed.
//! 3. The agent reports each instance state change at once ([`AgentMessage::Instance`]) and
//!    heartbeats every few seconds ([`AgentMessage::Heartbeat`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::{DriverStatus, HealthCheckSpec, InstanceState, Resources, RootFs, Runtime};

/// The largest control message either side accepts.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentMessage {
    Hello {
        node_id: String,
        hostname: String,
        region: String,
        /// The host edges reach this node at.
        address: String,
        /// Where edges reach its worker ingress (`host:port`).
        ingress_address: String,
        resources: Resources,
        drivers: Vec<DriverStatus>,
        instances: Vec<InstanceReport>,
    },
    Heartbeat {
        resources: Resources,
        /// Every instance it holds, as in the hello: a state change whose event was lost
        /// is corrected within one heartbeat.
        instances: Vec<InstanceReport>,
    },
    Instance(InstanceReport),
    /// The answer to [`ControlMessage::Logs`].
    Logs {
        request: u64,
        chunks: Vec<LogChunk>,
    },
}

/// Where to read an instance's log from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogCursor {
    pub instance: String,
    /// The byte offset to read on from (a chunk's `next`); none: the last `tail` lines.
    #[serde(default)]
    pub from: Option<u64>,
    #[serde(default)]
    pub tail: u32,
}

/// Lines of one instance's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogChunk {
    pub instance: String,
    /// Where the next read goes on from.
    pub next: u64,
    pub lines: Vec<LogLine>,
    /// The node holds no log for the instance.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub missing: bool,
}

/// One line, with when the agent first saw it (Unix milliseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLine {
    pub at: i64,
    pub text: String,
}

/// One instance as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceReport {
    pub id: String,
    pub state: InstanceState,
    #[serde(default)]
    pub reason: Option<String>,
    /// The failure cannot go away by waiting (the runtime does not work on the node, the
    /// executable is not there): the agent keeps trying, but whoever waits should stop.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permanent: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlMessage {
    Assignments {
        version: u64,
        instances: Vec<Assignment>,
    },
    /// The operator refuses the connection; it closes next.
    Error { message: String },
    /// Read these instances' logs; answered by [`AgentMessage::Logs`] with the same
    /// `request`.
    Logs {
        request: u64,
        instances: Vec<LogCursor>,
    },
}

/// An instance the node should run, with everything needed to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    pub id: String,
    pub deployment: String,
    /// The deployment's release the instance runs.
    #[serde(default)]
    pub release: u64,
    pub runtime: Runtime,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
    /// The port the app listens on inside an isolated instance; a plain process gets a
    /// port chosen by the agent instead, in `PORT`.
    pub port: u16,
    pub health_check: HealthCheckSpec,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let m = AgentMessage::Instance(InstanceReport {
            id: "i-1".into(),
            state: InstanceState::Failed,
            reason: Some("exited with status 1".into()),
            permanent: false,
        });
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(
            text,
            r#"{"type":"instance","id":"i-1","state":"failed","reason":"exited with status 1"}"#
        );
        assert_eq!(serde_json::from_str::<AgentMessage>(&text).unwrap(), m);
        let permanent =
            r#"{"type":"instance","id":"i-1","state":"failed","reason":"x","permanent":true}"#;
        assert!(matches!(
            serde_json::from_str::<AgentMessage>(permanent).unwrap(),
            AgentMessage::Instance(InstanceReport {
                permanent: true,
                ..
            })
        ));
        let c: ControlMessage =
            serde_json::from_str(r#"{"type":"assignments","version":3,"instances":[]}"#).unwrap();
        assert_eq!(
            c,
            ControlMessage::Assignments {
                version: 3,
                instances: vec![]
            }
        );
        assert!(serde_json::from_str::<ControlMessage>(r#"{"type":"x"}"#).is_err());
    }
}
