//! The authorized session: relays messages both ways and feeds every statement through the
//! pipeline.
//!
//! Each direction runs as its own future so that a client busy sending COPY data and a server
//! busy sending rows never wait on each other. The client-to-server side decodes the messages
//! that carry statements (Query, Parse, Bind, Execute), asks the pipeline, and tells the
//! server-to-client side, through an in-order queue, which responses complete which command.
//! Output is written in batches: a direction flushes only when it has nothing more buffered.
//!
//! A refused message is not simply dropped: the server must see the same transaction semantics
//! it would for a failed statement. It is replaced by an Execute of a portal that cannot exist,
//! which the server fails with SQLSTATE 34000 (aborting the transaction and skipping to Sync,
//! as for any error), and the server-to-client side swaps that error for the gateway's own.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::{Bytes, BytesMut};
use gatehouse_core::auth::AuthError;
use gatehouse_core::classify::{Classification, Statement};
use gatehouse_core::pipeline::{
    CommandStart, Completion, Decision, Denial, InFlight, ReviewNeeded, SessionHandle, Verdict,
    cap_params,
};
use gatehouse_core::store::Outcome;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::framer::{FramePolicy, Framer, Unit};
use crate::wire::{self, GatewayError, LARGE_MESSAGE_LIMIT, SMALL_MESSAGE_LIMIT, WireError};

/// Why a relayed session ended; recorded as the session's end reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    ClientTerminated,
    ClientClosed,
    ServerClosed,
    ProtocolViolation(String),
    RecordingFailed,
    /// The session's token was revoked or expired while it ran.
    CredentialInvalid(String),
    /// The client left a transaction open and idle for too long.
    IdleInTransaction,
    Io(String),
}

impl EndReason {
    pub fn as_record(&self) -> String {
        match self {
            EndReason::ClientTerminated => "client_terminated".into(),
            EndReason::ClientClosed => "client_closed".into(),
            EndReason::ServerClosed => "server_closed".into(),
            EndReason::ProtocolViolation(m) => format!("protocol_violation: {m}"),
            EndReason::RecordingFailed => "recording_failed".into(),
            EndReason::CredentialInvalid(m) => format!("credential_invalid: {m}"),
            EndReason::IdleInTransaction => "idle_in_transaction_timeout".into(),
            EndReason::Io(m) => format!("io_error: {m}"),
        }
    }
}

/// What the server-to-client side must expect, in the order the client sent it.
enum Expect {
    /// A Query (or refused FunctionCall): ends at ReadyForQuery.
    Simple(InFlight),
    /// An Execute: ends at CommandComplete, EmptyQueryResponse, PortalSuspended or an error.
    Execute(InFlight),
    /// A Sync: the server answers it with ReadyForQuery.
    Sync,
    /// A refused message, replaced by the poison Execute; `error` goes to the client instead of
    /// the server's answer.
    Denied {
        error: Bytes,
        command: Option<InFlight>,
    },
    /// The client broke the protocol: send `error` and end the session.
    Fatal { error: Bytes, reason: String },
}

/// Limits for one session's relay.
#[derive(Clone, Copy)]
pub struct RelayLimits {
    pub max_message_bytes: usize,
    /// How often the session's credential is checked again.
    pub credential_recheck: std::time::Duration,
    /// How long a client may leave a transaction open without sending anything; `None` for
    /// no limit.
    pub idle_in_transaction: Option<std::time::Duration>,
}

/// How a relay ended.
pub struct RelayEnd {
    pub reason: EndReason,
    /// A statement was still running on the server when the session ended.
    pub in_flight: bool,
}

/// Relays until either side ends, then records any command left without an answer.
pub async fn relay<C, S>(
    client: C,
    server: S,
    session: SessionHandle,
    limits: RelayLimits,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (client_read, client_write) = tokio::io::split(client);
    let (server_read, server_write) = tokio::io::split(server);
    let (expect_tx, expect_rx) = mpsc::unbounded_channel();
    // The transaction status of the last ReadyForQuery ('I', 'T' or 'E'), written by the
    // server side, read by the client side when it waits for input.
    let status = Arc::new(AtomicU8::new(b'I'));
    let poison: Arc<str> = format!(
        "gatehouse_refused_{}",
        hex::encode(rand::random::<[u8; 8]>())
    )
    .into();

    let mut upstream = ClientToServer {
        framer: Framer::new(client_read),
        server: server_write,
        out: BytesMut::with_capacity(16 * 1024),
        expect: expect_tx,
        session: session.clone(),
        statements: HashMap::new(),
        portals: HashMap::new(),
        sql_prepared: HashMap::new(),
        classified: HashMap::new(),
        seq: 0,
        poison: poison.clone(),
        policy: ClientPolicy(limits),
        status: status.clone(),
        idle_in_transaction: limits.idle_in_transaction,
    };
    let mut downstream = ServerToClient {
        framer: Framer::new(server_read),
        client: client_write,
        out: BytesMut::with_capacity(16 * 1024),
        expect: expect_rx,
        queue: VecDeque::new(),
        session,
        poison,
        rows: 0,
        simple_rows: 0,
        simple_error: None,
        status,
    };
    let checker = downstream.session.clone();
    let reason = tokio::select! {
        r = upstream.run() => r,
        r = downstream.run() => r,
        r = recheck_credential(&checker, limits.credential_recheck) => r,
    };
    match &reason {
        EndReason::CredentialInvalid(why) => {
            GatewayError::fatal("28000", format!("Gatehouse ended this session: {why}"))
                .with_hint("connect again with a valid token")
                .encode(&mut downstream.out);
        }
        EndReason::IdleInTransaction => {
            GatewayError::fatal(
                "25P03",
                "Gatehouse ended this session: it stayed idle inside a transaction for too long; the transaction was rolled back",
            )
            .with_hint("commit or roll back promptly; connect again")
            .encode(&mut downstream.out);
        }
        _ => {}
    }
    let in_flight = downstream.in_flight();
    downstream.abandon_pending().await;
    RelayEnd { reason, in_flight }
}

/// Ends the session when its token is revoked or expires. A store that cannot be reached does
/// not end sessions (the recorder refuses commands then); it is retried at the next interval.
async fn recheck_credential(session: &SessionHandle, every: std::time::Duration) -> EndReason {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match session.check_credential().await {
            Ok(()) => {}
            Err(AuthError::Unavailable(e)) => {
                tracing::warn!(error = %e, "cannot re-check the session's credential; will retry");
            }
            Err(e) => return EndReason::CredentialInvalid(e.to_string()),
        }
    }
}

// ---- client to server -------------------------------------------------------------------------

struct ClientPolicy(RelayLimits);

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

/// A statement as parsed: its text and what it does (classified once, at Parse).
#[derive(Clone)]
struct Prepared {
    text: Arc<str>,
    classification: Arc<Classification>,
}

/// A portal as bound: the statement it runs and its parameters, for the record.
struct Portal {
    statement: Prepared,
    params: Vec<Option<String>>,
}

struct ClientToServer<R, W> {
    framer: Framer<R>,
    server: W,
    out: BytesMut,
    expect: mpsc::UnboundedSender<Expect>,
    session: SessionHandle,
    statements: HashMap<String, Prepared>,
    portals: HashMap<String, Portal>,
    /// SQL-level prepared statements (`PREPARE name AS ...`), by name.
    sql_prepared: HashMap<String, Statement>,
    /// Classifications of statement texts seen in this session. Drivers re-Parse the same
    /// unnamed statement for every execution; classification is a pure function of the text.
    classified: HashMap<Arc<str>, Arc<Classification>>,
    seq: i64,
    poison: Arc<str>,
    policy: ClientPolicy,
    status: Arc<AtomicU8>,
    idle_in_transaction: Option<std::time::Duration>,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> ClientToServer<R, W> {
    async fn run(&mut self) -> EndReason {
        loop {
            let unit = match self.framer.next_buffered(&self.policy) {
                Ok(u) => u,
                Err(e) => return self.fatal(e),
            };
            match unit {
                Some(Unit::Streamed { bytes, .. }) => self.out.extend_from_slice(&bytes),
                Some(Unit::Frame(frame)) => {
                    if let Err(reason) = self.handle(frame) {
                        if let Err(e) = self.flush().await {
                            return EndReason::Io(e.to_string());
                        }
                        return reason;
                    }
                }
                None => {
                    if let Err(e) = self.flush().await {
                        return EndReason::Io(e.to_string());
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
        if !self.out.is_empty() {
            self.server.write_all(&self.out).await?;
            self.server.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Handles one whole client message; `Err` ends the session.
    fn handle(&mut self, frame: BytesMut) -> Result<(), EndReason> {
        let body = &frame[5..];
        match frame[0] {
            b'Q' => {
                let text = match wire::parse_query(body) {
                    Ok(t) => t,
                    Err(WireError::NotUtf8(what)) => {
                        let start = unclassified(
                            String::from_utf8_lossy(&body[..body.len().saturating_sub(1)]).into(),
                        );
                        self.refuse(start, not_utf8(what), true);
                        return Ok(());
                    }
                    Err(e) => return Err(self.fatal(e)),
                };
                let classified = self.classify(text);
                let classification = self.resolve_sql_prepared(classified);
                let start = CommandStart {
                    text: text.into(),
                    params: None,
                    classification: Some(Arc::new(classification)),
                };
                let decision = self.session.authorize(&start);
                match &decision.verdict {
                    Verdict::Allow => {
                        if let Some(c) = &start.classification {
                            self.remember_sql_prepared(c);
                        }
                        let inflight = self.begin(start, decision);
                        self.push(Expect::Simple(inflight));
                        self.out.extend_from_slice(&frame);
                    }
                    Verdict::Deny(denial) => {
                        let error = denied(denial);
                        self.refuse_decided(start, decision, error, true);
                    }
                    Verdict::Review(review) => {
                        let error = needs_review(review);
                        self.refuse_decided(start, decision, error, true);
                    }
                }
            }
            b'P' => match wire::parse_parse(body) {
                Ok((name, query)) => {
                    // Classified once here; enforced at every Execute of this statement.
                    let classified = self.classify(query);
                    let classification = Arc::new(self.resolve_sql_prepared(classified));
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
                        Classification::Statements { .. } => None,
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
                        let inflight = self.begin(start, decision);
                        self.push(Expect::Execute(inflight));
                        self.out.extend_from_slice(&frame);
                    }
                    Verdict::Deny(denial) => {
                        let error = denied(denial);
                        self.refuse_decided(start, decision, error, false);
                    }
                    Verdict::Review(review) => {
                        let error = needs_review(review);
                        self.refuse_decided(start, decision, error, false);
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
            b'D' | b'H' | b'c' | b'f' => self.out.extend_from_slice(&frame),
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
        Ok(())
    }

    fn begin(&mut self, start: CommandStart, decision: Decision) -> InFlight {
        self.seq += 1;
        self.session.begin(self.seq, start, decision)
    }

    /// Classifies `text`, remembering the result for the rest of the session.
    fn classify(&mut self, text: &str) -> Classification {
        const MAX_CACHED: usize = 512;
        const MAX_CACHED_TEXT: usize = 4096;
        if let Some(c) = self.classified.get(text) {
            return Classification::clone(c);
        }
        let c = gatehouse_pgsql::classify(text);
        if text.len() <= MAX_CACHED_TEXT {
            if self.classified.len() >= MAX_CACHED {
                self.classified.clear();
            }
            self.classified.insert(text.into(), Arc::new(c.clone()));
        }
        c
    }

    /// SQL-level `EXECUTE name` is judged as the statement `PREPARE name` held (an EXECUTE of
    /// a name the gateway never saw prepared stays `exec`).
    fn resolve_sql_prepared(&self, classification: Classification) -> Classification {
        let Classification::Statements { mut statements } = classification else {
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
        Classification::Statements { statements }
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

/// A command the gateway could not classify; policy denies it.
fn unclassified(text: Arc<str>) -> CommandStart {
    CommandStart {
        text,
        params: None,
        classification: None,
    }
}

fn needs_review(review: &ReviewNeeded) -> GatewayError {
    let approvers = if review.approvers.is_empty() {
        "an approver".to_string()
    } else {
        format!("a member of {}", review.approvers.join(" or "))
    };
    GatewayError::error(
        "42501",
        format!(
            "this statement needs {} approval(s) from {approvers} (policy {}), and this version of Gatehouse cannot hold statements for approval yet",
            review.approvals, review.policy
        ),
    )
    .with_hint("run it through a connection or identity whose policy allows it without approval")
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

// ---- server to client -------------------------------------------------------------------------

struct ServerPolicy;

impl FramePolicy for ServerPolicy {
    fn streamed(&self, tag: u8) -> bool {
        tag == b'D' || tag == b'd'
    }

    fn limit(&self, _: u8) -> usize {
        LARGE_MESSAGE_LIMIT
    }
}

struct ServerToClient<R, W> {
    framer: Framer<R>,
    client: W,
    out: BytesMut,
    expect: mpsc::UnboundedReceiver<Expect>,
    queue: VecDeque<Expect>,
    session: SessionHandle,
    poison: Arc<str>,
    /// DataRows seen for the command at the front of the queue.
    rows: i64,
    /// Rows and first error of the Simple command at the front.
    simple_rows: i64,
    simple_error: Option<String>,
    status: Arc<AtomicU8>,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> ServerToClient<R, W> {
    async fn run(&mut self) -> EndReason {
        loop {
            let unit = match self.framer.next_buffered(&ServerPolicy) {
                Ok(u) => u,
                Err(e) => return EndReason::Io(format!("server: {e}")),
            };
            let result = match unit {
                Some(Unit::Streamed { tag, bytes }) => {
                    if tag == Some(b'D') {
                        self.rows += 1;
                    }
                    self.out.extend_from_slice(&bytes);
                    Ok(())
                }
                Some(Unit::Frame(frame)) => self.handle(frame).await,
                None => {
                    if let Err(e) = self.flush().await {
                        return EndReason::Io(e.to_string());
                    }
                    tokio::select! {
                        biased;
                        filled = self.framer.fill() => match filled {
                            Ok(true) => Ok(()),
                            Ok(false) | Err(_) => return EndReason::ServerClosed,
                        },
                        expect = self.expect.recv() => {
                            match expect {
                                Some(Expect::Fatal { error, reason }) => {
                                    self.out.extend_from_slice(&error);
                                    let _ = self.flush().await;
                                    return EndReason::ProtocolViolation(reason);
                                }
                                Some(other) => self.queue.push_back(other),
                                None => {}
                            }
                            Ok(())
                        }
                    }
                }
            };
            if let Err(reason) = result {
                let _ = self.flush().await;
                return reason;
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.client.write_all(&self.out).await?;
            self.client.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Moves everything the client side has announced into the local queue.
    fn drain_announced(&mut self) -> Result<(), EndReason> {
        while let Ok(e) = self.expect.try_recv() {
            if let Expect::Fatal { error, reason } = e {
                self.out.extend_from_slice(&error);
                return Err(EndReason::ProtocolViolation(reason));
            }
            self.queue.push_back(e);
        }
        Ok(())
    }

    async fn handle(&mut self, frame: BytesMut) -> Result<(), EndReason> {
        match frame[0] {
            b'C' | b'I' | b's' => {
                self.drain_announced()?;
                let tagged = (frame[0] == b'C')
                    .then(|| wire::command_complete_rows(&frame[5..]))
                    .flatten();
                match self.queue.front() {
                    Some(Expect::Execute(_)) => {
                        let rows = tagged.unwrap_or(self.rows);
                        if let Some(Expect::Execute(cmd)) = self.queue.pop_front() {
                            self.complete(cmd, Outcome::Ok, Some(rows), None).await?;
                        }
                    }
                    Some(Expect::Simple(_)) => {
                        self.simple_rows += tagged.unwrap_or(self.rows);
                    }
                    _ => {}
                }
                self.rows = 0;
                self.out.extend_from_slice(&frame);
            }
            b'E' => {
                self.drain_announced()?;
                let body = &frame[5..];
                let code = wire::error_field(body, b'C').map(str::to_string);
                let is_poison = code.as_deref() == Some("34000")
                    && wire::error_field(body, b'M').is_some_and(|m| m.contains(&*self.poison));
                if is_poison {
                    self.answer_poison().await?;
                } else {
                    self.out.extend_from_slice(&frame);
                    match self.queue.front() {
                        Some(Expect::Execute(_)) => {
                            if let Some(Expect::Execute(cmd)) = self.queue.pop_front() {
                                self.complete(cmd, Outcome::Error, None, code).await?;
                            }
                        }
                        Some(Expect::Simple(_)) if self.simple_error.is_none() => {
                            self.simple_error = code;
                        }
                        _ => {}
                    }
                }
                self.rows = 0;
            }
            b'Z' => {
                self.drain_announced()?;
                if let Some(&status) = frame.get(5) {
                    self.status.store(status, Ordering::Relaxed);
                }
                self.out.extend_from_slice(&frame);
                self.ready_for_query().await?;
            }
            _ => self.out.extend_from_slice(&frame),
        }
        Ok(())
    }

    /// The server failed the poison Execute: send the gateway's error in its place.
    async fn answer_poison(&mut self) -> Result<(), EndReason> {
        while let Some(front) = self.queue.pop_front() {
            match front {
                Expect::Denied { error, command } => {
                    self.out.extend_from_slice(&error);
                    if let Some(cmd) = command {
                        self.complete(cmd, Outcome::Denied, None, Some("42501".into()))
                            .await?;
                    }
                    return Ok(());
                }
                other => self.settle(other, Outcome::Unknown).await?,
            }
        }
        Ok(())
    }

    /// ReadyForQuery ends everything up to and including the first Sync or Simple command.
    async fn ready_for_query(&mut self) -> Result<(), EndReason> {
        while let Some(front) = self.queue.pop_front() {
            match front {
                Expect::Sync => break,
                Expect::Simple(cmd) => {
                    let outcome = if self.simple_error.is_some() {
                        Outcome::Error
                    } else {
                        Outcome::Ok
                    };
                    let rows = Some(self.simple_rows);
                    let code = self.simple_error.take();
                    self.simple_rows = 0;
                    self.complete(cmd, outcome, rows, code).await?;
                    break;
                }
                // Skipped by the server after an earlier error in the same pipeline.
                other => self.settle(other, Outcome::Error).await?,
            }
        }
        Ok(())
    }

    /// Records a queued command that got no answer of its own.
    async fn settle(&mut self, e: Expect, outcome: Outcome) -> Result<(), EndReason> {
        match e {
            Expect::Simple(cmd) | Expect::Execute(cmd) => {
                self.complete(cmd, outcome, None, None).await
            }
            Expect::Denied {
                command: Some(cmd), ..
            } => {
                self.complete(cmd, Outcome::Denied, None, Some("42501".into()))
                    .await
            }
            _ => Ok(()),
        }
    }

    async fn complete(
        &mut self,
        cmd: InFlight,
        outcome: Outcome,
        rows: Option<i64>,
        code: Option<String>,
    ) -> Result<(), EndReason> {
        let done = Completion {
            outcome,
            rows,
            code,
        };
        if self.session.complete(cmd, done).await.is_err() {
            let mut bytes = BytesMut::new();
            GatewayError::fatal(
                "58000",
                "Gatehouse cannot record commands right now, so it ended the session",
            )
            .with_hint("an administrator should check the gateway's store; reconnect later")
            .encode(&mut bytes);
            self.out.extend_from_slice(&bytes);
            return Err(EndReason::RecordingFailed);
        }
        Ok(())
    }

    /// Whether a Query or Execute is still waiting for the server's answer.
    fn in_flight(&mut self) -> bool {
        while let Ok(e) = self.expect.try_recv() {
            self.queue.push_back(e);
        }
        self.queue
            .iter()
            .any(|e| matches!(e, Expect::Simple(_) | Expect::Execute(_)))
    }

    /// Records commands that never got an answer because the session ended, and delivers a
    /// protocol-violation error the client side announced just before it stopped.
    async fn abandon_pending(&mut self) {
        while let Ok(e) = self.expect.try_recv() {
            self.queue.push_back(e);
        }
        while let Some(e) = self.queue.pop_front() {
            if let Expect::Fatal { error, .. } = &e {
                self.out.extend_from_slice(error);
            }
            let _ = self.settle(e, Outcome::Unknown).await;
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.flush()).await;
    }
}
