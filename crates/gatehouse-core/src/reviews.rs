//! Step 3 of the pipeline, approve: a command that policy allows only with a human approval is
//! held (nothing reaches the target) while approvers decide. A review is bound to the one held
//! command of one session and used once; the requester can never approve it; only members of
//! the approver groups the policy names count; the first deny wins.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::grants::GrantBook;
use crate::identity::{ADMIN_GROUP, Identity};
use crate::pipeline::{CommandStart, ReviewNeeded};
use crate::store::{NewVote, ReviewRow, ReviewState, Store, StoreError};
use crate::time::{add, now_micros};

/// How often a waiting command re-reads its review, so approvals given through another
/// gateway replica are seen even without an in-process wake-up.
const POLL: Duration = Duration::from_secs(1);

/// How a held command's review ended, for the waiting session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewOutcome {
    /// Approved; the approval is consumed: the command runs now, once.
    Approved,
    Denied {
        by: String,
        reason: Option<String>,
    },
    /// Nobody decided in time.
    TimedOut,
    /// The store failed; the command is refused (fail closed).
    Unavailable(String),
}

/// Why a vote was refused. The text is shown to the approver as is.
#[derive(Debug, thiserror::Error)]
pub enum VoteError {
    #[error("no review {0}")]
    NotFound(String),
    #[error("review {id} is {state} and can no longer be decided")]
    NotPending { id: String, state: &'static str },
    #[error("you sent this statement; somebody else must review it")]
    OwnRequest,
    #[error("only members of {0} may approve this review")]
    NotApprover(String),
    #[error("you already voted on this review")]
    AlreadyVoted,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why an approved one-shot review could not be run.
#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    #[error("no review {0} of yours to run; `gatehouse reviews list --state all` shows yours")]
    NotYours(String),
    #[error("that review is for connection \"{0}\"")]
    OtherConnection(String),
    #[error("the command differs from the one that was reviewed; run the review without a command")]
    OtherCommand,
    #[error("review {id} is {state}; only an approved review can be run, once")]
    NotApproved { id: String, state: &'static str },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates reviews, wakes the commands waiting on them, and applies the voting rules.
pub struct Reviews {
    store: Store,
    default_timeout: Duration,
    waiting: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    grants: Arc<GrantBook>,
    audit: Option<gatehouse_audit::AuditLog>,
}

fn audit_failed(e: gatehouse_audit::log::AuditError) -> &'static str {
    tracing::error!(error = %e, "cannot write the audit log");
    "the audit log (it cannot be written)"
}

/// SHA-256 as lowercase hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Who sent a held command, and where.
pub struct Requester<'a> {
    /// `statement` (held on a live session) or `exec` (a one-shot request that is run later
    /// with `gatehouse exec --review`).
    pub kind: &'static str,
    pub identity: &'a Identity,
    pub session_id: &'a str,
    pub connection: &'a str,
    pub client_addr: String,
}

impl Reviews {
    pub fn new(
        store: Store,
        default_timeout: Duration,
        grants: Arc<GrantBook>,
        audit: Option<gatehouse_audit::AuditLog>,
    ) -> Reviews {
        Reviews {
            store,
            default_timeout,
            waiting: Mutex::new(HashMap::new()),
            grants,
            audit,
        }
    }

    /// Keeps `kind` in the audit log; a review change that cannot be recorded does not happen.
    pub(crate) async fn audit(
        &self,
        kind: &'static str,
        actor: Option<&str>,
        data: serde_json::Value,
    ) -> Result<(), StoreError> {
        match &self.audit {
            None => Ok(()),
            Some(log) => log
                .append(gatehouse_audit::Event::new(kind, actor, data))
                .await
                .map(|_| ())
                .map_err(|e| StoreError::Corrupt(audit_failed(e))),
        }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn default_timeout(&self) -> Duration {
        self.default_timeout
    }

    /// The grants in force (given by approved grant reviews).
    pub fn grant_book(&self) -> &GrantBook {
        &self.grants
    }

    /// Stores a pending review for `command`, held until decided or `timeout` (the policy's,
    /// else the default) passes.
    pub async fn hold(
        &self,
        requester: Requester<'_>,
        command: &CommandStart,
        needed: &ReviewNeeded,
    ) -> Result<ReviewRow, StoreError> {
        let now = now_micros();
        let timeout = needed.timeout.unwrap_or(self.default_timeout);
        let params_json = serde_json::to_string(&command.params).unwrap_or_default();
        let review = ReviewRow {
            id: format!("rv_{}", hex::encode(rand::random::<[u8; 6]>())),
            kind: requester.kind.into(),
            state: ReviewState::Pending,
            session_id: Some(requester.session_id.to_string()),
            connection: requester.connection.to_string(),
            requester: requester.identity.principal(),
            requester_name: requester.identity.display_name.clone(),
            requester_groups: requester.identity.groups.clone(),
            client_addr: Some(requester.client_addr),
            text: command.text.to_string(),
            params: command.params.clone(),
            text_hash: hex::encode(Sha256::digest(command.text.as_bytes())),
            params_hash: hex::encode(Sha256::digest(params_json.as_bytes())),
            classification: command
                .classification
                .as_ref()
                .and_then(|c| serde_json::to_value(&**c).ok()),
            policy: needed.policy.clone(),
            approvers: needed.approvers.clone(),
            approvals_needed: i64::from(needed.approvals.max(1)),
            created_at: now,
            expires_at: add(now, timeout),
            decided_at: None,
            reason: None,
            votes: Vec::new(),
        };
        let details = serde_json::json!({
            "session": review.session_id, "policy": review.policy,
            "text": gatehouse_audit::record::bounded_text(&review.text, 4096),
            "text_sha256": review.text_hash, "params_sha256": review.params_hash,
        });
        self.create(&review, details).await?;
        tracing::info!(review = %review.id, session = requester.session_id, policy = %review.policy, "held a statement for review");
        Ok(review)
    }

    /// Keeps a new review: its `review.created` audit record (with `details`), then the row.
    pub(crate) async fn create(
        &self,
        review: &ReviewRow,
        mut details: serde_json::Value,
    ) -> Result<(), StoreError> {
        details["review"] = review.id.clone().into();
        details["kind"] = review.kind.clone().into();
        details["connection"] = review.connection.clone().into();
        self.audit("review.created", Some(&review.requester), details)
            .await?;
        self.store.insert_review(review).await
    }

    /// Waits until `review` is decided or expires. An approval is consumed here
    /// (`approved` -> `executed`), so it runs exactly once.
    pub async fn wait(&self, review: &ReviewRow) -> ReviewOutcome {
        let notify = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(review.id.clone())
            .or_default()
            .clone();
        let outcome = self.wait_inner(review, &notify).await;
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&review.id);
        outcome
    }

    async fn wait_inner(&self, review: &ReviewRow, notify: &tokio::sync::Notify) -> ReviewOutcome {
        loop {
            let current = match self.store.get_review(&review.id).await {
                Ok(Some(r)) => r,
                Ok(None) => return ReviewOutcome::Unavailable("the review disappeared".into()),
                Err(e) => return ReviewOutcome::Unavailable(e.to_string()),
            };
            let now = now_micros();
            match current.state {
                ReviewState::Approved => {
                    return match self.mark_executed(&current, now).await {
                        Ok(true) => ReviewOutcome::Approved,
                        Ok(false) => {
                            ReviewOutcome::Unavailable("the approval was already used".into())
                        }
                        Err(e) => ReviewOutcome::Unavailable(e.to_string()),
                    };
                }
                ReviewState::Denied => {
                    let by = current
                        .votes
                        .iter()
                        .find(|v| !v.approve)
                        .map(|v| v.voter_name.clone())
                        .unwrap_or_else(|| "an approver".into());
                    return ReviewOutcome::Denied {
                        by,
                        reason: current.reason,
                    };
                }
                ReviewState::Pending if now >= current.expires_at => {
                    match self
                        .store
                        .transition_review(
                            &review.id,
                            ReviewState::Pending,
                            ReviewState::Expired,
                            Some("no decision before the timeout"),
                            now,
                        )
                        .await
                    {
                        Ok(true) => {
                            self.audit_settled(
                                "review.expired",
                                &review.id,
                                "no decision before the timeout",
                            );
                            return ReviewOutcome::TimedOut;
                        }
                        Ok(false) => continue, // decided at the last moment: read again
                        Err(e) => return ReviewOutcome::Unavailable(e.to_string()),
                    }
                }
                ReviewState::Pending => {}
                other => {
                    return ReviewOutcome::Unavailable(format!("the review is {}", other.as_str()));
                }
            }
            let until_expiry = Duration::from_micros((current.expires_at - now).max(0) as u64);
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep(POLL.min(until_expiry)) => {}
            }
        }
    }

    /// Records `voter`'s approval or denial of review `id` under the rules, and wakes the held
    /// command when the review is decided.
    pub async fn vote(
        &self,
        id: &str,
        voter: &Identity,
        approve: bool,
        reason: Option<&str>,
    ) -> Result<ReviewRow, VoteError> {
        self.expire_overdue().await?;
        let review = self
            .store
            .get_review(id)
            .await?
            .ok_or_else(|| VoteError::NotFound(id.to_string()))?;
        if review.state != ReviewState::Pending {
            return Err(VoteError::NotPending {
                id: id.to_string(),
                state: review.state.as_str(),
            });
        }
        let principal = voter.principal();
        if review.requester == principal {
            return Err(VoteError::OwnRequest);
        }
        may_vote(&review, voter, approve)?;
        if review.votes.iter().any(|v| v.voter == principal) {
            return Err(VoteError::AlreadyVoted);
        }
        self.audit(
            "review.voted",
            Some(&principal),
            serde_json::json!({ "review": id, "approve": approve, "reason": reason }),
        )
        .await?;
        let vote = NewVote {
            review_id: id,
            voter: &principal,
            voter_name: &voter.display_name,
            approve,
            reason,
            at: now_micros(),
        };
        // The `review.voted` record above is written before the vote counts; what became of
        // it follows, so the log never shows a vote that did not count as one that did.
        let outcome = self.store.vote_on_review(&vote).await;
        let (state, refused) = match &outcome {
            Ok(Some(state)) => (state.as_str(), None),
            Ok(None) => ("not counted", Some("the review was already decided")),
            Err(StoreError::Database(sqlx::Error::Database(e))) if e.is_unique_violation() => {
                ("not counted", Some("a second vote by the same approver"))
            }
            Err(_) => ("not counted", Some("the store failed")),
        };
        if let Some(log) = &self.audit {
            log.append_detached(gatehouse_audit::Event::new(
                "review.vote_result",
                Some(&principal),
                serde_json::json!({ "review": id, "state": state, "refused": refused }),
            ));
        }
        match outcome {
            Ok(Some(ReviewState::Approved)) if review.kind == "grant" => {
                self.apply_grant(&review).await?;
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(VoteError::NotPending {
                    id: id.to_string(),
                    state: "decided",
                });
            }
            Err(StoreError::Database(sqlx::Error::Database(e))) if e.is_unique_violation() => {
                return Err(VoteError::AlreadyVoted);
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(review = id, voter = %principal, approve, "review vote");
        if let Some(n) = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            n.notify_one();
        }
        self.store
            .get_review(id)
            .await?
            .ok_or_else(|| VoteError::NotFound(id.to_string()))
    }

    /// Takes the approval of a one-shot (`exec`) review for running it now: only its
    /// requester may, on its connection, once.
    pub async fn take_exec_approval(
        &self,
        id: &str,
        who: &Identity,
        connection: &str,
        text: Option<&str>,
    ) -> Result<ReviewRow, TakeError> {
        self.expire_overdue().await?;
        let review = self
            .store
            .get_review(id)
            .await?
            .filter(|r| r.kind == "exec" && r.requester == who.principal())
            .ok_or_else(|| TakeError::NotYours(id.to_string()))?;
        if review.connection != connection {
            return Err(TakeError::OtherConnection(review.connection));
        }
        if text.is_some_and(|t| t != review.text) {
            return Err(TakeError::OtherCommand);
        }
        if review.state != ReviewState::Approved {
            return Err(TakeError::NotApproved {
                id: id.to_string(),
                state: review.state.as_str(),
            });
        }
        if !self.mark_executed(&review, now_micros()).await? {
            return Err(TakeError::NotApproved {
                id: id.to_string(),
                state: "executed",
            });
        }
        Ok(review)
    }

    /// One review with its votes.
    pub async fn get(&self, id: &str) -> Result<Option<ReviewRow>, StoreError> {
        self.store.get_review(id).await
    }

    /// Expires reviews past their deadline, so nobody decides or runs them late.
    pub async fn expire_overdue(&self) -> Result<(), StoreError> {
        let expired = self.store.expire_overdue_reviews(now_micros()).await?;
        for id in expired {
            self.audit_settled("review.expired", &id, "no decision before the timeout");
        }
        Ok(())
    }

    /// Held statements can never run any more: of one session when it ends, or of every
    /// session (`None`) when the gateway starts. Marks their reviews abandoned.
    pub async fn abandon_held(&self, session_id: Option<&str>, reason: &str) -> usize {
        match self
            .store
            .abandon_held_reviews(session_id, reason, now_micros())
            .await
        {
            Ok(ids) => {
                for id in &ids {
                    self.audit_settled("review.abandoned", id, reason);
                }
                ids.len()
            }
            Err(e) => {
                tracing::error!(session = session_id, error = %e, "cannot mark held reviews abandoned");
                0
            }
        }
    }

    /// Records that a review ended without running (expired, abandoned). The change has
    /// already happened and only ever takes a right away, so it is not held up by the log.
    fn audit_settled(&self, kind: &'static str, id: &str, reason: &str) {
        if let Some(log) = &self.audit {
            log.append_detached(gatehouse_audit::Event::new(
                kind,
                None,
                serde_json::json!({ "review": id, "reason": reason }),
            ));
        }
    }

    /// Moves an approved review to `executed` (its approval is used up) and records it; the
    /// command runs only if both happened.
    pub(crate) async fn mark_executed(
        &self,
        review: &ReviewRow,
        now: crate::time::Micros,
    ) -> Result<bool, StoreError> {
        let taken = self
            .store
            .transition_review(
                &review.id,
                ReviewState::Approved,
                ReviewState::Executed,
                None,
                now,
            )
            .await?;
        if taken {
            self.audit(
                "review.executed",
                Some(&review.requester),
                serde_json::json!({ "review": review.id, "session": review.session_id, "kind": review.kind }),
            )
            .await?;
        }
        Ok(taken)
    }

    /// Whether `who` may see review `r`: its requester, its approvers, and administrators.
    pub fn may_see(r: &ReviewRow, who: &Identity) -> bool {
        who.in_group(ADMIN_GROUP)
            || r.requester == who.principal()
            || r.approvers.iter().any(|g| who.in_group(g))
    }
}

/// Approvers are the members of the policy's approver groups (administrators when it names
/// none). Administrators may always deny: refusing is never the risky direction.
fn may_vote(review: &ReviewRow, voter: &Identity, approve: bool) -> Result<(), VoteError> {
    let approver = if review.approvers.is_empty() {
        voter.in_group(ADMIN_GROUP)
    } else {
        review.approvers.iter().any(|g| voter.in_group(g))
    };
    if approver || (!approve && voter.in_group(ADMIN_GROUP)) {
        return Ok(());
    }
    let groups = if review.approvers.is_empty() {
        format!("group \"{ADMIN_GROUP}\"")
    } else {
        review
            .approvers
            .iter()
            .map(|g| format!("\"{g}\""))
            .collect::<Vec<_>>()
            .join(" or ")
    };
    Err(VoteError::NotApprover(groups))
}
