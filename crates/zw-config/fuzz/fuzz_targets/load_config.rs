//! Feeds arbitrary bytes to the configuration parsers (TOML, YAML, JSON) and validation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zw_config::{parse_str, validate, Format, Limits};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for format in [Format::Toml, Format::Yaml, Format::Json] {
        if let Ok(cfg) = parse_str(text, format) {
            let _ = validate(cfg, &Limits::default());
        }
    }
});
