//! Feeds arbitrary bytes to the authentication middlewares' parsers: an htpasswd hash
//! (config), and the `Authorization: Basic` and `Digest` values every request through a
//! basicAuth or digestAuth router brings.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = zw_config::basic_credentials(data);
    let _ = zw_config::digest_params(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = zw_config::parse_hash(text);
    }
});
