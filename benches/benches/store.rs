//! The store's cost per recorded statement: rows written by the recorder in one transaction
//! per batch, as the recorder does, for batch sizes that match its group-commit window at
//! typical loads (a 5 ms window at 20,000 statements a second holds about 100 rows). Eight
//! sessions interleave their rows, as concurrent clients do.

use std::time::{Duration, Instant};

use criterion::Criterion;
use gatehouse_core::store::{Outcome, Record, StatementRow, Store};

const SESSIONS: usize = 8;
const ROWS: usize = 20_000;

fn row(session: usize, seq: i64) -> Record {
    Record::Statement(Box::new(StatementRow {
        session_id: format!("8f2c61a0b94d3e{session:02x}"),
        seq,
        started_at: 1_764_000_000_000_000 + seq,
        duration_us: Some(180),
        text: "SELECT abalance FROM pgbench_accounts WHERE aid = $1;".into(),
        params: Some(vec![Some("42".into())]),
        rows: Some(1),
        outcome: Outcome::Ok,
        sqlstate: None,
        decision: Some("allow".into()),
        policies: vec!["agents-read".into()],
        masked: Vec::new(),
    }))
}

/// Mean time per row over `ROWS` rows written in batches of `batch`.
fn per_row(rt: &tokio::runtime::Runtime, batch: usize) -> Duration {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    rt.block_on(async {
        let store = Store::open(&url).await.expect("opens");
        let records: Vec<Record> = (0..ROWS)
            .map(|i| row(i % SESSIONS, (i / SESSIONS) as i64))
            .collect();
        let started = Instant::now();
        for chunk in records.chunks(batch) {
            store.write_batch(chunk).await.expect("writes");
        }
        started.elapsed() / ROWS as u32
    })
}

fn store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("store statement rows");
    group.sample_size(10);
    for batch in [10, 100, 1000] {
        group.bench_function(format!("batch of {batch}"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| per_row(&rt, batch)).sum())
        });
    }
    group.finish();
}

criterion::criterion_group!(benches, store);
criterion::criterion_main!(benches);
