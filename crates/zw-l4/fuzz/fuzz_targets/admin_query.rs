//! The balancer admin's drain query: no panic on any query string, and a backend that
//! decodes is a socket address that prints and parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(t) = zw_l4::admin::drain_target(Some(text)) {
        assert_eq!(t.backend.to_string().parse(), Ok(t.backend));
    }
});
