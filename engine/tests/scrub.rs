//! The background scrub: damage to data at rest is found while the engine runs.
//!
//! Guards against what an independent test found: a flipped bit in a finished segment, below
//! the newest snapshot, went unnoticed (start-up replays only what follows the snapshot), though
//! the documents said corruption stops start-up. The scrub re-reads finished segments,
//! snapshots and key index runs; here it runs every few milliseconds, fast, on an engine that
//! keeps writing, first over sound files (no finding), then after one bit of each kind of file
//! was flipped on disk.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ledger_engine::keyindex::KEYS_DIR;
use ledger_engine::recovery::ShardPaths;
use ledger_engine::testing::loyalty::{Loyalty, execute_all};
use ledger_engine::wal::reader::{self, ScanOptions};
use ledger_engine::{Engine, EngineConfig, Limits, Response, ShardStats};

fn config(dir: &Path) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    config.shard_count = Some(1);
    config.limits = Limits { segment_bytes: 64 * 1024, ..Limits::test_min() };
    config.tuning.scrub_rate_bytes_per_sec = 512 * 1024 * 1024;
    config.tuning.scrub_interval = Duration::from_millis(20);
    config.tuning.snapshot_on_shutdown = false;
    config
}

fn write(engine: &Engine, loyalty: &Loyalty, keys: std::ops::Range<u128>) {
    for chunk in keys.collect::<Vec<_>>().chunks(100) {
        let earns = chunk.iter().map(|key| loyalty.earn(*key, (*key % 9) as u64, 2)).collect();
        let responses = execute_all(engine, earns);
        assert!(responses.iter().all(|r| matches!(r, Response::Committed(_))));
    }
}

/// Waits until `done` holds of the shard's stats, for at most 20 s.
fn wait_for(engine: &Engine, what: &str, done: impl Fn(&ShardStats) -> bool) -> ShardStats {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = engine.stats()[0];
        if done(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "{what}: {stats:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn flip(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x08;
    std::fs::write(path, bytes).unwrap();
}

fn files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == extension))
        .collect();
    files.sort();
    files
}

#[test]
fn the_scrub_finds_a_flipped_bit_in_an_old_segment_a_snapshot_and_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path())).unwrap();
    let loyalty = Loyalty::define(&engine);
    write(&engine, &loyalty, 1..1_500);
    engine.snapshot_now().unwrap();
    write(&engine, &loyalty, 10_000..10_300);
    let paths = ShardPaths::new(dir.path(), 0);
    assert!(reader::scan(&paths.wal, &ScanOptions::all(), |_| Ok::<(), ()>(())).is_ok());
    let segments = files(&paths.wal, "wal");
    assert!(segments.len() >= 4, "several finished segments: {segments:?}");

    // Sound files, while writes go on: passes without findings.
    let passes = engine.stats()[0].scrub_passes;
    write(&engine, &loyalty, 20_000..20_300);
    let stats = wait_for(&engine, "two clean passes", |s| s.scrub_passes >= passes + 2);
    assert_eq!(stats.scrub_findings, 0, "{stats:?}");
    assert!(stats.scrub_bytes > 0);

    // A record in the oldest segment, below the snapshot: start-up would not read it.
    let mut first_record = None;
    reader::scan(&paths.wal, &ScanOptions::all(), |record| {
        if record.segment == 1 && first_record.is_none() && record.header.lsn.0 > 4 {
            first_record = Some(record.offset + 70);
        }
        Ok::<(), ()>(())
    })
    .unwrap();
    flip(&segments[0], first_record.unwrap());
    let stats = wait_for(&engine, "the segment's damage found", |s| s.scrub_findings_last == 1);
    assert!(stats.scrub_findings >= 1);
    // The engine goes on serving meanwhile.
    write(&engine, &loyalty, 30_000..30_010);

    // A snapshot's body, and a key index block.
    let snapshot = files(&paths.snapshots, "snap").remove(0);
    flip(&snapshot, 200);
    let runs = files(&paths.root.join(KEYS_DIR), "run");
    flip(&runs[0], 4096 + 300);
    // The damaged run is found and set aside (by the indexer) for the next start to rebuild;
    // from then on every pass finds the other two: the segment and the snapshot.
    let mut aside = runs[0].clone().into_os_string();
    aside.push(".damaged");
    let stats = wait_for(&engine, "the run set aside", |_| Path::new(&aside).exists());
    // A pass that started after the run was set aside: the segment and the snapshot.
    let passes = stats.scrub_passes;
    let stats = wait_for(&engine, "two more passes", |s| s.scrub_passes >= passes + 2);
    assert_eq!(stats.scrub_findings_last, 2, "{stats:?}");
    engine.shutdown();
}
