//! A deliberately simple reference model of the loyalty ledger, for model-based tests.
//!
//! It knows one asset, customer `points` accounts and two house accounts, and keeps plain
//! signed balances in `BTreeMap`s: no undo log, no counters, no hash maps, no shards. Each
//! operation spells out, in precedence order, the rule the engine must follow. Tests run the
//! same random operations through the engine and through this model and compare every answer
//! and the final balances.
//!
//! With a programme (`with_programme`) it also prices purchases by the rule version in force
//! (with `pricing::price`, the one piece it borrows: its arithmetic has its own table tests),
//! from its own tiers (qualifying points by month) and caps counters, and keeps every
//! customer's lots as a plain map from (expiry day, kind) to points: credits open or add to a
//! lot, debits take the earliest, holds park what they reserve, and at each midnight a lot's
//! remainder goes to breakage (docs/loyalty.md).

use std::collections::BTreeMap;

use crate::ids::{CustomerId, ShardId, Timestamp, shard_for_customer};
use crate::loyalty::RuleSet;
use crate::loyalty::calendar::{day_index, expiry_after, month_index};
use crate::loyalty::lifecycle::{
    LifecycleError, LifecycleEvent, LifecycleState, next_state, refund_share,
};
use crate::loyalty::pricing::{CapsUsed, Line, price};
use crate::loyalty::rules::Expiry;
use crate::reject::RejectCode;

/// The UTC day of the id the driver sends for a write that has none (`TxId(1)`: the first
/// millisecond of 2024).
const TX_ID_DAY_ONE: u32 = 19_723;

/// An operation of the generated workloads. Amounts are positive; hold references index the
/// holds created so far (modulo their count).
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(missing_docs, reason = "each field is named for what it holds")]
pub enum ModelOp {
    /// house:issuance → customer.
    Earn { customer: u64, amount: u64 },
    /// customer → house:redemption.
    Redeem { customer: u64, amount: u64 },
    /// customer → customer (possibly on another shard).
    Transfer { from: u64, to: u64, amount: u64 },
    /// A hold of customer → house:redemption.
    Hold { customer: u64, amount: u64, timeout_nanos: u64 },
    /// Capture of the `hold`-th hold created (any state, modulo the count), whole or part.
    Capture { hold: usize, amount: Option<u64> },
    /// Void of the `hold`-th hold created (modulo the count).
    Void { hold: usize },
    /// Reversal of the transaction of the `op`-th write so far (modulo the count): of the
    /// write it repeated for a duplicate, of no transaction for a refused write.
    Reverse { op: usize },
    /// The same request as the `op`-th write so far (modulo the count), with the same key.
    Retry { op: usize },
    /// A different request to the same shard under the key of the `op`-th write: the amount
    /// plus one, a capture for a void and a void for a capture, an earn for a reversal.
    Conflict { op: usize },
    /// Let time pass.
    Advance { nanos: u64 },
    /// A purchase of a basket (category, amount) at a store, priced by the programme.
    Purchase { customer: u64, lines: Vec<(u16, u64)>, store: u32 },
    /// Settlement of the `op`-th purchase committed so far (modulo their count; of the `op`-th
    /// write before there is any).
    Settle { op: usize },
    /// Failure (a chargeback) of the `op`-th purchase committed so far.
    Fail { op: usize },
    /// Refund of `amount` of the spend of the `op`-th purchase committed so far.
    Refund { op: usize, amount: u64 },
    /// Conversion of `amount` of the customer's points into a partner's, at the rate in force.
    ConvertOut { customer: u64, amount: u64 },
    /// Conversion of `amount` of the customer's partner points into points.
    ConvertIn { customer: u64, amount: u64 },
}

/// Exchange rates as the model keeps them: `(effective at, out, in)`, each direction's ratio
/// `(numerator, denominator)` or none.
pub type ModelRates = Vec<(Timestamp, Option<(u64, u64)>, Option<(u64, u64)>)>;

/// A purchase's lifecycle as the model keeps it.
#[derive(Debug, Clone, Copy)]
struct ModelPurchase {
    customer: u64,
    spend: u64,
    earned: u64,
    bonus: u64,
    day: u32,
    month: u32,
    /// The lots it credited.
    earned_lot: LotKey,
    bonus_lot: LotKey,
    state: LifecycleState,
    refunded: u64,
}

/// A lot's place in a customer's spending order: its expiry day, then its kind
/// (`LotKind` as a number: earned 1, bonus 2, transfer 3).
pub type LotKey = (u32, u8);

/// What the model expects an operation to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[expect(missing_docs, reason = "each field is named for what it holds")]
pub enum ModelOutcome {
    /// Committed as write number `write` (0-based); a `Retry` of it repeats this.
    Committed { write: usize },
    /// A repeat of write number `write`.
    Duplicate { write: usize },
    /// Refused with this code.
    Rejected(RejectCode),
    /// Nothing to answer (time passing).
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldState {
    Open,
    Captured,
    Voided,
    Expired,
    /// Closed so long ago that its tombstone was evicted: "not found".
    Forgotten,
}

/// A hold reference that points at no hold (there was none when the operation was made).
pub const NO_HOLD: usize = usize::MAX;

#[derive(Debug, Clone)]
struct ModelHold {
    customer: u64,
    amount: u64,
    expires_at: Timestamp,
    state: HoldState,
    /// The engine's hold id is the id of the write that created it.
    write: usize,
    /// The lots it reserved from, with a programme.
    parked: Vec<(LotKey, u64)>,
}

/// Two generations of remembered items: when the current one is full, the previous one is
/// forgotten whole.
#[derive(Debug, Clone)]
struct Generations<T> {
    previous: Vec<T>,
    current: Vec<T>,
    size: usize,
}

impl<T: Copy> Generations<T> {
    fn new(size: usize) -> Generations<T> {
        Generations { previous: Vec::new(), current: Vec::new(), size }
    }

    /// Remembers `item`; returns the items forgotten to make room.
    fn push(&mut self, item: T) -> Vec<T> {
        let mut forgotten = Vec::new();
        if self.current.len() >= self.size {
            forgotten = std::mem::take(&mut self.previous);
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.push(item);
        forgotten
    }
}

/// The reference model.
#[derive(Debug, Clone)]
pub struct Model {
    shard_count: u16,
    holds_open_max: usize,
    hold_timeout_max_nanos: u64,
    now: Timestamp,
    /// Customer balances: credits minus debits, posted.
    balances: BTreeMap<u64, i128>,
    /// Reserved by open holds, per customer.
    reserved: BTreeMap<u64, i128>,
    issuance: i128,
    redemption: i128,
    holds: Vec<ModelHold>,
    /// Every write request as generated (for retries), and its key.
    writes: Vec<(ModelOp, u128)>,
    /// For each write: the outcome it had when first made.
    write_outcomes: Vec<ModelOutcome>,
    /// Keys that committed, with the write that committed them: remembered for the whole
    /// idempotency window, in the shard's table or, once it forgot them, in its key index.
    committed_keys: BTreeMap<u128, usize>,
    /// Closed holds per shard, in generations of `holds_open_max / 2`.
    closed_generations: Vec<Generations<usize>>,
    /// Committed writes that a reversal has undone.
    reversed: std::collections::BTreeSet<usize>,
    next_key: u128,
    /// Rule versions `(effective at, rules)` in the order recorded; none: no programme.
    versions: Vec<(Timestamp, RuleSet)>,
    /// Each customer's lots.
    lots: BTreeMap<u64, BTreeMap<LotKey, u64>>,
    /// Purchase points by customer and month.
    months: BTreeMap<u64, BTreeMap<u32, u64>>,
    /// Caps counters: (day, points that day, month, points that month).
    caps: BTreeMap<u64, (u32, u64, u32, u64)>,
    /// Points each committed purchase credited, and each settlement, failure or refund took
    /// back, by write.
    purchase_points: BTreeMap<usize, u64>,
    /// house:expiry.
    breakage: i128,
    /// When each write was made.
    write_times: Vec<Timestamp>,
    /// Every committed purchase's lifecycle, by write.
    purchases: BTreeMap<usize, ModelPurchase>,
    /// What each customer owes back (their clawback account: 0 or below).
    owed: BTreeMap<u64, i128>,
    /// The partner exchange's rates, in the order recorded.
    rates: ModelRates,
    /// Each customer's partner points, once they have an account.
    partner: BTreeMap<u64, i128>,
}

impl Model {
    /// A model of `shard_count` shards with the engine's limits.
    pub fn new(
        shard_count: u16,
        holds_open_max: usize,
        hold_timeout_max_nanos: u64,
        now: Timestamp,
    ) -> Model {
        Model {
            shard_count,
            holds_open_max,
            hold_timeout_max_nanos,
            now,
            balances: BTreeMap::new(),
            reserved: BTreeMap::new(),
            issuance: 0,
            redemption: 0,
            holds: Vec::new(),
            writes: Vec::new(),
            write_outcomes: Vec::new(),
            committed_keys: BTreeMap::new(),
            closed_generations: vec![
                Generations::new(holds_open_max / 2);
                usize::from(shard_count)
            ],
            reversed: std::collections::BTreeSet::new(),
            next_key: 1,
            versions: Vec::new(),
            lots: BTreeMap::new(),
            months: BTreeMap::new(),
            caps: BTreeMap::new(),
            purchase_points: BTreeMap::new(),
            breakage: 0,
            write_times: Vec::new(),
            purchases: BTreeMap::new(),
            owed: BTreeMap::new(),
            rates: Vec::new(),
            partner: BTreeMap::new(),
        }
    }

    /// The model with a loyalty programme of these rule versions, recorded before any write:
    /// `(effective at, rules)`, in the order recorded. The tier window must be the same in all.
    pub fn with_programme(mut self, versions: Vec<(Timestamp, RuleSet)>) -> Model {
        self.versions = versions;
        self
    }

    /// The model with these exchange rates, recorded before any write, and `partner` points
    /// credited to customers before any write.
    pub fn with_exchange(mut self, rates: ModelRates, partner: &[(u64, u64)]) -> Model {
        self.rates = rates;
        for (customer, points) in partner {
            *self.partner.entry(*customer).or_default() += i128::from(*points);
        }
        self
    }

    /// A customer's partner points (`None`: no account).
    pub fn partner_points(&self, customer: u64) -> Option<i128> {
        self.partner.get(&customer).copied()
    }

    /// The ratio of a direction in force now: of the rates that name it and are in effect,
    /// the one recorded last among those that took effect last.
    fn rate_now(&self, out: bool) -> Option<(u64, u64)> {
        self.rates
            .iter()
            .enumerate()
            .filter_map(|(index, (at, out_rate, in_rate))| {
                let rate = if out { *out_rate } else { *in_rate };
                rate.filter(|_| *at <= self.now).map(|rate| ((*at, index), rate))
            })
            .max_by_key(|(order, _)| *order)
            .map(|(_, rate)| rate)
    }

    /// A conversion of `amount` by `customer`, out of their points (`out`) or into them.
    fn convert(&mut self, customer: u64, amount: u64, out: bool) -> Result<(), RejectCode> {
        let (numerator, denominator) = self.rate_now(out).ok_or(RejectCode::RateMissing)?;
        let credited =
            u64::try_from(u128::from(amount) * u128::from(numerator) / u128::from(denominator))
                .map_err(|_| RejectCode::Overflow)?;
        if credited == 0 {
            return Err(RejectCode::ConversionTooSmall);
        }
        if out {
            self.debit_check(customer, amount)?;
            *self.balances.entry(customer).or_default() -= i128::from(amount);
            self.take_lots(customer, amount);
            *self.partner.entry(customer).or_default() += i128::from(credited);
        } else {
            match self.partner.get(&customer) {
                None => return Err(RejectCode::AccountNotFound),
                Some(held) if *held < i128::from(amount) => {
                    return Err(RejectCode::InsufficientFunds);
                }
                Some(_) => {}
            }
            *self.partner.entry(customer).or_default() -= i128::from(amount);
            *self.balances.entry(customer).or_default() += i128::from(credited);
            self.credit_lot(customer, 1, credited);
        }
        Ok(())
    }

    /// The version in force at `at`: of those in effect, the one that took effect last (of two
    /// at one instant, the one recorded later).
    fn rules_at(&self, at: Timestamp) -> Option<&RuleSet> {
        self.versions
            .iter()
            .enumerate()
            .filter(|(_, (effective, _))| *effective <= at)
            .max_by_key(|(index, (effective, _))| (*effective, *index))
            .map(|(_, (_, rules))| rules)
    }

    /// A customer's lots: (expiry day, kind) → points left.
    pub fn lots_of(&self, customer: u64) -> Vec<(LotKey, u64)> {
        self.lots.get(&customer).map_or_else(Vec::new, |lots| {
            lots.iter().map(|(key, points)| (*key, *points)).collect()
        })
    }

    /// house:expiry's balance.
    pub fn breakage(&self) -> i128 {
        self.breakage
    }

    /// A customer's clawback balance: what they owe back (0 or below).
    pub fn owed(&self, customer: u64) -> i128 {
        self.owed.get(&customer).copied().unwrap_or(0)
    }

    /// The lot `kind` credited now would go to.
    fn lot_key(&self, kind: u8) -> LotKey {
        let expiry = self.rules_at(self.now).map_or_else(Expiry::default, |rules| rules.expiry);
        let months = match kind {
            1 => expiry.earned_months,
            2 => expiry.bonus_months,
            _ => expiry.transfer_months,
        };
        (day_index(expiry_after(self.now, u32::from(months))), kind)
    }

    /// Takes back up to `amount` of a customer's points: from lot `first`, then the earliest
    /// others. Returns what the lots could not give.
    fn take_back_lots(&mut self, customer: u64, first: LotKey, amount: u64) -> u64 {
        let lots = self.lots.entry(customer).or_default();
        let mut left = amount;
        if let Some(points) = lots.get_mut(&first) {
            let part = (*points).min(left);
            *points -= part;
            left -= part;
            if *points == 0 {
                lots.remove(&first);
            }
        }
        let held: u64 = lots.values().sum();
        let from_others = left.min(held);
        self.take_lots(customer, from_others);
        left - from_others
    }

    /// A customer's tier now, by the rules in force.
    pub fn tier(&self, customer: u64) -> u8 {
        self.rules_at(self.now).map_or(0, |rules| rules.tier_for(self.qualifying(customer, rules)))
    }

    fn qualifying(&self, customer: u64, rules: &RuleSet) -> u64 {
        let month = month_index(self.now);
        let first = month.saturating_sub(u32::from(rules.tier_window_months) - 1);
        self.months
            .get(&customer)
            .map_or(0, |months| months.range(first..=month).map(|(_, points)| points).sum())
    }

    /// Opens or adds to the lot of `kind` credited now.
    fn credit_lot(&mut self, customer: u64, kind: u8, amount: u64) {
        if self.versions.is_empty() || amount == 0 {
            return;
        }
        let key = self.lot_key(kind);
        *self.lots.entry(customer).or_default().entry(key).or_default() += amount;
    }

    /// Takes `amount` from a customer's lots, the earliest first.
    fn take_lots(&mut self, customer: u64, mut amount: u64) -> Vec<(LotKey, u64)> {
        let mut taken = Vec::new();
        if self.versions.is_empty() {
            return taken;
        }
        let lots = self.lots.entry(customer).or_default();
        while amount > 0 {
            let (key, left) = lots.iter_mut().next().expect("the lots hold the balance");
            let part = (*left).min(amount);
            *left -= part;
            amount -= part;
            taken.push((*key, part));
            if *left == 0 {
                let key = *key;
                lots.remove(&key);
            }
        }
        taken
    }

    /// Puts parked points back into their lots.
    fn return_lots(&mut self, customer: u64, parts: Vec<(LotKey, u64)>) {
        for (key, amount) in parts {
            if amount > 0 {
                *self.lots.entry(customer).or_default().entry(key).or_default() += amount;
            }
        }
    }

    /// Every lot whose midnight has come goes to breakage, whole.
    fn expire_lots(&mut self) {
        let today = day_index(self.now);
        for (customer, lots) in &mut self.lots {
            let due: Vec<LotKey> =
                lots.keys().take_while(|(day, _)| *day <= today).copied().collect();
            for key in due {
                let amount = lots.remove(&key).expect("listed");
                *self.balances.get_mut(customer).expect("lots are points held") -=
                    i128::from(amount);
                self.breakage += i128::from(amount);
            }
        }
    }

    /// The model's clock.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    fn shard(&self, customer: u64) -> ShardId {
        shard_for_customer(CustomerId(customer), self.shard_count)
    }

    /// A customer's posted balance (0 if the account does not exist).
    pub fn balance(&self, customer: u64) -> i128 {
        self.balances.get(&customer).copied().unwrap_or(0)
    }

    /// A customer's balance minus open holds.
    pub fn available(&self, customer: u64) -> i128 {
        self.balance(customer) - self.reserved.get(&customer).copied().unwrap_or(0)
    }

    /// Whether the customer's account exists (was ever credited).
    pub fn exists(&self, customer: u64) -> bool {
        self.balances.contains_key(&customer)
    }

    /// Every customer account and its posted balance.
    pub fn customers(&self) -> &BTreeMap<u64, i128> {
        &self.balances
    }

    /// The global house:issuance and house:redemption balances.
    pub fn house(&self) -> (i128, i128) {
        (self.issuance, self.redemption)
    }

    /// The write number and key a write op gets, and the key of a retried or conflicting one.
    pub fn key_of(&self, write: usize) -> u128 {
        self.writes[write].1
    }

    /// Number of writes made so far.
    pub fn write_count(&self) -> usize {
        self.writes.len()
    }

    /// The `write`-th write as first made.
    pub fn write(&self, write: usize) -> &ModelOp {
        &self.writes[write].0
    }

    /// The write that created the hold a (prepared) `Capture`/`Void` points at.
    pub fn hold_write(&self, hold: usize) -> Option<usize> {
        self.holds.get(hold).map(|hold| hold.write)
    }

    /// The committed write whose transaction a (prepared) `Reverse` of write `op` names:
    /// `op` itself, the write a duplicate repeated, or none for a refused write.
    pub fn transaction_of(&self, op: usize) -> Option<usize> {
        match self.write_outcomes.get(op)? {
            ModelOutcome::Committed { write } | ModelOutcome::Duplicate { write } => Some(*write),
            ModelOutcome::Rejected(_) | ModelOutcome::None => None,
        }
    }

    /// The outcome write number `write` had when it was made.
    pub fn outcome(&self, write: usize) -> ModelOutcome {
        self.write_outcomes[write]
    }

    /// The key the next new write gets.
    pub fn next_key(&self) -> u128 {
        self.next_key
    }

    /// Resolves references: hold and write indexes become absolute (or `NO_HOLD`), so that
    /// a retry of the operation later means exactly the same thing.
    pub fn prepare(&self, op: &ModelOp) -> ModelOp {
        let hold_index = |hold: usize| {
            if self.holds.is_empty() { NO_HOLD } else { hold % self.holds.len() }
        };
        let write_index =
            |op: usize| if self.writes.is_empty() { 0 } else { op % self.writes.len() };
        // A lifecycle operation names the `op`-th purchase that committed (the write of
        // `op`-th write when there is none yet).
        let purchase_index = |op: usize| match self.purchases.len() {
            0 => write_index(op),
            count => *self.purchases.keys().nth(op % count).expect("in range"),
        };
        match *op {
            ModelOp::Capture { hold, amount } => {
                ModelOp::Capture { hold: hold_index(hold), amount }
            }
            ModelOp::Void { hold } => ModelOp::Void { hold: hold_index(hold) },
            ModelOp::Retry { op } => ModelOp::Retry { op: write_index(op) },
            ModelOp::Conflict { op } => ModelOp::Conflict { op: write_index(op) },
            ModelOp::Reverse { op } => ModelOp::Reverse { op: write_index(op) },
            ModelOp::Settle { op } => ModelOp::Settle { op: purchase_index(op) },
            ModelOp::Fail { op } => ModelOp::Fail { op: purchase_index(op) },
            ModelOp::Refund { op, amount } => ModelOp::Refund { op: purchase_index(op), amount },
            ref other => other.clone(),
        }
    }

    /// The request a `Conflict` with write `write` makes.
    pub fn conflicting(&self, write: usize) -> ModelOp {
        match self.writes[write].0 {
            ModelOp::Earn { customer, amount } => ModelOp::Earn { customer, amount: amount + 1 },
            ModelOp::Redeem { customer, amount } => {
                ModelOp::Redeem { customer, amount: amount + 1 }
            }
            ModelOp::Transfer { from, to, amount } => {
                ModelOp::Transfer { from, to, amount: amount + 1 }
            }
            ModelOp::Hold { customer, amount, timeout_nanos } => {
                ModelOp::Hold { customer, amount: amount + 1, timeout_nanos }
            }
            ModelOp::Capture { hold, .. } => ModelOp::Void { hold },
            ModelOp::Void { hold } => ModelOp::Capture { hold, amount: None },
            ModelOp::Purchase { customer, ref lines, store } => {
                let mut lines = lines.clone();
                lines[0].1 += 1;
                ModelOp::Purchase { customer, lines, store }
            }
            ModelOp::Reverse { op } => {
                let shard = self.key_shard(&ModelOp::Reverse { op });
                let customer = (0..).find(|c| self.shard(*c) == shard).expect("a customer");
                ModelOp::Earn { customer, amount: 1 }
            }
            ModelOp::Settle { op } => ModelOp::Fail { op },
            ModelOp::Fail { op } => ModelOp::Settle { op },
            ModelOp::Refund { op, amount } => ModelOp::Refund { op, amount: amount + 1 },
            ModelOp::ConvertOut { customer, amount } => {
                ModelOp::ConvertOut { customer, amount: amount + 1 }
            }
            ModelOp::ConvertIn { customer, amount } => {
                ModelOp::ConvertIn { customer, amount: amount + 1 }
            }
            ref other => unreachable!("{other:?} is not stored as a write"),
        }
    }

    /// Applies a `prepare`d `op` and returns the expected outcome. New writes get the next
    /// key; `Retry` and `Conflict` reuse an earlier write's key.
    pub fn apply(&mut self, op: &ModelOp) -> ModelOutcome {
        match op {
            ModelOp::Advance { nanos } => {
                self.now = self.now.plus_nanos(*nanos);
                self.expire_holds();
                self.expire_lots();
                ModelOutcome::None
            }
            ModelOp::Retry { op: target } => {
                if self.writes.is_empty() {
                    return ModelOutcome::None;
                }
                let (original, key) = self.writes[*target].clone();
                self.keyed_write(original, key)
            }
            ModelOp::Conflict { op: target } => {
                if self.writes.is_empty() {
                    return ModelOutcome::None;
                }
                let key = self.writes[*target].1;
                self.keyed_write(self.conflicting(*target), key)
            }
            _ => {
                let key = self.next_key;
                self.next_key += 1;
                self.keyed_write(op.clone(), key)
            }
        }
    }

    fn keyed_write(&mut self, op: ModelOp, key: u128) -> ModelOutcome {
        let write = self.writes.len();
        self.writes.push((op.clone(), key));
        self.write_times.push(self.now);
        if let Some(original) = self.committed_keys.get(&key).copied() {
            let outcome = if self.writes[original].0 == op {
                ModelOutcome::Duplicate { write: original }
            } else {
                ModelOutcome::Rejected(RejectCode::IdempotencyConflict)
            };
            self.write_outcomes.push(outcome);
            return outcome;
        }
        let outcome = match self.execute(&op, write) {
            Ok(()) => {
                self.remember_key(key, write);
                ModelOutcome::Committed { write }
            }
            Err(code) => ModelOutcome::Rejected(code),
        };
        self.write_outcomes.push(outcome);
        outcome
    }

    /// The shard whose idempotency table holds a write's key: the shard the write ran on.
    fn key_shard(&self, op: &ModelOp) -> ShardId {
        match op {
            ModelOp::Earn { customer, .. }
            | ModelOp::Redeem { customer, .. }
            | ModelOp::Hold { customer, .. }
            | ModelOp::Purchase { customer, .. }
            | ModelOp::ConvertOut { customer, .. }
            | ModelOp::ConvertIn { customer, .. } => self.shard(*customer),
            ModelOp::Transfer { from, .. } => self.shard(*from),
            ModelOp::Capture { hold, .. } | ModelOp::Void { hold } => {
                self.shard(self.holds[*hold].customer)
            }
            // The shard of the transaction; a reversal that names none goes to shard 0.
            ModelOp::Reverse { op }
            | ModelOp::Settle { op }
            | ModelOp::Fail { op }
            | ModelOp::Refund { op, .. } => match self.transaction_of(*op) {
                Some(write) => self.key_shard(&self.writes[write].0.clone()),
                None => ShardId::new(0).expect("shard 0"),
            },
            _ => unreachable!("not a write"),
        }
    }

    fn remember_key(&mut self, key: u128, write: usize) {
        self.committed_keys.insert(key, write);
    }

    fn expire_holds(&mut self) {
        // The engine sweeps expired holds in deadline order (ties by hold id, i.e. creation).
        let mut due: Vec<usize> = (0..self.holds.len())
            .filter(|i| {
                self.holds[*i].state == HoldState::Open && self.holds[*i].expires_at <= self.now
            })
            .collect();
        due.sort_by_key(|i| (self.holds[*i].expires_at, *i));
        for index in due {
            self.close_hold(index, HoldState::Expired);
            self.release_parked(index, 0);
        }
    }

    /// Ends what hold `index` parked: `spent` points are gone, the earliest first; the rest
    /// goes back into their lots.
    fn release_parked(&mut self, index: usize, mut spent: u64) {
        let parked = std::mem::take(&mut self.holds[index].parked);
        let mut back = Vec::new();
        for (key, amount) in parked {
            let gone = amount.min(spent);
            spent -= gone;
            back.push((key, amount - gone));
        }
        self.return_lots(self.holds[index].customer, back);
    }

    /// Closes a hold: releases its reservation and keeps its tombstone, evicting the oldest
    /// tombstone of its shard past `holds_open_max`.
    fn close_hold(&mut self, index: usize, state: HoldState) {
        let hold = self.holds[index].clone();
        *self.reserved.entry(hold.customer).or_default() -= i128::from(hold.amount);
        self.holds[index].state = state;
        let shard = self.shard(hold.customer).as_usize();
        for forgotten in self.closed_generations[shard].push(index) {
            self.holds[forgotten].state = HoldState::Forgotten;
        }
    }

    fn debit_check(&self, customer: u64, amount: u64) -> Result<(), RejectCode> {
        if !self.exists(customer) {
            return Err(RejectCode::AccountNotFound);
        }
        if self.available(customer) < i128::from(amount) {
            return Err(RejectCode::InsufficientFunds);
        }
        Ok(())
    }

    fn open_holds_on(&self, shard: ShardId) -> usize {
        self.holds
            .iter()
            .filter(|h| h.state == HoldState::Open && self.shard(h.customer) == shard)
            .count()
    }

    fn execute(&mut self, op: &ModelOp, write: usize) -> Result<(), RejectCode> {
        match *op {
            ModelOp::Earn { customer, amount } => {
                *self.balances.entry(customer).or_default() += i128::from(amount);
                self.issuance -= i128::from(amount);
                self.credit_lot(customer, 1, amount);
                Ok(())
            }
            ModelOp::Redeem { customer, amount } => {
                self.debit_check(customer, amount)?;
                *self.balances.entry(customer).or_default() -= i128::from(amount);
                self.redemption += i128::from(amount);
                self.take_lots(customer, amount);
                Ok(())
            }
            ModelOp::Purchase { customer, ref lines, store } => {
                let rules = self.rules_at(self.now).ok_or(RejectCode::RulesNotInForce)?.clone();
                let (day, month) = (day_index(self.now), month_index(self.now));
                let counters = self.caps.get(&customer).copied().unwrap_or_default();
                let used = CapsUsed {
                    day: if counters.0 == day { counters.1 } else { 0 },
                    month: if counters.2 == month { counters.3 } else { 0 },
                };
                let tier = rules.tier_for(self.qualifying(customer, &rules));
                let basket: Vec<Line> = lines
                    .iter()
                    .map(|&(category, amount)| Line { category, amount, excluded: false })
                    .collect();
                let breakdown = price(&rules, &basket, store, self.now, tier, used)
                    .map_err(|_| RejectCode::BasketInvalid)?;
                let points = breakdown.earned + breakdown.bonus;
                if points > 0 {
                    *self.balances.entry(customer).or_default() += i128::from(points);
                    self.issuance -= i128::from(points);
                }
                self.purchases.insert(
                    write,
                    ModelPurchase {
                        customer,
                        spend: lines.iter().map(|(_, amount)| amount).sum(),
                        earned: breakdown.earned,
                        bonus: breakdown.bonus,
                        day,
                        month,
                        earned_lot: self.lot_key(1),
                        bonus_lot: self.lot_key(2),
                        state: LifecycleState::Pending,
                        refunded: 0,
                    },
                );
                self.credit_lot(customer, 1, breakdown.earned);
                self.credit_lot(customer, 2, breakdown.bonus);
                self.caps.insert(customer, (day, used.day + points, month, used.month + points));
                if points > 0 {
                    *self.months.entry(customer).or_default().entry(month).or_default() += points;
                }
                self.purchase_points.insert(write, points);
                Ok(())
            }
            ModelOp::Transfer { from, to, amount } => {
                if from == to {
                    return Err(RejectCode::AccountsSame);
                }
                self.debit_check(from, amount)?;
                *self.balances.entry(from).or_default() -= i128::from(amount);
                *self.balances.entry(to).or_default() += i128::from(amount);
                self.take_lots(from, amount);
                self.credit_lot(to, 3, amount);
                Ok(())
            }
            ModelOp::Hold { customer, amount, timeout_nanos } => {
                if timeout_nanos == 0 || timeout_nanos > self.hold_timeout_max_nanos {
                    return Err(RejectCode::HoldTimeoutInvalid);
                }
                if self.open_holds_on(self.shard(customer)) >= self.holds_open_max {
                    return Err(RejectCode::HoldsFull);
                }
                self.debit_check(customer, amount)?;
                *self.reserved.entry(customer).or_default() += i128::from(amount);
                let expires_at = self.now.plus_nanos(timeout_nanos);
                let parked = self.take_lots(customer, amount);
                self.holds.push(ModelHold {
                    customer,
                    amount,
                    expires_at,
                    state: HoldState::Open,
                    write,
                    parked,
                });
                Ok(())
            }
            ModelOp::Capture { hold, amount } => {
                let index = self.find_hold(hold)?;
                let target = self.holds[index].clone();
                let captured = amount.unwrap_or(target.amount);
                if captured > target.amount {
                    return Err(RejectCode::CaptureExceedsHold);
                }
                self.close_hold(index, HoldState::Captured);
                self.release_parked(index, captured);
                *self.balances.entry(target.customer).or_default() -= i128::from(captured);
                self.redemption += i128::from(captured);
                Ok(())
            }
            ModelOp::Void { hold } => {
                let index = self.find_hold(hold)?;
                self.close_hold(index, HoldState::Voided);
                self.release_parked(index, 0);
                Ok(())
            }
            ModelOp::Reverse { op } => {
                let original = self.transaction_of(op).ok_or(RejectCode::TransactionNotFound)?;
                // Plain transactions that touch customers only: earns, redemptions and
                // transfers within a shard; not holds, captures, voids, cross-shard transfers
                // or reversals.
                let postings = match self.writes[original].0 {
                    ModelOp::Earn { customer, amount } => vec![(Some(customer), None, amount)],
                    ModelOp::Redeem { customer, amount } => vec![(None, Some(customer), amount)],
                    ModelOp::Transfer { from, to, amount }
                        if self.shard(from) == self.shard(to) =>
                    {
                        vec![(Some(to), Some(from), amount)]
                    }
                    // A purchase that earned nothing posted nothing: no customer saw it.
                    ModelOp::Purchase { customer, .. } => match self.purchase_points[&original] {
                        0 => return Err(RejectCode::TransactionNotFound),
                        points => vec![(Some(customer), None, points)],
                    },
                    // A settlement, failure or refund posts what it takes back, if anything,
                    // and is undone by nothing but its own kind.
                    ModelOp::Settle { .. } | ModelOp::Fail { .. } | ModelOp::Refund { .. } => {
                        return Err(match self.purchase_points[&original] {
                            0 => RejectCode::TransactionNotFound,
                            _ => RejectCode::TransactionNotReversible,
                        });
                    }
                    _ => return Err(RejectCode::TransactionNotReversible),
                };
                if self.reversed.contains(&original) {
                    return Err(RejectCode::AlreadyReversed);
                }
                // A purchase refunded or failed in part or whole is not reversible.
                if self.purchases.get(&original).is_some_and(|purchase| {
                    purchase.refunded > 0
                        || !matches!(
                            purchase.state,
                            LifecycleState::Pending | LifecycleState::Settled
                        )
                }) {
                    return Err(RejectCode::TransactionNotReversible);
                }
                // The original turned round: (debit, credit, amount); `None` is the house.
                for (debit, _, amount) in &postings {
                    if let Some(customer) = debit {
                        self.debit_check(*customer, *amount)?;
                    }
                }
                for (debit, credit, amount) in postings {
                    match debit {
                        Some(customer) => {
                            *self.balances.entry(customer).or_default() -= i128::from(amount);
                            self.take_lots(customer, amount);
                        }
                        None => self.redemption -= i128::from(amount),
                    }
                    match credit {
                        Some(customer) => {
                            *self.balances.entry(customer).or_default() += i128::from(amount);
                            self.credit_lot(customer, 1, amount);
                        }
                        None => self.issuance += i128::from(amount),
                    }
                }
                self.reversed.insert(original);
                // A reversed purchase's lifecycle ends failed.
                if let Some(purchase) = self.purchases.get_mut(&original) {
                    purchase.state = LifecycleState::Failed;
                    purchase.refunded = purchase.spend;
                }
                Ok(())
            }
            ModelOp::Settle { op } => self.change(op, LifecycleEvent::Settle),
            ModelOp::Fail { op } => self.change(op, LifecycleEvent::Fail),
            ModelOp::Refund { op, amount } => {
                self.change(op, LifecycleEvent::Refund { amount, left: 0 })
            }
            ModelOp::ConvertOut { customer, amount } => self.convert(customer, amount, true),
            ModelOp::ConvertIn { customer, amount } => self.convert(customer, amount, false),
            ModelOp::Retry { .. } | ModelOp::Conflict { .. } | ModelOp::Advance { .. } => {
                unreachable!("handled by apply")
            }
        }
    }

    /// A settlement, failure or refund of the purchase of write `op` (docs/loyalty.md,
    /// "Purchase lifecycle and refunds").
    fn change(&mut self, op: usize, event: LifecycleEvent) -> Result<(), RejectCode> {
        let window = self.rules_at(self.now).map_or(90, |rules| rules.purchases.refund_days);
        let (today, window) = (day_index(self.now), u32::from(window));
        let original = self.transaction_of(op);
        let Some(mut purchase) = original.and_then(|write| self.purchases.get(&write).copied())
        else {
            // No purchase: an id from before the window may have named one.
            let day = original.map_or(TX_ID_DAY_ONE, |write| day_index(self.write_times[write]));
            return Err(if day + window <= today {
                RejectCode::PurchaseNotRefundable
            } else {
                RejectCode::PurchaseNotFound
            });
        };
        if purchase.day + window <= today {
            return Err(RejectCode::PurchaseNotRefundable);
        }
        let event = match event {
            LifecycleEvent::Refund { amount, .. } => {
                LifecycleEvent::Refund { amount, left: purchase.spend - purchase.refunded }
            }
            other => other,
        };
        let state = next_state(purchase.state, event).map_err(LifecycleError::code)?;
        let now_refunded = match event {
            LifecycleEvent::Settle => 0,
            LifecycleEvent::Fail => purchase.spend - purchase.refunded,
            LifecycleEvent::Refund { amount, .. } => amount,
        };
        let share =
            |component| refund_share(component, purchase.spend, purchase.refunded, now_refunded);
        let (earned, bonus) = (share(purchase.earned), share(purchase.bonus));
        let customer = purchase.customer;
        let short = self.take_back_lots(customer, purchase.earned_lot, earned)
            + self.take_back_lots(customer, purchase.bonus_lot, bonus);
        let points = earned + bonus;
        if points > short {
            *self.balances.entry(customer).or_default() -= i128::from(points - short);
        }
        if short > 0 {
            *self.owed.entry(customer).or_default() -= i128::from(short);
        }
        self.issuance += i128::from(points);
        if points > 0 {
            if let Some(months) = self.months.get_mut(&customer)
                && let Some(month_points) = months.get_mut(&purchase.month)
            {
                *month_points -= (*month_points).min(points);
                if *month_points == 0 {
                    months.remove(&purchase.month);
                }
            }
            if let Some(caps) = self.caps.get_mut(&customer) {
                if caps.0 == purchase.day {
                    caps.1 -= caps.1.min(points);
                }
                if caps.2 == purchase.month {
                    caps.3 -= caps.3.min(points);
                }
            }
        }
        purchase.state = state;
        purchase.refunded += now_refunded;
        let write = original.expect("a purchase");
        self.purchases.insert(write, purchase);
        self.purchase_points.insert(self.writes.len() - 1, points);
        Ok(())
    }

    fn find_hold(&self, index: usize) -> Result<usize, RejectCode> {
        let Some(hold) = self.holds.get(index) else {
            return Err(RejectCode::HoldNotFound);
        };
        match hold.state {
            HoldState::Open if self.holds[index].expires_at <= self.now => {
                Err(RejectCode::HoldExpired)
            }
            HoldState::Open => Ok(index),
            HoldState::Captured => Err(RejectCode::HoldAlreadyCaptured),
            HoldState::Voided => Err(RejectCode::HoldAlreadyVoided),
            HoldState::Expired => Err(RejectCode::HoldExpired),
            HoldState::Forgotten => Err(RejectCode::HoldNotFound),
        }
    }
}
