//! Apple's date format: ISO-8601 with a numeric offset and no colon, e.g.
//! `2030-11-08T22:33:22+0000`. The server shows UTC, the legacy sToken example
//! uses `-0700`.
//!
//! Parsing is lenient (Apple's form, the same with fractional seconds, or RFC 3339); writing
//! always uses Apple's form in UTC. For optional response fields an unparseable date becomes
//! `None` with a warning instead of failing the whole response: a date is never worth losing a
//! page of assignments over.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serializer};

/// `strftime` form of Apple's dates.
pub const FORMAT: &str = "%Y-%m-%dT%H:%M:%S%z";

/// Parses an Apple date (any offset), also accepting fractional seconds and RFC 3339.
pub fn parse(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    DateTime::parse_from_str(text, FORMAT)
        .or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .or_else(|_| DateTime::parse_from_rfc3339(text))
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

/// Formats `date` the way Apple does (`+0000`).
pub fn format(date: &DateTime<Utc>) -> String {
    date.format(FORMAT).to_string()
}

/// serde helpers for a required date.
pub mod required {
    use super::*;

    pub fn serialize<S: Serializer>(date: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(date))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).ok_or_else(|| serde::de::Error::custom(format!("not a date: {text:?}")))
    }
}

/// serde helpers for an optional date (lenient: unparseable → `None`).
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(date: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match date {
            Some(d) => s.serialize_str(&format(d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        Ok(text.and_then(|t| {
            let parsed = parse(&t);
            if parsed.is_none() {
                tracing::warn!(value = %t, "Apple sent a date that does not parse; ignoring it");
            }
            parsed
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn parses_apple_offsets_fractions_and_rfc3339() {
        let utc = Utc.with_ymd_and_hms(2030, 11, 8, 22, 33, 22).unwrap();
        assert_eq!(parse("2030-11-08T22:33:22+0000"), Some(utc));
        assert_eq!(parse(" 2030-11-08T22:33:22+0000\n"), Some(utc));
        assert_eq!(parse("2030-11-08T15:33:22-0700"), Some(utc));
        assert_eq!(parse("2030-11-08T22:33:22Z"), Some(utc));
        assert_eq!(parse("2030-11-08T23:33:22+01:00"), Some(utc));
        assert!(parse("2030-11-08T22:33:22.250+0000").is_some());
        assert_eq!(parse("08/11/2030"), None);
        assert_eq!(format(&utc), "2030-11-08T22:33:22+0000");
    }
}
