//! Replay determinism: the state rebuilt from the WAL alone equals the live state, bit for bit.
//!
//! How: a random workload (earns, redemptions, holds, captures, voids, expiries, cross-shard
//! transfers, reversals, history reads, retries; purchases of baskets priced by the documented
//! example rules and by a second rule version scheduled mid-run, member reads, and jumps of
//! weeks that make lots expire and tier windows roll) runs on a two-shard engine with a manual
//! clock and periodic snapshots.
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
use ledger_engine::testing::loyalty::{Loyalty, example_rules, execute_all};
use ledger_engine::{
    Command, Engine, EngineConfig, Limits, Response, ShardId, ShardTuning, Timestamp,
};
use proptest::prelude::*;

const SECOND: u64 = 1_000_000_000;
const DAY: u64 = 86_400 * SECOND;

/// A basket of 1..=8 lines over the example rules' categories (0: none, 40 and 50 excluded).
fn basket(next: &mut impl FnMut(u64) -> u64) -> Vec<(u16, u64)> {
    const CATEGORIES: [u16; 6] = [0, 10, 20, 30, 40, 50];
    (0..1 + next(8)).map(|_| (CATEGORIES[next(6) as usize], 1 + next(40_000))).collect()
}

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
            let command = match next(14) {
                10 | 11 => {
                    let lines = basket(&mut next);
                    loyalty.purchase(key, customer, [1, 7, 9][next(3) as usize], &lines)
                }
                12 => loyalty.member_query(customer, 30),
                13 => loyalty.redeem(key, customer, 1 + next(3_000)),
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
        // Now and then weeks pass: lots reach their midnight, tier windows roll.
        if next(6) == 0 {
            clock.advance(next(70) * DAY);
        }
    }
}

fn check_replay_matches_live(seed: u64, rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    // The day before Black Friday 2026: the example rules' promotions run during the workload.
    let clock = Arc::new(ManualClock::new(Timestamp(1_795_694_400 * SECOND)));
    let engine_config = config(dir.path(), clock.clone());
    let engine = Engine::open(engine_config.clone()).unwrap();
    let loyalty = Loyalty::define(&engine);
    let accounts = loyalty.define_programme(&engine);
    engine.define_rules(example_rules(), accounts, None).unwrap();
    // A second version, scheduled ahead: twice the base rate from 30 days on.
    let mut doubled = example_rules();
    doubled.base.points *= 2;
    engine
        .define_rules(
            doubled,
            accounts,
            Some(ledger_engine::clock::Clock::now(&*clock).plus_nanos(30 * DAY)),
        )
        .unwrap();
    run_workload(&engine, &loyalty, &clock, seed, rounds);
    // Let transfers settle, then capture the live states.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while engine.stats().iter().any(|s| s.transfers_in_flight > 0) {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    // The workload did what it is for: purchases were priced and some customer reached a
    // higher tier; then two years pass and every customer's lots expire into breakage (each
    // before its member read, or by the sweep).
    let members = |engine: &Engine| -> Vec<u8> {
        (0..30)
            .filter_map(|customer| match engine.execute(loyalty.member_query(customer, 30)) {
                Response::Member(view) => Some(view.tier_recorded.max(view.tier)),
                _ => None,
            })
            .collect()
    };
    let tiers = members(&engine);
    assert!(tiers.iter().any(|tier| *tier > 0), "no customer moved up a tier: {tiers:?}");
    clock.advance(800 * DAY);
    members(&engine);
    let breakage = engine.account_total(ledger_engine::AccountId::new(accounts.breakage, 0));
    assert!(breakage.is_ok_and(|b| b.balance_posted() > 0), "no lot expired");
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
