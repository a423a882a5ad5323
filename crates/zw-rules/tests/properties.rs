//! Property tests: printing and re-parsing a rule gives the same tree; no input panics.

use proptest::prelude::*;
use zw_rules::{parse, translate_go_regex, Expr, MatcherCall, MatcherKind, Rule};

fn value() -> impl Strategy<Value = String> {
    // Values with backticks, quotes, backslashes and control characters exercise both
    // quoting styles of the printer.
    prop_oneof![
        "[a-z0-9./*-]{1,12}",
        "[ -~]{1,12}",
        any::<String>().prop_filter("non-empty", |s| !s.is_empty()),
    ]
}

fn matcher() -> impl Strategy<Value = Expr> {
    (
        prop::sample::select(MatcherKind::ALL.to_vec()),
        prop::collection::vec(value(), 2),
    )
        .prop_map(|(kind, vals)| {
            let (min, max) = kind.arity();
            let n = if min == max {
                min
            } else {
                min + (vals[0].len() % 2)
            };
            let _ = max;
            let args: Vec<String> = vals.into_iter().take(n).collect();
            Expr::Matcher(MatcherCall {
                kind,
                arg_positions: vec![0; args.len()],
                args,
                position: 0,
            })
        })
}

fn expr() -> impl Strategy<Value = Expr> {
    matcher().prop_recursive(6, 48, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Expr::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner).prop_map(|(a, b)| Expr::Or(Box::new(a), Box::new(b))),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// `X-Forwarded-For`, however it is split over lines and spaced: `depth` picks the
    /// entry that many from the right, `excluded` skips the networks from the right, and
    /// bytes of any kind are no address rather than a panic.
    #[test]
    fn forwarded_client_picks_as_traefik_does(
        ips in proptest::collection::vec(any::<[u8; 4]>(), 0..8),
        lines in 1usize..4,
        depth in 0u32..10,
        junk in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        use std::net::{IpAddr, Ipv4Addr};
        let addrs: Vec<IpAddr> = ips.iter().map(|o| IpAddr::V4(Ipv4Addr::from(*o))).collect();
        let texts: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        let per = texts.len().div_ceil(lines).max(1);
        let values: Vec<String> = texts.chunks(per).map(|c| c.join(" ,  ")).collect();
        let got = zw_rules::forwarded_client(values.iter().map(|v| v.as_bytes()), depth, &[]);
        if depth > 0 {
            let want = addrs.len().checked_sub(depth as usize).and_then(|i| addrs.get(i)).copied();
            prop_assert_eq!(got, want);
        } else {
            prop_assert_eq!(got, addrs.last().copied());
        }
        // excluding the rightmost one's /32 gives the one before it (unless equal)
        if let Some(last) = addrs.last() {
            let net: zw_rules::IpNet = last.to_string().parse().unwrap();
            let got = zw_rules::forwarded_client(values.iter().map(|v| v.as_bytes()), 0, &[net]);
            let want = addrs.iter().rev().find(|a| *a != last).copied();
            prop_assert_eq!(got, want);
        }
        let _ = zw_rules::forwarded_client(std::iter::once(junk.as_slice()), depth, &[]);
    }

    #[test]
    fn print_parse_round_trip(e in expr()) {
        let printed = e.to_string();
        let reparsed = parse(&printed).map_err(|err| TestCaseError::fail(format!("{printed}: {err}")))?;
        prop_assert_eq!(&reparsed, &e, "printed as {}", printed);
        // and printing is a fixed point
        prop_assert_eq!(reparsed.to_string(), printed);
    }

    #[test]
    fn parse_never_panics(s in any::<String>()) {
        let _ = Rule::compile(&s);
    }

    #[test]
    fn parse_never_panics_on_rule_like_text(s in "[HPMQCHhostpathregxiquy()`\"!&| ,\\\\*./a-z0-9\\[\\]{}]{0,80}") {
        if let Err(e) = Rule::compile(&s) {
            prop_assert!(e.position <= s.len(), "position {} beyond {}", e.position, s.len());
        }
    }

    #[test]
    fn regex_translation_never_panics_and_literal_text_still_matches(s in "[a-z{}0-9,]{0,16}") {
        // Letters, digits, commas and braces: in RE2 this compiles (braces that do not form
        // a repetition are literal) unless a repetition counts down, like `a{3,0}`, which
        // RE2 refuses too. Everything else must compile after translation.
        let counts_down = regex::Regex::new(r"\{(\d+),(\d+)\}")
            .unwrap()
            .captures_iter(&s)
            .any(|c| c[1].parse::<u64>().ok() > c[2].parse::<u64>().ok());
        prop_assume!(!counts_down);
        let re = regex::Regex::new(&translate_go_regex(&s));
        prop_assert!(re.is_ok(), "{} -> {}", s, translate_go_regex(&s));
    }

    #[test]
    fn regex_translation_total(s in any::<String>()) {
        let _ = translate_go_regex(&s);
    }
}
