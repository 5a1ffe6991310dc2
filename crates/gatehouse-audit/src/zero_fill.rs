//! Real zeros written ahead of the records, for direct writes, as PostgreSQL fills a new WAL
//! segment with zeros before using it (`wal_init_zero`).
//!
//! A durable direct write into a part of the file that was never written (a hole left by
//! extending the file, or an extent reserved by `fallocate`) must also commit the block's
//! allocation to the filesystem journal before it returns; an overwrite of written blocks is
//! data only. On this project's benchmark VM that made a durable append of 700-byte records
//! 15-25% faster and of 2,000-byte ones (a busy batch) 35% faster, with a much shorter tail
//! (`docs/BENCHMARKS.md`, seventh session). So a thread of its own keeps [`LEAD`] bytes of
//! written, synced zeros ahead of the records, in [`CHUNK`]s, with direct writes of its own
//! (no page cache to invalidate under the log's direct writes). The log's writer only waits
//! for it when the records catch up with the zeros, which at [`LEAD`] ahead takes a sustained
//! write rate far above what the gateway produces.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::direct::BLOCK;

/// How far ahead of the records the zeros reach once the filler has caught up.
pub(crate) const LEAD: u64 = 16 << 20;

/// The unit of the filler's writes, and what it writes before the log's writer starts.
pub(crate) const CHUNK: u64 = 1 << 20;

/// The log's side of the filler.
pub(crate) struct ZeroFill {
    /// The file's offset up to which zeros (or records) are written and synced.
    filled: Arc<AtomicU64>,
    /// Why the filler stopped, if it failed.
    failure: Arc<Mutex<Option<std::io::Error>>>,
    /// How far the filler was last asked to fill.
    asked: u64,
    ask: Option<mpsc::Sender<u64>>,
    thread: Option<JoinHandle<()>>,
}

/// One aligned chunk of zeros, the source of every write of the filler.
#[repr(C, align(4096))]
struct ZeroChunk([u8; CHUNK as usize]);

impl ZeroFill {
    /// Starts filling the log at `path` with zeros from `from` (a multiple of [`BLOCK`], at
    /// or past the end of the records), having written the first [`CHUNK`] before it returns.
    /// `None` when the file refuses direct writes or the first chunk cannot be written: the
    /// caller then extends the file as it did before, sparsely.
    pub(crate) fn start(path: &Path, from: u64) -> Option<ZeroFill> {
        debug_assert_eq!(from % BLOCK as u64, 0);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()?;
        // Boxed: a megabyte is too much for a thread's stack.
        let zeros: Box<ZeroChunk> = zeroed_chunk();
        if let Err(e) = fill(&file, &zeros, from, from + CHUNK) {
            tracing::info!(error = %e, "audit log: cannot write zeros ahead of the records; extending the file sparsely");
            return None;
        }
        let filled = Arc::new(AtomicU64::new(from + CHUNK));
        let failure = Arc::new(Mutex::new(None));
        let (ask, asks) = mpsc::channel::<u64>();
        let thread = {
            let filled = filled.clone();
            let failure = failure.clone();
            std::thread::Builder::new()
                .name("gatehouse-audit-zero".into())
                .spawn(move || run(file, zeros, asks, &filled, &failure))
                .ok()?
        };
        Some(ZeroFill {
            filled,
            failure,
            asked: from + CHUNK,
            ask: Some(ask),
            thread: Some(thread),
        })
    }

    /// Returns once the file holds written zeros (or records) up to `need`, first asking the
    /// filler to reach [`LEAD`] past it when it is less than half that far ahead. Waits only
    /// when the records have caught up with the zeros. An error means the filler failed; the
    /// caller extends the file sparsely from then on.
    pub(crate) fn reserve(&mut self, need: u64) -> std::io::Result<()> {
        if need + LEAD / 2 > self.asked {
            self.asked = (need + LEAD).next_multiple_of(CHUNK);
            if let Some(ask) = &self.ask {
                // A filler that has stopped is found below.
                let _ = ask.send(self.asked);
            }
        }
        while self.filled.load(Ordering::Acquire) < need {
            if let Some(e) = self.failure() {
                return Err(e);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    fn failure(&self) -> Option<std::io::Error> {
        let failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        failure
            .as_ref()
            .map(|e| std::io::Error::new(e.kind(), e.to_string()))
    }

    /// Stops the filler and waits for it, so that nothing writes zeros past a cut the caller
    /// makes next.
    pub(crate) fn stop(&mut self) {
        self.ask = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ZeroFill {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The filler's thread: fills up to each target asked for, a chunk at a time, publishing how
/// far it got after each chunk is synced. Stops when the log's writer hangs up or on a failure.
fn run(
    file: File,
    zeros: Box<ZeroChunk>,
    asks: mpsc::Receiver<u64>,
    filled: &AtomicU64,
    failure: &Mutex<Option<std::io::Error>>,
) {
    while let Ok(mut target) = asks.recv() {
        // Only the furthest target counts.
        while let Ok(next) = asks.try_recv() {
            target = target.max(next);
        }
        let mut at = filled.load(Ordering::Acquire);
        while at < target {
            if let Err(e) = fill(&file, &zeros, at, at + CHUNK) {
                tracing::warn!(error = %e, "audit log: cannot write zeros ahead of the records; extending the file sparsely from now on");
                *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                return;
            }
            at += CHUNK;
            filled.store(at, Ordering::Release);
        }
    }
}

/// Writes zeros over `[from, to)` (whole [`CHUNK`]s) and syncs them, allocation and size
/// included.
fn fill(file: &File, zeros: &ZeroChunk, from: u64, to: u64) -> std::io::Result<()> {
    let mut at = from;
    while at < to {
        file.write_all_at(&zeros.0, at)?;
        at += CHUNK;
    }
    file.sync_data()
}

/// A chunk of zeros on the heap, allocated zeroed (no megabyte on the stack on the way).
fn zeroed_chunk() -> Box<ZeroChunk> {
    let layout = std::alloc::Layout::new::<ZeroChunk>();
    // SAFETY: the layout is `ZeroChunk`'s own and not zero-sized; all-zero bytes are a valid
    // `ZeroChunk` (a byte array); a null result is handed to the allocation error handler.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout).cast::<ZeroChunk>();
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Box::from_raw(ptr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the file's first hole is (its length when it has none).
    fn first_hole(path: &Path) -> u64 {
        use std::os::fd::AsRawFd;
        let file = File::open(path).unwrap();
        // SAFETY: a plain lseek on a descriptor this function owns.
        let at = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_HOLE) };
        assert!(at >= 0);
        at as u64
    }

    #[test]
    fn zeros_are_written_ahead_of_what_is_reserved_and_stop_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, vec![b'x'; BLOCK]).unwrap();
        let Some(mut fill) = ZeroFill::start(&path, BLOCK as u64) else {
            eprintln!("skipped: the temporary directory's filesystem refuses direct I/O");
            return;
        };
        assert!(std::fs::metadata(&path).unwrap().len() >= BLOCK as u64 + CHUNK);
        fill.reserve(3 * CHUNK).unwrap();
        // Asked for LEAD past what was reserved; wait for it to get there.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while fill.filled.load(Ordering::Acquire) < 3 * CHUNK + LEAD {
            assert!(fill.failure().is_none(), "the filler failed");
            assert!(
                std::time::Instant::now() < deadline,
                "the filler never got there"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        fill.stop();
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len >= 3 * CHUNK + LEAD, "{len}");
        assert_eq!(first_hole(&path), len, "written zeros, not a hole");
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes[..BLOCK].iter().all(|b| *b == b'x'));
        assert!(bytes[BLOCK..].iter().all(|b| *b == 0));
    }
}
