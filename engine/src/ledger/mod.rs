//! The ledger state machine of one shard: accounts, holds, idempotency, cross-shard transfer
//! bookkeeping, and `Ledger::apply`, the single function through which every change passes,
//! live or at replay.
//!
//! **Invariant:** this module does no I/O, spawns no thread and reads no clock. Time is the
//! `timestamp` of the record being applied; ids come from the record. Two ledgers that applied
//! the same records are equal, whatever happened around them (tested in
//! `tests/replay_determinism.rs`).
//!
//! **Invariant:** a record either applies whole or changes nothing. Postings are applied with an
//! undo log, and any rejection rolls back every counter and every account the record created.
//!
//! **Invariant:** for every asset, Σ debits = Σ credits (posted and pending), checked after each
//! record on the assets it touched, and over every account by `check_invariants`.

pub mod account;
pub mod command;
mod exchange;
pub mod history;
pub mod keys;
pub mod liability;
mod loyalty;
pub mod pages;
mod purchases;
pub mod record;
pub mod registry;
mod retained;
mod state_codec;
pub use state_codec::StateCapture;
mod table;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use self::account::{Account, AccountFlags, AccountId, AssetId, ClassId, Namespace};
use self::command::{AccountView, Committed, HoldView};
use self::history::{History, HistoryEntry, NO_ENTRY};
use self::keys::KeyEntry;
use self::record::{
    Body, Posting, Postings, Record, Reversal, RulesDefine, TransferIn, TransferOut,
    TransferSettle, TxHeader, TxKind,
};
use self::registry::{AssetDef, ClassDef, Registry};
use self::retained::Retained;
use self::table::AccountTable;
use crate::amount::Amount;
use crate::ids::{
    IdempotencyKey, Lsn, ShardId, TerminalId, Timestamp, TxId, TxIdGenerator, shard_for_customer,
};
use crate::limits::Limits;
use crate::loyalty::members::Members;
use crate::loyalty::programme::Programme;
use crate::reject::RejectCode;

type Hasher = foldhash::fast::RandomState;

/// The largest posted balance a live write may give a customer account: 2^63 − 1, what a
/// signed 64-bit field (the POS protocol's balance answer) holds, so that every customer
/// balance can be reported. See `Ledger::bound_customer_balances`.
pub const CUSTOMER_BALANCE_MAX: i128 = i64::MAX as i128;

/// Configuration of one shard's state machine. Changing it changes what replay produces, so it
/// is fixed for the life of a process (see docs/operations.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerConfig {
    /// This shard.
    pub shard: ShardId,
    /// Shards of the data directory (fixed when it was created).
    pub shard_count: u16,
    /// Runtime limits.
    pub limits: Limits,
    /// How long idempotency keys (and tombstones of closed holds) are remembered.
    pub idempotency_retention_nanos: u64,
    /// The longest hold timeout a request may ask for.
    pub hold_timeout_max_nanos: u64,
}

impl LedgerConfig {
    /// Default configuration for `shard` of `shard_count`: 24 h idempotency retention, holds of
    /// up to 30 days.
    pub fn new(shard: ShardId, shard_count: u16) -> LedgerConfig {
        LedgerConfig {
            shard,
            shard_count,
            limits: Limits::default(),
            idempotency_retention_nanos: 24 * 3600 * 1_000_000_000,
            hold_timeout_max_nanos: 30 * 24 * 3600 * 1_000_000_000,
        }
    }
}

/// An open hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// The reserved posting.
    pub posting: Posting,
    /// When it expires.
    pub expires_at: Timestamp,
}

/// How a hold ended; kept for the idempotency window so a late capture or void gets an exact
/// answer instead of "not found".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HoldClosure {
    /// Captured, whole or part.
    Captured = 1,
    /// Voided.
    Voided = 2,
    /// Reached its timeout.
    Expired = 3,
}

impl HoldClosure {
    fn reject_code(self) -> RejectCode {
        match self {
            HoldClosure::Captured => RejectCode::HoldAlreadyCaptured,
            HoldClosure::Voided => RejectCode::HoldAlreadyVoided,
            HoldClosure::Expired => RejectCode::HoldExpired,
        }
    }
}

/// What the idempotency table remembers of a committed write: its original result, whose
/// timestamp is the entry's own insertion time (not stored twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IdempotencyEntry {
    /// Hash of the request's payload; a retry must match it (`wal::payload::fingerprint`).
    fingerprint: u64,
    /// The original result's transaction id, position and amount (`Committed`).
    tx_id: TxId,
    lsn: Lsn,
    amount: u64,
    /// Set when a later record undid the write's effect and its request was answered with
    /// this refusal: a cross-shard transfer whose destination refused the credit (refunded by
    /// `TransferSettle`). A retry gets the same refusal, not the committed step.
    refused: Option<RejectCode>,
}

impl IdempotencyEntry {
    fn key_entry(
        &self,
        terminal: TerminalId,
        key: IdempotencyKey,
        inserted: Timestamp,
    ) -> KeyEntry {
        KeyEntry {
            terminal,
            key,
            inserted,
            fingerprint: self.fingerprint,
            tx_id: self.tx_id,
            lsn: self.lsn,
            amount: self.amount,
            refused: self.refused,
            mark: false,
        }
    }

    fn new(fingerprint: u64, committed: Committed) -> IdempotencyEntry {
        IdempotencyEntry {
            fingerprint,
            tx_id: committed.tx_id,
            lsn: committed.lsn,
            amount: committed.amount,
            refused: None,
        }
    }

    /// The original result of the write remembered at `inserted`.
    fn committed(&self, inserted: Timestamp) -> Committed {
        Committed { tx_id: self.tx_id, lsn: self.lsn, timestamp: inserted, amount: self.amount }
    }

    /// How a write with `fingerprint` is answered: as a retry of this one, or a conflict.
    fn answer(&self, fingerprint: u64, inserted: Timestamp) -> Refusal {
        if fingerprint == self.fingerprint {
            self.retry_answer(inserted)
        } else {
            Refusal::Rejected(RejectCode::IdempotencyConflict)
        }
    }

    /// The answer a retry with the same payload gets.
    fn retry_answer(&self, inserted: Timestamp) -> Refusal {
        match self.refused {
            Some(code) => Refusal::Rejected(code),
            None => Refusal::Duplicate(self.committed(inserted)),
        }
    }
}

#[cfg(test)]
#[test]
fn idempotency_memory_per_key() {
    // docs/design-decisions.md and `Limits::idempotency_keys_max` quote this figure: a ring slot
    // per key, and the index (two generations of half the keys, each with twice as many 8-byte
    // slots as keys, in shared 64-byte buckets).
    let ring_slot =
        std::mem::size_of::<(Timestamp, (TerminalId, IdempotencyKey), IdempotencyEntry)>();
    let keys = Limits::default().idempotency_keys_max;
    let table: Retained<(TerminalId, IdempotencyKey), IdempotencyEntry> = Retained::new(keys, 1);
    let index_per_key = table.index_bytes() / keys;
    assert_eq!(ring_slot + index_per_key, 96, "update the documented memory per idempotency key");
}

/// How a caller that keeps older keys (the shard's key index) answers a write whose key the
/// idempotency table has no entry for: `(terminal, key, fingerprint)` → the refusal it gets
/// (a duplicate, a conflict…), or `None` for a fresh key.
pub type OlderKeys<'a> = &'a mut dyn FnMut(TerminalId, IdempotencyKey, u64) -> Option<Refusal>;

/// A cross-shard transfer sent by this shard and not yet settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundTransfer {
    /// The id of step 1 (`TransferOut`).
    pub tx_id: TxId,
    /// The LSN of step 1: the transfer may be sent once the WAL is durable up to here.
    pub lsn: Lsn,
    /// The source customer account (refunded if the destination refuses).
    pub source: AccountId,
    /// The destination customer account.
    pub destination: AccountId,
    /// The asset.
    pub asset: AssetId,
    /// The amount.
    pub amount: Amount,
    /// The terminal and idempotency key of the request, so that a refund can be remembered
    /// under that key. `None` only in state loaded from a snapshot of format 2 or older whose
    /// idempotency table had forgotten the key already.
    pub origin: Option<(TerminalId, IdempotencyKey)>,
    /// The request's fingerprint and time, so that a refund can be marked in the key index
    /// even after the idempotency table forgot the request (snapshot format 5; taken from the
    /// table, or 0, for older snapshots).
    pub fingerprint: u64,
    /// When the request was remembered (the `transfer_out` record's timestamp).
    pub inserted: Timestamp,
}

/// Running sums of one asset's counters over all accounts of the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AssetTotals {
    /// Σ debits_posted.
    pub debits_posted: u128,
    /// Σ credits_posted.
    pub credits_posted: u128,
    /// Σ debits_pending.
    pub debits_pending: u128,
    /// Σ credits_pending.
    pub credits_pending: u128,
}

/// Why `apply` did not apply a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request is refused; nothing changed.
    Rejected(RejectCode),
    /// The request repeats a committed one (same terminal, key and payload); nothing changed,
    /// and this is the original result.
    Duplicate(Committed),
}

impl From<RejectCode> for Refusal {
    fn from(code: RejectCode) -> Refusal {
        Refusal::Rejected(code)
    }
}

/// A broken invariant found by `check_invariants`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invariant violated on shard {shard}: {message}")]
pub struct InvariantViolation {
    shard: ShardId,
    message: String,
}

/// What a movement of value did to the two accounts (`Moved`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveEffect {
    /// Posted balances moved.
    Posted,
    /// A reservation was made (pending debit and credit): a hold, a pending purchase.
    Pending,
    /// A reservation ended without posting (its pending counters went back).
    Released,
}

impl MoveEffect {
    /// `posted`, `pending` or `released`: its name in reports and the replica.
    pub fn name(self) -> &'static str {
        match self {
            MoveEffect::Posted => "posted",
            MoveEffect::Pending => "pending",
            MoveEffect::Released => "released",
        }
    }
}

/// One movement of value between two accounts, as the journal records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// The account debited.
    pub debit: AccountId,
    /// The account credited.
    pub credit: AccountId,
    /// Their asset.
    pub asset: AssetId,
    /// What moved.
    pub effect: MoveEffect,
    /// How much (never 0).
    pub amount: u64,
    /// Which flow of the programme's points it is (posted movements only; docs/loyalty.md,
    /// "Liability and breakage").
    pub flow: Option<crate::loyalty::liability::Flow>,
}

/// Everything a reader that copies the ledger elsewhere needs of the records applied since it
/// last asked (`Ledger::take_journal`).
#[derive(Debug, Default)]
pub struct Journal {
    /// Every movement of value, in order.
    pub moved: Vec<Moved>,
    /// The customers whose loyalty state (lots, tier) changed, and every change of tier.
    pub members: crate::loyalty::members::MembersJournal,
}

/// Journals a leg: a capture is the release of what was held and the posting of what was
/// captured; amounts of 0 are left out. `flow` is the posted part's.
fn journal_leg(
    journal: &mut Vec<Moved>,
    debit: AccountId,
    credit: AccountId,
    asset: AssetId,
    leg: Leg,
    flow: Option<crate::loyalty::liability::Flow>,
) {
    let parts = match leg {
        Leg::Post(amount) => [(MoveEffect::Posted, amount), (MoveEffect::Posted, 0)],
        Leg::Reserve(amount) => [(MoveEffect::Pending, amount), (MoveEffect::Posted, 0)],
        Leg::Release(held) => [(MoveEffect::Released, held), (MoveEffect::Posted, 0)],
        Leg::Capture { held, captured } => {
            [(MoveEffect::Released, held), (MoveEffect::Posted, captured)]
        }
    };
    for (effect, amount) in parts {
        if amount > 0 {
            let amount = u64::try_from(amount).expect("amounts of postings fit in u64");
            let flow = if effect == MoveEffect::Posted { flow } else { None };
            journal.push(Moved { debit, credit, asset, effect, amount, flow });
        }
    }
}

/// How one side (debit or credit) of an account changes.
#[derive(Debug, Clone, Copy)]
enum Leg {
    /// Posted += amount.
    Post(u128),
    /// Pending += amount.
    Reserve(u128),
    /// Pending -= held, posted += captured.
    Capture { held: u128, captured: u128 },
    /// Pending -= held.
    Release(u128),
}

impl Leg {
    fn apply(self, pending: &mut u128, posted: &mut u128) -> Option<()> {
        match self {
            Leg::Post(amount) => *posted = posted.checked_add(amount)?,
            Leg::Reserve(amount) => *pending = pending.checked_add(amount)?,
            Leg::Capture { held, captured } => {
                *pending = pending.checked_sub(held)?;
                *posted = posted.checked_add(captured)?;
            }
            Leg::Release(held) => *pending = pending.checked_sub(held)?,
        }
        Some(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Debit,
    Credit,
}

/// The rejection for counters that break `flags`: a debit from an account that does not exist
/// (and so could never cover it), an overdraft, or a credit beyond the limit.
fn flags_rejection(after: &Account, flags: AccountFlags, existed: bool) -> RejectCode {
    let no_overdraft = flags.contains(AccountFlags::NO_OVERDRAFT);
    if no_overdraft && !existed {
        RejectCode::AccountNotFound
    } else if no_overdraft && !after.satisfies(AccountFlags::NO_OVERDRAFT) {
        RejectCode::InsufficientFunds
    } else {
        RejectCode::CreditLimitExceeded
    }
}

/// One entry of the undo log of the record being applied.
#[derive(Debug, Clone, Copy)]
enum Undo {
    Account { id: AccountId, before: Option<Account> },
    Totals { asset: AssetId, before: AssetTotals },
}

/// The state of one shard.
#[derive(Debug, Clone)]
pub struct Ledger {
    config: LedgerConfig,
    registry: Registry,
    accounts: AccountTable,
    /// `totals[asset]`, kept in step with `accounts` by every posting.
    totals: Vec<AssetTotals>,
    holds: HashMap<TxId, Hold, Hasher>,
    /// `(expires_at, hold)` for every open hold: the expiry sweep reads its front.
    hold_deadlines: BTreeSet<(Timestamp, TxId)>,
    holds_closed: Retained<TxId, HoldClosure>,
    idempotency: Retained<(TerminalId, IdempotencyKey), IdempotencyEntry>,
    /// The LSN of the newest write whose key the idempotency table has forgotten (by rotating
    /// a generation out): the key index on disk must hold every key up to here.
    idempotency_forgotten: Lsn,
    tx_ids: TxIdGenerator,
    /// LSN of the last applied record.
    lsn: Lsn,
    /// Timestamp of the last applied record.
    timestamp: Timestamp,
    /// Transfers sent and not settled, by `(destination shard, sequence)`.
    transfers_out: BTreeMap<(ShardId, u64), OutboundTransfer>,
    /// `transfers_out` by the id of each transfer's first step (for retries); derived, kept in
    /// step with it, rebuilt when a state is decoded.
    transfers_out_by_tx: HashMap<TxId, (ShardId, u64), Hasher>,
    /// `transfers_out_next[d]`: sequence the next transfer to shard `d` gets (from 1).
    transfers_out_next: Vec<u64>,
    /// `transfers_in_last[s]`: last sequence applied from shard `s` (0 = none).
    transfers_in_last: Vec<u64>,
    /// Incoming transfers whose credit was refused, by `(source shard, sequence)`.
    transfers_in_refused: BTreeSet<(ShardId, u64)>,
    /// Recent postings of customer accounts (history, reversal).
    history: History,
    /// The loyalty programme's rule versions.
    programme: Programme,
    /// The partner exchange's rates (docs/loyalty.md, "Partner exchange").
    rates: crate::loyalty::exchange::Rates,
    /// The loyalty state of this shard's customers: lots, tiers, caps, parked points.
    members: Members,
    /// The purchases still refundable (settle, fail, refund), in id order.
    purchases: crate::loyalty::purchases::Purchases,
    /// Posted balance of every customer class, summed over its accounts (index: class id):
    /// what members hold, and owe on the clawback classes. Derived from the accounts, kept as
    /// postings apply (`check_invariants` recomputes it).
    class_totals: Vec<i128>,
    /// Points issued, redeemed, expired and refunded per UTC day.
    flows: crate::loyalty::liability::Flows,
    /// The classes that classify points flows (`liability::Flow`), from the rule versions.
    flow_classes: FlowClasses,
    /// Scratch: class total changes and flows of the record being applied, kept at commit.
    liability_pending: Vec<LiabilityChange>,
    /// Scratch: the UTC day of the record being applied.
    applying_day: u32,
    /// The last purchases applied, for explain queries. Not state: not compared, not in
    /// snapshots.
    recent_purchases: crate::loyalty::explain::RecentPurchases,
    /// Scratch: the undo log of the record being applied. Empty between records.
    undo: Vec<Undo>,
    /// Scratch: history entries of the record being applied, appended when it commits.
    history_pending: Vec<PendingEntry>,
    /// Every movement of value of the records applied since the last `take_journal`, when a
    /// reader asked for them (`set_journal`): what the reporting replica copies. `None` on the
    /// live path, which pays one branch per posting for it.
    journal: Option<Vec<Moved>>,
    /// Scratch: the journal's length when the record being applied began (a refused record's
    /// entries are dropped with its other effects).
    journal_start: usize,
    /// Scratch: what the record being applied moved so far (`Committed::amount`).
    moved: u64,
    /// Whether postings that would take a customer's posted balance above
    /// `CUSTOMER_BALANCE_MAX` are refused: a rule of the live path, not ledger state.
    customer_balances_bounded: bool,
    /// Output: the entries the idempotency table took and the marks records made, in LSN
    /// order, for the key index (`drain_key_events`), while `key_events_on`. Not state.
    key_events: Vec<KeyEntry>,
    key_events_on: bool,
}

/// The programme's classes that tell points flows apart: points (a member's), issuance and
/// breakage (of every rule version).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FlowClasses {
    points: Option<ClassId>,
    issuance: smallvec::SmallVec<[ClassId; 2]>,
    breakage: smallvec::SmallVec<[ClassId; 2]>,
    /// Exchange funds of the pairs with the points on one side.
    exchange: smallvec::SmallVec<[ClassId; 2]>,
}

/// `totals` without its trailing zeros: classes whose accounts add up to nothing.
fn trimmed(totals: &[i128]) -> &[i128] {
    let end = totals.iter().rposition(|total| *total != 0).map_or(0, |last| last + 1);
    &totals[..end]
}

/// A change a record makes to the liability figures, kept when it commits.
#[derive(Debug, Clone, Copy)]
enum LiabilityChange {
    /// A customer class's total moves by this much.
    Class(u32, i128),
    /// A points flow.
    Flow(crate::loyalty::liability::Flow, u64),
}

/// A history entry waiting for its record to commit.
#[derive(Debug, Clone, Copy)]
struct PendingEntry {
    account: AccountId,
    counterparty: AccountId,
    amount: u64,
    flags: u8,
    posting: u8,
    postings: u8,
}

/// Which posting of how many `move_value` is applying, and whether its record can be reversed:
/// what the history entries of the posting say.
#[derive(Debug, Clone, Copy)]
struct PostingContext {
    index: u8,
    count: u8,
    reversible: bool,
}

impl PostingContext {
    fn single() -> PostingContext {
        PostingContext { index: 0, count: 1, reversible: false }
    }

    fn of(index: usize, count: usize, reversible: bool) -> PostingContext {
        let narrow = |value: usize| u8::try_from(value).expect("postings are at most 64");
        PostingContext { index: narrow(index), count: narrow(count), reversible }
    }
}

impl PartialEq for Ledger {
    fn eq(&self, other: &Ledger) -> bool {
        self.config == other.config
            && self.registry == other.registry
            && self.accounts == other.accounts
            && self.totals == other.totals
            && self.holds == other.holds
            && self.hold_deadlines == other.hold_deadlines
            && self.holds_closed == other.holds_closed
            && self.idempotency == other.idempotency
            && self.idempotency_forgotten == other.idempotency_forgotten
            && self.tx_ids == other.tx_ids
            && self.lsn == other.lsn
            && self.timestamp == other.timestamp
            && self.transfers_out == other.transfers_out
            && self.transfers_out_by_tx == other.transfers_out_by_tx
            && self.transfers_out_next == other.transfers_out_next
            && self.transfers_in_last == other.transfers_in_last
            && self.transfers_in_refused == other.transfers_in_refused
            && self.history == other.history
            && self.programme == other.programme
            && self.members == other.members
            && self.purchases == other.purchases
            && self.rates == other.rates
            && trimmed(&self.class_totals) == trimmed(&other.class_totals)
            && self.flows == other.flows
            && self.accounts.iter().all(|(id, _)| self.history_head(id) == other.history_head(id))
    }
}

impl Ledger {
    /// An empty ledger: no assets, no accounts, before LSN 1.
    pub fn new(config: LedgerConfig) -> Ledger {
        assert!(config.shard.index() < config.shard_count, "shard outside shard_count");
        let shards = usize::from(config.shard_count);
        let retention = config.idempotency_retention_nanos;
        Ledger {
            registry: Registry::default(),
            accounts: AccountTable::new(),
            totals: Vec::new(),
            holds: HashMap::with_hasher(Hasher::default()),
            hold_deadlines: BTreeSet::new(),
            holds_closed: Retained::new(config.limits.holds_open_max, retention),
            idempotency: Retained::new(config.limits.idempotency_keys_max, retention),
            idempotency_forgotten: Lsn::ZERO,
            tx_ids: TxIdGenerator::new(config.shard, None),
            lsn: Lsn::ZERO,
            timestamp: Timestamp(0),
            transfers_out: BTreeMap::new(),
            transfers_out_by_tx: HashMap::with_hasher(Hasher::default()),
            transfers_out_next: vec![1; shards],
            transfers_in_last: vec![0; shards],
            transfers_in_refused: BTreeSet::new(),
            history: History::new(config.limits.history_entries_max),
            programme: Programme::default(),
            members: Members::default(),
            purchases: crate::loyalty::purchases::Purchases::default(),
            rates: crate::loyalty::exchange::Rates::default(),
            class_totals: Vec::new(),
            flows: crate::loyalty::liability::Flows::default(),
            flow_classes: FlowClasses::default(),
            liability_pending: Vec::new(),
            applying_day: 0,
            recent_purchases: crate::loyalty::explain::RecentPurchases::new(
                config.limits.explain_purchases_max,
            ),
            undo: Vec::new(),
            history_pending: Vec::new(),
            journal: None,
            journal_start: 0,
            moved: 0,
            customer_balances_bounded: false,
            key_events: Vec::new(),
            key_events_on: false,
            config,
        }
    }

    /// The loyalty programme's rule versions.
    pub fn programme(&self) -> &Programme {
        &self.programme
    }

    /// Restores the programme a snapshot holds (`state_codec`).
    pub(crate) fn programme_mut(&mut self) -> &mut Programme {
        &mut self.programme
    }

    /// Records a rule version: checked whole first, then added (nothing to undo).
    fn apply_rules_define(
        &mut self,
        define: &RulesDefine,
        now: Timestamp,
    ) -> Result<(), RejectCode> {
        self.programme
            .check_define(
                define.version,
                define.effective_at,
                &define.accounts,
                &define.rules,
                &self.registry,
            )
            .map_err(|refused| refused.code)?;
        let first = self.programme.versions().is_empty();
        self.programme.define(
            define.version,
            define.effective_at,
            define.accounts,
            std::sync::Arc::clone(&define.rules),
            now,
        );
        if first {
            self.lots_at_programme_start(now);
        }
        self.refresh_flow_classes();
        Ok(())
    }

    /// The classes `move_value` classifies points flows by, from every rule version.
    pub(crate) fn refresh_flow_classes(&mut self) {
        let points = self.programme.points_class();
        let exchange = points.map(|points| self.rates.fund_classes_of(points)).unwrap_or_default();
        let mut classes = FlowClasses {
            points,
            exchange: exchange.into_iter().collect(),
            ..FlowClasses::default()
        };
        for version in self.programme.versions() {
            if !classes.issuance.contains(&version.accounts.issuance) {
                classes.issuance.push(version.accounts.issuance);
            }
            if !classes.breakage.contains(&version.accounts.breakage) {
                classes.breakage.push(version.accounts.breakage);
            }
        }
        self.flow_classes = classes;
    }

    /// The configuration.
    pub fn config(&self) -> &LedgerConfig {
        &self.config
    }

    /// From now on, refuses (`overflow`) every posting that would take a customer account's
    /// posted balance above `CUSTOMER_BALANCE_MAX`; one that lowers a balance is never refused
    /// for it. The shard thread turns this on for the records it decides; replay leaves it off,
    /// so that a WAL written before the bound existed still replays (a refused record is never
    /// logged, so the bound cannot make live and replayed states differ).
    pub fn bound_customer_balances(&mut self) {
        self.customer_balances_bounded = true;
    }

    /// This ledger's shard.
    pub fn shard(&self) -> ShardId {
        self.config.shard
    }

    /// Assets and classes.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// LSN of the last applied record.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// Timestamp of the last applied record.
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    /// The id a record stamped `now` would get.
    pub fn peek_tx_id(&self, now: Timestamp) -> TxId {
        self.tx_ids.peek(now)
    }

    /// An account's asset and counters, if it exists on this shard.
    pub fn account(&self, id: AccountId) -> Option<AccountView> {
        let counters = *self.accounts.get(&id)?;
        let (asset, _, _) = self.registry.account_terms(id)?;
        Some(AccountView { asset, counters })
    }

    /// Every account, in no particular order.
    pub fn accounts(&self) -> impl Iterator<Item = (&AccountId, &Account)> {
        self.accounts.iter()
    }

    /// Number of accounts on this shard.
    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// Running totals of an asset on this shard.
    pub fn totals(&self, asset: AssetId) -> Option<AssetTotals> {
        self.totals.get(usize::from(asset.0)).copied()
    }

    /// An open hold.
    pub fn hold(&self, id: TxId) -> Option<HoldView> {
        self.holds
            .get(&id)
            .map(|hold| HoldView { posting: hold.posting, expires_at: hold.expires_at })
    }

    /// Number of open holds.
    pub fn hold_count(&self) -> usize {
        self.holds.len()
    }

    /// Open holds whose timeout is at or before `now`, earliest first, at most `max`.
    pub fn holds_due(&self, now: Timestamp, max: usize) -> Vec<TxId> {
        self.hold_deadlines
            .iter()
            .take_while(|(expires_at, _)| *expires_at <= now)
            .take(max)
            .map(|(_, id)| *id)
            .collect()
    }

    /// Idempotency keys remembered, and how many were forgotten early by capacity.
    pub fn idempotency_stats(&self) -> (usize, u64) {
        (self.idempotency.len(), self.idempotency.evicted_early())
    }

    /// Whether the idempotency table has an entry for `(terminal, key)`, inside its window or
    /// not. When it has, it decides how a write with that key is answered; when it has not, the
    /// key may be in the key index on disk (keys the table forgot).
    pub fn idempotency_knows(&self, terminal: TerminalId, key: IdempotencyKey) -> bool {
        self.idempotency.contains(&(terminal, key))
    }

    /// The LSN of the newest write whose key the table has forgotten (zero: none yet).
    pub fn idempotency_forgotten_through(&self) -> Lsn {
        self.idempotency_forgotten
    }

    /// How many more writes can be remembered before the table forgets its older generation,
    /// and the LSN of the newest write that generation holds (what the key index must reach
    /// before then).
    pub fn idempotency_rotation(&self) -> (usize, Lsn) {
        let horizon = self.idempotency.previous_newest().map_or(Lsn::ZERO, |entry| entry.lsn);
        (self.idempotency.inserts_before_rotation(), horizon)
    }

    /// Every entry the table holds, oldest first, as key index entries (refund marks
    /// included, as the entries they changed).
    pub fn idempotency_entries(&self) -> impl Iterator<Item = KeyEntry> + '_ {
        let (_, entries) = self.idempotency.iter();
        entries.map(|(inserted, (terminal, key), entry)| entry.key_entry(*terminal, *key, inserted))
    }

    /// Keeps (`true`) or stops keeping every movement of value the records applied make and
    /// the loyalty state they changed, for `take_journal`: a reader that copies the ledger
    /// elsewhere (the reporting replica).
    pub fn set_journal(&mut self, on: bool) {
        self.journal = on.then(Vec::new);
        self.members.set_journal(on);
    }

    /// What the records applied since the last call moved and changed, in order (empty unless
    /// `set_journal(true)`).
    pub fn take_journal(&mut self) -> Journal {
        Journal {
            moved: self.journal.as_mut().map(std::mem::take).unwrap_or_default(),
            members: self.members.take_journal(),
        }
    }

    /// Whether records' key entries are kept for `drain_key_events`.
    pub fn set_key_events(&mut self, on: bool) {
        self.key_events_on = on;
        self.key_events.clear();
    }

    /// Hands out the entries the idempotency table took and the refund marks made since the
    /// last call, in LSN order (see `ledger::keys`).
    pub fn drain_key_events(&mut self) -> std::vec::Drain<'_, KeyEntry> {
        self.key_events.drain(..)
    }

    /// Transfers sent by this shard and not yet settled, in `(destination, sequence)` order.
    pub fn transfers_out(&self) -> impl Iterator<Item = (ShardId, u64, &OutboundTransfer)> {
        self.transfers_out.iter().map(|((shard, sequence), transfer)| (*shard, *sequence, transfer))
    }

    /// The unsettled outbound transfer `(destination, sequence)`, if any.
    pub fn transfer_out(&self, destination: ShardId, sequence: u64) -> Option<&OutboundTransfer> {
        self.transfers_out.get(&(destination, sequence))
    }

    /// The sequence the next transfer to `destination` gets.
    pub fn transfer_out_next(&self, destination: ShardId) -> u64 {
        self.transfers_out_next[destination.as_usize()]
    }

    /// The last sequence applied from `source` (0 if none).
    pub fn transfer_in_last(&self, source: ShardId) -> u64 {
        self.transfers_in_last[source.as_usize()]
    }

    /// Whether the credit of incoming transfer `(source, sequence)` was refused.
    pub fn transfer_in_refused(&self, source: ShardId, sequence: u64) -> bool {
        self.transfers_in_refused.contains(&(source, sequence))
    }

    /// The original result of a write, if `(terminal, key)` is remembered at `now` with this
    /// fingerprint; `Err` if it is remembered with another.
    pub fn idempotent_result(
        &self,
        terminal: TerminalId,
        key: IdempotencyKey,
        fingerprint: u64,
        now: Timestamp,
    ) -> Result<Option<Committed>, RejectCode> {
        match self.remembered(terminal, key, fingerprint, now) {
            None => Ok(None),
            Some(Refusal::Duplicate(committed)) => Ok(Some(committed)),
            Some(Refusal::Rejected(code)) => Err(code),
        }
    }

    /// Whether `(terminal, key)` is remembered at `now` (for any write).
    pub fn remembers_key(&self, terminal: TerminalId, key: IdempotencyKey, now: Timestamp) -> bool {
        self.idempotency.get_with_time(&(terminal, key), now).is_some()
    }

    /// How a write with this key and fingerprint is answered if `(terminal, key)` is
    /// remembered at `now`: as a duplicate of the original, with the refusal a later record
    /// put in its place, or as a conflict if the payload differs. `None` for a fresh key (or
    /// one past its window).
    pub fn remembered(
        &self,
        terminal: TerminalId,
        key: IdempotencyKey,
        fingerprint: u64,
        now: Timestamp,
    ) -> Option<Refusal> {
        let (inserted, entry) = self.idempotency.get_with_time(&(terminal, key), now)?;
        Some(entry.answer(fingerprint, inserted))
    }

    /// The unsettled cross-shard transfer whose first step is `tx_id`, as its
    /// `(destination, sequence)`.
    pub fn transfer_out_of(&self, tx_id: TxId) -> Option<(ShardId, u64)> {
        self.transfers_out_by_tx.get(&tx_id).copied()
    }

    /// Touches the memory `request` will need (its accounts, its idempotency slot) without
    /// changing anything. The shard calls it for every request of an input before applying
    /// them: the lookups are independent, so their cache misses overlap instead of stalling
    /// one after another (TigerBeetle's prefetch phase, in miniature).
    pub fn prefetch(&self, request: &command::Request) {
        if let Some(key) = request.idempotency {
            self.touch_key(request.terminal, key);
        }
        let touch = |account: AccountId| self.touch_account(account);
        match &request.operation {
            command::Operation::Post { postings } => {
                for posting in postings {
                    touch(posting.debit);
                    touch(posting.credit);
                }
            }
            command::Operation::Hold { posting, .. } => touch(posting.debit),
            command::Operation::Transfer { source, destination, .. } => {
                touch(*source);
                touch(*destination);
            }
            command::Operation::Purchase { customer, .. } => {
                if let Some(points) = self.programme.points_class() {
                    touch(AccountId::new(points, *customer));
                }
                self.members.prefetch(*customer);
            }
            command::Operation::Capture { .. }
            | command::Operation::Void { .. }
            | command::Operation::Reverse { .. }
            | command::Operation::PurchaseChange { .. }
            | command::Operation::Convert { .. } => {}
        }
    }

    /// `prefetch` for a decided record (replay applies records in batches too).
    pub fn prefetch_body(&self, body: &Body) {
        if let Some(TxHeader { terminal, idempotency: Some(key), .. }) = body.header() {
            self.touch_key(*terminal, *key);
        }
        match body {
            Body::Transaction(tx) => {
                for posting in &tx.postings {
                    self.touch_account(posting.debit);
                    self.touch_account(posting.credit);
                }
            }
            Body::HoldCreate(hold) => self.touch_account(hold.posting.debit),
            Body::TransferOut(transfer) => self.touch_account(transfer.source),
            Body::TransferIn(transfer) => self.touch_account(transfer.destination),
            Body::Purchase(purchase) => {
                if let Some(points) = self.programme.points_class() {
                    self.touch_account(AccountId::new(points, purchase.customer));
                }
                self.members.prefetch(purchase.customer);
            }
            _ => {}
        }
    }

    fn touch_account(&self, account: AccountId) {
        self.accounts.prefetch(&account);
    }

    fn touch_key(&self, terminal: TerminalId, key: IdempotencyKey) {
        self.idempotency.prefetch(&(terminal, key));
    }

    /// Applies one record: all of it, or nothing, and returns what it committed (its id,
    /// position, time and the amount it moved).
    ///
    /// `fingerprint` is the hash of the record's payload (`wal::payload::fingerprint`), checked
    /// against the idempotency table. Live, a refusal means the request is answered without
    /// logging anything; at replay, any refusal means the WAL and the code disagree.
    pub fn apply(&mut self, record: &Record, fingerprint: u64) -> Result<Committed, Refusal> {
        self.apply_with_older_keys(record, fingerprint, &mut |_, _, _| None)
    }

    /// `apply`, asking `older_keys` how a write is answered when its key is one the idempotency
    /// table has no entry for at all: the shard passes its key index (keys the table forgot);
    /// replay passes nothing, since every record in the WAL was a fresh key when it was
    /// decided. The answer keeps its place in the order of checks (after shape and registry).
    pub fn apply_with_older_keys(
        &mut self,
        record: &Record,
        fingerprint: u64,
        older_keys: OlderKeys<'_>,
    ) -> Result<Committed, Refusal> {
        assert_eq!(record.lsn, self.lsn.next(), "records apply in lsn order");
        assert!(record.timestamp >= self.timestamp, "record timestamps never decrease");
        assert!(self.undo.is_empty());
        self.journal_start = self.journal.as_ref().map_or(0, Vec::len);
        let now = record.timestamp;
        self.applying_day = crate::loyalty::calendar::day_index(now);
        let events_before = self.key_events.len();
        let header = record.body.header();
        if header.is_some_and(|header| header.idempotency.is_none()) {
            return Err(Refusal::Rejected(RejectCode::IdempotencyKeyMissing));
        }
        self.check_static(&record.body)?;
        if let Some(header) = header {
            self.check_idempotency(header, now, fingerprint, older_keys)?;
        }
        let result = match &record.body {
            Body::Transaction(tx) => self.apply_transaction(&tx.postings).map(|()| {
                self.lots_after_postings(&tx.postings, tx.header.kind, tx.header.id, now);
            }),
            Body::HoldCreate(hold) => self
                .apply_hold_create(
                    hold.header.id,
                    &hold.posting,
                    now.plus_nanos(hold.timeout_nanos),
                )
                .map(|()| self.lots_after_hold(hold.header.id, &hold.posting)),
            Body::HoldCapture(capture) => {
                let hold = self.holds.get(&capture.hold).copied();
                self.apply_hold_capture(capture.hold, capture.amount, now).map(|()| {
                    let hold = hold.expect("a captured hold was open");
                    let captured = capture.amount.map_or(hold.posting.amount.get(), Amount::get);
                    self.lots_after_capture(
                        capture.header.id,
                        capture.hold,
                        &hold.posting,
                        captured,
                        now,
                    );
                })
            }
            Body::HoldVoid(void) => self
                .apply_hold_release(void.hold, HoldClosure::Voided, now)
                .map(|()| self.lots_after_release(void.hold)),
            Body::HoldExpire(expire) => self
                .apply_hold_release(expire.hold, HoldClosure::Expired, now)
                .map(|()| self.lots_after_release(expire.hold)),
            Body::TransferOut(transfer) => {
                self.apply_transfer_out(transfer, record.lsn, fingerprint, now).map(|()| {
                    let amount = transfer.amount.get();
                    self.lots_after_transfer_out(transfer.header.id, transfer.source, amount);
                })
            }
            Body::TransferIn(transfer) => self.apply_transfer_in(transfer).map(|()| {
                if transfer.accepted {
                    let amount = transfer.amount.get();
                    self.lots_after_transfer_in(transfer.id, transfer.destination, amount, now);
                }
            }),
            Body::TransferSettle(settle) => {
                let key = (settle.destination_shard, settle.sequence);
                let sent = self.transfers_out.get(&key).map(|t| (t.tx_id, t.amount.get()));
                self.apply_transfer_settle(settle).map(|()| {
                    let (tx, amount) = sent.expect("settled transfers were sent");
                    self.lots_after_settle(tx, amount, settle.accepted);
                })
            }
            Body::Reversal(reversal) => self.apply_reversal(reversal).map(|()| {
                let id = reversal.header.id;
                self.lots_after_postings(&reversal.postings, reversal.header.kind, id, now);
            }),
            Body::AssetDefine(define) => self.registry.define_asset(AssetDef {
                id: define.id,
                code: define.code.clone(),
                scale: define.scale,
            }),
            Body::ClassDefine(define) => self.registry.define_class(ClassDef {
                id: define.id,
                namespace: define.namespace,
                name: define.name.clone(),
                asset: define.asset,
                flags: define.flags,
            }),
            Body::RulesDefine(define) => self.apply_rules_define(define, now),
            Body::Purchase(purchase) => self.apply_purchase(purchase, now),
            Body::LotsExpire(expire) => self.apply_lots_expire(expire, now),
            Body::PurchaseChange(change) => self.apply_purchase_change(change, now),
            Body::PurchaseRelease(release) => self.apply_purchase_release(release, now),
            Body::RateDefine(define) => self.apply_rate_define(define, now),
            Body::Conversion(conversion) => self.apply_conversion(conversion, now),
        };
        if let Err(code) = result {
            self.rollback();
            self.key_events.truncate(events_before);
            return Err(Refusal::Rejected(code));
        }
        let committed = self.commit(record, fingerprint);
        if let Body::Purchase(purchase) = &record.body {
            self.recent_purchases.push(record.lsn, record.timestamp, purchase);
        }
        Ok(committed)
    }

    /// Checks that depend only on the request and the registry (precedence codes 2..=12).
    fn check_static(&self, body: &Body) -> Result<(), RejectCode> {
        match body {
            Body::Transaction(tx) => self.check_postings(&tx.postings),
            Body::HoldCreate(hold) => {
                self.check_posting(&hold.posting)?;
                if hold.timeout_nanos == 0
                    || hold.timeout_nanos > self.config.hold_timeout_max_nanos
                {
                    return Err(RejectCode::HoldTimeoutInvalid);
                }
                Ok(())
            }
            Body::Reversal(reversal) => self.check_postings(&reversal.postings),
            Body::TransferOut(transfer) => {
                let asset = self.check_transfer(
                    transfer.source,
                    transfer.destination,
                    transfer.destination_shard,
                )?;
                if asset != transfer.asset {
                    return Err(RejectCode::AssetMismatch);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Refuses a repeated key: as a duplicate with the same payload, as a conflict otherwise.
    /// The table decides when it has an entry for the key (inside its window or not);
    /// otherwise `older_keys` does.
    fn check_idempotency(
        &self,
        header: &TxHeader,
        now: Timestamp,
        fingerprint: u64,
        older_keys: OlderKeys<'_>,
    ) -> Result<(), Refusal> {
        let key = header.idempotency.expect("checked first in apply");
        let answer = match self.idempotency.lookup(&(header.terminal, key), now) {
            Some(Ok((inserted, entry))) => Some(entry.answer(fingerprint, inserted)),
            Some(Err(())) => None,
            None => older_keys(header.terminal, key, fingerprint),
        };
        match answer {
            None => Ok(()),
            Some(refusal) => Err(refusal),
        }
    }

    fn commit(&mut self, record: &Record, fingerprint: u64) -> Committed {
        // Pair assertion: every posting keeps debits = credits for its asset.
        for undo in &self.undo {
            if let Undo::Totals { asset, .. } = undo {
                let totals = self.totals[usize::from(asset.0)];
                assert_eq!(
                    totals.debits_posted, totals.credits_posted,
                    "asset {asset:?} unbalanced"
                );
                assert_eq!(
                    totals.debits_pending, totals.credits_pending,
                    "asset {asset:?} unbalanced"
                );
            }
        }
        self.undo.clear();
        let now = record.timestamp;
        self.append_history(record);
        self.keep_liability_changes();
        if let Body::AssetDefine(_) = record.body {
            self.totals.push(AssetTotals::default());
            assert_eq!(self.totals.len(), self.registry.assets().len());
        }
        if let Some(id) = record.body.tx_id() {
            self.tx_ids.observe(id);
        }
        let committed = Committed {
            tx_id: record.body.tx_id().unwrap_or(TxId(0)),
            lsn: record.lsn,
            timestamp: now,
            amount: std::mem::take(&mut self.moved),
        };
        if let Some(header) = record.body.header() {
            let key = header.idempotency.expect("checked by check_header");
            if self.idempotency.inserts_before_rotation() == 0
                && let Some(forgotten) = self.idempotency.previous_newest()
            {
                self.idempotency_forgotten = self.idempotency_forgotten.max(forgotten.lsn);
            }
            let entry = IdempotencyEntry::new(fingerprint, committed);
            self.idempotency.insert((header.terminal, key), entry, now);
            if self.key_events_on {
                self.key_events.push(entry.key_entry(header.terminal, key, now));
            }
        }
        self.lsn = record.lsn;
        self.timestamp = now;
        committed
    }

    fn rollback(&mut self) {
        self.history_pending.clear();
        if let Some(journal) = self.journal.as_mut() {
            journal.truncate(self.journal_start);
        }
        self.liability_pending.clear();
        self.moved = 0;
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::Account { id, before: Some(account) } => {
                    self.accounts.insert(id, account);
                }
                Undo::Account { id, before: None } => {
                    self.accounts.remove(&id);
                }
                Undo::Totals { asset, before } => self.totals[usize::from(asset.0)] = before,
            }
        }
    }

    /// Static checks of a transaction's postings: some, not too many, each sound.
    fn check_postings(&self, postings: &[Posting]) -> Result<(), RejectCode> {
        if postings.is_empty() {
            return Err(RejectCode::PostingsEmpty);
        }
        if postings.len() > self.config.limits.transaction_postings_max {
            return Err(RejectCode::PostingsTooMany);
        }
        postings.iter().try_for_each(|posting| self.check_posting(posting))
    }

    /// Static checks of a posting (precedence codes 6..=11).
    fn check_posting(&self, posting: &Posting) -> Result<(), RejectCode> {
        if posting.debit == posting.credit {
            return Err(RejectCode::AccountsSame);
        }
        let debit = self.registry.account_terms(posting.debit).ok_or(RejectCode::ClassUnknown)?;
        let credit = self.registry.account_terms(posting.credit).ok_or(RejectCode::ClassUnknown)?;
        if self.registry.asset(posting.asset).is_none() {
            return Err(RejectCode::AssetUnknown);
        }
        if debit.0 != posting.asset || credit.0 != posting.asset {
            return Err(RejectCode::AssetMismatch);
        }
        if posting.debit.class() == ClassId::TRANSIT || posting.credit.class() == ClassId::TRANSIT {
            return Err(RejectCode::AccountKindInvalid);
        }
        for (account, (_, _, namespace)) in [(posting.debit, debit), (posting.credit, credit)] {
            if namespace == Namespace::Customer && !self.owns_customer(account) {
                return Err(RejectCode::AccountsOnDifferentShards);
            }
        }
        Ok(())
    }

    fn owns_customer(&self, account: AccountId) -> bool {
        let customer = crate::ids::CustomerId(account.owner());
        shard_for_customer(customer, self.config.shard_count) == self.config.shard
    }

    fn apply_transaction(&mut self, postings: &[Posting]) -> Result<(), RejectCode> {
        for (index, posting) in postings.iter().enumerate() {
            let amount = posting.amount.wide();
            self.move_value(
                posting.debit,
                posting.credit,
                posting.asset,
                Leg::Post(amount),
                PostingContext::of(index, postings.len(), true),
            )?;
        }
        Ok(())
    }

    fn apply_hold_create(
        &mut self,
        id: TxId,
        posting: &Posting,
        expires_at: Timestamp,
    ) -> Result<(), RejectCode> {
        if self.holds.len() >= self.config.limits.holds_open_max {
            return Err(RejectCode::HoldsFull);
        }
        let amount = posting.amount.wide();
        self.move_value(
            posting.debit,
            posting.credit,
            posting.asset,
            Leg::Reserve(amount),
            PostingContext::single(),
        )?;
        // A hold id is a fresh transaction id: it cannot collide with an open hold.
        assert!(self.holds.insert(id, Hold { posting: *posting, expires_at }).is_none());
        assert!(self.hold_deadlines.insert((expires_at, id)));
        Ok(())
    }

    fn open_hold(&self, id: TxId, now: Timestamp) -> Result<Hold, RejectCode> {
        match self.holds.get(&id) {
            Some(hold) if hold.expires_at <= now => Err(RejectCode::HoldExpired),
            Some(hold) => Ok(*hold),
            None => match self.holds_closed.get(&id, now) {
                Some(closure) => Err(closure.reject_code()),
                None => Err(RejectCode::HoldNotFound),
            },
        }
    }

    fn close_hold(&mut self, id: TxId, hold: &Hold, closure: HoldClosure, now: Timestamp) {
        assert!(self.holds.remove(&id).is_some());
        assert!(self.hold_deadlines.remove(&(hold.expires_at, id)));
        self.holds_closed.insert(id, closure, now);
    }

    fn apply_hold_capture(
        &mut self,
        id: TxId,
        amount: Option<Amount>,
        now: Timestamp,
    ) -> Result<(), RejectCode> {
        let hold = self.open_hold(id, now)?;
        let held = hold.posting.amount.wide();
        let captured = amount.map_or(held, Amount::wide);
        if captured > held {
            return Err(RejectCode::CaptureExceedsHold);
        }
        let posting = hold.posting;
        self.move_value(
            posting.debit,
            posting.credit,
            posting.asset,
            Leg::Capture { held, captured },
            PostingContext::single(),
        )?;
        self.close_hold(id, &hold, HoldClosure::Captured, now);
        Ok(())
    }

    fn apply_hold_release(
        &mut self,
        id: TxId,
        closure: HoldClosure,
        now: Timestamp,
    ) -> Result<(), RejectCode> {
        let hold = match closure {
            HoldClosure::Voided => self.open_hold(id, now)?,
            // The expiry record is the shard's own: the hold must be open and due.
            _ => match self.holds.get(&id) {
                Some(hold) if hold.expires_at <= now => *hold,
                Some(_) => return Err(RejectCode::HoldTimeoutInvalid),
                None => return Err(RejectCode::HoldNotFound),
            },
        };
        let posting = hold.posting;
        let held = posting.amount.wide();
        self.move_value(
            posting.debit,
            posting.credit,
            posting.asset,
            Leg::Release(held),
            PostingContext::single(),
        )?;
        self.close_hold(id, &hold, closure, now);
        Ok(())
    }

    /// Static checks of a cross-shard transfer: both ends customer accounts of one asset, the
    /// source here, the destination on `destination_shard`, which is another shard.
    pub fn check_transfer(
        &self,
        source: AccountId,
        destination: AccountId,
        destination_shard: ShardId,
    ) -> Result<AssetId, RejectCode> {
        if source == destination {
            return Err(RejectCode::AccountsSame);
        }
        let source_terms = self.registry.account_terms(source).ok_or(RejectCode::ClassUnknown)?;
        let destination_terms =
            self.registry.account_terms(destination).ok_or(RejectCode::ClassUnknown)?;
        if source_terms.0 != destination_terms.0 {
            return Err(RejectCode::AssetMismatch);
        }
        if source.class() == ClassId::TRANSIT
            || source_terms.2 != Namespace::Customer
            || destination_terms.2 != Namespace::Customer
        {
            return Err(RejectCode::AccountKindInvalid);
        }
        let destination_customer = crate::ids::CustomerId(destination.owner());
        if !self.owns_customer(source)
            || destination_shard == self.config.shard
            || shard_for_customer(destination_customer, self.config.shard_count)
                != destination_shard
        {
            return Err(RejectCode::AccountsOnDifferentShards);
        }
        Ok(source_terms.0)
    }

    fn apply_transfer_out(
        &mut self,
        transfer: &TransferOut,
        lsn: Lsn,
        fingerprint: u64,
        now: Timestamp,
    ) -> Result<(), RejectCode> {
        let asset = transfer.asset;
        if self.transfers_out.len() >= self.config.limits.transfers_in_flight_max {
            return Err(RejectCode::TransfersFull);
        }
        let next = &self.transfers_out_next[transfer.destination_shard.as_usize()];
        assert_eq!(transfer.sequence, *next, "transfer sequences are assigned in order");
        let transit = AccountId::transit(asset);
        self.move_value(
            transfer.source,
            transit,
            asset,
            Leg::Post(transfer.amount.wide()),
            PostingContext::single(),
        )?;
        self.transfers_out_next[transfer.destination_shard.as_usize()] += 1;
        let key = (transfer.destination_shard, transfer.sequence);
        self.transfers_out_by_tx.insert(transfer.header.id, key);
        self.transfers_out.insert(
            key,
            OutboundTransfer {
                tx_id: transfer.header.id,
                lsn,
                source: transfer.source,
                destination: transfer.destination,
                asset,
                amount: transfer.amount,
                origin: transfer.header.idempotency.map(|key| (transfer.header.terminal, key)),
                fingerprint,
                inserted: now,
            },
        );
        Ok(())
    }

    fn apply_transfer_in(&mut self, transfer: &TransferIn) -> Result<(), RejectCode> {
        let source = transfer.source_shard.as_usize();
        assert!(transfer.source_shard != self.config.shard);
        assert_eq!(
            transfer.sequence,
            self.transfers_in_last[source] + 1,
            "incoming transfers apply once, in order"
        );
        if transfer.accepted {
            let transit = AccountId::transit(transfer.asset);
            let amount = Leg::Post(transfer.amount.wide());
            self.move_value(
                transit,
                transfer.destination,
                transfer.asset,
                amount,
                PostingContext::single(),
            )?;
        } else {
            self.transfers_in_refused.insert((transfer.source_shard, transfer.sequence));
        }
        self.transfers_in_last[source] = transfer.sequence;
        Ok(())
    }

    fn apply_transfer_settle(&mut self, settle: &TransferSettle) -> Result<(), RejectCode> {
        let key = (settle.destination_shard, settle.sequence);
        let transfer = *self.transfers_out.get(&key).expect("settled transfers were sent");
        if !settle.accepted {
            let transit = AccountId::transit(transfer.asset);
            let amount = Leg::Post(transfer.amount.wide());
            self.move_value(
                transit,
                transfer.source,
                transfer.asset,
                amount,
                PostingContext::single(),
            )?;
            // Nothing can fail from here on: the refund is remembered under the request's
            // key (if the key is still remembered and still names this transfer), and marked
            // for the key index, which may hold the request's entry already.
            if let Some(origin) = transfer.origin
                && let Some(entry) = self.idempotency.get_mut(&origin)
                && entry.tx_id == transfer.tx_id
            {
                entry.refused = Some(RejectCode::TransferRefunded);
            }
            if let Some((terminal, key)) = transfer.origin
                && self.key_events_on
            {
                self.key_events.push(KeyEntry {
                    terminal,
                    key,
                    inserted: transfer.inserted,
                    fingerprint: transfer.fingerprint,
                    tx_id: transfer.tx_id,
                    lsn: transfer.lsn,
                    amount: transfer.amount.get(),
                    refused: Some(RejectCode::TransferRefunded),
                    mark: true,
                });
            }
        }
        self.transfers_out.remove(&key);
        self.transfers_out_by_tx.remove(&transfer.tx_id);
        Ok(())
    }

    /// Moves value between two accounts and the asset's totals, with undo entries.
    fn move_value(
        &mut self,
        debit: AccountId,
        credit: AccountId,
        asset: AssetId,
        leg: Leg,
        context: PostingContext,
    ) -> Result<(), RejectCode> {
        let debit_namespace = self.change_account(debit, Side::Debit, leg)?;
        let credit_namespace = self.change_account(credit, Side::Credit, leg)?;
        let flow = self.note_liability(debit, credit, leg, [debit_namespace, credit_namespace]);
        let index = usize::from(asset.0);
        let before = self.totals[index];
        let mut after = before;
        leg.apply(&mut after.debits_pending, &mut after.debits_posted)
            .ok_or(RejectCode::Overflow)?;
        leg.apply(&mut after.credits_pending, &mut after.credits_posted)
            .ok_or(RejectCode::Overflow)?;
        self.undo.push(Undo::Totals { asset, before });
        self.totals[index] = after;
        if let Some(journal) = self.journal.as_mut() {
            journal_leg(journal, debit, credit, asset, leg, flow);
        }
        let customer = |namespace| namespace == Namespace::Customer;
        self.note_history(
            debit,
            credit,
            leg,
            context,
            [customer(debit_namespace), customer(credit_namespace)],
        );
        Ok(())
    }

    /// Queues the history entries of a posting (one per customer account it touches).
    /// `customers`: whether the debit and the credit account are customer accounts.
    fn note_history(
        &mut self,
        debit: AccountId,
        credit: AccountId,
        leg: Leg,
        context: PostingContext,
        customers: [bool; 2],
    ) {
        let (amount, kind) = match leg {
            Leg::Post(amount) => (amount, 0),
            Leg::Reserve(amount) => (amount, HistoryEntry::HOLD),
            Leg::Capture { captured, .. } => (captured, 0),
            Leg::Release(held) => (held, HistoryEntry::RELEASE),
        };
        let amount = u64::try_from(amount).expect("amounts of postings fit in u64");
        self.moved = self.moved.saturating_add(amount);
        let reversible = if context.reversible { HistoryEntry::REVERSIBLE } else { 0 };
        for (account, counterparty, side, customer) in
            [(debit, credit, 0, customers[0]), (credit, debit, HistoryEntry::CREDIT, customers[1])]
        {
            if customer {
                self.history_pending.push(PendingEntry {
                    account,
                    counterparty,
                    amount,
                    flags: kind | side | reversible,
                    posting: context.index,
                    postings: context.count,
                });
            }
        }
    }

    /// Appends the queued history entries of a committed record.
    fn append_history(&mut self, record: &Record) {
        if self.history_pending.is_empty() {
            return;
        }
        let kind = match &record.body {
            Body::TransferIn(_) | Body::TransferSettle(_) => TxKind::TRANSFER,
            body => body.header().map_or(TxKind::GENERIC, |header| header.kind),
        };
        let tx_id = record.body.tx_id().expect("records that post are transactions");
        let mut pending = std::mem::take(&mut self.history_pending);
        for entry in pending.drain(..) {
            let sequence = self.history.next_sequence();
            let head = self.accounts.replace_history_head(&entry.account, sequence);
            // A forgotten predecessor is written as none, so that a ledger restored from a
            // snapshot (which knows no forgotten heads) writes the same entries.
            let previous = if self.history.get(head).is_some() { head } else { NO_ENTRY };
            let pushed = self.history.push(HistoryEntry {
                tx_id,
                timestamp: record.timestamp,
                kind,
                account: entry.account,
                counterparty: entry.counterparty,
                amount: entry.amount,
                flags: entry.flags,
                posting: entry.posting,
                postings: entry.postings,
                previous,
            });
            assert_eq!(pushed, sequence);
        }
        self.history_pending = pending;
    }

    /// The sequence of an account's newest history entry the ring still holds. A head that
    /// points at a forgotten entry is the same as none: a ledger restored from a snapshot
    /// only knows the heads of the entries it restored.
    fn history_head(&self, id: &AccountId) -> Option<u64> {
        let head = self.accounts.history_head(id);
        self.history.get(head).is_some().then_some(head)
    }

    /// History entries remembered (at most `history_capacity`).
    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    /// History entries remembered at most (`Limits::history_entries_max`).
    pub fn history_capacity(&self) -> usize {
        self.history.capacity()
    }

    /// The most recent history entries of an account, newest first, at most `limit`.
    pub fn history_of(&self, account: AccountId, limit: usize) -> Vec<HistoryEntry> {
        let mut entries = Vec::with_capacity(limit.min(64));
        let mut sequence = self.accounts.history_head(&account);
        while entries.len() < limit {
            match self.history.get(sequence) {
                Some(entry) if entry.account == account => {
                    entries.push(*entry);
                    sequence = entry.previous;
                }
                _ => break,
            }
        }
        entries
    }

    /// The postings that reverse transaction `original`: its own, debit and credit swapped.
    /// Refused when the transaction is not in the shard's history any more, is not a plain
    /// transaction touching customers with each of its postings, or was reversed already.
    pub fn reversal_postings(&self, original: TxId) -> Result<Postings, RejectCode> {
        let sequences = self.history.entries_of(original);
        if sequences.is_empty() {
            return Err(RejectCode::TransactionNotFound);
        }
        let first_sequence = sequences.start;
        let first = self.history.get(sequences.start).ok_or(RejectCode::TransactionNotFound)?;
        assert_eq!(first.tx_id, original, "entries_of finds the transaction's entries");
        let mut postings: Vec<Option<Posting>> = vec![None; usize::from(first.postings)];
        for sequence in sequences {
            let entry = self.history.get(sequence).ok_or(RejectCode::TransactionNotFound)?;
            if !entry.has(HistoryEntry::REVERSIBLE) {
                return Err(RejectCode::TransactionNotReversible);
            }
            if entry.has(HistoryEntry::REVERSED) {
                return Err(RejectCode::AlreadyReversed);
            }
            let (asset, _, _) =
                self.registry.account_terms(entry.account).ok_or(RejectCode::ClassUnknown)?;
            let amount = Amount::new(entry.amount).ok_or(RejectCode::AmountZero)?;
            // The reversing posting: the original's, the other way round.
            let (debit, credit) = if entry.has(HistoryEntry::CREDIT) {
                (entry.account, entry.counterparty)
            } else {
                (entry.counterparty, entry.account)
            };
            let slot = postings
                .get_mut(usize::from(entry.posting))
                .ok_or(RejectCode::TransactionNotReversible)?;
            *slot = Some(Posting { debit, credit, asset, amount });
        }
        // A posting without an entry touched no customer (not reversible), unless the ring
        // forgot the transaction's first entries: they were the oldest it held.
        let missing = if first_sequence == self.history.oldest() {
            RejectCode::TransactionNotFound
        } else {
            RejectCode::TransactionNotReversible
        };
        let postings = postings.into_iter().map(|posting| posting.ok_or(missing)).collect();
        self.check_purchase_reversible(original)?;
        postings
    }

    fn apply_reversal(&mut self, reversal: &Reversal) -> Result<(), RejectCode> {
        let expected = self.reversal_postings(reversal.original)?;
        if expected != reversal.postings {
            return Err(RejectCode::TransactionNotReversible);
        }
        for (index, posting) in reversal.postings.iter().enumerate() {
            let amount = Leg::Post(posting.amount.wide());
            self.move_value(
                posting.debit,
                posting.credit,
                posting.asset,
                amount,
                PostingContext::of(index, reversal.postings.len(), false),
            )?;
        }
        // Last, once nothing can fail any more: the original is reversed.
        for sequence in self.history.entries_of(reversal.original) {
            self.history.mark(sequence, HistoryEntry::REVERSED);
        }
        self.note_purchase_reversed(reversal.original);
        Ok(())
    }

    /// Applies one side of a posting to an account; returns the account's namespace.
    fn change_account(
        &mut self,
        id: AccountId,
        side: Side,
        leg: Leg,
    ) -> Result<Namespace, RejectCode> {
        let (_, flags, namespace) =
            self.registry.account_terms(id).expect("checked before posting");
        let apply = |account: &mut Account| -> Result<(), RejectCode> {
            // `Account` is packed: its counters are changed through copies.
            let (mut pending, mut posted) = match side {
                Side::Debit => (account.debits_pending, account.debits_posted),
                Side::Credit => (account.credits_pending, account.credits_posted),
            };
            leg.apply(&mut pending, &mut posted).ok_or(RejectCode::Overflow)?;
            match side {
                Side::Debit => (account.debits_pending, account.debits_posted) = (pending, posted),
                Side::Credit => {
                    (account.credits_pending, account.credits_posted) = (pending, posted);
                }
            }
            Ok(())
        };
        let bounded = self.customer_balances_bounded && namespace == Namespace::Customer;
        let within_bound = |before: &Account, after: &Account| {
            if !bounded {
                return Ok(());
            }
            let balance = after.balance_posted();
            if balance > CUSTOMER_BALANCE_MAX && balance > before.balance_posted() {
                return Err(RejectCode::Overflow);
            }
            Ok(())
        };
        // One hash lookup for an existing account (the common case): this is the hot path.
        if let Some(account) = self.accounts.get_mut(&id) {
            let before = *account;
            let mut after = before;
            apply(&mut after)?;
            within_bound(&before, &after)?;
            if !after.satisfies(flags) {
                return Err(flags_rejection(&after, flags, true));
            }
            *account = after;
            self.undo.push(Undo::Account { id, before: Some(before) });
        } else {
            let mut after = Account::default();
            apply(&mut after)?;
            within_bound(&Account::ZERO, &after)?;
            if !after.satisfies(flags) {
                return Err(flags_rejection(&after, flags, false));
            }
            self.accounts.insert(id, after);
            self.undo.push(Undo::Account { id, before: None });
        }
        Ok(namespace)
    }

    /// Recomputes every asset's sums from the accounts and checks them against the running
    /// totals, that debits equal credits, and that every account respects its flags. O(accounts).
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let fail = |message: String| Err(InvariantViolation { shard: self.config.shard, message });
        let mut sums = vec![AssetTotals::default(); self.totals.len()];
        for (id, account) in self.accounts.iter() {
            let Some((asset, flags, _)) = self.registry.account_terms(*id) else {
                return fail(format!("account {id:?} has an unknown class"));
            };
            if !account.satisfies(flags) {
                let name = self.registry.address(*id).map(|a| a.to_string()).unwrap_or_default();
                return fail(format!("account {name} breaks its flags: {account:?}"));
            }
            let Some(sum) = sums.get_mut(usize::from(asset.0)) else {
                return fail(format!("account {id:?} holds an asset without totals"));
            };
            let add = |total: &mut u128, value: u128| -> Option<()> {
                *total = total.checked_add(value)?;
                Some(())
            };
            let added = add(&mut sum.debits_posted, account.debits_posted)
                .and(add(&mut sum.credits_posted, account.credits_posted))
                .and(add(&mut sum.debits_pending, account.debits_pending))
                .and(add(&mut sum.credits_pending, account.credits_pending));
            if added.is_none() {
                return fail(format!("sums of asset {} overflow", asset.0));
            }
        }
        for (index, (sum, running)) in sums.iter().zip(&self.totals).enumerate() {
            let code = self.registry.assets()[index].code.as_str();
            if sum.debits_posted != sum.credits_posted || sum.debits_pending != sum.credits_pending
            {
                return fail(format!("asset {code} does not sum to zero: {sum:?}"));
            }
            if sum != running {
                return fail(format!(
                    "asset {code}: accounts sum to {sum:?}, totals say {running:?}"
                ));
            }
        }
        if self.holds.len() != self.hold_deadlines.len()
            || self
                .holds
                .iter()
                .any(|(id, hold)| !self.hold_deadlines.contains(&(hold.expires_at, *id)))
        {
            return fail("holds and their deadlines disagree".to_string());
        }
        let indexed = self
            .transfers_out
            .iter()
            .all(|(key, transfer)| self.transfers_out_by_tx.get(&transfer.tx_id) == Some(key));
        if !indexed || self.transfers_out_by_tx.len() != self.transfers_out.len() {
            return fail("unsettled transfers and their index by id disagree".to_string());
        }
        // Pending counters are exactly the open holds and the pending credits of purchases
        // whose points are held: each reserves its amount on its debit and credit account, and
        // nothing else is pending.
        let mut held: HashMap<AccountId, (u128, u128), Hasher> =
            HashMap::with_hasher(Hasher::default());
        let holds = self.holds.iter().map(|(id, hold)| {
            (*id, hold.posting.debit, hold.posting.credit, hold.posting.amount.wide())
        });
        for (id, debit, credit, amount) in holds.chain(self.held_purchase_credits()) {
            let sides = [(debit, (amount, 0)), (credit, (0, amount))];
            for (account, (debit, credit)) in sides {
                let entry = held.entry(account).or_default();
                match (entry.0.checked_add(debit), entry.1.checked_add(credit)) {
                    (Some(debits), Some(credits)) => *entry = (debits, credits),
                    _ => return fail(format!("holds on account {account:?} overflow ({id:?})")),
                }
            }
        }
        for (id, account) in self.accounts.iter() {
            let expected =
                if held.is_empty() { (0, 0) } else { held.remove(id).unwrap_or_default() };
            let pending = (account.debits_pending, account.credits_pending);
            if pending != expected {
                return fail(format!(
                    "account {id:?}: pending {}/{} but its open holds reserve {}/{}",
                    pending.0, pending.1, expected.0, expected.1
                ));
            }
        }
        if let Some((account, _)) = held.into_iter().next() {
            return fail(format!("an open hold names account {account:?}, which does not exist"));
        }
        if !self.class_totals_match() {
            return fail("the customer classes' totals do not add up to their accounts".into());
        }
        if !self.members.tier_counts_match() {
            return fail("the members per tier do not match the members' tiers".into());
        }
        self.check_lot_invariants().or_else(fail)
    }
}
