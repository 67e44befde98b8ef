//! Apply throughput of one shard's state machine in memory (no WAL, no threads): one-posting
//! earns for random customers, with the idempotency table at its steady state.
//!
//! Run: `cargo bench -p ledger-benches --bench apply`.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ledger_benches::{EarnRecords, ledger_with_loyalty};
use ledger_engine::Limits;

fn apply(c: &mut Criterion) {
    let prefetch = std::env::var_os("APPLY_NO_PREFETCH").is_none();
    let mut group = c.benchmark_group("apply");
    group.measurement_time(Duration::from_secs(8));
    for customers in [10_000u64, 1_000_000] {
        let limits = Limits {
            idempotency_keys_max: std::env::var("APPLY_KEYS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(Limits::default().idempotency_keys_max),
            ..Limits::default()
        };
        let (mut ledger, classes) = ledger_with_loyalty(limits.clone());
        let mut records = EarnRecords::new(classes, customers);
        // Warm up: every customer exists, the idempotency table is full and evicting.
        let warm = (customers as usize).max(limits.idempotency_keys_max + 10_000);
        for chunk in 0..warm.div_ceil(100_000) {
            let _ = chunk;
            for (record, fingerprint) in records.take(&ledger, 100_000) {
                ledger.apply(&record, fingerprint).unwrap();
            }
        }
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("earn/{customers}-customers"), |bencher| {
            bencher.iter_custom(|iterations| {
                let batch = records.take(&ledger, iterations as usize);
                let started = Instant::now();
                // As a shard does: touch a chunk's accounts first, then apply it.
                for chunk in batch.chunks(256) {
                    if prefetch {
                        for (record, _) in chunk {
                            ledger.prefetch_body(&record.body);
                        }
                    }
                    for (record, fingerprint) in chunk {
                        ledger.apply(record, *fingerprint).unwrap();
                    }
                }
                let elapsed = started.elapsed();
                drop(batch);
                elapsed
            });
        });
    }
    group.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
