//! The partner exchange end to end on a real engine: rates recorded on every shard, priced by
//! the rate in force at each request's time, conversions posted as one transaction with their
//! lots, differentials and liability flows, retried by key, refused with typed statuses that
//! change nothing, and the same after replay and restart. Docs: docs/loyalty.md, "Partner
//! exchange".

mod support;

use ledger_engine::loyalty::RuleSet;
use ledger_engine::loyalty::calendar::day_index;
use ledger_engine::testing::loyalty::Partner;
use ledger_engine::{RejectCode, Response, Timestamp};
use support::{DAY, SECOND, assert_replay_matches, at, balance, committed, member, points, setup};

/// Partner A next to the programme, and `customer` holding `partner_points` of partner A's.
fn partner(setup: &support::Setup, customer: u64, partner_points: u64) -> Partner {
    let partner = Partner::define(&setup.engine, &setup.loyalty);
    committed(setup.engine.execute(partner.credit(
        1_000 + u128::from(customer),
        customer,
        partner_points,
    )));
    partner
}

#[test]
fn partner_points_convert_into_lots_of_own_points_and_the_differential_is_booked() {
    let dir = tempfile::tempdir().unwrap();
    let start = at(2026, 3, 10, 12);
    let setup = setup(dir.path(), 2, start, RuleSet::flat(1, 1));
    let (engine, loyalty) = (&setup.engine, &setup.loyalty);
    let partner = partner(&setup, 42, 100);
    let pair = (partner.asset, loyalty.pts);
    // No rate yet: a typed refusal that changes nothing and leaves the key free.
    assert_eq!(
        engine.execute(loyalty.convert(1, 42, pair, 7)).rejected(),
        Some(RejectCode::RateMissing)
    );
    // 3 own points per 2 of partner A's; a partner point is worth 2 cents, an own point 1.
    let terms = partner.inbound(loyalty, (3, 2), (2, 1));
    assert_eq!(engine.define_rate(terms, None).unwrap(), (1, true));
    assert_eq!(engine.define_rate(terms, None).unwrap(), (1, false), "the same rate in force");
    let done = committed(engine.execute(loyalty.convert(1, 42, pair, 7)));
    assert_eq!(done.amount, 10, "⌊7 × 3 / 2⌋ own points");
    assert_eq!(balance(engine, partner.account(42)), 93);
    assert_eq!(points(&setup, 42), 10);
    // The points are a lot like any earned: they expire by the rules in force.
    let view = member(&setup, 42, 0);
    assert_eq!((view.lot_count, view.lots[0].remaining, view.lots[0].origin), (1, 10, done.tx_id));
    // Partner A's members gave 14 cents' worth for 10: partner A owes the programme 4.
    assert_eq!(balance(engine, partner.partner_money), -4);
    assert_eq!(balance(engine, partner.own_money), 4);
    assert_eq!(balance(engine, partner.partner_fund), -100 + 7);
    assert_eq!(balance(engine, partner.own_fund), -10);
    // Conversions into the programme's points are points issued.
    let figures = engine.liability().unwrap();
    let today = day_index(start);
    assert_eq!(figures.flows.total(today, today).issued, 10);
    assert_eq!(figures.class_total(partner.customer), 93);
    // A retry gets the original answer and posts nothing; the same key asking for more is a
    // conflict.
    let retried = engine.execute(loyalty.convert(1, 42, pair, 7));
    assert_eq!(retried, Response::Duplicate(done));
    assert_eq!(
        engine.execute(loyalty.convert(1, 42, pair, 8)).rejected(),
        Some(RejectCode::IdempotencyConflict)
    );
    assert_eq!(points(&setup, 42), 10);
    assert_replay_matches(setup.engine, &setup.clock, dir.path(), 2);
}

#[test]
fn own_points_convert_out_from_the_lots_that_expire_first() {
    let dir = tempfile::tempdir().unwrap();
    let start = at(2026, 1, 5, 9);
    let setup = setup(dir.path(), 1, start, RuleSet::flat(1, 1));
    let (engine, loyalty) = (&setup.engine, &setup.loyalty);
    let partner = partner(&setup, 42, 1);
    committed(engine.execute(loyalty.purchase(1, 42, 1, &[(0, 50)])));
    setup.clock.set(Timestamp(start.0 + 40 * DAY));
    committed(engine.execute(loyalty.purchase(2, 42, 1, &[(0, 30)])));
    // 1 partner point for 2 own points; both worth a cent a point.
    let terms = partner.outbound(loyalty, (1, 2), (1, 1));
    engine.define_rate(terms, None).unwrap();
    let pair = (loyalty.pts, partner.asset);
    // More points than the member holds: refused as a redemption of as many would be.
    let redeem = engine.execute(loyalty.redeem(3, 42, 81)).rejected();
    assert!(redeem.is_some());
    assert_eq!(engine.execute(loyalty.convert(4, 42, pair, 81)).rejected(), redeem);
    let done = committed(engine.execute(loyalty.convert(5, 42, pair, 60)));
    assert_eq!(done.amount, 30);
    assert_eq!((points(&setup, 42), balance(engine, partner.account(42))), (20, 31));
    // The first purchase's lot went whole, the second's gave 10.
    let view = member(&setup, 42, 0);
    assert_eq!(view.lots.iter().map(|lot| lot.remaining).collect::<Vec<_>>(), [20]);
    // 60 cents of own points for 30 of partner points: the programme owes partner A 30.
    assert_eq!(balance(engine, partner.own_money), -30);
    assert_eq!(balance(engine, partner.partner_money), 30);
    // Conversions out of the programme's points are points redeemed.
    let today = day_index(setup.clock.now());
    assert_eq!(engine.liability().unwrap().flows.total(today, today).redeemed, 60);
    assert_replay_matches(setup.engine, &setup.clock, dir.path(), 1);
}

use ledger_engine::clock::Clock;

#[test]
fn conversions_are_refused_with_typed_statuses_that_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 1, at(2026, 6, 1, 0), RuleSet::flat(1, 1));
    let (engine, loyalty) = (&setup.engine, &setup.loyalty);
    let partner = partner(&setup, 42, 5_000);
    // One own point per 1,000 partner points.
    engine.define_rate(partner.inbound(loyalty, (1, 1_000), (1, 1)), None).unwrap();
    let pair = (partner.asset, loyalty.pts);
    let lsn = || engine.stats()[0].applied_lsn;
    let before = lsn();
    let refusals = [
        (loyalty.convert(1, 42, (partner.asset, partner.asset), 10), RejectCode::ExchangeSameAsset),
        (loyalty.convert(2, 42, (loyalty.pts, partner.asset), 10), RejectCode::RateMissing),
        (loyalty.convert(3, 42, pair, 999), RejectCode::ConversionTooSmall),
    ];
    for (command, code) in refusals {
        assert_eq!(engine.execute(command).rejected(), Some(code));
    }
    assert_eq!(lsn(), before, "nothing was written");
    assert_eq!(balance(engine, partner.account(42)), 5_000);
    // A rate can credit more than 2^64 - 1 points: refused, not wrapped.
    engine.define_rate(partner.outbound(loyalty, (1_000_000_000, 1), (1, 1)), None).unwrap();
    committed(engine.execute(loyalty.earn(4, 42, 1 << 40)));
    let out = (loyalty.pts, partner.asset);
    assert_eq!(
        engine.execute(loyalty.convert(5, 42, out, 1 << 40)).rejected(),
        Some(RejectCode::Overflow)
    );
    // A refused key is free: once enough is asked, it commits.
    assert_eq!(committed(engine.execute(loyalty.convert(3, 42, pair, 1_000))).amount, 1);
    // Bad rates are refused whole at definition.
    let past = Timestamp(setup.clock.now().0 - 1);
    assert!(engine.define_rate(partner.inbound(loyalty, (1, 1), (1, 1)), Some(past)).is_err());
    let mut wrong = partner.inbound(loyalty, (1, 1), (1, 1));
    wrong.to.fund = loyalty.customer(1);
    assert!(engine.define_rate(wrong, None).is_err());
    assert_eq!(engine.rates().versions().len(), 2);
    assert_replay_matches(setup.engine, &setup.clock, dir.path(), 1);
}

#[test]
fn rates_take_effect_at_their_stated_time_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let start = at(2026, 11, 27, 0);
    let setup = setup(dir.path(), 2, start, RuleSet::flat(1, 1));
    let (engine, loyalty) = (&setup.engine, &setup.loyalty);
    let partner = partner(&setup, 42, 1_000);
    committed(engine.execute(partner.credit(2_000, 7, 1_000)));
    let pair = (partner.asset, loyalty.pts);
    engine.define_rate(partner.inbound(loyalty, (1, 1), (1, 1)), None).unwrap();
    // Black Friday from 10:00: two own points per partner point, recorded in advance. The same
    // rate asked again for that time changes nothing; another ratio is refused.
    let friday = Timestamp(start.0 + 10 * 3_600 * SECOND);
    let doubled = partner.inbound(loyalty, (2, 1), (1, 1));
    assert_eq!(engine.define_rate(doubled, Some(friday)).unwrap(), (2, true));
    let same = partner.inbound(loyalty, (4, 2), (1, 1));
    assert_eq!(engine.define_rate(same, Some(friday)).unwrap(), (2, false));
    assert!(engine.define_rate(partner.inbound(loyalty, (3, 1), (1, 1)), Some(friday)).is_err());
    // Two requests in one submit before 10:00, then two after: each priced at its time.
    setup.clock.set(Timestamp(friday.0 - 1));
    let sink = ledger_engine::testing::loyalty::CollectingSink::new();
    let dyn_sink: std::sync::Arc<dyn ledger_engine::ReplySink> = sink.clone();
    engine.submit(
        &dyn_sink,
        vec![(1, loyalty.convert(1, 42, pair, 10)), (2, loyalty.convert(2, 7, pair, 10))],
    );
    let mut before: Vec<_> = sink.take(2, std::time::Duration::from_secs(10));
    before.sort_by_key(|(tag, _)| *tag);
    assert!(before.iter().all(|(_, response)| response.committed().map(|c| c.amount) == Some(10)));
    setup.clock.set(friday);
    assert_eq!(committed(engine.execute(loyalty.convert(3, 42, pair, 10))).amount, 20);
    assert_eq!(committed(engine.execute(loyalty.convert(4, 7, pair, 10))).amount, 20);
    // Restarted, every shard prices by the same rates, and retries answer as before.
    let rates = engine.rates();
    setup.engine.shutdown();
    let engine = support::open(dir.path(), &setup.clock, 2);
    assert_eq!(engine.rates(), rates);
    assert_eq!(
        engine.execute(loyalty.convert(3, 42, pair, 10)).committed().map(|c| c.amount),
        Some(20)
    );
    assert_eq!(committed(engine.execute(loyalty.convert(5, 7, pair, 5))).amount, 10);
    assert_replay_matches(engine, &setup.clock, dir.path(), 2);
}
