//! Just-in-time elevation: a named grant (`[[grants]]` in the config) that an identity requests
//! for one connection and a bounded time, that approvers approve like any review, and that
//! policy sees as `context.grants` until it expires or is revoked. Expiry needs no action:
//! every decision reads only grants still in force, so a live session loses a grant the moment
//! it ends.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::{ConnectionConfig, GrantConfig};
use crate::identity::{ADMIN_GROUP, Identity};
use crate::reviews::Reviews;
use crate::store::{GrantRow, ReviewRow, ReviewState, Store, StoreError};
use crate::time::{add, now_micros};

/// Why a grant request or revocation was refused; shown to the caller as is.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("no grant named \"{0}\" is configured; ask an administrator which grants exist")]
    UnknownGrant(String),
    #[error("grant \"{grant}\" cannot be requested for connection \"{connection}\"")]
    NotForConnection { grant: String, connection: String },
    #[error("grant \"{grant}\" lasts at most {max}; ask for less")]
    TooLong { grant: String, max: String },
    #[error("a reason is required (what the elevation is for)")]
    NoReason,
    #[error("no grant \"{0}\" in force that you may revoke")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The grants in force, by subject, for decisions on the data path.
pub struct GrantBook {
    store: Store,
    by_subject: RwLock<Arc<HashMap<String, Vec<GrantRow>>>>,
}

impl GrantBook {
    /// Loads the grants in force from the store.
    pub async fn load(store: Store) -> Result<GrantBook, StoreError> {
        let book = GrantBook {
            store,
            by_subject: RwLock::new(Arc::new(HashMap::new())),
        };
        book.refresh().await?;
        Ok(book)
    }

    /// Re-reads the grants in force (grants given or revoked through another replica, and
    /// dropping expired ones).
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let mut map: HashMap<String, Vec<GrantRow>> = HashMap::new();
        for g in self.store.active_grants(now_micros()).await? {
            map.entry(g.subject.clone()).or_default().push(g);
        }
        *self.by_subject.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
        Ok(())
    }

    /// The names of `identity`'s grants on `connection` in force now. One map lookup, no
    /// allocation when the identity holds no grant (the common case).
    pub fn active(&self, identity: &Identity, connection: &str) -> Vec<String> {
        let map = self
            .by_subject
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(list) = map.get(&identity.subject) else {
            return Vec::new();
        };
        let now = now_micros();
        list.iter()
            .filter(|g| g.issuer == identity.issuer && g.connection == connection && g.active(now))
            .map(|g| g.name.clone())
            .collect()
    }

    /// Grants in force that `who` may see: their own, or all for administrators.
    pub fn visible(&self, who: &Identity) -> Vec<GrantRow> {
        let map = self
            .by_subject
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let now = now_micros();
        let mut rows: Vec<GrantRow> = map
            .values()
            .flatten()
            .filter(|g| g.active(now))
            .filter(|g| {
                who.in_group(ADMIN_GROUP) || (g.issuer == who.issuer && g.subject == who.subject)
            })
            .cloned()
            .collect();
        rows.sort_by_key(|g| g.granted_at);
        rows
    }

    fn add(&self, grant: GrantRow) {
        let mut slot = self.by_subject.write().unwrap_or_else(|p| p.into_inner());
        let mut map = HashMap::clone(&slot);
        map.entry(grant.subject.clone()).or_default().push(grant);
        *slot = Arc::new(map);
    }

    fn remove(&self, id: &str) {
        let mut slot = self.by_subject.write().unwrap_or_else(|p| p.into_inner());
        let mut map = HashMap::clone(&slot);
        for list in map.values_mut() {
            list.retain(|g| g.id != id);
        }
        *slot = Arc::new(map);
    }

    /// Revokes grant `id`. Its holder, administrators, and the approvers of that grant may.
    pub async fn revoke(
        &self,
        id: &str,
        by: &Identity,
        definitions: &[GrantConfig],
    ) -> Result<GrantRow, GrantError> {
        let grant = self
            .store
            .get_grant(id)
            .await?
            .filter(|g| g.active(now_micros()))
            .ok_or_else(|| GrantError::NotFound(id.to_string()))?;
        let holder = grant.issuer == by.issuer && grant.subject == by.subject;
        let approver = definitions
            .iter()
            .find(|d| d.name == grant.name)
            .is_some_and(|d| d.approvers.iter().any(|g| by.in_group(g)));
        if !(holder || approver || by.in_group(ADMIN_GROUP)) {
            return Err(GrantError::NotFound(id.to_string()));
        }
        if !self
            .store
            .revoke_grant(id, &by.principal(), now_micros())
            .await?
        {
            return Err(GrantError::NotFound(id.to_string()));
        }
        self.remove(id);
        tracing::info!(grant = id, by = %by.principal(), "grant revoked");
        Ok(grant)
    }
}

/// What a grant request asks for, kept in its review.
#[derive(serde::Serialize, serde::Deserialize)]
struct Requested {
    grant: String,
    duration_secs: u64,
}

/// A request for grant `name` on `connection` for `duration`.
pub struct GrantRequest<'a> {
    pub client_addr: String,
    pub connection: &'a ConnectionConfig,
    /// The grant's definition, when one has that name.
    pub definition: Option<&'a GrantConfig>,
    pub name: &'a str,
    pub duration: Duration,
    pub reason: &'a str,
}

impl Reviews {
    /// Asks for a grant: a review that the grant's approvers decide like any other. Nothing is
    /// granted until it is approved.
    pub async fn request_grant(
        &self,
        who: &Identity,
        request: GrantRequest<'_>,
    ) -> Result<ReviewRow, GrantError> {
        let GrantRequest {
            client_addr,
            connection,
            definition,
            name,
            duration,
            reason,
        } = request;
        let definition = definition.ok_or_else(|| GrantError::UnknownGrant(name.to_string()))?;
        if !definition.connections.is_empty() && !definition.connections.contains(&connection.name)
        {
            return Err(GrantError::NotForConnection {
                grant: name.to_string(),
                connection: connection.name.clone(),
            });
        }
        if duration > definition.max_duration || duration.is_zero() {
            return Err(GrantError::TooLong {
                grant: name.to_string(),
                max: humantime::format_duration(definition.max_duration).to_string(),
            });
        }
        if reason.trim().is_empty() {
            return Err(GrantError::NoReason);
        }
        let now = now_micros();
        let text = format!(
            "grant {name} on {} for {}: {}",
            connection.name,
            humantime::format_duration(duration),
            reason.trim()
        );
        let review = ReviewRow {
            id: format!("rv_{}", hex::encode(rand::random::<[u8; 6]>())),
            kind: "grant".into(),
            state: ReviewState::Pending,
            session_id: None,
            connection: connection.name.clone(),
            requester: who.principal(),
            requester_name: who.display_name.clone(),
            requester_groups: who.groups.clone(),
            client_addr: Some(client_addr),
            text_hash: crate::reviews::sha256_hex(text.as_bytes()),
            params_hash: crate::reviews::sha256_hex(b"null"),
            text,
            params: None,
            classification: serde_json::to_value(Requested {
                grant: name.to_string(),
                duration_secs: duration.as_secs(),
            })
            .ok(),
            policy: format!("grant:{name}"),
            approvers: definition.approvers.clone(),
            approvals_needed: i64::from(definition.approvals.max(1)),
            created_at: now,
            expires_at: add(now, self.default_timeout()),
            decided_at: None,
            reason: None,
            votes: Vec::new(),
        };
        self.create(
            &review,
            serde_json::json!({
                "grant": name, "duration_secs": duration.as_secs(), "reason": reason.trim(),
            }),
        )
        .await?;
        tracing::info!(review = %review.id, grant = name, connection = %connection.name, requester = %review.requester, "grant requested");
        Ok(review)
    }

    /// Turns an approved grant review into a grant in force from now.
    pub(crate) async fn apply_grant(&self, review: &ReviewRow) -> Result<(), StoreError> {
        let Some(requested) = review
            .classification
            .clone()
            .and_then(|v| serde_json::from_value::<Requested>(v).ok())
        else {
            return Err(StoreError::Corrupt("reviews.classification (grant)"));
        };
        let Some((issuer, subject)) = review.requester.split_once('/') else {
            return Err(StoreError::Corrupt("reviews.requester"));
        };
        let now = now_micros();
        let grant = GrantRow {
            id: format!("gr_{}", hex::encode(rand::random::<[u8; 6]>())),
            review_id: review.id.clone(),
            issuer: issuer.to_string(),
            subject: subject.to_string(),
            connection: review.connection.clone(),
            name: requested.grant,
            reason: Some(review.text.clone()),
            granted_at: now,
            expires_at: add(now, Duration::from_secs(requested.duration_secs)),
            revoked_at: None,
            revoked_by: None,
        };
        self.audit(
            "grant.given",
            Some(&review.requester),
            serde_json::json!({
                "grant": grant.id, "name": grant.name, "connection": grant.connection,
                "review": review.id, "expires_at": grant.expires_at,
            }),
        )
        .await?;
        self.store().insert_grant(&grant).await?;
        self.mark_executed(review, now).await?;
        tracing::info!(grant = %grant.id, name = %grant.name, holder = %review.requester, "grant in force");
        self.grant_book().add(grant);
        Ok(())
    }
}
