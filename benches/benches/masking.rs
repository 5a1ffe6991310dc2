//! Masking cost: detector throughput over typical result text (MB/s per core), and the time to
//! mask 100 typical PostgreSQL DataRows, beside the unmasked path (copying the same bytes).
//! Targets (the masking issue): at least 200 MB/s per core, under 1 ms per 100 rows.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, BytesMut};
use criterion::{Criterion, Throughput};
use gatehouse_core::config::Config;
use gatehouse_core::identity::{Identity, IdentityKind};
use gatehouse_core::masking::Masking;
use gatehouse_mask::{Detector, Masker, Strategy, TokenKey, ValueRule};
use gatehouse_postgres::mask::PgMasking;

/// Typical result values: mostly names, ids, dates, amounts and prose; one row in ten holds an
/// email, one in twenty a card number.
fn typical_rows(n: usize) -> Vec<Vec<String>> {
    (0..n)
        .map(|i| {
            vec![
                format!("{}", 100_000 + i),
                format!("Customer number {i} of the northern region"),
                format!("2026-11-{:02} 10:{:02}:00+00", i % 28 + 1, i % 60),
                format!("{}.{:02}", 1000 + i * 7, i % 100),
                if i % 10 == 0 {
                    format!("contact person{i}@example.com about the renewal")
                } else {
                    "renewal scheduled, no open issues, invoice sent".to_string()
                },
                if i % 20 == 0 {
                    "paid with 4111 1111 1111 1111".to_string()
                } else {
                    "paid by bank transfer".to_string()
                },
            ]
        })
        .collect()
}

fn data_row(values: &[String]) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_u8(b'D');
    out.put_i32(0);
    out.put_i16(values.len() as i16);
    for v in values {
        out.put_i32(v.len() as i32);
        out.put_slice(v.as_bytes());
    }
    let len = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out
}

fn all_detectors() -> Masker {
    let rules = Detector::ALL
        .iter()
        .map(|d| ValueRule {
            name: d.name().into(),
            detector: *d,
            strategy: Strategy::Redact,
        })
        .collect();
    Masker::new(rules, TokenKey::new(b"bench".to_vec()))
}

fn main() {
    let masker = all_detectors();
    let rows = typical_rows(1000);
    let text: String = rows.iter().flatten().map(|v| format!("{v}\n")).collect();
    let frames: Vec<BytesMut> = rows[..100].iter().map(|r| data_row(r)).collect();

    let config = Config::parse(
        &Detector::ALL
            .iter()
            .map(|d| format!("[[masking.rules]]\ndetector = \"{}\"\n", d.name()))
            .collect::<String>(),
        std::path::Path::new("/"),
    )
    .expect("config");
    let masking = Masking::new(&config.masking, TokenKey::new(b"bench".to_vec()));
    let identity = Identity {
        subject: "bench".into(),
        issuer: "gatehouse".into(),
        display_name: "bench".into(),
        kind: IdentityKind::Service,
        groups: vec!["agents".into()],
        token_id: "tok".into(),
        expires_at: None,
    };
    let session = masking
        .for_session(&identity, "appdb")
        .expect("rules apply");
    let pg = PgMasking::values_only(Arc::clone(&session));
    let mut counts = pg.new_counts();

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("mask");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("detectors/all-11", |b| {
        b.iter(|| black_box(masker.mask_str(black_box(&text))))
    });
    group.bench_function("unmasked/copy", |b| {
        b.iter(|| {
            let mut v = Vec::with_capacity(text.len());
            v.extend_from_slice(black_box(text.as_bytes()));
            black_box(v)
        })
    });
    group.finish();
    c.bench_function("datarow/100-rows", |b| {
        b.iter(|| {
            for f in &frames {
                black_box(pg.data_row(black_box(f), None, &mut counts).expect("masks"));
            }
        })
    });
    // The query side: a simple-protocol statement on a relation with a masked column is
    // classified and checked in one walk of its parse tree; the reference check converts the
    // whole tree to JSON and walks it again (what the relay did before).
    let masked = [gatehouse_pgsql::masking::MaskedRelation {
        schema: "public".into(),
        table: "pgbench_accounts".into(),
        columns: vec!["filler".into()],
    }];
    let select = "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;";
    let mut group = c.benchmark_group("query check");
    group.bench_function("classify + masking check, one walk", |b| {
        b.iter(|| {
            black_box(gatehouse_pgsql::classify_and_check(
                black_box(select),
                &masked,
            ))
        })
    });
    group.bench_function("classify, then the JSON masking check", |b| {
        b.iter(|| {
            black_box(gatehouse_pgsql::classify(black_box(select)));
            black_box(gatehouse_pgsql::masking::check_reference(
                black_box(select),
                &masked,
            ))
        })
    });
    group.bench_function("classify alone", |b| {
        b.iter(|| black_box(gatehouse_pgsql::classify(black_box(select))))
    });
    group.finish();
    c.final_summary();

    // The figures the targets are stated in.
    let runs = 50;
    let started = Instant::now();
    for _ in 0..runs {
        black_box(masker.mask_str(black_box(&text)));
    }
    let secs = started.elapsed().as_secs_f64() / runs as f64;
    let started = Instant::now();
    for _ in 0..runs {
        let mut v = Vec::with_capacity(text.len());
        v.extend_from_slice(black_box(text.as_bytes()));
        black_box(v);
    }
    let copy_secs = started.elapsed().as_secs_f64() / runs as f64;
    let mut per_100: Vec<f64> = (0..200)
        .map(|_| {
            let t = Instant::now();
            for f in &frames {
                black_box(pg.data_row(black_box(f), None, &mut counts).expect("masks"));
            }
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    per_100.sort_by(|a, b| a.total_cmp(b));
    println!(
        "masking: {:.0} MB/s with all 11 detectors (copy: {:.0} MB/s, ratio {:.3}); 100 DataRows: p50 {:.0} µs, p99 {:.0} µs",
        text.len() as f64 / secs / 1e6,
        text.len() as f64 / copy_secs / 1e6,
        copy_secs / secs,
        per_100[per_100.len() / 2],
        per_100[per_100.len() * 99 / 100]
    );
}
