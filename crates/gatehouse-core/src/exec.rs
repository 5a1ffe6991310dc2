//! One-shot commands: a single statement run on a connection through the whole pipeline, for
//! scripts (`gatehouse exec`), the REST API and MCP tools. One implementation serves all three;
//! each protocol adapter supplies a [`CommandRunner`] that classifies and runs its commands.
//!
//! A command that needs review is not waited for here: it becomes an `exec` review that
//! outlives the request (and a gateway restart), and its requester runs it with the review id
//! once it is approved.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;

use crate::classify::Classification;
use crate::config::ConnectionConfig;
use crate::identity::Identity;
use crate::pipeline::{
    CommandStart, Completion, Decision, Denial, Intent, Pipeline, SessionStart, Verdict,
};
use crate::reviews::TakeError;
use crate::store::{Outcome, ReviewRow};

/// The protocol name one-shot sessions are recorded under.
pub const EXEC_PROTOCOL: &str = "exec";

/// The most rows returned per statement, whatever the caller asks for.
pub const MAX_ROWS: usize = 10_000;

/// Runs one command on a connection of the adapter's kind.
pub trait CommandRunner: Send + Sync {
    /// What the command does, from the adapter's parser.
    fn classify(&self, text: &str) -> Classification;

    /// Connects with the gateway's credential, runs `text`, returns at most `max_rows` rows
    /// per statement (counting the rest), masked by `masking` when rules apply: exactly as a
    /// session of the same identity would see them.
    fn run<'a>(
        &'a self,
        connection: Arc<ConnectionConfig>,
        text: &'a str,
        max_rows: usize,
        masking: Option<Arc<crate::masking::SessionMasking>>,
    ) -> Pin<Box<dyn Future<Output = Result<ExecResult, RunError>> + Send + 'a>>;
}

/// What a command returned: one entry per statement that produced a result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExecResult {
    pub results: Vec<StatementResult>,
    /// How many values each masking rule masked (for the record).
    #[serde(skip)]
    pub masked: Vec<(String, u64)>,
}

impl ExecResult {
    /// The first `max_rows` rows of the first result with rows, for the audit log.
    pub fn excerpt(&self, max_rows: usize) -> Option<crate::pipeline::ResultExcerpt> {
        if max_rows == 0 {
            return None;
        }
        let first = self.results.iter().position(|r| !r.columns.is_empty())?;
        let set = &self.results[first];
        let mut excerpt = crate::pipeline::ResultExcerpt {
            columns: set.columns.clone(),
            ..Default::default()
        };
        for row in set.rows.iter().take(max_rows) {
            let kept = row
                .iter()
                .map(|v| v.as_deref().map(|v| excerpt.keep(v)))
                .collect();
            excerpt.rows.push(kept);
        }
        let later: i64 = self.results[first + 1..].iter().map(|r| r.row_count).sum();
        excerpt.rows_left_out = (set.row_count - excerpt.rows.len() as i64 + later).max(0) as u64;
        Some(excerpt)
    }
}

/// One statement's result set, with values as text.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatementResult {
    /// The command tag, such as `SELECT 3` or `INSERT 0 1`.
    pub command: Option<String>,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    /// All rows the statement returned, including those left out.
    pub row_count: i64,
    /// `true` when rows were left out (the row cap).
    pub truncated: bool,
}

/// The target refused or failed the command.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RunError {
    /// The protocol's error code (SQLSTATE), when the server gave one.
    pub code: Option<String>,
    pub message: String,
}

/// A one-shot request.
pub struct ExecRequest<'a> {
    pub identity: &'a Identity,
    pub client_addr: SocketAddr,
    pub connection: &'a str,
    /// The command; with `review`, optional, and when given it must be the reviewed text.
    pub text: Option<&'a str>,
    /// Run the command of this approved `exec` review.
    pub review: Option<&'a str>,
    pub max_rows: usize,
    /// Recorded as the session's application name (`gatehouse exec`, `mcp:<client>/<version>`).
    pub application: String,
}

/// How a one-shot request ended.
#[derive(Debug)]
pub enum ExecOutcome {
    Done(ExecResult),
    /// The target ran it and failed.
    Failed(RunError),
    /// Policy needs an approval: the review to approve, then run with its id.
    Held(Box<ReviewRow>),
    Denied(Denial),
}

/// Why a one-shot request could not be attempted.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("Gatehouse has no connection named \"{0}\"; `gatehouse connections list` shows them")]
    UnknownConnection(String),
    #[error("connection \"{0}\" is not of a kind this gateway can run one-shot commands on")]
    UnsupportedKind(String),
    #[error("give the command to run (or --review with an approved review id)")]
    NoCommand,
    #[error(transparent)]
    Review(#[from] TakeError),
    #[error("the gateway cannot record commands right now; try again shortly")]
    Recording,
    #[error("the gateway cannot hold the command for review right now: {0}")]
    Store(String),
}

impl Pipeline {
    /// Identify (done by the caller) -> authorize -> (approve) -> run -> record, for one
    /// command.
    pub async fn exec(
        &self,
        runner: &dyn CommandRunner,
        request: ExecRequest<'_>,
    ) -> Result<ExecOutcome, ExecError> {
        let connection = self
            .connection(request.connection)
            .ok_or_else(|| ExecError::UnknownConnection(request.connection.to_string()))?;
        match self.authorize_connect(
            request.identity,
            &connection,
            request.client_addr,
            EXEC_PROTOCOL,
        ) {
            Verdict::Allow => {}
            Verdict::Deny(d) => return Ok(ExecOutcome::Denied(d)),
            Verdict::Review(r) => {
                return Ok(ExecOutcome::Denied(Denial {
                    policy: r.policy,
                    reason: "connecting needs approval, which one-shot commands cannot wait for"
                        .into(),
                }));
            }
        }
        // An approved review runs exactly its own text, once.
        let approved = match request.review {
            Some(id) => {
                let review = self
                    .reviews()
                    .take_exec_approval(id, request.identity, &connection.name, request.text)
                    .await?;
                Some(review)
            }
            None => None,
        };
        let text: Arc<str> = match (&approved, request.text) {
            (Some(r), _) => r.text.as_str().into(),
            (None, Some(t)) => t.into(),
            (None, None) => return Err(ExecError::NoCommand),
        };
        let start = CommandStart {
            classification: Some(Arc::new(runner.classify(&text))),
            text: text.clone(),
            params: None,
        };
        let session = self
            .open_session(SessionStart {
                protocol: EXEC_PROTOCOL,
                identity: request.identity.clone(),
                connection: connection.clone(),
                client_addr: request.client_addr,
                application_name: Some(request.application.clone()),
            })
            .await
            .map_err(|_| ExecError::Recording)?;
        let decision = session.authorize(&start);
        let decision = match (&approved, &decision.verdict) {
            // Approved earlier: still subject to a forbid added since (a deny stands).
            (Some(review), Verdict::Review(_)) => Decision {
                verdict: decision.verdict.clone(),
                policies: vec![review.policy.clone(), format!("review:{}", review.id)],
            },
            _ => decision,
        };
        let outcome = match &decision.verdict {
            Verdict::Deny(d) => {
                let denial = d.clone();
                let inflight = session.begin(1, start, decision);
                let done = Completion {
                    outcome: Outcome::Denied,
                    rows: None,
                    code: Some("42501".into()),
                    masked: Vec::new(),
                    excerpt: None,
                };
                session
                    .complete(inflight, done)
                    .await
                    .map_err(|_| ExecError::Recording)?;
                ExecOutcome::Denied(denial)
            }
            Verdict::Review(needed) if approved.is_none() => {
                let review = session
                    .hold_for_review(&start, needed)
                    .await
                    .map_err(|e| ExecError::Store(e.to_string()))?;
                ExecOutcome::Held(Box::new(review))
            }
            Verdict::Allow | Verdict::Review(_) => {
                let max_rows = request.max_rows.clamp(1, MAX_ROWS);
                let inflight = session.begin(1, start, decision);
                // Held until its intent is on disk: the command, or (for a read with
                // `[audit] overlap_reads`) only its result.
                let mut hold_result = None;
                match session
                    .audit_intent(&inflight)
                    .map_err(|_| ExecError::Recording)?
                {
                    Some(Intent::BeforeForwarding(pending)) => {
                        pending.wait().await.map_err(|_| ExecError::Recording)?;
                    }
                    Some(Intent::BeforeResult(pending)) => hold_result = Some(pending),
                    None => {}
                }
                let masking = self.masking_for(request.identity, &connection.name);
                // Results are copied into the audit log only once masked (see
                // `AuditConfig::result_excerpt_rows`).
                let excerpt_rows = if masking.is_some() {
                    self.config().audit.result_excerpt_rows
                } else {
                    0
                };
                let run = runner.run(connection, &text, max_rows, masking);
                let result = match hold_result {
                    Some(pending) => {
                        let (result, recorded) = tokio::join!(run, pending.wait());
                        recorded.map_err(|_| ExecError::Recording)?;
                        result
                    }
                    None => run.await,
                };
                let done = match &result {
                    Ok(r) => Completion {
                        outcome: Outcome::Ok,
                        rows: Some(r.results.iter().map(|s| s.row_count).sum()),
                        code: None,
                        masked: r.masked.clone(),
                        excerpt: r.excerpt(excerpt_rows),
                    },
                    Err(e) => Completion {
                        outcome: Outcome::Error,
                        rows: None,
                        code: e.code.clone(),
                        masked: Vec::new(),
                        excerpt: None,
                    },
                };
                session
                    .complete(inflight, done)
                    .await
                    .map_err(|_| ExecError::Recording)?;
                match result {
                    Ok(r) => ExecOutcome::Done(r),
                    Err(e) => ExecOutcome::Failed(e),
                }
            }
        };
        session.close("exec_done").await;
        Ok(outcome)
    }
}
