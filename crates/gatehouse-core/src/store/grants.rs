//! Just-in-time grants given by approved requests.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError};
use crate::time::Micros;

/// One grant: `name` on `connection` for (issuer, subject), from `granted_at` to `expires_at`.
#[derive(Debug, Clone, Serialize)]
pub struct GrantRow {
    pub id: String,
    pub review_id: String,
    pub issuer: String,
    pub subject: String,
    pub connection: String,
    pub name: String,
    pub reason: Option<String>,
    #[serde(with = "crate::time::rfc3339")]
    pub granted_at: Micros,
    #[serde(with = "crate::time::rfc3339")]
    pub expires_at: Micros,
    #[serde(with = "crate::time::rfc3339::option")]
    pub revoked_at: Option<Micros>,
    pub revoked_by: Option<String>,
}

impl GrantRow {
    /// In force at `now`: not revoked, not expired.
    pub fn active(&self, now: Micros) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

impl Store {
    pub async fn insert_grant(&self, g: &GrantRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO grants (id, review_id, issuer, subject, connection, name, reason, granted_at, expires_at, revoked_at, revoked_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&g.id)
        .bind(&g.review_id)
        .bind(&g.issuer)
        .bind(&g.subject)
        .bind(&g.connection)
        .bind(&g.name)
        .bind(&g.reason)
        .bind(g.granted_at)
        .bind(g.expires_at)
        .bind(g.revoked_at)
        .bind(&g.revoked_by)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Grants not revoked and not expired at `now`.
    pub async fn active_grants(&self, now: Micros) -> Result<Vec<GrantRow>, StoreError> {
        sqlx::query(
            "SELECT id, review_id, issuer, subject, connection, name, reason, granted_at, expires_at, revoked_at, revoked_by
             FROM grants WHERE revoked_at IS NULL AND expires_at > $1 ORDER BY granted_at",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(grant_from_row)
        .collect()
    }

    pub async fn get_grant(&self, id: &str) -> Result<Option<GrantRow>, StoreError> {
        sqlx::query(
            "SELECT id, review_id, issuer, subject, connection, name, reason, granted_at, expires_at, revoked_at, revoked_by
             FROM grants WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(grant_from_row)
        .transpose()
    }

    /// Revokes a grant still in force; `false` when there was none.
    pub async fn revoke_grant(&self, id: &str, by: &str, at: Micros) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE grants SET revoked_at = $1, revoked_by = $2 WHERE id = $3 AND revoked_at IS NULL AND expires_at > $1",
        )
        .bind(at)
        .bind(by)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

fn grant_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<GrantRow, StoreError> {
    Ok(GrantRow {
        id: r.try_get("id")?,
        review_id: r.try_get("review_id")?,
        issuer: r.try_get("issuer")?,
        subject: r.try_get("subject")?,
        connection: r.try_get("connection")?,
        name: r.try_get("name")?,
        reason: r.try_get("reason")?,
        granted_at: r.try_get("granted_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
        revoked_by: r.try_get("revoked_by")?,
    })
}
