//! The loyalty programme inside the engine: purchases priced by the rule version in force,
//! tiers, caps, lots spent the earliest expiry first, holds that reserve lots, expiry into
//! breakage, transfers — through the real engine, its WAL, restarts and snapshots.

use std::sync::Arc;

use ledger_engine::clock::{Clock, ManualClock};
use ledger_engine::engine::ledger_config;
use ledger_engine::loyalty::RuleSet;
use ledger_engine::loyalty::calendar::day_index;
use ledger_engine::loyalty::lots::LotKind;
use ledger_engine::testing::loyalty::{Loyalty, example_rules};
use ledger_engine::{AccountId, Limits, RejectCode, Response, ShardId, Timestamp};

mod support;

use support::*;

#[test]
fn the_engine_prices_the_documented_example_and_credits_lots_and_cashback() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 1, at(2026, 11, 10, 12), example_rules());
    let purchase = setup.loyalty.purchase(1, 7, 1, &[(10, 1234), (20, 5000), (40, 2500)]);
    let first = committed(setup.engine.execute(purchase.clone()));
    assert_eq!(first.amount, 112, "worked example 1");
    assert_eq!(points(&setup, 7), 112);
    let (cashback, _) = setup.accounts.cashback.unwrap();
    assert_eq!(balance(&setup.engine, AccountId::new(cashback, 7)), 37);
    let view = member(&setup, 7, 0);
    assert_eq!((view.tier, view.qualifying, view.caps_used.day), (0, 112, 112));
    assert_eq!(view.lots.len(), 1);
    assert_eq!(view.lots[0].kind, LotKind::Earned);
    assert_eq!(
        view.lots[0].expires_day,
        day_index(at(2028, 11, 11, 0)),
        "24 months, then midnight"
    );
    // A retry is the same purchase: nothing more is credited.
    assert!(matches!(setup.engine.execute(purchase), Response::Duplicate(c) if c == first));
    // The same key with another basket is a conflict.
    let other = setup.loyalty.purchase(1, 7, 1, &[(10, 1234), (20, 5001), (40, 2500)]);
    assert_eq!(setup.engine.execute(other).rejected(), Some(RejectCode::IdempotencyConflict));
    assert_eq!(points(&setup, 7), 112);
    assert_replay_matches(setup.engine, &setup.clock, dir.path(), 1);
}

/// `support::tiered` over a 2-month window.
fn tiered() -> RuleSet {
    let mut rules = support::tiered();
    rules.tier_window_months = 2;
    rules
}

#[test]
fn an_upgrade_prices_the_next_purchase_of_the_same_batch_and_the_window_rolls_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 1, at(2026, 1, 15, 12), tiered());
    // Three purchases in one submit, answered from one batch: 100 points reach silver, so the
    // second is priced ×2 (40 points), which reaches... not gold; the third ×2 too.
    let sink = ledger_engine::testing::loyalty::CollectingSink::new();
    let commands = (1..=3)
        .map(|key| {
            (key as u64, setup.loyalty.purchase(key, 9, 1, &[(0, if key == 1 { 10 } else { 2 })]))
        })
        .collect();
    let dyn_sink: Arc<dyn ledger_engine::ReplySink> = sink.clone();
    setup.engine.submit(&dyn_sink, commands);
    let answers: Vec<u64> = sink
        .take(3, std::time::Duration::from_secs(10))
        .into_iter()
        .map(|(_, response)| committed(response).amount)
        .collect();
    assert_eq!(answers, [100, 40, 40], "bronze, then silver from the next purchase on");
    assert_eq!(member(&setup, 9, 0).tier, 1);
    // February: the window (January and February) still holds January's 180 points.
    setup.clock.set(at(2026, 2, 20, 0));
    assert_eq!((member(&setup, 9, 0).tier, member(&setup, 9, 0).qualifying), (1, 180));
    // March: January rolled out of the window; the tier falls back, first in what a query
    // shows, then in the WAL with the next purchase (priced at bronze).
    setup.clock.set(at(2026, 3, 1, 0));
    let view = member(&setup, 9, 0);
    assert_eq!((view.tier, view.tier_recorded, view.qualifying), (0, 1, 0));
    assert_eq!(
        committed(setup.engine.execute(setup.loyalty.purchase(4, 9, 1, &[(0, 1)]))).amount,
        10
    );
    assert_eq!(member(&setup, 9, 0).tier_recorded, 0);
    assert_replay_matches(setup.engine, &setup.clock, dir.path(), 1);
}

#[test]
fn caps_cut_what_exceeds_the_day_and_reset_the_next_day() {
    let dir = tempfile::tempdir().unwrap();
    let mut rules = RuleSet::flat(1, 1);
    rules.caps.daily = Some(150);
    let setup = setup(dir.path(), 1, at(2026, 5, 4, 9), rules);
    let earned = |key, amount| {
        committed(setup.engine.execute(setup.loyalty.purchase(key, 3, 1, &[(0, amount)]))).amount
    };
    assert_eq!(earned(1, 100), 100);
    assert_eq!(earned(2, 100), 50, "capped at 150 for the day");
    assert_eq!(earned(3, 100), 0, "nothing left today: recorded, earning nothing");
    setup.clock.set(at(2026, 5, 5, 0));
    assert_eq!(earned(4, 100), 100);
    assert_eq!(points(&setup, 3), 250);
    assert_replay_matches(setup.engine, &setup.clock, dir.path(), 1);
}

/// Earned points live 24 months, bonus 12, received 6 (the defaults).
fn with_bonus() -> RuleSet {
    let mut rules = RuleSet::flat(1, 1);
    rules.promotions.push(ledger_engine::loyalty::rules::Promotion {
        name: "double".into(),
        starts_at: Timestamp(0),
        ends_at: Timestamp(u64::MAX),
        scope: ledger_engine::loyalty::rules::PromotionScope::All,
        effect: ledger_engine::loyalty::rules::PromotionEffect::Multiplier(
            ledger_engine::loyalty::Ratio(20_000),
        ),
    });
    rules
}

#[test]
fn lots_expire_at_their_midnight_into_breakage_after_partial_spending() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 1, at(2026, 1, 10, 15), with_bonus());
    let loyalty = &setup.loyalty;
    // 100 earned (24 months) and 100 bonus (12 months) on 2026-01-10.
    committed(setup.engine.execute(loyalty.purchase(1, 5, 1, &[(0, 100)])));
    setup.clock.set(at(2026, 6, 1, 0));
    // 50 more earned and bonus on 2026-06-01.
    committed(setup.engine.execute(loyalty.purchase(2, 5, 1, &[(0, 50)])));
    // A redemption of 120 takes the bonus lot of January (expiring first) and 20 of June's.
    committed(setup.engine.execute(loyalty.redeem(3, 5, 120)));
    let lots = member(&setup, 5, 0).lots;
    let left: Vec<(LotKind, u32, u64)> =
        lots.iter().map(|l| (l.kind, l.expires_day, l.remaining)).collect();
    assert_eq!(
        left,
        [
            (LotKind::Bonus, day_index(at(2027, 6, 2, 0)), 30),
            (LotKind::Earned, day_index(at(2028, 1, 11, 0)), 100),
            (LotKind::Earned, day_index(at(2028, 6, 2, 0)), 50),
        ]
    );
    assert_eq!(member(&setup, 5, 365 + 1).expiring, 30, "within a year and a day: the bonus lot");
    // The last nanosecond before the bonus lot's midnight: nothing expires.
    setup.clock.set(Timestamp(at(2027, 6, 2, 0).0 - 1));
    assert_eq!(points(&setup, 5), 180);
    // At its midnight the sweep expires exactly its remainder, even with no request.
    setup.clock.set(at(2027, 6, 2, 0));
    let breakage = AccountId::new(setup.accounts.breakage, 0);
    wait_until(|| balance(&setup.engine, breakage) == 30);
    assert_eq!(points(&setup, 5), 150);
    // A request for an expired customer expires their lots first, whatever the sweep does.
    setup.clock.set(at(2028, 6, 2, 0));
    assert_eq!(
        setup.engine.execute(loyalty.redeem(4, 5, 1)).rejected(),
        Some(RejectCode::InsufficientFunds)
    );
    assert_eq!(points(&setup, 5), 0);
    assert_eq!(balance(&setup.engine, breakage), 180);
    assert_replay_matches(setup.engine, &setup.clock, dir.path(), 1);
}

fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[test]
fn a_hold_reserves_lots_and_its_capture_spends_exactly_them_even_past_their_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 1, at(2026, 1, 10, 15), with_bonus());
    let loyalty = &setup.loyalty;
    committed(setup.engine.execute(loyalty.purchase(1, 5, 1, &[(0, 100)]))); // 100 + 100 bonus
    // The hold takes the bonus lot (expiring 2027-01-11) and 20 earned points.
    let hold = committed(setup.engine.execute(loyalty.hold(2, 5, 120, 400 * DAY)));
    let view = member(&setup, 5, 0);
    assert_eq!((view.held, view.lots.len()), (120, 1));
    // The bonus lot's day passes while it is held: reserved points do not expire.
    setup.clock.set(at(2027, 1, 12, 0));
    assert_eq!(points(&setup, 5), 200);
    // A part capture spends the earliest parts (the 100 bonus points); the 20 earned points
    // go back to their lot.
    committed(setup.engine.execute(loyalty.capture(3, hold.tx_id, Some(100))));
    let view = member(&setup, 5, 0);
    assert_eq!((view.held, view.lots.len(), view.lots[0].remaining), (0, 1, 100));
    assert_eq!(points(&setup, 5), 100);

    // Another hold (10 bonus points expiring 2028-01-13, 5 earned expiring 2029-01-13),
    // voided after the bonus lot's day: its points come back and expire at once.
    let other = committed(setup.engine.execute(loyalty.purchase(4, 6, 1, &[(0, 10)])));
    assert_eq!(other.amount, 20);
    let hold = committed(setup.engine.execute(loyalty.hold(5, 6, 15, 400 * DAY)));
    setup.clock.set(at(2028, 1, 14, 0));
    committed(setup.engine.execute(loyalty.void(6, hold.tx_id)));
    let breakage = AccountId::new(setup.accounts.breakage, 0);
    // Customer 5's earned lot (2028-01-11) and customer 6's returned bonus points.
    wait_until(|| balance(&setup.engine, breakage) == 100 + 10);
    assert_eq!((points(&setup, 5), points(&setup, 6)), (0, 10));
    assert_replay_matches(setup.engine, &setup.clock, dir.path(), 1);
}

#[test]
fn transfers_open_transfer_lots_and_a_refused_transfer_puts_the_lots_back() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 3, at(2026, 3, 1, 10), RuleSet::flat(1, 1));
    let loyalty = &setup.loyalty;
    let shard = |customer| {
        ledger_engine::ids::shard_for_customer(ledger_engine::CustomerId(customer), 3).index()
    };
    let a = 1;
    let same = (2..).find(|c| shard(*c) == shard(a)).unwrap();
    let other = (2..).find(|c| shard(*c) != shard(a)).unwrap();
    committed(setup.engine.execute(loyalty.purchase(1, a, 1, &[(0, 300)])));
    committed(setup.engine.execute(loyalty.transfer(2, a, same, 100)));
    committed(setup.engine.execute(loyalty.transfer(3, a, other, 100)));
    for customer in [same, other] {
        let lots = member(&setup, customer, 0).lots;
        assert_eq!(lots.len(), 1);
        assert_eq!((lots[0].kind, lots[0].remaining), (LotKind::Transfer, 100));
        assert_eq!(lots[0].expires_day, day_index(at(2026, 9, 2, 0)), "6 months");
    }
    // A transfer the destination refuses (a capped class) comes back into the source's lot.
    let capped = loyalty.define_capped_class(&setup.engine);
    let refused = setup.engine.execute(loyalty.transfer_to_class(capped, 4, a, other, 50));
    assert_eq!(refused.rejected(), Some(RejectCode::TransferRefunded));
    wait_until(|| points(&setup, a) == 100);
    let lots = member(&setup, a, 0).lots;
    assert_eq!((lots.len(), lots[0].remaining, lots[0].kind), (1, 100, LotKind::Earned));
    assert_replay_matches(setup.engine, &setup.clock, dir.path(), 3);
}

#[test]
fn the_first_rule_version_turns_existing_balances_into_lots() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(at(2026, 2, 1, 0)));
    let engine = open(dir.path(), &clock, 1);
    let loyalty = Loyalty::define(&engine);
    committed(engine.execute(loyalty.earn(1, 4, 70)));
    let accounts = loyalty.define_programme(&engine);
    // Before any version, purchases cannot be priced.
    let purchase = loyalty.purchase(2, 4, 1, &[(0, 5)]);
    assert_eq!(engine.execute(purchase.clone()).rejected(), Some(RejectCode::RulesNotInForce));
    engine.define_rules(RuleSet::flat(1, 1), accounts, None).unwrap();
    let Response::Member(view) = engine.execute(loyalty.member_query(4, 0)) else { panic!() };
    assert_eq!(view.lots.len(), 1);
    assert_eq!((view.lots[0].remaining, view.lots[0].origin.0), (70, 0));
    // The purchase refused before is a new write now.
    assert_eq!(committed(engine.execute(purchase)).amount, 5);
    assert_replay_matches(engine, &clock, dir.path(), 1);
}

#[test]
fn bad_baskets_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 1, at(2026, 2, 1, 0), RuleSet::flat(1, 1));
    let loyalty = &setup.loyalty;
    let refused = |key, lines: &[(u16, u64)]| {
        setup.engine.execute(loyalty.purchase(key, 8, 1, lines)).rejected()
    };
    assert_eq!(refused(1, &[]), Some(RejectCode::BasketInvalid));
    assert_eq!(refused(2, &[(0, 1); 33]), Some(RejectCode::BasketInvalid));
    assert_eq!(refused(3, &[(0, 1), (0, 0)]), Some(RejectCode::LineAmountZero));
    assert_eq!(refused(4, &[(0, u64::MAX), (0, 1)]), Some(RejectCode::Overflow));
    assert_eq!(refused(5, &[(0, u64::MAX)]), Some(RejectCode::Overflow), "above the balance bound");
    assert_eq!(points(&setup, 8), 0);
    assert!(matches!(
        setup.engine.execute(loyalty.member_query(8, 0)),
        Response::Rejected(RejectCode::AccountNotFound)
    ));
    // A refused key is not taken: the same key with a good basket commits.
    assert_eq!(committed(setup.engine.execute(loyalty.purchase(1, 8, 1, &[(0, 3)]))).amount, 3);
    assert_replay_matches(setup.engine, &setup.clock, dir.path(), 1);
}

#[test]
fn a_retry_is_a_duplicate_after_the_rules_changed_and_a_new_version_prices_new_purchases() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 1, at(2026, 2, 1, 0), RuleSet::flat(1, 1));
    let loyalty = &setup.loyalty;
    let purchase = loyalty.purchase(1, 8, 1, &[(0, 10)]);
    let first = committed(setup.engine.execute(purchase.clone()));
    setup.engine.define_rules(RuleSet::flat(5, 1), setup.accounts, None).unwrap();
    assert!(matches!(setup.engine.execute(purchase), Response::Duplicate(c) if c == first));
    assert_eq!(committed(setup.engine.execute(loyalty.purchase(2, 8, 1, &[(0, 10)]))).amount, 50);
    assert_replay_matches(setup.engine, &setup.clock, dir.path(), 1);
}

#[test]
fn a_midnight_of_many_expiring_customers_is_swept_in_bounded_turns() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 2, at(2026, 1, 10, 15), RuleSet::flat(1, 1));
    let customers = 3_000u64;
    let commands: Vec<_> = (0..customers)
        .map(|c| setup.loyalty.purchase(u128::from(c) + 1, c, 1, &[(0, 7)]))
        .collect();
    ledger_engine::testing::loyalty::execute_all(&setup.engine, commands);
    // The sweep's figures: every lot counted, due on one day, nothing overdue yet.
    let stats = setup.engine.stats();
    assert_eq!(stats.iter().map(|s| s.lots).sum::<u64>(), customers);
    let due_day = day_index(at(2028, 1, 11, 0));
    assert!(stats.iter().all(|s| s.expiry_next_day == Some(due_day)), "{stats:?}");
    assert!(stats.iter().all(|s| s.expiry_overdue(setup.clock.now()).is_zero()));
    assert_eq!(stats.iter().map(|s| s.expiry_records).sum::<u64>(), 0);
    // An hour past their midnight, before the sweep ran: overdue by that hour.
    let overdue = stats[0].expiry_overdue(at(2028, 1, 11, 1));
    assert_eq!(overdue, std::time::Duration::from_secs(3_600));
    setup.clock.set(at(2028, 1, 11, 0));
    let breakage = AccountId::new(setup.accounts.breakage, 0);
    wait_until(|| {
        setup
            .engine
            .account_total(breakage)
            .is_ok_and(|a| a.balance_posted() == 7 * i128::from(customers))
    });
    // One expiry per member, no lot left, nothing due; the records are flushed by now.
    wait_until(|| setup.engine.stats().iter().map(|s| s.lots).sum::<u64>() == 0);
    let stats = setup.engine.stats();
    assert_eq!(stats.iter().map(|s| s.expiry_records).sum::<u64>(), customers);
    assert!(stats.iter().all(|s| s.expiry_next_day.is_none() && !s.expiry_behind), "{stats:?}");
    assert_replay_matches(setup.engine, &setup.clock, dir.path(), 2);
}

/// A purchase whose record says something its rules do not give (here: 5 points more than
/// priced, as a change in the pricing code between versions would leave it) is replayed as
/// recorded, since that is what the customer was told and the WAL vouches for, and recovery
/// counts it (and logs its LSN).
#[test]
fn a_purchase_recorded_with_another_outcome_replays_as_recorded_and_is_reported() {
    use ledger_engine::ledger::record::Body;
    use ledger_engine::recovery::{ShardPaths, recover_shard};

    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 1, at(2026, 2, 1, 0), RuleSet::flat(1, 1));
    committed(setup.engine.execute(setup.loyalty.purchase(1, 8, 1, &[(0, 10)])));
    setup.engine.shutdown();
    // The same history, written again with the altered purchase (a valid WAL: chained, sealed).
    let altered = tempfile::tempdir().unwrap();
    ledger_engine::testing::loyalty::rewrite_wal(dir.path(), altered.path(), |record| {
        if let Body::Purchase(purchase) = &mut record.body {
            purchase.outcome.base += 5;
            purchase.outcome.earned += 5;
        }
    });
    let meta = ledger_engine::datadir::read_meta(altered.path()).unwrap();
    let paths = ShardPaths::new(altered.path(), 0);
    let shard = ShardId::new(0).unwrap();

    let limits = Limits { idempotency_keys_max: 4096, ..Limits::test_min() };
    let recovered =
        recover_shard(&paths, ledger_config(&meta, shard, &limits), meta.cluster_id, None).unwrap();
    assert_eq!(recovered.report.pricing_mismatches, 1);
    let balance =
        recovered.ledger.account(setup.loyalty.customer(8)).unwrap().counters.balance_posted();
    assert_eq!(balance, 15, "replayed as recorded");
    recovered.ledger.check_invariants().unwrap();
    // The untouched directory has none.
    let original = recover_shard(
        &ShardPaths::new(dir.path(), 0),
        ledger_config(&meta, shard, &limits),
        meta.cluster_id,
        None,
    )
    .unwrap();
    assert_eq!(original.report.pricing_mismatches, 0);
}
