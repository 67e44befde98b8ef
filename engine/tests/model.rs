//! Model-based test: random sequences of thousands of operations run against a real engine
//! (two shards, WAL, snapshots, cross-shard transfers) and against the reference model in
//! `ledger_engine::testing::model`; every answer and the final balances must agree, also after
//! a restart. The engine runs a loyalty programme of two rule versions (the second scheduled
//! 90 days in): purchases of baskets are priced by tier, caps and promotions, every credit
//! opens a lot, debits and holds take the earliest, and jumps of weeks make lots expire; after
//! each jump and at the end every customer's lots and tier, and breakage, must agree too.
//!
//! How: operations are submitted in chunks, each chunk in one `submit` so that each shard
//! applies its part in order. A chunk ends where the next operation needs something the engine
//! has not answered yet (the id of a hold created in this chunk), around a transfer (a
//! cross-shard credit lands whenever it arrives, so a transfer is submitted alone), and when
//! time moves (then a barrier on every shard lets the hold expiry sweep run). The data directory is on /dev/shm when available: this test is about
//! semantics; durability has its own tests.

use std::path::PathBuf;
use std::sync::Arc;

use ledger_engine::clock::ManualClock;
use ledger_engine::loyalty::RuleSet;
use ledger_engine::loyalty::calendar::month_of_day;
use ledger_engine::loyalty::programme::ProgrammeAccounts;
use ledger_engine::loyalty::rules::Cashback;
use ledger_engine::testing::loyalty::{Loyalty, Partner, example_rules, execute_all};
use ledger_engine::testing::model::{Model, ModelOp, ModelOutcome, NO_HOLD};
use ledger_engine::{
    Command, Committed, Engine, EngineConfig, Limits, Query, RejectCode, Response, ShardId,
    ShardTuning, Timestamp, TxId,
};
use proptest::prelude::*;

const SECOND: u64 = 1_000_000_000;
const DAY: u64 = 86_400 * SECOND;
const CUSTOMERS: u64 = 24;

fn scratch_dir() -> tempfile::TempDir {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() { tempfile::tempdir_in(shm).unwrap() } else { tempfile::tempdir().unwrap() }
}

fn config(dir: &std::path::Path, clock: Arc<ManualClock>) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    config.shard_count = Some(2);
    // The history is large enough that no transaction is forgotten (the model does not
    // follow the ring; the scenario tests cover eviction).
    config.limits = Limits {
        inbox_depth_max: 4096,
        idempotency_keys_max: 96,
        history_entries_max: 1 << 16,
        ..Limits::test_min()
    };
    config.clock = clock;
    // A century: the case's jumps of months stay inside the idempotency window, which the
    // model does not follow (its own tests cover it).
    config.idempotency_retention_nanos = 36_500 * DAY;
    config.tuning = ShardTuning {
        tick: std::time::Duration::from_millis(1),
        snapshot_every_records: 400,
        ..ShardTuning::default()
    };
    config
}

struct Driver {
    engine: Engine,
    loyalty: Loyalty,
    partner: Partner,
    accounts: ProgrammeAccounts,
    model: Model,
    clock: Arc<ManualClock>,
    /// The engine's answer to each committed write, by write number.
    committed: Vec<Option<Committed>>,
    /// Commands of the current chunk with what the model expects of them.
    chunk: Vec<(Command, ModelOutcome, usize, ModelOp)>,
}

impl Driver {
    fn command(&self, op: &ModelOp, key: u128) -> Command {
        let loyalty = &self.loyalty;
        match *op {
            ModelOp::Earn { customer, amount } => loyalty.earn(key, customer, amount),
            ModelOp::Redeem { customer, amount } => loyalty.redeem(key, customer, amount),
            ModelOp::Transfer { from, to, amount } => loyalty.transfer(key, from, to, amount),
            ModelOp::Hold { customer, amount, timeout_nanos } => {
                loyalty.hold(key, customer, amount, timeout_nanos)
            }
            ModelOp::Capture { hold, amount } => loyalty.capture(key, self.hold_id(hold), amount),
            ModelOp::Void { hold } => loyalty.void(key, self.hold_id(hold)),
            ModelOp::Reverse { op } => loyalty.reverse(key, self.tx_id_of(op)),
            ModelOp::Purchase { customer, ref lines, store } => {
                loyalty.purchase(key, customer, store, lines)
            }
            ModelOp::Settle { op } => loyalty.settle(key, self.tx_id_of(op)),
            ModelOp::Fail { op } => loyalty.fail(key, self.tx_id_of(op)),
            ModelOp::Refund { op, amount } => loyalty.refund(key, self.tx_id_of(op), amount),
            ModelOp::ConvertOut { customer, amount } => {
                loyalty.convert(key, customer, (loyalty.pts, self.partner.asset), amount)
            }
            ModelOp::ConvertIn { customer, amount } => {
                loyalty.convert(key, customer, (self.partner.asset, loyalty.pts), amount)
            }
            _ => unreachable!("not a write: {op:?}"),
        }
    }

    fn hold_id(&self, hold: usize) -> TxId {
        match self.model.hold_write(hold) {
            Some(write) => self.committed[write].expect("holds are committed writes").tx_id,
            // No hold existed: an id that names none (shard 0, long ago).
            None => TxId(1),
        }
    }

    /// The transaction id a reversal of write `op` names: the id of the committed write it
    /// stands for, or, for a refused one, an id that names nothing (shard 0, long ago).
    fn tx_id_of(&self, op: usize) -> TxId {
        match self.model.transaction_of(op) {
            Some(write) => self.committed[write].expect("committed writes are answered").tx_id,
            None => TxId(1),
        }
    }

    /// Whether `op` needs an answer the current chunk has not received yet.
    fn needs_flush(&self, op: &ModelOp) -> bool {
        let unanswered = |write: usize| self.committed.get(write).is_none_or(Option::is_none);
        let unknown_hold =
            |hold: usize| hold != NO_HOLD && self.model.hold_write(hold).is_some_and(unanswered);
        // A write made in this chunk has no outcome in the model's eyes until it is applied,
        // which `apply` does at once; its transaction id comes with the chunk's answers.
        let unknown_transaction = |op: usize| self.model.transaction_of(op).is_some_and(unanswered);
        let needs = |op: &ModelOp| match op {
            ModelOp::Capture { hold, .. } | ModelOp::Void { hold } => unknown_hold(*hold),
            ModelOp::Reverse { op }
            | ModelOp::Settle { op }
            | ModelOp::Fail { op }
            | ModelOp::Refund { op, .. } => unknown_transaction(*op),
            _ => false,
        };
        match op {
            ModelOp::Retry { op } | ModelOp::Conflict { op } => {
                *op < self.model.write_count() && needs(self.model.write(*op))
            }
            other => needs(other),
        }
    }

    fn run(&mut self, ops: &[ModelOp]) {
        for op in ops {
            let op = self.model.prepare(op);
            if self.needs_flush(&op) {
                self.flush();
            }
            let command = match &op {
                ModelOp::Advance { nanos } => {
                    self.flush();
                    self.clock.advance(*nanos);
                    self.model.apply(&op);
                    self.barrier();
                    if *nanos >= DAY {
                        // Past midnights: every due lot is gone (by the sweep, or by the
                        // balance query that expires a customer's due lots before answering).
                        self.check_customers(std::slice::from_ref(&op));
                        self.check_members();
                    }
                    continue;
                }
                ModelOp::Retry { op: write } if *write < self.model.write_count() => {
                    self.command(&self.model.write(*write).clone(), self.model.key_of(*write))
                }
                ModelOp::Conflict { op: write } if *write < self.model.write_count() => {
                    self.command(&self.model.conflicting(*write), self.model.key_of(*write))
                }
                ModelOp::Retry { .. } | ModelOp::Conflict { .. } => continue,
                _ => self.command(&op, self.model.next_key()),
            };
            // The write as made: for a retry or a conflict, the request it repeats or changes.
            let effective = match op {
                ModelOp::Retry { op: write } => self.model.write(write).clone(),
                ModelOp::Conflict { op: write } => self.model.conflicting(write),
                ref other => other.clone(),
            };
            // A transfer travels alone: its credit may land on the destination shard at any
            // moment after it is submitted, before or after that shard's other commands of the
            // same submission (they are applied in order per shard, not across shards).
            let is_transfer = matches!(effective, ModelOp::Transfer { .. });
            if is_transfer {
                self.flush();
            }
            let expected = self.model.apply(&op);
            let write = self.model.write_count() - 1;
            self.committed.resize(self.model.write_count(), None);
            self.chunk.push((command, expected, write, op.clone()));
            if is_transfer {
                self.flush();
            }
        }
        self.flush();
    }

    fn flush(&mut self) {
        if self.chunk.is_empty() {
            return;
        }
        let chunk = std::mem::take(&mut self.chunk);
        let ops_of_chunk: Vec<ModelOp> = chunk.iter().map(|(.., op)| op.clone()).collect();
        let commands = chunk.iter().map(|(command, ..)| command.clone()).collect();
        let responses = execute_all(&self.engine, commands);
        for ((_, expected, write, op), response) in chunk.into_iter().zip(responses) {
            match (expected, response) {
                (ModelOutcome::Committed { write: w }, Response::Committed(committed)) => {
                    assert_eq!(w, write);
                    self.committed[write] = Some(committed);
                }
                (ModelOutcome::Duplicate { write: original }, Response::Duplicate(committed)) => {
                    assert_eq!(Some(committed), self.committed[original], "{op:?}");
                }
                (ModelOutcome::Rejected(code), Response::Rejected(got)) if code == got => {}
                (expected, got) => panic!(
                    "{op:?}: model expects {expected:?}, engine said {got:?}; chunk {ops_of_chunk:?}"
                ),
            }
        }
        self.check_customers(&ops_of_chunk);
    }

    /// Lets every shard finish a few turns, so that holds due at the current time are swept.
    fn barrier(&self) {
        for _ in 0..3 {
            for index in 0..self.engine.shard_count() {
                let shard = ShardId::new(index).unwrap();
                let response = self.engine.query_shard(shard, Query::Hold(TxId(0)));
                assert_eq!(response, Response::Rejected(RejectCode::HoldNotFound));
            }
        }
    }

    /// Every customer's balance agrees after every chunk, so a divergence is caught where it
    /// happens.
    fn check_customers(&self, chunk: &[ModelOp]) {
        let queries: Vec<Command> =
            (0..CUSTOMERS).map(|customer| self.loyalty.balance_query(customer)).collect();
        for (customer, response) in (0..CUSTOMERS).zip(execute_all(&self.engine, queries)) {
            let (posted, available) = match response {
                Response::Account(view) => {
                    (view.counters.balance_posted(), view.counters.balance_available())
                }
                _ => (0, 0),
            };
            assert_eq!(
                (posted, available),
                (self.model.balance(customer), self.model.available(customer)),
                "customer {customer} after chunk {chunk:?}"
            );
        }
        // What refunds could not take from the members' lots, they owe on their clawback
        // accounts.
        let clawback = self.accounts.clawback.expect("the programme has clawback classes");
        let queries: Vec<Command> = (0..CUSTOMERS)
            .map(|customer| {
                Command::Read(ledger_engine::Query::Account(ledger_engine::AccountId::new(
                    clawback, customer,
                )))
            })
            .collect();
        for (customer, response) in (0..CUSTOMERS).zip(execute_all(&self.engine, queries)) {
            let owed = match response {
                Response::Account(view) => view.counters.balance_posted(),
                _ => 0,
            };
            assert_eq!(owed, self.model.owed(customer), "owed by {customer} after {chunk:?}");
        }
        // What conversions gave and took of the partner's points.
        let queries: Vec<Command> = (0..CUSTOMERS)
            .map(|customer| Command::Read(Query::Account(self.partner.account(customer))))
            .collect();
        for (customer, response) in (0..CUSTOMERS).zip(execute_all(&self.engine, queries)) {
            let held = match response {
                Response::Account(view) => Some(view.counters.balance_posted()),
                _ => None,
            };
            assert_eq!(held, self.model.partner_points(customer), "partner points of {customer}");
        }
    }

    /// Every customer's lots (expiry day, kind, points left) and tier agree with the model's,
    /// and breakage holds what expired.
    fn check_members(&self) {
        let queries: Vec<Command> =
            (0..CUSTOMERS).map(|customer| self.loyalty.member_query(customer, 0)).collect();
        for (customer, response) in (0..CUSTOMERS).zip(execute_all(&self.engine, queries)) {
            let (lots, tier) = match response {
                Response::Member(view) => (
                    view.lots
                        .iter()
                        .map(|lot| ((lot.expires_day, lot.kind as u8), lot.remaining))
                        .collect::<Vec<_>>(),
                    view.tier,
                ),
                _ => (Vec::new(), 0),
            };
            assert_eq!(lots, self.model.lots_of(customer), "customer {customer}'s lots");
            assert_eq!(tier, self.model.tier(customer), "customer {customer}'s tier");
        }
        let breakage = ledger_engine::AccountId::new(self.accounts.breakage, 0);
        let expired = self.engine.account_total(breakage).map_or(0, |a| a.balance_posted());
        assert_eq!(expired, self.model.breakage(), "breakage");
        // The liability by expiry month the shards keep as lots change is the model's lots,
        // summed by the month their day falls in.
        let mut by_month = std::collections::BTreeMap::<u32, u64>::new();
        for customer in 0..CUSTOMERS {
            for ((day, _), points) in self.model.lots_of(customer) {
                let month = month_of_day(day);
                *by_month.entry(month).or_default() += points;
            }
        }
        assert_eq!(self.engine.liability_by_expiry_month().unwrap(), by_month, "liability");
    }

    fn check_balances(&self) {
        let queries: Vec<Command> =
            (0..CUSTOMERS).map(|customer| self.loyalty.balance_query(customer)).collect();
        for (customer, response) in (0..CUSTOMERS).zip(execute_all(&self.engine, queries)) {
            match response {
                Response::Account(view) => {
                    assert!(self.model.exists(customer));
                    assert_eq!(
                        view.counters.balance_posted(),
                        self.model.balance(customer),
                        "customer {customer}"
                    );
                    assert_eq!(
                        view.counters.balance_available(),
                        self.model.available(customer),
                        "customer {customer}"
                    );
                }
                Response::Rejected(RejectCode::AccountNotFound) => {
                    assert!(!self.model.exists(customer))
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let (issuance, redemption) = self.model.house();
        let total = |account| self.engine.account_total(account).map_or(0, |a| a.balance_posted());
        assert_eq!(total(self.loyalty.issuance()), issuance);
        assert_eq!(total(self.loyalty.redemption()), redemption);
        let transit = ledger_engine::AccountId::transit(self.loyalty.pts);
        assert_eq!(total(transit), 0, "no transfer is left in flight");
    }
}

fn op_strategy() -> impl Strategy<Value = ModelOp> {
    let customer = 0..CUSTOMERS;
    prop_oneof![
        30 => (customer.clone(), 1..500u64).prop_map(|(customer, amount)| ModelOp::Earn { customer, amount }),
        20 => (customer.clone(), 1..800u64).prop_map(|(customer, amount)| ModelOp::Redeem { customer, amount }),
        10 => (customer.clone(), customer.clone(), 1..400u64).prop_map(|(from, to, amount)| ModelOp::Transfer { from, to, amount }),
        10 => (customer.clone(), 1..500u64, prop_oneof![1 => Just(0u64), 9 => SECOND..60 * SECOND])
            .prop_map(|(customer, amount, timeout_nanos)| ModelOp::Hold { customer, amount, timeout_nanos }),
        8 => (any::<usize>(), proptest::option::of(1..600u64)).prop_map(|(hold, amount)| ModelOp::Capture { hold, amount }),
        5 => any::<usize>().prop_map(|hold| ModelOp::Void { hold }),
        4 => any::<usize>().prop_map(|op| ModelOp::Reverse { op }),
        5 => any::<usize>().prop_map(|op| ModelOp::Retry { op }),
        3 => any::<usize>().prop_map(|op| ModelOp::Conflict { op }),
        3 => (0..30 * SECOND).prop_map(|nanos| ModelOp::Advance { nanos }),
        15 => (customer.clone(), proptest::collection::vec((0..6usize, 1..20_000u64), 1..5), 0..2usize)
            .prop_map(|(customer, lines, store)| ModelOp::Purchase {
                customer,
                lines: lines.into_iter().map(|(c, amount)| ([0, 10, 20, 30, 40, 50][c], amount)).collect(),
                store: [1, 7][store],
            }),
        4 => any::<usize>().prop_map(|op| ModelOp::Settle { op }),
        2 => any::<usize>().prop_map(|op| ModelOp::Fail { op }),
        5 => (any::<usize>(), 1..30_000u64).prop_map(|(op, amount)| ModelOp::Refund { op, amount }),
        4 => (customer.clone(), 1..300u64).prop_map(|(customer, amount)| ModelOp::ConvertOut { customer, amount }),
        4 => (customer.clone(), 1..200u64).prop_map(|(customer, amount)| ModelOp::ConvertIn { customer, amount }),
        // Whole days: the clock stays in the morning, and midnights pass only here.
        1 => (20..120u64).prop_map(|days| ModelOp::Advance { nanos: days * DAY }),
    ]
}

/// The programme of the model test: the documented example rules without cashback, their
/// promotions running for the first 60 days; then, from day 90, a version with twice the base
/// rate (same tiers and window).
fn programme(start: Timestamp) -> Vec<(Timestamp, RuleSet)> {
    let mut first = example_rules();
    first.cashback = Cashback::default();
    for category in &mut first.categories {
        category.cashback = None;
    }
    for promotion in &mut first.promotions {
        promotion.starts_at = Timestamp(start.0 - DAY);
        promotion.ends_at = start.plus_nanos(60 * DAY);
    }
    let mut second = first.clone();
    second.base.points *= 2;
    vec![(start, first), (start.plus_nanos(90 * DAY), second)]
}

/// The partner exchange's rates of the model test: `(effective at, out, in)`.
fn exchange_rates(start: Timestamp) -> ledger_engine::testing::model::ModelRates {
    vec![(start, Some((1, 2)), Some((2, 1))), (start.plus_nanos(60 * DAY), Some((1, 3)), None)]
}

/// Runs `ops` through the engine and the model, checks they agree (also after a restart),
/// and returns the model.
fn run_case(ops: &[ModelOp]) -> Model {
    let dir = scratch_dir();
    let start = Timestamp(1_800_000_000 * SECOND);
    let clock = Arc::new(ManualClock::new(start));
    let engine = Engine::open(config(dir.path(), Arc::clone(&clock))).unwrap();
    let loyalty = Loyalty::define(&engine);
    let accounts = loyalty.define_programme(&engine);
    let versions = programme(start);
    engine.define_rules(versions[0].1.clone(), accounts, None).unwrap();
    engine.define_rules(versions[1].1.clone(), accounts, Some(versions[1].0)).unwrap();
    // Partner A: 1 of its points for 2 of ours, 1 for 3 from day 60; 2 of ours for 1 of its;
    // 500 of its points for every even customer.
    let partner = Partner::define(&engine, &loyalty);
    let rates = exchange_rates(start);
    for (at, out, inbound) in &rates {
        let effective = (*at != start).then_some(*at);
        if let Some(ratio) = out {
            engine.define_rate(partner.outbound(&loyalty, *ratio, (1, 1)), effective).unwrap();
        }
        if let Some(ratio) = inbound {
            engine.define_rate(partner.inbound(&loyalty, *ratio, (1, 1)), effective).unwrap();
        }
    }
    let partner_points: Vec<(u64, u64)> = (0..CUSTOMERS).step_by(2).map(|c| (c, 500)).collect();
    for (customer, points) in &partner_points {
        // Keys far from the model's (1, 2, 3…).
        let key = (1 << 100) + u128::from(*customer);
        assert!(matches!(
            engine.execute(partner.credit(key, *customer, *points)),
            Response::Committed(_)
        ));
    }
    let limits = Limits { idempotency_keys_max: 96, ..Limits::test_min() };
    // With 96 keys in memory per shard, most retries of a case are answered from the key
    // index on disk: the model remembers every key for the whole window.
    let model = Model::new(2, limits.holds_open_max, 30 * 24 * 3600 * SECOND, start)
        .with_programme(versions)
        .with_exchange(rates, &partner_points);
    let mut driver = Driver {
        engine,
        loyalty,
        partner,
        accounts,
        model,
        clock: Arc::clone(&clock),
        committed: Vec::new(),
        chunk: Vec::new(),
    };
    driver.run(ops);
    driver.check_balances();
    driver.check_members();
    if std::env::var_os("MODEL_STATS").is_some() {
        let stats = driver.engine.stats();
        let records: u64 = stats.iter().map(|s| s.records).sum();
        let rejected: u64 = stats.iter().map(|s| s.rejected).sum();
        let from_disk: u64 = stats.iter().map(|s| s.key_index_hits).sum();
        let runs: u64 = stats.iter().map(|s| s.key_index_runs).sum();
        eprintln!(
            "ops {} records {records} rejected {rejected} writes {} retries answered from the key \
             index {from_disk} runs {runs}",
            ops.len(),
            driver.model.write_count()
        );
    }

    // The same balances after a restart (snapshot + WAL replay).
    let Driver { engine, loyalty, partner, accounts, model, committed, .. } = driver;
    engine.shutdown();
    let engine = Engine::open(config(dir.path(), Arc::clone(&clock))).unwrap();
    assert_eq!(Loyalty::define(&engine), loyalty, "definitions survive restart");
    let driver =
        Driver { engine, loyalty, partner, accounts, model, clock, committed, chunk: Vec::new() };
    driver.check_customers(&[]);
    driver.check_balances();
    driver.check_members();
    driver.model
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_agrees_with_the_model(ops in proptest::collection::vec(op_strategy(), 1000..4000)) {
        run_case(&ops);
    }
}

#[test]
fn a_fixed_sequence_exercises_every_outcome() {
    // A hand-written sequence that reaches each rule at least once, so that a change to the
    // generator cannot silently stop covering one.
    let ops = vec![
        ModelOp::Redeem { customer: 1, amount: 5 }, // account not found
        ModelOp::Earn { customer: 1, amount: 1_000 },
        ModelOp::Redeem { customer: 1, amount: 1_001 }, // insufficient funds
        ModelOp::Hold { customer: 1, amount: 800, timeout_nanos: 10 * SECOND },
        ModelOp::Redeem { customer: 1, amount: 201 }, // insufficient, counting the hold
        ModelOp::Capture { hold: 0, amount: Some(801) }, // capture exceeds hold
        ModelOp::Capture { hold: 0, amount: Some(300) },
        ModelOp::Void { hold: 0 },   // already captured
        ModelOp::Retry { op: 6 },    // duplicate of the capture
        ModelOp::Conflict { op: 1 }, // idempotency conflict
        ModelOp::Hold { customer: 1, amount: 100, timeout_nanos: 0 }, // timeout invalid
        ModelOp::Hold { customer: 1, amount: 100, timeout_nanos: SECOND },
        ModelOp::Advance { nanos: 2 * SECOND },
        ModelOp::Capture { hold: 1, amount: None }, // expired
        ModelOp::Transfer { from: 1, to: 2, amount: 100 },
        ModelOp::Transfer { from: 1, to: 3, amount: 100 },
        ModelOp::Transfer { from: 2, to: 2, amount: 1 }, // same account
        ModelOp::Retry { op: 14 },
        // Reversals (customers 1 and 2 live on shard 0, customer 3 on shard 1).
        ModelOp::Reverse { op: 1 }, // 17: the earn of 1,000: insufficient funds now
        ModelOp::Earn { customer: 4, amount: 50 }, // 18
        ModelOp::Reverse { op: 18 }, // 19
        ModelOp::Retry { op: 19 },  // 20: duplicate of the reversal
        ModelOp::Reverse { op: 18 }, // 21: already reversed
        ModelOp::Reverse { op: 19 }, // 22: a reversal is not reversible
        ModelOp::Reverse { op: 3 }, // 23: nor is a hold
        ModelOp::Reverse { op: 0 }, // 24: a refused write has no transaction
        ModelOp::Reverse { op: 14 }, // 25: a cross-shard transfer is not reversible
        ModelOp::Reverse { op: 13 }, // 26: a transfer within a shard is
        ModelOp::Conflict { op: 26 }, // 27
        ModelOp::Reverse { op: 16 }, // 28: the transfer a duplicate repeated
        // The programme: a Black-Friday-like basket (both promotions, an excluded line), a
        // hold that parks lots, a transfer lot, the second version's doubled base rate, and
        // midnights that expire everything.
        ModelOp::Purchase { customer: 5, lines: vec![(20, 2_500), (40, 1_000)], store: 7 }, // 29
        ModelOp::Hold { customer: 5, amount: 300, timeout_nanos: 10 * SECOND },             // 30
        ModelOp::Transfer { from: 5, to: 6, amount: 20 },                                   // 31
        ModelOp::Reverse { op: 29 }, // 32: a purchase's points, from the lots left
        ModelOp::Void { hold: 2 },   // 33
        ModelOp::Advance { nanos: 100 * DAY },
        ModelOp::Purchase { customer: 6, lines: vec![(10, 1_999)], store: 1 }, // 34
        // The partner exchange, after the rate out changed to 1 for 3 (day 60).
        ModelOp::ConvertOut { customer: 6, amount: 2 }, // 35: converts to nothing
        ModelOp::ConvertOut { customer: 6, amount: 30 }, // 36: 10 partner points
        ModelOp::ConvertIn { customer: 7, amount: 5 },  // 37: 7 has no partner points
        ModelOp::ConvertIn { customer: 6, amount: 10 }, // 38: 20 points, a lot
        ModelOp::ConvertIn { customer: 6, amount: 1_000 }, // 39: more than 6 holds
        ModelOp::Retry { op: 38 },                      // 40
        ModelOp::Reverse { op: 36 },                    // 41: a conversion is not reversible
        ModelOp::Conflict { op: 36 },                   // 42
        ModelOp::Advance { nanos: 250 * DAY },          // the transfer lot expires (6 months)
        ModelOp::Advance { nanos: 800 * DAY },          // and everything else
    ];
    let model = run_case(&ops);
    assert!(model.breakage() > 0);
    assert!((0..CUSTOMERS).all(|customer| model.lots_of(customer).is_empty()));
    use ModelOutcome::{Committed, Duplicate};
    let rejected = ModelOutcome::Rejected;
    let outcomes: Vec<ModelOutcome> = (17..=28).map(|write| model.outcome(write)).collect();
    assert_eq!(
        outcomes,
        vec![
            rejected(RejectCode::InsufficientFunds),
            Committed { write: 18 },
            Committed { write: 19 },
            Duplicate { write: 19 },
            rejected(RejectCode::AlreadyReversed),
            rejected(RejectCode::TransactionNotReversible),
            rejected(RejectCode::TransactionNotReversible),
            rejected(RejectCode::TransactionNotFound),
            rejected(RejectCode::TransactionNotReversible),
            Committed { write: 26 },
            rejected(RejectCode::IdempotencyConflict),
            rejected(RejectCode::TransactionNotReversible),
        ]
    );
    let outcomes: Vec<ModelOutcome> = (35..=42).map(|write| model.outcome(write)).collect();
    assert_eq!(
        outcomes,
        vec![
            rejected(RejectCode::ConversionTooSmall),
            Committed { write: 36 },
            rejected(RejectCode::AccountNotFound),
            Committed { write: 38 },
            rejected(RejectCode::InsufficientFunds),
            Duplicate { write: 38 },
            rejected(RejectCode::TransactionNotReversible),
            rejected(RejectCode::IdempotencyConflict),
        ]
    );
}
