//! Reviews (statements held for human approval) and their votes.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError, to_json};
use crate::time::Micros;

/// Where a review stands. Only `pending` accepts votes; only `approved` may be consumed, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReviewState {
    Pending,
    Approved,
    Denied,
    /// Nobody decided within the timeout.
    Expired,
    /// The client left (or the gateway restarted) before a decision; never executed.
    Abandoned,
    /// Approved and run, once.
    Executed,
}

impl ReviewState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewState::Pending => "pending",
            ReviewState::Approved => "approved",
            ReviewState::Denied => "denied",
            ReviewState::Expired => "expired",
            ReviewState::Abandoned => "abandoned",
            ReviewState::Executed => "executed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => ReviewState::Pending,
            "approved" => ReviewState::Approved,
            "denied" => ReviewState::Denied,
            "expired" => ReviewState::Expired,
            "abandoned" => ReviewState::Abandoned,
            "executed" => ReviewState::Executed,
            _ => return None,
        })
    }
}

/// One held command and everything an approver needs to judge it.
#[derive(Debug, Clone, Serialize)]
pub struct ReviewRow {
    pub id: String,
    /// `statement` (one held statement of a live session).
    pub kind: String,
    pub state: ReviewState,
    pub session_id: Option<String>,
    pub connection: String,
    /// The principal who sent the statement (`issuer/subject`).
    pub requester: String,
    pub requester_name: String,
    pub requester_groups: Vec<String>,
    pub client_addr: Option<String>,
    pub text: String,
    pub params: Option<Vec<Option<String>>>,
    /// SHA-256 of the text and of the parameter values: the approval is bound to these.
    pub text_hash: String,
    pub params_hash: String,
    /// What the gateway's parser found (JSON), for the approver.
    pub classification: Option<serde_json::Value>,
    /// The policy that asked for review, and its annotations.
    pub policy: String,
    pub approvers: Vec<String>,
    pub approvals_needed: i64,
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: Micros,
    #[serde(with = "crate::time::rfc3339")]
    pub expires_at: Micros,
    #[serde(with = "crate::time::rfc3339::option")]
    pub decided_at: Option<Micros>,
    /// Why it was denied, expired or abandoned.
    pub reason: Option<String>,
    /// Filled in by [`Store::get_review`].
    pub votes: Vec<VoteRow>,
}

/// One approver's vote.
#[derive(Debug, Clone, Serialize)]
pub struct VoteRow {
    pub voter: String,
    pub voter_name: String,
    pub approve: bool,
    pub reason: Option<String>,
    #[serde(with = "crate::time::rfc3339")]
    pub at: Micros,
}

/// A vote to add; the store decides the review's new state in the same transaction.
pub struct NewVote<'a> {
    pub review_id: &'a str,
    pub voter: &'a str,
    pub voter_name: &'a str,
    pub approve: bool,
    pub reason: Option<&'a str>,
    pub at: Micros,
}

macro_rules! review_columns {
    () => {
        "id, kind, state, session_id, connection, requester, requester_name, requester_groups, \
         client_addr, text, params, text_hash, params_hash, classification, policy, approvers, \
         approvals_needed, created_at, expires_at, decided_at, reason"
    };
}

impl Store {
    pub async fn insert_review(&self, r: &ReviewRow) -> Result<(), StoreError> {
        sqlx::query(concat!(
            "INSERT INTO reviews (",
            review_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)"
        ))
        .bind(&r.id)
        .bind(&r.kind)
        .bind(r.state.as_str())
        .bind(&r.session_id)
        .bind(&r.connection)
        .bind(&r.requester)
        .bind(&r.requester_name)
        .bind(to_json(&r.requester_groups))
        .bind(&r.client_addr)
        .bind(&r.text)
        .bind(r.params.as_ref().map(to_json))
        .bind(&r.text_hash)
        .bind(&r.params_hash)
        .bind(r.classification.as_ref().map(to_json))
        .bind(&r.policy)
        .bind(to_json(&r.approvers))
        .bind(r.approvals_needed)
        .bind(r.created_at)
        .bind(r.expires_at)
        .bind(r.decided_at)
        .bind(&r.reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One review with its votes.
    pub async fn get_review(&self, id: &str) -> Result<Option<ReviewRow>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            review_columns!(),
            " FROM reviews WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mut review = review_from_row(&row)?;
        review.votes = sqlx::query(
            "SELECT voter, voter_name, approve, reason, at FROM review_votes WHERE review_id = $1 ORDER BY at",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(VoteRow {
                voter: r.try_get("voter")?,
                voter_name: r.try_get("voter_name")?,
                approve: r.try_get::<i64, _>("approve")? != 0,
                reason: r.try_get("reason")?,
                at: r.try_get("at")?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
        Ok(Some(review))
    }

    /// Reviews, newest first; only those in `state` when given.
    pub async fn list_reviews(
        &self,
        state: Option<ReviewState>,
        limit: i64,
    ) -> Result<Vec<ReviewRow>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            review_columns!(),
            " FROM reviews WHERE ($1 IS NULL OR state = $1) ORDER BY created_at DESC LIMIT $2"
        ))
        .bind(state.map(|s| s.as_str()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(review_from_row)
        .collect()
    }

    /// Adds a vote to a pending review and moves it to `denied` (any deny) or `approved` (enough
    /// distinct approvals), in one transaction. Returns the state after the vote, or `None` when
    /// the review was not pending (nothing is written then). A second vote by the same voter
    /// is rejected by the primary key.
    pub async fn vote_on_review(
        &self,
        vote: &NewVote<'_>,
    ) -> Result<Option<ReviewState>, StoreError> {
        // IMMEDIATE: take the write lock before reading, so a concurrent writer cannot make
        // the upgrade from read to write fail (SQLite does not wait on that).
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query("SELECT state, approvals_needed FROM reviews WHERE id = $1")
            .bind(vote.review_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else { return Ok(None) };
        if row.try_get::<String, _>("state")? != ReviewState::Pending.as_str() {
            return Ok(None);
        }
        let needed: i64 = row.try_get("approvals_needed")?;
        sqlx::query(
            "INSERT INTO review_votes (review_id, voter, voter_name, approve, reason, at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(vote.review_id)
        .bind(vote.voter)
        .bind(vote.voter_name)
        .bind(i64::from(vote.approve))
        .bind(vote.reason)
        .bind(vote.at)
        .execute(&mut *tx)
        .await?;
        let approvals: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM review_votes WHERE review_id = $1 AND approve = 1",
        )
        .bind(vote.review_id)
        .fetch_one(&mut *tx)
        .await?;
        let next = if !vote.approve {
            ReviewState::Denied
        } else if approvals >= needed {
            ReviewState::Approved
        } else {
            ReviewState::Pending
        };
        if next != ReviewState::Pending {
            sqlx::query(
                "UPDATE reviews SET state = $1, decided_at = $2, reason = $3 WHERE id = $4 AND state = 'pending'",
            )
            .bind(next.as_str())
            .bind(vote.at)
            .bind(vote.reason)
            .bind(vote.review_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some(next))
    }

    /// Moves a review from `from` to `to`; `false` when it was not in `from` (someone else
    /// moved it first). Consuming an approval is `approved` -> `executed`.
    pub async fn transition_review(
        &self,
        id: &str,
        from: ReviewState,
        to: ReviewState,
        reason: Option<&str>,
        at: Micros,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE reviews SET state = $1, decided_at = COALESCE(decided_at, $2), reason = COALESCE($3, reason)
             WHERE id = $4 AND state = $5",
        )
        .bind(to.as_str())
        .bind(at)
        .bind(reason)
        .bind(id)
        .bind(from.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks reviews whose deadline passed without a decision (or, for one-shot reviews,
    /// approved but not run in time) as expired. Held statements expire through their waiting
    /// session too; this catches the rest. Returns the ids of those expired.
    pub async fn expire_overdue_reviews(&self, now: Micros) -> Result<Vec<String>, StoreError> {
        // A read first: most calls find nothing, and a read takes no write lock.
        let due: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM reviews WHERE expires_at <= $1
               AND (state = 'pending' OR (kind = 'exec' AND state = 'approved'))",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        if due == 0 {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar(
            "UPDATE reviews SET state = 'expired', decided_at = COALESCE(decided_at, $1),
                    reason = COALESCE(reason, 'no decision before the timeout')
             WHERE expires_at <= $1
               AND (state = 'pending' OR (kind = 'exec' AND state = 'approved'))
             RETURNING id",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Marks every pending or approved-but-unused review of held statements as abandoned:
    /// of one session when it ends, or of all sessions when the gateway starts (held client
    /// connections do not survive a restart). Returns the ids of those abandoned.
    pub async fn abandon_held_reviews(
        &self,
        session_id: Option<&str>,
        reason: &str,
        at: Micros,
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "UPDATE reviews SET state = 'abandoned', decided_at = $1, reason = $2
             WHERE kind = 'statement' AND state IN ('pending', 'approved')
               AND ($3 IS NULL OR session_id = $3)
             RETURNING id",
        )
        .bind(at)
        .bind(reason)
        .bind(session_id)
        .fetch_all(&self.pool)
        .await?)
    }
}

fn review_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<ReviewRow, StoreError> {
    let json = |col: &'static str| -> Result<Option<serde_json::Value>, StoreError> {
        r.try_get::<Option<String>, _>(col)?
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|_| StoreError::Corrupt("reviews"))
    };
    let list = |v: Option<serde_json::Value>| -> Result<Vec<String>, StoreError> {
        v.map(serde_json::from_value)
            .transpose()
            .map_err(|_| StoreError::Corrupt("reviews"))
            .map(Option::unwrap_or_default)
    };
    Ok(ReviewRow {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        state: ReviewState::parse(&r.try_get::<String, _>("state")?)
            .ok_or(StoreError::Corrupt("reviews.state"))?,
        session_id: r.try_get("session_id")?,
        connection: r.try_get("connection")?,
        requester: r.try_get("requester")?,
        requester_name: r.try_get("requester_name")?,
        requester_groups: list(json("requester_groups")?)?,
        client_addr: r.try_get("client_addr")?,
        text: r.try_get("text")?,
        params: json("params")?
            .map(serde_json::from_value)
            .transpose()
            .map_err(|_| StoreError::Corrupt("reviews.params"))?,
        text_hash: r.try_get("text_hash")?,
        params_hash: r.try_get("params_hash")?,
        classification: json("classification")?,
        policy: r.try_get("policy")?,
        approvers: list(json("approvers")?)?,
        approvals_needed: r.try_get("approvals_needed")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        decided_at: r.try_get("decided_at")?,
        reason: r.try_get("reason")?,
        votes: Vec::new(),
    })
}
