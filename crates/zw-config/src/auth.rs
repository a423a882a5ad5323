//! Validation of the authentication middlewares (`basicAuth`, `digestAuth`,
//! `forwardAuth`), and the parsers of what clients send them.

use std::collections::BTreeMap;
use std::io::Read;

use base64::Engine;

use crate::validate::Checker;
use crate::{
    BasicAuth, BasicAuthSpec, DigestAuth, DigestAuthSpec, ForwardAuth, ForwardAuthSpec,
    ParsedMiddleware, PasswordHash, UpstreamScheme, UpstreamUrl,
};

/// The most an htpasswd file may hold.
pub const MAX_USERS_FILE_BYTES: u64 = 1 << 20;

/// Traefik's default realm (`pkg/middlewares/auth/auth.go`).
const DEFAULT_REALM: &str = "traefik";

/// The lines of `users` after those of `usersFile` (trimmed; blanks and `#` comments
/// skipped, as Traefik's `getLinesFromFile`), each with the path to name in an error.
fn user_lines(
    c: &mut Checker<'_>,
    p: &str,
    users: &[String],
    users_file: Option<&String>,
    digest: &mut Vec<u8>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    // The file's users first, then the inline ones: a name in both is the inline one
    // (Traefik's `loadUsers` appends `users` after the file's lines).
    if let Some(file) = users_file {
        let mut text = Vec::new();
        let read = std::fs::File::open(file)
            .and_then(|f| f.take(MAX_USERS_FILE_BYTES + 1).read_to_end(&mut text));
        match read {
            Err(e) => c.err(
                format!("{p}.usersFile"),
                format!("cannot read `{file}`: {e}"),
            ),
            Ok(n) if n as u64 > MAX_USERS_FILE_BYTES => c.err(
                format!("{p}.usersFile"),
                format!("`{file}` is larger than {MAX_USERS_FILE_BYTES} bytes"),
            ),
            Ok(_) => {
                digest.extend_from_slice(&text);
                for (i, line) in String::from_utf8_lossy(&text).lines().enumerate() {
                    let line = line.trim();
                    if !line.is_empty() && !line.starts_with('#') {
                        out.push((
                            format!("{p}.usersFile (`{file}` line {})", i + 1),
                            line.to_string(),
                        ));
                    }
                }
            }
        }
    }
    for (i, line) in users.iter().enumerate() {
        out.push((format!("{p}.users[{i}]"), line.clone()));
    }
    out
}

/// `realm` (default `traefik`) and `headerField`, as both authentications take them.
fn realm_and_field(
    c: &mut Checker<'_>,
    p: &str,
    realm: Option<&str>,
    header_field: Option<&str>,
) -> (String, Option<http::HeaderName>) {
    let header_field = match header_field {
        None | Some("") => None,
        Some(h) => match http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                c.err(format!("{p}.headerField"), "not a valid header name");
                None
            }
        },
    };
    let realm = realm.filter(|r| !r.is_empty()).unwrap_or(DEFAULT_REALM);
    // It goes in `WWW-Authenticate: … realm="…"`.
    if realm.contains(['"', '\\']) || realm.chars().any(char::is_control) {
        c.err(
            format!("{p}.realm"),
            "must not contain quotes, backslashes or control characters",
        );
    }
    (realm.to_string(), header_field)
}

pub(crate) fn check_basic_auth(
    c: &mut Checker<'_>,
    p: &str,
    b: &BasicAuth,
    digest: &mut Vec<u8>,
) -> Option<ParsedMiddleware> {
    c.unknown(p, &b.unknown);
    let before = c.errors.len();
    let mut users = BTreeMap::new();
    for (at, line) in user_lines(c, p, &b.users, b.users_file.as_ref(), digest) {
        if let Some((name, hash)) = user(c, &at, &line) {
            users.insert(name, hash);
        }
    }
    if users.is_empty() && c.errors.len() == before {
        c.err(
            p,
            "no users: every request would be refused; add `users` (htpasswd lines, e.g. from `htpasswd -nB NAME`) or `usersFile`",
        );
    }
    let (realm, header_field) =
        realm_and_field(c, p, b.realm.as_deref(), b.header_field.as_deref());
    (c.errors.len() == before).then(|| {
        ParsedMiddleware::BasicAuth(BasicAuthSpec {
            users,
            realm,
            remove_header: b.remove_header,
            header_field,
        })
    })
}

pub(crate) fn check_digest_auth(
    c: &mut Checker<'_>,
    p: &str,
    d: &DigestAuth,
    digest: &mut Vec<u8>,
) -> Option<ParsedMiddleware> {
    c.unknown(p, &d.unknown);
    let before = c.errors.len();
    let (realm, header_field) =
        realm_and_field(c, p, d.realm.as_deref(), d.header_field.as_deref());
    let mut users = BTreeMap::new();
    let mut any = false;
    for (at, line) in user_lines(c, p, &d.users, d.users_file.as_ref(), digest) {
        // `name:realm:HA1`, exactly three parts (Traefik's `digestUserParser`).
        let parts: Vec<&str> = line.split(':').collect();
        let [name, user_realm, ha1] = parts[..] else {
            c.err(at, "expected `name:realm:hash` (an htdigest line, e.g. from `htdigest -c FILE REALM NAME`)");
            continue;
        };
        if name.is_empty() || ha1.len() != 32 || !ha1.bytes().all(|b| b.is_ascii_hexdigit()) {
            c.err(at, format!("user `{name}`: the hash must be 32 hexadecimal digits, md5(name:realm:password)"));
            continue;
        }
        any = true;
        if user_realm == realm {
            users.insert(name.to_string(), ha1.to_ascii_lowercase());
        }
    }
    if !any && c.errors.len() == before {
        c.err(
            p,
            "no users: every request would be refused; add `users` (htdigest lines) or `usersFile`",
        );
    } else if users.is_empty() && c.errors.len() == before {
        c.err(
            p,
            format!("no user is in realm `{realm}`: users are looked up in the middleware's realm only (set `realm`)"),
        );
    }
    (c.errors.len() == before).then(|| {
        ParsedMiddleware::DigestAuth(DigestAuthSpec {
            users,
            realm,
            remove_header: d.remove_header,
            header_field,
        })
    })
}

/// The fields of an `Authorization: Digest` value (`k=v` or `k="v"`, comma-separated;
/// go-http-auth's `DigestAuthParams`). `None` when the scheme is not Digest, the value
/// is longer than [`MAX_CREDENTIALS`], or a field is malformed.
pub fn digest_params(value: &[u8]) -> Option<BTreeMap<String, String>> {
    if value.len() > MAX_CREDENTIALS {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    let mut out = BTreeMap::new();
    let mut rest = rest.trim_start();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        let after = after.trim_start();
        let (val, next) = match after.strip_prefix('"') {
            // no escapes: no field a client sends needs one
            Some(quoted) => {
                let (val, next) = quoted.split_once('"')?;
                let next = next.trim_start();
                match next.strip_prefix(',') {
                    Some(n) => (val, n),
                    None if next.is_empty() => (val, ""),
                    None => return None,
                }
            }
            None => after.split_once(',').unwrap_or((after, "")),
        };
        out.insert(key, val.trim_end().to_string());
        rest = next.trim_start();
    }
    Some(out)
}

pub(crate) fn check_forward_auth(
    c: &mut Checker<'_>,
    p: &str,
    f: &ForwardAuth,
    digest: &mut Vec<u8>,
) -> Option<ParsedMiddleware> {
    c.unknown(p, &f.unknown);
    let before = c.errors.len();
    let server = match UpstreamUrl::parse(&f.address) {
        Ok(u) if u.scheme != UpstreamScheme::H2c => Some(u),
        Ok(_) => {
            c.err(
                format!("{p}.address"),
                "an authentication server is reached over http:// or https://",
            );
            None
        }
        Err(e) => {
            c.err(format!("{p}.address"), e);
            None
        }
    };
    let https = server
        .as_ref()
        .is_some_and(|s| s.scheme == UpstreamScheme::Https);
    let tls = match (&f.tls, https) {
        (Some(t), _) => {
            crate::tls::check_client_tls(c, &format!("{p}.tls"), "forwardAuth", t, digest)
                .map(|(config, _)| config)
                .filter(|_| https)
        }
        (None, true) => {
            let settings = crate::tls::ClientTls {
                roots: Vec::new(),
                client: None,
                insecure: false,
                server_name: None,
            };
            crate::tls::client_tls(c, p, "forwardAuth", settings, digest)
        }
        (None, false) => None,
    };
    let forward_body = match (f.forward_body, f.max_body_size) {
        (false, _) => None,
        (true, None | Some(-1)) => Some(crate::FORWARD_BODY_MAX),
        (true, Some(n)) => match u64::try_from(n) {
            Ok(n) => Some(n),
            Err(_) => {
                c.err(
                    format!("{p}.maxBodySize"),
                    "must be -1 (no limit of its own) or a number of bytes",
                );
                None
            }
        },
    };
    for (i, name) in f.add_auth_cookies_to_response.iter().enumerate() {
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
        if !token {
            c.err(
                format!("{p}.addAuthCookiesToResponse[{i}]"),
                "not a cookie name",
            );
        }
    }
    // What follows the authority, as the check's request target.
    let rest = f
        .address
        .split_once("://")
        .map(|(_, r)| r.find(['/', '?']).map_or("", |i| &r[i..]))
        .unwrap_or("");
    let rest = rest.split('#').next().unwrap_or("");
    let target = if rest.starts_with('?') {
        format!("/{rest}")
    } else if rest.is_empty() {
        "/".to_string()
    } else {
        rest.to_string()
    };
    let path_and_query = match http::uri::PathAndQuery::try_from(target.as_str()) {
        Ok(pq) => Some(pq),
        Err(_) => {
            c.err(
                format!("{p}.address"),
                "the path or query is not valid in a URL",
            );
            None
        }
    };
    let names = |c: &mut Checker<'_>, key: &str, list: &[String]| -> Vec<http::HeaderName> {
        list.iter()
            .enumerate()
            .filter_map(|(i, h)| match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    c.err(format!("{p}.{key}[{i}]"), "not a valid header name");
                    None
                }
            })
            .collect()
    };
    let auth_response_headers = names(c, "authResponseHeaders", &f.auth_response_headers);
    let auth_request_headers = names(c, "authRequestHeaders", &f.auth_request_headers);
    let auth_response_headers_regex = match f.auth_response_headers_regex.as_deref() {
        None | Some("") => None,
        // Header names are matched in their canonical form, case-insensitively.
        Some(re) => match zw_rules::compile_go_regex(&format!("(?i){re}")) {
            Ok(r) => Some(r),
            Err(e) => {
                c.err(format!("{p}.authResponseHeadersRegex"), e);
                None
            }
        },
    };
    let (server, path_and_query) = (server?, path_and_query?);
    (c.errors.len() == before).then(|| {
        ParsedMiddleware::ForwardAuth(ForwardAuthSpec {
            server,
            path_and_query,
            trust_forward_header: f.trust_forward_header,
            auth_response_headers,
            auth_response_headers_regex,
            auth_request_headers,
            preserve_location_header: f.preserve_location_header,
            preserve_request_method: f.preserve_request_method,
            tls,
            add_auth_cookies: f.add_auth_cookies_to_response.clone(),
            forward_body,
        })
    })
}

/// One `name:hash` line (exactly one `:`, as Traefik's `basicUserParser` wants).
fn user(c: &mut Checker<'_>, at: &str, line: &str) -> Option<(String, PasswordHash)> {
    let mut parts = line.split(':');
    let (Some(name), Some(hash), None) = (parts.next(), parts.next(), parts.next()) else {
        c.err(
            at,
            "expected `name:hash` (an htpasswd line, e.g. from `htpasswd -nB NAME`)",
        );
        return None;
    };
    if name.is_empty() {
        c.err(at, "the user name is empty");
        return None;
    }
    match parse_hash(hash) {
        Ok(h) => Some((name.to_string(), h)),
        Err(e) => {
            c.err(at, format!("user `{name}`: {e}"));
            None
        }
    }
}

/// The longest `Authorization` value looked at (a name and password, base64).
const MAX_CREDENTIALS: usize = 4096;

/// The name and password of an `Authorization: Basic` header value, as Go's
/// `Request.BasicAuth` reads it (scheme case-insensitive, standard base64, split at the
/// first `:`). Here beside the hashes it is checked against, for one fuzz target.
pub fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    let (scheme, token) = (value.get(..6)?, value.get(6..)?);
    if value.len() > MAX_CREDENTIALS || !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// The crypt alphabet (`./0-9A-Za-z`).
fn crypt64(s: &str) -> bool {
    s.bytes()
        .all(|b| b == b'.' || b == b'/' || b.is_ascii_alphanumeric())
}

/// Parses an htpasswd hash; the formats are go-http-auth's (`CheckSecret`), which
/// Traefik's basicAuth uses. A plain-text password is refused here: Traefik loads it but
/// then refuses every request (its `TestBasicAuthFail`).
pub fn parse_hash(hash: &str) -> Result<PasswordHash, String> {
    const HINT: &str = "make one with `htpasswd -nB NAME` (bcrypt)";
    if let Some(b64) = hash.strip_prefix("{SHA}") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| format!("the `{{SHA}}` hash is not base64; {HINT}"))?;
        let digest: [u8; 20] = raw
            .try_into()
            .map_err(|_| format!("the `{{SHA}}` hash is not 20 bytes long; {HINT}"))?;
        return Ok(PasswordHash::Sha1(digest));
    }
    for magic in ["$apr1$", "$1$"] {
        if let Some(rest) = hash.strip_prefix(magic) {
            let ok = rest.split_once('$').is_some_and(|(salt, sum)| {
                salt.len() <= 8 && crypt64(salt) && sum.len() == 22 && crypt64(sum)
            });
            return if ok {
                Ok(PasswordHash::Md5Crypt(hash.to_string()))
            } else {
                Err(format!(
                    "a malformed `{magic}` hash (`{magic}SALT$` and 22 characters); {HINT}"
                ))
            };
        }
    }
    // `$2x$` (hashes from the buggy pre-2011 crypt_blowfish) is not offered: re-hash.
    for magic in ["$2a$", "$2b$", "$2y$"] {
        if let Some(rest) = hash.strip_prefix(magic) {
            let ok = rest.split_once('$').is_some_and(|(cost, sum)| {
                cost.len() == 2
                    && cost.parse::<u8>().is_ok_and(|c| (4..=31).contains(&c))
                    && sum.len() == 53
                    && crypt64(sum)
            });
            return if ok {
                Ok(PasswordHash::Bcrypt(hash.to_string()))
            } else {
                Err(format!(
                    "a malformed bcrypt hash (`{magic}`, a cost 04–31, `$`, 53 characters); {HINT}"
                ))
            };
        }
    }
    Err(format!(
        "not a hash Traefik checks (bcrypt `$2y$`, MD5 `$apr1$` or `$1$`, SHA-1 `{{SHA}}`; a plain-text password never matches); {HINT}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hashes from Traefik's docs and tests (`basic_auth_test.go`).
    #[test]
    fn the_formats_traefik_checks_parse_and_others_are_refused() {
        assert!(matches!(
            parse_hash("$apr1$H6uskkkW$IgXLP6ewTrSuBkTrqE8wj/"),
            Ok(PasswordHash::Md5Crypt(_))
        ));
        assert!(matches!(
            parse_hash("$2a$04$.8sTYfcxbSplCtoxt5TdJOgpBYkarKtZYsYfYxQ1edbYRuO1DNi0e"),
            Ok(PasswordHash::Bcrypt(_))
        ));
        // `htpasswd -nbs test test`
        assert!(matches!(
            parse_hash("{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M="),
            Ok(PasswordHash::Sha1(_))
        ));
        for bad in [
            "test",
            "",
            "$apr1$H6uskkkW$short",
            "$apr1$toolongsalt$IgXLP6ewTrSuBkTrqE8wj/",
            "$2y$99$.8sTYfcxbSplCtoxt5TdJOgpBYkarKtZYsYfYxQ1edbYRuO1DNi0e",
            "{SHA}not base64!",
            "{SHA}dGVzdA==",
        ] {
            assert!(parse_hash(bad).is_err(), "{bad}");
        }
    }
}
