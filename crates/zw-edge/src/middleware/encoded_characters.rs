//! `encodedCharacters` (Traefik's `pkg/middlewares/encodedcharacters`): a request whose
//! path, as the client wrote it, holds a percent-encoded character the middleware does
//! not allow (`%2F`, `%5C`, `%00`, `%3B`, `%25`, `%3F`, `%23`, either case) is answered
//! 400, as is a path ending in a lone `%`: an application that decodes its path would
//! see a `/` or a `?` that no router saw.

use http::StatusCode;

use super::{Action, Middleware, MiddlewareCtx};

#[derive(Debug)]
pub struct EncodedCharacters {
    /// The decoded bytes refused in encoded form.
    denied: Vec<u8>,
}

impl EncodedCharacters {
    pub fn new(denied: &[u8]) -> Self {
        EncodedCharacters {
            denied: denied.to_vec(),
        }
    }

    /// Whether `path` (as sent, still encoded) is refused.
    pub fn refuses(&self, path: &[u8]) -> bool {
        let mut i = 0;
        while let Some(at) = path
            .get(i..)
            .and_then(|rest| rest.iter().position(|b| *b == b'%'))
        {
            let start = i + at;
            let (Some(hi), Some(lo)) = (path.get(start + 1), path.get(start + 2)) else {
                return true;
            };
            let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
            if let (Some(h), Some(l)) = (hex(*hi), hex(*lo)) {
                if self.denied.contains(&(h << 4 | l)) {
                    return true;
                }
            }
            i = start + 3;
        }
        false
    }
}

impl Middleware for EncodedCharacters {
    fn on_request(&self, ctx: &mut MiddlewareCtx<'_>) -> Action {
        if !self.denied.is_empty() && self.refuses(ctx.parts.uri.path().as_bytes()) {
            return Action::Respond(super::answer(StatusCode::BAD_REQUEST));
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cases of Traefik's `encoded_characters_test.go`: each encoded character refused
    /// in either case unless allowed, plain ones and other encodings let through.
    #[test]
    fn encoded_characters_are_refused_unless_allowed() {
        let all = EncodedCharacters::new(b"/\\\0;%?#");
        for path in [
            "/a%2Fb", "/a%2fb", "/%5C", "/%5c", "/%00", "/%3B", "/%3b", "/%25", "/%3F", "/%3f",
            "/%23", "/end%", "/end%2",
        ] {
            assert!(all.refuses(path.as_bytes()), "{path}");
        }
        for path in ["/", "/a/b", "/%20", "/caf%C3%A9", "/%zz", "/%2Ex"] {
            assert!(!all.refuses(path.as_bytes()), "{path}");
        }
        let slash_ok = EncodedCharacters::new(b"\\\0;%?#");
        assert!(!slash_ok.refuses(b"/a%2Fb"));
        assert!(slash_ok.refuses(b"/a%3Fb"));
    }
}
