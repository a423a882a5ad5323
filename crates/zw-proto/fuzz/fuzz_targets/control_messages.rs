//! Everything an operator, an edge or an agent reads off a control connection, and the field
//! checks the API runs on request bodies: no input may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zw_proto::agent::{AgentMessage, ControlMessage};
use zw_proto::api;
use zw_proto::protocol::{EdgeMessage, OperatorMessage};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(m) = OperatorMessage::from_json(text) {
        // what parses must print and parse back the same
        let again = OperatorMessage::from_json(&m.to_json()).expect("round trip");
        assert_eq!(again.to_json(), m.to_json());
    }
    if let Ok(m) = serde_json::from_str::<EdgeMessage>(text) {
        let printed = serde_json::to_string(&m).expect("print");
        assert_eq!(serde_json::from_str::<EdgeMessage>(&printed).expect("round trip"), m);
    }
    if let Ok(m) = serde_json::from_str::<AgentMessage>(text) {
        let printed = serde_json::to_string(&m).expect("print");
        assert_eq!(serde_json::from_str::<AgentMessage>(&printed).expect("round trip"), m);
    }
    if let Ok(m) = serde_json::from_str::<ControlMessage>(text) {
        let printed = serde_json::to_string(&m).expect("print");
        assert_eq!(serde_json::from_str::<ControlMessage>(&printed).expect("round trip"), m);
    }
    let _ = zw_proto::time::parse_rfc3339(text);
    let _ = api::check_domain("f", text);
    let _ = api::check_host_port("f", text);
    let _ = api::check_name("f", text);
    let _ = api::check_id("f", text);
});
