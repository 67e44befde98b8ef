//! Replay determinism: the state rebuilt from the WAL alone equals the live state, bit for bit.
//!
//! How: a random workload (earns, redemptions, holds, captures, voids, expiries, cross-shard
//! transfers, reversals, history reads, retries) runs on a two-shard engine with a manual clock and periodic snapshots.
//! At the end each shard's live state is captured by a snapshot (a clone of the live ledger);
//! then each shard's WAL is replayed from LSN 1 into a fresh ledger, without any snapshot, and
//! both states must encode to the same bytes. A second check replays from an intermediate
//! snapshot onwards and must land on the same bytes too.

use std::sync::Arc;
use std::time::Duration;

use ledger_engine::clock::ManualClock;
use ledger_engine::engine::replay_shard_offline;
use ledger_engine::ledger::{Ledger, LedgerConfig};
use ledger_engine::recovery::{ShardPaths, recover_shard};
use ledger_engine::testing::loyalty::{Loyalty, execute_all};
use ledger_engine::{
    Command, Engine, EngineConfig, Limits, Response, ShardId, ShardTuning, Timestamp,
};
use proptest::prelude::*;

const SECOND: u64 = 1_000_000_000;

fn config(dir: &std::path::Path, clock: Arc<ManualClock>) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    config.shard_count = Some(2);
    config.limits =
        Limits { inbox_depth_max: 4096, idempotency_keys_max: 4096, ..Limits::test_min() };
    config.clock = clock;
    config.tuning = ShardTuning {
        tick: Duration::from_millis(1),
        snapshot_every_records: 150,
        snapshot_on_shutdown: false,
        ..ShardTuning::default()
    };
    config
}

fn ledger_config(engine_config: &EngineConfig, shard: u16) -> LedgerConfig {
    LedgerConfig {
        shard: ShardId::new(shard).unwrap(),
        shard_count: 2,
        limits: engine_config.limits.clone(),
        idempotency_retention_nanos: engine_config.idempotency_retention_nanos,
        hold_timeout_max_nanos: engine_config.hold_timeout_max_nanos,
    }
}

fn encoded(ledger: &Ledger) -> Vec<u8> {
    let mut bytes = Vec::new();
    ledger.encode_state(&mut bytes);
    bytes
}

fn run_workload(engine: &Engine, loyalty: &Loyalty, clock: &ManualClock, seed: u64, rounds: usize) {
    let mut rng = seed.max(1);
    let mut next = move |bound: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % bound
    };
    let mut key = 0u128;
    let mut holds = Vec::new();
    let mut committed_ids = Vec::new();
    for _ in 0..rounds {
        let mut commands: Vec<Command> = Vec::new();
        for _ in 0..32 {
            key += 1;
            let customer = next(30);
            let amount = 1 + next(300);
            let command = match next(10) {
                0..=3 => loyalty.earn(key, customer, amount),
                4 | 5 => loyalty.redeem(key, customer, amount),
                6 => loyalty.transfer(key, customer, next(30), amount),
                7 => loyalty.hold(key, customer, amount, (1 + next(20)) * SECOND),
                8 => match holds.get(next(holds.len().max(1) as u64) as usize) {
                    Some(hold) if next(2) == 0 => loyalty.capture(key, *hold, Some(1 + next(200))),
                    Some(hold) => loyalty.void(key, *hold),
                    None => loyalty.earn(key, customer, amount),
                },
                9 if next(3) == 0 => {
                    match committed_ids.get(next(committed_ids.len().max(1) as u64) as usize) {
                        Some(original) => loyalty.reverse(key, *original),
                        None => loyalty.history_query(customer, 8),
                    }
                }
                _ => loyalty.earn(key.saturating_sub(next(20) as u128).max(1), customer, amount),
            };
            commands.push(command);
        }
        for response in execute_all(engine, commands.clone()) {
            if let Response::Committed(committed) = response {
                holds.push(committed.tx_id);
                committed_ids.push(committed.tx_id);
            }
        }
        clock.advance(next(3) * SECOND);
    }
}

fn check_replay_matches_live(seed: u64, rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp(1_800_000_000 * SECOND)));
    let engine_config = config(dir.path(), clock.clone());
    let engine = Engine::open(engine_config.clone()).unwrap();
    let loyalty = Loyalty::define(&engine);
    run_workload(&engine, &loyalty, &clock, seed, rounds);
    // Let transfers settle, then capture the live states.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while engine.stats().iter().any(|s| s.transfers_in_flight > 0) {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    let live_lsns = engine.snapshot_now().unwrap();
    engine.shutdown();

    for shard in 0..2u16 {
        let config = ledger_config(&engine_config, shard);
        let paths = ShardPaths::new(dir.path(), shard);
        let meta = ledger_engine::datadir::read_meta(dir.path()).unwrap();
        let snapshot_path = paths
            .snapshots
            .join(ledger_engine::snapshot::snapshot_file_name(live_lsns[usize::from(shard)]));
        let (_, live) =
            ledger_engine::snapshot::load(&snapshot_path, config.clone(), meta.cluster_id).unwrap();

        let replayed = replay_shard_offline(
            dir.path(),
            ShardId::new(shard).unwrap(),
            config.clone(),
            Some(live.lsn()),
        )
        .unwrap();
        assert_eq!(replayed.lsn(), live.lsn());
        assert!(
            encoded(&replayed) == encoded(&live),
            "shard {shard}: replay differs from the live state"
        );
        assert!(replayed == live);
        replayed.check_invariants().unwrap();

        // Recovery from the older kept snapshot plus the WAL after it reaches the same state as
        // replaying the whole WAL from LSN 1.
        let snapshots = ledger_engine::snapshot::list_snapshots(&paths.snapshots).unwrap();
        assert!(snapshots.len() >= 2, "the workload takes periodic snapshots");
        std::fs::remove_file(&snapshots[0].1).unwrap();
        let recovered = recover_shard(&paths, config.clone(), meta.cluster_id, None).unwrap();
        assert_eq!(recovered.report.snapshot_lsn, snapshots[1].0);
        let whole =
            replay_shard_offline(dir.path(), ShardId::new(shard).unwrap(), config, None).unwrap();
        assert!(
            encoded(&recovered.ledger) == encoded(&whole),
            "shard {shard}: snapshot + wal differs"
        );
    }
}

#[test]
fn replaying_the_wal_reproduces_the_live_state() {
    check_replay_matches_live(0x5eed, 60);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn replay_is_deterministic_for_any_workload(seed in any::<u64>()) {
        check_replay_matches_live(seed, 25);
    }
}
