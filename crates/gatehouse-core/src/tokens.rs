//! Gateway-issued service-account tokens.
//!
//! A token looks like `gatehouse_sa_<32 base62 chars><6 base62 chars of CRC-32>`. The fixed
//! prefix lets secret scanners find leaked tokens, and the checksum lets them (and the gateway)
//! reject a mistyped or truncated token without a store lookup. Only the SHA-256 of a token is
//! stored: tokens carry about 190 bits of randomness, so a fast hash is enough and a leaked
//! store does not leak usable credentials.

use rand::Rng;
use sha2::{Digest, Sha256};

/// Every service-account token starts with this.
pub const TOKEN_PREFIX: &str = "gatehouse_sa_";
const RANDOM_LEN: usize = 32;
const CHECKSUM_LEN: usize = 6;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A freshly generated token; the clear value exists only until it is shown once.
pub struct NewToken {
    pub value: String,
    pub hash: TokenHash,
}

/// SHA-256 of a token, the only form the store keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }
}

/// Generates a new random token.
pub fn generate() -> NewToken {
    let mut rng = rand::rng();
    let mut value = String::with_capacity(TOKEN_PREFIX.len() + RANDOM_LEN + CHECKSUM_LEN);
    value.push_str(TOKEN_PREFIX);
    for _ in 0..RANDOM_LEN {
        value.push(BASE62[rng.random_range(0..BASE62.len())] as char);
    }
    let checksum = crc32(&value.as_bytes()[TOKEN_PREFIX.len()..]);
    value.push_str(&base62_fixed(checksum as u64, CHECKSUM_LEN));
    let hash = TokenHash::of(&value);
    NewToken { value, hash }
}

/// `true` when `candidate` has the shape and checksum of a Gatehouse token. Says nothing about
/// whether the token exists, is expired or is revoked.
pub fn is_well_formed(candidate: &str) -> bool {
    let Some(body) = candidate.strip_prefix(TOKEN_PREFIX) else {
        return false;
    };
    if body.len() != RANDOM_LEN + CHECKSUM_LEN || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let (random, checksum) = body.split_at(RANDOM_LEN);
    base62_fixed(crc32(random.as_bytes()) as u64, CHECKSUM_LEN) == checksum
}

/// A short, non-secret hint of a token for listings: the prefix and first 4 random characters.
pub fn display_hint(token: &str) -> String {
    let end = (TOKEN_PREFIX.len() + 4).min(token.len());
    format!("{}…", &token[..end])
}

fn base62_fixed(mut n: u64, width: usize) -> String {
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out).unwrap_or_default()
}

/// CRC-32 (IEEE), bitwise: it runs once per token, so a table is not worth its size.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_well_formed_and_distinct() {
        let a = generate();
        let b = generate();
        assert!(is_well_formed(&a.value), "{}", a.value);
        assert_ne!(a.value, b.value);
        assert_ne!(a.hash, b.hash);
        assert_eq!(a.hash, TokenHash::of(&a.value));
    }

    #[test]
    fn a_single_changed_character_fails_the_checksum() {
        let t = generate().value;
        let mut bytes = t.clone().into_bytes();
        let i = TOKEN_PREFIX.len() + 3;
        bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
        assert!(!is_well_formed(&String::from_utf8(bytes).unwrap()));
        assert!(!is_well_formed(&t[..t.len() - 1]));
        assert!(!is_well_formed(&format!("{t}x")));
        assert!(!is_well_formed(""));
        assert!(!is_well_formed("gatehouse_sa_"));
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn the_hint_does_not_reveal_the_token() {
        let t = generate().value;
        let hint = display_hint(&t);
        assert!(hint.len() < TOKEN_PREFIX.len() + 8);
    }
}
