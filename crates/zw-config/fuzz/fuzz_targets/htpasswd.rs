//! Feeds arbitrary bytes to basicAuth's parsers: an htpasswd hash (config) and an
//! `Authorization: Basic` value (every request through a basicAuth router).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = zw_config::basic_credentials(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = zw_config::parse_hash(text);
    }
});
