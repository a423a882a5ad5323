//! RFC 3339 timestamps: Unix milliseconds in the store, UTC text in JSON.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, kept as Unix milliseconds (as the store keeps it) and written as RFC
/// 3339 UTC (`2026-11-23T19:07:00.042Z`) in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp(unix_millis())
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&rfc3339_millis(self.0))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        parse_rfc3339(&text).map(Timestamp).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{text}` is not a UTC time like 2026-11-23T19:07:00.042Z"
            ))
        })
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

/// Parses an RFC 3339 time in UTC (`YYYY-MM-DDTHH:MM:SS[.fraction]Z`, as the API writes
/// them) into Unix milliseconds; the fraction is cut to milliseconds. Calendar checks are
/// the `time` crate's: `2026-02-30` is refused.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    // UTC only: a time with an offset is refused rather than read in another zone
    if !text.ends_with('Z') {
        return None;
    }
    let t = ::time::OffsetDateTime::parse(text, &::time::format_description::well_known::Rfc3339)
        .ok()?;
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch: how the store keeps times.
pub fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Unix milliseconds as RFC 3339 (times before 1970 print as the epoch).
pub fn rfc3339_millis(ms: i64) -> String {
    let ms = ms.max(0) as u64;
    rfc3339(ms / 1000, (ms % 1000) as u32)
}

/// Now, as `2026-11-23T18:07:00.123Z`.
pub fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_millis())
}

/// A Unix time as RFC 3339 UTC with milliseconds (the calendar from the `time` crate;
/// past year 9999, the last millisecond of 9999).
pub fn rfc3339(secs: u64, millis: u32) -> String {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| ::time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(::time::PrimitiveDateTime::MAX.assume_utc());
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        millis.min(999)
    )
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn print_then_parse_is_identity(ms in 0i64..253_402_300_799_999) {
            prop_assert_eq!(super::parse_rfc3339(&super::rfc3339_millis(ms)), Some(ms));
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,40}") {
            let _ = super::parse_rfc3339(&s);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_dates() {
        assert_eq!(super::rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(super::rfc3339(1_795_460_820, 0), "2026-11-23T19:07:00.000Z");
        assert_eq!(
            super::rfc3339_millis(1_795_460_820_042),
            "2026-11-23T19:07:00.042Z"
        );
        assert_eq!(super::rfc3339_millis(-5), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn parse_inverts_print() {
        for ms in [0, 951_782_400_005, 1_795_460_820_042, 4_102_444_799_999] {
            assert_eq!(super::parse_rfc3339(&super::rfc3339_millis(ms)), Some(ms));
        }
        assert_eq!(
            super::parse_rfc3339("2026-11-23T19:07:00Z"),
            Some(1_795_460_820_000)
        );
        for bad in [
            "",
            "2026-11-23",
            "2026-13-01T00:00:00Z",
            "2026-11-23T19:07:00+01:00",
            "2026-11-23T19:07:00.Z",
            // a day the month does not have (the hand-written parser took it)
            "2026-02-30T00:00:00Z",
        ] {
            assert_eq!(super::parse_rfc3339(bad), None, "{bad}");
        }
    }
}
