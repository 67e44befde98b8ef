//! A purchase's lifecycle through the real engine: settlements, failures and refunds that take
//! back exactly what the purchase gave, from its own lots first, then the member's other lots,
//! then as a receivable on their clawback account; tier and cap counters given back; pending
//! points held until settlement; the refund window; replay and snapshots agreeing on all of it.

mod support;

use ledger_engine::amount::Amount;
use ledger_engine::ids::{IdempotencyKey, TerminalId};
use ledger_engine::ledger::command::{Operation, Request};
use ledger_engine::ledger::record::{Metadata, Posting, TxKind};
use ledger_engine::loyalty::RuleSet;
use ledger_engine::loyalty::lifecycle::LifecycleState;
use ledger_engine::loyalty::lots::LotKind;
use ledger_engine::loyalty::rules::{PendingPoints, Promotion, PromotionEffect, PromotionScope};
use ledger_engine::testing::loyalty::example_rules;
use ledger_engine::{AccountId, Command, Query, RejectCode, Response, Timestamp, TxId};
use support::*;

/// Worked example 1 of docs/loyalty.md: spend 87.34, of which 25.00 is a gift card; 112 points
/// earned, 37 cashback; weighted eligible spend 1,234 × 1 + 5,000 × 2 = 11,234.
const EXAMPLE_1: [(u16, u64, bool); 3] = [(10, 1234, false), (20, 5000, false), (40, 2500, false)];

fn purchase(setup: &Setup, key: u128, customer: u64, receipt: &str) -> TxId {
    let command = setup.loyalty.purchase_with_receipt(key, customer, (1, receipt), &EXAMPLE_1);
    committed(setup.engine.execute(command)).tx_id
}

fn cashback(setup: &Setup, customer: u64) -> i128 {
    let (class, _) = setup.accounts.cashback.unwrap();
    balance(&setup.engine, AccountId::new(class, customer))
}

fn owed(setup: &Setup, customer: u64) -> i128 {
    balance(&setup.engine, AccountId::new(setup.accounts.clawback.unwrap(), customer))
}

fn state(setup: &Setup, purchase: TxId) -> Option<LifecycleState> {
    match setup.engine.execute(Command::Read(Query::Purchase { tx: purchase })) {
        Response::Purchase(entry) => Some(entry.state),
        Response::Rejected(RejectCode::PurchaseNotFound) => None,
        other => panic!("{other:?}"),
    }
}

fn lsns(setup: &Setup) -> Vec<u64> {
    setup.engine.stats().iter().map(|shard| shard.applied_lsn).collect()
}

fn pending_credit(setup: &Setup, customer: u64) -> u128 {
    match setup.engine.execute(setup.loyalty.balance_query(customer)) {
        Response::Account(view) => view.counters.credits_pending,
        other => panic!("{other:?}"),
    }
}

fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// `amount` of a member's cashback spent.
fn spend_cashback(setup: &Setup, key: u128, customer: u64, amount: u64) -> Command {
    let (class, funding) = setup.accounts.cashback.unwrap();
    let registry = setup.engine.registry();
    let posting = Posting {
        debit: AccountId::new(class, customer),
        credit: AccountId::new(funding, 0),
        asset: registry.class(class).unwrap().asset,
        amount: Amount::new(amount).unwrap(),
    };
    Command::Write(Request {
        terminal: TerminalId(1),
        idempotency: IdempotencyKey::new(key),
        kind: TxKind::REDEEM,
        metadata: Metadata::default(),
        operation: Operation::Post { postings: smallvec::smallvec![posting] },
    })
}

fn rejected(setup: &Setup, command: ledger_engine::Command) -> RejectCode {
    match setup.engine.execute(command) {
        Response::Rejected(code) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn partial_refunds_add_up_to_exactly_what_the_purchase_gave() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 2, at(2026, 11, 10, 12), example_rules());
    let tx = purchase(&setup, 1, 7, "R-1");
    assert_eq!((points(&setup, 7), cashback(&setup, 7)), (112, 37));
    assert_eq!(state(&setup, tx), Some(LifecycleState::Pending));
    committed(setup.engine.execute(setup.loyalty.settle(2, tx)));
    assert_eq!(state(&setup, tx), Some(LifecycleState::Settled));
    // 30.00 of 87.34: ⌊112 × 3000 / 8734⌋ = 38 points, ⌊37 × 3000 / 8734⌋ = 12 cashback.
    let first = committed(setup.engine.execute(setup.loyalty.refund(3, tx, 3000)));
    assert_eq!(first.amount, 38);
    assert_eq!((points(&setup, 7), cashback(&setup, 7)), (112 - 38, 37 - 12));
    assert_eq!(state(&setup, tx), Some(LifecycleState::PartlyRefunded));
    committed(setup.engine.execute(setup.loyalty.refund(4, tx, 3000)));
    // More than is left changes nothing.
    let over = setup.loyalty.refund(5, tx, 2735);
    assert_eq!(rejected(&setup, over), RejectCode::RefundExceedsPurchase);
    committed(setup.engine.execute(setup.loyalty.refund(6, tx, 2734)));
    assert_eq!((points(&setup, 7), cashback(&setup, 7), owed(&setup, 7)), (0, 0, 0));
    assert_eq!(state(&setup, tx), Some(LifecycleState::Refunded));
    let view = member(&setup, 7, 0);
    assert_eq!((view.qualifying, view.caps_used.day, view.caps_used.month), (0, 0, 0));
    assert!(view.lots.is_empty());
    // Nothing more: every illegal transition of a refunded purchase is refused.
    assert_eq!(rejected(&setup, setup.loyalty.refund(7, tx, 1)), RejectCode::RefundExceedsPurchase);
    assert_eq!(rejected(&setup, setup.loyalty.fail(8, tx)), RejectCode::PurchaseAlreadyRefunded);
    assert_eq!(rejected(&setup, setup.loyalty.settle(9, tx)), RejectCode::PurchaseAlreadySettled);
    assert_replay_matches(setup.engine, &setup.clock, dir.path(), 2);
}

#[test]
fn illegal_transitions_are_typed_refusals_that_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 1, at(2026, 11, 10, 12), example_rules());
    let tx = purchase(&setup, 1, 7, "R-1");
    let before = (points(&setup, 7), cashback(&setup, 7), lsns(&setup));
    // A pending purchase is not refundable.
    assert_eq!(rejected(&setup, setup.loyalty.refund(2, tx, 100)), RejectCode::PurchaseNotSettled);
    // Unknown purchases, by id and by receipt.
    let unknown = TxId(tx.0 + 1);
    assert_eq!(rejected(&setup, setup.loyalty.settle(3, unknown)), RejectCode::PurchaseNotFound);
    let by_receipt = setup.loyalty.refund_by_receipt(4, 7, (1, "R-2"), 100);
    assert_eq!(rejected(&setup, by_receipt), RejectCode::PurchaseNotFound);
    // The receipt of another member's purchase is not theirs.
    let theirs = setup.loyalty.refund_by_receipt(5, 8, (1, "R-1"), 100);
    assert_eq!(rejected(&setup, theirs), RejectCode::PurchaseNotFound);
    assert_eq!((points(&setup, 7), cashback(&setup, 7), lsns(&setup)), before);
    // Fail it: everything it gave is taken back; then nothing more can happen to it.
    committed(setup.engine.execute(setup.loyalty.fail(6, tx)));
    assert_eq!((points(&setup, 7), cashback(&setup, 7)), (0, 0));
    let after = lsns(&setup);
    assert_eq!(rejected(&setup, setup.loyalty.settle(7, tx)), RejectCode::PurchaseFailed);
    assert_eq!(rejected(&setup, setup.loyalty.fail(8, tx)), RejectCode::PurchaseFailed);
    assert_eq!(rejected(&setup, setup.loyalty.refund(9, tx, 1)), RejectCode::PurchaseFailed);
    assert_eq!(lsns(&setup), after);
    // Settle twice.
    let second = purchase(&setup, 10, 7, "R-3");
    committed(setup.engine.execute(setup.loyalty.settle(11, second)));
    let twice = setup.loyalty.settle(12, second);
    assert_eq!(rejected(&setup, twice), RejectCode::PurchaseAlreadySettled);
    // Lines that earned nothing (the gift card) take back nothing.
    let gift = setup.loyalty.refund_lines(13, second, &[(40, 2500, false)]);
    assert_eq!(rejected(&setup, gift), RejectCode::RefundZero);
    // Returned lines are checked as a basket is.
    let zero = setup.loyalty.refund_lines(16, second, &[(20, 0, false)]);
    assert_eq!(rejected(&setup, zero), RejectCode::LineAmountZero);
    let none = setup.loyalty.refund_lines(17, second, &[]);
    assert_eq!(rejected(&setup, none), RejectCode::BasketInvalid);
    // A refund by lines after one by amount mixes bases.
    committed(setup.engine.execute(setup.loyalty.refund(14, second, 1000)));
    let lines = setup.loyalty.refund_lines(15, second, &[(20, 5000, false)]);
    assert_eq!(rejected(&setup, lines), RejectCode::RefundBasisMismatch);
    assert_replay_matches(setup.engine, &setup.clock, dir.path(), 1);
}

#[test]
fn a_refund_retried_with_its_key_is_the_same_refund() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 1, at(2026, 11, 10, 12), example_rules());
    let tx = purchase(&setup, 1, 7, "R-1");
    committed(setup.engine.execute(setup.loyalty.settle(2, tx)));
    let refund = setup.loyalty.refund(3, tx, 4000);
    let first = committed(setup.engine.execute(refund.clone()));
    let left = points(&setup, 7);
    assert!(matches!(setup.engine.execute(refund), Response::Duplicate(c) if c == first));
    assert_eq!(points(&setup, 7), left, "a retry takes back nothing more");
    // The same key for another amount is a conflict, even once the purchase is refunded.
    committed(setup.engine.execute(setup.loyalty.refund(4, tx, 4734)));
    let other = setup.loyalty.refund(3, tx, 4001);
    assert_eq!(rejected(&setup, other), RejectCode::IdempotencyConflict);
    let retry = setup.loyalty.refund(3, tx, 4000);
    assert!(matches!(setup.engine.execute(retry), Response::Duplicate(c) if c == first));
}

#[test]
fn spent_points_are_taken_from_other_lots_then_owed_never_a_negative_balance() {
    let dir = tempfile::tempdir().unwrap();
    let start = at(2026, 11, 1, 12);
    let setup = setup(dir.path(), 1, start, example_rules());
    // 50 points on day 1 (the earliest lot), the purchase on day 10, 30 points on day 11.
    committed(setup.engine.execute(setup.loyalty.earn(1, 7, 50)));
    setup.clock.set(at(2026, 11, 10, 12));
    let tx = purchase(&setup, 2, 7, "R-1");
    committed(setup.engine.execute(setup.loyalty.settle(3, tx)));
    setup.clock.set(at(2026, 11, 11, 12));
    committed(setup.engine.execute(setup.loyalty.earn(4, 7, 30)));
    // 150 spent: the 50 of day 1 first, then 100 of the purchase's 112.
    committed(setup.engine.execute(setup.loyalty.redeem(5, 7, 150)));
    assert_eq!(points(&setup, 7), 42);
    // The whole refund takes back 112: 12 from the purchase's lot, 30 from the other, 70 owed.
    committed(setup.engine.execute(setup.loyalty.refund(6, tx, 8734)));
    assert_eq!((points(&setup, 7), owed(&setup, 7)), (0, -70));
    assert!(member(&setup, 7, 0).lots.is_empty());
    // The books still balance: issuance got back all 112.
    assert_eq!(balance(&setup.engine, setup.loyalty.issuance()), -(50 + 30));
    assert_replay_matches(setup.engine, &setup.clock, dir.path(), 1);
}

/// Example rules whose bonus points live one month and whose purchases stay refundable a year.
fn short_bonus() -> RuleSet {
    let mut rules = example_rules();
    rules.expiry.bonus_months = 1;
    rules.purchases.refund_days = 365;
    rules.promotions = vec![Promotion {
        name: "welcome".into(),
        starts_at: Timestamp(0),
        ends_at: Timestamp(u64::MAX),
        scope: PromotionScope::All,
        effect: PromotionEffect::Bonus(40),
    }];
    rules
}

#[test]
fn a_refund_after_some_of_the_purchases_lots_expired_owes_what_they_held() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 1, at(2026, 11, 10, 12), short_bonus());
    let tx = purchase(&setup, 1, 7, "R-1");
    committed(setup.engine.execute(setup.loyalty.settle(2, tx)));
    assert_eq!(points(&setup, 7), 112 + 40);
    // The bonus lot expires at midnight after 2026-12-10.
    setup.clock.set(at(2026, 12, 11, 1));
    wait_until(|| points(&setup, 7) == 112);
    let view = member(&setup, 7, 0);
    assert_eq!(view.lots.iter().map(|lot| lot.kind).collect::<Vec<_>>(), [LotKind::Earned]);
    // The refund of all of it takes back 112 earned from its lot and owes the 40 bonus points.
    committed(setup.engine.execute(setup.loyalty.refund(3, tx, 8734)));
    assert_eq!((points(&setup, 7), owed(&setup, 7)), (0, -40));
    assert_replay_matches(setup.engine, &setup.clock, dir.path(), 1);
}

#[test]
fn a_refund_undoes_the_tier_progress_of_its_part_and_never_grants_a_tier() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 1, at(2026, 11, 10, 12), tiered());
    let first = committed(setup.engine.execute(setup.loyalty.purchase(1, 7, 1, &[(0, 15)])));
    assert_eq!(first.amount, 150);
    assert_eq!(member(&setup, 7, 0).tier, 1, "silver from 150 qualifying points");
    // The next purchase is priced at silver: 2 × 10 points per unit.
    let second = committed(setup.engine.execute(setup.loyalty.purchase(2, 7, 1, &[(0, 5)])));
    assert_eq!(second.amount, 100);
    committed(setup.engine.execute(setup.loyalty.settle(3, first.tx_id)));
    // Refunding 10 of the first 15 units takes back 100 of its 150 points: 150 qualifying left.
    committed(setup.engine.execute(setup.loyalty.refund(4, first.tx_id, 10)));
    let view = member(&setup, 7, 0);
    assert_eq!((view.qualifying, view.tier), (150, 1));
    // The rest of it: 50 qualifying, bronze again, recorded so.
    committed(setup.engine.execute(setup.loyalty.refund(5, first.tx_id, 5)));
    let view = member(&setup, 7, 0);
    assert_eq!((view.qualifying, view.tier, view.tier_recorded), (100, 1, 1));
    committed(setup.engine.execute(setup.loyalty.settle(6, second.tx_id)));
    committed(setup.engine.execute(setup.loyalty.refund(7, second.tx_id, 1)));
    let view = member(&setup, 7, 0);
    assert_eq!((view.qualifying, view.tier, view.tier_recorded), (80, 0, 0));
    assert_replay_matches(setup.engine, &setup.clock, dir.path(), 1);
}

#[test]
fn caps_counters_give_back_only_the_day_and_month_they_still_count() {
    let dir = tempfile::tempdir().unwrap();
    let mut rules = tiered();
    rules.caps.daily = Some(500);
    let setup = setup(dir.path(), 1, at(2026, 11, 10, 12), rules);
    // 400 points on the 10th.
    let first = committed(setup.engine.execute(setup.loyalty.purchase(1, 7, 1, &[(0, 40)])));
    committed(setup.engine.execute(setup.loyalty.settle(2, first.tx_id)));
    // A refund the same day gives the day back: 300 more can be earned before the cap.
    committed(setup.engine.execute(setup.loyalty.refund(3, first.tx_id, 20)));
    assert_eq!(member(&setup, 7, 0).caps_used.day, 200);
    // On the 11th, 100 points (silver: 200 qualifying); a refund of the 10th's purchase gives
    // back the month, not the 11th's day.
    setup.clock.set(at(2026, 11, 11, 12));
    committed(setup.engine.execute(setup.loyalty.purchase(4, 7, 1, &[(0, 5)])));
    committed(setup.engine.execute(setup.loyalty.refund(5, first.tx_id, 10)));
    let view = member(&setup, 7, 0);
    assert_eq!((view.caps_used.day, view.caps_used.month), (100, 200));
    // Across the month boundary (60 points at silver): December's counters do not count
    // November's purchase, whose refund leaves them alone.
    setup.clock.set(at(2026, 12, 1, 12));
    committed(setup.engine.execute(setup.loyalty.purchase(6, 7, 1, &[(0, 3)])));
    committed(setup.engine.execute(setup.loyalty.refund(7, first.tx_id, 10)));
    let view = member(&setup, 7, 0);
    assert_eq!((view.caps_used.day, view.caps_used.month), (60, 60));
    assert_replay_matches(setup.engine, &setup.clock, dir.path(), 1);
}

#[test]
fn refunds_by_lines_weigh_each_line_and_by_receipt_find_the_purchase() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 2, at(2026, 11, 10, 12), example_rules());
    let tx = purchase(&setup, 1, 7, "R-1");
    committed(setup.engine.execute(setup.loyalty.settle(2, tx)));
    // The electronics line weighs 5,000 × 2 of 11,234: ⌊112 × 10000 / 11234⌋ = 99 points and
    // ⌊37 × 10000 / 11234⌋ = 32 cashback.
    let lines = setup.loyalty.refund_lines(3, tx, &[(20, 5000, false)]);
    assert_eq!(committed(setup.engine.execute(lines)).amount, 99);
    assert_eq!((points(&setup, 7), cashback(&setup, 7)), (13, 5));
    // The groceries line is the rest of the weight: the purchase is refunded whole.
    let rest = setup.loyalty.refund_lines(4, tx, &[(10, 1234, false)]);
    committed(setup.engine.execute(rest));
    assert_eq!((points(&setup, 7), cashback(&setup, 7)), (0, 0));
    assert_eq!(state(&setup, tx), Some(LifecycleState::Refunded));
    // By store and receipt, for the member who made it.
    let other = purchase(&setup, 5, 9, "R-9");
    committed(setup.engine.execute(setup.loyalty.settle(6, other)));
    let by_receipt = setup.loyalty.refund_by_receipt(7, 9, (1, "R-9"), 8734);
    committed(setup.engine.execute(by_receipt));
    assert_eq!(state(&setup, other), Some(LifecycleState::Refunded));
    assert_eq!(points(&setup, 9), 0);
    assert_replay_matches(setup.engine, &setup.clock, dir.path(), 2);
}

#[test]
fn purchases_past_the_refund_window_answer_a_typed_status() {
    let dir = tempfile::tempdir().unwrap();
    let mut rules = example_rules();
    rules.purchases.refund_days = 30;
    let setup = setup(dir.path(), 1, at(2026, 11, 10, 12), rules);
    let tx = purchase(&setup, 1, 7, "R-1");
    committed(setup.engine.execute(setup.loyalty.settle(2, tx)));
    // Day 29 after: still refundable.
    setup.clock.set(at(2026, 12, 9, 23));
    committed(setup.engine.execute(setup.loyalty.refund(3, tx, 100)));
    // Day 30: no longer, by id or by receipt; a newer purchase is.
    setup.clock.set(at(2026, 12, 10, 0));
    assert_eq!(
        rejected(&setup, setup.loyalty.refund(4, tx, 100)),
        RejectCode::PurchaseNotRefundable
    );
    let newer = purchase(&setup, 5, 7, "R-2");
    assert_eq!(state(&setup, tx), None, "the old purchase left the table");
    assert_eq!(
        rejected(&setup, setup.loyalty.refund(6, tx, 100)),
        RejectCode::PurchaseNotRefundable
    );
    let by_receipt = setup.loyalty.refund_by_receipt(7, 7, (1, "R-1"), 100);
    assert_eq!(rejected(&setup, by_receipt), RejectCode::PurchaseNotFound);
    committed(setup.engine.execute(setup.loyalty.fail(8, newer)));
    assert_replay_matches(setup.engine, &setup.clock, dir.path(), 1);
}

fn held(days: u16) -> RuleSet {
    let mut rules = example_rules();
    rules.purchases.pending = PendingPoints::Held { days };
    rules
}

#[test]
fn held_pending_points_are_not_spendable_until_settled_and_a_failure_releases_them() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 1, at(2026, 11, 10, 12), held(3));
    let tx = purchase(&setup, 1, 7, "R-1");
    // Credited as pending: not posted, not spendable, no lot yet.
    assert_eq!((points(&setup, 7), cashback(&setup, 7)), (0, 0));
    assert_eq!(pending_credit(&setup, 7), 112);
    assert_eq!(rejected(&setup, setup.loyalty.redeem(2, 7, 1)), RejectCode::InsufficientFunds);
    assert!(member(&setup, 7, 0).lots.is_empty());
    // Settled: posted, spendable, in a lot of the purchase's day.
    committed(setup.engine.execute(setup.loyalty.settle(3, tx)));
    assert_eq!((points(&setup, 7), cashback(&setup, 7)), (112, 37));
    assert_eq!(member(&setup, 7, 0).lots.len(), 1);
    committed(setup.engine.execute(setup.loyalty.redeem(4, 7, 12)));
    // Failed while pending: the pending credit goes, nothing is owed.
    let second = purchase(&setup, 5, 7, "R-2");
    committed(setup.engine.execute(setup.loyalty.fail(6, second)));
    assert_eq!((points(&setup, 7), owed(&setup, 7)), (100, 0));
    assert_eq!(pending_credit(&setup, 7), 0);
    // Not settled within 3 days: the shard posts the points, the purchase stays pending, and a
    // later chargeback takes them back from the lots.
    let third = purchase(&setup, 7, 7, "R-3");
    setup.clock.set(at(2026, 11, 13, 0));
    wait_until(|| points(&setup, 7) == 212);
    assert_eq!(state(&setup, third), Some(LifecycleState::Pending));
    committed(setup.engine.execute(setup.loyalty.fail(8, third)));
    assert_eq!((points(&setup, 7), cashback(&setup, 7), owed(&setup, 7)), (100, 37, 0));
    assert_replay_matches(setup.engine, &setup.clock, dir.path(), 1);
}

#[test]
fn available_pending_points_are_spendable_at_once_and_a_failure_claws_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), 1, at(2026, 11, 10, 12), example_rules());
    let tx = purchase(&setup, 1, 7, "R-1");
    committed(setup.engine.execute(setup.loyalty.redeem(2, 7, 100)));
    committed(setup.engine.execute(spend_cashback(&setup, 3, 7, 30)));
    committed(setup.engine.execute(setup.loyalty.fail(4, tx)));
    assert_eq!((points(&setup, 7), owed(&setup, 7)), (0, -100));
    let owed_class = setup.accounts.cashback_clawback.unwrap();
    let owed_cashback = balance(&setup.engine, AccountId::new(owed_class, 7));
    assert_eq!((cashback(&setup, 7), owed_cashback), (0, -30));
    assert_replay_matches(setup.engine, &setup.clock, dir.path(), 1);
}

#[test]
fn the_liability_figures_follow_every_record_and_equal_a_replay() {
    use ledger_engine::loyalty::liability::breakage_ppm;
    let dir = tempfile::tempdir().unwrap();
    let mut rules = short_bonus();
    rules.purchases.point_value =
        ledger_engine::loyalty::rules::PointValue { minor_units: 1, points: 2 };
    let day0 = at(2026, 11, 10, 12);
    let setup = setup(dir.path(), 2, day0, rules.clone());
    // Day 0: two purchases (152 points each: 112 earned, 40 bonus) and a redemption.
    let first = purchase(&setup, 1, 7, "R-1");
    let second = purchase(&setup, 2, 8, "R-2");
    committed(setup.engine.execute(setup.loyalty.redeem(3, 8, 100)));
    // Day 1: the first refunded in part, the second failed (52 of its points left: 100 owed).
    setup.clock.set(at(2026, 11, 11, 12));
    committed(setup.engine.execute(setup.loyalty.settle(4, first)));
    committed(setup.engine.execute(setup.loyalty.refund(5, first, 4367)));
    committed(setup.engine.execute(setup.loyalty.fail(6, second)));
    // A month later the first purchase's bonus lot expires.
    setup.clock.set(at(2026, 12, 11, 1));
    wait_until(|| points(&setup, 7) < 152 - 76);
    let figures = setup.engine.liability().unwrap();
    let day = |timestamp: Timestamp| ledger_engine::loyalty::calendar::day_index(timestamp);
    let flows: Vec<_> = figures.flows.days().collect();
    let (refunded_earned, refunded_bonus) = (56, 20); // ⌊112 × 4367 / 8734⌋, ⌊40 × …⌋
    assert_eq!(flows.len(), 3);
    assert_eq!(flows[0].0, day(day0));
    assert_eq!((flows[0].1.issued, flows[0].1.redeemed), (304, 100));
    // The refund took 76 from the first's lots; the failure 52 from the second's, 100 owed.
    assert_eq!(flows[1].1.refunded, refunded_earned + refunded_bonus + 52);
    assert_eq!(flows[2].1.expired, 40 - refunded_bonus);
    let (points_class, clawback) = (setup.accounts.points, setup.accounts.clawback.unwrap());
    let held = points(&setup, 7) + points(&setup, 8);
    assert_eq!(figures.class_total(points_class), held);
    assert_eq!(held, 152 - 76 - 20);
    assert_eq!(figures.class_total(clawback), -100);
    assert_eq!(figures.by_expiry_month.values().sum::<u64>(), u64::try_from(held).unwrap());
    assert_eq!(figures.tiers[0], 2, "two members, both bronze");
    // Breakage over the three days: 20 expired of 304 issued.
    let rate = breakage_ppm(&figures.flows, day(day0), day(at(2026, 12, 11, 1)));
    assert_eq!(rate, Some(20 * 1_000_000 / 304));
    assert_eq!(rules.purchases.point_value.money(u128::try_from(held).unwrap()), 28);
    // A replay of every shard's WAL alone adds up to the same figures.
    setup.engine.shutdown();
    let meta = ledger_engine::datadir::read_meta(dir.path()).unwrap();
    let limits =
        ledger_engine::Limits { idempotency_keys_max: 4096, ..ledger_engine::Limits::test_min() };
    let mut replayed = ledger_engine::ledger::liability::ShardLiability::default();
    for shard in 0..2 {
        let shard = ledger_engine::ShardId::new(shard).unwrap();
        let config = ledger_engine::engine::ledger_config(&meta, shard, &limits);
        let ledger =
            ledger_engine::engine::replay_shard_offline(dir.path(), shard, config, None).unwrap();
        ledger.check_invariants().unwrap();
        replayed.merge(&ledger.liability()).unwrap();
    }
    assert_eq!(replayed, figures);
}
