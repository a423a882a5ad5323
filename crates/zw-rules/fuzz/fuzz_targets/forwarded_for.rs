//! Feeds arbitrary bytes, as `X-Forwarded-For` lines, to the `ipStrategy` reader.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let depth = u32::from(data.first().copied().unwrap_or(0) % 8);
    let lines = data.split(|b| *b == b'\n');
    let excluded: [zw_rules::IpNet; 1] = ["10.0.0.0/8".parse().unwrap()];
    let _ = zw_rules::forwarded_client(lines, depth, &excluded);
});
