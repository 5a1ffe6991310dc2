//! The recorder: takes records from every session and writes them to the store in batches.
//!
//! Sessions never touch the store on their hot path; they hand a [`Record`] to a bounded
//! queue and go on. One writer task drains whatever has accumulated and commits it in one
//! transaction, so a thousand concurrent statements cost one disk sync, not a thousand. A
//! full queue makes sessions wait (back-pressure) rather than dropping records, and a writer
//! that cannot write closes the queue so that every later command fails with a clear error:
//! the gateway never runs commands it cannot record.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::store::{Record, Store};

const QUEUE_DEPTH: usize = 16 * 1024;
const MAX_BATCH: usize = 2048;
const WRITE_ATTEMPTS: u32 = 3;
/// How long the writer lets records accumulate after the first one arrives. Sessions never
/// wait for it (they only queue), and every transaction has a fixed cost (about 0.5 ms of
/// SQLite's thread for its WAL pages and round trips) on top of its rows (about 9 µs each):
/// at 10,000 statements a second a 5 ms window spent 18% of a core on the store, a 50 ms
/// window 10% (`cargo bench --bench store`, docs/BENCHMARKS.md). The cost is that `sessions
/// show` lags a statement by up to this long; the audit log, not the store, is the record
/// that must be durable before a statement runs.
const GROUP_COMMIT_WINDOW: Duration = Duration::from_millis(50);

/// Why a record could not be accepted.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the gateway cannot record commands right now (its store or its audit log is failing; an administrator should check the gateway's log), so nothing was run"
)]
pub struct RecordError;

/// A handle for handing records to the writer; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    queue: mpsc::Sender<Record>,
    healthy: Arc<AtomicBool>,
}

impl Recorder {
    /// Starts the writer task. It ends once every `Recorder` is dropped and the queue drained.
    pub fn start(store: Store) -> (Recorder, JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        let healthy = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn(write_loop(store, rx, healthy.clone()));
        (Recorder { queue, healthy }, task)
    }

    /// Queues a record, waiting for room when the writer is behind.
    pub async fn record(&self, record: Record) -> Result<(), RecordError> {
        if !self.healthy.load(Ordering::Relaxed) {
            return Err(RecordError);
        }
        self.queue.send(record).await.map_err(|_| RecordError)
    }

    /// `false` once the writer has given up; sessions should refuse new commands.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.queue.is_closed()
    }
}

async fn write_loop(store: Store, mut rx: mpsc::Receiver<Record>, healthy: Arc<AtomicBool>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if batch.len() < MAX_BATCH {
            tokio::time::sleep(GROUP_COMMIT_WINDOW).await;
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match store.write_batch(&batch).await {
                Ok(()) => break,
                Err(e) if attempt < WRITE_ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, "recording batch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 * attempt as u64)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, records = batch.len(),
                        "recording failed; refusing further commands until restart");
                    healthy.store(false, Ordering::Relaxed);
                    rx.close();
                    return;
                }
            }
        }
        batch.clear();
    }
}
