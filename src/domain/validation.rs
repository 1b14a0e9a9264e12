//! Checks of the values callers give: pure functions over the value, no I/O. A failed check is a
//! [`FieldError`] naming the field; the transport answers a list of them with a 422
//! `validation-failed` problem.
//!
//! Free text people give resources (space and account names, descriptions) ends up in consoles,
//! logs and CSV exports, where a control character rewrites the terminal (ESC), splits a record
//! (CR, LF) or hides text. So a name holds no control character at all (tab included) and none of
//! the invisible characters that reorder or break lines (U+2028/2029, the bidirectional overrides
//! and isolates); a description may hold tabs but no other control character (line breaks
//! included: it is one line of text).

use serde::Serialize;
use utoipa::ToSchema;

/// One invalid field of a request.
#[derive(Clone, Debug, Serialize, ToSchema, PartialEq, Eq)]
pub struct FieldError {
    /// JSON pointer-like path of the field, e.g. `name`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// True for a well-formed space id: a slug of lowercase letters, digits and dashes, 1–63
/// characters, no leading or trailing dash.
pub fn valid_space_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// True for Apple's product id (`adamId`): 1 to 20 digits.
pub fn valid_adam_id(adam_id: &str) -> bool {
    !adam_id.is_empty() && adam_id.len() <= 20 && adam_id.bytes().all(|b| b.is_ascii_digit())
}

/// True for a pricing Apple sells: `STDQ` (standard) or `PLUS` (high quality).
pub fn valid_pricing(pricing: &str) -> bool {
    pricing == "STDQ" || pricing == "PLUS"
}

/// Checks an asset given as `{field}.adam_id` and, when given, `{field}.pricing_param`.
pub fn check_asset(
    errors: &mut Vec<FieldError>,
    field: &str,
    adam_id: &str,
    pricing: Option<&str>,
) {
    if !valid_adam_id(adam_id) {
        errors.push(FieldError {
            field: format!("{field}.adam_id"),
            message: "must be Apple's numeric product id (1-20 digits)".into(),
        });
    }
    if let Some(p) = pricing
        && !valid_pricing(p)
    {
        errors.push(FieldError {
            field: format!("{field}.pricing_param"),
            message: "must be STDQ or PLUS".into(),
        });
    }
}

/// Checks a subject id, user id or group name: 1 to 256 characters, not blank.
pub fn check_id(errors: &mut Vec<FieldError>, field: &str, id: &str) {
    if id.trim().is_empty() || id.chars().count() > 256 {
        errors.push(FieldError {
            field: field.into(),
            message: "must be 1 to 256 characters".into(),
        });
    }
}

/// Checks a free-text reason: at most 1000 characters.
pub fn check_reason(errors: &mut Vec<FieldError>, field: &str, reason: &str) {
    if reason.chars().count() > 1000 {
        errors.push(FieldError {
            field: field.into(),
            message: "at most 1000 characters".into(),
        });
    }
}

/// Longest name, in characters.
pub const NAME_MAX: usize = 200;

/// Checks a display name: 1 to [`NAME_MAX`] characters, not blank, no control or invisible
/// layout character. Pushes at most one error for `field`.
pub fn check_name(errors: &mut Vec<FieldError>, field: &str, name: &str) {
    let message = if name.trim().is_empty() || name.chars().count() > NAME_MAX {
        format!("must be 1 to {NAME_MAX} characters and not blank")
    } else if let Some(c) = name.chars().find(|c| forbidden_in_name(*c)) {
        format!(
            "must not contain control or invisible layout characters (found U+{:04X})",
            c as u32
        )
    } else {
        return;
    };
    errors.push(FieldError {
        field: field.into(),
        message,
    });
}

/// Checks a description: at most `max` characters, no control character but tab.
pub fn check_description(errors: &mut Vec<FieldError>, field: &str, text: &str, max: usize) {
    let message = if text.chars().count() > max {
        format!("must be at most {max} characters")
    } else if let Some(c) = text.chars().find(|c| c.is_control() && *c != '\t') {
        format!(
            "must not contain control characters such as line breaks or escapes (found U+{:04X})",
            c as u32
        )
    } else {
        return;
    };
    errors.push(FieldError {
        field: field.into(),
        message,
    });
}

fn forbidden_in_name(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_ok(name: &str) -> bool {
        let mut errors = Vec::new();
        check_name(&mut errors, "name", name);
        errors.is_empty()
    }

    fn description_ok(text: &str) -> bool {
        let mut errors = Vec::new();
        check_description(&mut errors, "description", text, 20);
        errors.is_empty()
    }

    #[test]
    fn names_refuse_control_and_layout_characters() {
        assert!(name_ok("ACME Europe – Süd 🏢"));
        for bad in [
            "a\u{1}b",
            "a\u{1b}[2J",
            "a\r\nb",
            "a\nb",
            "a\tb",
            "a\u{7f}",
            "a\u{85}",
            "a\u{202e}b",
            "a\u{2028}b",
            "a\u{2066}b",
            "",
            "   ",
        ] {
            assert!(!name_ok(bad), "{bad:?}");
        }
        assert!(!name_ok(&"x".repeat(201)));
        assert!(name_ok(&"é".repeat(200)), "characters, not bytes");
    }

    #[test]
    fn descriptions_allow_tabs_only() {
        assert!(description_ok(""));
        assert!(description_ok("a\tb"));
        for bad in ["a\u{1}", "a\u{1b}[0m", "a\r\nb", "a\n", "\u{9b}"] {
            assert!(!description_ok(bad), "{bad:?}");
        }
        assert!(!description_ok(&"x".repeat(21)));
    }

    #[test]
    fn adam_ids_and_pricings() {
        for ok in ["1", "408709785", &"9".repeat(20)] {
            assert!(valid_adam_id(ok), "{ok}");
        }
        for bad in ["", "12a", "-1", " 1", &"9".repeat(21)] {
            assert!(!valid_adam_id(bad), "{bad:?}");
        }
        assert!(valid_pricing("STDQ") && valid_pricing("PLUS"));
        assert!(!valid_pricing("stdq") && !valid_pricing(""));
    }

    #[test]
    fn space_ids() {
        for ok in ["a", "acme-eu", "0", "a1-b2", &"x".repeat(63)] {
            assert!(valid_space_id(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a b", "é", &"x".repeat(64)] {
            assert!(!valid_space_id(bad), "{bad:?}");
        }
    }
}
