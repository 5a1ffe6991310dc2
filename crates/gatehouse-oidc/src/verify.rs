//! Strict verification of one JWT against one configured issuer, following RFC 8725 and
//! ../shared/security/tokens.md. The checks run in an order that never trusts what it has
//! not verified: the unverified `iss` only picks which issuer's rules apply; the algorithm is
//! pinned by that issuer; the key comes only from that issuer's JWKS; claims are read only
//! after the signature verified.

use base64::Engine;
use gatehouse_core::auth::OidcRejection;
use gatehouse_core::config::OidcIssuerConfig;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use crate::jwks::VerificationKey;

/// The longest token accepted; real ones are 1-4 KiB (J19).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// A token split and decoded, not yet verified.
pub struct Unverified<'a> {
    pub token: &'a str,
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
}

/// `true` when `text` could be a compact JWS: three dot-separated base64url parts.
pub fn looks_like_jwt(text: &str) -> bool {
    text.starts_with("eyJ") && text.bytes().filter(|b| *b == b'.').count() >= 2
}

/// Splits and decodes a compact JWS strictly: exactly three parts, unpadded base64url, JSON
/// objects (J3, J8, J19).
pub fn split(token: &str) -> Result<Unverified<'_>, OidcRejection> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(OidcRejection::Malformed);
    }
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 || parts[..2].iter().any(|p| p.is_empty()) {
        // Five parts is a JWE: never accepted.
        return Err(if parts.len() == 5 {
            OidcRejection::Header
        } else {
            OidcRejection::Malformed
        });
    }
    if !parts.iter().all(|p| {
        p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }) {
        return Err(OidcRejection::Malformed);
    }
    Ok(Unverified {
        token,
        header: decode_object(parts[0])?,
        claims: decode_object(parts[1])?,
    })
}

fn decode_object(part: &str) -> Result<Map<String, Value>, OidcRejection> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| OidcRejection::Malformed)?;
    // serde_json stops at 128 levels of nesting, so deep documents fail instead of overflowing.
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(OidcRejection::Malformed),
    }
}

impl Unverified<'_> {
    /// The unverified `iss`, only to choose which issuer's rules apply.
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }

    /// Header checks that need no key: pinned algorithm, no `crit`, no encryption, an
    /// accepted `typ` (J1, J2, J6, J7, J8, J17). Returns the algorithm and `kid`.
    pub fn check_header(
        &self,
        issuer: &OidcIssuerConfig,
    ) -> Result<(Algorithm, Option<&str>), OidcRejection> {
        let alg_name = self
            .header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(OidcRejection::Algorithm)?;
        // Exact, case-sensitive match against the pinned list: "none", "None", "HS256" and
        // anything else not configured end here.
        if !issuer.algorithms.iter().any(|a| a == alg_name) {
            return Err(OidcRejection::Algorithm);
        }
        let alg: Algorithm = alg_name.parse().map_err(|_| OidcRejection::Algorithm)?;
        if self.header.contains_key("crit")
            || self.header.contains_key("enc")
            || self.header.contains_key("zip")
        {
            return Err(OidcRejection::Header);
        }
        // `jku`, `x5u`, `jwk` and `x5c` are ignored: keys come only from the issuer's JWKS.
        if let Some(typ) = self.header.get("typ") {
            let typ = typ.as_str().ok_or(OidcRejection::TokenType)?;
            let typ = typ.strip_prefix("application/").unwrap_or(typ);
            if !issuer
                .token_types
                .iter()
                .any(|t| t.eq_ignore_ascii_case(typ))
            {
                return Err(OidcRejection::TokenType);
            }
        }
        let kid = match self.header.get("kid") {
            None => None,
            Some(Value::String(k)) if k.len() <= 256 => Some(k.as_str()),
            Some(_) => return Err(OidcRejection::UnknownKey),
        };
        Ok((alg, kid))
    }
}

/// Verifies the signature and the claims. `now` is seconds since the epoch.
pub fn verify(
    token: &Unverified<'_>,
    issuer: &OidcIssuerConfig,
    alg: Algorithm,
    key: &VerificationKey,
    now: u64,
) -> Result<(), OidcRejection> {
    let mut validation = Validation::new(alg);
    // Time and audience rules are checked below, with the stricter semantics tokens.md asks
    // for; the crate checks the signature (and `exp`, `iss`, `aud` once more).
    validation.leeway = issuer.leeway.as_secs();
    validation.validate_nbf = true;
    validation.set_issuer(&[&issuer.issuer]);
    validation.set_audience(&[&issuer.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    if let Err(e) = jsonwebtoken::decode::<Value>(token.token, &key.key, &validation) {
        use jsonwebtoken::errors::ErrorKind as K;
        return Err(match e.kind() {
            K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidRsaKey(_) => {
                OidcRejection::Signature
            }
            K::ExpiredSignature => OidcRejection::Expired,
            K::ImmatureSignature => OidcRejection::NotYetValid,
            K::InvalidAudience => OidcRejection::Audience,
            K::InvalidIssuer => OidcRejection::UnknownIssuer,
            K::MissingRequiredClaim(c) => OidcRejection::MissingClaim(c.clone()),
            K::InvalidAlgorithm | K::InvalidAlgorithmName => OidcRejection::Algorithm,
            _ => OidcRejection::Malformed,
        });
    }
    check_claims(&token.claims, issuer, now)
}

/// The claim rules, on a token whose signature verified.
pub fn check_claims(
    claims: &Map<String, Value>,
    issuer: &OidcIssuerConfig,
    now: u64,
) -> Result<(), OidcRejection> {
    let leeway = issuer.leeway.as_secs();
    let missing = |c: &str| OidcRejection::MissingClaim(c.to_string());
    // The issuer must be one string, equal byte for byte (J15).
    if claims.get("iss").and_then(Value::as_str) != Some(issuer.issuer.as_str()) {
        return Err(OidcRejection::UnknownIssuer);
    }
    match claims.get("sub").and_then(Value::as_str) {
        Some(s) if !s.is_empty() && s.len() <= 255 => {}
        _ => return Err(missing("sub")),
    }
    let exp = seconds(claims, "exp").ok_or_else(|| missing("exp"))?;
    let iat = seconds(claims, "iat").ok_or_else(|| missing("iat"))?;
    if exp.saturating_add(leeway) <= now {
        return Err(OidcRejection::Expired);
    }
    if iat > now.saturating_add(leeway) {
        return Err(OidcRejection::NotYetValid);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_u64().ok_or(OidcRejection::Malformed)?;
        if nbf > now.saturating_add(leeway) {
            return Err(OidcRejection::NotYetValid);
        }
    }
    if exp.saturating_sub(iat) > issuer.max_token_lifetime.as_secs() {
        return Err(OidcRejection::LifetimeTooLong);
    }
    // Audience: exactly ours; with several, the token must also be issued to our client (J14).
    match claims.get("aud") {
        Some(Value::String(a)) if *a == issuer.audience => {}
        Some(Value::Array(list)) if list.iter().any(|a| *a == *issuer.audience) => {
            if list.len() > 1
                && claims.get("azp").and_then(Value::as_str) != Some(issuer.client_id.as_str())
            {
                return Err(OidcRejection::Audience);
            }
        }
        Some(_) => return Err(OidcRejection::Audience),
        None => return Err(missing("aud")),
    }
    for (claim, expected) in &issuer.required_claims {
        match claims.get(claim) {
            None => return Err(missing(claim)),
            Some(Value::String(v)) if v == expected => {}
            Some(_) => return Err(OidcRejection::ClaimMismatch(claim.clone())),
        }
    }
    Ok(())
}

/// A NumericDate claim as whole seconds; fractions are allowed by RFC 7519 and truncated.
fn seconds(claims: &Map<String, Value>, name: &str) -> Option<u64> {
    let v = claims.get(name)?;
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < 1e12)
            .map(|f| f as u64)
    })
}
