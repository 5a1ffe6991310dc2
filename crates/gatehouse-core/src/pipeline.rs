//! The one pipeline every protocol feeds: identify -> authorize -> (approve) -> forward -> mask
//! -> record.
//!
//! An adapter decodes its wire format into [`CommandStart`]s and hands them to its
//! [`SessionHandle`]; it forwards only what [`SessionHandle::authorize`] allows and reports how
//! each command ended with [`SessionHandle::complete`]. Approval and masking attach to the same
//! handle, so a feature added here works for every protocol.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::auth::{AuthError, Authenticator};
use crate::classify::Classification;
use crate::config::{Config, ConnectionConfig};
use crate::identity::Identity;
use crate::recorder::{RecordError, Recorder};
use crate::reviews::{Requester, ReviewOutcome, Reviews};
use crate::store::{Outcome, Record, SessionRow, StatementRow};
use crate::store::{ReviewRow, StoreError};
use crate::time::{Micros, now_micros};

/// The most bytes of statement parameters recorded per command; the rest is cut with a marker.
pub const MAX_RECORDED_PARAM_BYTES: usize = 4096;

/// Decides whether a session may open and whether each command may run. The policy engine
/// implements this.
pub trait Authorizer: Send + Sync {
    fn authorize(&self, session: &SessionHandle, command: &CommandStart) -> Decision;

    /// May `identity` open a session on `connection`?
    fn authorize_connect(
        &self,
        identity: &Identity,
        connection: &ConnectionConfig,
        client: SocketAddr,
        protocol: &str,
    ) -> Verdict;

    /// How policy would decide `classification` for `identity` on `connection`, outside any
    /// session: for what a catalog listing may show (`describe` shows only tables the caller
    /// may read, possibly after approval).
    fn authorize_outside_session(
        &self,
        identity: &Identity,
        connection: &ConnectionConfig,
        client: SocketAddr,
        protocol: &str,
        classification: &Classification,
    ) -> Decision;

    /// State the authorizer keeps per session (such as what it can precompute from the
    /// identity and connection), handed back through [`SessionHandle::authorizer_state`].
    fn session_state(
        &self,
        _identity: &Identity,
        _connection: &ConnectionConfig,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        None
    }
}

/// A verdict and the policies that determined it, as recorded with the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub policies: Vec<String>,
}

impl Decision {
    pub fn allow(policies: Vec<String>) -> Self {
        Decision {
            verdict: Verdict::Allow,
            policies,
        }
    }

    pub fn deny(policy: &str, reason: impl Into<String>) -> Self {
        Decision {
            verdict: Verdict::Deny(Denial {
                policy: policy.to_string(),
                reason: reason.into(),
            }),
            policies: vec![policy.to_string()],
        }
    }

    /// `allow`, `deny` or `review`.
    pub fn name(&self) -> &'static str {
        match self.verdict {
            Verdict::Allow => "allow",
            Verdict::Deny(_) => "deny",
            Verdict::Review(_) => "review",
        }
    }
}

/// What the pipeline decided about one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny(Denial),
    /// Allowed only with a human approval.
    Review(ReviewNeeded),
}

/// What an approval of a held command needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewNeeded {
    /// The policy that would allow the command once approved.
    pub policy: String,
    /// Groups whose members may approve.
    pub approvers: Vec<String>,
    /// How many distinct approvals are needed.
    pub approvals: u32,
    /// How long the command may wait for a decision (the policy's `@timeout`); `None`: the
    /// configured default.
    pub timeout: Option<std::time::Duration>,
}

/// Why a command was refused, in words the client is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The policy that decided, so the caller can ask its owner.
    pub policy: String,
    pub reason: String,
}

/// A command as the adapter saw it arrive.
#[derive(Debug, Clone)]
pub struct CommandStart {
    /// The statement or request text. Shared, because a prepared statement runs many times.
    pub text: Arc<str>,
    /// Parameter values as text (binary values hex-encoded), already size-capped.
    pub params: Option<Vec<Option<String>>>,
    /// What the command does, from the adapter's parser. `None` means the adapter could not
    /// tell, and policy denies it.
    pub classification: Option<Arc<Classification>>,
}

/// A command that was forwarded and is waiting for its result.
#[derive(Debug)]
pub struct InFlight {
    seq: i64,
    started_at: Micros,
    started: Instant,
    command: CommandStart,
    decision: Decision,
}

/// How the target answered a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub outcome: Outcome,
    pub rows: Option<i64>,
    /// The protocol's own error code (SQLSTATE for PostgreSQL).
    pub code: Option<String>,
    /// How many values each masking rule masked in the result (rules that masked none are
    /// left out).
    pub masked: Vec<(String, u64)>,
    /// The first rows of the result as the client saw them, for the audit log.
    pub excerpt: Option<ResultExcerpt>,
}

/// The first rows of a result, after masking, as the audit log keeps them: bounded, with
/// counts of what was left out, so a replay shows what came back without the log holding
/// the result.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResultExcerpt {
    pub columns: Vec<String>,
    /// Values as text; binary values are described, not shown; long values are cut.
    pub rows: Vec<Vec<Option<String>>>,
    /// Rows of the result (and of any later results of the same command) not in `rows`.
    pub rows_left_out: u64,
    /// Values cut to [`ResultExcerpt::MAX_VALUE_BYTES`].
    pub values_cut: u64,
}

impl ResultExcerpt {
    /// The longest value kept whole.
    pub const MAX_VALUE_BYTES: usize = 64;

    /// `value` as kept: cut at a character boundary (counted in `values_cut`) when longer than
    /// [`ResultExcerpt::MAX_VALUE_BYTES`].
    pub fn keep(&mut self, value: &str) -> String {
        let (kept, cut) = Self::cut(value);
        self.values_cut += u64::from(cut);
        kept
    }

    /// `text` bounded to [`ResultExcerpt::MAX_VALUE_BYTES`], and whether it was cut.
    pub fn cut(text: &str) -> (String, bool) {
        if text.len() <= Self::MAX_VALUE_BYTES {
            return (text.to_string(), false);
        }
        let mut end = Self::MAX_VALUE_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        (format!("{}…", &text[..end]), true)
    }
}

/// Shared state of a running gateway: config, identity, policy and recording.
pub struct Pipeline {
    config: Arc<Config>,
    authenticator: Authenticator,
    authorizer: Arc<dyn Authorizer>,
    recorder: Recorder,
    reviews: Arc<Reviews>,
    masking: Arc<crate::masking::Masking>,
    audit: Option<gatehouse_audit::AuditLog>,
}

/// Who opened a session, to which connection, from where.
pub struct SessionStart {
    pub protocol: &'static str,
    pub identity: Identity,
    pub connection: Arc<ConnectionConfig>,
    pub client_addr: SocketAddr,
    pub application_name: Option<String>,
}

impl Pipeline {
    pub fn new(
        config: Arc<Config>,
        authenticator: Authenticator,
        recorder: Recorder,
        authorizer: Arc<dyn Authorizer>,
        reviews: Arc<Reviews>,
        masking: Arc<crate::masking::Masking>,
        audit: Option<gatehouse_audit::AuditLog>,
    ) -> Self {
        Pipeline {
            config,
            authenticator,
            authorizer,
            recorder,
            reviews,
            masking,
            audit,
        }
    }

    /// The masking rules for `identity` on `connection`; `None` when none applies.
    pub fn masking_for(
        &self,
        identity: &Identity,
        connection: &str,
    ) -> Option<Arc<crate::masking::SessionMasking>> {
        self.masking.for_session(identity, connection)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The review service (for one-shot commands run after approval).
    pub fn reviews(&self) -> &Reviews {
        &self.reviews
    }

    /// Step 1: who is this? Accepts any credential the gateway trusts.
    pub async fn authenticate(
        &self,
        credential: &str,
        client: std::net::IpAddr,
    ) -> Result<Identity, AuthError> {
        self.authenticator.authenticate(credential, client).await
    }

    /// The named connection, if it exists. Callers must not reveal other names.
    pub fn connection(&self, name: &str) -> Option<Arc<ConnectionConfig>> {
        self.config.connection(name).cloned().map(Arc::new)
    }

    /// May `identity` open a session on `connection` from `client`?
    pub fn authorize_connect(
        &self,
        identity: &Identity,
        connection: &ConnectionConfig,
        client: SocketAddr,
        protocol: &str,
    ) -> Verdict {
        self.authorizer
            .authorize_connect(identity, connection, client, protocol)
    }

    /// See [`Authorizer::authorize_outside_session`].
    pub fn authorize_outside_session(
        &self,
        identity: &Identity,
        connection: &ConnectionConfig,
        client: SocketAddr,
        protocol: &str,
        classification: &Classification,
    ) -> Decision {
        self.authorizer.authorize_outside_session(
            identity,
            connection,
            client,
            protocol,
            classification,
        )
    }

    /// Opens and records a session; every later command of the session goes through the
    /// returned handle.
    pub async fn open_session(&self, start: SessionStart) -> Result<SessionHandle, RecordError> {
        let id: Arc<str> = new_session_id().into();
        let row = SessionRow {
            id: id.to_string(),
            protocol: start.protocol.to_string(),
            connection: start.connection.name.clone(),
            principal: start.identity.principal(),
            display_name: start.identity.display_name.clone(),
            identity_kind: start.identity.kind.as_str().to_string(),
            groups: start.identity.groups.clone(),
            token_id: start.identity.token_id.clone(),
            client_addr: start.client_addr.to_string(),
            application_name: start.application_name,
            started_at: now_micros(),
            ended_at: None,
            end_reason: None,
            statement_count: 0,
        };
        if let Some(audit) = &self.audit {
            // Kept before the session may do anything; no audit record, no session.
            audit
                .append(gatehouse_audit::Event::new(
                    "session.opened",
                    Some(&row.principal),
                    serde_json::json!({
                        "session": row.id,
                        "protocol": row.protocol,
                        "connection": row.connection,
                        "groups": row.groups,
                        "token_id": row.token_id,
                        "client": row.client_addr,
                        "application": row.application_name,
                    }),
                ))
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "cannot write the audit log");
                    RecordError
                })?;
        }
        let principal: Arc<str> = row.principal.as_str().into();
        self.recorder
            .record(Record::SessionOpened(Box::new(row)))
            .await?;
        let authorizer_state = self
            .authorizer
            .session_state(&start.identity, &start.connection);
        Ok(SessionHandle {
            principal,
            id,
            authenticator: self.authenticator.clone(),
            authorizer_state,
            protocol: start.protocol,
            client_addr: start.client_addr,
            identity: Arc::new(start.identity),
            connection: start.connection,
            authorizer: self.authorizer.clone(),
            recorder: self.recorder.clone(),
            reviews: self.reviews.clone(),
            audit: self.audit.clone(),
            overlap_reads: self.config.audit.overlap_reads,
        })
    }
}

/// One session's view of the pipeline. Cloneable so both directions of a relay can use it.
#[derive(Clone)]
pub struct SessionHandle {
    id: Arc<str>,
    /// The identity's principal key, formatted once: every audit record of the session
    /// carries it.
    principal: Arc<str>,
    authenticator: Authenticator,
    authorizer_state: Option<Arc<dyn Any + Send + Sync>>,
    protocol: &'static str,
    client_addr: SocketAddr,
    identity: Arc<Identity>,
    connection: Arc<ConnectionConfig>,
    authorizer: Arc<dyn Authorizer>,
    recorder: Recorder,
    reviews: Arc<Reviews>,
    audit: Option<gatehouse_audit::AuditLog>,
    /// `[audit] overlap_reads`: see [`Intent`].
    overlap_reads: bool,
}

/// A command's queued `statement.intent` record, and what must wait until it is on disk. With
/// `strict` durability the record is on disk before the command can have any effect: before it
/// is forwarded, or, for a command that changes nothing when `[audit] overlap_reads` is on,
/// before any of its result reaches the client (the sync then runs while the server works).
/// Either way, a crash never leaves a change or a delivered result without its record.
pub enum Intent {
    /// Forward the command only once the record is on disk.
    BeforeForwarding(gatehouse_audit::Pending),
    /// The command may be forwarded at once; hold its result until the record is on disk.
    BeforeResult(gatehouse_audit::Pending),
}

impl SessionHandle {
    /// Step 3: holds `command` for the review `needed` describes. The adapter tells the client
    /// the review's id at once, then waits with [`SessionHandle::await_review`].
    pub async fn hold_for_review(
        &self,
        command: &CommandStart,
        needed: &ReviewNeeded,
    ) -> Result<ReviewRow, StoreError> {
        let requester = Requester {
            kind: if self.protocol == crate::exec::EXEC_PROTOCOL {
                "exec"
            } else {
                "statement"
            },
            identity: &self.identity,
            session_id: &self.id,
            connection: &self.connection.name,
            client_addr: self.client_addr.to_string(),
        };
        self.reviews.hold(requester, command, needed).await
    }

    /// Waits for the decision on a held command; an approval is consumed by this call.
    pub async fn await_review(&self, review: &ReviewRow) -> ReviewOutcome {
        self.reviews.wait(review).await
    }

    /// Marks the reviews of statements this session holds abandoned: the client stopped
    /// waiting for them (a held statement is the session's only one in flight).
    pub async fn abandon_held(&self, reason: &str) {
        self.reviews.abandon_held(Some(&self.id), reason).await;
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Is the session's credential still valid? A revoked or expired token must end the
    /// session, not only be refused at the next connect.
    pub async fn check_credential(&self) -> Result<(), AuthError> {
        self.authenticator.recheck(&self.identity).await
    }

    /// What the authorizer keeps for this session (see [`Authorizer::session_state`]).
    pub fn authorizer_state(&self) -> Option<&(dyn Any + Send + Sync)> {
        self.authorizer_state.as_deref()
    }

    pub fn protocol(&self) -> &'static str {
        self.protocol
    }

    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn connection(&self) -> &ConnectionConfig {
        &self.connection
    }

    /// Step 2: may this command run? Called before anything is forwarded.
    pub fn authorize(&self, command: &CommandStart) -> Decision {
        if !self.recorder.is_healthy() {
            return Decision::deny("gatehouse.recording", RecordError.to_string());
        }
        self.authorizer.authorize(self, command)
    }

    /// Marks a command as forwarded, starting its clock. `seq` numbers commands within the
    /// session in the order the client sent them.
    pub fn begin(&self, seq: i64, command: CommandStart, decision: Decision) -> InFlight {
        InFlight {
            seq,
            started_at: now_micros(),
            started: Instant::now(),
            command,
            decision,
        }
    }

    /// Queues the audit log's intent record of a command about to be forwarded; the [`Intent`]
    /// says where to wait for it. An error means the command must not run.
    pub fn audit_intent(&self, command: &InFlight) -> Result<Option<Intent>, RecordError> {
        let Some(audit) = &self.audit else {
            return Ok(None);
        };
        let event = gatehouse_audit::Event::typed(
            "statement.intent",
            Some(&self.principal),
            &IntentRecord {
                session: &self.id,
                seq: command.seq,
                text: gatehouse_audit::record::BoundedText::new(
                    &command.command.text,
                    RECORDED_TEXT_BYTES,
                ),
                params: &command.command.params,
                decision: command.decision.name(),
                policies: &command.decision.policies,
            },
        );
        let mut pending = audit.enqueue(event).map_err(|e| {
            tracing::error!(error = %e, "cannot queue an audit record");
            RecordError
        })?;
        let changes_nothing = || {
            command
                .command
                .classification
                .as_deref()
                .is_some_and(Classification::changes_nothing)
        };
        Ok(Some(if self.overlap_reads && changes_nothing() {
            // The read goes to the server now; the writer thread writes its record meanwhile.
            pending.write_soon();
            Intent::BeforeResult(pending)
        } else {
            Intent::BeforeForwarding(pending)
        }))
    }

    /// Records how a command ended. An error means the command could not be recorded and the
    /// session must end.
    pub async fn complete(&self, command: InFlight, done: Completion) -> Result<(), RecordError> {
        if let Some(audit) = &self.audit {
            audit.append_detached(gatehouse_audit::Event::typed(
                "statement.outcome",
                Some(&self.principal),
                &OutcomeRecord {
                    session: &self.id,
                    seq: command.seq,
                    decision: command.decision.name(),
                    policies: &command.decision.policies,
                    outcome: done.outcome.as_str(),
                    rows: done.rows,
                    sqlstate: done.code.as_deref(),
                    duration_us: command.started.elapsed().as_micros() as u64,
                    masked: MaskedCounts(&done.masked),
                    excerpt: done.excerpt.as_ref(),
                },
            ));
        }
        let duration = command.started.elapsed().as_micros().min(i64::MAX as u128) as i64;
        let row = StatementRow {
            session_id: self.id.to_string(),
            seq: command.seq,
            started_at: command.started_at,
            duration_us: Some(duration),
            text: command.command.text.to_string(),
            params: command.command.params,
            rows: done.rows,
            outcome: done.outcome,
            sqlstate: done.code,
            decision: Some(command.decision.name().to_string()),
            policies: command.decision.policies,
            masked: done.masked,
        };
        self.recorder.record(Record::Statement(Box::new(row))).await
    }

    /// Records the end of the session and why it ended. Reviews still held for it can never
    /// run now and are marked abandoned.
    pub async fn close(&self, reason: &str) {
        self.reviews
            .abandon_held(Some(&self.id), "the session ended before the statement ran")
            .await;
        if let Some(audit) = &self.audit
            && let Err(e) = audit
                .append(gatehouse_audit::Event::new(
                    "session.closed",
                    Some(&self.principal),
                    serde_json::json!({ "session": &*self.id, "reason": reason }),
                ))
                .await
        {
            tracing::error!(session = %self.id, error = %e, "cannot write the audit log");
        }
        let record = Record::SessionClosed {
            id: self.id.to_string(),
            ended_at: now_micros(),
            reason: reason.to_string(),
        };
        if self.recorder.record(record).await.is_err() {
            tracing::error!(session = %self.id, "could not record the end of the session");
        }
    }
}

/// The longest statement text an audit record holds whole; longer text is cut and carries
/// the SHA-256 of the whole.
const RECORDED_TEXT_BYTES: usize = 4096;

/// The details of a `statement.intent` audit record, encoded once without a JSON value.
#[derive(serde::Serialize)]
struct IntentRecord<'a> {
    session: &'a str,
    seq: i64,
    text: gatehouse_audit::record::BoundedText<'a>,
    params: &'a Option<Vec<Option<String>>>,
    decision: &'static str,
    policies: &'a [String],
}

/// The details of a `statement.outcome` audit record.
#[derive(serde::Serialize)]
struct OutcomeRecord<'a> {
    session: &'a str,
    seq: i64,
    decision: &'static str,
    policies: &'a [String],
    outcome: &'static str,
    rows: Option<i64>,
    sqlstate: Option<&'a str>,
    duration_us: u64,
    masked: MaskedCounts<'a>,
    excerpt: Option<&'a ResultExcerpt>,
}

/// Values masked per rule, as a JSON object.
struct MaskedCounts<'a>(&'a [(String, u64)]);

impl serde::Serialize for MaskedCounts<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(rule, n)| (rule, n)))
    }
}

/// Formats recorded parameter values so that their total size stays bounded.
pub fn cap_params<'a>(
    values: impl Iterator<Item = Option<std::borrow::Cow<'a, str>>>,
) -> Vec<Option<String>> {
    let mut budget = MAX_RECORDED_PARAM_BYTES;
    values
        .map(|v| {
            v.map(|s| {
                if s.len() <= budget {
                    budget -= s.len();
                    s.into_owned()
                } else {
                    let mut cut = budget;
                    while !s.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    budget = 0;
                    format!("{}…[{} bytes]", &s[..cut], s.len())
                }
            })
        })
        .collect()
}

fn new_session_id() -> String {
    use rand::Rng;
    let bytes: [u8; 8] = rand::rng().random();
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn parameters_are_capped_in_total() {
        let big = "x".repeat(MAX_RECORDED_PARAM_BYTES - 10);
        let out = cap_params(
            [
                Some(Cow::Borrowed(big.as_str())),
                None,
                Some(Cow::Borrowed("0123456789abcdef")),
                Some(Cow::Borrowed("more")),
            ]
            .into_iter(),
        );
        assert_eq!(out[0].as_deref(), Some(big.as_str()));
        assert_eq!(out[1], None);
        assert_eq!(out[2].as_deref(), Some("0123456789…[16 bytes]"));
        assert_eq!(out[3].as_deref(), Some("…[4 bytes]"));
    }
}
