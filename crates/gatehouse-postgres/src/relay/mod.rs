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

mod client_to_server;
mod server_to_client;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU8;

use bytes::{Bytes, BytesMut};
use gatehouse_core::auth::AuthError;
use gatehouse_core::pipeline::{InFlight, SessionHandle};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::framer::Framer;
use crate::wire::GatewayError;

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
    /// A result could not be masked; nothing unmasked was sent.
    MaskingFailed(String),
    /// A command's audit record could not be written, so the command was not forwarded.
    AuditFailed,
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
            EndReason::MaskingFailed(m) => format!("masking_failed: {m}"),
            EndReason::AuditFailed => "audit_failed".into(),
            EndReason::Io(m) => format!("io_error: {m}"),
        }
    }
}

/// What the server-to-client side must expect, in the order the client sent it.
pub(super) enum Expect {
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
    /// A NoticeResponse for the client, sent once everything before it has been answered
    /// (such as "this statement awaits approval").
    Notice(Bytes),
    /// A Describe of the portal the next Execute runs, added by the gateway so masking knows
    /// the result's columns; its answer (RowDescription or NoData) is not forwarded.
    InjectedDescribe,
    /// The audit intent of the command announced next, which changes nothing and was forwarded
    /// without waiting for it (`[audit] overlap_reads`): nothing the server sends from here on
    /// reaches the client before the record is on disk.
    Recorded(gatehouse_audit::Pending),
}

/// How long a session's end waits for the audit log to take the intents of reads whose answers
/// are still to be sent; past it, those answers are dropped.
const LAST_ANSWERS_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Limits for one session's relay.
#[derive(Clone, Copy)]
pub struct RelayLimits {
    pub max_message_bytes: usize,
    /// How often the session's credential is checked again.
    pub credential_recheck: std::time::Duration,
    /// How long a client may leave a transaction open without sending anything; `None` for
    /// no limit.
    pub idle_in_transaction: Option<std::time::Duration>,
    /// Rows of each result kept for the audit log (sessions with masking only; 0: none).
    pub result_excerpt_rows: usize,
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
    interrupt: Arc<crate::cancel::Interrupt>,
    masking: Option<Arc<crate::mask::PgMasking>>,
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
        interrupt,
        masking: masking.clone(),
        intents: Vec::new(),
        audit_failed: false,
        portal_described: false,
        described_portal: String::new(),
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
        plan: None,
        masked_counts: masking.as_ref().map(|m| m.new_counts()).unwrap_or_default(),
        policy: ServerPolicy {
            whole_rows: masking.is_some(),
        },
        excerpt: masking
            .as_ref()
            .and_then(|_| crate::excerpt::ExcerptBuilder::new(limits.result_excerpt_rows)),
        masking,
        announced: 0,
        settled_at: 0,
        held: VecDeque::new(),
        audit_failed: false,
    };
    let checker = downstream.session.clone();
    let reason = tokio::select! {
        r = upstream.run() => r,
        r = downstream.run() => r,
        r = recheck_credential(&checker, limits.credential_recheck) => r,
    };
    // Answers already read from the server reach the client only once the intents they wait
    // for are on disk, and before the session's last message.
    let reason = match tokio::time::timeout(LAST_ANSWERS_WAIT, downstream.await_recorded()).await {
        Ok(Ok(())) => reason,
        Ok(Err(failed)) => failed,
        Err(_) => {
            downstream.withhold_unrecorded();
            reason
        }
    };
    match &reason {
        EndReason::CredentialInvalid(why) => {
            GatewayError::fatal("28000", format!("Gatehouse ended this session: {why}"))
                .with_hint("connect again with a valid token")
                .encode(&mut downstream.out);
        }
        EndReason::AuditFailed => {
            GatewayError::fatal(
                "58000",
                "Gatehouse cannot write its audit log, so it did not run the statement (or, for a read, did not send its result) and ended the session",
            )
            .with_hint("an administrator should check the gateway's data directory; reconnect later")
            .encode(&mut downstream.out);
        }
        EndReason::MaskingFailed(why) => {
            GatewayError::fatal(
                "58000",
                format!("Gatehouse ended this session: {why}; nothing unmasked was sent"),
            )
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

use client_to_server::{ClientPolicy, ClientToServer};
use server_to_client::{ServerPolicy, ServerToClient};
