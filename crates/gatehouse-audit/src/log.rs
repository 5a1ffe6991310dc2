//! The writer: one task owns the file, takes records from every caller, writes them in
//! batches and syncs each batch to disk once (group commit), so many callers share one fsync.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};

use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::json;
use tokio::sync::oneshot;

use crate::record::{Event, GENESIS, Record, encode_line};
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

/// A record queued for the log; [`Pending::wait`] returns once it is on disk (strict) or at
/// once (batched).
pub struct Pending(Option<oneshot::Receiver<Result<u64, String>>>);

impl Pending {
    pub async fn wait(self) -> Result<(), AuditError> {
        match self.0 {
            None => Ok(()),
            Some(rx) => match rx.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(AuditError::Io(std::io::Error::other(e))),
                Err(_) => Err(AuditError::Stopped),
            },
        }
    }
}

/// A handle to the audit log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
    durability: Durability,
    dir: PathBuf,
    /// Set by the writer once a write or sync failed: from then on nothing can be recorded,
    /// so every caller is refused (what a failed `fsync` left on disk cannot be trusted, and
    /// the chain cannot continue from an unknown state).
    failed: Arc<AtomicBool>,
}

/// Where the chain stands.
struct Tail {
    seq: u64,
    hash: String,
    since_checkpoint: u64,
}

impl AuditLog {
    /// Opens (creating) the log in `dir`, recovering a torn last line, and starts the writer.
    /// A checkpoint is signed every `checkpoint_every` records and when the log goes quiet.
    pub async fn open(
        dir: &Path,
        durability: Durability,
        checkpoint_every: u64,
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
            .read(true)
            .append(true)
            .open(&path)?;
        let (tail, torn) = recover(&mut file, &path)?;
        // Unbounded: in strict mode every caller waits for its own record, which bounds the
        // queue by the number of callers; the writer drains it in batches.
        let (tx, rx) = mpsc::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let mut writer = Writer::new(
            file,
            key,
            tail,
            checkpoint_every,
            durability,
            failed.clone(),
        );
        if torn > 0 {
            tracing::warn!(
                bytes = torn,
                "audit log: cut a torn last record left by a crash"
            );
            writer.write_batch(vec![Job {
                event: Event::new("audit.recovered", None, json!({ "truncated_bytes": torn })),
                done: None,
            }]);
            writer.sync_pending();
            if failed.load(Ordering::Acquire) {
                return Err(AuditError::Io(std::io::Error::other(
                    "cannot write the audit log after recovering it",
                )));
            }
        }
        // A thread of its own: writing and syncing block, and must not hold up the runtime's
        // workers (every session's relay runs on them).
        std::thread::Builder::new()
            .name("gatehouse-audit".into())
            .spawn(move || writer.run(rx))?;
        Ok(AuditLog {
            tx,
            durability,
            dir: dir.to_path_buf(),
            failed,
        })
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
        let (done, wait) = match self.durability {
            Durability::Off => return Ok(Pending(None)),
            Durability::Batched => (None, None),
            Durability::Strict => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
        };
        self.tx
            .send(Job { event, done })
            .map_err(|_| AuditError::Stopped)?;
        Ok(Pending(wait))
    }

    /// Records `event` without waiting, for places that cannot wait (their failure is logged).
    pub fn append_detached(&self, event: Event) {
        if self.durability == Durability::Off {
            return;
        }
        if self.tx.send(Job { event, done: None }).is_err() {
            tracing::error!("the audit log writer has stopped; a record was not kept");
        }
    }
}

struct Writer {
    file: std::fs::File,
    key: Ed25519KeyPair,
    tail: Tail,
    checkpoint_every: u64,
    /// How long a batch collects records before it is written: nothing for strict (callers
    /// wait, and the next batch forms while this one syncs), a few milliseconds for batched
    /// (nobody waits, so fewer, larger syncs).
    window: Duration,
    /// The encoded batch, reused.
    buf: Vec<u8>,
    /// Records were written that no sync covers yet (strict mode writes records nobody waits
    /// for, such as outcomes, without a sync of their own; the next waited-for record's sync,
    /// or [`SYNC_DELAY`] of quiet, covers them).
    unsynced: bool,
    /// Shared with every [`AuditLog`] handle; see there.
    failed: Arc<AtomicBool>,
}

/// How long records nobody waits for may stay unsynced in strict mode.
const SYNC_DELAY: Duration = Duration::from_millis(5);

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
        Writer {
            file,
            key,
            tail,
            checkpoint_every: checkpoint_every.max(1),
            window: match durability {
                Durability::Strict | Durability::Off => Duration::ZERO,
                Durability::Batched => BATCHED_WINDOW,
            },
            buf: Vec::new(),
            unsynced: false,
            failed,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Job>) {
        loop {
            // Unsynced records are synced after a short quiet; a quiet log gets a checkpoint,
            // so its last records are covered by a signature.
            let quiet = if self.unsynced {
                SYNC_DELAY
            } else {
                Duration::from_secs(10)
            };
            let first = match rx.recv_timeout(quiet) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.checkpoint_if_due(true);
                    self.sync_pending();
                    return;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.unsynced {
                        self.sync_pending();
                    } else {
                        self.checkpoint_if_due(true);
                    }
                    continue;
                }
            };
            let mut batch = vec![first];
            let deadline = std::time::Instant::now() + self.window;
            while batch.len() < 4096 {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let next = if left.is_zero() {
                    rx.try_recv().ok()
                } else {
                    rx.recv_timeout(left).ok()
                };
                match next {
                    Some(job) => batch.push(job),
                    None => break,
                }
            }
            self.write_batch(batch);
        }
    }

    /// Syncs records written without a sync.
    fn sync_pending(&mut self) {
        if self.unsynced && !self.failed.load(Ordering::Acquire) {
            match self.file.sync_data() {
                Ok(()) => self.unsynced = false,
                Err(e) => self.fail(&e),
            }
        }
    }

    /// A write or sync failed: nothing more is recorded, and every caller is refused.
    fn fail(&mut self, e: &std::io::Error) {
        tracing::error!(error = %e, "cannot write the audit log; from now on every action that needs a record is refused (restart the gateway once the cause is fixed)");
        self.failed.store(true, Ordering::Release);
    }

    fn write_batch(&mut self, batch: Vec<Job>) {
        if self.failed.load(Ordering::Acquire) {
            for job in batch {
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
        for job in batch {
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
        let written = fault::check()
            .and_then(|_| self.file.write_all(&text))
            .and_then(|_| if sync { self.file.sync_data() } else { Ok(()) });
        // The buffer is kept for the next batch: no allocation per batch once warm.
        self.buf = text;
        match written {
            Ok(()) => {
                self.unsynced = !sync;
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
            match self
                .file
                .write_all(&line)
                .and_then(|_| self.file.sync_data())
            {
                Ok(()) => {
                    self.tail.since_checkpoint = 0;
                    self.unsynced = false;
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

/// Reads the log to find where the chain stands; cuts a torn last line (a crash in the middle
/// of a write). Returns the tail and how many bytes were cut.
fn recover(file: &mut std::fs::File, path: &Path) -> Result<(Tail, u64), AuditError> {
    let mut text = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_end(&mut text)?;
    let mut tail = Tail {
        seq: 0,
        hash: GENESIS.to_string(),
        since_checkpoint: 0,
    };
    let mut good_len = 0usize;
    let mut offset = 0usize;
    for line in text.split_inclusive(|b| *b == b'\n') {
        let complete = line.ends_with(b"\n");
        let parsed = complete
            .then(|| serde_json::from_slice::<Record>(&line[..line.len() - 1]).ok())
            .flatten();
        match parsed {
            Some(r) => {
                tail.since_checkpoint = if r.kind == "audit.checkpoint" {
                    0
                } else {
                    tail.since_checkpoint + 1
                };
                tail.seq = r.seq;
                tail.hash = r.hash;
                offset += line.len();
                good_len = offset;
            }
            None => break,
        }
    }
    let torn = (text.len() - good_len) as u64;
    if torn > 0 {
        // Only an incomplete last line is a crash; anything else is damage for `verify`.
        if text[good_len..].contains(&b'\n') {
            return Err(AuditError::Io(std::io::Error::other(format!(
                "{} is damaged in the middle (not a torn last record); run `gatehouse audit verify`",
                path.display()
            ))));
        }
        file.set_len(good_len as u64)?;
        file.sync_data()?;
    }
    Ok((tail, torn))
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
        };
        let mut writer = Writer::new(file, key, tail, 10, Durability::Strict, failed.clone());
        let (done, mut reply) = oneshot::channel();
        writer.write_batch(vec![Job {
            event: Event::new("statement.intent", None, json!({})),
            done: Some(done),
        }]);
        assert!(reply.try_recv().unwrap().is_err());
        let (tx, _rx) = mpsc::channel();
        let log = AuditLog {
            tx,
            durability: Durability::Batched,
            dir: dir.path().to_path_buf(),
            failed,
        };
        assert!(matches!(
            log.enqueue(Event::new("statement.intent", None, json!({}))),
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
        // The last one is synced after a short quiet (and is in the file at once anyway).
        tokio::time::sleep(SYNC_DELAY * 4).await;
        let text = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        let kinds: Vec<&str> = text
            .lines()
            .map(|l| if l.contains("outcome") { "o" } else { "i" })
            .collect();
        assert_eq!(kinds, ["o", "i", "o"]);
        let public = std::fs::read_to_string(dir.path().join(PUBLIC_KEY_FILE)).unwrap();
        let v = crate::verify_file(&dir.path().join(LOG_FILE), &public, None).unwrap();
        assert!(v.problem.is_none(), "{v:?}");
    }
}
