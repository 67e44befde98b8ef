//! The key index on its own: how long writing the runs of N keys takes, what they cost on disk
//! and in memory, and what a lookup costs: a fresh key (filters only) and a retry found only on
//! disk (a block read), with the page cache warm and, when the process may drop it, cold. Not a
//! criterion benchmark: it reports percentiles from HDR histograms.
//!
//! Run: `cargo bench -p ledger-benches --bench keyindex` (env: KEYINDEX_KEYS, default 10M;
//! KEYINDEX_RUN_KEYS, default 1 Mi, the run size of the default table; KEYINDEX_LOOKUPS,
//! default 100,000; KEYINDEX_DIR, where the runs go).

use std::time::Instant;

use hdrhistogram::Histogram;
use ledger_engine::keyindex::KeyIndex;
use ledger_engine::keyindex::run::{RunIdentity, write_run};
use ledger_engine::ledger::keys::KeyEntry;
use ledger_engine::{IdempotencyKey, Lsn, ShardId, TerminalId, Timestamp, TxId};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A fixed pseudo-random sequence (SplitMix64).
struct Keys(u64);

impl Keys {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn key(&mut self) -> (TerminalId, IdempotencyKey) {
        let terminal = TerminalId((self.next() % 5_000) as u32);
        let key = u128::from(self.next()) << 64 | u128::from(self.next()) | 1;
        (terminal, IdempotencyKey::new(key).expect("odd, so not zero"))
    }
}

fn entry(terminal: TerminalId, key: IdempotencyKey, lsn: u64) -> KeyEntry {
    KeyEntry {
        terminal,
        key,
        inserted: Timestamp(1_900_000_000_000_000_000 + lsn),
        fingerprint: lsn.wrapping_mul(31),
        tx_id: TxId(lsn << 12),
        lsn: Lsn(lsn),
        amount: 1,
        refused: None,
        mark: false,
    }
}

fn report(name: &str, histogram: &Histogram<u64>) {
    println!(
        "{name}: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs ({} lookups)",
        histogram.value_at_quantile(0.5) as f64 / 1_000.0,
        histogram.value_at_quantile(0.99) as f64 / 1_000.0,
        histogram.value_at_quantile(0.999) as f64 / 1_000.0,
        histogram.max() as f64 / 1_000.0,
        histogram.len()
    );
}

fn main() {
    let keys = env("KEYINDEX_KEYS", 10_000_000);
    let run_keys = env("KEYINDEX_RUN_KEYS", 1 << 20).max(1);
    let lookups = env("KEYINDEX_LOOKUPS", 100_000);
    let dir = match std::env::var("KEYINDEX_DIR") {
        Ok(dir) => tempfile::tempdir_in(dir).unwrap(),
        Err(_) => tempfile::tempdir_in(".").unwrap(),
    };
    let identity = RunIdentity { shard: ShardId::new(0).unwrap(), shard_count: 1, cluster_id: 7 };

    // Build: runs of `run_keys`, as the indexer writes them (sort, encode, write, fsync).
    let mut generator = Keys(42);
    let started = Instant::now();
    let mut written = 0u64;
    let mut buffer = Vec::with_capacity(run_keys as usize);
    while written < keys {
        buffer.clear();
        let from = written;
        while buffer.len() < run_keys as usize && written < keys {
            written += 1;
            let (terminal, key) = generator.key();
            buffer.push(entry(terminal, key, written));
        }
        write_run(dir.path(), identity, Lsn(from), Lsn(written), &buffer).unwrap();
    }
    let build = started.elapsed();
    let disk: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum();
    let opened = KeyIndex::open(dir.path(), identity, u64::MAX).unwrap();
    assert!(opened.damaged.is_empty() && opened.gaps.is_empty());
    let mut index = opened.index;
    let (runs, entries, memory) = index.size();
    println!(
        "build: {keys} keys in {runs} runs in {:.2} s ({:.2} M keys/s); {:.1} bytes per key on \
         disk, {:.2} bytes per key in memory",
        build.as_secs_f64(),
        keys as f64 / build.as_secs_f64() / 1e6,
        disk as f64 / entries as f64,
        memory as f64 / entries as f64
    );

    let now = Timestamp(1_900_000_000_000_000_000 + keys + 1);
    // Fresh keys: every run's filter, no disk (unless a false positive).
    let mut fresh = Histogram::<u64>::new(3).unwrap();
    let mut other = Keys(4242);
    let reads_before = index.counters().block_reads;
    for _ in 0..lookups {
        let (terminal, key) = other.key();
        let started = Instant::now();
        let found = index.lookup(terminal, key, now);
        fresh.record(started.elapsed().as_nanos() as u64).unwrap();
        assert_eq!(found, ledger_engine::keyindex::Lookup::Absent);
    }
    let false_positive = index.counters().block_reads - reads_before;
    report("fresh key (filters only)", &fresh);
    println!(
        "  false positives: {false_positive} block reads for {lookups} fresh keys over {runs} \
         runs ({:.3}% per run)",
        false_positive as f64 * 100.0 / lookups as f64 / runs as f64
    );

    // Retries found only on disk: keys drawn from the whole index.
    let cold = std::fs::write("/proc/sys/vm/drop_caches", "1\n").is_ok();
    // The same keys twice: first from the disk (the cache was dropped, when allowed), then with
    // their blocks in the page cache.
    let first = if cold { "retry, cold page cache" } else { "retry, first read" };
    for (name, count) in [(first, lookups / 10), ("retry, blocks in the page cache", lookups / 10)]
    {
        let mut retries = Histogram::<u64>::new(3).unwrap();
        let mut again = Keys(42);
        let stride = (keys / count.max(1)).max(1);
        for index_of_key in 0..keys {
            let (terminal, key) = again.key();
            if index_of_key % stride != 0 {
                continue;
            }
            let started = Instant::now();
            let found = index.lookup(terminal, key, now);
            retries.record(started.elapsed().as_nanos() as u64).unwrap();
            assert!(matches!(found, ledger_engine::keyindex::Lookup::Found(_)), "{found:?}");
        }
        report(name, &retries);
    }
}
