//! Go's `http.DetectContentType` (`net/http/sniff.go`): the media type a response body's
//! first bytes suggest, by the WHATWG MIME Sniffing Standard's signatures in Go's order.
//! Traefik's `contentType` middleware lets Go's server put this on responses that came
//! without a `Content-Type`; the edge does the same with this function.

/// The most of a body Go looks at.
pub const SNIFF_LEN: usize = 512;

const HTML: &str = "text/html; charset=utf-8";

/// One signature of Go's table.
enum Sig {
    /// `<TAG` without regard to case, after leading whitespace, followed by a space or `>`.
    Html(&'static [u8]),
    /// Each byte, masked, equals the pattern's (leading whitespace skipped when `skip_ws`).
    Masked {
        mask: &'static [u8],
        pat: &'static [u8],
        skip_ws: bool,
        ct: &'static str,
    },
    /// The body starts with these bytes.
    Exact(&'static [u8], &'static str),
    /// An ISO base media file whose brands include `mp4`.
    Mp4,
    /// No byte the standard calls binary: plain text.
    Text,
}

const fn masked(mask: &'static [u8], pat: &'static [u8], ct: &'static str) -> Sig {
    Sig::Masked {
        mask,
        pat,
        skip_ws: false,
        ct,
    }
}

const SIGNATURES: &[Sig] = &[
    Sig::Html(b"<!DOCTYPE HTML"),
    Sig::Html(b"<HTML"),
    Sig::Html(b"<HEAD"),
    Sig::Html(b"<SCRIPT"),
    Sig::Html(b"<IFRAME"),
    Sig::Html(b"<H1"),
    Sig::Html(b"<DIV"),
    Sig::Html(b"<FONT"),
    Sig::Html(b"<TABLE"),
    Sig::Html(b"<A"),
    Sig::Html(b"<STYLE"),
    Sig::Html(b"<TITLE"),
    Sig::Html(b"<B"),
    Sig::Html(b"<BODY"),
    Sig::Html(b"<BR"),
    Sig::Html(b"<P"),
    Sig::Html(b"<!--"),
    Sig::Masked {
        mask: b"\xFF\xFF\xFF\xFF\xFF",
        pat: b"<?xml",
        skip_ws: true,
        ct: "text/xml; charset=utf-8",
    },
    Sig::Exact(b"%PDF-", "application/pdf"),
    Sig::Exact(b"%!PS-Adobe-", "application/postscript"),
    // Byte order marks.
    masked(
        b"\xFF\xFF\x00\x00",
        b"\xFE\xFF\x00\x00",
        "text/plain; charset=utf-16be",
    ),
    masked(
        b"\xFF\xFF\x00\x00",
        b"\xFF\xFE\x00\x00",
        "text/plain; charset=utf-16le",
    ),
    masked(
        b"\xFF\xFF\xFF\x00",
        b"\xEF\xBB\xBF\x00",
        "text/plain; charset=utf-8",
    ),
    // Images.
    Sig::Exact(b"\x00\x00\x01\x00", "image/x-icon"),
    Sig::Exact(b"\x00\x00\x02\x00", "image/x-icon"),
    Sig::Exact(b"BM", "image/bmp"),
    Sig::Exact(b"GIF87a", "image/gif"),
    Sig::Exact(b"GIF89a", "image/gif"),
    masked(
        b"\xFF\xFF\xFF\xFF\x00\x00\x00\x00\xFF\xFF\xFF\xFF\xFF\xFF",
        b"RIFF\x00\x00\x00\x00WEBPVP",
        "image/webp",
    ),
    Sig::Exact(b"\x89PNG\x0D\x0A\x1A\x0A", "image/png"),
    Sig::Exact(b"\xFF\xD8\xFF", "image/jpeg"),
    // Audio and video, in the standard's order.
    masked(b"\xFF\xFF\xFF\xFF", b".snd", "audio/basic"),
    masked(
        b"\xFF\xFF\xFF\xFF\x00\x00\x00\x00\xFF\xFF\xFF\xFF",
        b"FORM\x00\x00\x00\x00AIFF",
        "audio/aiff",
    ),
    masked(b"\xFF\xFF\xFF", b"ID3", "audio/mpeg"),
    masked(b"\xFF\xFF\xFF\xFF\xFF", b"OggS\x00", "application/ogg"),
    masked(
        b"\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF",
        b"MThd\x00\x00\x00\x06",
        "audio/midi",
    ),
    masked(
        b"\xFF\xFF\xFF\xFF\x00\x00\x00\x00\xFF\xFF\xFF\xFF",
        b"RIFF\x00\x00\x00\x00AVI ",
        "video/avi",
    ),
    masked(
        b"\xFF\xFF\xFF\xFF\x00\x00\x00\x00\xFF\xFF\xFF\xFF",
        b"RIFF\x00\x00\x00\x00WAVE",
        "audio/wave",
    ),
    Sig::Mp4,
    Sig::Exact(b"\x1A\x45\xDF\xA3", "video/webm"),
    // Fonts: 34 bytes of anything, then "LP".
    masked(
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xFF\xFF",
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00LP",
        "application/vnd.ms-fontobject",
    ),
    Sig::Exact(b"\x00\x01\x00\x00", "font/ttf"),
    Sig::Exact(b"OTTO", "font/otf"),
    Sig::Exact(b"ttcf", "font/collection"),
    Sig::Exact(b"wOFF", "font/woff"),
    Sig::Exact(b"wOF2", "font/woff2"),
    // Archives (RAR by RAR Labs' signatures, as Go has them).
    Sig::Exact(b"\x1F\x8B\x08", "application/x-gzip"),
    Sig::Exact(b"PK\x03\x04", "application/zip"),
    Sig::Exact(b"Rar!\x1A\x07\x00", "application/x-rar-compressed"),
    Sig::Exact(b"Rar!\x1A\x07\x01\x00", "application/x-rar-compressed"),
    Sig::Exact(b"\x00\x61\x73\x6D", "application/wasm"),
    Sig::Text,
];

fn is_ws(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | b'\x0c' | b'\r' | b' ')
}

/// The media type `data`'s first [`SNIFF_LEN`] bytes suggest; `application/octet-stream`
/// when none fits, as in Go.
pub fn detect_content_type(data: &[u8]) -> &'static str {
    let data = data.get(..SNIFF_LEN).unwrap_or(data);
    let first_non_ws = data.iter().position(|b| !is_ws(*b)).unwrap_or(data.len());
    let trimmed = data.get(first_non_ws..).unwrap_or_default();
    SIGNATURES
        .iter()
        .find_map(|sig| matches(sig, data, trimmed))
        .unwrap_or("application/octet-stream")
}

fn matches(sig: &Sig, data: &[u8], trimmed: &[u8]) -> Option<&'static str> {
    match sig {
        Sig::Html(tag) => {
            let next = trimmed.get(tag.len())?;
            let same = tag.iter().zip(trimmed).all(|(t, d)| {
                // Letters of the tag match either case.
                let d = if t.is_ascii_uppercase() { d & 0xDF } else { *d };
                *t == d
            });
            (same && matches!(next, b' ' | b'>')).then_some(HTML)
        }
        Sig::Masked {
            mask,
            pat,
            skip_ws,
            ct,
        } => {
            let data = if *skip_ws { trimmed } else { data };
            let head = data.get(..pat.len())?;
            head.iter()
                .zip(mask.iter())
                .zip(pat.iter())
                .all(|((d, m), p)| d & m == *p)
                .then_some(*ct)
        }
        Sig::Exact(prefix, ct) => data.starts_with(prefix).then_some(*ct),
        Sig::Mp4 => mp4(data).then_some("video/mp4"),
        Sig::Text => trimmed
            .iter()
            .all(|b| !matches!(b, 0x00..=0x08 | 0x0B | 0x0E..=0x1A | 0x1C..=0x1F))
            .then_some("text/plain; charset=utf-8"),
    }
}

/// The standard's "signature for MP4": an `ftyp` box, whole in `data`, naming an `mp4`
/// brand (the major brand's version skipped).
fn mp4(data: &[u8]) -> bool {
    let Some(size) = data.get(..4) else {
        return false;
    };
    if data.len() < 12 {
        return false;
    }
    let size = u32::from_be_bytes([size[0], size[1], size[2], size[3]]) as usize;
    if data.len() < size || !size.is_multiple_of(4) || data.get(4..8) != Some(b"ftyp") {
        return false;
    }
    (8..size)
        .step_by(4)
        .filter(|at| *at != 12)
        .any(|at| data.get(at..at + 3) == Some(b"mp4"))
}

#[cfg(test)]
mod tests {
    use super::detect_content_type as d;

    /// One body per signature kind, as Go's `sniff_test.go` (`sniffTests`) checks them; the
    /// edge's differential test compares real responses with Traefik's.
    #[test]
    fn go_sniff_tests() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "text/plain; charset=utf-8"),
            (b"\x01\x02\x03", "application/octet-stream"),
            (
                b"<HtMl><bOdY>blah blah blah</body></html>",
                "text/html; charset=utf-8",
            ),
            (b"\n<html>blah</html>", "text/html; charset=utf-8"),
            (b"<!-- x -->", "text/html; charset=utf-8"),
            (b"<!--\n", "text/plain; charset=utf-8"),
            (b"   <!DOCTYPE HTML>...", "text/html; charset=utf-8"),
            (b"<html>\x00", "text/html; charset=utf-8"),
            (b"<htmlx>", "text/plain; charset=utf-8"),
            (b"\n<?xml!", "text/xml; charset=utf-8"),
            (b"\xfe\xff\x00\x00", "text/plain; charset=utf-16be"),
            (b"\xff\xfe\x00\x00", "text/plain; charset=utf-16le"),
            (b"\xef\xbb\xbf\x00", "text/plain; charset=utf-8"),
            (b"\x00\x00\x01\x00", "image/x-icon"),
            (b"BMxxxxxxxx", "image/bmp"),
            (b"GIF87a", "image/gif"),
            (b"GIF89a...", "image/gif"),
            (b"RIFF\x00\x00\x00\x00WEBPVP", "image/webp"),
            (b"\x89PNG\x0D\x0A\x1A\x0A", "image/png"),
            (b"\xFF\xD8\xFF", "image/jpeg"),
            (b"ID3\x03\x00\x00\x00\x00\x0f", "audio/mpeg"),
            (b"OggS\x00", "application/ogg"),
            (b"MThd\x00\x00\x00\x06\x00\x01", "audio/midi"),
            (b"RIFF\x00\x00\x00\x00AVI ", "video/avi"),
            (b"RIFF\x00\x00\x00\x00WAVE", "audio/wave"),
            (b"\x1aE\xdf\xa3", "video/webm"),
            (
                b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom<\x06t\xbfmdat",
                "video/mp4",
            ),
            (b"\x00\x00\x00\x20ftypisom", "application/octet-stream"),
            (b"wOFF", "font/woff"),
            (b"\x1F\x8B\x08", "application/x-gzip"),
            (b"PK\x03\x04", "application/zip"),
            (b"Rar!\x1A\x07\x01\x00", "application/x-rar-compressed"),
            (b"\x00\x61\x73\x6D\x01\x00", "application/wasm"),
            (b"%PDF-1.7", "application/pdf"),
            (b"Hello, world\n", "text/plain; charset=utf-8"),
            (b"{\"a\": 1}", "text/plain; charset=utf-8"),
        ];
        for (data, want) in cases {
            assert_eq!(d(data), *want, "{data:?}");
        }
    }

    #[test]
    fn only_the_first_512_bytes_count() {
        let mut data = vec![b'a'; 512];
        data.push(0x01);
        assert_eq!(d(&data), "text/plain; charset=utf-8");
        data[511] = 0x01;
        assert_eq!(d(&data), "application/octet-stream");
    }

    #[test]
    fn a_lying_mp4_box_size_is_no_mp4() {
        assert_eq!(
            d(b"\x00\x00\x00\x40ftypmp42mp42"),
            "application/octet-stream"
        );
        assert_eq!(
            d(b"\x00\x00\x00\x00ftypmp42mp42"),
            "application/octet-stream"
        );
    }
}
