//! OIDC federation: the gateway accepts signed tokens (JWTs) from configured identity
//! providers next to its own service-account tokens, so CI jobs, cloud workloads and people
//! need no long-lived Gatehouse secret.
//!
//! - [`verify`]: the strict token checks (RFC 8725, ../shared/security/tokens.md);
//! - [`cache`] and [`jwks`]: each issuer's signing keys, fetched through discovery and cached;
//! - [`fetch`]: bounded HTTPS requests to the IdP;
//! - [`device`]: the OAuth 2.0 device authorization flow behind `gatehouse login`.

pub mod cache;
pub mod device;
pub mod fetch;
pub mod jwks;
pub mod verify;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use gatehouse_core::auth::{AuthError, FederatedVerifier, OidcRejection};
use gatehouse_core::config::{OidcIssuerConfig, OidcSubjectKind};
use gatehouse_core::identity::{Identity, IdentityKind};
use serde_json::{Map, Value};
use sha2::Digest;

use crate::cache::KeyCache;
use crate::fetch::{FetchError, Fetcher};

/// Most groups taken from one token; more is a misconfigured IdP or an attack.
const MAX_GROUPS: usize = 256;
/// Longest group name taken from a token.
const MAX_GROUP_LEN: usize = 128;

/// One configured issuer with its key cache.
struct Issuer {
    config: OidcIssuerConfig,
    keys: KeyCache,
}

/// Verifies tokens from every configured OIDC issuer.
pub struct OidcVerifier {
    issuers: Vec<Arc<Issuer>>,
}

impl OidcVerifier {
    /// Sets up one key cache per issuer. Nothing is fetched until [`OidcVerifier::warm`] or
    /// the first token.
    pub fn new(configs: &[OidcIssuerConfig]) -> Result<OidcVerifier, FetchError> {
        let issuers = configs
            .iter()
            .map(|c| {
                let fetcher = Fetcher::new(c.ca_file.as_deref(), c.fetch_timeout)?;
                Ok(Arc::new(Issuer {
                    keys: KeyCache::new(c, fetcher),
                    config: c.clone(),
                }))
            })
            .collect::<Result<_, FetchError>>()?;
        Ok(OidcVerifier { issuers })
    }

    /// Fetches every issuer's keys in the background, so first logins do not wait.
    pub fn warm(&self) {
        for issuer in &self.issuers {
            let issuer = issuer.clone();
            tokio::spawn(async move { issuer.keys.warm().await });
        }
    }

    /// Verifies `token` and returns the identity it proves.
    pub async fn verify_token(&self, token: &str) -> Result<Identity, OidcRejection> {
        let unverified = verify::split(token)?;
        let iss = unverified.issuer().ok_or(OidcRejection::UnknownIssuer)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or(OidcRejection::UnknownIssuer)?;
        let (alg, kid) = unverified.check_header(&issuer.config)?;
        let key = issuer.keys.key(kid, alg).await?;
        let now = now_seconds();
        verify::verify(&unverified, &issuer.config, alg, &key, now)?;
        Ok(identity_of(&issuer.config, &unverified.claims, token))
    }
}

impl FederatedVerifier for OidcVerifier {
    fn claims(&self, credential: &str) -> bool {
        verify::looks_like_jwt(credential)
    }

    fn verify<'a>(
        &'a self,
        credential: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Identity, AuthError>> + Send + 'a>> {
        Box::pin(async move {
            self.verify_token(credential).await.map_err(|reason| {
                tracing::info!(%reason, "refused an OIDC token");
                AuthError::Oidc(reason)
            })
        })
    }
}

fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The identity a verified token names: keyed on (issuer, `sub`), never on email.
fn identity_of(config: &OidcIssuerConfig, claims: &Map<String, Value>, token: &str) -> Identity {
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    let subject = text("sub").unwrap_or_default().to_string();
    let display_name = ["preferred_username", "name", "email"]
        .iter()
        .find_map(|c| text(c))
        .map(printable)
        .unwrap_or_else(|| subject.clone());
    let token_id = match text("jti") {
        Some(jti) if !jti.is_empty() && jti.len() <= 128 => format!("jti:{}", printable(jti)),
        _ => format!(
            "jwt:{}",
            &hex::encode(sha2::Sha256::digest(token.as_bytes()))[..16]
        ),
    };
    let expires_at = claims
        .get("exp")
        .and_then(Value::as_u64)
        .map(|s| (s.min(i64::MAX as u64 / 1_000_000) * 1_000_000) as i64);
    Identity {
        subject,
        issuer: config.name.clone(),
        display_name,
        kind: match config.kind {
            OidcSubjectKind::Human => IdentityKind::Human,
            OidcSubjectKind::Workload => IdentityKind::Workload,
        },
        groups: groups_of(config, claims),
        token_id,
        expires_at,
    }
}

/// Groups from the configured claim (a string array or one string) plus the mapped ones.
fn groups_of(config: &OidcIssuerConfig, claims: &Map<String, Value>) -> Vec<String> {
    let mut groups: Vec<String> = Vec::new();
    let mut add = |g: &str| {
        if !g.is_empty()
            && g.len() <= MAX_GROUP_LEN
            && !g.chars().any(char::is_control)
            && groups.len() < MAX_GROUPS
            && !groups.iter().any(|x| x == g)
        {
            groups.push(g.to_string());
        }
    };
    match claims.get(&config.groups_claim) {
        Some(Value::String(g)) => add(g),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).for_each(&mut add),
        _ => {}
    }
    for m in &config.group_mappings {
        if claims.get(&m.claim).and_then(Value::as_str) == Some(m.equals.as_str()) {
            add(&m.group);
        }
    }
    groups
}

/// Control characters replaced, so a claim cannot forge log lines or terminal output.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(256)
        .collect()
}
