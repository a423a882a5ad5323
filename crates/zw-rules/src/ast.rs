//! The syntax tree of a rule and its canonical printer.

use std::fmt::{self, Write};

/// The matchers of Traefik v3's HTTP rule language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatcherKind {
    Host,
    HostRegexp,
    Path,
    PathPrefix,
    PathRegexp,
    Header,
    HeaderRegexp,
    Method,
    Query,
    QueryRegexp,
    ClientIP,
}

impl MatcherKind {
    pub const ALL: [MatcherKind; 11] = [
        MatcherKind::Host,
        MatcherKind::HostRegexp,
        MatcherKind::Path,
        MatcherKind::PathPrefix,
        MatcherKind::PathRegexp,
        MatcherKind::Header,
        MatcherKind::HeaderRegexp,
        MatcherKind::Method,
        MatcherKind::Query,
        MatcherKind::QueryRegexp,
        MatcherKind::ClientIP,
    ];

    /// The canonical spelling, as Traefik documents it.
    pub fn name(self) -> &'static str {
        match self {
            MatcherKind::Host => "Host",
            MatcherKind::HostRegexp => "HostRegexp",
            MatcherKind::Path => "Path",
            MatcherKind::PathPrefix => "PathPrefix",
            MatcherKind::PathRegexp => "PathRegexp",
            MatcherKind::Header => "Header",
            MatcherKind::HeaderRegexp => "HeaderRegexp",
            MatcherKind::Method => "Method",
            MatcherKind::Query => "Query",
            MatcherKind::QueryRegexp => "QueryRegexp",
            MatcherKind::ClientIP => "ClientIP",
        }
    }

    /// Looks a matcher up by name. Traefik accepts exactly four spellings: canonical
    /// (`PathPrefix`), all lower (`pathprefix`), all upper (`PATHPREFIX`) and
    /// first-letter capital (`Pathprefix`); any other mix is an unknown matcher.
    pub fn from_name(name: &str) -> Option<MatcherKind> {
        MatcherKind::ALL.into_iter().find(|k| {
            let canon = k.name();
            name == canon
                || name == canon.to_ascii_lowercase()
                || name == canon.to_ascii_uppercase()
                || name == first_capital(canon)
        })
    }

    /// How many arguments the matcher takes: `(min, max)`.
    pub fn arity(self) -> (usize, usize) {
        match self {
            MatcherKind::Header | MatcherKind::HeaderRegexp => (2, 2),
            MatcherKind::Query | MatcherKind::QueryRegexp => (1, 2),
            _ => (1, 1),
        }
    }
}

fn first_capital(s: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let mut out = String::with_capacity(lower.len());
    let mut chars = lower.chars();
    if let Some(c) = chars.next() {
        out.push(c.to_ascii_uppercase());
    }
    out.extend(chars);
    out
}

/// One matcher call, e.g. ``Header(`X-Env`, `prod`)``.
///
/// Positions (byte offsets into the rule text) are kept for error messages but take no part
/// in equality, so a printed and re-parsed rule compares equal to the original.
#[derive(Debug, Clone)]
pub struct MatcherCall {
    pub kind: MatcherKind,
    pub args: Vec<String>,
    /// Byte offset of the matcher's name.
    pub position: usize,
    /// Byte offset of each argument's opening quote.
    pub arg_positions: Vec<usize>,
}

impl PartialEq for MatcherCall {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.args == other.args
    }
}
impl Eq for MatcherCall {}

/// A rule's syntax tree. `&&` and `||` are binary and left-associative, as parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Matcher(MatcherCall),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

impl fmt::Display for Expr {
    /// Prints the rule in canonical form: canonical matcher names, backtick values (double
    /// quotes with Go escapes when the value holds a backtick or a carriage return), and
    /// exactly the parentheses needed to keep the tree's shape.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Matcher(call) => {
                f.write_str(call.kind.name())?;
                f.write_char('(')?;
                for (i, arg) in call.args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write_value(f, arg)?;
                }
                f.write_char(')')
            }
            Expr::Not(inner) => {
                f.write_char('!')?;
                match **inner {
                    Expr::And(..) | Expr::Or(..) => write!(f, "({inner})"),
                    _ => write!(f, "{inner}"),
                }
            }
            Expr::And(l, r) => {
                match **l {
                    Expr::Or(..) => write!(f, "({l})")?,
                    _ => write!(f, "{l}")?,
                }
                f.write_str(" && ")?;
                match **r {
                    Expr::Or(..) | Expr::And(..) => write!(f, "({r})"),
                    _ => write!(f, "{r}"),
                }
            }
            Expr::Or(l, r) => {
                write!(f, "{l} || ")?;
                match **r {
                    Expr::Or(..) => write!(f, "({r})"),
                    _ => write!(f, "{r}"),
                }
            }
        }
    }
}

fn write_value(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    if !value.contains('`') && !value.contains('\r') {
        return write!(f, "`{value}`");
    }
    f.write_char('"')?;
    for c in value.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if (c as u32) < 0x20 || c == '\u{7f}' => write!(f, "\\x{:02x}", c as u32)?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}
