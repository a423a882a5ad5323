use super::*;
use proptest::prelude::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn v1_vectors() {
    let text = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
    let h = parse(text).unwrap();
    assert_eq!(h.len, 47);
    assert_eq!(&text[h.len..h.len + 3], b"GET");
    assert_eq!(
        h.addresses,
        Some(Addresses {
            source: sa("192.168.0.1:56324"),
            destination: sa("192.168.0.11:443")
        })
    );
    let h = parse(b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n").unwrap();
    assert_eq!(h.addresses.unwrap().source, sa("[2001:db8::1]:1"));
    assert_eq!(h.addresses.unwrap().destination.port(), 65535);
    let h = parse(b"PROXY UNKNOWN\r\n").unwrap();
    assert_eq!((h.len, h.addresses), (15, None));
    let h = parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nxyz").unwrap();
    assert_eq!(h.addresses, None);
    // the longest legal header
    let max = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
    assert!(parse(max).is_ok());
}

#[test]
fn v1_refusals() {
    for bad in [
        &b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 1\r\n"[..],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 080 1\r\n",
        b"PROXY TCP4 1.2.3.4  5.6.7.8 80 1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 80 1 9\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 80 1\r\n",
        b"PROXY TCP4 ::1 ::1 80 1\r\n",
        b"PROXY TCP6 1.2.3.4 5.6.7.8 80 1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 80 1\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 80 1\rx",
        b"PROXY tcp4 1.2.3.4 5.6.7.8 80 1\r\n",
    ] {
        assert!(
            matches!(parse(bad), Err(Error::Invalid(_))),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 120]].concat();
    assert_eq!(
        parse(&long),
        Err(Error::Invalid("v1 header longer than 107 bytes"))
    );
    assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(Error::NotProxyProtocol));
    assert_eq!(parse(b"PROXX"), Err(Error::NotProxyProtocol));
    assert_eq!(parse(b"PRO"), Err(Error::Incomplete));
    assert_eq!(parse(b""), Err(Error::Incomplete));
    assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Err(Error::Incomplete));
    assert_eq!(
        parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 80 1\r"),
        Err(Error::Incomplete)
    );
}

#[test]
fn v2_vectors() {
    let h = encode_v2(sa("10.1.2.3:40000"), sa("10.0.0.1:443"));
    assert_eq!(h.len(), 28);
    assert_eq!(&h[..16], b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c");
    let mut stream = h.clone();
    stream.extend_from_slice(b"\x16\x03\x01");
    let p = parse(&stream).unwrap();
    assert_eq!((p.len, p.version), (28, 2));
    assert_eq!(p.addresses.unwrap().source, sa("10.1.2.3:40000"));

    let h6 = encode_v2(sa("[2001:db8::7]:1234"), sa("10.0.0.1:443"));
    assert_eq!(h6.len(), 52);
    let p = parse(&h6).unwrap().addresses.unwrap();
    assert_eq!(p.source, sa("[2001:db8::7]:1234"));
    assert_eq!(p.destination, sa("[::ffff:10.0.0.1]:443"));

    let local = parse(&encode_v2_local()).unwrap();
    assert_eq!((local.len, local.addresses), (16, None));

    // TLVs after the addresses (here: ALPN "h2" and a NOOP) are skipped
    let mut with_tlv = h.clone();
    with_tlv[15] = 12 + 5 + 3;
    with_tlv.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2', 0x04, 0x00, 0x00]);
    assert_eq!(parse(&with_tlv).unwrap().len, 36);

    // UNIX sockets: no IP, the connection's own addresses stand
    let mut unix = V2_SIGNATURE.to_vec();
    unix.extend_from_slice(&[0x21, 0x31, 0x00, 216]);
    unix.extend_from_slice(&[0u8; 216]);
    assert_eq!(parse(&unix).unwrap().addresses, None);
}

#[test]
fn v2_refusals() {
    let good = encode_v2(sa("10.1.2.3:40000"), sa("10.0.0.1:443"));
    let bad = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut h = good.clone();
        f(&mut h);
        parse(&h)
    };
    assert_eq!(
        bad(&|h| h[12] = 0x11),
        Err(Error::Invalid("v2 version must be 2"))
    );
    assert_eq!(
        bad(&|h| h[12] = 0x22),
        Err(Error::Invalid("v2 command must be LOCAL or PROXY"))
    );
    assert!(matches!(bad(&|h| h[13] = 0x41), Err(Error::Invalid(_))));
    assert!(matches!(bad(&|h| h[13] = 0x13), Err(Error::Invalid(_))));
    // INET6 claimed with an INET-sized block
    assert!(matches!(bad(&|h| h[13] = 0x21), Err(Error::Invalid(_))));
    // a TLV running past the end
    assert!(matches!(
        bad(&|h| {
            h[15] = 12 + 3;
            h.extend_from_slice(&[0x01, 0x00, 0x09]);
        }),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        bad(&|h| {
            h[15] = 12 + 2;
            h.extend_from_slice(&[0x01, 0x00]);
        }),
        Err(Error::Invalid(_))
    ));
    // oversize, announced: refused before the bytes arrive
    assert_eq!(
        bad(&|h| {
            h[14] = 0xff;
            h.truncate(16)
        }),
        Err(Error::Invalid("v2 header longer than 4096 bytes"))
    );
    // every proper prefix is incomplete
    for n in 0..good.len() {
        assert_eq!(parse(&good[..n]), Err(Error::Incomplete), "prefix {n}");
    }
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, p)| SocketAddr::new(IpAddr::from(a), p)),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(a, p)| SocketAddr::new(IpAddr::from(a), p)),
    ]
}

fn same_family(a: SocketAddr, b: SocketAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

proptest! {
    #[test]
    fn v2_round_trips(s in addr(), d in addr(), tail in proptest::collection::vec(any::<u8>(), 0..32)) {
        let mut h = encode_v2(s, d);
        let len = h.len();
        h.extend_from_slice(&tail);
        let p = parse(&h).unwrap();
        prop_assert_eq!(p.len, len);
        let a = p.addresses.unwrap();
        if same_family(s, d) {
            prop_assert_eq!((a.source, a.destination), (s, d));
        } else {
            prop_assert_eq!(a.source.port(), s.port());
        }
    }

    #[test]
    fn v1_round_trips(s in addr(), d in addr()) {
        let h = encode_v1(s, d);
        prop_assert!(h.len() <= V1_MAX);
        let p = parse(h.as_bytes()).unwrap();
        prop_assert_eq!(p.len, h.len());
        let a = p.addresses.unwrap();
        if same_family(s, d) {
            prop_assert_eq!((a.source, a.destination), (s, d));
        }
        for n in 0..h.len() {
            prop_assert_eq!(parse(&h.as_bytes()[..n]), Err(Error::Incomplete));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_overrun(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(h) = parse(&buf) {
            prop_assert!(h.len <= buf.len());
        }
    }

    #[test]
    fn arbitrary_bytes_after_the_signature(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let buf = [V2_SIGNATURE.as_slice(), &body].concat();
        if let Ok(h) = parse(&buf) {
            prop_assert!(h.len <= buf.len());
        }
    }
}
