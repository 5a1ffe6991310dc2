//! Step 1 of the pipeline: turn a presented credential into an [`Identity`], and issue the
//! gateway's own service-account tokens.

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
        "the password is not a Gatehouse token; use a token from `gatehouse token create` as the password"
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
    #[error("the gateway cannot check tokens right now; try again shortly")]
    Unavailable(#[from] StoreError),
}

/// Verifies credentials and issues service-account tokens.
#[derive(Clone)]
pub struct Authenticator {
    store: Store,
}

/// A token just created: its stored row and, once, its value.
pub struct IssuedToken {
    pub row: TokenRow,
    pub value: String,
}

impl Authenticator {
    pub fn new(store: Store) -> Self {
        Authenticator { store }
    }

    /// Verifies a presented credential.
    pub async fn authenticate(&self, credential: &str) -> Result<Identity, AuthError> {
        if !tokens::is_well_formed(credential) {
            return Err(AuthError::Malformed);
        }
        let row = self
            .store
            .find_token(&TokenHash::of(credential))
            .await?
            .ok_or(AuthError::Unknown)?;
        check_usable(&row)?;
        Ok(identity_of(&row))
    }

    /// Checks that the token behind `identity` is still usable (not revoked, not expired).
    /// Sessions call this periodically, so revocation reaches live sessions.
    pub async fn recheck(&self, identity: &Identity) -> Result<(), AuthError> {
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
        };
        self.store.insert_token(&row).await?;
        Ok(IssuedToken {
            row,
            value: new.value,
        })
    }
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
            .issue("ci-bot", vec!["agents".into()], None, "test")
            .await
            .unwrap();
        let who = auth.authenticate(&issued.value).await.unwrap();
        assert_eq!(who.subject, "ci-bot");
        assert_eq!(who.groups, vec!["agents"]);
        assert_eq!(who.kind, IdentityKind::Service);

        assert_eq!(
            store.revoke_tokens("ci-bot", now_micros()).await.unwrap(),
            1
        );
        assert!(matches!(
            auth.authenticate(&issued.value).await,
            Err(AuthError::Revoked)
        ));
    }

    #[tokio::test]
    async fn expired_unknown_and_malformed_tokens_are_told_apart() {
        let (_dir, store) = store().await;
        let auth = Authenticator::new(store);
        let issued = auth
            .issue("short", vec![], Some(Duration::from_micros(1)), "test")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(matches!(
            auth.authenticate(&issued.value).await,
            Err(AuthError::Expired)
        ));
        assert!(matches!(
            auth.authenticate(&tokens::generate().value).await,
            Err(AuthError::Unknown)
        ));
        assert!(matches!(
            auth.authenticate("hunter2").await,
            Err(AuthError::Malformed)
        ));
    }

    #[tokio::test]
    async fn the_store_never_holds_the_token() {
        let (dir, store) = store().await;
        let auth = Authenticator::new(store.clone());
        let issued = auth.issue("a", vec![], None, "test").await.unwrap();
        drop(store);
        drop(auth);
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let needle = issued.value.as_bytes();
            assert!(!bytes.windows(needle.len()).any(|w| w == needle));
        }
    }
}
