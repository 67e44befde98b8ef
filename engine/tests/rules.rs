//! Rule versions of the loyalty programme: recorded on every shard through the WAL, kept by
//! snapshots, in force from their effective time, immutable, and refused whole when wrong.

use std::path::Path;
use std::sync::Arc;

use ledger_engine::clock::ManualClock;
use ledger_engine::engine::{ledger_config, replay_shard_offline};
use ledger_engine::loyalty::RuleSet;
use ledger_engine::loyalty::programme::ProgrammeAccounts;
use ledger_engine::testing::loyalty::{Loyalty, example_rules};
use ledger_engine::{DefineError, Engine, EngineConfig, Limits, ShardId, Timestamp};

const SECOND: u64 = 1_000_000_000;
const HOUR: u64 = 3_600 * SECOND;
const START: Timestamp = Timestamp(1_795_000_000 * SECOND);

fn open(dir: &Path, clock: &Arc<ManualClock>) -> Engine {
    let mut config = EngineConfig::new(dir);
    config.shard_count = Some(3);
    config.limits = Limits::test_min();
    config.tuning.snapshot_on_shutdown = false;
    config.clock = clock.clone();
    Engine::open(config).unwrap()
}

fn setup(engine: &Engine) -> ProgrammeAccounts {
    Loyalty::define(engine).define_programme(engine)
}

/// Every shard's programme, replayed from its WAL alone, as (version, requested, rules).
fn replayed(dir: &Path) -> Vec<Vec<(u32, Timestamp, Arc<RuleSet>)>> {
    let meta = ledger_engine::datadir::read_meta(dir).unwrap();
    (0..3)
        .map(|shard| {
            let shard = ShardId::new(shard).unwrap();
            let config = ledger_config(&meta, shard, &Limits::test_min());
            let ledger = replay_shard_offline(dir, shard, config, None).unwrap();
            ledger
                .programme()
                .versions()
                .iter()
                .map(|v| (v.version, v.requested_at, Arc::clone(&v.rules)))
                .collect()
        })
        .collect()
}

#[test]
fn versions_reach_every_shard_take_effect_on_time_and_survive_restarts_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let engine = open(dir.path(), &clock);
    let accounts = setup(&engine);
    let flat = RuleSet::flat(1, 100);
    assert_eq!(engine.define_rules(flat.clone(), accounts, None).unwrap(), (1, true));
    // The same rules again change nothing.
    assert_eq!(engine.define_rules(flat.clone(), accounts, None).unwrap(), (1, false));
    let black_friday = Timestamp(START.0 + 2 * HOUR);
    let example = example_rules();
    assert_eq!(
        engine.define_rules(example.clone(), accounts, Some(black_friday)).unwrap(),
        (2, true)
    );
    assert_eq!(
        engine.define_rules(example.clone(), accounts, Some(black_friday)).unwrap(),
        (2, false)
    );
    let programme = engine.programme();
    assert_eq!(programme.in_force(Timestamp(black_friday.0 - 1)).unwrap().version, 1);
    assert_eq!(programme.in_force(black_friday).unwrap().version, 2);
    assert_eq!(programme.in_force(Timestamp(START.0 - 1)), None, "nothing before version 1");
    // While version 2 waits for its time, the flat rules are still the ones in force: asking
    // for them again records nothing.
    assert_eq!(engine.define_rules(flat.clone(), accounts, None).unwrap(), (1, false));
    clock.advance(3 * HOUR);
    // Now version 2 is in force; the flat rules at once are a new version that replaces it.
    assert_eq!(engine.define_rules(flat.clone(), accounts, None).unwrap(), (3, true));
    let before = engine.programme();
    engine.shutdown();

    let every_shard = replayed(dir.path());
    assert!(every_shard.iter().all(|shard| shard == &every_shard[0]), "shards agree");
    assert_eq!(every_shard[0].len(), 3);
    assert_eq!(*every_shard[0][1].2, example);
    assert_eq!(every_shard[0][1].1, black_friday);

    let engine = open(dir.path(), &clock);
    let versions = |programme: &ledger_engine::loyalty::programme::Programme| {
        programme
            .versions()
            .iter()
            .map(|v| (v.version, v.requested_at, v.rules.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(versions(&engine.programme()), versions(&before), "replayed from the WAL");
    engine.snapshot_now().unwrap();
    engine.shutdown();
    let engine = open(dir.path(), &clock);
    assert_eq!(versions(&engine.programme()), versions(&before), "loaded from a snapshot");
    assert_eq!(engine.programme().in_force(clock_now(&clock)).unwrap().version, 3);
}

fn clock_now(clock: &ManualClock) -> Timestamp {
    use ledger_engine::clock::Clock;
    clock.now()
}

#[test]
fn wrong_versions_are_refused_and_record_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let engine = open(dir.path(), &clock);
    let accounts = setup(&engine);
    let later = Timestamp(START.0 + HOUR);
    let conflict = |result: Result<(u32, bool), DefineError>, says: &str| match result {
        Err(DefineError::Conflict(message)) => assert!(message.contains(says), "{message}"),
        other => panic!("expected a conflict saying {says:?}, got {other:?}"),
    };
    // The points class must be a customer class with no overdraft, the houses of its asset.
    let swapped = ProgrammeAccounts { points: accounts.issuance, ..accounts };
    conflict(
        engine.define_rules(RuleSet::flat(1, 100), swapped, None),
        "not a defined customer class",
    );
    let cross = ProgrammeAccounts { breakage: accounts.cashback.unwrap().1, ..accounts };
    conflict(
        engine.define_rules(RuleSet::flat(1, 100), cross, None),
        "breakage class holds another asset",
    );
    // Cashback needs its accounts.
    let no_cashback = ProgrammeAccounts { cashback: None, cashback_clawback: None, ..accounts };
    conflict(engine.define_rules(example_rules(), no_cashback, None), "no cashback accounts");
    let orphan = ProgrammeAccounts { cashback: None, ..accounts };
    conflict(engine.define_rules(RuleSet::flat(1, 100), orphan, None), "without cashback");
    // A clawback class may go below zero and holds what it takes back.
    let strict = ProgrammeAccounts { clawback: Some(accounts.points), ..accounts };
    conflict(engine.define_rules(RuleSet::flat(1, 100), strict, None), "below zero");
    let crossed = ProgrammeAccounts { clawback: accounts.cashback_clawback, ..accounts };
    conflict(engine.define_rules(RuleSet::flat(1, 100), crossed, None), "another asset");
    engine.define_rules(RuleSet::flat(1, 100), accounts, Some(later)).unwrap();
    conflict(
        engine.define_rules(RuleSet::flat(2, 100), accounts, Some(later)),
        "already takes effect",
    );
    conflict(
        engine.define_rules(RuleSet::flat(2, 100), accounts, Some(Timestamp(START.0 - 1))),
        "in the past",
    );
    let mut bad = RuleSet::flat(1, 100);
    bad.base.points = 0;
    conflict(engine.define_rules(bad, accounts, None), "base");
    // Version 1 named the points class; no later version may change it.
    let loyalty = Loyalty::define(&engine);
    let other_points = engine
        .define_class(
            ledger_engine::Namespace::Customer,
            "points2",
            loyalty.pts,
            ledger_engine::AccountFlags::NO_OVERDRAFT,
        )
        .unwrap();
    conflict(
        engine.define_rules(
            RuleSet::flat(1, 100),
            ProgrammeAccounts { points: other_points, ..accounts },
            None,
        ),
        "cannot change it",
    );
    assert_eq!(engine.programme().versions().len(), 1, "only the first version was recorded");
    engine.shutdown();
    assert!(replayed(dir.path()).iter().all(|shard| shard.len() == 1));
}
