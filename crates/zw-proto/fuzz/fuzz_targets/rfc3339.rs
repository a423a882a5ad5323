//! RFC 3339 times from the API and the stores: no panic on any text, and a time that
//! parses prints back (at millisecond precision) to the same instant.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zw_proto::time::{parse_rfc3339, rfc3339_millis};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(ms) = parse_rfc3339(text) {
        if ms >= 0 {
            let printed = rfc3339_millis(ms);
            assert_eq!(parse_rfc3339(&printed), Some(ms), "{text:?} printed as {printed}");
        }
    }
});
