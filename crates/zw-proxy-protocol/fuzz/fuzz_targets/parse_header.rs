//! Whatever arrives first on a PROXY-protocol entry point: no panic, no claim to have read
//! more than was there, and a header that parses is a prefix that stays parsed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zw_proxy_protocol::{parse, Error};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(h) => {
            assert!(h.len <= data.len());
            // the same header with nothing after it parses the same way
            assert_eq!(parse(&data[..h.len]), Ok(h));
        }
        Err(Error::Incomplete) => assert!(data.len() < zw_proxy_protocol::V2_MAX),
        Err(_) => {}
    }
});
