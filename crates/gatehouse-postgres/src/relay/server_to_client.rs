//! The server-to-client side of a relay: forwards responses in batches and pairs them with the
//! commands they complete, for the record.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::BytesMut;
use gatehouse_core::pipeline::{Completion, InFlight, SessionHandle};
use gatehouse_core::store::Outcome;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{EndReason, Expect};
use crate::framer::{FramePolicy, Framer, Unit};
use crate::wire::{self, GatewayError, LARGE_MESSAGE_LIMIT};

/// Largest row or COPY chunk held whole for masking.
const MASKED_MESSAGE_LIMIT: usize = 256 << 20;

pub(super) struct ServerPolicy {
    /// Masking needs whole DataRow and CopyData messages; otherwise they stream through.
    pub(super) whole_rows: bool,
}

impl FramePolicy for ServerPolicy {
    fn streamed(&self, tag: u8) -> bool {
        !self.whole_rows && (tag == b'D' || tag == b'd')
    }

    fn limit(&self, tag: u8) -> usize {
        if self.whole_rows && (tag == b'D' || tag == b'd') {
            MASKED_MESSAGE_LIMIT
        } else {
            LARGE_MESSAGE_LIMIT
        }
    }
}

pub(super) struct ServerToClient<R, W> {
    pub(super) framer: Framer<R>,
    pub(super) client: W,
    pub(super) out: BytesMut,
    pub(super) expect: mpsc::UnboundedReceiver<Expect>,
    pub(super) queue: VecDeque<Expect>,
    pub(super) session: SessionHandle,
    pub(super) poison: Arc<str>,
    /// DataRows seen for the command at the front of the queue.
    pub(super) rows: i64,
    /// Rows and first error of the Simple command at the front.
    pub(super) simple_rows: i64,
    pub(super) simple_error: Option<String>,
    pub(super) status: Arc<AtomicU8>,
    pub(super) policy: ServerPolicy,
    pub(super) masking: Option<Arc<crate::mask::PgMasking>>,
    /// How the columns of the current result are masked.
    pub(super) plan: Option<Vec<crate::mask::ColumnPlan>>,
    /// Values masked per rule since the last command completed.
    pub(super) masked_counts: Vec<u64>,
    /// The first rows of the current command's result, for its audit record (sessions with
    /// masking only).
    pub(super) excerpt: Option<crate::excerpt::ExcerptBuilder>,
    /// Entries ever moved into `queue`; with its length, how many have been settled.
    pub(super) announced: u64,
    /// Where in `out` the answer to the last settled entry ends: what follows belongs to
    /// entries still queued or not yet announced.
    pub(super) settled_at: usize,
    /// Intent records (see [`Expect::Recorded`]) to wait for before `out` is written, each
    /// with where in `out` the answer it holds back begins. An entry leaves only once its
    /// record is on disk, so a wait cut short (this side dropped) loses nothing.
    pub(super) held: VecDeque<(usize, gatehouse_audit::Pending)>,
    /// An intent record could not be written: the answers it held back were dropped, and the
    /// session is ending.
    pub(super) audit_failed: bool,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> ServerToClient<R, W> {
    pub(super) async fn run(&mut self) -> EndReason {
        loop {
            let unit = match self.framer.next_buffered(&self.policy) {
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
                Some(Unit::Frame(frame)) => {
                    let settled = self.settled_count();
                    let handled = self.handle(frame).await;
                    if self.settled_count() != settled {
                        self.settled_at = self.out.len();
                    }
                    self.take_recorded();
                    handled
                }
                None => {
                    if let Err(reason) = self.flush().await {
                        return reason;
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
                                Some(other) => {
                                    self.announce(other);
                                    self.release_notices();
                                    self.take_recorded();
                                }
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

    async fn flush(&mut self) -> Result<(), EndReason> {
        self.await_recorded().await?;
        if !self.out.is_empty() {
            let written = async {
                self.client.write_all(&self.out).await?;
                self.client.flush().await
            };
            written.await.map_err(|e| EndReason::Io(e.to_string()))?;
            self.out.clear();
            self.settled_at = 0;
        }
        Ok(())
    }

    /// Moves an announced entry into the queue.
    fn announce(&mut self, e: Expect) {
        self.announced += 1;
        self.queue.push_back(e);
    }

    /// How many announced entries have been answered (or dropped).
    fn settled_count(&self) -> u64 {
        self.announced - self.queue.len() as u64
    }

    /// Takes the intent records at the front of the queue: everything answered before them is
    /// in `out` up to `settled_at`, and what follows waits for them.
    fn take_recorded(&mut self) {
        while let Some(Expect::Recorded(_)) = self.queue.front() {
            if let Some(Expect::Recorded(pending)) = self.queue.pop_front() {
                self.held.push_back((self.settled_at, pending));
            }
        }
    }

    /// Waits until the audit log holds the intent of every command whose answer is in `out`
    /// and was forwarded without waiting for it, so no result reaches the client before its
    /// statement is on record. The records are usually on disk already: the sync ran while the
    /// server worked. When one cannot be written, the answers from its command on are dropped
    /// and the session ends.
    pub(super) async fn await_recorded(&mut self) -> Result<(), EndReason> {
        let announced = self.drain_announced();
        self.take_recorded();
        if self.audit_failed {
            // What they held back is gone already; `out` holds only what may be sent.
            self.held.clear();
        }
        while let Some((_, pending)) = self.held.front_mut() {
            if pending.durable().await.is_err() {
                self.withhold_unrecorded();
                return Err(EndReason::AuditFailed);
            }
            self.held.pop_front();
        }
        announced
    }

    /// Drops, for good, the answers in `out` not confirmed recorded: the session is ending
    /// without a record of the commands they answer. Only the gateway's own messages follow.
    pub(super) fn withhold_unrecorded(&mut self) {
        self.audit_failed = true;
        if let Some(at) = self.held.iter().map(|(at, _)| *at).min() {
            self.out.truncate(at);
            self.settled_at = self.settled_at.min(at);
        }
        self.held.clear();
    }

    /// Sends the notices at the front of the queue: everything announced before them has been
    /// answered. Called only between whole server messages.
    fn release_notices(&mut self) {
        while let Some(Expect::Notice(_)) = self.queue.front() {
            if let Some(Expect::Notice(bytes)) = self.queue.pop_front() {
                self.out.extend_from_slice(&bytes);
                self.settled_at = self.out.len();
            }
        }
    }

    /// Moves everything the client side has announced into the local queue.
    fn drain_announced(&mut self) -> Result<(), EndReason> {
        while let Ok(e) = self.expect.try_recv() {
            if let Expect::Fatal { error, reason } = e {
                self.out.extend_from_slice(&error);
                return Err(EndReason::ProtocolViolation(reason));
            }
            self.announce(e);
        }
        Ok(())
    }

    async fn handle(&mut self, frame: BytesMut) -> Result<(), EndReason> {
        let frame = match self.masking.clone() {
            Some(masking) => {
                // The client side may have announced an injected Describe this very answer
                // belongs to: take everything announced before deciding.
                self.drain_announced()?;
                match self.mask(masking, frame) {
                    Ok(Some(f)) => f,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(EndReason::MaskingFailed(e.to_string())),
                }
            }
            None => frame,
        };
        let result = self.handle_frame(frame).await;
        self.release_notices();
        result
    }

    /// Masks one whole server message. `None`: the message is the gateway's own (the answer
    /// to an injected Describe) and is not forwarded.
    fn mask(
        &mut self,
        masking: Arc<crate::mask::PgMasking>,
        frame: BytesMut,
    ) -> Result<Option<BytesMut>, crate::mask::MaskError> {
        let injected = matches!(self.queue.front(), Some(Expect::InjectedDescribe));
        let replaced = match frame[0] {
            b'T' => {
                self.plan = Some(masking.plan(&frame[5..])?);
                if let Some(excerpt) = &mut self.excerpt {
                    excerpt.describe(&frame[5..])?;
                }
                if injected {
                    self.queue.pop_front();
                    return Ok(None);
                }
                None
            }
            b'n' if injected => {
                self.queue.pop_front();
                self.plan = None;
                return Ok(None);
            }
            b'D' => {
                self.rows += 1;
                if self.plan.is_none() && masking.has_column_rules() {
                    return Err(crate::mask::MaskError::NoPlan);
                }
                let masked =
                    masking.data_row(&frame, self.plan.as_deref(), &mut self.masked_counts)?;
                if let Some(excerpt) = &mut self.excerpt {
                    excerpt.row(masked.as_deref().unwrap_or(&frame))?;
                }
                masked
            }
            b'd' => masking.copy_data(&frame, &mut self.masked_counts)?,
            b'H' => {
                crate::mask::check_copy_out(&frame)?;
                None
            }
            b'E' | b'N' => {
                if injected && frame[0] == b'E' {
                    // The Describe failed; the Execute after it is skipped by the server and
                    // this error stands for it.
                    self.queue.pop_front();
                }
                masking.fields(&frame, &mut self.masked_counts)?
            }
            b'A' => masking.notification(&frame, &mut self.masked_counts)?,
            b'C' | b'Z' => {
                self.plan = None;
                None
            }
            _ => None,
        };
        Ok(Some(replaced.unwrap_or(frame)))
    }

    async fn handle_frame(&mut self, frame: BytesMut) -> Result<(), EndReason> {
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
            // Passed over on the way to a later entry: what followed the last settled entry
            // waits for it, as it would have at the front.
            Expect::Recorded(pending) => {
                self.held.push_back((self.settled_at, pending));
                Ok(())
            }
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
        let masked = match &self.masking {
            Some(m) if self.masked_counts.iter().any(|n| *n > 0) => {
                let named = crate::oneshot::named_counts(&m.rule_names(), &self.masked_counts);
                self.masked_counts.iter_mut().for_each(|n| *n = 0);
                named
            }
            _ => Vec::new(),
        };
        let done = Completion {
            outcome,
            rows,
            code,
            masked,
            excerpt: self.excerpt.as_mut().and_then(|e| e.take()),
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
    pub(super) fn in_flight(&mut self) -> bool {
        while let Ok(e) = self.expect.try_recv() {
            self.queue.push_back(e);
        }
        self.queue
            .iter()
            .any(|e| matches!(e, Expect::Simple(_) | Expect::Execute(_)))
    }

    /// Records commands that never got an answer because the session ended, and delivers a
    /// protocol-violation error the client side announced just before it stopped.
    pub(super) async fn abandon_pending(&mut self) {
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
