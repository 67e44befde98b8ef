//! Scenario tests of the state machine: every operation, and every rejection, each checked to
//! leave the whole state (not only the balances) byte-for-byte as it was.

use super::account::{AccountFlags, AccountId, AssetId, ClassId, Name, Namespace};
use super::command::Committed;
use super::record::{
    AssetDefine, Body, ClassDefine, HoldCapture, HoldCreate, HoldExpire, HoldVoid, Metadata,
    Posting, Receipt, Record, Reversal, Transaction, TransferIn, TransferOut, TransferSettle,
    TxHeader, TxKind,
};
use super::{Ledger, LedgerConfig, Refusal};
use crate::amount::Amount;
use crate::ids::{
    CustomerId, IdempotencyKey, ShardId, TerminalId, Timestamp, TxId, shard_for_customer,
};
use crate::limits::Limits;
use crate::reject::RejectCode;
use crate::wal::payload;

const SECOND: u64 = 1_000_000_000;

struct Harness {
    ledger: Ledger,
    now: Timestamp,
    next_key: u128,
    pts: AssetId,
    usd: AssetId,
    points: ClassId,
    dollars: ClassId,
    issuance: ClassId,
    redemption: ClassId,
    capped: ClassId,
}

fn amount(value: u64) -> Amount {
    Amount::new(value).unwrap()
}

impl Harness {
    fn new() -> Harness {
        Harness::with_config(LedgerConfig {
            limits: Limits::test_min(),
            ..LedgerConfig::new(ShardId::new(0).unwrap(), 1)
        })
    }

    fn with_config(config: LedgerConfig) -> Harness {
        let mut harness = Harness {
            ledger: Ledger::new(config),
            now: Timestamp(1_800_000_000 * SECOND),
            next_key: 1,
            pts: AssetId(0),
            usd: AssetId(1),
            points: ClassId(1),
            dollars: ClassId(2),
            issuance: ClassId(3),
            redemption: ClassId(4),
            capped: ClassId(5),
        };
        harness.define_asset("PTS", 0);
        harness.define_asset("USD", 2);
        harness.define_class(Namespace::Customer, "points", 0, AccountFlags::NO_OVERDRAFT);
        harness.define_class(Namespace::Customer, "dollars", 1, AccountFlags::NO_OVERDRAFT);
        harness.define_class(Namespace::House, "issuance", 0, AccountFlags::NONE);
        harness.define_class(Namespace::House, "redemption", 0, AccountFlags::NONE);
        harness.define_class(
            Namespace::House,
            "capped",
            0,
            AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
        );
        harness
    }

    fn define_asset(&mut self, code: &str, scale: u8) {
        let id = self.ledger.registry().next_asset_id();
        let body = Body::AssetDefine(AssetDefine { id, code: Name::asset(code).unwrap(), scale });
        self.apply(body).unwrap();
    }

    fn define_class(&mut self, namespace: Namespace, name: &str, asset: u16, flags: AccountFlags) {
        let id = self.ledger.registry().next_class_id();
        let body = Body::ClassDefine(ClassDefine {
            id,
            namespace,
            name: Name::class(name).unwrap(),
            asset: AssetId(asset),
            flags,
        });
        self.apply(body).unwrap();
    }

    fn customer(&self, id: u64) -> AccountId {
        AccountId::new(self.points, id)
    }

    fn house(&self, class: ClassId) -> AccountId {
        AccountId::new(class, 0)
    }

    fn header(&mut self) -> TxHeader {
        let key = self.next_key;
        self.next_key += 1;
        self.header_with_key(key)
    }

    fn header_with_key(&self, key: u128) -> TxHeader {
        TxHeader {
            id: self.ledger.peek_tx_id(self.now),
            kind: TxKind::PURCHASE,
            terminal: TerminalId(1),
            idempotency: IdempotencyKey::new(key),
            metadata: Metadata {
                store: 1,
                category: 0,
                receipt: Receipt::new("R").unwrap(),
                annotation: None,
            },
        }
    }

    fn posting(&self, debit: AccountId, credit: AccountId, value: u64) -> Posting {
        Posting { debit, credit, asset: self.pts, amount: amount(value) }
    }

    /// Applies `body` the way a shard does: encode, fingerprint, apply.
    fn apply(&mut self, body: Body) -> Result<Committed, Refusal> {
        let mut payload_bytes = Vec::new();
        payload::encode_body(&body, &mut payload_bytes);
        let fingerprint = payload::fingerprint(body.kind(), &payload_bytes);
        let lsn = self.ledger.lsn().next();
        let tx_id = body.tx_id().unwrap_or(TxId(0));
        let record = Record { lsn, timestamp: self.now, body };
        let committed = self.ledger.apply(&record, fingerprint)?;
        assert_eq!((committed.tx_id, committed.lsn, committed.timestamp), (tx_id, lsn, self.now));
        self.ledger.check_invariants().unwrap();
        Ok(committed)
    }

    fn post(&mut self, postings: super::record::Postings) -> Result<Committed, Refusal> {
        let header = self.header();
        self.apply(Body::Transaction(Transaction { header, postings }))
    }

    fn earn(&mut self, customer: u64, value: u64) -> Committed {
        let posting = self.posting(self.house(self.issuance), self.customer(customer), value);
        self.post(smallvec::smallvec![posting]).unwrap()
    }

    fn hold(&mut self, customer: u64, value: u64, timeout: u64) -> Result<Committed, Refusal> {
        let header = self.header();
        let posting = self.posting(self.customer(customer), self.house(self.redemption), value);
        self.apply(Body::HoldCreate(HoldCreate { header, posting, timeout_nanos: timeout }))
    }

    fn capture(&mut self, hold: TxId, value: Option<u64>) -> Result<Committed, Refusal> {
        let header = self.header();
        let amount = value.map(amount);
        self.apply(Body::HoldCapture(HoldCapture { header, hold, amount }))
    }

    fn void(&mut self, hold: TxId) -> Result<Committed, Refusal> {
        let header = self.header();
        self.apply(Body::HoldVoid(HoldVoid { header, hold }))
    }

    /// A reversal of `original` as the shard builds it: its postings turned round.
    fn reversal(&mut self, original: TxId) -> Result<Body, RejectCode> {
        let mut header = self.header();
        header.kind = TxKind::REVERSAL;
        let postings = self.ledger.reversal_postings(original)?;
        Ok(Body::Reversal(Reversal { header, original, postings }))
    }

    fn balance(&self, account: AccountId) -> i128 {
        self.ledger.account(account).map_or(0, |view| view.counters.balance_posted())
    }

    fn available(&self, account: AccountId) -> i128 {
        self.ledger.account(account).map_or(0, |view| view.counters.balance_available())
    }

    fn state(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.ledger.encode_state(&mut bytes);
        bytes
    }

    /// Asserts that `body` is rejected with `code` and that nothing at all changed.
    fn assert_rejected(&mut self, body: Body, code: RejectCode) {
        let before = self.state();
        let lsn = self.ledger.lsn();
        assert_eq!(self.apply(body), Err(Refusal::Rejected(code)));
        assert_eq!(self.ledger.lsn(), lsn);
        assert!(self.state() == before, "a rejected {code:?} changed the state");
        self.ledger.check_invariants().unwrap();
    }
}

#[test]
fn earn_and_redeem_move_points_and_keep_every_asset_at_zero() {
    let mut harness = Harness::new();
    harness.earn(7, 1_000);
    assert_eq!(harness.balance(harness.customer(7)), 1_000);
    assert_eq!(harness.balance(harness.house(harness.issuance)), -1_000);
    let redeem = harness.posting(harness.customer(7), harness.house(harness.redemption), 300);
    harness.post(smallvec::smallvec![redeem]).unwrap();
    assert_eq!(harness.balance(harness.customer(7)), 700);
    let totals = harness.ledger.totals(harness.pts).unwrap();
    assert_eq!(totals.debits_posted, 1_300);
    assert_eq!(totals.credits_posted, 1_300);
}

#[test]
fn a_transaction_with_several_postings_commits_whole() {
    let mut harness = Harness::new();
    let issuance = harness.house(harness.issuance);
    let earn = harness.posting(issuance, harness.customer(1), 100);
    let bonus = harness.posting(issuance, harness.customer(2), 50);
    let spend = harness.posting(harness.customer(1), harness.customer(2), 100);
    harness.post(smallvec::smallvec![earn, bonus, spend]).unwrap();
    assert_eq!(harness.balance(harness.customer(1)), 0);
    assert_eq!(harness.balance(harness.customer(2)), 150);
}

#[test]
fn a_failing_posting_rolls_back_the_earlier_ones_and_the_accounts_they_created() {
    let mut harness = Harness::new();
    let issuance = harness.house(harness.issuance);
    let earn = harness.posting(issuance, harness.customer(10), 100);
    let overspend = harness.posting(harness.customer(10), harness.customer(11), 101);
    let header = harness.header();
    harness.assert_rejected(
        Body::Transaction(Transaction { header, postings: smallvec::smallvec![earn, overspend] }),
        RejectCode::InsufficientFunds,
    );
    assert!(harness.ledger.account(harness.customer(10)).is_none());
    assert!(harness.ledger.account(issuance).is_none());
}

#[test]
fn static_rejections_change_nothing() {
    let mut harness = Harness::new();
    harness.earn(1, 500);
    let customer = harness.customer(1);
    let redemption = harness.house(harness.redemption);

    let mut header = harness.header();
    header.idempotency = None;
    let posting = harness.posting(customer, redemption, 1);
    harness.assert_rejected(
        Body::Transaction(Transaction { header, postings: smallvec::smallvec![posting] }),
        RejectCode::IdempotencyKeyMissing,
    );

    let header = harness.header();
    harness.assert_rejected(
        Body::Transaction(Transaction { header, postings: smallvec::smallvec![] }),
        RejectCode::PostingsEmpty,
    );

    let header = harness.header();
    let many = smallvec::smallvec![posting; Limits::test_min().transaction_postings_max + 1];
    harness.assert_rejected(
        Body::Transaction(Transaction { header, postings: many }),
        RejectCode::PostingsTooMany,
    );

    let header = harness.header();
    let same = harness.posting(customer, customer, 1);
    harness.assert_rejected(
        Body::Transaction(Transaction { header, postings: smallvec::smallvec![same] }),
        RejectCode::AccountsSame,
    );

    let header = harness.header();
    let unknown_class = harness.posting(AccountId::new(ClassId(99), 1), redemption, 1);
    harness.assert_rejected(
        Body::Transaction(Transaction { header, postings: smallvec::smallvec![unknown_class] }),
        RejectCode::ClassUnknown,
    );

    let header = harness.header();
    let unknown_asset = Posting { asset: AssetId(9), ..posting };
    harness.assert_rejected(
        Body::Transaction(Transaction { header, postings: smallvec::smallvec![unknown_asset] }),
        RejectCode::AssetUnknown,
    );

    let header = harness.header();
    let wrong_asset = Posting { asset: harness.usd, ..posting };
    harness.assert_rejected(
        Body::Transaction(Transaction { header, postings: smallvec::smallvec![wrong_asset] }),
        RejectCode::AssetMismatch,
    );
    let header = harness.header();
    let mixed = harness.posting(customer, AccountId::new(harness.dollars, 1), 1);
    harness.assert_rejected(
        Body::Transaction(Transaction { header, postings: smallvec::smallvec![mixed] }),
        RejectCode::AssetMismatch,
    );

    let header = harness.header();
    let transit = harness.posting(customer, AccountId::transit(harness.pts), 1);
    harness.assert_rejected(
        Body::Transaction(Transaction { header, postings: smallvec::smallvec![transit] }),
        RejectCode::AccountKindInvalid,
    );

    let header = harness.header();
    let timeout_nanos = 0;
    harness.assert_rejected(
        Body::HoldCreate(HoldCreate { header, posting, timeout_nanos }),
        RejectCode::HoldTimeoutInvalid,
    );
    let header = harness.header();
    let timeout_nanos = harness.ledger.config().hold_timeout_max_nanos + 1;
    harness.assert_rejected(
        Body::HoldCreate(HoldCreate { header, posting, timeout_nanos }),
        RejectCode::HoldTimeoutInvalid,
    );
    assert_eq!(Receipt::new(&"x".repeat(33)), Err(RejectCode::ReceiptTooLong));
    assert_eq!(Amount::new(0), None, "a zero amount cannot be built");
}

#[test]
fn customers_of_another_shard_are_refused() {
    let config = LedgerConfig {
        limits: Limits::test_min(),
        ..LedgerConfig::new(ShardId::new(0).unwrap(), 4)
    };
    let mut harness = Harness::with_config(config);
    let foreign = (0..100).find(|c| shard_for_customer(CustomerId(*c), 4).index() != 0).unwrap();
    let header = harness.header();
    let posting = harness.posting(harness.house(harness.issuance), harness.customer(foreign), 5);
    harness.assert_rejected(
        Body::Transaction(Transaction { header, postings: smallvec::smallvec![posting] }),
        RejectCode::AccountsOnDifferentShards,
    );
}

#[test]
fn overdraft_counting_holds_and_unknown_accounts_are_refused() {
    let mut harness = Harness::new();
    let redemption = harness.house(harness.redemption);
    let header = harness.header();
    let from_nobody = harness.posting(harness.customer(5), redemption, 1);
    harness.assert_rejected(
        Body::Transaction(Transaction { header, postings: smallvec::smallvec![from_nobody] }),
        RejectCode::AccountNotFound,
    );

    harness.earn(5, 1_000);
    let header = harness.header();
    let too_much = harness.posting(harness.customer(5), redemption, 1_001);
    harness.assert_rejected(
        Body::Transaction(Transaction { header, postings: smallvec::smallvec![too_much] }),
        RejectCode::InsufficientFunds,
    );

    // A hold of 800 leaves 200 available: a redemption of 201 is refused, 200 is fine.
    harness.hold(5, 800, 60 * SECOND).unwrap();
    assert_eq!(harness.available(harness.customer(5)), 200);
    let header = harness.header();
    let over_hold = harness.posting(harness.customer(5), redemption, 201);
    harness.assert_rejected(
        Body::Transaction(Transaction { header, postings: smallvec::smallvec![over_hold] }),
        RejectCode::InsufficientFunds,
    );
    let exact = harness.posting(harness.customer(5), redemption, 200);
    harness.post(smallvec::smallvec![exact]).unwrap();
    assert_eq!(harness.available(harness.customer(5)), 0);
}

#[test]
fn credit_limits_and_overflow_are_refused() {
    let mut harness = Harness::new();
    let capped = harness.house(harness.capped);
    let header = harness.header();
    let posting = harness.posting(harness.house(harness.issuance), capped, 1);
    harness.assert_rejected(
        Body::Transaction(Transaction { header, postings: smallvec::smallvec![posting] }),
        RejectCode::CreditLimitExceeded,
    );

    // Counters next to the end of u128: the next credit overflows and is refused.
    let customer = harness.customer(9);
    let near_max = u128::MAX - 5;
    let account = super::account::Account { credits_posted: near_max, ..Default::default() };
    harness.ledger.accounts.insert(customer, account);
    let issuance = super::account::Account { debits_posted: near_max, ..Default::default() };
    harness.ledger.accounts.insert(harness.house(harness.issuance), issuance);
    harness.ledger.totals[0].debits_posted = near_max;
    harness.ledger.totals[0].credits_posted = near_max;
    harness.ledger.restore_class_totals().unwrap();
    harness.ledger.check_invariants().unwrap();
    let header = harness.header();
    let posting = harness.posting(harness.house(harness.redemption), customer, 6);
    harness.assert_rejected(
        Body::Transaction(Transaction { header, postings: smallvec::smallvec![posting] }),
        RejectCode::Overflow,
    );
}

#[test]
fn live_postings_keep_customer_balances_within_the_bound_and_replay_does_not_check() {
    let max = u64::try_from(super::CUSTOMER_BALANCE_MAX).unwrap();
    // Replay (no bound): a balance above it applies, as a WAL written before the bound holds.
    let mut replay = Harness::new();
    replay.earn(1, max);
    replay.earn(1, 1);
    assert_eq!(replay.balance(replay.customer(1)), super::CUSTOMER_BALANCE_MAX + 1);

    let mut harness = Harness::new();
    harness.ledger.bound_customer_balances();
    harness.earn(1, max);
    let to_customer = |harness: &mut Harness, debit, customer: u64, value| {
        let header = harness.header();
        let posting = harness.posting(debit, harness.customer(customer), value);
        Body::Transaction(Transaction { header, postings: smallvec::smallvec![posting] })
    };
    let issuance = harness.house(harness.issuance);
    let earn = to_customer(&mut harness, issuance, 1, 1);
    harness.assert_rejected(earn, RejectCode::Overflow);
    harness.earn(2, 5);
    let source = harness.customer(2);
    let transfer = to_customer(&mut harness, source, 1, 5);
    harness.assert_rejected(transfer, RejectCode::Overflow);
    // Spending and earning back up to the bound is fine; a reversal beyond it is not.
    let header = harness.header();
    let spend = harness.posting(harness.customer(1), harness.house(harness.redemption), 10);
    let redeemed = harness
        .apply(Body::Transaction(Transaction { header, postings: smallvec::smallvec![spend] }))
        .unwrap();
    harness.earn(1, 10);
    assert_eq!(harness.balance(harness.customer(1)), super::CUSTOMER_BALANCE_MAX);
    let reversal = harness.reversal(redeemed.tx_id).unwrap();
    harness.assert_rejected(reversal, RejectCode::Overflow);
    // A balance already above the bound (replayed) may still go down, not up.
    replay.ledger.bound_customer_balances();
    let header = replay.header();
    let spend = replay.posting(replay.customer(1), replay.house(replay.redemption), 1);
    replay
        .apply(Body::Transaction(Transaction { header, postings: smallvec::smallvec![spend] }))
        .unwrap();
    let issuance = replay.house(replay.issuance);
    let earn = to_customer(&mut replay, issuance, 1, 1);
    replay.assert_rejected(earn, RejectCode::Overflow);
}

#[test]
fn idempotent_retries_return_the_original_and_conflicts_are_refused() {
    let mut harness = Harness::new();
    harness.earn(3, 100);
    let key = 4242;
    let posting = harness.posting(harness.customer(3), harness.house(harness.redemption), 10);
    let header = harness.header_with_key(key);
    let first = harness
        .apply(Body::Transaction(Transaction { header, postings: smallvec::smallvec![posting] }))
        .unwrap();
    // The retry carries a new tx id (a new attempt) but the same payload.
    let before = harness.state();
    let header = harness.header_with_key(key);
    let retry = harness
        .apply(Body::Transaction(Transaction { header, postings: smallvec::smallvec![posting] }));
    assert_eq!(retry, Err(Refusal::Duplicate(first)));
    assert!(harness.state() == before);
    assert_eq!(harness.balance(harness.customer(3)), 90);

    let header = harness.header_with_key(key);
    let other = harness.posting(harness.customer(3), harness.house(harness.redemption), 11);
    harness.assert_rejected(
        Body::Transaction(Transaction { header, postings: smallvec::smallvec![other] }),
        RejectCode::IdempotencyConflict,
    );

    // The same key from another terminal is another request.
    let mut header = harness.header_with_key(key);
    header.terminal = TerminalId(2);
    harness
        .apply(Body::Transaction(Transaction { header, postings: smallvec::smallvec![posting] }))
        .unwrap();
    assert_eq!(harness.balance(harness.customer(3)), 80);

    // After the retention window the key is forgotten.
    harness.now = harness.now.plus_nanos(harness.ledger.config().idempotency_retention_nanos);
    let header = harness.header_with_key(key);
    harness
        .apply(Body::Transaction(Transaction { header, postings: smallvec::smallvec![posting] }))
        .unwrap();
    assert_eq!(harness.balance(harness.customer(3)), 70);
}

#[test]
fn holds_capture_in_part_and_release_the_rest() {
    let mut harness = Harness::new();
    harness.earn(1, 1_000);
    let hold = harness.hold(1, 600, 60 * SECOND).unwrap().tx_id;
    assert_eq!(harness.available(harness.customer(1)), 400);
    assert!(harness.ledger.hold(hold).is_some());
    harness.capture(hold, Some(250)).unwrap();
    assert_eq!(harness.balance(harness.customer(1)), 750);
    assert_eq!(harness.available(harness.customer(1)), 750);
    assert_eq!(harness.balance(harness.house(harness.redemption)), 250);
    assert!(harness.ledger.hold(hold).is_none());
    let totals = harness.ledger.totals(harness.pts).unwrap();
    assert_eq!((totals.debits_pending, totals.credits_pending), (0, 0));
}

#[test]
fn hold_rejections_change_nothing() {
    let mut harness = Harness::new();
    harness.earn(1, 1_000);
    let header = harness.header();
    harness.assert_rejected(
        Body::HoldCapture(HoldCapture { header, hold: TxId(12345), amount: None }),
        RejectCode::HoldNotFound,
    );

    let hold = harness.hold(1, 500, 60 * SECOND).unwrap().tx_id;
    let header = harness.header();
    harness.assert_rejected(
        Body::HoldCapture(HoldCapture { header, hold, amount: Some(amount(501)) }),
        RejectCode::CaptureExceedsHold,
    );
    harness.capture(hold, None).unwrap();
    assert_eq!(harness.balance(harness.customer(1)), 500);
    let header = harness.header();
    harness.assert_rejected(
        Body::HoldVoid(HoldVoid { header, hold }),
        RejectCode::HoldAlreadyCaptured,
    );
    let header = harness.header();
    harness.assert_rejected(
        Body::HoldCapture(HoldCapture { header, hold, amount: None }),
        RejectCode::HoldAlreadyCaptured,
    );

    let voided = harness.hold(1, 100, 60 * SECOND).unwrap().tx_id;
    harness.void(voided).unwrap();
    assert_eq!(harness.available(harness.customer(1)), 500);
    let header = harness.header();
    harness.assert_rejected(
        Body::HoldCapture(HoldCapture { header, hold: voided, amount: None }),
        RejectCode::HoldAlreadyVoided,
    );

    // A hold past its timeout cannot be captured even before the sweep expires it.
    let late = harness.hold(1, 100, SECOND).unwrap().tx_id;
    harness.now = harness.now.plus_nanos(SECOND);
    let header = harness.header();
    harness.assert_rejected(
        Body::HoldCapture(HoldCapture { header, hold: late, amount: None }),
        RejectCode::HoldExpired,
    );
    assert_eq!(harness.ledger.holds_due(harness.now, 10), vec![late]);
    let id = harness.ledger.peek_tx_id(harness.now);
    harness.apply(Body::HoldExpire(HoldExpire { id, hold: late })).unwrap();
    assert_eq!(harness.available(harness.customer(1)), 500);
    let header = harness.header();
    harness
        .assert_rejected(Body::HoldVoid(HoldVoid { header, hold: late }), RejectCode::HoldExpired);

    // An expiry record before the timeout does not apply.
    let early = harness.hold(1, 100, 10 * SECOND).unwrap().tx_id;
    let id = harness.ledger.peek_tx_id(harness.now);
    harness.assert_rejected(
        Body::HoldExpire(HoldExpire { id, hold: early }),
        RejectCode::HoldTimeoutInvalid,
    );
}

#[test]
fn open_holds_are_bounded() {
    let mut harness = Harness::new();
    harness.earn(1, 1_000);
    for _ in 0..Limits::test_min().holds_open_max {
        harness.hold(1, 1, 60 * SECOND).unwrap();
    }
    let header = harness.header();
    let posting = harness.posting(harness.customer(1), harness.house(harness.redemption), 1);
    let timeout_nanos = SECOND;
    harness.assert_rejected(
        Body::HoldCreate(HoldCreate { header, posting, timeout_nanos }),
        RejectCode::HoldsFull,
    );
}

#[test]
fn cross_shard_transfer_steps_balance_each_shard() {
    let config = |index| LedgerConfig {
        limits: Limits::test_min(),
        ..LedgerConfig::new(ShardId::new(index).unwrap(), 2)
    };
    let mut source = Harness::with_config(config(0));
    let mut destination = Harness::with_config(config(1));
    let on_shard = |shard: u16| {
        (0..1000).find(|c| shard_for_customer(CustomerId(*c), 2).index() == shard).unwrap()
    };
    let (alice, bob) = (on_shard(0), on_shard(1));
    source.earn(alice, 1_000);
    let destination_shard = ShardId::new(1).unwrap();
    let transfer = TransferOut {
        header: source.header(),
        destination_shard,
        sequence: 1,
        source: source.customer(alice),
        destination: source.customer(bob),
        asset: source.pts,
        amount: amount(400),
    };
    source.apply(Body::TransferOut(transfer.clone())).unwrap();
    assert_eq!(source.balance(source.customer(alice)), 600);
    assert_eq!(source.balance(AccountId::transit(source.pts)), 400);
    assert_eq!(source.ledger.transfers_out().count(), 1);

    // Too many in flight: the limit refuses the next one and changes nothing.
    for sequence in 2..=Limits::test_min().transfers_in_flight_max as u64 {
        let next = TransferOut {
            header: source.header(),
            sequence,
            amount: amount(1),
            ..transfer.clone()
        };
        source.apply(Body::TransferOut(next)).unwrap();
    }
    let sequence = source.ledger.transfer_out_next(destination_shard);
    let full = TransferOut { header: source.header(), sequence, amount: amount(1), ..transfer };
    source.assert_rejected(Body::TransferOut(full), RejectCode::TransfersFull);

    let incoming = TransferIn {
        id: destination.ledger.peek_tx_id(destination.now),
        source_shard: ShardId::new(0).unwrap(),
        sequence: 1,
        source_tx: TxId(1),
        source: transfer.source,
        destination: transfer.destination,
        asset: destination.pts,
        amount: amount(400),
        accepted: true,
    };
    destination.apply(Body::TransferIn(incoming)).unwrap();
    assert_eq!(destination.balance(destination.customer(bob)), 400);
    assert_eq!(destination.balance(AccountId::transit(destination.pts)), -400);
    assert_eq!(destination.ledger.transfer_in_last(ShardId::new(0).unwrap()), 1);

    // Settled accepted: transit keeps the credit that offsets the destination's debit.
    let settle = TransferSettle {
        id: source.ledger.peek_tx_id(source.now),
        destination_shard,
        sequence: 1,
        accepted: true,
    };
    source.apply(Body::TransferSettle(settle)).unwrap();
    // Settled refused: the source is refunded from transit.
    let refund = TransferSettle {
        id: source.ledger.peek_tx_id(source.now),
        destination_shard,
        sequence: 2,
        accepted: false,
    };
    let before = source.balance(source.customer(alice));
    let second_key = 3; // keys 1 and 2: the earn and the first transfer
    source.apply(Body::TransferSettle(refund)).unwrap();
    assert_eq!(source.balance(source.customer(alice)), before + 1);
    // The refund is remembered under the request's key: a retry is refused the same way.
    let retry = TransferOut {
        header: source.header_with_key(second_key),
        sequence: source.ledger.transfer_out_next(destination_shard),
        amount: amount(1),
        ..transfer
    };
    source.assert_rejected(Body::TransferOut(retry), RejectCode::TransferRefunded);
    let retry_first = TransferOut {
        header: source.header_with_key(2),
        sequence: source.ledger.transfer_out_next(destination_shard),
        ..transfer
    };
    assert!(matches!(
        source.apply(Body::TransferOut(retry_first)),
        Err(Refusal::Duplicate(committed)) if committed.lsn.0 > 0
    ));
    // Refunds and the origin of unsettled transfers survive a snapshot; a state read from a
    // version 2 snapshot (which has neither) finds the origins in the idempotency table.
    let config = source.ledger.config().clone();
    let mut bytes = Vec::new();
    source.ledger.encode_state(&mut bytes);
    let decoded = Ledger::decode_state(config.clone(), &bytes).unwrap();
    assert!(decoded == source.ledger);
    let mut v2 = Vec::new();
    source.ledger.encode_state_version(&mut v2, 2);
    let from_v2 = Ledger::decode_state_version(config, &v2, 2).unwrap();
    assert!(from_v2.transfers_out().eq(source.ledger.transfers_out()));
    assert!(source.ledger.transfers_out().all(|(_, _, transfer)| transfer.origin.is_some()));
    let global_transit = source.balance(AccountId::transit(source.pts))
        + destination.balance(AccountId::transit(destination.pts));
    let in_flight: i128 =
        source.ledger.transfers_out().map(|(_, _, t)| i128::from(t.amount.get())).sum();
    assert_eq!(global_transit, in_flight, "transit holds exactly what is in flight");
}

#[test]
fn definitions_must_come_in_order_and_not_repeat() {
    let mut harness = Harness::new();
    let body = Body::AssetDefine(AssetDefine {
        id: AssetId(5),
        code: Name::asset("GEM").unwrap(),
        scale: 0,
    });
    harness.assert_rejected(body, RejectCode::DefinitionConflict);
    let id = harness.ledger.registry().next_asset_id();
    let body = Body::AssetDefine(AssetDefine { id, code: Name::asset("PTS").unwrap(), scale: 0 });
    harness.assert_rejected(body, RejectCode::DefinitionConflict);
    let id = harness.ledger.registry().next_class_id();
    let body = Body::ClassDefine(ClassDefine {
        id,
        namespace: Namespace::Customer,
        name: Name::class("points").unwrap(),
        asset: AssetId(0),
        flags: AccountFlags::NONE,
    });
    harness.assert_rejected(body, RejectCode::DefinitionConflict);
}

#[test]
fn history_lists_an_accounts_postings_newest_first() {
    let mut harness = Harness::new();
    let earn = harness.earn(1, 1_000).tx_id;
    harness.earn(2, 7);
    let redeem = harness.posting(harness.customer(1), harness.house(harness.redemption), 300);
    let redeem = harness.post(smallvec::smallvec![redeem]).unwrap().tx_id;
    let hold = harness.hold(1, 100, 60 * SECOND).unwrap().tx_id;
    harness.void(hold).unwrap();
    let customer = harness.customer(1);

    let history = harness.ledger.history_of(customer, 10);
    let seen: Vec<(TxId, i128, u8)> =
        history.iter().map(|entry| (entry.tx_id, entry.posted_delta(), entry.flags)).collect();
    use super::history::HistoryEntry as E;
    assert_eq!(
        seen,
        vec![
            // The void releases the reservation (the account is the hold's debit side).
            (history[0].tx_id, 0, E::RELEASE),
            (hold, 0, E::HOLD),
            (redeem, -300, E::REVERSIBLE),
            (earn, 1_000, E::CREDIT | E::REVERSIBLE),
        ]
    );
    assert!(history.iter().all(|entry| entry.account == customer));
    assert_eq!(history[3].counterparty, harness.house(harness.issuance));
    assert_eq!(harness.ledger.history_of(customer, 2).len(), 2);
    assert_eq!(harness.ledger.history_of(harness.customer(2), 10).len(), 1);
    assert!(harness.ledger.history_of(harness.customer(3), 10).is_empty());
    // House accounts keep no history: they would crowd every customer out of the ring.
    assert!(harness.ledger.history_of(harness.house(harness.issuance), 10).is_empty());
}

#[test]
fn the_history_forgets_the_oldest_entries_beyond_its_capacity() {
    let mut harness = Harness::new();
    let capacity = Limits::test_min().history_entries_max;
    let first = harness.earn(1, 1).tx_id;
    for _ in 0..capacity {
        harness.earn(2, 1);
    }
    // Customer 1's only entry was pushed out; customer 2's newest `capacity` remain.
    assert!(harness.ledger.history_of(harness.customer(1), 10).is_empty());
    assert_eq!(harness.ledger.history_of(harness.customer(2), 1_000).len(), capacity);
    assert_eq!(harness.reversal(first), Err(RejectCode::TransactionNotFound));
    assert_eq!(harness.ledger.history_len(), capacity);
}

#[test]
fn a_transaction_whose_first_entries_were_forgotten_is_not_found() {
    let mut harness = Harness::new();
    let capacity = Limits::test_min().history_entries_max;
    let issuance = harness.house(harness.issuance);
    let both = smallvec::smallvec![
        harness.posting(issuance, harness.customer(1), 100),
        harness.posting(issuance, harness.customer(2), 40),
    ];
    let original = harness.post(both).unwrap().tx_id;
    // Two entries; push out the first only.
    for _ in 0..capacity - 1 {
        harness.earn(3, 1);
    }
    assert_eq!(harness.ledger.history_of(harness.customer(2), 10).len(), 1);
    assert_eq!(harness.reversal(original), Err(RejectCode::TransactionNotFound));
}

#[test]
fn a_reversal_posts_the_original_the_other_way_round_once() {
    let mut harness = Harness::new();
    let issuance = harness.house(harness.issuance);
    let both = smallvec::smallvec![
        harness.posting(issuance, harness.customer(1), 100),
        harness.posting(issuance, harness.customer(2), 40),
    ];
    let original = harness.post(both).unwrap().tx_id;
    assert_eq!(harness.balance(harness.customer(1)), 100);

    let reversal = harness.reversal(original).unwrap();
    let Body::Reversal(built) = &reversal else { unreachable!() };
    assert_eq!(built.postings.len(), 2);
    assert_eq!(built.postings[0].debit, harness.customer(1));
    assert_eq!(built.postings[0].credit, issuance);
    let reversed = harness.apply(reversal).unwrap();
    assert_eq!(harness.balance(harness.customer(1)), 0);
    assert_eq!(harness.balance(harness.customer(2)), 0);
    assert_eq!(harness.balance(issuance), 0);
    // Marked in the history, and not twice.
    let entries = harness.ledger.history_of(harness.customer(1), 10);
    assert_eq!(entries[0].tx_id, reversed.tx_id);
    assert!(!entries[0].has(super::history::HistoryEntry::REVERSIBLE));
    assert!(entries[1].has(super::history::HistoryEntry::REVERSED));
    assert_eq!(harness.reversal(original), Err(RejectCode::AlreadyReversed));
    // A reversal itself cannot be reversed (reverse the original again instead).
    assert_eq!(harness.reversal(reversed.tx_id), Err(RejectCode::TransactionNotReversible));
}

#[test]
fn refused_reversals_change_nothing() {
    let mut harness = Harness::new();
    let earn = harness.earn(1, 100).tx_id;
    let hold = harness.hold(1, 30, 60 * SECOND).unwrap().tx_id;
    let capture = harness.capture(hold, None).unwrap().tx_id;
    assert_eq!(harness.reversal(TxId(12_345)), Err(RejectCode::TransactionNotFound));
    assert_eq!(harness.reversal(capture), Err(RejectCode::TransactionNotReversible));
    assert_eq!(harness.reversal(hold), Err(RejectCode::TransactionNotReversible));

    // The customer spent 30 of the 100: taking the 100 back would overdraw the account.
    let reversal = harness.reversal(earn).unwrap();
    harness.assert_rejected(reversal, RejectCode::InsufficientFunds);

    // A record whose postings are not the original's turned round is refused at apply (the
    // second path of the check: a WAL record can only reverse what the history holds).
    harness.earn(1, 500);
    let Body::Reversal(mut forged) = harness.reversal(earn).unwrap() else { unreachable!() };
    forged.postings[0].amount = amount(99);
    harness.assert_rejected(Body::Reversal(forged), RejectCode::TransactionNotReversible);
    let reversal = harness.reversal(earn).unwrap();
    harness.apply(reversal).unwrap();
    assert_eq!(harness.balance(harness.customer(1)), 100 - 30 + 500 - 100);
}

#[test]
fn pending_counters_must_be_the_open_holds() {
    let mut harness = Harness::new();
    harness.earn(1, 100);
    let hold = harness.hold(1, 30, 60 * SECOND).unwrap().tx_id;
    harness.ledger.check_invariants().unwrap();
    // A hold that vanished while its reservation stayed (as a crafted snapshot could say).
    let mut forgotten = harness.ledger.clone();
    let expires_at = forgotten.holds.remove(&hold).unwrap().expires_at;
    assert!(forgotten.hold_deadlines.remove(&(expires_at, hold)));
    let error = forgotten.check_invariants().unwrap_err().to_string();
    assert!(error.contains("open holds reserve 0/0"), "{error}");
    // A hold whose deadline entry is another's.
    let mut moved = harness.ledger.clone();
    moved.hold_deadlines.remove(&(expires_at, hold));
    moved.hold_deadlines.insert((expires_at.plus_nanos(1), hold));
    assert!(moved.check_invariants().unwrap_err().to_string().contains("deadlines"));
}

#[test]
fn state_encoding_round_trips() {
    let mut harness = Harness::new();
    harness.earn(1, 1_000);
    harness.earn(2, 10);
    let hold = harness.hold(1, 100, 60 * SECOND).unwrap().tx_id;
    harness.capture(hold, Some(10)).unwrap();
    harness.hold(2, 5, 60 * SECOND).unwrap();
    let earn = harness.earn(3, 70).tx_id;
    let reversal = harness.reversal(earn).unwrap();
    harness.apply(reversal).unwrap();
    let bytes = harness.state();
    let decoded = Ledger::decode_state(harness.ledger.config().clone(), &bytes).unwrap();
    assert!(decoded == harness.ledger);
    let mut again = Vec::new();
    decoded.encode_state(&mut again);
    assert_eq!(again, bytes);
    decoded.check_invariants().unwrap();
    for len in [0, 10, bytes.len() / 2, bytes.len() - 1] {
        assert!(Ledger::decode_state(harness.ledger.config().clone(), &bytes[..len]).is_err());
    }
}

#[test]
fn a_wrapped_history_round_trips_and_keeps_working_after_decoding() {
    let mut harness = Harness::new();
    let capacity = Limits::test_min().history_entries_max;
    for customer in 0..(capacity as u64 + capacity as u64 / 2) {
        harness.earn(customer % 5, 1);
    }
    let bytes = harness.state();
    let mut decoded = Ledger::decode_state(harness.ledger.config().clone(), &bytes).unwrap();
    assert!(decoded == harness.ledger);
    for customer in 0..5 {
        let account = harness.customer(customer);
        assert_eq!(decoded.history_of(account, 100), harness.ledger.history_of(account, 100));
    }
    // Both go on identically: the decoded ring wraps at another position but answers the same.
    let earn = harness.earn(4, 9).tx_id;
    let mut payload_bytes = Vec::new();
    let header = TxHeader { id: earn, ..harness.header_with_key(999_999) };
    let posting = harness.posting(harness.house(harness.issuance), harness.customer(4), 9);
    let body = Body::Transaction(Transaction { header, postings: smallvec::smallvec![posting] });
    payload::encode_body(&body, &mut payload_bytes);
    let fingerprint = payload::fingerprint(body.kind(), &payload_bytes);
    let record = Record { lsn: decoded.lsn().next(), timestamp: harness.now, body };
    decoded.apply(&record, fingerprint).unwrap();
    let account = harness.customer(4);
    assert_eq!(decoded.history_of(account, 3)[0].tx_id, earn);
    assert_eq!(decoded.history_of(account, 3)[0].amount, 9);
}

/// The harness with partner A's points (asset 2), where members hold them (class 6), the two
/// exchange funds (7 in PTS, 8 in partner points) and the money funds (class 9 in USD), and
/// `customer` holding 100 partner points.
fn exchange_harness(customer: u64) -> (Harness, crate::loyalty::exchange::RateTerms) {
    use crate::loyalty::exchange::{ExchangeSide, RateTerms};
    use crate::loyalty::rules::PointValue;
    let mut harness = Harness::new();
    harness.define_asset("PARTNER_A_POINTS", 0);
    harness.define_class(Namespace::Customer, "partner_a", 2, AccountFlags::NO_OVERDRAFT);
    harness.define_class(Namespace::House, "exchange_pts", 0, AccountFlags::NONE);
    harness.define_class(Namespace::House, "exchange_partner_a", 2, AccountFlags::NONE);
    harness.define_class(Namespace::Partner, "exchange", 1, AccountFlags::NONE);
    let partner = AccountId::new(ClassId(6), customer);
    let fund = AccountId::new(ClassId(8), 0);
    let posting = Posting { debit: fund, credit: partner, asset: AssetId(2), amount: amount(100) };
    harness.post(smallvec::smallvec![posting]).unwrap();
    let terms = RateTerms {
        from: ExchangeSide {
            asset: AssetId(2),
            customer: ClassId(6),
            fund,
            money: AccountId::new(ClassId(9), 7),
            value: PointValue { minor_units: 2, points: 1 },
        },
        to: ExchangeSide {
            asset: AssetId(0),
            customer: harness.points,
            fund: AccountId::new(ClassId(7), 0),
            money: AccountId::new(ClassId(9), 0),
            value: PointValue { minor_units: 1, points: 1 },
        },
        numerator: 1,
        denominator: 1,
        money: AssetId(1),
    };
    (harness, terms)
}

impl Harness {
    fn define_rate(&mut self, terms: crate::loyalty::exchange::RateTerms) -> Result<(), Refusal> {
        let version = self.ledger.rates().next_version();
        let define = super::record::RateDefine { version, effective_at: Timestamp(0), terms };
        self.apply(Body::RateDefine(define)).map(|_| ())
    }

    fn convert(
        &mut self,
        customer: u64,
        value: u64,
    ) -> Result<super::record::Conversion, RejectCode> {
        let mut header = self.header();
        header.kind = TxKind::EXCHANGE;
        self.ledger.decide_conversion(
            header,
            customer,
            (AssetId(2), AssetId(0)),
            amount(value),
            self.now,
        )
    }
}

/// Within one batch every record has the batch's time: a rate recorded between two
/// conversions of the batch prices the second and not the first, and replay agrees.
#[test]
fn a_rate_recorded_between_two_conversions_of_one_batch_prices_only_the_second() {
    let customer = 42;
    let (mut harness, terms) = exchange_harness(customer);
    assert_eq!(harness.convert(customer, 10).map(|_| ()), Err(RejectCode::RateMissing));
    harness.define_rate(terms).unwrap();
    let first = harness.convert(customer, 10).unwrap();
    let second_request = harness.convert(customer, 10).unwrap();
    harness.apply(Body::Conversion(first.clone())).unwrap();
    // The rate changes to 2 own points per partner point; the second request of the batch
    // (same time) is decided after it.
    harness.define_rate(crate::loyalty::exchange::RateTerms { numerator: 2, ..terms }).unwrap();
    let mut second = harness.convert(customer, 10).unwrap();
    second.header = second_request.header.clone();
    assert_eq!((first.priced.version, first.priced.credited), (1, 10));
    assert_eq!((second.priced.version, second.priced.credited), (2, 20));
    // The request decided before the rate changed no longer applies as it was priced.
    harness.assert_rejected(Body::Conversion(second_request), RejectCode::DefinitionConflict);
    let committed = harness.apply(Body::Conversion(second)).unwrap();
    assert_eq!(committed.amount, 20);
    assert_eq!(harness.balance(harness.customer(customer)), 30);
    assert_eq!(harness.balance(AccountId::new(ClassId(6), customer)), 80);
    // Differentials: 20 cents given for 10, then for 20: partner A owes 10 cents.
    assert_eq!(harness.balance(AccountId::new(ClassId(9), 7)), -10);
    assert_eq!(harness.balance(AccountId::new(ClassId(9), 0)), 10);
    assert_eq!(harness.balance(AccountId::new(ClassId(7), 0)), -30);
    assert_eq!(harness.balance(AccountId::new(ClassId(8), 0)), -100 + 20);
}

#[test]
fn refused_rates_and_conversions_change_nothing() {
    let customer = 42;
    let (mut harness, terms) = exchange_harness(customer);
    let version = |harness: &Harness| harness.ledger.rates().next_version();
    // A rate of one asset, terms out of range, accounts of the wrong kind, a version out of
    // order: refused whole.
    let same = crate::loyalty::exchange::RateTerms { to: terms.from, ..terms };
    let define = |terms, version| {
        Body::RateDefine(super::record::RateDefine { version, effective_at: Timestamp(0), terms })
    };
    harness.assert_rejected(define(same, 1), RejectCode::ExchangeSameAsset);
    let mut customer_fund = terms;
    customer_fund.to.fund = harness.customer(1);
    harness.assert_rejected(define(customer_fund, 1), RejectCode::ClassUnknown);
    harness.assert_rejected(define(terms, 2), RejectCode::DefinitionConflict);
    assert_eq!(version(&harness), 1);
    harness.define_rate(terms).unwrap();
    // More partner points than the member holds: the balance check refuses it, as a plain
    // posting of the same amount would be.
    let short = harness.convert(customer, 101).unwrap();
    let plain = Posting {
        debit: AccountId::new(ClassId(6), customer),
        credit: AccountId::new(ClassId(8), 0),
        asset: AssetId(2),
        amount: amount(101),
    };
    let header = harness.header();
    let Err(Refusal::Rejected(code)) = harness
        .apply(Body::Transaction(Transaction { header, postings: smallvec::smallvec![plain] }))
    else {
        panic!("an overdraft was posted")
    };
    harness.assert_rejected(Body::Conversion(short), code);
    // A record that says another price than the rate gives.
    let mut tampered = harness.convert(customer, 10).unwrap();
    tampered.priced.credited += 1;
    harness.assert_rejected(Body::Conversion(tampered), RejectCode::DefinitionConflict);
}

/// A customer's history by pages: newest first across their accounts, resumed below a
/// sequence however many writes came since, filtered by time, kind and class, and marked
/// truncated once the ring forgot older entries.
#[test]
fn history_pages_are_stable_while_writes_continue() {
    use super::pages::HistoryFilter;
    let mut harness = Harness::new();
    let customer = 7;
    let start = harness.now;
    // Ten earns a second apart.
    for i in 0..10u64 {
        harness.now = Timestamp(start.0 + i * SECOND);
        harness.earn(customer, 100 + i);
    }
    let all = HistoryFilter::default();
    let first = harness.ledger.history_page(customer, None, 4, &all);
    let amounts = |page: &super::pages::HistoryPage| -> Vec<u64> {
        page.entries.iter().map(|(_, entry)| entry.amount).collect()
    };
    assert_eq!(amounts(&first), [109, 108, 107, 106]);
    let before = first.next_before.expect("more pages");
    // Writes after the first page do not move the second.
    harness.now = Timestamp(start.0 + 20 * SECOND);
    harness.earn(customer, 1);
    let second = harness.ledger.history_page(customer, Some(before), 4, &all);
    assert_eq!(amounts(&second), [105, 104, 103, 102]);
    let third = harness.ledger.history_page(customer, second.next_before, 4, &all);
    assert_eq!(amounts(&third), [101, 100]);
    assert_eq!((third.next_before, third.truncated), (None, false));
    // Filters: a time range [start + 3 s, start + 6 s), a kind, a class.
    let range = HistoryFilter {
        from: Some(Timestamp(start.0 + 3 * SECOND)),
        to: Some(Timestamp(start.0 + 6 * SECOND)),
        ..HistoryFilter::default()
    };
    assert_eq!(amounts(&harness.ledger.history_page(customer, None, 10, &range)), [105, 104, 103]);
    let redeems = HistoryFilter { kind: Some(TxKind::REDEEM), ..HistoryFilter::default() };
    assert!(harness.ledger.history_page(customer, None, 10, &redeems).entries.is_empty());
    let dollars = HistoryFilter { class: Some(harness.dollars), ..HistoryFilter::default() };
    assert!(harness.ledger.history_page(customer, None, 10, &dollars).entries.is_empty());
    // A transaction's entries by id.
    let tx = first.entries[0].1.tx_id;
    let entries = harness.ledger.transaction_entries(tx);
    assert_eq!(entries.iter().map(|e| e.amount).collect::<Vec<_>>(), [109]);
    // The ring (64 entries in these limits) forgets the oldest: the walk says so.
    for _ in 0..70 {
        harness.earn(customer + 1, 1);
    }
    let page = harness.ledger.history_page(customer, None, 100, &all);
    assert!(page.truncated && page.next_before.is_none(), "{page:?}");
    assert!(page.entries.is_empty(), "all of customer 7's entries were forgotten");
}

#[test]
fn the_journal_records_every_movement_and_drops_a_refused_records() {
    use super::{MoveEffect, Moved};
    let mut h = Harness::new();
    assert!(h.ledger.take_journal().moved.is_empty(), "off by default");
    h.ledger.set_journal(true);
    h.earn(1, 100);
    let hold = h.hold(1, 60, 1_000_000_000).unwrap().tx_id;
    h.capture(hold, Some(25)).unwrap();
    // Refused (more than the balance): it leaves nothing in the journal.
    assert!(h.hold(1, 1_000, 1_000_000_000).is_err());
    let (customer, issuance, redemption) =
        (h.customer(1), h.house(h.issuance), h.house(h.redemption));
    let asset = h.ledger.account(customer).unwrap().asset;
    // No rule version is recorded: no posting is a flow of the programme's points.
    let moved =
        |debit, credit, effect, amount| Moved { debit, credit, asset, effect, amount, flow: None };
    assert_eq!(
        h.ledger.take_journal().moved,
        [
            moved(issuance, customer, MoveEffect::Posted, 100),
            moved(customer, redemption, MoveEffect::Pending, 60),
            moved(customer, redemption, MoveEffect::Released, 60),
            moved(customer, redemption, MoveEffect::Posted, 25),
        ]
    );
    assert!(h.ledger.take_journal().moved.is_empty(), "taken");
    h.ledger.set_journal(false);
    h.earn(2, 5);
    assert!(h.ledger.take_journal().moved.is_empty());
}
