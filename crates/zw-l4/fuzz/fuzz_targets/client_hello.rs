//! The first bytes of any TLS connection the balancer accepts: no panic, and a hello that
//! parses claims no more bytes than arrived.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zw_l4::client_hello::parse;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = parse(data) {
        assert!(h.len <= data.len());
        assert_eq!(parse(&data[..h.len]), Ok(h));
    }
});
