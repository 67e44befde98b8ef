//! Operations and their results: the bodies of request and response frames.
//! Spec: docs/protocol.md, "Operations" and "Results".
//!
//! A request body is `op_count: u16`, `reserved: u16`, then `op_count` operations, each
//! `opcode: u8`, `reserved: u8`, `body_len: u16`, body. A response body is `result_count: u16`,
//! `reserved: u16`, then one result per operation in the same order, each `opcode: u8` (echoed),
//! `reserved: u8`, `status: u16`, `body_len: u16`, body (empty unless the status is `ok`).
//!
//! `RequestView::parse` checks the structure of a whole request (counts, lengths) before any
//! operation is decoded, so a request is either refused whole or every operation in it is
//! answered; `Op::decode` then decodes one operation, and a bad one is answered with its own
//! status while the others go ahead.

use crate::status::Status;
use crate::wire::{Reader, WireError, Writer};

/// Bytes of a request or response body's count header.
pub const COUNT_HEADER_BYTES: usize = 4;
/// Bytes of an operation's header.
pub const OP_HEADER_BYTES: usize = 4;
/// Bytes of a result's header.
pub const RESULT_HEADER_BYTES: usize = 6;
/// Receipt references are at most this many bytes of UTF-8.
pub const RECEIPT_BYTES_MAX: usize = 32;
/// Entries a history query returns at most.
pub const HISTORY_LIMIT_MAX: u16 = 256;
/// Bytes of the fields every write starts with: key, store, category.
pub const WRITE_META_BYTES: usize = 16 + 4 + 2;
/// Bytes of a committed write's result body.
pub const COMMITTED_BYTES: usize = 8 + 8 + 8 + 8 + 1;
/// Bytes of a balance result body.
pub const BALANCE_BYTES: usize = 8 + 8 + 8;
/// Bytes of one history entry in a result.
pub const HISTORY_ENTRY_BYTES: usize = 8 + 8 + 8 + 2 + 1 + 1;
/// Lines a basket purchase carries at most.
pub const BASKET_LINES_MAX: usize = 32;
/// Bytes of one basket line: category, amount, flags.
pub const LINE_BYTES: usize = 2 + 8 + 1;
/// The largest operation of fixed size (a transfer with the longest receipt), header included:
/// a server's `frame_bytes_max` holds `batch_ops_max` of them.
pub const FIXED_OP_BYTES_MAX: usize =
    OP_HEADER_BYTES + WRITE_META_BYTES + 8 + 8 + 8 + 1 + RECEIPT_BYTES_MAX;
/// The largest operation on the wire (a refund of 32 lines with the longest receipt: the
/// purchase's reference, the basis, the lines), header included: a server's `frame_bytes_max`
/// holds at least one.
pub const OP_BYTES_MAX: usize = OP_HEADER_BYTES
    + WRITE_META_BYTES
    + 1
    + 8
    + 1
    + 1
    + BASKET_LINES_MAX * LINE_BYTES
    + 1
    + RECEIPT_BYTES_MAX;
/// Lots a member result lists at most.
pub const MEMBER_LOTS_MAX: usize = 64;
/// Bytes of a member result before its lots.
pub const MEMBER_BYTES: usize = 1 + 1 + 2 + 5 * 8 + 4 + 2 + 2;
/// Bytes of one lot in a member result.
pub const LOT_BYTES: usize = 8 + 1 + 1 + 2 + 4 + 8 + 8;
/// Bytes of an explanation before its names, promotions and lines.
pub const EXPLAIN_FIXED_BYTES: usize = 8 * 4 + 4 + 4 + 8 + 7 * 8 + 4 + 8 + 8;
/// Promotions an explanation lists at most (a rule set holds at most 16).
pub const EXPLAIN_PROMOTIONS_MAX: usize = 16;
/// Bytes of a name: a length byte and up to 32 bytes of UTF-8.
pub const NAME_BYTES_MAX: usize = 1 + 32;
/// Bytes of a purchase's lifecycle (`purchase_state`, and after an explanation that asks).
pub const LIFECYCLE_BYTES: usize = 8 + 8 + 1 + 1 + 2 + 4 + 6 * 8;
/// The largest explanation result body.
pub const EXPLAIN_BYTES_MAX: usize = EXPLAIN_FIXED_BYTES
    + 2 * NAME_BYTES_MAX
    + EXPLAIN_PROMOTIONS_MAX * (1 + 8 + NAME_BYTES_MAX)
    + BASKET_LINES_MAX * LINE_BYTES;

/// Operation codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// Liveness: answered without touching the ledger.
    Ping = 1,
    /// A customer's balance.
    Balance = 2,
    /// A customer's recent postings.
    History = 3,
    /// A member's tier, lots and points about to expire.
    Member = 4,
    /// Why a purchase earned what it did.
    Explain = 5,
    /// A purchase's lifecycle: its state, what it gave and what was refunded.
    PurchaseState = 6,
    /// A purchase of one line: earns what the loyalty rules give it.
    Purchase = 16,
    /// Spend points.
    Redeem = 17,
    /// Authorize a hold on points.
    Hold = 18,
    /// Capture a hold, whole or part.
    Capture = 19,
    /// Void a hold.
    Void = 20,
    /// Reverse an earlier transaction (an offsetting transaction).
    Reverse = 21,
    /// Move points between customers.
    Transfer = 22,
    /// A purchase of a basket of 1..=32 lines, priced by the loyalty rules.
    PurchaseBasket = 23,
    /// A purchase's payment is confirmed.
    Settle = 24,
    /// A purchase's payment failed or was charged back: what it gave is taken back.
    Fail = 25,
    /// Part of a purchase is refunded (an amount, or lines): its share is taken back.
    Refund = 26,
}

impl Opcode {
    /// Every opcode.
    pub const ALL: &'static [Opcode] = &[
        Opcode::Ping,
        Opcode::Balance,
        Opcode::History,
        Opcode::Member,
        Opcode::Explain,
        Opcode::PurchaseState,
        Opcode::Purchase,
        Opcode::Redeem,
        Opcode::Hold,
        Opcode::Capture,
        Opcode::Void,
        Opcode::Reverse,
        Opcode::Transfer,
        Opcode::PurchaseBasket,
        Opcode::Settle,
        Opcode::Fail,
        Opcode::Refund,
    ];

    /// The opcode with this number.
    pub fn from_u8(value: u8) -> Option<Opcode> {
        Opcode::ALL.iter().copied().find(|opcode| *opcode as u8 == value)
    }

    /// A stable snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Opcode::Ping => "ping",
            Opcode::Balance => "balance",
            Opcode::History => "history",
            Opcode::Member => "member",
            Opcode::Explain => "explain",
            Opcode::PurchaseState => "purchase_state",
            Opcode::Purchase => "purchase",
            Opcode::Redeem => "redeem",
            Opcode::Hold => "hold",
            Opcode::Capture => "capture",
            Opcode::Void => "void",
            Opcode::Reverse => "reverse",
            Opcode::Transfer => "transfer",
            Opcode::PurchaseBasket => "purchase_basket",
            Opcode::Settle => "settle",
            Opcode::Fail => "fail",
            Opcode::Refund => "refund",
        }
    }

    /// Whether the operation writes (and so carries an idempotency key).
    pub fn is_write(self) -> bool {
        !matches!(
            self,
            Opcode::Ping
                | Opcode::Balance
                | Opcode::History
                | Opcode::Member
                | Opcode::Explain
                | Opcode::PurchaseState
        )
    }
}

/// A receipt reference printed at the till: at most `RECEIPT_BYTES_MAX` bytes of UTF-8, kept
/// inline so that decoding an operation never allocates.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Receipt {
    len: u8,
    bytes: [u8; RECEIPT_BYTES_MAX],
}

impl Receipt {
    /// A receipt reference, or `ReceiptTooLong`.
    pub fn new(text: &str) -> Result<Receipt, Status> {
        Receipt::from_bytes(text.as_bytes())
    }

    fn from_bytes(source: &[u8]) -> Result<Receipt, Status> {
        if source.len() > RECEIPT_BYTES_MAX {
            return Err(Status::ReceiptTooLong);
        }
        std::str::from_utf8(source).map_err(|_| Status::Malformed)?;
        let mut bytes = [0u8; RECEIPT_BYTES_MAX];
        bytes.get_mut(..source.len()).ok_or(Status::ReceiptTooLong)?.copy_from_slice(source);
        let len = u8::try_from(source.len()).map_err(|_| Status::ReceiptTooLong)?;
        Ok(Receipt { len, bytes })
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        let bytes = self.bytes.get(..usize::from(self.len)).unwrap_or(&[]);
        std::str::from_utf8(bytes).unwrap_or("")
    }
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// What every write carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct WriteMeta {
    /// The terminal's key for this logical write (never 0): a retry with the same key and the
    /// same operation returns the original result and posts nothing.
    pub key: u128,
    /// The store (0: none).
    pub store: u32,
    /// The product or merchant category (0: none).
    pub category: u16,
    /// The receipt reference.
    pub receipt: Receipt,
}

/// One line of a basket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BasketLine {
    /// The category of the goods (0: none).
    pub category: u16,
    /// What the line costs, in minor currency units.
    pub amount: u64,
    /// The till flags goods that never earn (gift cards, tobacco, deposits).
    pub excluded: bool,
}

/// The lines of a basket purchase, 0..=32, kept inline so that decoding never allocates (the
/// server refuses an empty basket with `basket_invalid`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Basket {
    len: u8,
    lines: [BasketLine; BASKET_LINES_MAX],
}

impl Basket {
    /// A basket of `lines`, or `BasketInvalid` for more than 32.
    pub fn new(lines: &[BasketLine]) -> Result<Basket, Status> {
        let mut basket = Basket { len: 0, lines: [BasketLine::default(); BASKET_LINES_MAX] };
        for line in lines {
            basket.push(*line)?;
        }
        Ok(basket)
    }

    fn push(&mut self, line: BasketLine) -> Result<(), Status> {
        let slot = self.lines.get_mut(usize::from(self.len)).ok_or(Status::BasketInvalid)?;
        *slot = line;
        self.len += 1;
        Ok(())
    }

    /// The lines.
    pub fn lines(&self) -> &[BasketLine] {
        self.lines.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

impl std::fmt::Debug for Basket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.lines()).finish()
    }
}

/// How a lifecycle operation names its purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PurchaseRef {
    /// By the purchase's transaction id.
    Id(u64),
    /// By the operation's store and receipt, for this member.
    Receipt {
        /// The member who made the purchase.
        customer: u64,
    },
}

/// What a refund gives back. The lines are inline, like a basket purchase's, so that decoding
/// never allocates.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefundBy {
    /// An amount of the purchase's spend, in minor currency units.
    Amount(u64),
    /// Lines of the purchase, as the receipt shows them.
    Lines(Basket),
}

const BY_ID: u8 = 1;
const BY_RECEIPT: u8 = 2;
const REFUND_AMOUNT: u8 = 1;
const REFUND_LINES: u8 = 2;
const EXPLAIN_LIFECYCLE: u8 = 1;

/// One operation of a request.
///
/// The basket is inline (about 520 bytes) so that decoding never allocates; operations are
/// decoded one at a time from the frame and handled by reference, never stored in bulk.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Liveness check.
    Ping,
    /// A customer's points balance.
    Balance {
        /// The customer.
        customer: u64,
    },
    /// A customer's most recent postings, newest first.
    History {
        /// The customer.
        customer: u64,
        /// Entries at most (1..=256).
        limit: u16,
    },
    /// A member's loyalty state.
    Member {
        /// The customer.
        customer: u64,
        /// Count points expiring within this many days (0: by the end of today).
        within_days: u16,
    },
    /// Why a purchase earned what it did.
    Explain {
        /// The purchase's transaction id.
        tx: u64,
        /// Whether the result ends with the purchase's lifecycle (a 9-byte body).
        lifecycle: bool,
    },
    /// A purchase's lifecycle.
    PurchaseState {
        /// The purchase's transaction id.
        tx: u64,
    },
    /// Confirm a purchase's payment.
    Settle {
        /// Key, store, category, receipt (the receipt names the purchase when `purchase` is
        /// by receipt).
        meta: WriteMeta,
        /// The purchase.
        purchase: PurchaseRef,
    },
    /// A purchase's payment failed or was charged back.
    Fail {
        /// Key, store, category, receipt.
        meta: WriteMeta,
        /// The purchase.
        purchase: PurchaseRef,
    },
    /// Refund part of a purchase.
    Refund {
        /// Key, store, category, receipt.
        meta: WriteMeta,
        /// The purchase.
        purchase: PurchaseRef,
        /// What is refunded.
        refund: RefundBy,
    },
    /// A purchase of `amount` minor currency units in `meta.category`: a basket of one line.
    Purchase {
        /// Key, store, category, receipt.
        meta: WriteMeta,
        /// The customer.
        customer: u64,
        /// What the customer paid, in minor currency units (cents).
        amount: u64,
    },
    /// Spend points.
    Redeem {
        /// Key, store, category, receipt.
        meta: WriteMeta,
        /// The customer.
        customer: u64,
        /// Points spent.
        points: u64,
    },
    /// Reserve points until captured, voided or expired.
    Hold {
        /// Key, store, category, receipt.
        meta: WriteMeta,
        /// The customer.
        customer: u64,
        /// Points reserved.
        points: u64,
        /// Milliseconds until the hold expires.
        timeout_ms: u32,
    },
    /// Capture a hold.
    Capture {
        /// Key, store, category, receipt.
        meta: WriteMeta,
        /// The hold's id (the transaction id its authorization returned).
        hold: u64,
        /// Points captured; 0 for the whole hold.
        points: u64,
    },
    /// Release a hold.
    Void {
        /// Key, store, category, receipt.
        meta: WriteMeta,
        /// The hold's id.
        hold: u64,
    },
    /// Post an earlier transaction the other way round.
    Reverse {
        /// Key, store, category, receipt.
        meta: WriteMeta,
        /// The transaction's id.
        tx: u64,
    },
    /// Move points from one customer to another.
    Transfer {
        /// Key, store, category, receipt.
        meta: WriteMeta,
        /// The customer debited.
        source: u64,
        /// The customer credited.
        destination: u64,
        /// Points moved.
        points: u64,
    },
    /// A purchase of a basket.
    PurchaseBasket {
        /// Key, store, category, receipt.
        meta: WriteMeta,
        /// The customer.
        customer: u64,
        /// The lines.
        basket: Basket,
    },
}

impl Op {
    /// The operation's code.
    pub fn opcode(&self) -> Opcode {
        match self {
            Op::Ping => Opcode::Ping,
            Op::Balance { .. } => Opcode::Balance,
            Op::History { .. } => Opcode::History,
            Op::Member { .. } => Opcode::Member,
            Op::Explain { .. } => Opcode::Explain,
            Op::Purchase { .. } => Opcode::Purchase,
            Op::Redeem { .. } => Opcode::Redeem,
            Op::Hold { .. } => Opcode::Hold,
            Op::Capture { .. } => Opcode::Capture,
            Op::Void { .. } => Opcode::Void,
            Op::Reverse { .. } => Opcode::Reverse,
            Op::Transfer { .. } => Opcode::Transfer,
            Op::PurchaseBasket { .. } => Opcode::PurchaseBasket,
            Op::PurchaseState { .. } => Opcode::PurchaseState,
            Op::Settle { .. } => Opcode::Settle,
            Op::Fail { .. } => Opcode::Fail,
            Op::Refund { .. } => Opcode::Refund,
        }
    }

    /// The write's meta, if it is a write.
    pub fn meta(&self) -> Option<&WriteMeta> {
        match self {
            Op::Ping
            | Op::Balance { .. }
            | Op::History { .. }
            | Op::Member { .. }
            | Op::Explain { .. }
            | Op::PurchaseState { .. } => None,
            Op::Purchase { meta, .. }
            | Op::PurchaseBasket { meta, .. }
            | Op::Redeem { meta, .. }
            | Op::Hold { meta, .. }
            | Op::Capture { meta, .. }
            | Op::Void { meta, .. }
            | Op::Reverse { meta, .. }
            | Op::Transfer { meta, .. }
            | Op::Settle { meta, .. }
            | Op::Fail { meta, .. }
            | Op::Refund { meta, .. } => Some(meta),
        }
    }

    /// Appends the operation (header and body).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut writer = Writer::new(out);
        writer.u8(self.opcode() as u8);
        writer.u8(0);
        let length_at = writer.position();
        writer.u16(0);
        let start = writer.position();
        if let Some(meta) = self.meta() {
            writer.u128(meta.key);
            writer.u32(meta.store);
            writer.u16(meta.category);
        }
        match *self {
            Op::Ping => {}
            Op::Balance { customer } => writer.u64(customer),
            Op::History { customer, limit } => {
                writer.u64(customer);
                writer.u16(limit);
            }
            Op::Member { customer, within_days } => {
                writer.u64(customer);
                writer.u16(within_days);
            }
            Op::Explain { tx, lifecycle } => {
                writer.u64(tx);
                if lifecycle {
                    writer.u8(EXPLAIN_LIFECYCLE);
                }
            }
            Op::PurchaseState { tx } => writer.u64(tx),
            Op::PurchaseBasket { customer, basket, .. } => {
                writer.u64(customer);
                put_basket(&mut writer, &basket);
            }
            Op::Settle { purchase, .. } | Op::Fail { purchase, .. } => {
                put_purchase_ref(&mut writer, purchase);
            }
            Op::Refund { purchase, refund, .. } => {
                put_purchase_ref(&mut writer, purchase);
                match refund {
                    RefundBy::Amount(amount) => {
                        writer.u8(REFUND_AMOUNT);
                        writer.u64(amount);
                    }
                    RefundBy::Lines(basket) => {
                        writer.u8(REFUND_LINES);
                        put_basket(&mut writer, &basket);
                    }
                }
            }
            Op::Purchase { customer, amount, .. } => {
                writer.u64(customer);
                writer.u64(amount);
            }
            Op::Redeem { customer, points, .. } => {
                writer.u64(customer);
                writer.u64(points);
            }
            Op::Hold { customer, points, timeout_ms, .. } => {
                writer.u64(customer);
                writer.u64(points);
                writer.u32(timeout_ms);
            }
            Op::Capture { hold, points, .. } => {
                writer.u64(hold);
                writer.u64(points);
            }
            Op::Void { hold, .. } => writer.u64(hold),
            Op::Reverse { tx, .. } => writer.u64(tx),
            Op::Transfer { source, destination, points, .. } => {
                writer.u64(source);
                writer.u64(destination);
                writer.u64(points);
            }
        }
        if let Some(meta) = self.meta() {
            writer.u8(meta.receipt.len);
            writer.bytes(meta.receipt.as_str().as_bytes());
        }
        let body_len = writer.position() - start;
        writer.patch_u16(length_at, u16::try_from(body_len).expect("operations are small"));
    }

    /// Decodes one operation. An unknown opcode is `UnknownOpcode`; a body that does not
    /// match its opcode's layout is `Malformed`; a receipt over 32 bytes is `ReceiptTooLong`.
    pub fn decode(raw: RawOp<'_>) -> Result<Op, Status> {
        let opcode = Opcode::from_u8(raw.opcode).ok_or(Status::UnknownOpcode)?;
        let mut reader = Reader::new(raw.body);
        let malformed = |_: WireError| Status::Malformed;
        let meta = if opcode.is_write() {
            Some(WriteMeta {
                key: reader.u128("key").map_err(malformed)?,
                store: reader.u32("store").map_err(malformed)?,
                category: reader.u16("category").map_err(malformed)?,
                receipt: Receipt::default(),
            })
        } else {
            None
        };
        let mut meta = meta.unwrap_or_default();
        let u64 = |reader: &mut Reader<'_>, field| reader.u64(field).map_err(malformed);
        let op = match opcode {
            Opcode::Ping => Op::Ping,
            Opcode::Balance => Op::Balance { customer: u64(&mut reader, "customer")? },
            Opcode::History => {
                let customer = u64(&mut reader, "customer")?;
                let limit = reader.u16("limit").map_err(malformed)?;
                if limit == 0 || limit > HISTORY_LIMIT_MAX {
                    return Err(Status::Malformed);
                }
                Op::History { customer, limit }
            }
            Opcode::Member => Op::Member {
                customer: u64(&mut reader, "customer")?,
                within_days: reader.u16("within days").map_err(malformed)?,
            },
            Opcode::Explain => {
                let tx = u64(&mut reader, "tx")?;
                let lifecycle = match reader.remaining() {
                    0 => false,
                    _ => match reader.u8("explain flags").map_err(malformed)? {
                        EXPLAIN_LIFECYCLE => true,
                        _ => return Err(Status::Malformed),
                    },
                };
                Op::Explain { tx, lifecycle }
            }
            Opcode::PurchaseState => Op::PurchaseState { tx: u64(&mut reader, "tx")? },
            Opcode::PurchaseBasket => {
                let customer = u64(&mut reader, "customer")?;
                Op::PurchaseBasket { meta, customer, basket: take_basket(&mut reader)? }
            }
            Opcode::Settle => Op::Settle { meta, purchase: take_purchase_ref(&mut reader)? },
            Opcode::Fail => Op::Fail { meta, purchase: take_purchase_ref(&mut reader)? },
            Opcode::Refund => {
                let purchase = take_purchase_ref(&mut reader)?;
                let refund = match reader.u8("refund basis").map_err(malformed)? {
                    REFUND_AMOUNT => RefundBy::Amount(u64(&mut reader, "refund amount")?),
                    REFUND_LINES => RefundBy::Lines(take_basket(&mut reader)?),
                    _ => return Err(Status::Malformed),
                };
                Op::Refund { meta, purchase, refund }
            }
            Opcode::Purchase => Op::Purchase {
                meta,
                customer: u64(&mut reader, "customer")?,
                amount: u64(&mut reader, "amount")?,
            },
            Opcode::Redeem => Op::Redeem {
                meta,
                customer: u64(&mut reader, "customer")?,
                points: u64(&mut reader, "points")?,
            },
            Opcode::Hold => Op::Hold {
                meta,
                customer: u64(&mut reader, "customer")?,
                points: u64(&mut reader, "points")?,
                timeout_ms: reader.u32("timeout").map_err(malformed)?,
            },
            Opcode::Capture => Op::Capture {
                meta,
                hold: u64(&mut reader, "hold")?,
                points: u64(&mut reader, "points")?,
            },
            Opcode::Void => Op::Void { meta, hold: u64(&mut reader, "hold")? },
            Opcode::Reverse => Op::Reverse { meta, tx: u64(&mut reader, "tx")? },
            Opcode::Transfer => Op::Transfer {
                meta,
                source: u64(&mut reader, "source")?,
                destination: u64(&mut reader, "destination")?,
                points: u64(&mut reader, "points")?,
            },
        };
        let op = if opcode.is_write() {
            let len = reader.u8("receipt length").map_err(malformed)?;
            let bytes = reader.take("receipt", usize::from(len)).map_err(malformed)?;
            meta.receipt = Receipt::from_bytes(bytes)?;
            op.with_meta(meta)
        } else {
            op
        };
        reader.finish().map_err(malformed)?;
        Ok(op)
    }

    fn with_meta(self, new: WriteMeta) -> Op {
        let mut op = self;
        match &mut op {
            Op::Ping
            | Op::Balance { .. }
            | Op::History { .. }
            | Op::Member { .. }
            | Op::Explain { .. }
            | Op::PurchaseState { .. } => {}
            Op::Settle { meta, .. } | Op::Fail { meta, .. } | Op::Refund { meta, .. } => {
                *meta = new;
            }
            Op::Purchase { meta, .. }
            | Op::PurchaseBasket { meta, .. }
            | Op::Redeem { meta, .. }
            | Op::Hold { meta, .. }
            | Op::Capture { meta, .. }
            | Op::Void { meta, .. }
            | Op::Reverse { meta, .. }
            | Op::Transfer { meta, .. } => *meta = new,
        }
        op
    }
}

fn put_basket(writer: &mut Writer<'_>, basket: &Basket) {
    writer.u8(basket.len);
    for line in basket.lines() {
        writer.u16(line.category);
        writer.u64(line.amount);
        writer.u8(u8::from(line.excluded));
    }
}

/// A basket: its count (more than 32 is `basket_invalid`) and lines.
fn take_basket(reader: &mut Reader<'_>) -> Result<Basket, Status> {
    let malformed = |_: WireError| Status::Malformed;
    let count = reader.u8("line count").map_err(malformed)?;
    if usize::from(count) > BASKET_LINES_MAX {
        return Err(Status::BasketInvalid);
    }
    let mut basket = Basket::new(&[])?;
    for _ in 0..count {
        let category = reader.u16("line category").map_err(malformed)?;
        let amount = reader.u64("line amount").map_err(malformed)?;
        let excluded = match reader.u8("line flags").map_err(malformed)? {
            0 => false,
            1 => true,
            _ => return Err(Status::Malformed),
        };
        basket.push(BasketLine { category, amount, excluded })?;
    }
    Ok(basket)
}

fn put_purchase_ref(writer: &mut Writer<'_>, purchase: PurchaseRef) {
    match purchase {
        PurchaseRef::Id(tx) => {
            writer.u8(BY_ID);
            writer.u64(tx);
        }
        PurchaseRef::Receipt { customer } => {
            writer.u8(BY_RECEIPT);
            writer.u64(customer);
        }
    }
}

fn take_purchase_ref(reader: &mut Reader<'_>) -> Result<PurchaseRef, Status> {
    let malformed = |_: WireError| Status::Malformed;
    let by = reader.u8("purchase by").map_err(malformed)?;
    let value = reader.u64("purchase").map_err(malformed)?;
    match by {
        BY_ID => Ok(PurchaseRef::Id(value)),
        BY_RECEIPT => Ok(PurchaseRef::Receipt { customer: value }),
        _ => Err(Status::Malformed),
    }
}

/// An operation as it sits in a request: its code and body bytes, not decoded yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawOp<'a> {
    /// The opcode byte (possibly unknown).
    pub opcode: u8,
    /// The body.
    pub body: &'a [u8],
}

/// The largest result an operation can get, header included: what a server checks so that a
/// response never exceeds the session's `frame_bytes_max` (a request of many history queries
/// could otherwise ask for far more than it sends).
pub fn result_bytes_max(raw: RawOp<'_>) -> usize {
    let body = match Opcode::from_u8(raw.opcode) {
        Some(Opcode::History) => {
            let limit = raw
                .body
                .get(8..10)
                .and_then(|bytes| <[u8; 2]>::try_from(bytes).ok())
                .map_or(0, u16::from_le_bytes)
                .min(HISTORY_LIMIT_MAX);
            COUNT_HEADER_BYTES + usize::from(limit) * HISTORY_ENTRY_BYTES
        }
        Some(Opcode::Balance) => BALANCE_BYTES,
        Some(Opcode::Member) => MEMBER_BYTES + MEMBER_LOTS_MAX * LOT_BYTES,
        Some(Opcode::Explain) if raw.body.len() > 8 => EXPLAIN_BYTES_MAX + LIFECYCLE_BYTES,
        Some(Opcode::Explain) => EXPLAIN_BYTES_MAX,
        Some(Opcode::PurchaseState) => LIFECYCLE_BYTES,
        Some(opcode) if opcode.is_write() => COMMITTED_BYTES,
        Some(_) | None => 0,
    };
    RESULT_HEADER_BYTES + body
}

/// A request body whose structure is checked: its operations can be walked infallibly.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    ops: &'a [u8],
    count: u16,
}

impl<'a> RequestView<'a> {
    /// Checks a request body: 1..=`batch_ops_max` operations whose headers and lengths fill
    /// the body exactly. `BatchTooLarge` for a bad count, `Malformed` for anything else.
    pub fn parse(body: &'a [u8], batch_ops_max: usize) -> Result<RequestView<'a>, Status> {
        let mut reader = Reader::new(body);
        let count = reader.u16("op count").map_err(|_| Status::Malformed)?;
        let reserved = reader.u16("reserved").map_err(|_| Status::Malformed)?;
        if reserved != 0 {
            return Err(Status::Malformed);
        }
        if count == 0 || usize::from(count) > batch_ops_max {
            return Err(Status::BatchTooLarge);
        }
        let ops = reader.take("ops", reader.remaining()).map_err(|_| Status::Malformed)?;
        let mut walker = Reader::new(ops);
        for _ in 0..count {
            next_op(&mut walker).ok_or(Status::Malformed)?;
        }
        walker.finish().map_err(|_| Status::Malformed)?;
        Ok(RequestView { ops, count })
    }

    /// Operations in the request.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// Whether the request has no operations (never true for a parsed one).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The operations, in order.
    pub fn ops(&self) -> impl Iterator<Item = RawOp<'a>> + 'a {
        let mut walker = Reader::new(self.ops);
        (0..self.count).map_while(move |_| next_op(&mut walker))
    }
}

fn next_op<'a>(reader: &mut Reader<'a>) -> Option<RawOp<'a>> {
    let opcode = reader.u8("opcode").ok()?;
    let reserved = reader.u8("reserved").ok()?;
    let len = reader.u16("body length").ok()?;
    if reserved != 0 {
        return None;
    }
    let body = reader.take("body", usize::from(len)).ok()?;
    Some(RawOp { opcode, body })
}

/// Appends the count header that starts request and response bodies: `count: u16` (the
/// operations, or the results that follow) and `reserved: u16` (zero).
pub fn put_count_header(out: &mut Vec<u8>, count: usize) {
    let count = u16::try_from(count).expect("a body holds at most u16::MAX entries");
    let mut writer = Writer::new(out);
    writer.u16(count);
    writer.u16(0);
}

/// Appends a request body: the count header and the operations.
pub fn encode_request_body(ops: &[Op], out: &mut Vec<u8>) {
    put_count_header(out, ops.len());
    for op in ops {
        op.encode(out);
    }
}

/// A committed write, as answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Committed {
    /// The transaction's id (a hold's id, for an authorization).
    pub tx_id: u64,
    /// When the shard decided it, ns since the Unix epoch (UTC).
    pub timestamp: u64,
    /// Its position in its shard's WAL.
    pub lsn: u64,
    /// Points posted or reserved (purchase: points earned; capture: the points asked for, 0
    /// for a whole capture; void and reverse: 0).
    pub points: u64,
    /// The answer repeats an earlier request with the same key: nothing new was posted.
    pub duplicate: bool,
}

/// A balance, as answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BalanceView {
    /// Posted balance.
    pub posted: i64,
    /// Posted balance minus points held.
    pub available: i64,
    /// Points held by open holds.
    pub held: u64,
}

/// One history entry, as answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HistoryItem {
    /// The transaction.
    pub tx_id: u64,
    /// When it was applied, ns since the Unix epoch.
    pub timestamp: u64,
    /// Points moved (always positive; see the flags for the direction).
    pub amount: u64,
    /// Business kind: 1 purchase, 2 redeem, 4 reversal, 5 transfer, … (docs/wal-format.md).
    pub kind: u16,
    /// Bit 0 credit (points in), bit 1 hold reserved, bit 2 hold released, bit 3 reversible,
    /// bit 4 reversed.
    pub flags: u8,
}

impl HistoryItem {
    /// Points came in (otherwise went out or were reserved).
    pub const CREDIT: u8 = 1;
    /// A hold reserved the points: the posted balance did not change.
    pub const HOLD: u8 = 2;
    /// A hold's reservation ended: the posted balance did not change.
    pub const RELEASE: u8 = 4;
    /// The transaction can be reversed: a plain transaction, not reversed yet.
    pub const REVERSIBLE: u8 = 8;
    /// The transaction was reversed (and so is not `REVERSIBLE` any more).
    pub const REVERSED: u8 = 16;

    /// The change to the posted balance.
    pub fn posted_delta(&self) -> i128 {
        if self.flags & (HistoryItem::HOLD | HistoryItem::RELEASE) != 0 {
            0
        } else if self.flags & HistoryItem::CREDIT != 0 {
            i128::from(self.amount)
        } else {
            -i128::from(self.amount)
        }
    }
}

/// One lot in a member result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LotItem {
    /// The transaction that opened it (0: points held when the programme started).
    pub origin: u64,
    /// 1 earned, 2 bonus, 3 transfer.
    pub kind: u8,
    /// It expires at 00:00 UTC of this day (days since 1970-01-01).
    pub expires_day: u32,
    /// Points credited into it.
    pub amount: u64,
    /// Points left.
    pub remaining: u64,
}

/// A member's loyalty state, as answered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemberReply {
    /// The tier now (index into the rules' tiers).
    pub tier: u8,
    /// The tier the member's last purchase recorded.
    pub tier_recorded: u8,
    /// Purchase points in the tier window.
    pub qualifying: u64,
    /// Purchase points today (UTC), for the daily cap.
    pub day_points: u64,
    /// Purchase points this month (UTC), for the monthly cap.
    pub month_points: u64,
    /// Points expiring within the asked number of days.
    pub expiring: u64,
    /// Points open holds reserved.
    pub held: u64,
    /// Lots the member holds (`lots` lists the first 64, the earliest expiry first).
    pub lot_count: u32,
    /// The lots listed.
    pub lots: Vec<LotItem>,
}

/// A named promotion's points in an explanation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PromotionItem {
    /// Its position in the rule version's promotions.
    pub index: u8,
    /// Points it gave, before the cut.
    pub points: u64,
    /// Its name.
    pub name: String,
}

/// Why a purchase earned what it did, as answered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExplainReply {
    /// The purchase.
    pub tx_id: u64,
    /// When it was decided, ns since the Unix epoch.
    pub timestamp: u64,
    /// Its position in its shard's WAL.
    pub lsn: u64,
    /// The member.
    pub customer: u64,
    /// The store.
    pub store: u32,
    /// The rule version that priced it.
    pub rules_version: u32,
    /// When that version took effect.
    pub rules_effective_at: u64,
    /// Base points.
    pub base: u64,
    /// Category points.
    pub category: u64,
    /// Tier points.
    pub tier_points: u64,
    /// Points the caps took away.
    pub cap_cut: u64,
    /// Earned points credited.
    pub earned: u64,
    /// Bonus points credited.
    pub bonus: u64,
    /// Cashback credited, in minor units of the cashback asset.
    pub cashback: u64,
    /// The tier it was priced at, and its name.
    pub tier_before: (u8, String),
    /// The tier it left the member in, and its name.
    pub tier_after: (u8, String),
    /// The daily cap in force (0: none).
    pub daily_cap: u64,
    /// The monthly cap in force (0: none).
    pub monthly_cap: u64,
    /// Each promotion that gave points.
    pub promotions: Vec<PromotionItem>,
    /// The basket.
    pub lines: Vec<BasketLine>,
    /// The purchase's lifecycle, when the operation asked for it.
    pub lifecycle: Option<Lifecycle>,
}

/// A purchase's lifecycle (docs/protocol.md, "Lifecycle").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Lifecycle {
    /// The purchase.
    pub tx_id: u64,
    /// The member.
    pub customer: u64,
    /// 1 pending, 2 settled, 3 failed, 4 partly refunded, 5 refunded; 0: the server no longer
    /// keeps it (older than the refund window), the rest 0.
    pub state: u8,
    /// Bit 0: refunded by lines (`refunded` counts weight); bit 1: its points are held.
    pub flags: u8,
    /// Its UTC day, days since 1970-01-01.
    pub day: u32,
    /// Its whole spend, minor currency units.
    pub spend: u64,
    /// Its weighted eligible spend.
    pub weight: u64,
    /// Refunded so far, of the spend (or of the weight, with flag bit 0).
    pub refunded: u64,
    /// Earned points it gave.
    pub earned: u64,
    /// Bonus points it gave.
    pub bonus: u64,
    /// Cashback it gave.
    pub cashback: u64,
}

fn put_lifecycle(writer: &mut Writer<'_>, lifecycle: &Lifecycle) {
    writer.u64(lifecycle.tx_id);
    writer.u64(lifecycle.customer);
    writer.u8(lifecycle.state);
    writer.u8(lifecycle.flags);
    writer.u16(0);
    writer.u32(lifecycle.day);
    for value in [
        lifecycle.spend,
        lifecycle.weight,
        lifecycle.refunded,
        lifecycle.earned,
        lifecycle.bonus,
        lifecycle.cashback,
    ] {
        writer.u64(value);
    }
}

fn take_lifecycle(body: &mut Reader<'_>) -> Result<Lifecycle, WireError> {
    let tx_id = body.u64("tx id")?;
    let customer = body.u64("customer")?;
    let state = body.u8("state")?;
    let flags = body.u8("flags")?;
    if state > 5 || flags > 3 || body.u16("reserved")? != 0 {
        return Err(WireError::Invalid { field: "lifecycle" });
    }
    Ok(Lifecycle {
        tx_id,
        customer,
        state,
        flags,
        day: body.u32("day")?,
        spend: body.u64("spend")?,
        weight: body.u64("weight")?,
        refunded: body.u64("refunded")?,
        earned: body.u64("earned")?,
        bonus: body.u64("bonus")?,
        cashback: body.u64("cashback")?,
    })
}

/// What a successful operation returns.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reply {
    /// The answer to a ping.
    Pong,
    /// A write is durable.
    Committed(Committed),
    /// A balance.
    Balance(BalanceView),
    /// Recent postings, newest first.
    History(Vec<HistoryItem>),
    /// A member's loyalty state.
    Member(MemberReply),
    /// Why a purchase earned what it did.
    Explanation(Box<ExplainReply>),
    /// A purchase's lifecycle.
    Lifecycle(Lifecycle),
}

/// The result of one operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OpResult {
    /// It succeeded.
    Ok(Reply),
    /// It was refused and changed nothing (or, for transient statuses, may be retried).
    Refused(Status),
}

impl OpResult {
    /// The status on the wire.
    pub fn status(&self) -> Status {
        match self {
            OpResult::Ok(_) => Status::Ok,
            OpResult::Refused(status) => *status,
        }
    }

    /// The committed write, if this is one.
    pub fn committed(&self) -> Option<&Committed> {
        match self {
            OpResult::Ok(Reply::Committed(committed)) => Some(committed),
            _ => None,
        }
    }
}

/// Appends a result: `opcode` is echoed from the operation (it may be an unknown byte).
pub fn encode_result(out: &mut Vec<u8>, opcode: u8, result: &OpResult) {
    let mut writer = Writer::new(out);
    writer.u8(opcode);
    writer.u8(0);
    writer.u16(result.status().code());
    let length_at = writer.position();
    writer.u16(0);
    let start = writer.position();
    match result {
        OpResult::Refused(_) | OpResult::Ok(Reply::Pong) => {}
        OpResult::Ok(Reply::Committed(committed)) => {
            writer.u64(committed.tx_id);
            writer.u64(committed.timestamp);
            writer.u64(committed.lsn);
            writer.u64(committed.points);
            writer.u8(u8::from(committed.duplicate));
        }
        OpResult::Ok(Reply::Balance(balance)) => {
            writer.i64(balance.posted);
            writer.i64(balance.available);
            writer.u64(balance.held);
        }
        OpResult::Ok(Reply::History(items)) => {
            let count = items.len().min(usize::from(HISTORY_LIMIT_MAX));
            writer.u16(u16::try_from(count).expect("bounded by HISTORY_LIMIT_MAX"));
            writer.u16(0);
            for item in items.iter().take(count) {
                writer.u64(item.tx_id);
                writer.u64(item.timestamp);
                writer.u64(item.amount);
                writer.u16(item.kind);
                writer.u8(item.flags);
                writer.u8(0);
            }
        }
        OpResult::Ok(Reply::Member(member)) => {
            writer.u8(member.tier);
            writer.u8(member.tier_recorded);
            writer.u16(0);
            for value in [member.qualifying, member.day_points, member.month_points] {
                writer.u64(value);
            }
            writer.u64(member.expiring);
            writer.u64(member.held);
            writer.u32(member.lot_count);
            let listed = member.lots.len().min(MEMBER_LOTS_MAX);
            writer.u16(u16::try_from(listed).expect("bounded by MEMBER_LOTS_MAX"));
            writer.u16(0);
            for lot in member.lots.iter().take(listed) {
                writer.u64(lot.origin);
                writer.u8(lot.kind);
                writer.u8(0);
                writer.u16(0);
                writer.u32(lot.expires_day);
                writer.u64(lot.amount);
                writer.u64(lot.remaining);
            }
        }
        OpResult::Ok(Reply::Explanation(explain)) => {
            for value in [explain.tx_id, explain.timestamp, explain.lsn, explain.customer] {
                writer.u64(value);
            }
            writer.u32(explain.store);
            writer.u32(explain.rules_version);
            writer.u64(explain.rules_effective_at);
            for value in [
                explain.base,
                explain.category,
                explain.tier_points,
                explain.cap_cut,
                explain.earned,
                explain.bonus,
                explain.cashback,
            ] {
                writer.u64(value);
            }
            let promotions = explain.promotions.len().min(EXPLAIN_PROMOTIONS_MAX);
            let lines = explain.lines.len().min(BASKET_LINES_MAX);
            writer.u8(explain.tier_before.0);
            writer.u8(explain.tier_after.0);
            writer.u8(u8::try_from(promotions).expect("bounded"));
            writer.u8(u8::try_from(lines).expect("bounded"));
            writer.u64(explain.daily_cap);
            writer.u64(explain.monthly_cap);
            put_name(&mut writer, &explain.tier_before.1);
            put_name(&mut writer, &explain.tier_after.1);
            for promotion in explain.promotions.iter().take(promotions) {
                writer.u8(promotion.index);
                writer.u64(promotion.points);
                put_name(&mut writer, &promotion.name);
            }
            for line in explain.lines.iter().take(lines) {
                writer.u16(line.category);
                writer.u64(line.amount);
                writer.u8(u8::from(line.excluded));
            }
            if let Some(lifecycle) = &explain.lifecycle {
                put_lifecycle(&mut writer, lifecycle);
            }
        }
        OpResult::Ok(Reply::Lifecycle(lifecycle)) => put_lifecycle(&mut writer, lifecycle),
    }
    let body_len = writer.position() - start;
    writer.patch_u16(length_at, u16::try_from(body_len).expect("results are small"));
}

/// A name (tier, promotion): `len: u8` and up to 32 bytes of UTF-8, cut at a character
/// boundary if longer.
fn put_name(writer: &mut Writer<'_>, name: &str) {
    let mut end = name.len().min(NAME_BYTES_MAX - 1);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    writer.u8(u8::try_from(end).expect("at most 32"));
    writer.bytes(name.get(..end).unwrap_or("").as_bytes());
}

fn take_name(body: &mut Reader<'_>) -> Result<String, WireError> {
    let len = body.u8("name length")?;
    if usize::from(len) >= NAME_BYTES_MAX {
        return Err(WireError::Invalid { field: "name length" });
    }
    let bytes = body.take("name", usize::from(len))?;
    std::str::from_utf8(bytes).map(str::to_string).map_err(|_| WireError::Invalid { field: "name" })
}

/// One result as it sits in a response: not decoded yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawResult<'a> {
    /// The opcode echoed from the operation.
    pub opcode: u8,
    /// The status number (checked to be a known status by `ResponseView::parse`).
    pub status: Status,
    /// The body (empty unless the status is `ok`).
    pub body: &'a [u8],
}

impl RawResult<'_> {
    /// Decodes the result.
    pub fn decode(&self) -> Result<OpResult, WireError> {
        if self.status != Status::Ok {
            return if self.body.is_empty() {
                Ok(OpResult::Refused(self.status))
            } else {
                Err(WireError::Invalid { field: "refusal body" })
            };
        }
        let opcode = Opcode::from_u8(self.opcode).ok_or(WireError::Invalid { field: "opcode" })?;
        let mut body = Reader::new(self.body);
        let reply = decode_reply(opcode, &mut body)?;
        body.finish()?;
        Ok(OpResult::Ok(reply))
    }

    /// The transaction id of a committed write, read without decoding the rest.
    pub fn tx_id(&self) -> Option<u64> {
        if self.status != Status::Ok {
            return None;
        }
        Reader::new(self.body).u64("tx id").ok()
    }
}

/// A response body whose structure is checked: its results can be walked infallibly.
#[derive(Debug, Clone, Copy)]
pub struct ResponseView<'a> {
    results: &'a [u8],
    count: u16,
}

impl<'a> ResponseView<'a> {
    /// Checks a response body: at most `expected_max` results, known statuses, lengths that
    /// fill the body exactly. Nothing is allocated.
    pub fn parse(body: &'a [u8], expected_max: usize) -> Result<ResponseView<'a>, WireError> {
        let mut reader = Reader::new(body);
        let count = reader.u16("result count")?;
        if reader.u16("reserved")? != 0 {
            return Err(WireError::Invalid { field: "reserved" });
        }
        if usize::from(count) > expected_max {
            return Err(WireError::Invalid { field: "result count" });
        }
        let results = reader.take("results", reader.remaining())?;
        let mut walker = Reader::new(results);
        for _ in 0..count {
            next_result(&mut walker)?;
        }
        walker.finish()?;
        Ok(ResponseView { results, count })
    }

    /// Results in the response.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The results, in the order of the request's operations.
    pub fn results(&self) -> impl Iterator<Item = RawResult<'a>> + 'a {
        let mut walker = Reader::new(self.results);
        (0..self.count).map_while(move |_| next_result(&mut walker).ok())
    }
}

fn next_result<'a>(reader: &mut Reader<'a>) -> Result<RawResult<'a>, WireError> {
    let opcode = reader.u8("opcode")?;
    if reader.u8("reserved")? != 0 {
        return Err(WireError::Invalid { field: "reserved" });
    }
    let status = reader.u16("status")?;
    let status = Status::from_code(status).ok_or(WireError::Invalid { field: "status" })?;
    let len = usize::from(reader.u16("result length")?);
    let body = reader.take("result body", len)?;
    Ok(RawResult { opcode, status, body })
}

/// Decodes a response body into its results, each with the opcode it echoes. At most
/// `expected_max` results are accepted, so a hostile server cannot make a client allocate.
pub fn decode_response_body(
    body: &[u8],
    expected_max: usize,
) -> Result<Vec<(u8, OpResult)>, WireError> {
    let view = ResponseView::parse(body, expected_max)?;
    view.results().map(|raw| Ok((raw.opcode, raw.decode()?))).collect()
}

fn decode_reply(opcode: Opcode, body: &mut Reader<'_>) -> Result<Reply, WireError> {
    Ok(match opcode {
        Opcode::Ping => Reply::Pong,
        Opcode::Balance => Reply::Balance(BalanceView {
            posted: body.i64("posted")?,
            available: body.i64("available")?,
            held: body.u64("held")?,
        }),
        Opcode::History => {
            let count = body.u16("entry count")?;
            if body.u16("reserved")? != 0 || count > HISTORY_LIMIT_MAX {
                return Err(WireError::Invalid { field: "entry count" });
            }
            let mut items = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                let item = HistoryItem {
                    tx_id: body.u64("tx id")?,
                    timestamp: body.u64("timestamp")?,
                    amount: body.u64("amount")?,
                    kind: body.u16("kind")?,
                    flags: body.u8("flags")?,
                };
                body.u8("reserved")?;
                items.push(item);
            }
            Reply::History(items)
        }
        Opcode::Member => {
            let tier = body.u8("tier")?;
            let tier_recorded = body.u8("tier recorded")?;
            if body.u16("reserved")? != 0 {
                return Err(WireError::Invalid { field: "reserved" });
            }
            let qualifying = body.u64("qualifying")?;
            let day_points = body.u64("day points")?;
            let month_points = body.u64("month points")?;
            let expiring = body.u64("expiring")?;
            let held = body.u64("held")?;
            let lot_count = body.u32("lot count")?;
            let listed = usize::from(body.u16("lots listed")?);
            if body.u16("reserved")? != 0 || listed > MEMBER_LOTS_MAX {
                return Err(WireError::Invalid { field: "lots listed" });
            }
            let mut lots = Vec::with_capacity(listed);
            for _ in 0..listed {
                let origin = body.u64("lot origin")?;
                let kind = body.u8("lot kind")?;
                if body.u8("reserved")? != 0 || body.u16("reserved")? != 0 {
                    return Err(WireError::Invalid { field: "reserved" });
                }
                lots.push(LotItem {
                    origin,
                    kind,
                    expires_day: body.u32("lot expiry day")?,
                    amount: body.u64("lot amount")?,
                    remaining: body.u64("lot remaining")?,
                });
            }
            Reply::Member(MemberReply {
                tier,
                tier_recorded,
                qualifying,
                day_points,
                month_points,
                expiring,
                held,
                lot_count,
                lots,
            })
        }
        Opcode::Explain => {
            let tx_id = body.u64("tx id")?;
            let timestamp = body.u64("timestamp")?;
            let lsn = body.u64("lsn")?;
            let customer = body.u64("customer")?;
            let store = body.u32("store")?;
            let rules_version = body.u32("rules version")?;
            let rules_effective_at = body.u64("rules effective at")?;
            let base = body.u64("base")?;
            let category = body.u64("category")?;
            let tier_points = body.u64("tier points")?;
            let cap_cut = body.u64("cap cut")?;
            let earned = body.u64("earned")?;
            let bonus = body.u64("bonus")?;
            let cashback = body.u64("cashback")?;
            let tier_before = body.u8("tier before")?;
            let tier_after = body.u8("tier after")?;
            let promotions = usize::from(body.u8("promotion count")?);
            let lines = usize::from(body.u8("line count")?);
            if promotions > EXPLAIN_PROMOTIONS_MAX || lines > BASKET_LINES_MAX {
                return Err(WireError::Invalid { field: "explanation counts" });
            }
            let daily_cap = body.u64("daily cap")?;
            let monthly_cap = body.u64("monthly cap")?;
            let tier_before = (tier_before, take_name(body)?);
            let tier_after = (tier_after, take_name(body)?);
            let mut named = Vec::with_capacity(promotions);
            for _ in 0..promotions {
                let index = body.u8("promotion")?;
                let points = body.u64("promotion points")?;
                named.push(PromotionItem { index, points, name: take_name(body)? });
            }
            let mut basket = Vec::with_capacity(lines);
            for _ in 0..lines {
                let category = body.u16("line category")?;
                let amount = body.u64("line amount")?;
                let excluded = match body.u8("line flags")? {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::Invalid { field: "line flags" }),
                };
                basket.push(BasketLine { category, amount, excluded });
            }
            let lifecycle = match body.remaining() {
                0 => None,
                _ => Some(take_lifecycle(body)?),
            };
            Reply::Explanation(Box::new(ExplainReply {
                tx_id,
                timestamp,
                lsn,
                customer,
                store,
                rules_version,
                rules_effective_at,
                base,
                category,
                tier_points,
                cap_cut,
                earned,
                bonus,
                cashback,
                tier_before,
                tier_after,
                daily_cap,
                monthly_cap,
                promotions: named,
                lines: basket,
                lifecycle,
            }))
        }
        Opcode::PurchaseState => Reply::Lifecycle(take_lifecycle(body)?),
        Opcode::Settle
        | Opcode::Fail
        | Opcode::Refund
        | Opcode::PurchaseBasket
        | Opcode::Purchase
        | Opcode::Redeem
        | Opcode::Hold
        | Opcode::Capture
        | Opcode::Void
        | Opcode::Reverse
        | Opcode::Transfer => {
            let tx_id = body.u64("tx id")?;
            let timestamp = body.u64("timestamp")?;
            let lsn = body.u64("lsn")?;
            let points = body.u64("points")?;
            let duplicate = match body.u8("flags")? {
                0 => false,
                1 => true,
                _ => return Err(WireError::Invalid { field: "flags" }),
            };
            Reply::Committed(Committed { tx_id, timestamp, lsn, points, duplicate })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key: u128) -> WriteMeta {
        WriteMeta { key, store: 12, category: 3, receipt: Receipt::new("R-1").unwrap() }
    }

    fn every_op() -> Vec<Op> {
        vec![
            Op::Ping,
            Op::Balance { customer: 42 },
            Op::History { customer: 42, limit: 10 },
            Op::Purchase { meta: meta(1), customer: 42, amount: 12_345 },
            Op::Redeem { meta: meta(2), customer: 42, points: 800 },
            Op::Hold { meta: meta(3), customer: 42, points: 50, timeout_ms: 60_000 },
            Op::Capture { meta: meta(4), hold: 99, points: 0 },
            Op::Void { meta: meta(5), hold: 99 },
            Op::Reverse { meta: meta(6), tx: 77 },
            Op::Transfer { meta: meta(7), source: 1, destination: 2, points: 3 },
            Op::Member { customer: 42, within_days: 30 },
            Op::Explain { tx: 77, lifecycle: false },
            Op::Explain { tx: 77, lifecycle: true },
            Op::PurchaseState { tx: 77 },
            Op::PurchaseBasket { meta: meta(8), customer: 42, basket: largest_basket() },
            Op::Settle { meta: meta(9), purchase: PurchaseRef::Id(77) },
            Op::Fail { meta: meta(10), purchase: PurchaseRef::Receipt { customer: 42 } },
            Op::Refund {
                meta: meta(11),
                purchase: PurchaseRef::Id(77),
                refund: RefundBy::Amount(1_250),
            },
            Op::Refund {
                meta: meta(12),
                purchase: PurchaseRef::Receipt { customer: 42 },
                refund: RefundBy::Lines(largest_basket()),
            },
        ]
    }

    fn largest_basket() -> Basket {
        let line = |index: u16| BasketLine {
            category: index,
            amount: u64::from(index) * 100 + 1,
            excluded: index.is_multiple_of(5),
        };
        Basket::new(&(0..32).map(line).collect::<Vec<_>>()).unwrap()
    }

    /// The largest result of each read of the loyalty programme.
    fn largest_member() -> MemberReply {
        let lot = LotItem { origin: 1, kind: 2, expires_day: 3, amount: 4, remaining: 5 };
        MemberReply {
            tier: 1,
            tier_recorded: 2,
            qualifying: 3,
            day_points: 4,
            month_points: 5,
            expiring: 6,
            held: 7,
            lot_count: 500,
            lots: vec![lot; MEMBER_LOTS_MAX],
        }
    }

    fn largest_explanation() -> ExplainReply {
        let name = "é".repeat(16);
        ExplainReply {
            tx_id: 1,
            timestamp: 2,
            lsn: 3,
            customer: 4,
            store: 5,
            rules_version: 6,
            rules_effective_at: 7,
            base: 8,
            category: 9,
            tier_points: 10,
            cap_cut: 11,
            earned: 12,
            bonus: 13,
            cashback: 14,
            tier_before: (1, name.clone()),
            tier_after: (2, name.clone()),
            daily_cap: 15,
            monthly_cap: 16,
            promotions: (0..16)
                .map(|index| PromotionItem { index, points: 9, name: name.clone() })
                .collect(),
            lines: largest_basket().lines().to_vec(),
            lifecycle: None,
        }
    }

    fn lifecycle() -> Lifecycle {
        Lifecycle {
            tx_id: 1,
            customer: 2,
            state: 4,
            flags: 3,
            day: 5,
            spend: 6,
            weight: 7,
            refunded: 8,
            earned: 9,
            bonus: 10,
            cashback: 11,
        }
    }

    #[test]
    fn every_operation_round_trips_through_a_request() {
        let ops = every_op();
        let mut body = Vec::new();
        encode_request_body(&ops, &mut body);
        let view = RequestView::parse(&body, 32).unwrap();
        assert_eq!(view.len(), ops.len());
        let decoded: Vec<Op> = view.ops().map(|raw| Op::decode(raw).unwrap()).collect();
        assert_eq!(decoded, ops);
        for op in &ops {
            let mut one = Vec::new();
            op.encode(&mut one);
            assert!(one.len() <= OP_BYTES_MAX);
        }
    }

    #[test]
    fn bad_requests_are_refused_whole_and_bad_operations_alone() {
        let mut body = Vec::new();
        encode_request_body(&every_op(), &mut body);
        assert_eq!(RequestView::parse(&body, 3).unwrap_err(), Status::BatchTooLarge);
        assert_eq!(RequestView::parse(&[0, 0, 0, 0], 3).unwrap_err(), Status::BatchTooLarge);
        for cut in 0..body.len() {
            assert!(RequestView::parse(&body[..cut], 32).is_err(), "cut at {cut}");
        }
        let mut trailing = body.clone();
        trailing.push(0);
        assert_eq!(RequestView::parse(&trailing, 32).unwrap_err(), Status::Malformed);

        let unknown = RawOp { opcode: 200, body: &[] };
        assert_eq!(Op::decode(unknown), Err(Status::UnknownOpcode));
        let short = RawOp { opcode: Opcode::Balance as u8, body: &[1, 2, 3] };
        assert_eq!(Op::decode(short), Err(Status::Malformed));
        let long = RawOp { opcode: Opcode::Ping as u8, body: &[0] };
        assert_eq!(Op::decode(long), Err(Status::Malformed));
        let zero_limit = RawOp { opcode: Opcode::History as u8, body: &[0; 10] };
        assert_eq!(Op::decode(zero_limit), Err(Status::Malformed));
        // A basket of 33 lines is refused as a basket, whatever follows.
        let mut big = vec![0u8; WRITE_META_BYTES + 8];
        big.push(33);
        big.extend_from_slice(&[0; 33 * LINE_BYTES + 1]);
        let raw = RawOp { opcode: Opcode::PurchaseBasket as u8, body: &big };
        assert_eq!(Op::decode(raw), Err(Status::BasketInvalid));
        // The lifecycle operations' selectors: by 1 or 2, basis 1 or 2, explain flags 1.
        let mut refund = Vec::new();
        Op::Refund { meta: meta(9), purchase: PurchaseRef::Id(5), refund: RefundBy::Amount(1) }
            .encode(&mut refund);
        for (at, value) in [(WRITE_META_BYTES, 3), (WRITE_META_BYTES + 9, 0)] {
            let mut bad = refund.clone();
            bad[OP_HEADER_BYTES + at] = value;
            let raw = RawOp { opcode: bad[0], body: &bad[OP_HEADER_BYTES..] };
            assert_eq!(Op::decode(raw), Err(Status::Malformed), "byte {at} = {value}");
        }
        let explain = RawOp { opcode: Opcode::Explain as u8, body: &[7, 0, 0, 0, 0, 0, 0, 0, 2] };
        assert_eq!(Op::decode(explain), Err(Status::Malformed));
        let old = RawOp { opcode: Opcode::Explain as u8, body: &[7, 0, 0, 0, 0, 0, 0, 0] };
        assert_eq!(Op::decode(old), Ok(Op::Explain { tx: 7, lifecycle: false }));
        // A line flag other than 0 or 1 is malformed.
        let mut flagged = Vec::new();
        let one = Basket::new(&[BasketLine { category: 1, amount: 2, excluded: false }]).unwrap();
        Op::PurchaseBasket { meta: meta(9), customer: 1, basket: one }.encode(&mut flagged);
        let flag_at = OP_HEADER_BYTES + WRITE_META_BYTES + 8 + 1 + 10;
        flagged[flag_at] = 2;
        let raw = RawOp { opcode: flagged[0], body: &flagged[OP_HEADER_BYTES..] };
        assert_eq!(Op::decode(raw), Err(Status::Malformed));

        let mut receipt = Vec::new();
        Op::Void { meta: meta(1), hold: 5 }.encode(&mut receipt);
        // Replace the 3-byte receipt by a 40-byte one and fix the body length.
        receipt.truncate(receipt.len() - 4);
        receipt.push(40);
        receipt.extend_from_slice(&[b'x'; 40]);
        let body_len = u16::try_from(receipt.len() - OP_HEADER_BYTES).unwrap();
        receipt[2..4].copy_from_slice(&body_len.to_le_bytes());
        let raw = RawOp { opcode: receipt[0], body: &receipt[OP_HEADER_BYTES..] };
        assert_eq!(Op::decode(raw), Err(Status::ReceiptTooLong));
        assert_eq!(Receipt::new(&"y".repeat(33)), Err(Status::ReceiptTooLong));
    }

    #[test]
    fn the_result_bound_holds_for_the_largest_result_of_each_operation() {
        let committed = Committed { tx_id: 1, timestamp: 2, lsn: 3, points: 4, duplicate: true };
        let item = HistoryItem { tx_id: 9, timestamp: 8, amount: 7, kind: 1, flags: 9 };
        for op in every_op() {
            let reply = match op.opcode() {
                Opcode::Ping => Reply::Pong,
                Opcode::Balance => Reply::Balance(BalanceView { posted: 1, available: 1, held: 0 }),
                Opcode::History => Reply::History(vec![item; 10]),
                Opcode::Member => Reply::Member(largest_member()),
                Opcode::Explain => {
                    let asked = matches!(op, Op::Explain { lifecycle: true, .. });
                    let lifecycle = asked.then(lifecycle);
                    Reply::Explanation(Box::new(ExplainReply {
                        lifecycle,
                        ..largest_explanation()
                    }))
                }
                Opcode::PurchaseState => Reply::Lifecycle(lifecycle()),
                _ => Reply::Committed(committed),
            };
            let mut encoded = Vec::new();
            op.encode(&mut encoded);
            let raw = RawOp { opcode: encoded[0], body: &encoded[OP_HEADER_BYTES..] };
            let mut result = Vec::new();
            encode_result(&mut result, raw.opcode, &OpResult::Ok(reply));
            assert_eq!(result.len(), result_bytes_max(raw), "{op:?}");
        }
        let unknown = RawOp { opcode: 250, body: &[1, 2, 3] };
        assert_eq!(result_bytes_max(unknown), RESULT_HEADER_BYTES);
    }

    #[test]
    fn results_round_trip_with_their_opcodes() {
        let committed = Committed { tx_id: 1, timestamp: 2, lsn: 3, points: 4, duplicate: true };
        let history = vec![HistoryItem { tx_id: 9, timestamp: 8, amount: 7, kind: 1, flags: 9 }];
        let results = vec![
            (Opcode::Ping as u8, OpResult::Ok(Reply::Pong)),
            (Opcode::Redeem as u8, OpResult::Ok(Reply::Committed(committed))),
            (
                Opcode::Balance as u8,
                OpResult::Ok(Reply::Balance(BalanceView { posted: -1, available: -2, held: 3 })),
            ),
            (Opcode::History as u8, OpResult::Ok(Reply::History(history))),
            (Opcode::Member as u8, OpResult::Ok(Reply::Member(largest_member()))),
            (
                Opcode::Explain as u8,
                OpResult::Ok(Reply::Explanation(Box::new(largest_explanation()))),
            ),
            (
                Opcode::Explain as u8,
                OpResult::Ok(Reply::Explanation(Box::new(ExplainReply {
                    lifecycle: Some(lifecycle()),
                    ..largest_explanation()
                }))),
            ),
            (Opcode::PurchaseState as u8, OpResult::Ok(Reply::Lifecycle(lifecycle()))),
            (Opcode::Refund as u8, OpResult::Ok(Reply::Committed(committed))),
            (Opcode::Redeem as u8, OpResult::Refused(Status::InsufficientFunds)),
            (250, OpResult::Refused(Status::UnknownOpcode)),
        ];
        let mut body = vec![11, 0, 0, 0];
        for (opcode, result) in &results {
            encode_result(&mut body, *opcode, result);
        }
        assert_eq!(decode_response_body(&body, 11).unwrap(), results);
        assert!(decode_response_body(&body, 10).is_err());
        for cut in 0..body.len() {
            assert!(decode_response_body(&body[..cut], 11).is_err());
        }
    }
}
