//! The path decoder the router matches on: no panic on any request path, an unescaped
//! path comes back as it is, and decoding never makes the path longer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(p) = zw_rules::routing_path(text) {
        if !text.contains('%') {
            assert_eq!(p, text);
        }
        assert!(p.len() <= text.len(), "{text:?} grew to {p:?}");
        let _ = zw_rules::clean_path(&p);
    }
});
