//! Feeds arbitrary bytes to the rule parser, the compiler and the matcher, and checks the
//! printer round trip on whatever parses.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(expr) = zw_rules::parse(text) {
        let printed = expr.to_string();
        let again = zw_rules::parse(&printed).expect("printed rule must parse");
        assert_eq!(again, expr, "round trip changed the rule: {printed}");
    }
    if let Ok(rule) = zw_rules::Rule::compile(text) {
        let headers = http::HeaderMap::new();
        let view = zw_rules::RequestView {
            method: "GET",
            host: "a.example.com",
            path: "/x/y",
            query: "a=1&b",
            headers: &headers,
            client_ip: Some([10, 0, 0, 1].into()),
        };
        let _ = rule.matches(&view);
    }
    let _ = zw_rules::routing_path(text);
    let _ = zw_rules::normalize_host(text);
    let _ = zw_rules::clean_path(text);
});
