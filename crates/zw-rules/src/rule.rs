//! Compiled rules and their evaluation.

use std::borrow::Cow;
use std::fmt;

use http::HeaderName;
use regex::{Regex, RegexBuilder};

use crate::ast::{Expr, MatcherCall, MatcherKind};
use crate::goregex::translate_go_regex;
use crate::ip::{canonical, IpNet};
use crate::{parse, RequestView, RuleError};

/// Compiled-program size allowed for one regular expression. With 100k routers a few
/// pathological patterns must not be able to take gigabytes.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A parsed, validated and compiled rule, ready to match requests.
#[derive(Debug, Clone)]
pub struct Rule {
    text: Box<str>,
    node: Node,
}

#[derive(Debug, Clone)]
pub(crate) enum Node {
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Leaf(Leaf),
}

#[derive(Debug, Clone)]
pub(crate) enum Leaf {
    /// `Host(`*`)`: everything, even requests with no host.
    HostAny,
    HostExact(Box<str>),
    /// `Host(`*.parent`)`: exactly one extra label in front of `parent`.
    HostWildcard(Box<str>),
    HostRegexp(Regex),
    Path(Box<str>),
    PathPrefix(Box<str>),
    PathRegexp(Regex),
    Header(HeaderName, Box<str>),
    HeaderRegexp(HeaderName, Regex),
    /// `Header(`Host`, …)`: Host is not a header for Traefik's matchers, so this never matches.
    Never,
    Method(Box<str>),
    Query(Box<str>, Option<Box<str>>),
    QueryRegexp(Box<str>, Option<Regex>),
    ClientIp(IpNet),
}

impl Rule {
    /// Parses and compiles rule text. Errors carry the byte position of the offending part.
    pub fn compile(text: &str) -> Result<Rule, RuleError> {
        let expr = parse(text)?;
        let node = compile_expr(&expr)?;
        Ok(Rule {
            text: text.into(),
            node,
        })
    }

    /// The rule text as written (its length is the default priority).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Traefik's default priority: the rule's length in bytes.
    pub fn default_priority(&self) -> i64 {
        i64::try_from(self.text.len()).unwrap_or(i64::MAX)
    }

    pub(crate) fn node(&self) -> &Node {
        &self.node
    }

    /// Whether the request matches.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        eval(&self.node, req)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn compile_expr(expr: &Expr) -> Result<Node, RuleError> {
    Ok(match expr {
        Expr::And(l, r) => Node::And(Box::new(compile_expr(l)?), Box::new(compile_expr(r)?)),
        Expr::Or(l, r) => Node::Or(Box::new(compile_expr(l)?), Box::new(compile_expr(r)?)),
        Expr::Not(e) => Node::Not(Box::new(compile_expr(e)?)),
        Expr::Matcher(call) => Node::Leaf(compile_call(call)?),
    })
}

fn compile_call(call: &MatcherCall) -> Result<Leaf, RuleError> {
    let arg_pos = |i: usize| call.arg_positions.get(i).copied().unwrap_or(call.position);
    let name = call.kind.name();
    for (i, a) in call.args.iter().enumerate() {
        if a.is_empty() {
            return Err(RuleError::new(arg_pos(i), format!("{name}: empty value")));
        }
    }
    let arg = |i: usize| call.args.get(i).map(String::as_str).unwrap_or_default();
    let regex = |i: usize| -> Result<Regex, RuleError> {
        compile_go_regex(arg(i)).map_err(|e| RuleError::new(arg_pos(i), format!("{name}: {e}")))
    };
    let header_name = |i: usize| -> Result<HeaderName, RuleError> {
        HeaderName::from_bytes(arg(i).as_bytes()).map_err(|_| {
            RuleError::new(
                arg_pos(i),
                format!("{name}: `{}` is not a valid header name", arg(i)),
            )
        })
    };
    Ok(match call.kind {
        MatcherKind::Host | MatcherKind::HostRegexp if !arg(0).is_ascii() => {
            return Err(RuleError::new(
                arg_pos(0),
                format!("{name}: value must be ASCII (use the punycode form of the domain)"),
            ));
        }
        MatcherKind::Host => {
            let v = arg(0).trim().to_ascii_lowercase();
            let v = v.strip_suffix('.').unwrap_or(&v);
            if v == "*" {
                Leaf::HostAny
            } else if let Some(parent) = v.strip_prefix("*.") {
                Leaf::HostWildcard(parent.into())
            } else {
                Leaf::HostExact(v.into())
            }
        }
        MatcherKind::HostRegexp => Leaf::HostRegexp(regex(0)?),
        MatcherKind::Path | MatcherKind::PathPrefix if !arg(0).starts_with('/') => {
            return Err(RuleError::new(
                arg_pos(0),
                format!("{name}: path must start with `/`"),
            ));
        }
        MatcherKind::Path => Leaf::Path(arg(0).into()),
        MatcherKind::PathPrefix => Leaf::PathPrefix(arg(0).into()),
        MatcherKind::PathRegexp => Leaf::PathRegexp(regex(0)?),
        MatcherKind::Header => {
            let h = header_name(0)?;
            if h == http::header::HOST {
                Leaf::Never
            } else {
                Leaf::Header(h, arg(1).into())
            }
        }
        MatcherKind::HeaderRegexp => {
            let h = header_name(0)?;
            let re = regex(1)?;
            if h == http::header::HOST {
                Leaf::Never
            } else {
                Leaf::HeaderRegexp(h, re)
            }
        }
        // Traefik upper-cases the rule's method when it builds the matcher and compares the
        // request's method exactly (pkg/muxer/http/matcher.go, `method`): `Method(`get`)`
        // matches `GET`, and a request sent as `get` matches nothing.
        MatcherKind::Method => Leaf::Method(arg(0).to_ascii_uppercase().into()),
        MatcherKind::Query => {
            Leaf::Query(arg(0).into(), call.args.get(1).map(|v| v.as_str().into()))
        }
        MatcherKind::QueryRegexp => {
            let re = if call.args.len() > 1 {
                Some(regex(1)?)
            } else {
                None
            };
            Leaf::QueryRegexp(arg(0).into(), re)
        }
        MatcherKind::ClientIP => Leaf::ClientIp(
            arg(0)
                .parse()
                .map_err(|e: String| RuleError::new(arg_pos(0), format!("{name}: {e}")))?,
        ),
    })
}

/// Compiles a Go RE2 pattern (as Traefik writes them) into a Rust regex, with a bounded
/// program size. The error is one line, fit for a configuration error message.
pub fn compile_go_regex(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(&translate_go_regex(pattern))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            let msg = e.to_string();
            let last = msg
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or(&msg)
                .trim()
                .to_string();
            format!("invalid regular expression: {last}")
        })
}

fn eval(node: &Node, req: &RequestView<'_>) -> bool {
    match node {
        Node::And(l, r) => eval(l, req) && eval(r, req),
        Node::Or(l, r) => eval(l, req) || eval(r, req),
        Node::Not(e) => !eval(e, req),
        Node::Leaf(leaf) => eval_leaf(leaf, req),
    }
}

fn eval_leaf(leaf: &Leaf, req: &RequestView<'_>) -> bool {
    match leaf {
        Leaf::HostAny => true,
        Leaf::HostExact(h) => !req.host.is_empty() && req.host == &**h,
        Leaf::HostWildcard(parent) => match req.host.split_once('.') {
            Some((label, rest)) => !label.is_empty() && rest == &**parent,
            None => false,
        },
        Leaf::HostRegexp(re) => !req.host.is_empty() && re.is_match(req.host),
        Leaf::Path(p) => req.path == &**p,
        Leaf::PathPrefix(p) => req.path.starts_with(&**p),
        Leaf::PathRegexp(re) => re.is_match(req.path),
        Leaf::Header(name, value) => req
            .headers
            .get_all(name)
            .iter()
            .any(|v| v.as_bytes() == value.as_bytes()),
        Leaf::HeaderRegexp(name, re) => req
            .headers
            .get_all(name)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| re.is_match(v))),
        Leaf::Never => false,
        Leaf::Method(m) => req.method == &**m,
        // One argument means "present with an empty value", as in Traefik, whose matcher
        // looks the key's values up for "" (pkg/muxer/http/matcher.go, `query`).
        Leaf::Query(key, want) => {
            query_pairs(req.query).any(|(k, v)| k == **key && v == want.as_deref().unwrap_or(""))
        }
        Leaf::QueryRegexp(key, re) => query_pairs(req.query)
            .any(|(k, v)| k == **key && re.as_ref().is_none_or(|re| re.is_match(&v))),
        Leaf::ClientIp(net) => req.client_ip.is_some_and(|ip| net.contains(canonical(ip))),
    }
}

/// Decoded `key=value` pairs of a query string (`+` is a space, `%XX` decoded; a malformed
/// escape is kept as written).
fn query_pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(k), form_decode(v))
    })
}

fn form_decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match (
                    char::from(b[i + 1]).to_digit(16),
                    char::from(b[i + 2]).to_digit(16),
                ) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    struct Req {
        method: &'static str,
        host: &'static str,
        path: &'static str,
        query: &'static str,
        headers: HeaderMap,
        ip: Option<&'static str>,
    }

    impl Default for Req {
        fn default() -> Self {
            Req {
                method: "GET",
                host: "example.com",
                path: "/",
                query: "",
                headers: HeaderMap::new(),
                ip: None,
            }
        }
    }

    fn m(rule: &str, r: &Req) -> bool {
        let rule = Rule::compile(rule).unwrap_or_else(|e| panic!("{rule}: {e}"));
        let view = RequestView {
            method: r.method,
            host: r.host,
            path: r.path,
            query: r.query,
            headers: &r.headers,
            client_ip: r.ip.map(|s| s.parse().unwrap()),
        };
        rule.matches(&view)
    }

    #[test]
    fn host_exact_wildcard_any() {
        let r = Req {
            host: "a.example.com",
            ..Req::default()
        };
        assert!(m("Host(`A.Example.com.`)", &r));
        assert!(m("Host(`*.example.com`)", &r));
        assert!(!m(
            "Host(`*.example.com`)",
            &Req {
                host: "example.com",
                ..Req::default()
            }
        ));
        assert!(!m(
            "Host(`*.example.com`)",
            &Req {
                host: "a.b.example.com",
                ..Req::default()
            }
        ));
        assert!(m(
            "Host(`*`)",
            &Req {
                host: "",
                ..Req::default()
            }
        ));
        assert!(!m(
            "Host(`example.com`)",
            &Req {
                host: "",
                ..Req::default()
            }
        ));
        assert!(!m(
            "HostRegexp(`.*`)",
            &Req {
                host: "",
                ..Req::default()
            }
        ));
        assert!(m(
            "HostRegexp(`example.com`)",
            &Req {
                host: "myexample.com",
                ..Req::default()
            }
        ));
        assert!(m("HOSTREGEXP(`^[a-z]+\\.example\\.com$`)", &r));
    }

    #[test]
    fn host_values_must_be_ascii() {
        let e = Rule::compile("Host(`bücher.example`)").unwrap_err();
        assert_eq!(e.position, 5);
        assert!(e.message.contains("ASCII"));
    }

    #[test]
    fn paths() {
        let r = Req {
            path: "/products-for-sale",
            ..Req::default()
        };
        assert!(m("PathPrefix(`/products`)", &r));
        assert!(!m("Path(`/products`)", &r));
        assert!(m("Path(`/products-for-sale`)", &r));
        assert!(m("PathRegexp(`^/products-[a-z]+`)", &r));
        assert!(m("PathRegexp(`for`)", &r), "regexps search, unanchored");
        assert!(Rule::compile("Path(`nope`)")
            .unwrap_err()
            .message
            .contains("must start with `/`"));
        assert!(Rule::compile("PathRegexp(`(`)")
            .unwrap_err()
            .message
            .contains("invalid regular expression"));
        assert_eq!(Rule::compile("Path(``)").unwrap_err().position, 5);
    }

    #[test]
    fn headers() {
        let mut headers = HeaderMap::new();
        headers.append("x-env", "prod".parse().unwrap());
        headers.append("x-env", "canary".parse().unwrap());
        headers.insert("host", "example.com".parse().unwrap());
        let r = Req {
            headers,
            ..Req::default()
        };
        assert!(m("Header(`X-Env`, `canary`)", &r));
        assert!(m("Header(`x-env`, `prod`)", &r));
        assert!(!m("Header(`X-Env`, `Prod`)", &r), "values compare exactly");
        assert!(
            !m("Header(`Host`, `example.com`)", &r),
            "Host is not a header for matchers"
        );
        assert!(m("HeaderRegexp(`X-Env`, `^can`)", &r));
        assert!(!m("HeaderRegexp(`X-Missing`, `.*`)", &r));
        assert!(Rule::compile("Header(`bad name`, `x`)").is_err());
    }

    #[test]
    fn method_is_case_sensitive() {
        assert!(m("Method(`GET`)", &Req::default()));
        // the rule's value is upper-cased; the request's method is compared exactly
        // (Traefik's TestMethodMatcher: `Method(`get`)` matches GET, and a request sent
        // with the method `get` does not match `Method(`GET`)`)
        assert!(m("Method(`get`)", &Req::default()));
        let lower = Req {
            method: "get",
            ..Req::default()
        };
        assert!(!m("Method(`GET`)", &lower));
        assert!(!m("Method(`get`)", &lower));
    }

    #[test]
    fn queries_decode() {
        let r = Req {
            query: "a=1&b=hello+world&c%20d=%2Fx&flag",
            ..Req::default()
        };
        // one argument: present with an empty value (Traefik's TestQueryMatcher:
        // `Query(`foo`)` matches `?foo` and `?foo=`, not `?foo=bar`)
        assert!(!m("Query(`a`)", &r));
        assert!(m("Query(`flag`)", &r));
        let empty = Req {
            query: "a=&b",
            ..Req::default()
        };
        assert!(m("Query(`a`)", &empty));
        assert!(m("Query(`b`)", &empty));
        assert!(m("Query(`b`, `hello world`)", &r));
        assert!(m("Query(`c d`, `/x`)", &r));
        assert!(!m("Query(`a`, `2`)", &r));
        assert!(!m("Query(`z`)", &r));
        assert!(m("QueryRegexp(`a`, `^[0-9]$`)", &r));
        assert!(m("QueryRegexp(`a`)", &r));
        assert!(!m("QueryRegexp(`b`, `^[0-9]$`)", &r));
    }

    #[test]
    fn client_ip() {
        let r = Req {
            ip: Some("10.1.2.3"),
            ..Req::default()
        };
        assert!(m("ClientIP(`10.0.0.0/8`)", &r));
        assert!(m("ClientIP(`10.1.2.3`)", &r));
        assert!(!m("ClientIP(`192.168.0.0/16`)", &r));
        assert!(!m("ClientIP(`::1`)", &r));
        assert!(m(
            "ClientIP(`127.0.0.1`)",
            &Req {
                ip: Some("::ffff:127.0.0.1"),
                ..Req::default()
            }
        ));
        assert!(
            !m("ClientIP(`10.0.0.0/8`)", &Req::default()),
            "no peer address, no match"
        );
        assert!(Rule::compile("ClientIP(`10.0.0.0/40`)").is_err());
    }

    #[test]
    fn boolean_logic() {
        let r = Req {
            path: "/api",
            ..Req::default()
        };
        assert!(m("Host(`example.com`) && !Path(`/x`)", &r));
        assert!(m("Host(`nope`) || Path(`/api`)", &r));
        assert!(!m("!(Host(`example.com`) || Path(`/x`))", &r));
    }

    #[test]
    fn default_priority_is_rule_length() {
        assert_eq!(Rule::compile("Host(`a`)").unwrap().default_priority(), 9);
    }
}
