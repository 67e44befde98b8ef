//! What the WAL records: the decided form of every state change.
//!
//! A `Record` is what a shard applies, live or at replay, through the one function
//! `Ledger::apply`. Clients send `Request`s (module `command`); the shard turns each into a
//! `Body` stamped with an id, and only bodies that apply cleanly reach the WAL. The byte layout
//! of each body is in `wal::payload` and specified in docs/wal-format.md.

use std::fmt;
use std::sync::Arc;

use super::account::{AccountFlags, AccountId, AssetId, ClassId, Name, Namespace};
use crate::amount::Amount;
use crate::ids::{IdempotencyKey, Lsn, ShardId, TerminalId, Timestamp, TxId};
use crate::limits::RECEIPT_BYTES_MAX;
use crate::loyalty::exchange::{Priced, RateTerms};
use crate::loyalty::lots::Parts;
use crate::loyalty::pricing::{Lines, PurchaseOutcome};
use crate::loyalty::programme::ProgrammeAccounts;
use crate::loyalty::rules::RuleSet;
use crate::reject::RejectCode;

/// The business meaning of a transaction. Values are stable; unknown values read from a newer
/// WAL are kept as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxKind(pub u16);

impl TxKind {
    /// A generic posting with no business meaning attached.
    pub const GENERIC: TxKind = TxKind(0);
    /// Points earned by a purchase.
    pub const PURCHASE: TxKind = TxKind(1);
    /// Points spent.
    pub const REDEEM: TxKind = TxKind(2);
    /// A manual correction by an operator.
    pub const ADJUSTMENT: TxKind = TxKind(3);
    /// An offsetting transaction that reverses an earlier one.
    pub const REVERSAL: TxKind = TxKind(4);
    /// Points moved between customers.
    pub const TRANSFER: TxKind = TxKind(5);
    /// Points taken back after a refunded purchase.
    pub const REFUND: TxKind = TxKind(6);
    /// Points that reached their expiry date.
    pub const EXPIRY: TxKind = TxKind(7);
    /// Points exchanged with a partner.
    pub const EXCHANGE: TxKind = TxKind(8);

    /// A stable lowercase name for known kinds.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            TxKind::GENERIC => "generic",
            TxKind::PURCHASE => "purchase",
            TxKind::REDEEM => "redeem",
            TxKind::ADJUSTMENT => "adjustment",
            TxKind::REVERSAL => "reversal",
            TxKind::TRANSFER => "transfer",
            TxKind::REFUND => "refund",
            TxKind::EXPIRY => "expiry",
            TxKind::EXCHANGE => "exchange",
            _ => return None,
        })
    }
}

impl fmt::Display for TxKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "kind-{}", self.0),
        }
    }
}

/// A receipt reference: at most `RECEIPT_BYTES_MAX` bytes of UTF-8, stored inline so that
/// metadata never allocates.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Receipt {
    len: u8,
    bytes: [u8; RECEIPT_BYTES_MAX],
}

impl Receipt {
    /// The empty receipt.
    pub const EMPTY: Receipt = Receipt { len: 0, bytes: [0; RECEIPT_BYTES_MAX] };

    /// A receipt reference, refused when longer than `RECEIPT_BYTES_MAX` bytes.
    pub fn new(text: &str) -> Result<Receipt, RejectCode> {
        let source = text.as_bytes();
        if source.len() > RECEIPT_BYTES_MAX {
            return Err(RejectCode::ReceiptTooLong);
        }
        let mut bytes = [0; RECEIPT_BYTES_MAX];
        bytes[..source.len()].copy_from_slice(source);
        let len = u8::try_from(source.len()).expect("bounded by RECEIPT_BYTES_MAX");
        Ok(Receipt { len, bytes })
    }

    /// The receipt text.
    pub fn as_str(&self) -> &str {
        let bytes = &self.bytes[..usize::from(self.len)];
        std::str::from_utf8(bytes).expect("built from a str")
    }
}

impl fmt::Debug for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Default for Receipt {
    fn default() -> Receipt {
        Receipt::EMPTY
    }
}

/// Who made an operator's write and why (the admin API's writes; WAL format 7): kept in the
/// write's record, so the WAL itself says it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Annotation {
    actor: String,
    reason: String,
}

impl Annotation {
    /// An annotation: `actor` 1..=`ANNOTATION_ACTOR_BYTES_MAX` bytes of `[A-Za-z0-9_.@-]` (a
    /// token's name), `reason` 1..=`ANNOTATION_REASON_BYTES_MAX` bytes of UTF-8 without control
    /// characters and not blank.
    pub fn new(actor: &str, reason: &str) -> Result<Annotation, &'static str> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "_.@-".contains(c);
        if actor.is_empty()
            || actor.len() > crate::limits::ANNOTATION_ACTOR_BYTES_MAX
            || !actor.chars().all(allowed)
        {
            return Err("the actor must be 1 to 64 characters of A-Z a-z 0-9 _ . @ -");
        }
        if reason.trim().is_empty()
            || reason.len() > crate::limits::ANNOTATION_REASON_BYTES_MAX
            || reason.chars().any(char::is_control)
        {
            return Err(
                "the reason must be 1 to 512 bytes of text, not blank, no control characters",
            );
        }
        Ok(Annotation { actor: actor.to_string(), reason: reason.to_string() })
    }

    /// Who made the write.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// Why.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Bounded facts about where a transaction came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Metadata {
    /// The store (0 = none).
    pub store: u32,
    /// The product or merchant category (0 = none).
    pub category: u16,
    /// The receipt number printed at the till.
    pub receipt: Receipt,
    /// For an operator's write: who and why (shared, since headers are copied around).
    pub annotation: Option<Arc<Annotation>>,
}

/// One movement of value: `amount` of `asset` from `debit` to `credit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Posting {
    /// The account debited.
    pub debit: AccountId,
    /// The account credited.
    pub credit: AccountId,
    /// The asset moved; both accounts must hold it.
    pub asset: AssetId,
    /// How much, in minor units; never zero.
    pub amount: Amount,
}

/// The postings of a transaction: inline up to two (the common case: earn, redeem, transfer),
/// so that most transactions need no heap allocation.
pub type Postings = smallvec::SmallVec<[Posting; 2]>;

/// What every client-originated record carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxHeader {
    /// The transaction's id, assigned by the shard.
    pub id: TxId,
    /// The business meaning.
    pub kind: TxKind,
    /// The terminal the request came from; scopes the idempotency key.
    pub terminal: TerminalId,
    /// The client's idempotency key (required for client writes).
    pub idempotency: Option<IdempotencyKey>,
    /// Where the transaction came from.
    pub metadata: Metadata,
}

/// A committed transaction of 1..=N postings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Id, kind, idempotency and metadata.
    pub header: TxHeader,
    /// The postings, applied all or none.
    pub postings: Postings,
}

/// A hold: one posting reserved (pending) until captured, voided or expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldCreate {
    /// Id (the hold's id), kind, idempotency and metadata.
    pub header: TxHeader,
    /// The reserved posting.
    pub posting: Posting,
    /// How long after the record's timestamp the hold expires if nobody captures or voids it.
    /// The record keeps the request's timeout, not a deadline, so that a retry made later is
    /// recognised as the same request.
    pub timeout_nanos: u64,
}

/// Capture of a hold, whole (`amount: None`) or part; the rest is released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldCapture {
    /// Id, kind, idempotency and metadata of the capture itself.
    pub header: TxHeader,
    /// The hold captured.
    pub hold: TxId,
    /// The amount captured; `None` captures all of it.
    pub amount: Option<Amount>,
}

/// Void of a hold: its reservation is released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldVoid {
    /// Id, kind, idempotency and metadata of the void itself.
    pub header: TxHeader,
    /// The hold voided.
    pub hold: TxId,
}

/// Expiry of a hold at its timeout, written by the shard itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldExpire {
    /// The expiry's own transaction id.
    pub id: TxId,
    /// The hold that expired.
    pub hold: TxId,
}

/// Step 1 of a cross-shard transfer, on the source shard: the source customer is debited and
/// the source shard's transit account credited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferOut {
    /// Id, kind, idempotency and metadata of the transfer.
    pub header: TxHeader,
    /// The shard of the destination customer.
    pub destination_shard: ShardId,
    /// Position of this transfer in the stream from this shard to `destination_shard`
    /// (1, 2, 3…): the destination applies each exactly once, in order.
    pub sequence: u64,
    /// The customer account debited.
    pub source: AccountId,
    /// The customer account to be credited on the destination shard.
    pub destination: AccountId,
    /// The asset moved.
    pub asset: AssetId,
    /// The amount moved.
    pub amount: Amount,
}

/// Step 2 of a cross-shard transfer, on the destination shard: its transit account is debited
/// and the destination customer credited (or, if that credit is impossible, nothing moves and
/// the source shard refunds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferIn {
    /// This step's own transaction id.
    pub id: TxId,
    /// The shard that sent the transfer.
    pub source_shard: ShardId,
    /// The transfer's position in the stream from `source_shard` to this shard.
    pub sequence: u64,
    /// The id of step 1 on the source shard.
    pub source_tx: TxId,
    /// The customer account debited on the source shard.
    pub source: AccountId,
    /// The customer account credited here.
    pub destination: AccountId,
    /// The asset moved.
    pub asset: AssetId,
    /// The amount moved.
    pub amount: Amount,
    /// Whether the credit was made; `false` only when it would overflow the destination.
    pub accepted: bool,
}

/// Step 3 of a cross-shard transfer, on the source shard: the destination acknowledged step 2.
/// When it refused the credit, the source customer is refunded from transit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferSettle {
    /// This step's own transaction id.
    pub id: TxId,
    /// The destination shard of the settled transfer.
    pub destination_shard: ShardId,
    /// The transfer's position in the stream to `destination_shard`.
    pub sequence: u64,
    /// Whether the destination made the credit.
    pub accepted: bool,
}

/// A reversal: the postings of an earlier transaction, debit and credit swapped, which marks
/// that transaction reversed. Only a plain transaction whose every posting touches a customer
/// account, still in the shard's history, can be reversed, and only once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reversal {
    /// Id, kind, idempotency and metadata of the reversal itself.
    pub header: TxHeader,
    /// The transaction reversed.
    pub original: TxId,
    /// The offsetting postings.
    pub postings: Postings,
}

/// Definition of an asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetDefine {
    /// The id the asset gets: the next one.
    pub id: AssetId,
    /// Its code.
    pub code: Name,
    /// Its decimal scale.
    pub scale: u8,
}

/// Definition of an account class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassDefine {
    /// The id the class gets: the next one.
    pub id: ClassId,
    /// Its namespace.
    pub namespace: Namespace,
    /// Its name.
    pub name: Name,
    /// The asset its accounts hold.
    pub asset: AssetId,
    /// Its accounts' flags.
    pub flags: AccountFlags,
}

/// A version of the loyalty programme's rules (docs/loyalty.md, "Rule versions"), recorded
/// on every shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesDefine {
    /// The version's number: the next one.
    pub version: u32,
    /// The effective time asked for; 0 for "at once" (each shard's record time).
    pub effective_at: Timestamp,
    /// The classes the programme posts to.
    pub accounts: ProgrammeAccounts,
    /// The rules, checked.
    pub rules: Arc<RuleSet>,
}

/// A purchase priced by the loyalty programme (docs/loyalty.md): what the till sent (the
/// customer and the basket; the store and receipt are in the header) and what the shard decided
/// (the rule version, the tiers and every component). Its postings follow from the outcome:
/// `earned + bonus` points from the version's issuance class to the customer's points account,
/// and `cashback` from the cashback funding class to the customer's cashback account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purchase {
    /// Id, kind (purchase), terminal, key, store and receipt.
    pub header: TxHeader,
    /// The member.
    pub customer: u64,
    /// The basket: 1..=32 lines.
    pub lines: Lines,
    /// What it earned and why.
    pub outcome: PurchaseOutcome,
}

/// Expiry of a customer's due lots at their day, written by the shard itself: each lot's
/// whole remainder moves from the customer's points account to the breakage class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LotsExpire {
    /// The expiry's own transaction id.
    pub id: TxId,
    /// The member.
    pub customer: u64,
    /// The lots expired, each with its whole remainder (1..=255).
    pub lots: Parts,
}

/// How a request names a purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurchaseRef {
    /// By its transaction id.
    Id(TxId),
    /// By the store and receipt of the request's metadata, for this member.
    Receipt {
        /// The member (it routes the request to their shard).
        customer: u64,
    },
}

/// What happens to a purchase after the till (docs/loyalty.md, "Purchase lifecycle and
/// refunds").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurchaseEvent {
    /// Its payment is confirmed.
    Settle,
    /// Its payment failed or was charged back: what is left of it is taken back.
    Fail,
    /// Part of its spend is refunded.
    RefundAmount(Amount),
    /// Some of its lines are returned, as the receipt shows them (1..=32).
    RefundLines(Lines),
}

/// What a transition of a purchase did, decided by the shard and checked again at replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransitionOutcome {
    /// The purchase.
    pub purchase: TxId,
    /// Its member.
    pub customer: u64,
    /// Its state after (`LifecycleState` as a byte).
    pub state: u8,
    /// How much of its refund basis (spend, or weighted spend for refunds by lines) is
    /// refunded after this transition.
    pub refunded: u64,
    /// Earned points taken back.
    pub earned: u64,
    /// Bonus points taken back.
    pub bonus: u64,
    /// Cashback taken back.
    pub cashback: u64,
    /// Of `earned + bonus`, what the member's lots could not give: owed on their clawback
    /// account.
    pub points_owed: u64,
    /// Of `cashback`, what their cashback balance could not give: owed on their cashback
    /// clawback account.
    pub cashback_owed: u64,
    /// The member's tier after it (a refund or failure never raises it).
    pub tier_after: u8,
}

impl Default for TransitionOutcome {
    /// Nothing decided yet (a request refused before the shard decided it).
    fn default() -> TransitionOutcome {
        TransitionOutcome {
            purchase: TxId(0),
            customer: 0,
            state: 0,
            refunded: 0,
            earned: 0,
            bonus: 0,
            cashback: 0,
            points_owed: 0,
            cashback_owed: 0,
            tier_after: 0,
        }
    }
}

/// A settlement, failure or refund of a purchase: a client write, one record of kind 12, 13
/// or 14 by its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchaseChange {
    /// Id, kind, terminal, key; the store and receipt find the purchase by receipt.
    pub header: TxHeader,
    /// The purchase, as the request named it.
    pub reference: PurchaseRef,
    /// What happens to it.
    pub event: PurchaseEvent,
    /// What the shard decided.
    pub outcome: TransitionOutcome,
}

/// The end of a pending purchase's hold on its points, `pending_hold_days` after it, written
/// by the shard: its points and cashback become available though its payment is not confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurchaseRelease {
    /// The release's own transaction id.
    pub id: TxId,
    /// The purchase.
    pub purchase: TxId,
}

/// A rate of the partner exchange (docs/loyalty.md, "Partner exchange"), recorded on every
/// shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDefine {
    /// The rate's version: the next one.
    pub version: u32,
    /// The effective time asked for; 0 for "at once" (each shard's record time).
    pub effective_at: Timestamp,
    /// The pair, its ratio and the accounts its conversions post to.
    pub terms: RateTerms,
}

/// A conversion of a member's points of one asset into another at the rate in force: one
/// transaction on the member's shard (postings: `exchange::conversion_postings`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversion {
    /// Id, kind, terminal, key and metadata.
    pub header: TxHeader,
    /// The member.
    pub customer: u64,
    /// The asset converted from.
    pub from: AssetId,
    /// The asset converted to.
    pub to: AssetId,
    /// Points of `from` the member gives.
    pub amount: Amount,
    /// What the shard decided: the rate version, the points credited and the two values.
    pub priced: Priced,
}

/// The body of one WAL record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A committed transaction.
    Transaction(Transaction),
    /// A hold was created.
    HoldCreate(HoldCreate),
    /// A hold was captured.
    HoldCapture(HoldCapture),
    /// A hold was voided.
    HoldVoid(HoldVoid),
    /// A hold expired.
    HoldExpire(HoldExpire),
    /// Step 1 of a cross-shard transfer.
    TransferOut(TransferOut),
    /// Step 2 of a cross-shard transfer.
    TransferIn(TransferIn),
    /// Step 3 of a cross-shard transfer.
    TransferSettle(TransferSettle),
    /// An earlier transaction was reversed.
    Reversal(Reversal),
    /// An asset was defined.
    AssetDefine(AssetDefine),
    /// An account class was defined.
    ClassDefine(ClassDefine),
    /// A rule version of the loyalty programme was recorded.
    RulesDefine(RulesDefine),
    /// A purchase earned points (and cashback) by the programme's rules.
    Purchase(Purchase),
    /// Due lots of a customer expired.
    LotsExpire(LotsExpire),
    /// A purchase was settled, failed or refunded.
    PurchaseChange(PurchaseChange),
    /// A pending purchase's points stopped being held.
    PurchaseRelease(PurchaseRelease),
    /// A rate of the partner exchange was recorded.
    RateDefine(RateDefine),
    /// A member's points were converted into another asset.
    Conversion(Conversion),
}

/// The kind field of a record frame (docs/wal-format.md, "Record kinds").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum RecordKind {
    /// `Body::Transaction`.
    Transaction = 1,
    /// `Body::HoldCreate`.
    HoldCreate = 2,
    /// `Body::HoldCapture`.
    HoldCapture = 3,
    /// `Body::HoldVoid`.
    HoldVoid = 4,
    /// `Body::HoldExpire`.
    HoldExpire = 5,
    /// `Body::TransferOut`.
    TransferOut = 6,
    /// `Body::TransferIn`.
    TransferIn = 7,
    /// `Body::TransferSettle`.
    TransferSettle = 8,
    /// `Body::Reversal` (format version 2).
    Reversal = 9,
    /// `Body::Purchase` (format version 4).
    Purchase = 10,
    /// `Body::LotsExpire` (format version 4).
    LotsExpire = 11,
    /// `Body::PurchaseChange` settling a purchase (format version 5).
    PurchaseSettle = 12,
    /// `Body::PurchaseChange` failing a purchase (format version 5).
    PurchaseFail = 13,
    /// `Body::PurchaseChange` refunding part of a purchase (format version 5).
    PurchaseRefund = 14,
    /// `Body::PurchaseRelease` (format version 5).
    PurchaseRelease = 15,
    /// `Body::AssetDefine`.
    AssetDefine = 16,
    /// `Body::ClassDefine`.
    ClassDefine = 17,
    /// `Body::RulesDefine` (format version 4).
    RulesDefine = 18,
    /// `Body::RateDefine` (format version 6).
    RateDefine = 19,
    /// `Body::Conversion` (format version 6).
    Conversion = 20,
}

impl RecordKind {
    /// The kind for a frame's kind field.
    pub fn from_u16(value: u16) -> Option<RecordKind> {
        Some(match value {
            1 => RecordKind::Transaction,
            2 => RecordKind::HoldCreate,
            3 => RecordKind::HoldCapture,
            4 => RecordKind::HoldVoid,
            5 => RecordKind::HoldExpire,
            6 => RecordKind::TransferOut,
            7 => RecordKind::TransferIn,
            8 => RecordKind::TransferSettle,
            9 => RecordKind::Reversal,
            10 => RecordKind::Purchase,
            11 => RecordKind::LotsExpire,
            12 => RecordKind::PurchaseSettle,
            13 => RecordKind::PurchaseFail,
            14 => RecordKind::PurchaseRefund,
            15 => RecordKind::PurchaseRelease,
            16 => RecordKind::AssetDefine,
            17 => RecordKind::ClassDefine,
            18 => RecordKind::RulesDefine,
            19 => RecordKind::RateDefine,
            20 => RecordKind::Conversion,
            _ => return None,
        })
    }

    /// A stable lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Transaction => "transaction",
            RecordKind::HoldCreate => "hold_create",
            RecordKind::HoldCapture => "hold_capture",
            RecordKind::HoldVoid => "hold_void",
            RecordKind::HoldExpire => "hold_expire",
            RecordKind::TransferOut => "transfer_out",
            RecordKind::TransferIn => "transfer_in",
            RecordKind::TransferSettle => "transfer_settle",
            RecordKind::Reversal => "reversal",
            RecordKind::Purchase => "purchase",
            RecordKind::LotsExpire => "lots_expire",
            RecordKind::PurchaseSettle => "purchase_settle",
            RecordKind::PurchaseFail => "purchase_fail",
            RecordKind::PurchaseRefund => "purchase_refund",
            RecordKind::PurchaseRelease => "purchase_release",
            RecordKind::AssetDefine => "asset_define",
            RecordKind::ClassDefine => "class_define",
            RecordKind::RulesDefine => "rules_define",
            RecordKind::RateDefine => "rate_define",
            RecordKind::Conversion => "conversion",
        }
    }
}

impl Body {
    /// The record kind of this body.
    pub fn kind(&self) -> RecordKind {
        match self {
            Body::Transaction(_) => RecordKind::Transaction,
            Body::HoldCreate(_) => RecordKind::HoldCreate,
            Body::HoldCapture(_) => RecordKind::HoldCapture,
            Body::HoldVoid(_) => RecordKind::HoldVoid,
            Body::HoldExpire(_) => RecordKind::HoldExpire,
            Body::TransferOut(_) => RecordKind::TransferOut,
            Body::TransferIn(_) => RecordKind::TransferIn,
            Body::TransferSettle(_) => RecordKind::TransferSettle,
            Body::Reversal(_) => RecordKind::Reversal,
            Body::AssetDefine(_) => RecordKind::AssetDefine,
            Body::ClassDefine(_) => RecordKind::ClassDefine,
            Body::RulesDefine(_) => RecordKind::RulesDefine,
            Body::Purchase(_) => RecordKind::Purchase,
            Body::LotsExpire(_) => RecordKind::LotsExpire,
            Body::PurchaseChange(change) => match change.event {
                PurchaseEvent::Settle => RecordKind::PurchaseSettle,
                PurchaseEvent::Fail => RecordKind::PurchaseFail,
                PurchaseEvent::RefundAmount(_) | PurchaseEvent::RefundLines(_) => {
                    RecordKind::PurchaseRefund
                }
            },
            Body::PurchaseRelease(_) => RecordKind::PurchaseRelease,
            Body::RateDefine(_) => RecordKind::RateDefine,
            Body::Conversion(_) => RecordKind::Conversion,
        }
    }

    /// The header of a client-originated body.
    pub fn header(&self) -> Option<&TxHeader> {
        match self {
            Body::Transaction(tx) => Some(&tx.header),
            Body::HoldCreate(hold) => Some(&hold.header),
            Body::HoldCapture(capture) => Some(&capture.header),
            Body::HoldVoid(void) => Some(&void.header),
            Body::TransferOut(transfer) => Some(&transfer.header),
            Body::Reversal(reversal) => Some(&reversal.header),
            Body::Purchase(purchase) => Some(&purchase.header),
            Body::PurchaseChange(change) => Some(&change.header),
            Body::Conversion(conversion) => Some(&conversion.header),
            Body::HoldExpire(_)
            | Body::LotsExpire(_)
            | Body::PurchaseRelease(_)
            | Body::TransferIn(_)
            | Body::TransferSettle(_)
            | Body::AssetDefine(_)
            | Body::ClassDefine(_)
            | Body::RulesDefine(_)
            | Body::RateDefine(_) => None,
        }
    }

    /// The transaction id of this record, if it is a transaction (definitions are not).
    pub fn tx_id(&self) -> Option<TxId> {
        match self {
            Body::HoldExpire(expire) => Some(expire.id),
            Body::LotsExpire(expire) => Some(expire.id),
            Body::PurchaseRelease(release) => Some(release.id),
            Body::TransferIn(transfer) => Some(transfer.id),
            Body::TransferSettle(settle) => Some(settle.id),
            Body::AssetDefine(_)
            | Body::ClassDefine(_)
            | Body::RulesDefine(_)
            | Body::RateDefine(_) => None,
            _ => self.header().map(|header| header.id),
        }
    }
}

/// A record as read from or written to the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Position in the shard's WAL.
    pub lsn: Lsn,
    /// When the shard decided it.
    pub timestamp: Timestamp,
    /// What it changes.
    pub body: Body,
}
