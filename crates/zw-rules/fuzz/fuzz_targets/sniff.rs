//! Feeds arbitrary bytes, as a response body's start, to the content sniffer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ct = zw_rules::detect_content_type(data);
    // Always a media type a header can carry.
    assert!(http_ok(ct));
});

fn http_ok(ct: &str) -> bool {
    !ct.is_empty() && ct.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}
