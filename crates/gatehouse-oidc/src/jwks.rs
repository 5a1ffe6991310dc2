//! A JWKS document turned into the keys Gatehouse will verify with. Keys that are unsuitable
//! for verification are dropped here, once, so verification never has to ask (tokens.md J21).

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

/// The smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// One verification key from an issuer's JWKS.
pub struct VerificationKey {
    pub key: DecodingKey,
    /// The key type decides the algorithm family, never the token (RS/HS confusion, J2).
    pub family: KeyFamily,
    /// The JWK's own `alg`, when it names one: then only that algorithm may use the key.
    pub alg: Option<Algorithm>,
}

/// The algorithm families a key type can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyFamily {
    /// The family an algorithm needs.
    pub fn of(alg: Algorithm) -> Option<KeyFamily> {
        use Algorithm::*;
        match alg {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Some(KeyFamily::Rsa),
            ES256 => Some(KeyFamily::EcP256),
            ES384 => Some(KeyFamily::EcP384),
            EdDSA => Some(KeyFamily::Ed25519),
            _ => None,
        }
    }
}

/// The usable keys of one JWKS, by `kid`.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<VerificationKey>>,
    /// Keys published without a `kid`; usable only by tokens without one, and only when a
    /// single key fits the token's algorithm.
    anonymous: Vec<Arc<VerificationKey>>,
}

impl KeySet {
    /// The key a token names, if the set has exactly one that fits `alg`.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<VerificationKey>> {
        let fits = |k: &Arc<VerificationKey>| {
            Some(k.family) == KeyFamily::of(alg) && k.alg.is_none_or(|a| a == alg)
        };
        match kid {
            Some(kid) => self.by_kid.get(kid).filter(|k| fits(k)).cloned(),
            None => {
                let mut candidates = self
                    .by_kid
                    .values()
                    .chain(self.anonymous.iter())
                    .filter(|k| fits(k));
                match (candidates.next(), candidates.next()) {
                    (Some(only), None) => Some(only.clone()),
                    _ => None,
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawKey {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// Why a JWKS document was not usable at all.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("the JWKS is not a JSON object with a `keys` array: {0}")]
    Shape(String),
}

/// Parses a JWKS, keeping only keys fit to verify signatures. Returns the set and how many
/// keys were dropped, for the log.
pub fn parse(body: &[u8]) -> Result<(KeySet, usize), JwksError> {
    let raw: RawSet = serde_json::from_slice(body).map_err(|e| JwksError::Shape(e.to_string()))?;
    let mut set = KeySet::default();
    let mut dropped = 0;
    let mut ambiguous: Vec<String> = Vec::new();
    for value in raw.keys {
        let Some((kid, key)) = serde_json::from_value::<RawKey>(value)
            .ok()
            .and_then(usable)
        else {
            dropped += 1;
            continue;
        };
        match kid {
            Some(kid) if ambiguous.contains(&kid) => dropped += 1,
            Some(kid) => {
                if set.by_kid.remove(&kid).is_some() {
                    // Two keys under one kid: neither can be trusted to be the one meant.
                    ambiguous.push(kid);
                    dropped += 2;
                } else {
                    set.by_kid.insert(kid, Arc::new(key));
                }
            }
            None => set.anonymous.push(Arc::new(key)),
        }
    }
    Ok((set, dropped))
}

fn usable(k: RawKey) -> Option<(Option<String>, VerificationKey)> {
    if k.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    if let Some(ops) = &k.key_ops
        && !ops.iter().any(|o| o == "verify")
    {
        return None;
    }
    if k.kid.as_ref().is_some_and(|kid| kid.len() > 256) {
        return None;
    }
    let alg = match k.alg.as_deref() {
        None => None,
        Some(a) => Some(a.parse::<Algorithm>().ok()?),
    };
    let (family, key) = match (k.kty.as_str(), k.crv.as_deref()) {
        ("RSA", _) => {
            let (n, e) = (k.n?, k.e?);
            let modulus = base64_len(&n)?;
            if modulus < MIN_RSA_MODULUS_BYTES {
                return None;
            }
            (
                KeyFamily::Rsa,
                DecodingKey::from_rsa_components(&n, &e).ok()?,
            )
        }
        ("EC", Some(crv @ ("P-256" | "P-384"))) => {
            let family = if crv == "P-256" {
                KeyFamily::EcP256
            } else {
                KeyFamily::EcP384
            };
            (family, DecodingKey::from_ec_components(&k.x?, &k.y?).ok()?)
        }
        ("OKP", Some("Ed25519")) => (
            KeyFamily::Ed25519,
            DecodingKey::from_ed_components(&k.x?).ok()?,
        ),
        _ => return None,
    };
    if let Some(alg) = alg
        && KeyFamily::of(alg) != Some(family)
    {
        return None;
    }
    Some((k.kid, VerificationKey { key, family, alg }))
}

/// The decoded length of unpadded base64url text, ignoring leading zero bytes of a big-endian
/// integer.
fn base64_len(text: &str) -> Option<usize> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()?;
    Some(bytes.iter().skip_while(|b| **b == 0).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(bytes: usize) -> String {
        use base64::Engine;
        let mut v = vec![0xC5u8; bytes];
        v[bytes - 1] = 0x01;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    #[test]
    fn unsuitable_keys_are_dropped() {
        let good = n(256);
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "ok", "n": good, "e": "AQAB", "alg": "RS256", "use": "sig"},
            {"kty": "RSA", "kid": "enc", "n": good, "e": "AQAB", "use": "enc"},
            {"kty": "RSA", "kid": "ops", "n": good, "e": "AQAB", "key_ops": ["encrypt"]},
            {"kty": "RSA", "kid": "small", "n": n(128), "e": "AQAB"},
            {"kty": "RSA", "kid": "mismatch", "n": good, "e": "AQAB", "alg": "ES256"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "dup", "n": good, "e": "AQAB"},
            {"kty": "OKP", "kid": "dup", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "EC", "kid": "curve", "crv": "P-521", "x": "AA", "y": "AA"},
            "not a key"
        ]});
        let (set, dropped) = parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(dropped, 9);
        assert!(set.find(Some("ok"), Algorithm::RS256).is_some());
        // The key's own alg pins it; the family must match the token's alg.
        assert!(set.find(Some("ok"), Algorithm::RS384).is_none());
        assert!(set.find(Some("ok"), Algorithm::HS256).is_none());
        assert!(set.find(Some("dup"), Algorithm::RS256).is_none());
        // A token without kid may use the only key that fits.
        assert!(set.find(None, Algorithm::RS256).is_some());
        assert!(set.find(None, Algorithm::ES256).is_none());
    }

    #[test]
    fn a_document_that_is_not_a_jwks_is_an_error() {
        assert!(parse(b"[]").is_err());
        assert!(parse(b"{\"keys\": 3}").is_err());
        assert!(parse(&b"[".repeat(100_000)).is_err());
    }
}
