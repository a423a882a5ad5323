//! Durations as Traefik writes them: Go duration strings (`"10s"`, `"1m30s"`, `"250ms"`)
//! or a bare integer number of seconds.

use std::fmt;
use std::time::Duration;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A configuration duration. Serializes canonically (`"1500ms"`, `"10s"`) so that equal
/// durations hash equally whatever their spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty duration".into());
        }
        if let Ok(secs) = s.parse::<u64>() {
            return Ok(Dur(Duration::from_secs(secs)));
        }
        let mut total = Duration::ZERO;
        // Work on chars, never byte offsets: the input is user text, and a unit such as
        // `µs` (or a stray `¢`) is more than one byte wide.
        let mut chars = s.chars().peekable();
        while chars.peek().is_some() {
            let mut num = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_digit() || c == '.' {
                    num.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            if num.is_empty() {
                return Err(format!(
                    "invalid duration `{s}` (examples: 10s, 1m30s, 250ms)"
                ));
            }
            let num: f64 = num
                .parse()
                .map_err(|_| format!("invalid number in duration `{s}`"))?;
            let mut unit = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_digit() || c == '.' {
                    break;
                }
                unit.push(c);
                chars.next();
            }
            let nanos_per = match unit.as_str() {
                "ns" => 1.0,
                "us" | "µs" | "μs" => 1e3,
                "ms" => 1e6,
                "s" => 1e9,
                "m" => 60e9,
                "h" => 3600e9,
                "" => return Err(format!("duration `{s}` needs a unit (ns, us, ms, s, m, h)")),
                u => return Err(format!("unknown unit `{u}` in duration `{s}`")),
            };
            let nanos = num * nanos_per;
            if !nanos.is_finite() || nanos > 1e18 {
                return Err(format!("duration `{s}` is too long"));
            }
            total = total
                .checked_add(Duration::from_nanos(nanos as u64))
                .filter(|t| t.as_nanos() <= 1_000_000_000_000_000_000)
                .ok_or_else(|| format!("duration `{s}` is too long"))?;
        }
        Ok(Dur(total))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{}s", d.as_secs())
        } else if d.subsec_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}ns", d.as_nanos())
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\" or a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Ok(Dur(Duration::from_secs(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v)
                    .map(|v| Dur(Duration::from_secs(v)))
                    .map_err(|_| E::custom("duration must not be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                Dur::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_durations() {
        assert_eq!(Dur::parse("10s").unwrap().0, Duration::from_secs(10));
        assert_eq!(Dur::parse("1m30s").unwrap().0, Duration::from_secs(90));
        assert_eq!(Dur::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert_eq!(Dur::parse("1.5s").unwrap().0, Duration::from_millis(1500));
        assert_eq!(Dur::parse("42").unwrap().0, Duration::from_secs(42));
        assert!(Dur::parse("10").is_ok());
        assert!(Dur::parse("10x").unwrap_err().contains("unknown unit"));
        assert!(Dur::parse("s").is_err());
        assert!(Dur::parse("1.2.3s").is_err());
        assert!(Dur::parse("99999999999999h").is_err());
        assert_eq!(Dur::parse("3µs").unwrap().0, Duration::from_micros(3));
    }

    /// Multi-byte characters once made the parser slice inside a character and panic.
    #[test]
    fn multibyte_input_is_an_error_not_a_panic() {
        for bad in ["1¢", "1\u{a0}s", "¢", "1s¢", "5µ", "1€s2"] {
            assert!(Dur::parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Any text at all: an answer, never a panic.
        #[test]
        fn any_string_parses_or_errs(s in "\\PC{0,12}") {
            let _ = Dur::parse(&s);
        }

        /// What Display writes reads back as the same duration.
        #[test]
        fn display_round_trips(nanos in 0u64..1_000_000_000_000_000) {
            let d = Dur(Duration::from_nanos(nanos));
            proptest::prop_assert_eq!(Dur::parse(&d.to_string()).unwrap(), d);
        }
    }

    #[test]
    fn canonical_display() {
        assert_eq!(Dur::parse("1m30s").unwrap().to_string(), "90s");
        assert_eq!(Dur::parse("1.5s").unwrap().to_string(), "1500ms");
    }
}
