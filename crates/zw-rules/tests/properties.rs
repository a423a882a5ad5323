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

/// A body's start that reaches every kind of signature of the sniffer: HTML tags in any
/// case after whitespace, `<?xml`, byte order marks, masked signatures with anything in
/// their free bytes, exact magic numbers, MP4 boxes, text, binary — each with a tail.
fn sniffable() -> impl Strategy<Value = Vec<u8>> {
    let html = (
        "[ \t\n\r\x0c]{0,3}",
        prop::sample::select(vec![
            "<!DOCTYPE HTML",
            "<HTML",
            "<HEAD",
            "<SCRIPT",
            "<IFRAME",
            "<H1",
            "<DIV",
            "<FONT",
            "<TABLE",
            "<A",
            "<STYLE",
            "<TITLE",
            "<B",
            "<BODY",
            "<BR",
            "<P",
            "<!--",
        ]),
        any::<u64>(),
        prop::sample::select(vec![" ", ">", "x", ""]),
    )
        .prop_map(|(ws, tag, case, end)| {
            let tag: String = tag
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if case >> (i % 64) & 1 == 1 {
                        c.to_ascii_lowercase()
                    } else {
                        c
                    }
                })
                .collect();
            format!("{ws}{tag}{end}").into_bytes()
        });
    let magic = prop::sample::select(vec![
        &b"<?xml"[..],
        b"%PDF-",
        b"%!PS-Adobe-",
        b"\xFE\xFF",
        b"\xFF\xFE",
        b"\xEF\xBB\xBF",
        b"\x00\x00\x01\x00",
        b"BM",
        b"GIF89a",
        b"\x89PNG\x0D\x0A\x1A\x0A",
        b"\xFF\xD8\xFF",
        b".snd",
        b"ID3",
        b"OggS\x00",
        b"MThd\x00\x00\x00\x06",
        b"\x1A\x45\xDF\xA3",
        b"OTTO",
        b"wOF2",
        b"\x1F\x8B\x08",
        b"PK\x03\x04",
        b"Rar!\x1A\x07\x01\x00",
        b"\x00\x61\x73\x6D",
    ])
    .prop_map(<[u8]>::to_vec);
    let riff = (
        any::<[u8; 4]>(),
        prop::sample::select(vec![&b"WEBPVP"[..], b"AVI ", b"WAVE", b"XXXX"]),
    )
        .prop_map(|(len, kind)| [&b"RIFF"[..], &len, kind].concat());
    let mp4 = (
        0u32..64,
        prop::collection::vec(any::<[u8; 4]>(), 0..12),
        any::<bool>(),
    )
        .prop_map(|(size, brands, mp4)| {
            let mut v = (size * 4).to_be_bytes().to_vec();
            v.extend_from_slice(b"ftyp");
            for (i, b) in brands.iter().enumerate() {
                v.extend_from_slice(if mp4 && i == 2 { b"mp41" } else { b });
            }
            v
        });
    let eot = any::<[u8; 34]>().prop_map(|b| [&b[..], b"LP"].concat());
    let text = "[ -~\t\n]{0,40}".prop_map(String::into_bytes);
    let binary = prop::collection::vec(any::<u8>(), 0..40);
    (
        prop_oneof![html, magic, riff, mp4, eot, text, binary],
        prop::collection::vec(any::<u8>(), 0..700),
    )
        .prop_map(|(head, tail)| [head, tail].concat())
}

proptest! {
    /// Every body gets one of Go's media types, from its first 512 bytes only.
    #[test]
    fn sniffing_answers_a_media_type_from_the_first_512_bytes(data in sniffable()) {
        let ct = zw_rules::detect_content_type(&data);
        prop_assert!(ct.contains('/') && ct.parse::<http::HeaderValue>().is_ok(), "{ct}");
        let head = &data[..data.len().min(zw_rules::SNIFF_LEN)];
        prop_assert_eq!(ct, zw_rules::detect_content_type(head));
    }

    /// An HTML tag Go lists, in any case, after whitespace and before a space or `>`, is
    /// HTML whatever follows.
    #[test]
    fn html_tags_are_html_in_any_case(
        ws in "[ \t\n\r\x0c]{0,3}",
        tag in prop::sample::select(vec!["<html", "<HeAd", "<p", "<!--", "<sCrIpT", "<!doctype html"]),
        end in prop::sample::select(vec![" ", ">"]),
        tail in prop::collection::vec(any::<u8>(), 0..100),
    ) {
        let data = [format!("{ws}{tag}{end}").into_bytes(), tail].concat();
        prop_assert_eq!(zw_rules::detect_content_type(&data), "text/html; charset=utf-8");
    }
}
