//! Traefik durations (`"10s"`, `"1h30m"`, `"250"`): no panic on any text, and whatever
//! parses prints back to the same duration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zw_config::Dur;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(d) = Dur::parse(text) {
        let printed = d.to_string();
        assert_eq!(Dur::parse(&printed).map(|d| d.0), Ok(d.0), "{text:?} printed as {printed}");
    }
});
