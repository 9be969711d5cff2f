//! Rules for account fields. Each returns a user-safe message for the field's `errors` entry.

use unicode_normalization::UnicodeNormalization;

/// 3..=150 characters of letters, digits and `.@+-_`, counted and checked in the name's composed
/// form (NFC), so that a letter typed as a base and a combining accent (`E\u{301}mile`) is the
/// letter it shows, as its precomposed spelling (`Émile`) is.
pub fn validate_username(raw: &str) -> Result<(), String> {
    let composed: String = raw.nfc().collect();
    let len = composed.chars().count();
    if !(3..=150).contains(&len) {
        return Err("must be 3 to 150 characters".to_string());
    }
    if !composed.chars().all(|c| c.is_alphanumeric() || matches!(c, '.' | '@' | '+' | '-' | '_')) {
        return Err("may contain only letters, digits and . @ + - _".to_string());
    }
    Ok(())
}

/// A plausible address: one `@`, a local part, a dotted domain, no spaces, at most 254 characters.
pub fn validate_email(raw: &str) -> Result<(), String> {
    let invalid = || Err("must be a valid email address".to_string());
    if raw.len() > 254 || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid();
    }
    let Some((local, domain)) = raw.split_once('@') else { return invalid() };
    let domain_ok = !domain.contains('@')
        && domain.contains('.')
        && domain
            .split('.')
            .all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'));
    if local.is_empty() || local.len() > 64 || !domain_ok {
        return invalid();
    }
    Ok(())
}

/// 8..=128 characters.
pub fn validate_password(raw: &str) -> Result<(), String> {
    let len = raw.chars().count();
    if !(8..=128).contains(&len) {
        return Err("must be 8 to 128 characters".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_the_contract() {
        for good in ["bob", "alice.smith@example", "a+b-c_d", "Émile", "E\u{301}mile", "ΝΙΚΟΣ", "ＡＢＣ"]
        {
            assert!(validate_username(good).is_ok(), "{good}");
        }
        for bad in ["ab", "with space", "semi;colon", &"x".repeat(151), "e\u{301}\u{301}", "\u{301}abc"] {
            assert!(validate_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails_must_look_like_addresses() {
        assert!(validate_email("greg@xyz.com").is_ok());
        for bad in ["", "greg", "greg@", "@xyz.com", "greg@xyz", "a b@xyz.com", "a@b@c.com", "a@-x.com"] {
            assert!(validate_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_8_to_128_characters() {
        assert!(validate_password("12345678").is_ok());
        assert!(validate_password("1234567").is_err());
        assert!(validate_password(&"p".repeat(129)).is_err());
    }
}
