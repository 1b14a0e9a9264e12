//! The sToken (content token, the `.vpptoken` file).
//!
//! Format (docs/apple.md, sToken parsing): standard base64 of a JSON object `{token, expDate,
//! orgName}`; Apple's example holds pretty-printed JSON, the legacy one compact JSON with a `-0700`
//! offset. What goes in `Authorization: Bearer …` is the **whole base64 text**, not the inner
//! `token` field.
//!
//! Decisions:
//! - [`SToken`] keeps that text in a [`secrecy::SecretString`] (zeroed when the last clone is
//!   dropped). It prints as `SToken(***)` in `Debug` and `Display`, has no
//!   `Serialize`, and only [`SToken::expose`] gives the text out (to build the header or to encrypt it
//!   at rest). [`SToken::fingerprint`] is a short SHA-256 prefix that is safe to log and compare.
//! - Parsing trims surrounding whitespace and drops whitespace inside (files wrapped at 76 columns
//!   still work); padding is optional. The token kept is the cleaned text.
//! - One [`STokenError`] variant per way a file can be wrong; no message contains the token.
//! - The expiry check takes the clock as an argument ([`parse_stoken_at`]) so tests can parse
//!   Apple's 2014 legacy example.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::dates;

/// The sToken text (base64 of the JSON file contents). Cheap to clone; never printed.
#[derive(Clone)]
pub struct SToken(Arc<SecretString>);

impl SToken {
    /// Wraps token text without validating it (e.g. one read back from encrypted storage).
    /// Surrounding whitespace is trimmed.
    pub fn new(text: impl AsRef<str>) -> SToken {
        SToken(Arc::new(SecretString::from(text.as_ref().trim())))
    }

    /// The token text, for the `Authorization` header or encryption at rest. Never log it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// First 8 bytes of SHA-256 of the token, hex: safe to log, stable across restarts.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.expose().as_bytes());
        hex::encode(&digest[..8])
    }
}

impl PartialEq for SToken {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for SToken {}

impl std::hash::Hash for SToken {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.expose().hash(state);
    }
}

impl fmt::Debug for SToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SToken(***)")
    }
}

impl fmt::Display for SToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SToken(***)")
    }
}

/// A validated sToken with the fields an account needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedSToken {
    /// The token to send (cleaned base64 text).
    pub raw: SToken,
    /// `expDate`, in UTC.
    pub exp_date: DateTime<Utc>,
    /// `orgName`.
    pub org_name: String,
}

/// Why a text is not a usable sToken. Messages never contain the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum STokenError {
    #[error("the sToken is not base64 text (upload the contents of the .vpptoken file)")]
    NotBase64,
    #[error("the sToken does not decode to a JSON object")]
    NotJson,
    #[error("the sToken has no `{0}` field (or it is empty or not a string)")]
    MissingField(&'static str),
    #[error("the sToken's `expDate` is not a date")]
    BadDate,
    #[error("the sToken expired on {}; download a new one from Apple Business or School Manager", dates::format(.exp))]
    Expired { exp: DateTime<Utc> },
}

/// Parses and validates sToken text against the current time.
pub fn parse_stoken(text: &str) -> Result<ParsedSToken, STokenError> {
    parse_stoken_at(text, Utc::now())
}

/// Parses and validates sToken text; `now` decides whether it has expired.
pub fn parse_stoken_at(text: &str, now: DateTime<Utc>) -> Result<ParsedSToken, STokenError> {
    let cleaned: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if cleaned.is_empty() {
        return Err(STokenError::NotBase64);
    }
    let bytes = STANDARD_PAD_INDIFFERENT
        .decode(cleaned.as_bytes())
        .map_err(|_| STokenError::NotBase64)?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| STokenError::NotJson)?;
    let object = value.as_object().ok_or(STokenError::NotJson)?;
    let field = |name: &'static str| -> Result<&str, STokenError> {
        object
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(STokenError::MissingField(name))
    };
    field("token")?;
    let exp_text = field("expDate")?;
    let org_name = field("orgName")?.to_owned();
    let exp_date = dates::parse(exp_text).ok_or(STokenError::BadDate)?;
    if exp_date <= now {
        return Err(STokenError::Expired { exp: exp_date });
    }
    Ok(ParsedSToken {
        raw: SToken::new(cleaned),
        exp_date,
        org_name,
    })
}

/// Builds sToken text the way Apple's files look (base64 of compact JSON). The simulator mints its
/// fake tokens with it; tests use it for tokens with a chosen expiry.
pub fn build_stoken(token: &str, exp_date: DateTime<Utc>, org_name: &str) -> SToken {
    let json = serde_json::json!({
        "token": token,
        "expDate": dates::format(&exp_date),
        "orgName": org_name,
    });
    SToken::new(STANDARD.encode(json.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const APPLE_V2: &str = "ewogICAgInRva2VuIjogIlZGZHdRbVZWTVZSUldGSktVbGRTTlZkc1pHcGpNR3hIVTI1Q2FrMXRhRzlhUjJ3eldqRkdkVk50ZUd0VFJrWjZVMVZhVDJGSFRuUlNiVGxOVVRCS1ExcEdhRTlOUjBaWVRrUXdQUT09IiwKICAgICJleHBEYXRlIjogIjIwMzAtMTEtMDhUMjI6MzM6MjIrMDAwMCIsCiAgICAib3JnTmFtZSI6ICJPUkcxMjM0NSIKfQ==";
    const APPLE_LEGACY: &str = "eyJ0b2tlbiI6InQxWG9VenBMRXRwZGxhK25zeENkd3JjdDBSandkaWNOaGRreW5STW05VVAyc2hSYTBMUnVGcVpQM0pLQmJUTWxDSE42ajNta1R6WVlQbVVkVXJXV2x3PT0iLCJleHBEYXRlIjoiMjAxNC0wOC0xNVQxODoxMzo1Mi0wNzAwIiwib3JnTmFtZSI6Ik9SRy4yMDA5MDcxNjAwIn0=";

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    #[test]
    fn apple_v2_example_parses_with_pretty_json() {
        let parsed = parse_stoken_at(
            &format!("{APPLE_V2}\n"),
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        )
        .unwrap();
        assert_eq!(parsed.org_name, "ORG12345");
        assert_eq!(
            parsed.exp_date,
            Utc.with_ymd_and_hms(2030, 11, 8, 22, 33, 22).unwrap()
        );
        assert_eq!(
            parsed.raw.expose(),
            APPLE_V2,
            "the header carries the whole file text"
        );
    }

    #[test]
    fn apple_legacy_example_parses_compact_json_with_negative_offset() {
        let parsed = parse_stoken_at(
            APPLE_LEGACY,
            Utc.with_ymd_and_hms(2014, 1, 1, 0, 0, 0).unwrap(),
        )
        .unwrap();
        assert_eq!(parsed.org_name, "ORG.2009071600");
        // 18:13:52 at -0700 is 01:13:52 UTC the next day.
        assert_eq!(
            parsed.exp_date,
            Utc.with_ymd_and_hms(2014, 8, 16, 1, 13, 52).unwrap()
        );
        // Today it is expired, and says when.
        assert_eq!(
            parse_stoken(APPLE_LEGACY),
            Err(STokenError::Expired {
                exp: parsed.exp_date
            })
        );
    }

    #[test]
    fn each_kind_of_bad_file_has_its_own_error() {
        assert_eq!(parse_stoken("   "), Err(STokenError::NotBase64));
        assert_eq!(
            parse_stoken("not base64 at all!"),
            Err(STokenError::NotBase64)
        );
        assert_eq!(parse_stoken(&b64("hello")), Err(STokenError::NotJson));
        assert_eq!(parse_stoken(&b64("[1,2]")), Err(STokenError::NotJson));
        assert_eq!(
            parse_stoken(&b64(
                r#"{"expDate":"2099-01-01T00:00:00+0000","orgName":"O"}"#
            )),
            Err(STokenError::MissingField("token"))
        );
        assert_eq!(
            parse_stoken(&b64(r#"{"token":"t","orgName":"O"}"#)),
            Err(STokenError::MissingField("expDate"))
        );
        assert_eq!(
            parse_stoken(&b64(
                r#"{"token":"t","expDate":"2099-01-01T00:00:00+0000","orgName":""}"#
            )),
            Err(STokenError::MissingField("orgName"))
        );
        assert_eq!(
            parse_stoken(&b64(r#"{"token":"t","expDate":"next year","orgName":"O"}"#)),
            Err(STokenError::BadDate)
        );
    }

    #[test]
    fn wrapped_and_unpadded_files_are_accepted() {
        let token = build_stoken(
            "secret",
            Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0).unwrap(),
            "Org",
        );
        let text = token.expose().trim_end_matches('=');
        let wrapped = format!("  {}\r\n{}\n", &text[..20], &text[20..]);
        let parsed = parse_stoken(&wrapped).unwrap();
        assert_eq!(parsed.org_name, "Org");
        assert_eq!(parsed.raw.expose(), text);
    }

    #[test]
    fn token_text_never_prints() {
        let parsed =
            parse_stoken_at(APPLE_V2, Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()).unwrap();
        for shown in [
            format!("{:?}", parsed),
            format!("{}", parsed.raw),
            format!("{:?}", parsed.raw),
        ] {
            assert!(!shown.contains(&APPLE_V2[..16]), "{shown}");
        }
        assert_eq!(format!("{}", parsed.raw), "SToken(***)");
        assert_eq!(parsed.raw.fingerprint().len(), 16);
        let expired = parse_stoken(APPLE_LEGACY).unwrap_err().to_string();
        assert!(expired.contains("2014-08-16T01:13:52+0000"), "{expired}");
        assert!(!expired.contains("t1XoUzpL"));
    }
}
