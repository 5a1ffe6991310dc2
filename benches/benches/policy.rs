//! Per-statement policy work: classify (libpg_query) and decide (Cedar) with 100 policies, the
//! first time a session sees a statement's shape and when it has decided it before.
//! Besides criterion's means, prints p50/p99 of classify+decide per statement, the figure the
//! target is stated in (p99 under 50 µs).

use std::hint::black_box;
use std::time::Instant;

use criterion::Criterion;
use gatehouse_benches::{TYPICAL, connection, engine, identity};
use gatehouse_policy::RequestFacts;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(dir.path(), 100);
    let identity = identity();
    let connection = connection();
    let facts = RequestFacts {
        identity: &identity,
        connection: &connection,
        client_ip: [10, 0, 0, 7].into(),
        protocol: "postgres",
        grants: &[],
    };

    // The gateway builds this once per session; decisions reuse it.
    let cache = engine.session_cache(&identity, &connection);

    let mut c = Criterion::default().configure_from_args();
    for (name, sql) in TYPICAL {
        c.bench_function(&format!("classify/{name}"), |b| {
            b.iter(|| gatehouse_pgsql::classify(black_box(sql)))
        });
        let classified = gatehouse_pgsql::classify(sql);
        // A session's first statement of a shape: Cedar builds the context and evaluates it.
        c.bench_function(&format!("decide_100_policies/{name}"), |b| {
            b.iter_batched(
                || engine.session_cache(&identity, &connection),
                |fresh| engine.decide_cached(&fresh, &facts, black_box(&classified)),
                criterion::BatchSize::SmallInput,
            )
        });
        // The same shape again in the session: the remembered decision.
        c.bench_function(&format!("decide_remembered/{name}"), |b| {
            b.iter(|| engine.decide_cached(&cache, &facts, black_box(&classified)))
        });
    }
    c.bench_function("session_cache", |b| {
        b.iter(|| engine.session_cache(black_box(&identity), &connection))
    });
    c.final_summary();

    println!("\nclassify+decide per statement, 100+ policies (20,000 runs each):");
    println!(
        "{:<16} {:>10} {:>10} {:>10}",
        "statement", "p50 µs", "p99 µs", "max µs"
    );
    for (name, sql) in TYPICAL {
        let mut samples: Vec<f64> = (0..20_000)
            .map(|_| {
                let start = Instant::now();
                let classified = gatehouse_pgsql::classify(black_box(sql));
                black_box(engine.decide_cached(&cache, &facts, &classified));
                start.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        samples.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
        println!(
            "{name:<16} {:>10.1} {:>10.1} {:>10.1}",
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
}
