//! Translation of Go RE2 patterns into the Rust `regex` dialect.
//!
//! Traefik compiles `HostRegexp`, `PathRegexp`, `HeaderRegexp` and `QueryRegexp` values with
//! Go's `regexp` package. Rust's `regex` crate is close to RE2 but differs in ways that would
//! make a Traefik user's rule fail to compile or match differently:
//!
//! * a `{` that does not start a valid repetition is a literal in RE2 and an error in Rust
//!   (v2 leftovers such as `/{path:(css|js)}` depend on it) — we escape it;
//! * `\d \w \s` and `\b` are ASCII-only in RE2, Unicode in Rust — we spell out the ASCII sets;
//! * inside a character class, RE2 takes `[` literally and has no set operators, while Rust
//!   nests classes and reads `&&` and `~~` as operators — we escape those characters.

/// Rewrites a Go RE2 pattern so that Rust's `regex` accepts and matches it the same way.
/// Patterns that are invalid in Go stay invalid (the Rust compiler then reports them).
pub fn translate_go_regex(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut i = 0;
    let mut in_class = false;
    // Whether the previous token can take a repetition operator.
    let mut repeatable = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' {
            let Some(&e) = chars.get(i + 1) else {
                out.push('\\'); // trailing backslash: invalid in both, leave it to the compiler
                break;
            };
            i += 2;
            let ascii = match e {
                'd' => Some(("0-9", false)),
                'D' => Some(("0-9", true)),
                'w' => Some(("0-9A-Za-z_", false)),
                'W' => Some(("0-9A-Za-z_", true)),
                's' => Some(("\\t\\n\\f\\r ", false)),
                'S' => Some(("\\t\\n\\f\\r ", true)),
                _ => None,
            };
            if let Some((set, negated)) = ascii {
                match (in_class, negated) {
                    (true, false) => out.push_str(set),
                    _ => {
                        out.push('[');
                        if negated {
                            out.push('^');
                        }
                        out.push_str(set);
                        out.push(']');
                    }
                }
                repeatable = true;
                continue;
            }
            if !in_class && (e == 'b' || e == 'B') {
                out.push_str(if e == 'b' { "(?-u:\\b)" } else { "(?-u:\\B)" });
                repeatable = false;
                continue;
            }
            out.push('\\');
            out.push(e);
            // \x{..}, \p{..}, \P{..}: copy the braces verbatim.
            if matches!(e, 'x' | 'p' | 'P') && chars.get(i) == Some(&'{') {
                while i < chars.len() {
                    out.push(chars[i]);
                    i += 1;
                    if chars[i - 1] == '}' {
                        break;
                    }
                }
            }
            repeatable = true;
            continue;
        }
        if in_class {
            match c {
                ']' => {
                    in_class = false;
                    repeatable = true;
                    out.push(']');
                }
                '[' if chars.get(i + 1) == Some(&':') => {
                    // POSIX class [:alpha:]: copy through ":]"
                    let start = i;
                    let mut j = i + 2;
                    while j + 1 < chars.len() && !(chars[j] == ':' && chars[j + 1] == ']') {
                        j += 1;
                    }
                    if j + 1 < chars.len() {
                        out.extend(&chars[start..j + 2]);
                        i = j + 2;
                        continue;
                    }
                    out.push_str("\\[");
                }
                '[' | '&' | '~' => {
                    out.push('\\');
                    out.push(c);
                }
                _ => out.push(c),
            }
            i += 1;
            continue;
        }
        match c {
            '[' => {
                in_class = true;
                out.push('[');
                i += 1;
                if chars.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                // A `]` right after the opening bracket is a literal in both dialects.
                if chars.get(i) == Some(&']') {
                    out.push_str("\\]");
                    i += 1;
                }
                continue;
            }
            '{' => {
                let len = repetition_len(&chars[i..]);
                if repeatable && len > 0 {
                    out.extend(&chars[i..i + len]);
                    i += len;
                    if chars.get(i) == Some(&'?') {
                        out.push('?');
                        i += 1;
                    }
                    repeatable = false;
                } else {
                    out.push_str("\\{");
                    i += 1;
                    repeatable = true;
                }
                continue;
            }
            '}' => {
                out.push_str("\\}");
                repeatable = true;
            }
            '(' => {
                out.push('(');
                repeatable = false;
            }
            '|' => {
                out.push('|');
                repeatable = false;
            }
            '*' | '+' | '?' => {
                out.push(c);
                repeatable = false;
            }
            '^' | '$' => {
                out.push(c);
                repeatable = false;
            }
            _ => {
                out.push(c);
                repeatable = true;
            }
        }
        i += 1;
    }
    out
}

/// Length of a valid `{n}`, `{n,}` or `{n,m}` at the start of `s`, or 0.
fn repetition_len(s: &[char]) -> usize {
    let mut i = 1;
    let digits = |i: &mut usize| {
        let start = *i;
        while s.get(*i).is_some_and(|c| c.is_ascii_digit()) {
            *i += 1;
        }
        *i > start
    };
    if !digits(&mut i) {
        return 0;
    }
    if s.get(i) == Some(&',') {
        i += 1;
        digits(&mut i);
    }
    if s.get(i) == Some(&'}') {
        i + 1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::translate_go_regex as t;
    use regex::Regex;

    fn is_match(go: &str, hay: &str) -> bool {
        Regex::new(&t(go))
            .unwrap_or_else(|e| panic!("{go} -> {}: {e}", t(go)))
            .is_match(hay)
    }

    #[test]
    fn literal_braces_from_v2_rules() {
        assert_eq!(t("/{path:(css|js)}"), "/\\{path:(css|js)\\}");
        assert!(is_match("/{path:(css|js)}", "/{path:css}"));
        assert!(is_match("^a{2}$", "aa"));
        assert!(is_match("^a{2,}$", "aaa"));
        assert!(is_match("^a{1,2}?$", "a"));
        assert!(
            is_match("^{1}$", "{1}"),
            "a repetition with nothing to repeat is literal in RE2"
        );
        assert!(is_match("^a{,2}$", "a{,2}"));
    }

    #[test]
    fn perl_classes_are_ascii() {
        assert!(
            !is_match("^\\d$", "٣"),
            "Arabic-Indic digit is not \\d in RE2"
        );
        assert!(is_match("^\\d+$", "0123456789"));
        assert!(!is_match("^\\w$", "é"));
        assert!(is_match("^\\W$", "é"));
        assert!(is_match("^[\\d_]+$", "1_2"));
        assert!(is_match("^[\\D]$", "x"));
        assert!(!is_match("^\\s$", "\u{a0}"));
        assert!(is_match("\\bfoo\\b", "a foo b"));
        assert!(!is_match("^\\S$", " "));
    }

    #[test]
    fn class_contents_are_literal_as_in_re2() {
        assert!(is_match("^[[]$", "["));
        assert!(is_match("^[a&&b]+$", "&&"));
        assert!(is_match("^[]a]+$", "]a"));
        assert!(is_match("^[[:alpha:]]+$", "abc"));
        assert!(is_match("^[~~]$", "~"));
    }

    #[test]
    fn escapes_with_braces_pass_through() {
        assert!(is_match("^\\x{41}$", "A"));
        assert!(is_match("^\\p{Greek}$", "α"));
    }

    #[test]
    fn unanchored_search_semantics() {
        assert!(is_match("example\\.com", "myexample.com"));
    }
}
