//! The audit log's cost per statement: encoding and chaining one `statement.intent` record
//! (typed details encoded once, beside the same details built as a JSON value first), and
//! appending it to a real log on disk in each durability mode, alone and from 8 concurrent
//! callers (group commit: several callers share one fsync).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use gatehouse_audit::record::{BoundedText, GENESIS, encode_line};
use gatehouse_audit::{AuditLog, Durability, Event};
use serde::Serialize;

const TEXT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

/// The shape of the gateway's intent record.
#[derive(Serialize)]
struct Intent<'a> {
    session: &'a str,
    seq: i64,
    text: BoundedText<'a>,
    params: &'a Option<Vec<Option<String>>>,
    decision: &'static str,
    policies: &'a [String],
}

fn intent(params: &Option<Vec<Option<String>>>, policies: &[String], seq: i64) -> Event {
    Event::typed(
        "statement.intent",
        Some("gatehouse/bench"),
        &Intent {
            session: "8f2c61a0b94d3e17",
            seq,
            text: BoundedText::new(TEXT, 4096),
            params,
            decision: "allow",
            policies,
        },
    )
}

/// Intent records encoded and chained one after another, as the writer makes them.
struct Chain {
    params: Option<Vec<Option<String>>>,
    policies: Vec<String>,
    prev: String,
    seq: u64,
}

impl Chain {
    fn new() -> Chain {
        Chain {
            params: Some(vec![Some("42".to_string())]),
            policies: vec!["agents-read".to_string()],
            prev: GENESIS.to_string(),
            seq: 0,
        }
    }

    /// Encodes the next record into `out` (cleared first).
    fn next_into(&mut self, out: &mut Vec<u8>) {
        out.clear();
        self.seq += 1;
        let event = intent(&self.params, &self.policies, self.seq as i64);
        self.prev = encode_line(self.seq, 1, &event, &self.prev, out);
    }
}

/// Mean time per record of `n` records appended by `callers` concurrent tasks.
fn append_rate(rt: &tokio::runtime::Runtime, durability: Durability, callers: usize) -> Duration {
    let dir = tempfile::tempdir().expect("a temporary directory");
    rt.block_on(async {
        let log = AuditLog::open(dir.path(), durability, 1000)
            .await
            .expect("opens");
        let per_caller = 2000 / callers;
        let started = Instant::now();
        let tasks: Vec<_> = (0..callers)
            .map(|c| {
                let log = log.clone();
                tokio::spawn(async move {
                    let params = Some(vec![Some("42".to_string())]);
                    let policies = vec!["agents-read".to_string()];
                    for i in 0..per_caller {
                        log.append(intent(&params, &policies, (c * per_caller + i) as i64))
                            .await
                            .expect("appends");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("joins");
        }
        started.elapsed() / (per_caller * callers) as u32
    })
}

/// The floor under a strict append: the same bytes written and synced by the caller itself,
/// with no hand-off to the writer thread and back. `preallocated`: written into a file already
/// extended past them, as the writer does; otherwise appended, growing the file with each one.
fn raw_sync_rate(preallocated: bool) -> (Duration, Duration) {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(dir.path().join("raw.log"))
        .expect("opens");
    if preallocated {
        file.set_len(gatehouse_audit::log::PREALLOCATE)
            .expect("extends");
    }
    let mut chain = Chain::new();
    let mut buf = Vec::new();
    let mut end = 0u64;
    let (started, cpu) = (Instant::now(), thread_cpu());
    for _ in 0..2000 {
        chain.next_into(&mut buf);
        file.write_all_at(&buf, end).expect("writes");
        end += buf.len() as u64;
        file.sync_data().expect("syncs");
    }
    (started.elapsed() / 2000, (thread_cpu() - cpu) / 2000)
}

/// The same records written with `O_DIRECT | O_DSYNC` (each write durable on return, no page
/// cache, no separate sync), as PostgreSQL's `wal_sync_method = open_datasync` writes its WAL:
/// whole 4 KiB blocks, the last one rewritten as it fills. `zeroed`: into a region written
/// with zeros first (no extent to convert on the first write of a block); otherwise into the
/// sparse preallocated region the writer keeps. Measures what this write path would save.
fn direct_sync_rate(zeroed: bool) -> (Duration, Duration) {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    const BLOCK: usize = 4096;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("direct.log");
    let region = gatehouse_audit::log::PREALLOCATE;
    {
        let file = std::fs::File::create(&path).expect("creates");
        if zeroed {
            let zeros = vec![0u8; 1 << 20];
            for i in 0..region / zeros.len() as u64 {
                file.write_all_at(&zeros, i * zeros.len() as u64)
                    .expect("writes zeros");
            }
        } else {
            file.set_len(region).expect("extends");
        }
        file.sync_all().expect("syncs");
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(&path)
        .expect("opens with O_DIRECT (not on tmpfs)");
    let layout = std::alloc::Layout::from_size_align(64 * BLOCK, BLOCK).expect("a layout");
    // SAFETY: the layout has a non-zero size; the memory is zeroed and freed below.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!ptr.is_null(), "allocates");
    // SAFETY: `ptr` is a live allocation of `layout.size()` bytes owned by this function.
    let aligned = unsafe { std::slice::from_raw_parts_mut(ptr, layout.size()) };
    let mut chain = Chain::new();
    let mut line = Vec::new();
    // Bytes of the last, partly filled block held in `aligned[..tail]`; it starts at `block_at`.
    let (mut block_at, mut tail) = (0u64, 0usize);
    let (started, cpu) = (Instant::now(), thread_cpu());
    for _ in 0..2000 {
        chain.next_into(&mut line);
        aligned[tail..tail + line.len()].copy_from_slice(&line);
        tail += line.len();
        let len = tail.div_ceil(BLOCK) * BLOCK;
        aligned[tail..len].fill(0);
        file.write_all_at(&aligned[..len], block_at)
            .expect("writes");
        let full = tail / BLOCK * BLOCK;
        aligned.copy_within(full..tail, 0);
        block_at += full as u64;
        tail -= full;
    }
    let rate = (started.elapsed() / 2000, (thread_cpu() - cpu) / 2000);
    // SAFETY: allocated above with the same layout; `aligned` is not used after this.
    unsafe { std::alloc::dealloc(ptr, layout) };
    rate
}

/// CPU time of the calling thread (user and system), to tell a sync's CPU from its wait.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

fn main() {
    let params = Some(vec![Some("42".to_string())]);
    let policies = vec!["agents-read".to_string()];
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("audit");
    let mut buf = Vec::with_capacity(4096);
    group.bench_function("intent record: encode once and chain", |b| {
        b.iter(|| {
            buf.clear();
            let event = intent(black_box(&params), &policies, 7);
            black_box(encode_line(7, 1, &event, GENESIS, &mut buf));
        })
    });
    let prebuilt = intent(&params, &policies, 7);
    group.bench_function("intent record: chain an encoded record", |b| {
        b.iter(|| {
            buf.clear();
            black_box(encode_line(7, 1, black_box(&prebuilt), GENESIS, &mut buf));
        })
    });
    group.bench_function("intent record: via a JSON value, then chain", |b| {
        b.iter(|| {
            buf.clear();
            let event = Event::new(
                "statement.intent",
                Some("gatehouse/bench"),
                serde_json::json!({
                    "session": "8f2c61a0b94d3e17", "seq": 7,
                    "text": gatehouse_audit::record::bounded_text(TEXT, 4096),
                    "params": black_box(&params), "decision": "allow", "policies": &policies,
                }),
            );
            black_box(encode_line(7, 1, &event, GENESIS, &mut buf));
        })
    });
    group.finish();

    // Appends to a real file: each strict append waits for an fsync, so these are measured
    // as rates over 2,000 records rather than with criterion's many iterations.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    for (name, (wall, cpu)) in [
        ("write + fdatasync, preallocated", raw_sync_rate(true)),
        ("write + fdatasync, growing the file", raw_sync_rate(false)),
        ("O_DIRECT | O_DSYNC, sparse region", direct_sync_rate(false)),
        (
            "O_DIRECT | O_DSYNC, zeros written before",
            direct_sync_rate(true),
        ),
    ] {
        println!(
            "audit floor ({name}): {:.1} µs per record written and synced by the caller itself, {:.1} µs of its CPU",
            us(wall),
            us(cpu)
        );
    }
    for (name, durability) in [
        ("strict", Durability::Strict),
        ("batched", Durability::Batched),
    ] {
        let one = append_rate(&rt, durability, 1);
        let eight = append_rate(&rt, durability, 8);
        println!(
            "audit append ({name}): {:.1} µs per record from 1 caller, {:.1} µs per record from 8 concurrent callers",
            one.as_secs_f64() * 1e6,
            eight.as_secs_f64() * 1e6
        );
    }
}
