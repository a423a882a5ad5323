//! Durations as Traefik writes them: Go duration strings (`"10s"`, `"1m30s"`, `"250ms"`)
//! or a bare integer number of seconds.

use std::fmt;
use std::time::Duration;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// The longest duration accepted: about 31 years, far past any timeout, well inside
/// what `Duration` and the `u64` nanoseconds of a hash hold.
const MAX_NANOS: u128 = 1_000_000_000_000_000_000;

/// A configuration duration. Serializes canonically (`"1500ms"`, `"10s"`) so that equal
/// durations hash equally whatever their spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    /// A bare number of seconds, under the same bound as the spelled-out form, so that
    /// every duration that parses prints (`{secs}s`) as one that parses again.
    pub fn from_secs(secs: u64) -> Result<Dur, String> {
        if u128::from(secs) * 1_000_000_000 > MAX_NANOS {
            return Err(format!("duration of {secs} seconds is too long"));
        }
        Ok(Dur(Duration::from_secs(secs)))
    }

    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty duration".into());
        }
        if let Ok(secs) = s.parse::<u64>() {
            return Dur::from_secs(secs);
        }
        let mut total: u128 = 0;
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
            let bad_number = || format!("invalid number in duration `{s}`");
            let (int, frac) = num.split_once('.').unwrap_or((&num, ""));
            if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
                return Err(bad_number());
            }
            // integers, never floats: `691364212079199999ns` must come back exactly
            let too_long = || format!("duration `{s}` is too long");
            let int: u128 = if int.is_empty() {
                0
            } else if int.len() > 20 {
                return Err(too_long());
            } else {
                int.parse().map_err(|_| bad_number())?
            };
            // digits past nanoseconds of an hour cannot matter; drop them
            let frac = frac.get(..frac.len().min(18)).unwrap_or("");
            let mut unit = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_digit() || c == '.' {
                    break;
                }
                unit.push(c);
                chars.next();
            }
            let nanos_per: u128 = match unit.as_str() {
                "ns" => 1,
                "us" | "µs" | "μs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                "" => return Err(format!("duration `{s}` needs a unit (ns, us, ms, s, m, h)")),
                u => return Err(format!("unknown unit `{u}` in duration `{s}`")),
            };
            let fraction = if frac.is_empty() {
                0
            } else {
                let digits: u128 = frac.parse().map_err(|_| bad_number())?;
                digits * nanos_per / 10u128.pow(frac.len() as u32)
            };
            let nanos = int
                .checked_mul(nanos_per)
                .and_then(|n| n.checked_add(fraction))
                .and_then(|n| n.checked_add(total))
                .filter(|&n| n <= MAX_NANOS)
                .ok_or_else(too_long)?;
            total = nanos;
        }
        Ok(Dur(Duration::from_nanos(total as u64)))
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
                Dur::from_secs(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                let v = u64::try_from(v).map_err(|_| E::custom("duration must not be negative"))?;
                Dur::from_secs(v).map_err(E::custom)
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

    /// Found by the fuzz target: a bare number escaped the bound the spelled-out form
    /// has, so `1011901190` parsed and printed as `1011901190s`, which did not.
    #[test]
    fn bare_and_spelled_seconds_share_one_bound() {
        for n in ["1011901190", "1000000001"] {
            assert!(Dur::parse(n).is_err(), "{n}");
            assert!(Dur::parse(&format!("{n}s")).is_err(), "{n}s");
        }
        assert!(Dur::parse("1000000000").is_ok());
        // and sums are exact integers: floats lost the last digits of this one
        let d = Dur::parse("691364212079199999ns").unwrap();
        assert_eq!(d.0.as_nanos(), 691_364_212_079_199_999);
        assert_eq!(
            Dur::parse("1.0000000015s").unwrap().0.as_nanos(),
            1_000_000_001
        );
        assert!(Dur::parse("1000000000s").is_ok());
        let parsed: Result<crate::Config, _> = serde_json::from_str(
            r#"{"http":{"serversTransports":{"t":{"forwardingTimeouts":{"dialTimeout":99999999999}}}}}"#,
        );
        assert!(parsed.is_err());
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
