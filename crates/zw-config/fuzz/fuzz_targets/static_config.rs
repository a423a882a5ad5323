//! Feeds arbitrary bytes to the Traefik static configuration parser (entry points, file
//! provider, ACME resolvers) and to what it adds to a dynamic configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zw_config::{acme_domains, parse_static, Config, Format};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for format in [Format::Toml, Format::Yaml, Format::Json] {
        if let Ok(st) = parse_static(text, format) {
            let mut config = Config::default();
            let _ = st.apply_to(&mut config);
            let _ = acme_domains(&config);
        }
    }
});
