//! Recursive-descent parser for rule text.
//!
//! Grammar (precedence `!` > `&&` > `||`, parentheses group):
//!
//! ```text
//! expr    := and ( "||" and )*
//! and     := unary ( "&&" unary )*
//! unary   := "!" unary | primary
//! primary := "(" expr ")" | NAME "(" value ( "," value )* ")"
//! value   := `raw` | "Go-escaped"
//! ```

use crate::ast::{Expr, MatcherCall, MatcherKind};
use crate::RuleError;

/// Longest rule text accepted, in bytes. Rules come from configuration files and API
/// bodies; a bound keeps one bad object from costing unbounded memory or time.
pub const MAX_RULE_LEN: usize = 64 * 1024;
/// Deepest nesting of parentheses and `!` accepted (the parser recurses on them).
pub const MAX_DEPTH: usize = 64;

/// Parses rule text into a syntax tree, checking syntax, matcher names and arity.
/// Values are not validated here; [`crate::Rule::compile`] does that.
pub fn parse(src: &str) -> Result<Expr, RuleError> {
    if src.len() > MAX_RULE_LEN {
        return Err(RuleError::new(
            MAX_RULE_LEN,
            format!(
                "rule is {} bytes long; the limit is {MAX_RULE_LEN}",
                src.len()
            ),
        ));
    }
    let mut p = Parser {
        src,
        pos: 0,
        depth: 0,
    };
    p.skip_ws();
    if p.pos == src.len() {
        return Err(RuleError::new(0, "empty rule"));
    }
    let expr = p.expr()?;
    p.skip_ws();
    if p.pos < src.len() {
        return Err(p.unexpected("`&&`, `||` or the end of the rule"));
    }
    Ok(expr)
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start_matches([' ', '\t', '\n', '\r']);
        self.pos = self.src.len() - trimmed.len();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn unexpected(&self, wanted: &str) -> RuleError {
        match self.peek() {
            None => RuleError::new(
                self.pos,
                format!("unexpected end of rule, expected {wanted}"),
            ),
            Some(c) => RuleError::new(self.pos, format!("unexpected `{c}`, expected {wanted}")),
        }
    }

    fn enter(&mut self) -> Result<(), RuleError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(RuleError::new(
                self.pos,
                format!("rule nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr, RuleError> {
        let mut left = self.and()?;
        while self.eat("||") {
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, RuleError> {
        let mut left = self.unary()?;
        while self.eat("&&") {
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, RuleError> {
        self.skip_ws();
        if self.rest().starts_with('!') {
            self.pos += 1;
            self.enter()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, RuleError> {
        self.skip_ws();
        if self.rest().starts_with('(') {
            self.pos += 1;
            self.enter()?;
            let inner = self.expr()?;
            self.depth -= 1;
            if !self.eat(")") {
                return Err(self.unexpected("`)`"));
            }
            return Ok(inner);
        }
        let start = self.pos;
        let name_len = self
            .rest()
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        if name_len == 0 {
            return Err(self.unexpected("a matcher such as Host(`example.com`), `!` or `(`"));
        }
        let name = &self.src[start..start + name_len];
        let kind = MatcherKind::from_name(name).ok_or_else(|| {
            RuleError::new(
                start,
                format!(
                    "unknown matcher `{name}` (known: Host, HostRegexp, Path, PathPrefix, PathRegexp, Header, \
                     HeaderRegexp, Method, Query, QueryRegexp, ClientIP; spelled canonically, all lower, \
                     all upper or with only the first letter capital)"
                ),
            )
        })?;
        self.pos += name_len;
        if !self.eat("(") {
            return Err(self.unexpected(&format!("`(` after {}", kind.name())));
        }
        let mut args = Vec::new();
        let mut arg_positions = Vec::new();
        loop {
            self.skip_ws();
            arg_positions.push(self.pos);
            args.push(self.value()?);
            if self.eat(",") {
                continue;
            }
            if self.eat(")") {
                break;
            }
            return Err(self.unexpected("`,` or `)`"));
        }
        let (min, max) = kind.arity();
        if args.len() < min || args.len() > max {
            let want = if min == max {
                format!("{min}")
            } else {
                format!("{min} or {max}")
            };
            return Err(RuleError::new(
                start,
                format!(
                    "{} takes {want} argument(s), got {}",
                    kind.name(),
                    args.len()
                ),
            ));
        }
        Ok(Expr::Matcher(MatcherCall {
            kind,
            args,
            position: start,
            arg_positions,
        }))
    }

    fn value(&mut self) -> Result<String, RuleError> {
        let start = self.pos;
        match self.peek() {
            Some('`') => {
                let body = &self.src[start + 1..];
                let end = body
                    .find('`')
                    .ok_or_else(|| RuleError::new(start, "unterminated `raw` string"))?;
                self.pos = start + 1 + end + 1;
                // Go drops carriage returns from raw string literals.
                Ok(body[..end].replace('\r', ""))
            }
            Some('"') => {
                let (value, consumed) = unquote_go(&self.src[start..])
                    .map_err(|(off, msg)| RuleError::new(start + off, msg))?;
                self.pos = start + consumed;
                Ok(value)
            }
            Some('\'') => Err(RuleError::new(
                start,
                "single quotes are not allowed; use `backticks` or \"double quotes\"",
            )),
            _ => Err(self.unexpected("a value in `backticks` or \"double quotes\"")),
        }
    }
}

/// Decodes a Go double-quoted string literal at the start of `s` (which begins with `"`).
/// Returns the value and the number of bytes consumed, or the offset and reason of an error.
fn unquote_go(s: &str) -> Result<(String, usize), (usize, String)> {
    let bytes = s.as_bytes();
    let mut out: Vec<u8> = Vec::new();
    let mut i = 1;
    loop {
        let Some(&b) = bytes.get(i) else {
            return Err((0, "unterminated \"double-quoted\" string".into()));
        };
        match b {
            b'"' => {
                let value = String::from_utf8(out)
                    .map_err(|_| (0, "string is not valid UTF-8 after unescaping".to_string()))?;
                return Ok((value, i + 1));
            }
            b'\n' => {
                return Err((
                    i,
                    "newline in \"double-quoted\" string (use \\n or a `raw` string)".into(),
                ))
            }
            b'\\' => {
                let esc = *bytes
                    .get(i + 1)
                    .ok_or((i, "unterminated escape".to_string()))?;
                i += 2;
                match esc {
                    b'a' => out.push(0x07),
                    b'b' => out.push(0x08),
                    b'f' => out.push(0x0c),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'v' => out.push(0x0b),
                    b'\\' => out.push(b'\\'),
                    b'"' => out.push(b'"'),
                    b'x' => {
                        let v = hex_digits(bytes, i, 2)
                            .ok_or((i - 2, "\\x needs two hex digits".to_string()))?;
                        out.push(v as u8);
                        i += 2;
                    }
                    b'0'..=b'7' => {
                        let digits = bytes
                            .get(i - 1..i + 2)
                            .ok_or((i - 2, "octal escape needs three digits".to_string()))?;
                        if !digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                            return Err((i - 2, "octal escape needs three digits 0-7".into()));
                        }
                        let v = digits
                            .iter()
                            .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                        if v > 255 {
                            return Err((i - 2, "octal escape value above 255".into()));
                        }
                        out.push(v as u8);
                        i += 2;
                    }
                    b'u' | b'U' => {
                        let n = if esc == b'u' { 4 } else { 8 };
                        let v = hex_digits(bytes, i, n)
                            .ok_or((i - 2, format!("\\{} needs {n} hex digits", esc as char)))?;
                        let c = char::from_u32(v).ok_or((
                            i - 2,
                            "escape is not a valid Unicode code point".to_string(),
                        ))?;
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        i += n;
                    }
                    other => {
                        return Err((
                            i - 2,
                            format!(
                                "unknown escape `\\{}` in \"double-quoted\" string",
                                other as char
                            ),
                        ));
                    }
                }
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
}

fn hex_digits(bytes: &[u8], at: usize, n: usize) -> Option<u32> {
    let digits = bytes.get(at..at + n)?;
    let s = std::str::from_utf8(digits).ok()?;
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> RuleError {
        parse(src).expect_err(src)
    }

    #[test]
    fn precedence_not_and_or() {
        let e = parse("Host(`a`) || Host(`b`) && !Path(`/c`)").unwrap();
        assert_eq!(e.to_string(), "Host(`a`) || Host(`b`) && !Path(`/c`)");
        let Expr::Or(_, r) = e else {
            panic!("|| must be the root")
        };
        assert!(matches!(*r, Expr::And(..)));
    }

    #[test]
    fn parentheses_group() {
        let e = parse("(Host(`a`) || Host(`b`)) && Path(`/c`)").unwrap();
        assert!(matches!(e, Expr::And(..)));
        assert_eq!(e.to_string(), "(Host(`a`) || Host(`b`)) && Path(`/c`)");
    }

    #[test]
    fn four_spellings_only() {
        for ok in ["PathPrefix", "pathprefix", "PATHPREFIX", "Pathprefix"] {
            assert!(parse(&format!("{ok}(`/a`)")).is_ok(), "{ok}");
        }
        let e = err("pathPrefix(`/a`)");
        assert_eq!(e.position, 0);
        assert!(e.message.contains("unknown matcher `pathPrefix`"), "{e}");
        assert!(parse("CLIENTIP(`1.2.3.4`)").is_ok());
        assert!(parse("Clientip(`1.2.3.4`)").is_ok());
    }

    #[test]
    fn exact_arity() {
        assert!(err("Host(`a`, `b`)").message.contains("takes 1 argument"));
        assert!(err("Header(`a`)").message.contains("takes 2"));
        assert!(parse("Query(`a`)").is_ok());
        assert!(parse("Query(`a`, `b`)").is_ok());
        assert!(err("Query(`a`, `b`, `c`)").message.contains("1 or 2"));
    }

    #[test]
    fn quoting_rules() {
        assert_eq!(
            err("Host('a')").message,
            "single quotes are not allowed; use `backticks` or \"double quotes\""
        );
        assert!(err("Host(a)").message.contains("expected a value"));
        assert!(err("Priority(1)").message.contains("unknown matcher"));
        let Expr::Matcher(m) = parse(r#"PathRegexp("^/a\\.b\t\x41\u00e9\101")"#).unwrap() else {
            panic!()
        };
        assert_eq!(m.args[0], "^/a\\.b\tAéA");
        assert!(err(r#"Path("/a\q")"#).message.contains("unknown escape"));
        assert!(err(r#"Path("/a\'")"#).message.contains("unknown escape"));
    }

    #[test]
    fn error_positions_point_at_the_problem() {
        assert_eq!(err("Host(`a`) && ").position, 13);
        assert_eq!(err("Host(`a`) &&& Path(`/`)").position, 12);
        assert_eq!(err("Host(`a`) Path(`/`)").position, 10);
        assert_eq!(err("Host(`a`").position, 8);
        assert_eq!(err("(Host(`a`)").position, 10);
        assert_eq!(err("Host(`a`))").position, 9);
        assert_eq!(err("").message, "empty rule");
        assert_eq!(err("Host(`unterminated)").position, 5);
    }

    #[test]
    fn depth_and_length_limits() {
        let deep = format!(
            "{}Host(`a`){}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        assert!(err(&deep).message.contains("nests deeper"));
        let nots = format!("{}Host(`a`)", "!".repeat(10_000));
        assert!(err(&nots).message.contains("nests deeper"));
        let long = format!("Host(`{}`)", "a".repeat(MAX_RULE_LEN));
        assert!(err(&long).message.contains("limit"));
    }
}
