//! Step 1 of the pipeline: turn a presented credential into an [`Identity`], and issue the
//! gateway's own service-account tokens.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::identity::{GATEHOUSE_ISSUER, Identity, IdentityKind};
use crate::store::{Store, StoreError, TokenRow};
use crate::time::{add, now_micros};
use crate::tokens::{self, TokenHash};

/// Why a credential was refused. The `Display` text is what the client is told: it names the
/// reason class and what to do, and never echoes the credential.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "the password is not a Gatehouse token or a signed OIDC token; use a token from `gatehouse token create` or `gatehouse login` as the password"
    )]
    Malformed,
    #[error(
        "the Gatehouse token is not recognized; check that it was copied whole or create a new one"
    )]
    Unknown,
    #[error("the Gatehouse token has been revoked; ask an administrator for a new one")]
    Revoked,
    #[error("the Gatehouse token has expired; create a new one with `gatehouse token create`")]
    Expired,
    #[error(
        "the Gatehouse token may not be used from {0}; ask an administrator to allow your network"
    )]
    NetworkNotAllowed(std::net::IpAddr),
    #[error("the gateway cannot check tokens right now; try again shortly")]
    Unavailable(#[from] StoreError),
    /// An OIDC token failed verification; the reason names the class, never key material.
    #[error("the OIDC token was rejected: {0}")]
    Oidc(OidcRejection),
}

/// Why an OIDC token was refused, as a class a person can act on. Deliberately coarse: it
/// says which check failed, never which keys the gateway holds or what it expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcRejection {
    #[error("it is not a well-formed signed JWT (three base64url parts, at most 8 KiB)")]
    Malformed,
    #[error("no configured issuer matches its `iss`; ask an administrator which IdP to use")]
    UnknownIssuer,
    #[error("its signature algorithm is not accepted for this issuer")]
    Algorithm,
    #[error(
        "its header uses a feature the gateway does not accept (`crit`, embedded keys, or a JWE)"
    )]
    Header,
    #[error("its type (`typ` header) is not accepted here")]
    TokenType,
    #[error("it is signed with a key the issuer does not publish (unknown `kid`)")]
    UnknownKey,
    #[error("its signature does not verify")]
    Signature,
    #[error("it has expired; get a fresh token from your identity provider")]
    Expired,
    #[error("it is not valid yet (`nbf` or `iat` in the future); check the clocks")]
    NotYetValid,
    #[error("its lifetime (`exp` - `iat`) is longer than this issuer allows")]
    LifetimeTooLong,
    #[error("its audience is not this gateway")]
    Audience,
    #[error("it lacks the required claim `{0}`")]
    MissingClaim(String),
    #[error("its claim `{0}` does not have the value this gateway requires")]
    ClaimMismatch(String),
    #[error("the identity provider's keys cannot be fetched right now; try again shortly")]
    IdpUnavailable,
}

/// Verifies tokens the gateway did not issue (OIDC JWTs). Implemented outside the core so the
/// core stays free of HTTP and JOSE dependencies.
pub trait FederatedVerifier: Send + Sync {
    /// `true` when `credential` is shaped like a token this verifier handles, so the
    /// authenticator knows which verifier's answer to give the client.
    fn claims(&self, credential: &str) -> bool;

    /// Verifies `credential` and returns who it names.
    fn verify<'a>(
        &'a self,
        credential: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Identity, AuthError>> + Send + 'a>>;
}

/// Verifies credentials and issues service-account tokens.
#[derive(Clone)]
pub struct Authenticator {
    store: Store,
    federated: Option<Arc<dyn FederatedVerifier>>,
}

/// A token just created: its stored row and, once, its value.
pub struct IssuedToken {
    pub row: TokenRow,
    pub value: String,
}

impl Authenticator {
    pub fn new(store: Store) -> Self {
        Authenticator {
            store,
            federated: None,
        }
    }

    /// Also accepts the tokens `verifier` vouches for (the configured OIDC issuers).
    pub fn with_federation(mut self, verifier: Arc<dyn FederatedVerifier>) -> Self {
        self.federated = Some(verifier);
        self
    }

    /// Verifies a credential presented from `client`.
    pub async fn authenticate(
        &self,
        credential: &str,
        client: std::net::IpAddr,
    ) -> Result<Identity, AuthError> {
        if !tokens::is_well_formed(credential) {
            return match &self.federated {
                Some(f) if f.claims(credential) => f.verify(credential).await,
                _ => Err(AuthError::Malformed),
            };
        }
        let row = self
            .store
            .find_token(&TokenHash::of(credential))
            .await?
            .ok_or(AuthError::Unknown)?;
        check_usable(&row)?;
        if !network_allowed(&row.allowed_networks, client) {
            return Err(AuthError::NetworkNotAllowed(client));
        }
        Ok(identity_of(&row))
    }

    /// Checks that the token behind `identity` is still usable (not revoked, not expired).
    /// Sessions call this periodically, so revocation reaches live sessions.
    pub async fn recheck(&self, identity: &Identity) -> Result<(), AuthError> {
        if identity.issuer != GATEHOUSE_ISSUER {
            // A federated token cannot be revoked here; it ends when it expires.
            return match identity.expires_at {
                Some(exp) if exp <= now_micros() => Err(AuthError::Oidc(OidcRejection::Expired)),
                _ => Ok(()),
            };
        }
        let row = self
            .store
            .get_token(&identity.token_id)
            .await?
            .ok_or(AuthError::Unknown)?;
        check_usable(&row)
    }

    /// Creates a service-account token for `account` with `groups`.
    pub async fn issue(
        &self,
        account: &str,
        groups: Vec<String>,
        ttl: Option<Duration>,
        allowed_networks: Vec<ipnet::IpNet>,
        created_by: &str,
    ) -> Result<IssuedToken, StoreError> {
        let new = tokens::generate();
        let now = now_micros();
        let row = TokenRow {
            id: format!("tok_{}", hex::encode(rand::random::<[u8; 6]>())),
            account: account.to_string(),
            groups,
            hint: tokens::display_hint(&new.value),
            token_hash: new.hash,
            created_at: now,
            created_by: created_by.to_string(),
            expires_at: ttl.map(|d| add(now, d)),
            revoked_at: None,
            allowed_networks: allowed_networks
                .iter()
                .map(|n| n.trunc().to_string())
                .collect(),
        };
        self.store.insert_token(&row).await?;
        Ok(IssuedToken {
            row,
            value: new.value,
        })
    }
}

/// Parses a network as CIDR (`10.0.0.0/8`) or a single address (`192.0.2.7`).
pub fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("\"{text}\" is not a network such as 10.0.0.0/8 or an address"))
}

/// `true` when `client` is inside one of `networks` (or the list is empty). IPv4 clients that
/// arrive as IPv4-mapped IPv6 addresses are matched as IPv4.
fn network_allowed(networks: &[String], client: std::net::IpAddr) -> bool {
    if networks.is_empty() {
        return true;
    }
    let client = match client {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(std::net::IpAddr::V4)
            .unwrap_or(client),
        v4 => v4,
    };
    networks
        .iter()
        .filter_map(|n| n.parse::<ipnet::IpNet>().ok())
        .any(|n| n.contains(&client))
}

fn check_usable(row: &TokenRow) -> Result<(), AuthError> {
    if row.revoked_at.is_some() {
        return Err(AuthError::Revoked);
    }
    if row.expires_at.is_some_and(|e| e <= now_micros()) {
        return Err(AuthError::Expired);
    }
    Ok(())
}

fn identity_of(row: &TokenRow) -> Identity {
    Identity {
        subject: row.account.clone(),
        issuer: GATEHOUSE_ISSUER.to_string(),
        display_name: row.account.clone(),
        kind: IdentityKind::Service,
        groups: row.groups.clone(),
        token_id: row.id.clone(),
        expires_at: row.expires_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn a_token_can_be_limited_to_source_networks() {
        let (_dir, store) = store().await;
        let auth = Authenticator::new(store);
        let nets = vec![
            parse_network("10.0.0.0/8").unwrap(),
            parse_network("192.0.2.7").unwrap(),
        ];
        let issued = auth
            .issue("netbot", vec![], None, nets, "test")
            .await
            .unwrap();
        assert_eq!(
            issued.row.allowed_networks,
            vec!["10.0.0.0/8", "192.0.2.7/32"]
        );
        let ok: std::net::IpAddr = "10.9.8.7".parse().unwrap();
        let mapped: std::net::IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert!(auth.authenticate(&issued.value, ok).await.is_ok());
        assert!(auth.authenticate(&issued.value, mapped).await.is_ok());
        assert!(matches!(
            auth.authenticate(&issued.value, LOCAL).await,
            Err(AuthError::NetworkNotAllowed(_))
        ));
        assert!(parse_network("10.0.0.0/33").is_err());
        assert!(parse_network("nope").is_err());
    }

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn an_issued_token_authenticates_until_revoked() {
        let (_dir, store) = store().await;
        let auth = Authenticator::new(store.clone());
        let issued = auth
            .issue("ci-bot", vec!["agents".into()], None, vec![], "test")
            .await
            .unwrap();
        let who = auth.authenticate(&issued.value, LOCAL).await.unwrap();
        assert_eq!(who.subject, "ci-bot");
        assert_eq!(who.groups, vec!["agents"]);
        assert_eq!(who.kind, IdentityKind::Service);

        assert_eq!(
            store.revoke_tokens("ci-bot", now_micros()).await.unwrap(),
            1
        );
        assert!(matches!(
            auth.authenticate(&issued.value, LOCAL).await,
            Err(AuthError::Revoked)
        ));
    }

    #[tokio::test]
    async fn expired_unknown_and_malformed_tokens_are_told_apart() {
        let (_dir, store) = store().await;
        let auth = Authenticator::new(store);
        let issued = auth
            .issue(
                "short",
                vec![],
                Some(Duration::from_micros(1)),
                vec![],
                "test",
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(matches!(
            auth.authenticate(&issued.value, LOCAL).await,
            Err(AuthError::Expired)
        ));
        assert!(matches!(
            auth.authenticate(&tokens::generate().value, LOCAL).await,
            Err(AuthError::Unknown)
        ));
        assert!(matches!(
            auth.authenticate("hunter2", LOCAL).await,
            Err(AuthError::Malformed)
        ));
    }

    #[tokio::test]
    async fn the_store_never_holds_the_token() {
        let (dir, store) = store().await;
        let auth = Authenticator::new(store.clone());
        let issued = auth.issue("a", vec![], None, vec![], "test").await.unwrap();
        drop(store);
        drop(auth);
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let needle = issued.value.as_bytes();
            assert!(!bytes.windows(needle.len()).any(|w| w == needle));
        }
    }
}
