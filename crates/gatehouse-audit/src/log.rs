//! The writer: whoever holds the queue's lead (see `crate::inbox`: a caller waiting for its
//! record, or the log's own writer thread) takes every caller's queued records, writes them as
//! one batch and syncs it to disk once (group commit), so many callers share one fsync.
//!
//! The file is kept extended ahead of its last record ([`PREALLOCATE`] bytes of zeros: a sparse
//! region that costs no disk space, or with direct writes zeros written ahead by
//! `crate::zero_fill`, so that a durable write need not allocate blocks either): a record
//! written there does not change the file's size,
//! so its sync need not also commit a new size to the filesystem journal. On this project's
//! benchmark machine that took a synced 300-byte write from about 125 to 90 µs. Readers stop
//! at the first zero byte ([`crate::read`]); a clean stop cuts the region off again.
//!
//! Where the filesystem allows it, records are written with `O_DIRECT | O_DSYNC` instead of a
//! write and an `fdatasync` (see `crate::direct`): each such write is durable when it returns.
//! Records nobody waits for (strict mode's outcomes) are then kept in memory until the next
//! durable write or `SYNC_DELAY` (5 ms) of quiet, where before they sat in the page cache.
//! They do not even wake the writer while it is busy (`crate::inbox`): they wait in its queue
//! for the next record someone waits for, or its timer (at most twice `SYNC_DELAY`). A crash
//! of the process itself can lose those few milliseconds of them, as it always could lose the
//! records still queued for the writer; an intent is never lost once its statement was let
//! through.

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::json;
use tokio::sync::oneshot;

use crate::direct::DirectWriter;
use crate::inbox::{Inbox, Lead, Leader, Sender, Wake};
use crate::read::LogReader;
use crate::record::{Event, GENESIS, Record, encode_line};
use crate::zero_fill::ZeroFill;
use crate::{KEY_FILE, LOG_FILE, PUBLIC_KEY_FILE};

/// When a caller's record counts as kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `append` returns once the record is on disk (synced).
    Strict,
    /// `append` returns once the record is queued; it reaches the disk with the next batch
    /// (within milliseconds). A crash can lose the records of that window.
    Batched,
    /// Nothing is recorded. Only for measuring what the log costs (benchmarks) and throwaway
    /// development setups; the gateway warns loudly at start.
    Off,
}

/// How records reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMethod {
    /// `O_DIRECT | O_DSYNC` writes, each durable when it returns, past the page cache; where
    /// the filesystem refuses them, as [`WriteMethod::Buffered`]. The default: less CPU and
    /// less wait per durable record (see `crate::direct`).
    #[default]
    Direct,
    /// Writes into the page cache and an `fdatasync` per batch someone waits for. For
    /// filesystems whose direct I/O is slow or emulated.
    Buffered,
}

/// Why the audit log failed. Callers refuse the action they wanted to record.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the audit signing key is unusable: {0}")]
    Key(String),
    #[error("the audit log cannot be written (a write or sync failed, or its writer stopped)")]
    Stopped,
}

struct Job {
    event: Event,
    done: Option<oneshot::Sender<Result<u64, String>>>,
}

/// What the writer thread and every caller that leads a write share.
struct Shared {
    inbox: Arc<Inbox<Job>>,
    /// The file and the chain. Only the holder of the inbox's lead locks it, so the lock is
    /// never contended; it is there because leaders run on different threads.
    writer: Mutex<Writer>,
    /// Who waits for [`AuditLog::close`] to finish.
    closers: Mutex<Vec<oneshot::Sender<()>>>,
}

impl Shared {
    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|poisoned| {
            // A leader panicked mid-write: what the file and the chain hold is unknown, so
            // nothing more may be recorded.
            let writer = poisoned.into_inner();
            writer.failed.store(true, Ordering::Release);
            writer
        })
    }

    /// Writes everything queued, on the caller's thread, if the caller may lead (see
    /// [`crate::inbox`]); otherwise returns at once, and the caller's record is written by
    /// whoever writes next. One write only: what comes meanwhile is left to the writer
    /// thread, since more writes here would hold the caller's own statement back (measured
    /// worse, BENCHMARKS.md).
    fn lead(&self) {
        let mut taken = Vec::new();
        if self.inbox.lead(&mut taken, Leader::Caller) == Lead::Busy {
            return;
        }
        let mut held = HeldLead {
            inbox: &self.inbox,
            taken,
        };
        let mut writer = self.lock_writer();
        writer.last_taken = Instant::now();
        writer.write_batch(&mut held.taken);
    }

    /// [`Shared::run`], failing the log closed if it panics (a bug): every queued record's
    /// caller is refused at once and later records are refused, where the callers would
    /// otherwise wait for a writer that is gone.
    fn run_or_fail(&self) {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run())).is_err() {
            tracing::error!(
                "the audit log writer stopped on a bug; from now on every action that needs a record is refused (restart the gateway)"
            );
            self.lock_writer().failed.store(true, Ordering::Release);
            self.inbox.close();
        }
    }

    /// The writer thread: writes what callers queued and did not write themselves, makes
    /// records nobody waits for durable within [`SYNC_DELAY`], signs checkpoints when the log
    /// goes quiet, and stops the log when asked or when every handle is gone.
    fn run(&self) {
        let inbox = &self.inbox;
        let mut taken = Vec::new();
        loop {
            let Lead::Granted { closing, hung_up } = inbox.lead(&mut taken, Leader::Writer) else {
                // A caller is writing; it wakes this thread for what it leaves.
                inbox.wait(SYNC_DELAY, false);
                continue;
            };
            let mut writer = self.lock_writer();
            // Records nobody waits for are made durable once they have waited long enough,
            // also while more keep coming.
            if writer.unsynced_for() >= SYNC_DELAY {
                writer.sync_pending();
            }
            let wrote = !taken.is_empty();
            if wrote {
                writer.last_taken = Instant::now();
                writer.write_batch(&mut taken);
            }
            if closing || hung_up {
                writer.close(inbox);
                drop(writer);
                let closers = std::mem::take(
                    &mut *self.closers.lock().unwrap_or_else(PoisonError::into_inner),
                );
                for done in closers {
                    let _ = done.send(());
                }
                return;
            }
            let (timeout, idle) = writer.next_wait(wrote);
            drop(writer);
            if inbox.release(true, &mut taken) {
                // Records someone waits for came during the write.
                continue;
            }
            inbox.wait(timeout, idle);
        }
    }
}

/// A caller's lead, given up when dropped: also if the write panicked, so that the next
/// leader finds the writer's lock poisoned and fails the log closed instead of every caller
/// waiting for a lead that is never given up.
struct HeldLead<'a> {
    inbox: &'a Inbox<Job>,
    /// The batch being written; emptied by the write.
    taken: Vec<Job>,
}

impl Drop for HeldLead<'_> {
    fn drop(&mut self) {
        self.inbox.release(false, &mut self.taken);
    }
}

/// A record queued for the log; [`Pending::wait`] returns once it is on disk (strict) or at
/// once (batched).
pub struct Pending {
    /// The writer's answer, until it has come.
    answer: Option<oneshot::Receiver<Result<u64, String>>>,
    /// The log, until the waiter has tried to lead the write of its record (strict
    /// durability).
    lead: Option<Arc<Shared>>,
    /// How the wait ended when it failed, so that waiting again fails the same way.
    failure: Option<WaitFailure>,
}

#[derive(Clone)]
enum WaitFailure {
    Io(String),
    Stopped,
}

impl Pending {
    fn new(answer: Option<oneshot::Receiver<Result<u64, String>>>) -> Self {
        Pending {
            answer,
            lead: None,
            failure: None,
        }
    }

    /// Has the writer thread write the record at once instead of leaving it for the waiter to
    /// lead: for a caller that does something else before it waits (a read forwarded while its
    /// record is written).
    pub fn write_soon(&mut self) {
        if let Some(shared) = self.lead.take() {
            shared.inbox.wake_writer();
        }
    }

    pub async fn wait(mut self) -> Result<(), AuditError> {
        self.durable().await
    }

    /// [`Pending::wait`] for a caller whose wait may be cancelled (one direction of a relay,
    /// dropped when the other ends): the record is kept, and waiting again picks up where the
    /// wait stopped. Once answered, every later call returns the same answer at once.
    pub async fn durable(&mut self) -> Result<(), AuditError> {
        if let Some(answer) = &mut self.answer {
            // Writing everything queued, this one's record with it, unless a write is in
            // progress (then the writer writes it next). Synchronous: a dropped future cannot
            // leave a write half done.
            if let Some(shared) = self.lead.take() {
                shared.lead();
            }
            // Polling the receiver by reference leaves it in place if this future is dropped.
            let outcome = answer.await;
            self.answer = None;
            match outcome {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => self.failure = Some(WaitFailure::Io(e)),
                Err(_) => self.failure = Some(WaitFailure::Stopped),
            }
        }
        match &self.failure {
            None => Ok(()),
            Some(WaitFailure::Io(e)) => Err(AuditError::Io(std::io::Error::other(e.clone()))),
            Some(WaitFailure::Stopped) => Err(AuditError::Stopped),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Nobody will lead the write of this record: the writer thread must.
        if let (Some(shared), Some(_)) = (&self.lead, &self.answer) {
            shared.inbox.wake_writer();
        }
    }
}

/// A handle to the audit log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: Sender<Job>,
    shared: Arc<Shared>,
    durability: Durability,
    dir: PathBuf,
    /// Set by the writer once a write or sync failed: from then on nothing can be recorded,
    /// so every caller is refused (what a failed `fsync` left on disk cannot be trusted, and
    /// the chain cannot continue from an unknown state).
    failed: Arc<AtomicBool>,
    /// The byte offset up to which the writer has finished writing records (see
    /// [`AuditLog::reader`]).
    written: Arc<AtomicU64>,
}

/// Where the chain stands.
struct Tail {
    seq: u64,
    hash: String,
    since_checkpoint: u64,
    /// The byte offset just past the last record: where the next one is written.
    end: u64,
}

impl AuditLog {
    /// Opens (creating) the log in `dir`, recovering a torn last line, and starts the writer.
    /// A checkpoint is signed every `checkpoint_every` records and when the log goes quiet.
    pub async fn open(
        dir: &Path,
        durability: Durability,
        checkpoint_every: u64,
    ) -> Result<AuditLog, AuditError> {
        Self::open_with(dir, durability, checkpoint_every, WriteMethod::default()).await
    }

    /// [`AuditLog::open`], writing records by `method`.
    pub async fn open_with(
        dir: &Path,
        durability: Durability,
        checkpoint_every: u64,
        method: WriteMethod,
    ) -> Result<AuditLog, AuditError> {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let key = load_or_create_key(dir)?;
        let path = dir.join(LOG_FILE);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        let (tail, recovered) = recover(&mut file, &path)?;
        let failed = Arc::new(AtomicBool::new(false));
        let mut writer = Writer::new(
            file,
            key,
            tail,
            checkpoint_every,
            durability,
            failed.clone(),
        );
        if method == WriteMethod::Direct {
            writer.attach_direct(&path);
        }
        if let Some(event) = recovered {
            writer.write_batch(&mut vec![Job { event, done: None }]);
            writer.sync_pending();
            if failed.load(Ordering::Acquire) {
                return Err(AuditError::Io(std::io::Error::other(
                    "cannot write the audit log after recovering it",
                )));
            }
        }
        // Unbounded: strict callers wait for their own records, which bounds those by the
        // number of callers; the rest are taken at least every few milliseconds.
        let inbox = Inbox::new();
        let written = writer.written.clone();
        let shared = Arc::new(Shared {
            inbox: inbox.clone(),
            writer: Mutex::new(writer),
            closers: Mutex::new(Vec::new()),
        });
        let thread_shared = shared.clone();
        // A thread of its own: the writes nobody leads, timed syncs and checkpoints block,
        // and must not hold up the runtime's workers (every session's relay runs on them).
        let thread = std::thread::Builder::new()
            .name("gatehouse-audit".into())
            .spawn(move || thread_shared.run_or_fail())?;
        inbox.set_writer(thread.thread().clone());
        Ok(AuditLog {
            tx: inbox.sender(),
            shared,
            durability,
            dir: dir.to_path_buf(),
            failed,
            written,
        })
    }

    /// Reads the records this log has finished writing. A reader of the file itself may meet
    /// a record while it is being written (a read is not atomic against a write) and take it
    /// for a torn one; this one stops where the last complete write ended, so verifying a
    /// busy gateway's own log never reports damage that is not there.
    pub fn reader(&self) -> std::io::Result<LogReader<std::io::Take<std::fs::File>>> {
        let limit = self.written.load(Ordering::Acquire);
        let file = std::fs::File::open(self.dir.join(LOG_FILE))?;
        Ok(LogReader::new(std::io::Read::take(file, limit)))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `false` when durability is [`Durability::Off`]: callers need not even build records.
    pub fn is_on(&self) -> bool {
        self.durability != Durability::Off
    }

    /// Records `event`. With [`Durability::Strict`] it returns once the record is synced and
    /// gives its sequence number; with batched, once queued (sequence 0).
    pub async fn append(&self, event: Event) -> Result<u64, AuditError> {
        self.enqueue(event)?.wait().await.map(|_| 0)
    }

    /// Queues `event` without waiting; wait on the result before acting on what it records
    /// (several callers' records then share one sync).
    pub fn enqueue(&self, event: Event) -> Result<Pending, AuditError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(AuditError::Stopped);
        }
        let (done, wait, wake) = match self.durability {
            Durability::Off => return Ok(Pending::new(None)),
            Durability::Batched => (None, None, Wake::Later),
            Durability::Strict => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx), Wake::Lead)
            }
        };
        self.tx
            .send(Job { event, done }, wake)
            .map_err(|_| AuditError::Stopped)?;
        let mut pending = Pending::new(wait);
        if wake == Wake::Lead {
            pending.lead = Some(self.shared.clone());
        }
        Ok(pending)
    }

    /// Stops the log cleanly: writes what is queued, signs a last checkpoint, cuts the
    /// preallocated region off the file and syncs. Later appends are refused. For a graceful
    /// shutdown; a crash instead leaves the region, which the next start cuts.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        self.shared
            .closers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(done);
        if self.shared.inbox.ask_to_close().is_ok() {
            let _ = closed.await;
        }
    }

    /// Records `event` without waiting, for places that cannot wait (their failure is logged).
    pub fn append_detached(&self, event: Event) {
        if self.durability == Durability::Off {
            return;
        }
        if self
            .tx
            .send(Job { event, done: None }, Wake::Later)
            .is_err()
        {
            tracing::error!("the audit log writer has stopped; a record was not kept");
        }
    }
}

struct Writer {
    file: std::fs::File,
    /// Where the next record goes: the end of the records.
    end: u64,
    /// The file's length: the records and the preallocated region after them.
    allocated: u64,
    key: Ed25519KeyPair,
    tail: Tail,
    checkpoint_every: u64,
    /// How long a batch collects records before it is written: nothing for strict (callers
    /// wait, and the next batch forms while this one syncs), a few milliseconds for batched
    /// (nobody waits, so fewer, larger syncs).
    window: Duration,
    /// The encoded batch, reused.
    buf: Vec<u8>,
    /// Since when records were written (or, with direct writes, kept in memory) that are not
    /// durable yet (strict mode writes records nobody waits for, such as outcomes, without a
    /// sync of their own; the next waited-for record's sync covers them, or a sync of their
    /// own once they have waited [`SYNC_DELAY`], however busy the log).
    unsynced_since: Option<Instant>,
    /// When records were last taken from the queue, by the writer thread or a leader: until
    /// [`SYNC_DELAY`] after it, the writer thread sleeps as busy.
    last_taken: Instant,
    /// Shared with every [`AuditLog`] handle; see there.
    failed: Arc<AtomicBool>,
    /// `end`, published after each write for [`AuditLog::reader`].
    written: Arc<AtomicU64>,
    /// Durable writes past the page cache, where the filesystem allows them; records are then
    /// kept in memory until they are written durably (see [`crate::direct`]).
    direct: Option<DirectWriter>,
    /// With direct writes, the thread that keeps written zeros ahead of the records (see
    /// [`crate::zero_fill`]); without it, the file is extended sparsely.
    zero_fill: Option<ZeroFill>,
}

/// How far the file is extended ahead of its records each time they reach its end.
pub const PREALLOCATE: u64 = 16 << 20;

/// How long the writer keeps sleeping as busy after messages last came (woken only for records
/// someone waits for), and so how long records nobody waits for may stay queued or unsynced
/// in strict mode: at most twice this.
const SYNC_DELAY: Duration = Duration::from_millis(5);

/// How long the log must be quiet before it signs a checkpoint over its last records.
const CHECKPOINT_QUIET: Duration = Duration::from_secs(10);

/// The collection window of batched durability, and so its loss window on a crash.
pub const BATCHED_WINDOW: Duration = Duration::from_millis(5);

impl Writer {
    fn new(
        file: std::fs::File,
        key: Ed25519KeyPair,
        tail: Tail,
        checkpoint_every: u64,
        durability: Durability,
        failed: Arc<AtomicBool>,
    ) -> Writer {
        // Recovery left the file ending at its last record.
        let end = tail.end;
        Writer {
            file,
            end,
            allocated: end,
            key,
            tail,
            checkpoint_every: checkpoint_every.max(1),
            window: match durability {
                Durability::Strict | Durability::Off => Duration::ZERO,
                Durability::Batched => BATCHED_WINDOW,
            },
            buf: Vec::new(),
            unsynced_since: None,
            last_taken: Instant::now(),
            failed,
            written: Arc::new(AtomicU64::new(end)),
            direct: None,
            zero_fill: None,
        }
    }

    /// Writes records with direct, synchronous writes from now on, if the log's filesystem
    /// allows it (see [`crate::direct`]).
    fn attach_direct(&mut self, path: &Path) {
        self.direct = DirectWriter::open(path, self.end);
        if self.direct.is_some() {
            // The first direct write padded the file to a whole block.
            self.allocated = self.file.metadata().map_or(self.end, |m| m.len());
            self.zero_fill = ZeroFill::start(path, self.allocated);
        }
    }

    /// How long the writer thread sleeps after a round, and whether as idle (any message
    /// wakes it). After writing a batched window it collects the next one. While messages
    /// keep coming (`last_taken` within [`SYNC_DELAY`]) it sleeps as busy, until records
    /// written without a sync are due. Once quiet, those are made durable, a log quiet for
    /// long gets a checkpoint (so its last records are covered by a signature), and it sleeps
    /// as idle until the next checkpoint would be due.
    fn next_wait(&mut self, wrote: bool) -> (Duration, bool) {
        if wrote && !self.window.is_zero() {
            return (self.window, false);
        }
        let quiet = self.last_taken.elapsed();
        if quiet < SYNC_DELAY {
            let until_sync = match self.unsynced_since {
                Some(_) => SYNC_DELAY.saturating_sub(self.unsynced_for()),
                None => SYNC_DELAY,
            };
            return ((SYNC_DELAY - quiet).min(until_sync), false);
        }
        self.sync_pending();
        if quiet >= CHECKPOINT_QUIET {
            self.checkpoint_if_due(true);
        }
        let until_checkpoint = CHECKPOINT_QUIET.saturating_sub(quiet);
        (
            if until_checkpoint.is_zero() {
                CHECKPOINT_QUIET
            } else {
                until_checkpoint
            },
            true,
        )
    }

    /// How long records have been waiting to be made durable (zero when none are).
    fn unsynced_for(&self) -> Duration {
        self.unsynced_since.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// The last act of the writer: a checkpoint over everything written, the preallocated
    /// region cut off (the file ends at its last record again), and a sync.
    fn close(&mut self, inbox: &Inbox<Job>) {
        self.checkpoint_if_due(true);
        self.sync_pending();
        if let Some(mut zero_fill) = self.zero_fill.take() {
            zero_fill.stop();
            self.allocated = self.file.metadata().map_or(self.allocated, |m| m.len());
        }
        if !self.failed.load(Ordering::Acquire) && self.allocated > self.end {
            match self
                .file
                .set_len(self.end)
                .and_then(|_| self.file.sync_data())
            {
                Ok(()) => self.allocated = self.end,
                Err(e) => self.fail(&e),
            }
        }
        // From now on appends are refused.
        inbox.close();
    }

    /// Writes `bytes` after the last record, first extending the file ahead when they would
    /// not fit in what is already allocated. With `durable`, they and every record before them
    /// are on disk when this returns; otherwise a later [`Writer::make_durable`] puts them there
    /// (direct writes keep them in memory until then).
    fn write_records(&mut self, bytes: &[u8], durable: bool) -> std::io::Result<()> {
        fault::check()?;
        let end = self.end + bytes.len() as u64;
        // A direct write covers the whole last block, so the region must reach past it.
        let need = end + crate::direct::BLOCK as u64;
        if let Some(zero_fill) = &mut self.zero_fill
            && zero_fill.reserve(need).is_err()
        {
            // The filler has stopped (and said why); extend sparsely from here on.
            self.zero_fill = None;
            self.allocated = self.file.metadata()?.len();
        }
        if self.zero_fill.is_none() && need > self.allocated {
            self.file.set_len(end + PREALLOCATE)?;
            self.allocated = end + PREALLOCATE;
        }
        match &mut self.direct {
            Some(direct) => direct.push(bytes),
            None => {
                self.file.write_all_at(bytes, self.end)?;
                self.written.store(end, Ordering::Release);
            }
        }
        self.end = end;
        if durable {
            self.make_durable()?;
        }
        Ok(())
    }

    /// Puts every record written so far on disk: one direct write of those still in memory,
    /// or a sync of the file.
    fn make_durable(&mut self) -> std::io::Result<()> {
        match &mut self.direct {
            Some(direct) => {
                if direct.has_pending() {
                    fault::check()?;
                    let end = direct.write_pending()?;
                    self.written.store(end, Ordering::Release);
                }
                Ok(())
            }
            None => self.file.sync_data(),
        }
    }

    /// Makes records written without a sync durable.
    fn sync_pending(&mut self) {
        if self.unsynced_since.is_some() && !self.failed.load(Ordering::Acquire) {
            match self.make_durable() {
                Ok(()) => self.unsynced_since = None,
                Err(e) => self.fail(&e),
            }
        }
    }

    /// A write or sync failed: nothing more is recorded, and every caller is refused.
    fn fail(&mut self, e: &std::io::Error) {
        tracing::error!(error = %e, "cannot write the audit log; from now on every action that needs a record is refused (restart the gateway once the cause is fixed)");
        self.failed.store(true, Ordering::Release);
    }

    /// Writes and chains the records of `batch`, leaving it empty (its allocation kept).
    fn write_batch(&mut self, batch: &mut Vec<Job>) {
        if self.failed.load(Ordering::Acquire) {
            for job in batch.drain(..) {
                if let Some(done) = job.done {
                    let _ = done.send(Err("the audit log failed earlier".into()));
                }
            }
            return;
        }
        let now = now_micros();
        let mut text = std::mem::take(&mut self.buf);
        text.clear();
        let mut replies = Vec::new();
        for job in batch.drain(..) {
            self.append_to(&mut text, now, &job.event);
            if let Some(done) = job.done {
                replies.push((done, self.tail.seq));
            }
        }
        if self.tail.since_checkpoint >= self.checkpoint_every {
            let checkpoint = self.checkpoint_event();
            self.append_to(&mut text, now, &checkpoint);
            self.tail.since_checkpoint = 0;
        }
        // Batched mode syncs every batch (its window is the loss window); strict mode syncs
        // when someone waits, which also covers records written before without a sync.
        let sync = !self.window.is_zero() || !replies.is_empty();
        let written = self.write_records(&text, sync);
        // The buffer is kept for the next batch: no allocation per batch once warm.
        self.buf = text;
        match written {
            Ok(()) => {
                self.unsynced_since = if sync {
                    None
                } else {
                    self.unsynced_since.or_else(|| Some(Instant::now()))
                };
                for (done, seq) in replies {
                    let _ = done.send(Ok(seq));
                }
            }
            Err(e) => {
                self.fail(&e);
                for (done, _) in replies {
                    let _ = done.send(Err(e.to_string()));
                }
            }
        }
    }

    /// Chains `event` onto the tail, encoding it into `out`.
    fn append_to(&mut self, out: &mut Vec<u8>, now: i64, event: &Event) {
        self.tail.seq += 1;
        self.tail.hash = encode_line(self.tail.seq, now, event, &self.tail.hash, out);
        self.tail.since_checkpoint += 1;
    }

    fn checkpoint_if_due(&mut self, quiet: bool) {
        if self.tail.since_checkpoint > 0
            && (quiet || self.tail.since_checkpoint >= self.checkpoint_every)
            && !self.failed.load(Ordering::Acquire)
        {
            let checkpoint = self.checkpoint_event();
            let mut line = Vec::new();
            self.append_to(&mut line, now_micros(), &checkpoint);
            match self.write_records(&line, true) {
                Ok(()) => {
                    self.tail.since_checkpoint = 0;
                    self.unsynced_since = None;
                }
                Err(e) => self.fail(&e),
            }
        }
    }

    /// A record signing the chain up to the current tail.
    fn checkpoint_event(&self) -> Event {
        let covers_seq = self.tail.seq;
        let covers_hash = &self.tail.hash;
        let signature = self
            .key
            .sign(checkpoint_message(covers_seq, covers_hash).as_bytes());
        Event::new(
            "audit.checkpoint",
            None,
            json!({
                "covers_seq": covers_seq,
                "covers_hash": covers_hash,
                "signature": hex::encode(signature.as_ref()),
                "public_key": hex::encode(self.key.public_key().as_ref()),
            }),
        )
    }
}

/// Fault injection for tests of what the gateway does when its audit log cannot be written
/// (a full or failing disk): with the `fault-injection` feature, writes fail while the file
/// named by `GATEHOUSE_FAULT_AUDIT_WRITES` exists. Without the feature this is a no-op.
mod fault {
    #[cfg(feature = "fault-injection")]
    pub(super) fn check() -> std::io::Result<()> {
        match std::env::var_os("GATEHOUSE_FAULT_AUDIT_WRITES") {
            Some(path) if std::path::Path::new(&path).exists() => Err(std::io::Error::other(
                "injected fault: audit writes fail (GATEHOUSE_FAULT_AUDIT_WRITES)",
            )),
            _ => Ok(()),
        }
    }

    #[cfg(not(feature = "fault-injection"))]
    #[inline(always)]
    pub(super) fn check() -> std::io::Result<()> {
        Ok(())
    }
}

/// What a checkpoint signs.
pub fn checkpoint_message(seq: u64, hash: &str) -> String {
    format!("gatehouse-audit-checkpoint:{seq}:{hash}")
}

/// Reads the log to find where the chain stands, and cuts what a crash left after the last
/// complete record: a torn last line, the preallocated region, and (rarely) data written but
/// never synced that reached the disk past a hole. That data is moved aside, not deleted.
/// Returns the tail and, when something other than zeros was cut, the record saying so.
fn recover(file: &mut std::fs::File, path: &Path) -> Result<(Tail, Option<Event>), AuditError> {
    file.seek(SeekFrom::Start(0))?;
    let mut tail = Tail {
        seq: 0,
        hash: GENESIS.to_string(),
        since_checkpoint: 0,
        end: 0,
    };
    let mut reader = LogReader::new(&mut *file);
    let mut torn = 0u64;
    while let Some(line) = reader.next_line()? {
        if !line.complete {
            torn = line.bytes.len() as u64;
            break;
        }
        // Only a cut-off last line is a crash; a complete line that is not a record is damage,
        // for `verify` to report and a person to look at.
        let Ok(r) = serde_json::from_slice::<Record>(line.bytes) else {
            return Err(AuditError::Io(std::io::Error::other(format!(
                "{} is damaged at line {} (not a torn last record); run `gatehouse audit verify`",
                path.display(),
                line.number
            ))));
        };
        tail.since_checkpoint = if r.kind == "audit.checkpoint" {
            0
        } else {
            tail.since_checkpoint + 1
        };
        tail.seq = r.seq;
        tail.hash = r.hash;
    }
    let good_len = reader.position() - torn;
    tail.end = good_len;
    let stray_at = reader.rest_is_zero()?;
    drop(reader);
    let moved = match stray_at {
        Some(at) => Some(move_aside(file, path, at)?),
        None => None,
    };
    if file.metadata()?.len() != good_len {
        file.set_len(good_len)?;
        file.sync_all()?;
    }
    if torn == 0 && moved.is_none() {
        return Ok((tail, None));
    }
    tracing::warn!(
        torn_bytes = torn,
        "audit log: cut what a crash left after the last complete record"
    );
    let mut data = json!({ "truncated_bytes": torn });
    if let Some((bytes, name)) = moved {
        tracing::warn!(bytes, file = %name, "audit log: moved unsynced data found after a hole aside");
        data["unsynced_bytes"] = json!(bytes);
        data["moved_to"] = json!(name);
    }
    Ok((tail, Some(Event::new("audit.recovered", None, data))))
}

/// Copies the bytes from `at` to the last non-zero byte of the file into a file beside the
/// log, so that cutting the log loses nothing. Returns how many bytes and the file's name.
fn move_aside(file: &mut std::fs::File, path: &Path, at: u64) -> Result<(u64, String), AuditError> {
    let mut stray = Vec::new();
    file.seek(SeekFrom::Start(at))?;
    std::io::Read::read_to_end(file, &mut stray)?;
    let kept = stray.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    stray.truncate(kept);
    let name = format!(
        "{}.unsynced-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("audit.log"),
        now_micros()
    );
    let aside = path.with_file_name(&name);
    write_private(&aside, &stray)?;
    Ok((stray.len() as u64, name))
}

fn load_or_create_key(dir: &Path) -> Result<Ed25519KeyPair, AuditError> {
    let path = dir.join(KEY_FILE);
    let pkcs8 = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(_) => {
            let rng = ring::rand::SystemRandom::new();
            let doc =
                Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| AuditError::Key(e.to_string()))?;
            write_private(&path, doc.as_ref())?;
            doc.as_ref().to_vec()
        }
    };
    let key = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| AuditError::Key(e.to_string()))?;
    std::fs::write(
        dir.join(PUBLIC_KEY_FILE),
        format!("{}\n", hex::encode(key.public_key().as_ref())),
    )?;
    Ok(key)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_refuses_this_record_and_every_later_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        std::fs::write(&path, b"").unwrap();
        // Opened read-only, so every write fails as on a full or broken disk.
        let file = std::fs::File::open(&path).unwrap();
        let key = load_or_create_key(dir.path()).unwrap();
        let failed = Arc::new(AtomicBool::new(false));
        let tail = Tail {
            seq: 0,
            hash: GENESIS.into(),
            since_checkpoint: 0,
            end: 0,
        };
        let mut writer = Writer::new(file, key, tail, 10, Durability::Strict, failed.clone());
        let (done, mut reply) = oneshot::channel();
        writer.write_batch(&mut vec![Job {
            event: Event::new("statement.intent", None, json!({})),
            done: Some(done),
        }]);
        assert!(reply.try_recv().unwrap().is_err());
        let inbox = Inbox::new();
        let log = AuditLog {
            tx: inbox.sender(),
            shared: Arc::new(Shared {
                inbox,
                writer: Mutex::new(writer),
                closers: Mutex::new(Vec::new()),
            }),
            durability: Durability::Batched,
            dir: dir.path().to_path_buf(),
            failed,
            written: Arc::new(AtomicU64::new(0)),
        };
        assert!(matches!(
            log.enqueue(Event::new("statement.intent", None, json!({}))),
            Err(AuditError::Stopped)
        ));
    }

    /// A relay's direction can be dropped mid-wait; the record it waited for must still be
    /// waited for (and never be taken as on disk) by whoever waits next.
    #[tokio::test]
    async fn a_wait_cut_short_resumes_and_an_answer_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), Durability::Strict, 1000)
            .await
            .unwrap();
        let mut pending = log
            .enqueue(Event::new("statement.intent", None, json!({"n": 1})))
            .unwrap();
        // Dropped before the writer can have answered (it runs on its own thread).
        let _ = tokio::time::timeout(Duration::ZERO, pending.durable()).await;
        pending.durable().await.unwrap();
        pending.durable().await.unwrap();

        // A record the writer never answers (it stopped): every wait fails, not only the first.
        log.close().await;
        let (tx, rx) = oneshot::channel::<Result<u64, String>>();
        drop(tx);
        let mut unanswered = Pending::new(Some(rx));
        assert!(matches!(
            unanswered.durable().await,
            Err(AuditError::Stopped)
        ));
        assert!(matches!(
            unanswered.durable().await,
            Err(AuditError::Stopped)
        ));
    }

    #[tokio::test]
    async fn records_nobody_waits_for_reach_the_disk_in_order_without_a_sync_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), Durability::Strict, 1000)
            .await
            .unwrap();
        log.append_detached(Event::new("statement.outcome", None, json!({"n": 1})));
        log.append(Event::new("statement.intent", None, json!({"n": 2})))
            .await
            .unwrap();
        log.append_detached(Event::new("statement.outcome", None, json!({"n": 3})));
        // The last one is made durable after a short quiet.
        tokio::time::sleep(SYNC_DELAY * 4).await;
        let text = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        let kinds: Vec<&str> = text
            .split('\0')
            .next()
            .unwrap()
            .lines()
            .map(|l| if l.contains("outcome") { "o" } else { "i" })
            .collect();
        assert_eq!(kinds, ["o", "i", "o"]);
        let public = std::fs::read_to_string(dir.path().join(PUBLIC_KEY_FILE)).unwrap();
        let v = crate::verify_file(&dir.path().join(LOG_FILE), &public, None).unwrap();
        assert!(v.problem.is_none(), "{v:?}");
    }

    /// A steady trickle of records nobody waits for (API requests, say) never leaves the writer
    /// quiet for long; they must still reach the disk within milliseconds, not when it stops.
    #[tokio::test]
    async fn records_nobody_waits_for_reach_the_disk_while_more_keep_coming() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), Durability::Strict, 1000)
            .await
            .unwrap();
        let started = Instant::now();
        let mut n = 0;
        while started.elapsed() < SYNC_DELAY * 12 {
            log.append_detached(Event::new("api.request", None, json!({ "n": n })));
            n += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let on_disk = records(&dir.path().join(LOG_FILE)).len();
        assert!(
            on_disk > 0,
            "none of {n} records sent over {:?} is on disk",
            started.elapsed()
        );
        log.close().await;
    }

    /// Callers that lead writes, callers whose records are written by another's write, and
    /// the writer thread all append to one chain; every record is kept once, in a valid chain.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_callers_leading_and_waiting_keep_one_whole_chain() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), Durability::Strict, 50)
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for task in 0..16 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0..100 {
                    log.append(Event::new(
                        "statement.intent",
                        None,
                        json!({ "t": task, "n": n }),
                    ))
                    .await
                    .unwrap();
                    log.append_detached(Event::new(
                        "statement.outcome",
                        None,
                        json!({ "t": task, "n": n }),
                    ));
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        log.close().await;
        let v = verify(dir.path());
        assert!(v.problem.is_none(), "{v:?}");
        let kept = records(&dir.path().join(LOG_FILE));
        let of = |kind: &str| kept.iter().filter(|r| r.kind == kind).count();
        assert_eq!(of("statement.intent"), 1600);
        assert_eq!(of("statement.outcome"), 1600);
    }

    /// A write that panics (a bug) must not leave the lead held forever, with every later
    /// caller waiting: the lead is given up, and the writer's poisoned lock fails the log.
    #[tokio::test]
    async fn a_leader_that_panics_gives_the_lead_up_and_the_log_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), Durability::Strict, 1000)
            .await
            .unwrap();
        let shared = log.shared.clone();
        let panicked = std::thread::spawn(move || {
            let mut taken = Vec::new();
            // The writer thread may hold the lead for a moment (its timer).
            while shared.inbox.lead(&mut taken, Leader::Writer) == Lead::Busy {
                std::thread::sleep(Duration::from_millis(1));
            }
            let _held = HeldLead {
                inbox: &shared.inbox,
                taken,
            };
            let _writer = shared.lock_writer();
            panic!("a write that panics");
        })
        .join();
        assert!(panicked.is_err());
        let refused = tokio::time::timeout(
            Duration::from_secs(10),
            log.append(Event::new("statement.intent", None, json!({}))),
        )
        .await
        .expect("a caller waited for a lead nobody gives up");
        assert!(refused.is_err(), "a record was kept after a write panicked");
    }

    /// A record whose caller stops waiting before it led the write is still written soon.
    #[tokio::test]
    async fn a_record_nobody_stays_to_lead_is_written_by_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), Durability::Strict, 1000)
            .await
            .unwrap();
        let pending = log
            .enqueue(Event::new("statement.intent", None, json!({"n": 1})))
            .unwrap();
        drop(pending);
        let started = Instant::now();
        while records(&dir.path().join(LOG_FILE)).is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the record was left in the queue"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        log.close().await;
    }

    /// A running log in `dir` with three records.
    async fn live_log(dir: &Path) -> AuditLog {
        let log = AuditLog::open(dir, Durability::Strict, 1000).await.unwrap();
        for n in 0..3 {
            log.append(Event::new("statement.intent", None, json!({ "n": n })))
                .await
                .unwrap();
        }
        log
    }

    /// Where the records of the file at `path` end: its first zero byte.
    fn records_end(path: &Path) -> u64 {
        let bytes = std::fs::read(path).unwrap();
        bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len()) as u64
    }

    /// A log with three records, left as a crashed gateway leaves it (the preallocated
    /// region still there), copied with its key into a directory of its own.
    async fn crashed_log() -> (tempfile::TempDir, PathBuf, u64) {
        let live = tempfile::tempdir().unwrap();
        let log = live_log(live.path()).await;
        let copy = tempfile::tempdir().unwrap();
        for f in [LOG_FILE, KEY_FILE, PUBLIC_KEY_FILE] {
            std::fs::copy(live.path().join(f), copy.path().join(f)).unwrap();
        }
        let path = copy.path().join(LOG_FILE);
        let bytes = std::fs::read(&path).unwrap();
        let end = records_end(&path);
        // Zeros written ahead (direct writes) or a sparse region (where direct I/O is refused).
        assert!(
            bytes.len() as u64 >= end + crate::zero_fill::CHUNK.min(PREALLOCATE / 2),
            "the region is there"
        );
        log.close().await;
        (copy, path, end)
    }

    fn verify(dir: &Path) -> crate::Verification {
        let public = std::fs::read_to_string(dir.join(PUBLIC_KEY_FILE)).unwrap();
        crate::verify_file(&dir.join(LOG_FILE), &public, None).unwrap()
    }

    fn records(path: &Path) -> Vec<Record> {
        let mut reader = LogReader::open(path).unwrap();
        let mut out = Vec::new();
        while let Some((_, r)) = reader.next_record().unwrap() {
            out.push(r);
        }
        out
    }

    #[tokio::test]
    async fn either_write_method_continues_the_chain_the_other_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let methods = [
            WriteMethod::Buffered,
            WriteMethod::Direct,
            WriteMethod::Buffered,
        ];
        for (round, method) in methods.into_iter().enumerate() {
            let log = AuditLog::open_with(dir.path(), Durability::Strict, 7, method)
                .await
                .unwrap();
            for n in 0..20 {
                // Uneven sizes, so records straddle block boundaries.
                let text = "x".repeat(n * 37 + round);
                log.append_detached(Event::new("statement.outcome", None, json!({ "t": text })));
                log.append(Event::new("statement.intent", None, json!({ "n": n })))
                    .await
                    .unwrap();
            }
            log.close().await;
        }
        let v = verify(dir.path());
        assert!(v.problem.is_none(), "{:?}", v.problem);
        assert_eq!(
            records(&dir.path().join(LOG_FILE))
                .iter()
                .filter(|r| r.kind.starts_with("statement."))
                .count(),
            120
        );
        let bytes = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
        assert!(!bytes.contains(&0) && bytes.ends_with(b"\n"));
    }

    #[tokio::test]
    async fn a_clean_close_cuts_the_preallocated_region_and_signs_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), Durability::Strict, 1000)
            .await
            .unwrap();
        log.append(Event::new("statement.intent", None, json!({})))
            .await
            .unwrap();
        log.close().await;
        let bytes = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
        assert!(!bytes.contains(&0) && bytes.ends_with(b"\n"));
        let kinds: Vec<_> = records(&dir.path().join(LOG_FILE))
            .into_iter()
            .map(|r| r.kind)
            .collect();
        assert_eq!(kinds, ["statement.intent", "audit.checkpoint"]);
        assert!(matches!(
            log.append(Event::new("late", None, json!({}))).await,
            Err(AuditError::Stopped)
        ));
    }

    #[tokio::test]
    async fn after_a_crash_the_preallocated_region_is_cut_without_a_report() {
        let (dir, path, end) = crashed_log().await;
        assert!(verify(dir.path()).problem.is_none());
        let log = AuditLog::open(dir.path(), Durability::Strict, 1000)
            .await
            .unwrap();
        log.append(Event::new("after.restart", None, json!({})))
            .await
            .unwrap();
        log.close().await;
        let kinds: Vec<_> = records(&path).into_iter().map(|r| r.kind).collect();
        assert_eq!(kinds[3..], ["after.restart", "audit.checkpoint"]);
        assert!(std::fs::read(&path).unwrap().len() as u64 > end);
        assert!(verify(dir.path()).problem.is_none());
    }

    #[tokio::test]
    async fn unsynced_data_found_past_a_hole_is_reported_and_moved_aside_not_lost() {
        let (dir, path, end) = crashed_log().await;
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        // Writeback reached a later page but not the one before it, then the power went.
        file.write_all_at(b"{\"seq\":5}\n", end + 4096).unwrap();
        drop(file);
        let v = verify(dir.path());
        assert!(
            v.problem.as_ref().unwrap().message.contains("data follows"),
            "{v:?}"
        );

        let log = AuditLog::open(dir.path(), Durability::Strict, 1000)
            .await
            .unwrap();
        log.close().await;
        let recovered = records(&path)
            .into_iter()
            .find(|r| r.kind == "audit.recovered")
            .expect("a recovered record");
        assert_eq!(recovered.data["unsynced_bytes"], 10);
        let aside = dir
            .path()
            .join(recovered.data["moved_to"].as_str().unwrap());
        assert_eq!(std::fs::read(aside).unwrap(), b"{\"seq\":5}\n");
        assert!(verify(dir.path()).problem.is_none());
    }

    #[tokio::test]
    async fn the_logs_own_reader_stops_where_the_last_complete_write_ended() {
        let dir = tempfile::tempdir().unwrap();
        let log = live_log(dir.path()).await;
        // What a reader of the file can meet while the writer is in the middle of a write.
        let path = dir.path().join(LOG_FILE);
        let end = records_end(&path);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"{\"seq\":4,\"at\":", end).unwrap();
        let public = std::fs::read_to_string(dir.path().join(PUBLIC_KEY_FILE)).unwrap();
        let from_file = crate::verify_file(&path, &public, None).unwrap();
        assert!(from_file.problem.unwrap().message.contains("cut off"));
        let own = crate::verify_records(log.reader().unwrap(), &public, None).unwrap();
        assert!(own.problem.is_none(), "{own:?}");
        assert_eq!(own.records, 3);
        // Put back what the writer would have: zeros, until it writes there.
        file.write_all_at(&[0; 16], end).unwrap();
        log.close().await;
    }
}
