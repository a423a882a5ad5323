//! Whatever an upstream sends back, read the way the edge reads it (the first byte
//! decides where the bytes are split as they arrive): no panic, the buffer only ever
//! shrinks by what was consumed, and no body is longer than what arrived.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use zw_h1::{parse_head, response_framing, Framing, Step};

fuzz_target!(|data: &[u8]| {
    let Some((&split, wire)) = data.split_first() else {
        return;
    };
    let mut pieces = wire.chunks(usize::from(split).max(1));
    let mut buf = BytesMut::new();
    let mut head = loop {
        match parse_head(&mut buf) {
            Ok(Some(h)) if h.status.is_informational() => continue,
            Ok(Some(h)) => break h,
            Ok(None) => match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                None => return,
            },
            Err(_) => return,
        }
    };
    let Ok(mut framing) =
        response_framing(&http::Method::GET, head.status, head.version, &mut head.headers)
    else {
        return;
    };
    let mut body = 0usize;
    loop {
        match &mut framing {
            Framing::Chunked(c) => {
                let before = buf.len();
                match c.step(&mut buf) {
                    Ok(Step::Data(d)) => {
                        assert!(!d.is_empty() && buf.len() < before);
                        body += d.len();
                    }
                    Ok(Step::Trailers(_)) | Ok(Step::End) => break,
                    Ok(Step::More) => match pieces.next() {
                        Some(p) => buf.extend_from_slice(p),
                        None => break,
                    },
                    Err(_) => break,
                }
            }
            _ => break,
        }
    }
    assert!(body <= wire.len());
});
