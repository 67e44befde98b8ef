//! A deterministic apply workload for counting, not timing: `n` one-posting earns over
//! 1,000,000 customers applied to one shard's state machine in chunks of 256 with prefetching,
//! as the shard does, with the idempotency table full and rotating.
//!
//! This machine's wall-clock noise (±30% between runs) hides changes of a few percent, so an
//! A/B of the state machine is read from simulated cache misses, which are the same run after
//! run (docs/performance.md, "Apply: the state machine alone"):
//!
//! ```sh
//! cargo build --release -p ledger-benches --example apply_workload
//! valgrind --tool=cachegrind --cache-sim=yes target/release/examples/apply_workload 3000000
//! ```

use ledger_benches::{EarnRecords, ledger_with_loyalty};
use ledger_engine::Limits;

fn main() {
    let count: usize = match std::env::args().nth(1).map(|arg| arg.parse()) {
        None => 3_000_000,
        Some(Ok(count)) => count,
        Some(Err(_)) => {
            eprintln!("usage: apply_workload [RECORDS]");
            std::process::exit(2);
        }
    };
    let (mut ledger, classes) = ledger_with_loyalty(Limits::default());
    let mut records = EarnRecords::new(classes, 1_000_000);
    let mut applied = 0;
    while applied < count {
        let batch = records.take(&ledger, 100_000.min(count - applied));
        for chunk in batch.chunks(256) {
            for (record, _) in chunk {
                ledger.prefetch_body(&record.body);
            }
            for (record, fingerprint) in chunk {
                ledger.apply(record, *fingerprint).expect("earns apply");
            }
        }
        applied += batch.len();
    }
    println!("applied {applied} records; last lsn {}", ledger.lsn().0);
}
