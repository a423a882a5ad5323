//! The ClientHello reader on a real client's hello and on hellos split every which way.

use proptest::prelude::*;
use zw_l4::client_hello::{parse, ClientHello, Error, MAX_HELLO};

/// What `openssl s_client -servername app.example.com -alpn h2,http/1.1` (OpenSSL 3.0)
/// sent, captured on 127.0.0.1.
const OPENSSL: &[u8] = include_bytes!("data/openssl-3.0-client-hello.bin");

/// A ClientHello handshake message with these extensions and `pad` bytes of padding
/// (extension 21), the way big post-quantum key shares grow real ones.
fn hello(sni: Option<&str>, alpn: &[&str], pad: usize) -> Vec<u8> {
    let mut exts = Vec::new();
    if let Some(name) = sni {
        let mut list = vec![0u8];
        list.extend_from_slice(&(name.len() as u16).to_be_bytes());
        list.extend_from_slice(name.as_bytes());
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        ext(&mut exts, 0, &data);
    }
    if !alpn.is_empty() {
        let mut list = Vec::new();
        for p in alpn {
            list.push(p.len() as u8);
            list.extend_from_slice(p.as_bytes());
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        ext(&mut exts, 16, &data);
    }
    ext(&mut exts, 21, &vec![0u8; pad]);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one suite
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut msg = vec![0x01];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    msg
}

fn ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
}

/// The handshake message in records of at most `size` bytes.
fn records(msg: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in msg.chunks(size) {
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[test]
fn a_real_openssl_hello() {
    let h = parse(OPENSSL).unwrap();
    assert_eq!(
        h,
        ClientHello {
            server_name: Some("app.example.com".into()),
            alpn: vec!["h2".into(), "http/1.1".into()],
            len: OPENSSL.len(),
        }
    );
    for n in 0..OPENSSL.len() {
        assert_eq!(
            parse(&OPENSSL[..n]),
            Err(Error::Incomplete),
            "prefix of {n} bytes"
        );
    }
    // the same message re-split into 100-byte records
    let split = records(&OPENSSL[5..], 100);
    let h = parse(&split).unwrap();
    assert_eq!(h.server_name.as_deref(), Some("app.example.com"));
    assert_eq!(h.len, split.len());
}

#[test]
fn a_hello_larger_than_a_packet() {
    // about the size of a hello with an X25519MLKEM768 key share
    let msg = hello(Some("Big.Example.COM"), &["h2"], 1800);
    let mut stream = records(&msg, 1400);
    let len = stream.len();
    stream.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x01, 0xff]); // what follows is not ours
    let h = parse(&stream).unwrap();
    assert_eq!(h.server_name.as_deref(), Some("big.example.com"));
    assert_eq!(h.len, len);
}

#[test]
fn refusals() {
    assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(Error::NotTls));
    assert_eq!(parse(b"\x16\x02"), Err(Error::NotTls));
    assert_eq!(parse(b""), Err(Error::Incomplete));
    let big = records(&hello(Some("a.example"), &[], MAX_HELLO), 16384);
    assert_eq!(parse(&big), Err(Error::TooLarge));
    // a hello interrupted by an application-data record
    let msg = hello(Some("a.example"), &[], 10);
    let mut cut = records(&msg[..20], 20);
    cut.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x01, 0x00]);
    assert!(matches!(parse(&cut), Err(Error::Invalid(_))));
    // a server name that is not a host name
    assert!(matches!(
        parse(&records(&hello(Some("a b"), &[], 0), 512)),
        Err(Error::Invalid(_))
    ));
    // the same extension twice
    let mut twice = hello(Some("a.example"), &[], 0);
    let ext_start = 4 + 2 + 32 + 1 + 4 + 2 + 2;
    let exts = twice[ext_start..].to_vec();
    twice.extend_from_slice(&exts);
    let body_len = twice.len() - 4;
    twice[1..4].copy_from_slice(&(body_len as u32).to_be_bytes()[1..]);
    let ext_len = (twice.len() - ext_start) as u16;
    twice[ext_start - 2..ext_start].copy_from_slice(&ext_len.to_be_bytes());
    assert_eq!(
        parse(&records(&twice, 512)),
        Err(Error::Invalid("an extension appears twice"))
    );
    // no SNI at all is fine
    assert_eq!(
        parse(&records(&hello(None, &[], 0), 512))
            .unwrap()
            .server_name,
        None
    );
}

proptest! {
    #[test]
    fn any_record_split_reads_the_same(size in 1usize..600, pad in 0usize..3000) {
        let msg = hello(Some("split.example.com"), &["h2", "http/1.1"], pad);
        let stream = records(&msg, size);
        let h = parse(&stream).unwrap();
        prop_assert_eq!(h.server_name.as_deref(), Some("split.example.com"));
        prop_assert_eq!(h.alpn.len(), 2);
        prop_assert_eq!(h.len, stream.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..2000), tls in any::<bool>()) {
        if tls && bytes.len() > 5 {
            bytes[0] = 0x16;
            bytes[1] = 0x03;
        }
        if let Ok(h) = parse(&bytes) {
            prop_assert!(h.len <= bytes.len());
        }
    }
}
