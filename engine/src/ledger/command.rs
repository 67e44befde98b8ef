//! What clients ask of a shard (`Command`) and what they get back (`Response`).
//!
//! A `Request` is a write: the shard turns it into a record, applies it, logs it, and answers
//! once the record is durable. A `Query` is a read, answered in the same order as the writes
//! around it, after the batch it arrived in is durable, so that nobody sees state that a crash
//! could still take away.

use super::account::{Account, AccountId, AssetId};
use super::history::HistoryEntry;
use super::record::{Metadata, Posting, Postings, TxKind};
use crate::amount::Amount;
use crate::ids::{IdempotencyKey, Lsn, TerminalId, Timestamp, TxId};
use crate::loyalty::pricing::Lines;
use crate::reject::RejectCode;

/// A client write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The terminal it comes from.
    pub terminal: TerminalId,
    /// The client's key for this logical write; required.
    pub idempotency: Option<IdempotencyKey>,
    /// The business meaning.
    pub kind: TxKind,
    /// Store, category, receipt.
    pub metadata: Metadata,
    /// What to do.
    pub operation: Operation,
}

/// The operations of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Commit 1..=N postings, all or none. Every customer account must live on one shard.
    Post {
        /// The postings.
        postings: Postings,
    },
    /// Reserve one posting until it is captured, voided, or `timeout_nanos` pass.
    Hold {
        /// The posting reserved.
        posting: Posting,
        /// Time until the hold expires.
        timeout_nanos: u64,
    },
    /// Capture a hold, whole or part.
    Capture {
        /// The hold's id.
        hold: TxId,
        /// How much to capture; `None` for all of it.
        amount: Option<Amount>,
    },
    /// Release a hold.
    Void {
        /// The hold's id.
        hold: TxId,
    },
    /// Reverse an earlier transaction of this shard by its id: post its postings the other way
    /// round (see `Ledger::reversal_postings`).
    Reverse {
        /// The transaction to reverse.
        original: TxId,
    },
    /// A purchase by a member: the shard prices the basket by the rule version in force and
    /// credits the points (earned and bonus lots) and the cashback it earns.
    Purchase {
        /// The member.
        customer: u64,
        /// The basket: 1..=32 lines.
        lines: Lines,
    },
    /// A settlement, failure or refund of a purchase (docs/loyalty.md, "Purchase lifecycle
    /// and refunds"). By receipt, the store and receipt are the request's metadata.
    PurchaseChange {
        /// The purchase.
        reference: super::record::PurchaseRef,
        /// What happens to it.
        event: super::record::PurchaseEvent,
    },
    /// Convert `amount` of a member's points of `from` into `to` at the exchange rate in force
    /// (docs/loyalty.md, "Partner exchange"): one transaction on the member's shard.
    Convert {
        /// The member.
        customer: u64,
        /// The asset given.
        from: AssetId,
        /// The asset received.
        to: AssetId,
        /// Points of `from` given.
        amount: Amount,
    },
    /// Move `amount` from one customer account to another customer account of the same asset,
    /// on the same shard or on another one.
    Transfer {
        /// The customer account debited.
        source: AccountId,
        /// The customer account credited.
        destination: AccountId,
        /// How much.
        amount: Amount,
    },
}

/// A client read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// An account's counters.
    Account(AccountId),
    /// An open hold.
    Hold(TxId),
    /// The most recent postings of an account, newest first.
    History {
        /// The account.
        account: AccountId,
        /// Entries at most (the engine caps it at `HISTORY_PAGE_MAX`).
        limit: u16,
    },
    /// A page of a customer's history, newest first (`Response::HistoryPage`): entries below
    /// ring sequence `before` (all when `None`) that `filter` keeps.
    HistoryPage {
        /// The customer (it names the shard).
        customer: u64,
        /// Resume below this ring sequence.
        before: Option<u64>,
        /// Entries at most (the engine caps it at `HISTORY_PAGE_MAX`).
        limit: u16,
        /// Time range, kind and account class.
        filter: super::pages::HistoryFilter,
    },
    /// A customer's open holds and refundable purchases among their recent postings
    /// (`Response::Activity`).
    Activity {
        /// The customer (it names the shard).
        customer: u64,
    },
    /// The shard's running sums per asset (`Response::Totals`): what the global
    /// sum-of-balances check adds up.
    Totals,
    /// The history entries of a transaction (`Response::History`), on the shard of its id.
    Transaction {
        /// The transaction.
        tx: TxId,
    },
    /// A member's tier, lots and points expiring within `within_days` days.
    Member {
        /// The member.
        customer: u64,
        /// Days ahead to count expiring points over (0: today).
        within_days: u16,
    },
    /// Why a purchase earned what it did (`Response::Explanation`), while its shard remembers it.
    Explain {
        /// The purchase's transaction id (it names the shard).
        tx: TxId,
    },
    /// The points in the shard's lots by the month they expire in (`Response::Liability`).
    Liability,
    /// A refundable purchase's lifecycle entry (state, spend, what it gave and what was
    /// refunded), on the shard of its id.
    Purchase {
        /// The purchase.
        tx: TxId,
    },
    /// A page of one shard's refundable purchases made on days `from_day..=to_day` (UTC day
    /// numbers), with their receipt keys, in id order (`Response::Purchases`): what a
    /// settlement report is matched against.
    Purchases {
        /// The shard.
        shard: u16,
        /// The first day.
        from_day: u32,
        /// The last day.
        to_day: u32,
        /// Resume after this purchase (the last of the previous page).
        after: Option<TxId>,
        /// Entries at most (the engine caps it at `PURCHASES_PAGE_MAX`).
        limit: u16,
    },
    /// Whether the shard of `account` remembers a committed write of `terminal` under `key`
    /// (answered `Response::Remembered`): how a write that would post nothing learns whether
    /// its key is taken, in order with the writes around it.
    Idempotency {
        /// The customer account the write names (it decides the shard).
        account: AccountId,
        /// The terminal.
        terminal: TerminalId,
        /// The key.
        key: IdempotencyKey,
    },
}

/// A member's loyalty state as a query sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// The tier the rules in force give the member now (the window may have rolled past old
    /// points since their last purchase).
    pub tier: u8,
    /// The tier their last purchase recorded.
    pub tier_recorded: u8,
    /// Purchase points in the tier window up to now.
    pub qualifying: u64,
    /// Purchase points today and this month (UTC), for the caps.
    pub caps_used: crate::loyalty::CapsUsed,
    /// Lots held (may be more than `lots` lists).
    pub lot_count: usize,
    /// The first `MEMBER_LOTS_MAX` lots, the earliest expiry first.
    pub lots: Vec<crate::loyalty::lots::Lot>,
    /// Points in lots that expire within the query's `within_days` (by 00:00 UTC of today +
    /// `within_days` + 1).
    pub expiring: u64,
    /// Points open holds took out of the lots.
    pub held: u64,
}

/// Lots a member query lists at most.
pub const MEMBER_LOTS_MAX: usize = 256;

/// Purchases a `Query::Purchases` page holds at most.
pub const PURCHASES_PAGE_MAX: usize = 4096;

/// Entries a history query returns at most.
pub const HISTORY_PAGE_MAX: usize = 256;

/// Anything a shard is asked to do for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A write.
    Write(Request),
    /// A read.
    Read(Query),
}

/// A committed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The transaction's id.
    pub tx_id: TxId,
    /// Its position in its shard's WAL.
    pub lsn: Lsn,
    /// When its shard decided it.
    pub timestamp: Timestamp,
    /// What it moved: the sum of its postings' amounts (saturating at `u64::MAX`); for a hold
    /// the amount reserved, for a capture the amount captured, for a void the amount
    /// released, for a cross-shard transfer the amount sent, for a conversion the points
    /// credited. A retry gets the same figure.
    pub amount: u64,
}

/// An open hold as a query sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldView {
    /// The reserved posting.
    pub posting: Posting,
    /// When it expires.
    pub expires_at: Timestamp,
}

/// An account as a query sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountView {
    /// The asset it holds.
    pub asset: AssetId,
    /// Its counters.
    pub counters: Account,
}

/// The answer to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The write is durable.
    Committed(Committed),
    /// The write repeats an earlier one with the same idempotency key and payload; nothing was
    /// posted, and this is the original result.
    Duplicate(Committed),
    /// Refused; nothing changed.
    Rejected(RejectCode),
    /// An account's state.
    Account(AccountView),
    /// An open hold.
    Hold(HoldView),
    /// An account's recent postings, newest first.
    History(Vec<HistoryEntry>),
    /// Whether a key is remembered (`Query::Idempotency`).
    Remembered(bool),
    /// A member's loyalty state.
    Member(Box<MemberView>),
    /// Why a purchase earned what it did.
    Explanation(Box<crate::loyalty::explain::Explanation>),
    /// One shard's liability figures (`Query::Liability`).
    Liability(Box<super::liability::ShardLiability>),
    /// A purchase's lifecycle entry (`Query::Purchase`).
    Purchase(crate::loyalty::purchases::Refundable),
    /// A page of a shard's purchases with their receipt keys (`Query::Purchases`).
    Purchases(Vec<(crate::loyalty::purchases::Refundable, u64)>),
    /// A page of a customer's history (`Query::HistoryPage`).
    HistoryPage(Box<super::pages::HistoryPage>),
    /// One shard's running sums per asset, by asset id (`Query::Totals`).
    Totals(Vec<super::AssetTotals>),
    /// A customer's open holds and refundable purchases (`Query::Activity`).
    Activity(Box<super::pages::CustomerActivity>),
}

impl Response {
    /// The committed result, for a fresh or repeated write.
    pub fn committed(&self) -> Option<Committed> {
        match self {
            Response::Committed(committed) | Response::Duplicate(committed) => Some(*committed),
            _ => None,
        }
    }

    /// The rejection, if the command was refused.
    pub fn rejected(&self) -> Option<RejectCode> {
        match self {
            Response::Rejected(code) => Some(*code),
            _ => None,
        }
    }
}
