//! What a sensitive value becomes.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The text that replaces a redacted value.
pub const REDACTED: &str = "****";

/// How a value is masked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Replaced by `****`.
    Redact,
    /// `****` followed by the last `keep_last` characters (digits only, for values made of
    /// digits and separators, such as card numbers).
    Partial { keep_last: usize },
    /// A deterministic token, `tok_` and 16 hex digits of a keyed HMAC: equal values give
    /// equal tokens, so joins and grouping still work, and without the key nothing can be
    /// recovered or confirmed by guessing.
    Token,
    /// The whole value becomes NULL.
    Null,
}

/// The secret key of the token strategy.
#[derive(Clone)]
pub struct TokenKey(Vec<u8>);

impl TokenKey {
    pub fn new(bytes: Vec<u8>) -> TokenKey {
        TokenKey(bytes)
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// A masked value.
#[derive(Debug, PartialEq, Eq)]
pub enum Masked {
    Text(String),
    Null,
}

impl Strategy {
    pub fn apply(&self, value: &str, key: &TokenKey) -> Masked {
        match self {
            Strategy::Redact => Masked::Text(REDACTED.to_string()),
            Strategy::Null => Masked::Null,
            Strategy::Partial { keep_last } => Masked::Text(partial(value, *keep_last)),
            Strategy::Token => Masked::Text(token(value, key)),
        }
    }
}

fn partial(value: &str, keep_last: usize) -> String {
    let digits_only = value
        .chars()
        .all(|c| c.is_ascii_digit() || c == ' ' || c == '-');
    let kept: Vec<char> = if digits_only {
        value.chars().filter(char::is_ascii_digit).collect()
    } else {
        value.chars().collect()
    };
    // Never keep so much that most of the value shows: at most a third of it.
    let keep = keep_last.min(kept.len() / 3);
    let tail: String = kept[kept.len() - keep..].iter().collect();
    format!("{REDACTED}{tail}")
}

fn token(value: &str, key: &TokenKey) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(&key.0) {
        Ok(m) => m,
        Err(_) => return REDACTED.to_string(),
    };
    mac.update(value.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(20);
    out.push_str("tok_");
    for b in &digest[..8] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_never_shows_most_of_a_value() {
        assert_eq!(partial("4111 1111 1111 1111", 4), "****1111");
        assert_eq!(partial("123-45-6789", 4), "****789");
        assert_eq!(partial("ab", 4), "****");
    }
}
