//! What `POST /api/v1/certificates` hands the CA: any text as a CSR, any names. No input
//! may panic; what is signed must load as an identity with the request's key (never).
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use zw_pki::{Ca, Role};

static CA: OnceLock<Ca> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let ca = CA.get_or_init(|| Ca::generate().expect("a CA"));
    // The first line, if short, doubles as a requested name.
    let names: Vec<String> = text
        .lines()
        .next()
        .filter(|l| l.len() < 300)
        .map(|l| vec![l.to_string()])
        .unwrap_or_default();
    let _ = ca.sign(text, Role::Node, "fuzz", &names, Duration::from_secs(60));
    let _ = ca.sign(text, Role::Edge, "fuzz", &[], Duration::from_secs(60));
    let _ = zw_pki::server_name(text);
});
