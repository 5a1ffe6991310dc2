//! The client-to-server side of a relay: decodes the messages that carry statements, asks the
//! pipeline, and forwards or refuses them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::BytesMut;
use gatehouse_core::classify::{Classification, Statement};
use gatehouse_core::pipeline::{
    CommandStart, Decision, Denial, InFlight, Intent, ReviewNeeded, SessionHandle, Verdict,
    cap_params,
};
use gatehouse_core::reviews::ReviewOutcome;
use gatehouse_core::store::ReviewRow;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{EndReason, Expect, RelayLimits};
use crate::framer::{FramePolicy, Framer, Unit};
use crate::wire::{self, GatewayError, SMALL_MESSAGE_LIMIT, WireError};

pub(super) struct ClientPolicy(pub(super) RelayLimits);

impl FramePolicy for ClientPolicy {
    fn streamed(&self, tag: u8) -> bool {
        tag == b'd'
    }

    fn limit(&self, tag: u8) -> usize {
        match tag {
            b'S' | b'H' | b'X' | b'C' | b'D' | b'c' => SMALL_MESSAGE_LIMIT,
            _ => self.0.max_message_bytes,
        }
    }
}

/// What the gateway concluded about a Parse's text: what it does, and why masking cannot
/// follow it (if so). Both depend only on the text and the session's masking rules, so they
/// are kept for the session: drivers re-Parse the same unnamed statement for every execution,
/// and each conclusion costs a full parse.
#[derive(Clone)]
pub(super) struct Judged {
    classification: Arc<Classification>,
    masking_refusal: Option<String>,
}

/// A statement as parsed: its text and what it does (classified once, at Parse).
#[derive(Clone)]
pub(super) struct Prepared {
    text: Arc<str>,
    classification: Arc<Classification>,
}

/// A portal as bound: the statement it runs and its parameters, for the record.
pub(super) struct Portal {
    statement: Prepared,
    params: Vec<Option<String>>,
}

pub(super) struct ClientToServer<R, W> {
    pub(super) framer: Framer<R>,
    pub(super) server: W,
    pub(super) out: BytesMut,
    pub(super) expect: mpsc::UnboundedSender<Expect>,
    pub(super) session: SessionHandle,
    pub(super) statements: HashMap<String, Prepared>,
    pub(super) portals: HashMap<String, Portal>,
    /// SQL-level prepared statements (`PREPARE name AS ...`), by name.
    pub(super) sql_prepared: HashMap<String, Statement>,
    /// Classifications of statement texts seen in this session. Drivers re-Parse the same
    /// unnamed statement for every execution; classification is a pure function of the text.
    pub(super) classified: HashMap<Arc<str>, Judged>,
    pub(super) seq: i64,
    pub(super) poison: Arc<str>,
    pub(super) policy: ClientPolicy,
    pub(super) status: Arc<AtomicU8>,
    pub(super) idle_in_transaction: Option<std::time::Duration>,
    /// Woken by the session's CancelRequest: ends a wait for approval.
    pub(super) interrupt: Arc<crate::cancel::Interrupt>,
    /// Masking of this session: statements are checked against its masked columns, and each
    /// Execute is preceded by a Describe so results can be masked by column.
    pub(super) masking: Option<Arc<crate::mask::PgMasking>>,
    /// Audit intent records of the commands in `out`, awaited before `out` is sent.
    pub(super) intents: Vec<gatehouse_audit::Pending>,
    /// An intent record could not be queued: nothing more may be forwarded.
    pub(super) audit_failed: bool,
    /// The client's previous message was a Describe of a portal, and this is its name (the
    /// buffer is reused); see [`Self::describe_for_masking`].
    pub(super) portal_described: bool,
    pub(super) described_portal: String,
}

/// Who ended a wait for approval with a CancelRequest, as the refusal names it.
const CANCELED_BY_CLIENT: &str = "the client (CancelRequest)";

/// The error a failed audit write surfaces as; the relay ends the session.
const AUDIT_FAILED: &str = "the audit log cannot be written";

/// Most client bytes read ahead while a statement waits for approval; past it the gateway
/// stops reading (the client's later messages wait in the socket).
const HOLD_READ_AHEAD: usize = 1 << 20;

/// A statement policy allows only once approved, held with the message that carries it.
pub(super) struct Held {
    frame: BytesMut,
    start: CommandStart,
    needed: ReviewNeeded,
    /// A simple Query (which ends with its own ReadyForQuery) rather than an Execute.
    simple: bool,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> ClientToServer<R, W> {
    pub(super) async fn run(&mut self) -> EndReason {
        loop {
            let unit = match self.framer.next_buffered(&self.policy) {
                Ok(u) => u,
                Err(e) => return self.fatal(e),
            };
            match unit {
                Some(Unit::Streamed { bytes, .. }) => self.out.extend_from_slice(&bytes),
                Some(Unit::Frame(frame)) => match self.handle(frame) {
                    Ok(None) => {}
                    Ok(Some(held)) => {
                        // Everything before the held statement goes to the server now.
                        if let Err(e) = self.flush().await {
                            return flush_failed(e);
                        }
                        if let Err(reason) = self.hold(held).await {
                            return reason;
                        }
                    }
                    Err(reason) => {
                        if let Err(e) = self.flush().await {
                            return flush_failed(e);
                        }
                        return reason;
                    }
                },
                None => {
                    if let Err(e) = self.flush().await {
                        return flush_failed(e);
                    }
                    let filled = match self.idle_in_transaction {
                        Some(limit) => match self.fill_unless_idle_in_transaction(limit).await {
                            Some(r) => r,
                            None => return EndReason::IdleInTransaction,
                        },
                        None => self.framer.fill().await,
                    };
                    match filled {
                        Ok(true) => {}
                        Ok(false) | Err(_) => return EndReason::ClientClosed,
                    }
                }
            }
        }
    }

    /// Reads more client input, or gives up (`None`) once the client has been silent for
    /// `limit` inside a transaction. The status is re-read whenever the wait ends, because the
    /// server's answer to BEGIN arrives after the wait began. Reading is cancel-safe.
    async fn fill_unless_idle_in_transaction(
        &mut self,
        limit: std::time::Duration,
    ) -> Option<std::io::Result<bool>> {
        let idle_since = std::time::Instant::now();
        loop {
            let in_transaction = self.status.load(Ordering::Relaxed) != b'I';
            let wait = if in_transaction {
                limit.saturating_sub(idle_since.elapsed())
            } else {
                limit
            };
            if in_transaction && wait.is_zero() {
                return None;
            }
            if let Ok(r) = tokio::time::timeout(wait, self.framer.fill()).await {
                return Some(r);
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        // The audit log holds every command's intent before the command reaches the server
        // (one sync for the whole batch, shared with other sessions).
        for pending in std::mem::take(&mut self.intents) {
            if pending.wait().await.is_err() {
                self.audit_failed = true;
            }
        }
        if self.audit_failed {
            self.out.clear();
            return Err(std::io::Error::other(AUDIT_FAILED));
        }
        if !self.out.is_empty() {
            self.server.write_all(&self.out).await?;
            self.server.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Holds a statement until its review is decided, then runs or refuses it. Client input
    /// is read ahead meanwhile only to notice a client that leaves; a CancelRequest ends the
    /// wait.
    async fn hold(&mut self, held: Held) -> Result<(), EndReason> {
        let session = self.session.clone();
        let review = match session.hold_for_review(&held.start, &held.needed).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot store a review");
                let error = GatewayError::error(
                    "58000",
                    "Gatehouse cannot hold this statement for approval right now (its store is unavailable); the statement was not run",
                );
                let decision = Decision::deny("gatehouse.review", "the review could not be stored");
                self.refuse_decided(held.start, decision, error, held.simple);
                return Ok(());
            }
        };
        self.push(Expect::Notice(awaiting_notice(&review)));
        let outcome = {
            let wait = session.await_review(&review);
            tokio::pin!(wait);
            let interrupt = self.interrupt.clone();
            interrupt.set_holding(true);
            let mut reading = true;
            loop {
                tokio::select! {
                    outcome = &mut wait => break Some(outcome),
                    _ = interrupt.cancelled() => break Some(ReviewOutcome::Denied {
                        by: CANCELED_BY_CLIENT.into(),
                        reason: Some("canceled while waiting for approval".into()),
                    }),
                    filled = self.framer.fill(), if reading => match filled {
                        Ok(true) => reading = self.framer.buffered() < HOLD_READ_AHEAD,
                        Ok(false) | Err(_) => break None,
                    },
                }
            }
        };
        self.interrupt.set_holding(false);
        if let Some(ReviewOutcome::Denied { by, .. }) = &outcome
            && by == CANCELED_BY_CLIENT
        {
            // Nothing waits for the statement any more: no approver should still be asked.
            session
                .abandon_held("the client canceled the statement while it waited for approval")
                .await;
        }
        let Some(outcome) = outcome else {
            // The session's close marks the review abandoned; it can never run now.
            return Err(EndReason::ClientClosed);
        };
        // Recorded as the review decision it was, with the review that settled it; the
        // outcome (ok, error, denied) says what came of it.
        let mut policies = vec![held.needed.policy.clone(), format!("review:{}", review.id)];
        policies.dedup();
        let decision = Decision {
            verdict: Verdict::Review(held.needed.clone()),
            policies,
        };
        let approvers = if held.needed.approvers.is_empty() {
            "an administrator".to_string()
        } else {
            format!("a member of {}", held.needed.approvers.join(" or "))
        };
        let (code, message) = match outcome {
            ReviewOutcome::Approved => {
                if held.simple {
                    if let Some(c) = &held.start.classification {
                        self.remember_sql_prepared(c);
                    }
                    let inflight = self.begin_forwarded(held.start, decision);
                    self.push(Expect::Simple(inflight));
                } else {
                    if let Ok(portal) = wire::parse_execute(&held.frame[5..]) {
                        let portal = portal.to_string();
                        self.describe_for_masking(&portal);
                    }
                    let inflight = self.begin_forwarded(held.start, decision);
                    self.push(Expect::Execute(inflight));
                }
                self.out.extend_from_slice(&held.frame);
                return Ok(());
            }
            ReviewOutcome::Denied { by, reason } => (
                if by.starts_with("the client") {
                    "57014"
                } else {
                    "42501"
                },
                format!(
                    "review {} was denied by {by}{}; the statement was not run",
                    review.id,
                    reason.map(|r| format!(": {r}")).unwrap_or_default()
                ),
            ),
            ReviewOutcome::TimedOut => (
                "42501",
                format!(
                    "review {} (policy {}: approval by {approvers}) was not decided in time; the statement was not run",
                    review.id, held.needed.policy
                ),
            ),
            ReviewOutcome::Unavailable(e) => (
                "58000",
                format!(
                    "review {} cannot be completed ({e}); the statement was not run",
                    review.id
                ),
            ),
        };
        let error = GatewayError::error(code, format!("Gatehouse: {message}"));
        self.refuse_decided(held.start, decision, error, held.simple);
        Ok(())
    }

    /// Handles one whole client message; `Err` ends the session, `Some` holds a statement for
    /// review.
    fn handle(&mut self, frame: BytesMut) -> Result<Option<Held>, EndReason> {
        let body = &frame[5..];
        // Only a Describe that is the very message before an Execute counts (see
        // `describe_for_masking`); any other message in between forgets it.
        let described = std::mem::take(&mut self.portal_described);
        match frame[0] {
            b'Q' => {
                let text = match wire::parse_query(body) {
                    Ok(t) => t,
                    Err(WireError::NotUtf8(what)) => {
                        let start = unclassified(
                            String::from_utf8_lossy(&body[..body.len().saturating_sub(1)]).into(),
                        );
                        self.refuse(start, not_utf8(what), true);
                        return Ok(None);
                    }
                    Err(e) => return Err(self.fatal(e)),
                };
                // Not cached: simple queries usually carry their literals, so texts rarely repeat.
                let (classified, checked) = self.classify_and_check(text);
                let start = CommandStart {
                    text: text.into(),
                    params: None,
                    classification: Some(self.resolve_sql_prepared(Arc::new(classified))),
                };
                if let Err(reason) = checked {
                    let decision = Decision::deny("gatehouse.masking", reason.clone());
                    let error = GatewayError::error(
                        "42501",
                        format!("Gatehouse refused this statement: {reason}"),
                    );
                    self.refuse_decided(start, decision, error, true);
                    return Ok(None);
                }
                let decision = self.session.authorize(&start);
                match &decision.verdict {
                    Verdict::Allow => {
                        if let Some(c) = &start.classification {
                            self.remember_sql_prepared(c);
                        }
                        let inflight = self.begin_forwarded(start, decision);
                        self.push(Expect::Simple(inflight));
                        self.out.extend_from_slice(&frame);
                    }
                    Verdict::Deny(denial) => {
                        let error = denied(denial);
                        self.refuse_decided(start, decision, error, true);
                    }
                    Verdict::Review(needed) => {
                        return Ok(Some(Held {
                            needed: needed.clone(),
                            frame,
                            start,
                            simple: true,
                        }));
                    }
                }
            }
            b'P' => match wire::parse_parse(body) {
                Ok((name, query)) => {
                    // Classified once here; enforced at every Execute of this statement.
                    let judged = self.judge_cached(query);
                    let classification = self.resolve_sql_prepared(judged.classification);
                    self.remember_sql_prepared(&classification);
                    let prepared = Prepared {
                        text: query.into(),
                        classification: classification.clone(),
                    };
                    let refusal = match &*classification {
                        Classification::Refused { reason } => Some((
                            Decision::deny("gatehouse.classifier", reason.clone()),
                            GatewayError::error(
                                "42501",
                                format!("Gatehouse refused this statement: {reason}"),
                            ),
                        )),
                        Classification::Statements { statements } if statements.len() > 1 => {
                            let message =
                                "cannot insert multiple commands into a prepared statement";
                            Some((
                                Decision::deny("gatehouse.classifier", message),
                                GatewayError::error("42601", message),
                            ))
                        }
                        Classification::Statements { .. } => judged.masking_refusal.map(|reason| {
                            (
                                Decision::deny("gatehouse.masking", reason.clone()),
                                GatewayError::error(
                                    "42501",
                                    format!("Gatehouse refused this statement: {reason}"),
                                ),
                            )
                        }),
                    };
                    // A statement the gateway refuses never reaches the server; any previous
                    // statement of that name is gone, as the server would have replaced it.
                    self.statements.remove(name);
                    match refusal {
                        Some((decision, error)) => {
                            let start = CommandStart {
                                text: prepared.text,
                                params: None,
                                classification: Some(classification),
                            };
                            self.refuse_decided(start, decision, error, false);
                        }
                        None => {
                            self.statements.insert(name.to_string(), prepared);
                            self.out.extend_from_slice(&frame);
                        }
                    }
                }
                Err(WireError::NotUtf8(what)) => {
                    let start = unclassified("<Parse with invalid UTF-8>".into());
                    self.refuse(start, not_utf8(what), false);
                }
                Err(e) => return Err(self.fatal(e)),
            },
            b'B' => match wire::parse_bind(body) {
                Ok(bind) => {
                    if let Some(statement) = self.statements.get(bind.statement) {
                        let params = cap_params(bind.params.iter().enumerate().map(|(i, v)| {
                            v.map(|bytes| {
                                if bind.is_binary(i) {
                                    format!("\\x{}", hex::encode(bytes)).into()
                                } else {
                                    String::from_utf8_lossy(bytes)
                                }
                            })
                        }));
                        self.portals.insert(
                            bind.portal.to_string(),
                            Portal {
                                statement: statement.clone(),
                                params,
                            },
                        );
                    } else {
                        // The server will answer 26000 for the unknown statement.
                        self.portals.remove(bind.portal);
                    }
                    self.out.extend_from_slice(&frame);
                }
                Err(WireError::NotUtf8(what)) => {
                    let start = unclassified("<Bind with invalid UTF-8 names>".into());
                    self.refuse(start, not_utf8(what), false);
                }
                Err(e) => return Err(self.fatal(e)),
            },
            b'E' => {
                let portal = match wire::parse_execute(body) {
                    Ok(p) => p,
                    Err(e) => return Err(self.fatal(e)),
                };
                let start = match self.portals.get(portal) {
                    Some(p) => CommandStart {
                        text: p.statement.text.clone(),
                        params: Some(p.params.clone()),
                        classification: Some(p.statement.classification.clone()),
                    },
                    None => {
                        unclassified(format!("-- Execute of unknown portal \"{portal}\"").into())
                    }
                };
                let decision = self.session.authorize(&start);
                match &decision.verdict {
                    Verdict::Allow => {
                        if !(described && self.described_portal == portal) {
                            self.describe_for_masking(portal);
                        }
                        let inflight = self.begin_forwarded(start, decision);
                        self.push(Expect::Execute(inflight));
                        self.out.extend_from_slice(&frame);
                    }
                    Verdict::Deny(denial) => {
                        let error = denied(denial);
                        self.refuse_decided(start, decision, error, false);
                    }
                    Verdict::Review(needed) => {
                        return Ok(Some(Held {
                            needed: needed.clone(),
                            frame,
                            start,
                            simple: false,
                        }));
                    }
                }
            }
            b'C' => {
                match wire::parse_target(body, "Close") {
                    Ok((b'S', name)) => {
                        self.statements.remove(name);
                    }
                    Ok((_, name)) => {
                        self.portals.remove(name);
                    }
                    Err(e) => return Err(self.fatal(e)),
                }
                self.out.extend_from_slice(&frame);
            }
            b'S' => {
                self.push(Expect::Sync);
                self.out.extend_from_slice(&frame);
            }
            b'D' => {
                if let Ok((b'P', portal)) = wire::parse_target(body, "Describe") {
                    self.described_portal.clear();
                    self.described_portal.push_str(portal);
                    self.portal_described = true;
                }
                self.out.extend_from_slice(&frame);
            }
            b'H' | b'c' | b'f' => self.out.extend_from_slice(&frame),
            b'F' => {
                let start = unclassified("<FunctionCall message>".into());
                let error = GatewayError::error(
                    "42501",
                    "Gatehouse does not allow the FunctionCall protocol message",
                )
                .with_hint("call the function in a SELECT statement instead");
                self.refuse(start, error, true);
            }
            b'X' => {
                self.out.extend_from_slice(&frame);
                return Err(EndReason::ClientTerminated);
            }
            other => return Err(self.fatal(WireError::UnexpectedType(other as char))),
        }
        Ok(None)
    }

    /// With masking, asks the server to describe `portal` right before it runs, so the rows
    /// that follow can be masked by column (the answer is not forwarded). Not needed when the
    /// client's own message right before the Execute described that same portal (libpq does
    /// so for every extended-protocol query): the server's answer to it, which the client
    /// gets as usual, is the plan, since the server-to-client side takes a plan from every
    /// RowDescription and drops it at the end of each command.
    fn describe_for_masking(&mut self, portal: &str) {
        if self.masking.is_some() {
            wire::describe_portal(&mut self.out, portal);
            self.push(Expect::InjectedDescribe);
        }
    }

    /// Classifies `text` and runs the masking check on it (`Err` with the reason when it uses
    /// a masked column in a way masking cannot follow), with one parse and one walk of it.
    fn classify_and_check(&self, text: &str) -> (Classification, Result<(), String>) {
        match self.masking.as_ref() {
            Some(m) if !m.relations.is_empty() => {
                gatehouse_pgsql::classify_and_check(text, &m.relations)
            }
            _ => (gatehouse_pgsql::classify(text), Ok(())),
        }
    }

    fn begin(&mut self, start: CommandStart, decision: Decision) -> InFlight {
        self.seq += 1;
        self.session.begin(self.seq, start, decision)
    }

    /// [`Self::begin`] for a command that will be forwarded: its intent goes to the audit log
    /// first.
    fn begin_forwarded(&mut self, start: CommandStart, decision: Decision) -> InFlight {
        let inflight = self.begin(start, decision);
        match self.session.audit_intent(&inflight) {
            Ok(Some(Intent::BeforeForwarding(pending))) => self.intents.push(pending),
            // Announced right before the command's own entry, so the other side knows where
            // its answer begins.
            Ok(Some(Intent::BeforeResult(pending))) => self.push(Expect::Recorded(pending)),
            Ok(None) => {}
            Err(_) => self.audit_failed = true,
        }
        inflight
    }

    /// Classifies a Parse's text and runs the masking check on it, remembering both for the
    /// rest of the session (see [`Judged`]).
    fn judge_cached(&mut self, text: &str) -> Judged {
        const MAX_CACHED: usize = 512;
        const MAX_CACHED_TEXT: usize = 4096;
        if let Some(judged) = self.classified.get(text) {
            return judged.clone();
        }
        let (classification, checked) = self.classify_and_check(text);
        let judged = Judged {
            classification: Arc::new(classification),
            masking_refusal: checked.err(),
        };
        if text.len() <= MAX_CACHED_TEXT {
            if self.classified.len() >= MAX_CACHED {
                self.classified.clear();
            }
            self.classified.insert(text.into(), judged.clone());
        }
        judged
    }

    /// SQL-level `EXECUTE name` is judged as the statement `PREPARE name` held (an EXECUTE of
    /// a name the gateway never saw prepared stays `exec`).
    /// Returns `classification` itself unless it holds an EXECUTE to rewrite.
    fn resolve_sql_prepared(&self, classification: Arc<Classification>) -> Arc<Classification> {
        if classification
            .statements()
            .iter()
            .all(|s| s.executes.is_none())
        {
            return classification;
        }
        let Classification::Statements { mut statements } = Classification::clone(&classification)
        else {
            return classification;
        };
        // A PREPARE earlier in the same message counts too.
        let mut earlier: HashMap<String, Statement> = HashMap::new();
        for statement in &mut statements {
            let prepared = statement
                .executes
                .as_ref()
                .and_then(|name| earlier.get(name).or_else(|| self.sql_prepared.get(name)));
            if let Some(p) = prepared {
                statement.kind = p.kind;
                statement.relations = p.relations.clone();
                statement.functions = p.functions.clone();
            }
            if let Some(name) = &statement.prepares {
                earlier.insert(name.clone(), statement.clone());
            }
        }
        Arc::new(Classification::Statements { statements })
    }

    fn remember_sql_prepared(&mut self, classification: &Classification) {
        for statement in classification.statements() {
            if let Some(name) = &statement.prepares {
                self.sql_prepared.insert(name.clone(), statement.clone());
            }
        }
    }

    fn push(&self, expect: Expect) {
        // The receiver lives as long as the relay; a send can only fail while it is ending.
        let _ = self.expect.send(expect);
    }

    /// Refuses a message: nothing of it reaches the server, the client gets `error` in order,
    /// and the command is recorded as denied. `with_sync` is for messages that end with their
    /// own ReadyForQuery (Query, FunctionCall).
    fn refuse(&mut self, start: CommandStart, error: GatewayError, with_sync: bool) {
        let decision = Decision::deny("gatehouse.protocol", error.message.clone());
        self.refuse_decided(start, decision, error, with_sync);
    }

    /// [`Self::refuse`] for a command the pipeline decided on.
    fn refuse_decided(
        &mut self,
        start: CommandStart,
        decision: Decision,
        error: GatewayError,
        with_sync: bool,
    ) {
        let mut bytes = BytesMut::new();
        error.encode(&mut bytes);
        let command = Some(self.begin(start, decision));
        self.push(Expect::Denied {
            error: bytes.freeze(),
            command,
        });
        wire::execute_missing_portal(&mut self.out, &self.poison);
        if with_sync {
            self.push(Expect::Sync);
            wire::sync(&mut self.out);
        }
    }

    fn fatal(&mut self, e: WireError) -> EndReason {
        let mut bytes = BytesMut::new();
        GatewayError::fatal("08P01", e.to_string()).encode(&mut bytes);
        let reason = e.to_string();
        self.push(Expect::Fatal {
            error: bytes.freeze(),
            reason: reason.clone(),
        });
        EndReason::ProtocolViolation(reason)
    }
}

/// Why the relay ends when a flush fails.
fn flush_failed(e: std::io::Error) -> EndReason {
    if e.to_string() == AUDIT_FAILED {
        EndReason::AuditFailed
    } else {
        EndReason::Io(e.to_string())
    }
}

/// A command the gateway could not classify; policy denies it.
fn unclassified(text: Arc<str>) -> CommandStart {
    CommandStart {
        text,
        params: None,
        classification: None,
    }
}

/// The NoticeResponse that tells the client its statement is held, with the review id and
/// how to approve it.
fn awaiting_notice(review: &ReviewRow) -> bytes::Bytes {
    let approvers = if review.approvers.is_empty() {
        "an administrator".to_string()
    } else {
        format!("a member of {}", review.approvers.join(" or "))
    };
    let mut out = BytesMut::new();
    GatewayError::notice(
        "01000",
        format!(
            "Gatehouse is holding this statement for approval: review {} needs {} approval(s) from {approvers} (policy {}); waiting until {}",
            review.id,
            review.approvals_needed,
            review.policy,
            gatehouse_core::time::format_rfc3339(review.expires_at),
        ),
    )
    .with_hint(format!(
        "an approver runs: gatehouse reviews approve {} (or deny it); cancel the query to stop waiting",
        review.id
    ))
    .encode(&mut out);
    out.freeze()
}

fn denied(denial: &Denial) -> GatewayError {
    GatewayError::error(
        "42501",
        format!(
            "Gatehouse denied this statement: {} (policy {})",
            denial.reason, denial.policy
        ),
    )
}

fn not_utf8(what: &str) -> GatewayError {
    GatewayError::error(
        "22021",
        format!("Gatehouse refused a {what} message whose text is not valid UTF-8"),
    )
    .with_hint("send statements in UTF-8")
}
