//! One issuer's signing keys, cached: fetched through discovery, used until they go stale,
//! refreshed at most once per cooldown when a token names a key the cache lacks, and served
//! from cache through a bounded IdP outage, after which tokens are refused (tokens.md J20).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use gatehouse_core::auth::OidcRejection;
use gatehouse_core::config::OidcIssuerConfig;
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use crate::fetch::{FetchError, Fetcher};
use crate::jwks::{self, KeySet, VerificationKey};

/// The part of an OIDC discovery document the gateway uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
}

/// Why keys could not be refreshed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("the discovery document names issuer \"{found}\", not the configured one")]
    IssuerMismatch { found: String },
    #[error("the discovery document's jwks_uri is not https://")]
    InsecureJwksUri,
    #[error("the JWKS holds no usable signing key")]
    NoUsableKey,
    #[error(transparent)]
    Jwks(#[from] jwks::JwksError),
    #[error("a refresh was tried less than the cooldown ago")]
    CoolingDown,
    #[error("the fetch task failed")]
    Task,
}

struct Snapshot {
    keys: KeySet,
    fetched_at: Instant,
}

/// The key cache of one issuer.
pub struct KeyCache {
    issuer: String,
    fetcher: Fetcher,
    ttl: Duration,
    max_stale: Duration,
    cooldown: Duration,
    current: RwLock<Option<Arc<Snapshot>>>,
    /// Held while fetching, so concurrent misses share one fetch (single flight); holds when
    /// the last attempt started.
    refresh: tokio::sync::Mutex<Option<Instant>>,
}

impl KeyCache {
    pub fn new(config: &OidcIssuerConfig, fetcher: Fetcher) -> KeyCache {
        KeyCache {
            issuer: config.issuer.clone(),
            fetcher,
            ttl: config.jwks_cache_ttl,
            max_stale: config.max_stale,
            cooldown: config.refresh_cooldown,
            current: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(None),
        }
    }

    /// The key for a token's `kid` and `alg`.
    pub async fn key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<VerificationKey>, OidcRejection> {
        let seen = self.snapshot();
        match &seen {
            Some(s) if s.fetched_at.elapsed() < self.ttl => {
                if let Some(key) = s.keys.find(kid, alg) {
                    return Ok(key);
                }
                // A key we do not know: the IdP may have rotated. One refresh per cooldown.
                match self.refresh(Some(s.fetched_at)).await {
                    Ok(fresh) => fresh.keys.find(kid, alg).ok_or(OidcRejection::UnknownKey),
                    Err(_) => Err(OidcRejection::UnknownKey),
                }
            }
            _ => match self.refresh(seen.as_ref().map(|s| s.fetched_at)).await {
                Ok(fresh) => fresh.keys.find(kid, alg).ok_or(OidcRejection::UnknownKey),
                Err(e) => match seen {
                    Some(s) if s.fetched_at.elapsed() < self.max_stale => {
                        tracing::debug!(issuer = %self.issuer, error = %e, "using stale keys");
                        s.keys.find(kid, alg).ok_or(OidcRejection::UnknownKey)
                    }
                    _ => Err(OidcRejection::IdpUnavailable),
                },
            },
        }
    }

    /// Fetches the keys once, at start, so the first token does not wait for the IdP.
    pub async fn warm(&self) {
        let _ = self.refresh(None).await;
    }

    /// Fetches keys now, unless another task did since `seen` or the cooldown forbids it.
    async fn refresh(&self, seen: Option<Instant>) -> Result<Arc<Snapshot>, RefreshError> {
        let mut last_attempt = self.refresh.lock().await;
        if let Some(s) = self.snapshot()
            && Some(s.fetched_at) != seen
        {
            return Ok(s);
        }
        if last_attempt.is_some_and(|t| t.elapsed() < self.cooldown) {
            return Err(RefreshError::CoolingDown);
        }
        *last_attempt = Some(Instant::now());
        let fetcher = self.fetcher.clone();
        let issuer = self.issuer.clone();
        let fetched = tokio::task::spawn_blocking(move || fetch_keys(&fetcher, &issuer))
            .await
            .map_err(|_| RefreshError::Task)
            .and_then(|r| r);
        match fetched {
            Ok((keys, dropped)) => {
                tracing::info!(issuer = %self.issuer, keys = keys.len(), dropped, "fetched signing keys");
                let snapshot = Arc::new(Snapshot {
                    keys,
                    fetched_at: Instant::now(),
                });
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(snapshot.clone());
                Ok(snapshot)
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, error = %e, "cannot fetch signing keys");
                Err(e)
            }
        }
    }

    fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The discovery document of `issuer`, checked to name that same issuer.
pub fn discover(fetcher: &Fetcher, issuer: &str) -> Result<Discovery, RefreshError> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let doc: Discovery = fetcher.get_json(&url)?;
    if doc.issuer != issuer {
        return Err(RefreshError::IssuerMismatch { found: doc.issuer });
    }
    Ok(doc)
}

fn fetch_keys(fetcher: &Fetcher, issuer: &str) -> Result<(KeySet, usize), RefreshError> {
    let doc = discover(fetcher, issuer)?;
    if !doc.jwks_uri.starts_with("https://") {
        return Err(RefreshError::InsecureJwksUri);
    }
    let body = fetcher.get(&doc.jwks_uri)?;
    let (keys, dropped) = jwks::parse(&body)?;
    if keys.is_empty() {
        return Err(RefreshError::NoUsableKey);
    }
    Ok((keys, dropped))
}
