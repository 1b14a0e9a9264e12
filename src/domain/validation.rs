//! Checks of the values callers give: pure functions over the value, no I/O. The transport turns
//! a failed check into its problem answer.

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

#[cfg(test)]
mod tests {
    use super::*;

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
