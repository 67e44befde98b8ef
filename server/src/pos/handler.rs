//! What each POS operation means for the ledger: `Book::plan` turns a decoded operation into an
//! engine command (or an answer that needs no engine), and `answer` turns the engine's response
//! into the operation's result.
//!
//! | operation | engine command | postings |
//! |---|---|---|
//! | purchase, purchase_basket | `Purchase` (a basket of one line, or of the lines sent) | what the engine's loyalty rules give it |
//! | redeem | `Post`, kind redeem | `customer:<id>:points` → `house:redemption` |
//! | hold | `Hold`, kind redeem | as redeem, reserved until capture, void or timeout |
//! | capture / void | `Capture` / `Void` | the hold's posting, whole or part / released |
//! | reverse | `Reverse`, kind reversal | the original's postings, turned round |
//! | transfer | `Transfer`, kind transfer | customer → customer, same or another shard |
//! | balance / history | `Query::Account` / `Query::History` | — |
//! | member / explain | `Query::Member` / `Query::Explain` | — |
//!
//! The server computes no points: the shard that owns the customer prices every purchase by the
//! rule version in force (docs/loyalty.md).

use ledger_engine::ledger::history::HistoryEntry;
use ledger_engine::ledger::record::{PurchaseEvent, PurchaseRef as EnginePurchaseRef};
use ledger_engine::loyalty::Line;
use ledger_engine::loyalty::explain::Explanation;
use ledger_engine::loyalty::purchases::Refundable;
use ledger_engine::{
    AccountId, Amount, ClassId, Command, IdempotencyKey, Metadata, Namespace, Operation, Posting,
    Query, Receipt, Request, Response, TerminalId, TxId, TxKind,
};
use ledger_protocol::Status;
use ledger_protocol::ops::{
    BalanceView, Basket, BasketLine, Committed, ExplainReply, HistoryItem, Lifecycle, LotItem,
    MemberReply, Op, OpResult, PromotionItem, PurchaseRef, RefundBy, Reply, WriteMeta,
};

/// The accounts and rates the POS operations post with.
#[derive(Debug, Clone)]
pub struct Book {
    points: ClassId,
    redemption: ClassId,
    asset: ledger_engine::AssetId,
}

/// What to do with one operation.
#[derive(Debug)]
pub enum Plan {
    /// Answer this without the engine.
    Answer(OpResult),
    /// Submit this command; the answer reports what the engine says it moved.
    Submit {
        /// The command.
        command: Command,
    },
}

impl Book {
    /// Finds the default loyalty definitions (`bootstrap::define_defaults` made them).
    pub fn new(engine: &ledger_engine::Engine) -> anyhow::Result<Book> {
        let registry = engine.registry();
        let class = |namespace, name: &str| {
            let name = ledger_engine::ledger::account::Name::class(name)
                .map_err(|error| anyhow::anyhow!("{error}"))?;
            registry
                .class_by_name(namespace, &name)
                .map(|class| (class.id, class.asset))
                .ok_or_else(|| anyhow::anyhow!("class {name} is not defined"))
        };
        let (points, asset) = class(Namespace::Customer, "points")?;
        Ok(Book { points, redemption: class(Namespace::House, "redemption")?.0, asset })
    }

    fn customer(&self, customer: u64) -> AccountId {
        AccountId::new(self.points, customer)
    }

    fn posting(&self, debit: AccountId, credit: AccountId, points: u64) -> Result<Posting, Status> {
        let amount = Amount::new(points).ok_or(Status::AmountZero)?;
        Ok(Posting { debit, credit, asset: self.asset, amount })
    }

    /// The plan for one decoded operation of `terminal`.
    pub fn plan(&self, terminal: u32, op: &Op) -> Plan {
        match self.try_plan(terminal, op) {
            Ok(plan) => plan,
            Err(status) => Plan::Answer(OpResult::Refused(status)),
        }
    }

    fn try_plan(&self, terminal: u32, op: &Op) -> Result<Plan, Status> {
        let write = |meta: &WriteMeta, kind: TxKind, operation: Operation| {
            let receipt =
                Receipt::new(meta.receipt.as_str()).map_err(|_| Status::ReceiptTooLong)?;
            Ok::<Command, Status>(Command::Write(Request {
                terminal: TerminalId(terminal),
                idempotency: IdempotencyKey::new(meta.key),
                kind,
                metadata: Metadata {
                    store: meta.store,
                    category: meta.category,
                    receipt,
                    annotation: None,
                },
                operation,
            }))
        };
        let post = |postings: Posting| Operation::Post { postings: smallvec::smallvec![postings] };
        let house = |class: ClassId| AccountId::new(class, 0);
        Ok(match *op {
            Op::Ping => Plan::Answer(OpResult::Ok(Reply::Pong)),
            Op::Balance { customer } => {
                Plan::Submit { command: Command::Read(Query::Account(self.customer(customer))) }
            }
            Op::History { customer, limit } => Plan::Submit {
                command: Command::Read(Query::History { account: self.customer(customer), limit }),
            },
            Op::Member { customer, within_days } => {
                Plan::Submit { command: Command::Read(Query::Member { customer, within_days }) }
            }
            Op::Explain { tx, .. } => {
                Plan::Submit { command: Command::Read(Query::Explain { tx: TxId(tx) }) }
            }
            Op::PurchaseState { tx } => {
                Plan::Submit { command: Command::Read(Query::Purchase { tx: TxId(tx) }) }
            }
            Op::Settle { ref meta, purchase } => {
                let operation = change(purchase, PurchaseEvent::Settle);
                Plan::Submit { command: write(meta, TxKind::PURCHASE, operation)? }
            }
            Op::Fail { ref meta, purchase } => {
                let operation = change(purchase, PurchaseEvent::Fail);
                Plan::Submit { command: write(meta, TxKind::REFUND, operation)? }
            }
            Op::Refund { ref meta, purchase, ref refund } => {
                let event = match refund {
                    RefundBy::Amount(amount) => {
                        PurchaseEvent::RefundAmount(Amount::new(*amount).ok_or(Status::AmountZero)?)
                    }
                    RefundBy::Lines(basket) => PurchaseEvent::RefundLines(lines_of(basket)),
                };
                Plan::Submit { command: write(meta, TxKind::REFUND, change(purchase, event))? }
            }
            Op::Purchase { ref meta, customer, amount } => {
                let line = Line { category: meta.category, amount, excluded: false };
                let operation = Operation::Purchase { customer, lines: smallvec::smallvec![line] };
                Plan::Submit { command: write(meta, TxKind::PURCHASE, operation)? }
            }
            Op::PurchaseBasket { ref meta, customer, ref basket } => {
                let operation = Operation::Purchase { customer, lines: lines_of(basket) };
                Plan::Submit { command: write(meta, TxKind::PURCHASE, operation)? }
            }
            Op::Redeem { ref meta, customer, points } => {
                let posting =
                    self.posting(self.customer(customer), house(self.redemption), points)?;
                Plan::Submit { command: write(meta, TxKind::REDEEM, post(posting))? }
            }
            Op::Hold { ref meta, customer, points, timeout_ms } => {
                let posting =
                    self.posting(self.customer(customer), house(self.redemption), points)?;
                let timeout_nanos = u64::from(timeout_ms) * 1_000_000;
                let operation = Operation::Hold { posting, timeout_nanos };
                Plan::Submit { command: write(meta, TxKind::REDEEM, operation)? }
            }
            Op::Capture { ref meta, hold, points } => {
                let operation =
                    Operation::Capture { hold: TxId(hold), amount: Amount::new(points) };
                Plan::Submit { command: write(meta, TxKind::REDEEM, operation)? }
            }
            Op::Void { ref meta, hold } => {
                let operation = Operation::Void { hold: TxId(hold) };
                Plan::Submit { command: write(meta, TxKind::REDEEM, operation)? }
            }
            Op::Reverse { ref meta, tx } => {
                let operation = Operation::Reverse { original: TxId(tx) };
                Plan::Submit { command: write(meta, TxKind::REVERSAL, operation)? }
            }
            Op::Transfer { ref meta, source, destination, points } => {
                let operation = Operation::Transfer {
                    source: self.customer(source),
                    destination: self.customer(destination),
                    amount: Amount::new(points).ok_or(Status::AmountZero)?,
                };
                Plan::Submit { command: write(meta, TxKind::TRANSFER, operation)? }
            }
        })
    }
}

/// A basket's lines as the engine takes them.
fn lines_of(basket: &Basket) -> ledger_engine::loyalty::Lines {
    basket
        .lines()
        .iter()
        .map(|line| Line { category: line.category, amount: line.amount, excluded: line.excluded })
        .collect()
}

/// A settlement, failure or refund of the purchase a lifecycle operation names.
fn change(purchase: PurchaseRef, event: PurchaseEvent) -> Operation {
    let reference = match purchase {
        PurchaseRef::Id(tx) => EnginePurchaseRef::Id(TxId(tx)),
        PurchaseRef::Receipt { customer } => EnginePurchaseRef::Receipt { customer },
    };
    Operation::PurchaseChange { reference, event }
}

/// A purchase's lifecycle on the wire; `None` is a purchase the shard no longer keeps.
fn lifecycle_reply(tx: TxId, entry: Option<&Refundable>) -> Lifecycle {
    let Some(entry) = entry else { return Lifecycle { tx_id: tx.0, ..Lifecycle::default() } };
    let gave = entry.gave();
    Lifecycle {
        tx_id: entry.id.0,
        customer: entry.customer,
        state: entry.state as u8,
        flags: entry.flags,
        day: entry.day,
        spend: entry.spend,
        weight: entry.weight,
        refunded: entry.refunded,
        earned: gave.earned,
        bonus: gave.bonus,
        cashback: gave.cashback,
    }
}

/// The wire status of an engine refusal: the same number (the tables are checked to agree).
pub fn status_of(code: ledger_engine::RejectCode) -> Status {
    Status::from_code(code.code()).unwrap_or(Status::InternalError)
}

/// The result of an operation from the engine's response. A committed write reports the
/// points the engine says it moved (`Committed::amount`): for a whole capture the points
/// captured, for a void the points released, for a reversal the points turned round.
/// `lifecycle`: an `explain` that asked for the purchase's lifecycle too.
pub fn answer(opcode: u8, lifecycle: bool, response: Response) -> OpResult {
    let committed = |c: ledger_engine::Committed, duplicate| {
        OpResult::Ok(Reply::Committed(Committed {
            tx_id: c.tx_id.0,
            timestamp: c.timestamp.0,
            lsn: c.lsn.0,
            points: c.amount,
            duplicate,
        }))
    };
    match response {
        Response::Committed(c) => committed(c, false),
        Response::Duplicate(c) => committed(c, true),
        Response::Rejected(code) => OpResult::Refused(status_of(code)),
        Response::Account(view) => {
            let counters = view.counters;
            let balance = (
                i64::try_from(counters.balance_posted()),
                i64::try_from(counters.balance_available()),
                u64::try_from(counters.debits_pending),
            );
            match balance {
                (Ok(posted), Ok(available), Ok(held)) => {
                    OpResult::Ok(Reply::Balance(BalanceView { posted, available, held }))
                }
                _ => OpResult::Refused(Status::Overflow),
            }
        }
        Response::History(entries) => OpResult::Ok(Reply::History(
            entries
                .iter()
                .map(|entry| HistoryItem {
                    tx_id: entry.tx_id.0,
                    timestamp: entry.timestamp.0,
                    amount: entry.amount,
                    kind: entry.kind.0,
                    flags: wire_flags(entry),
                })
                .collect(),
        )),
        Response::Member(view) => OpResult::Ok(Reply::Member(member_reply(&view))),
        Response::Explanation(explanation) => {
            let mut reply = explain_reply(&explanation);
            if lifecycle {
                let entry = explanation.lifecycle.as_ref();
                reply.lifecycle = Some(lifecycle_reply(explanation.tx_id, entry));
            }
            OpResult::Ok(Reply::Explanation(Box::new(reply)))
        }
        Response::Purchase(entry) => {
            OpResult::Ok(Reply::Lifecycle(lifecycle_reply(entry.id, Some(&entry))))
        }
        // No POS operation asks for a hold's view, whether a key is taken, the liability or a
        // history page; an answer of the wrong shape is a bug somewhere between here and the
        // engine, reported rather than guessed at.
        Response::Hold(_)
        | Response::Remembered(_)
        | Response::Liability(_)
        | Response::HistoryPage(_)
        | Response::Totals(_)
        | Response::Activity(_)
        | Response::Purchases(_) => {
            tracing::error!(opcode, "the engine answered a POS operation with the wrong shape");
            OpResult::Refused(Status::InternalError)
        }
    }
}

/// A member view on the wire: the first `MEMBER_LOTS_MAX` lots.
fn member_reply(view: &ledger_engine::ledger::command::MemberView) -> MemberReply {
    MemberReply {
        tier: view.tier,
        tier_recorded: view.tier_recorded,
        qualifying: view.qualifying,
        day_points: view.caps_used.day,
        month_points: view.caps_used.month,
        expiring: view.expiring,
        held: view.held,
        lot_count: u32::try_from(view.lot_count).unwrap_or(u32::MAX),
        lots: view
            .lots
            .iter()
            .take(ledger_protocol::ops::MEMBER_LOTS_MAX)
            .map(|lot| LotItem {
                origin: lot.origin.0,
                kind: lot.kind as u8,
                expires_day: lot.expires_day,
                amount: lot.amount,
                remaining: lot.remaining,
            })
            .collect(),
    }
}

/// An explanation on the wire.
fn explain_reply(explanation: &Explanation) -> ExplainReply {
    let purchase = &explanation.purchase;
    let outcome = &purchase.outcome;
    ExplainReply {
        tx_id: explanation.tx_id.0,
        timestamp: explanation.timestamp.0,
        lsn: explanation.lsn.0,
        customer: purchase.customer,
        store: purchase.header.metadata.store,
        rules_version: outcome.rules_version,
        rules_effective_at: explanation.rules_effective_at.0,
        base: outcome.base,
        category: outcome.category,
        tier_points: outcome.tier_points,
        cap_cut: outcome.cap_cut,
        earned: outcome.earned,
        bonus: outcome.bonus,
        cashback: outcome.cashback,
        tier_before: (outcome.tier_before, explanation.tier_before.clone()),
        tier_after: (outcome.tier_after, explanation.tier_after.clone()),
        daily_cap: explanation.caps.daily.unwrap_or(0),
        monthly_cap: explanation.caps.monthly.unwrap_or(0),
        promotions: explanation
            .promotions
            .iter()
            .map(|promotion| PromotionItem {
                index: promotion.index,
                points: promotion.points,
                name: promotion.name.clone(),
            })
            .collect(),
        lines: purchase
            .lines
            .iter()
            .map(|line| BasketLine {
                category: line.category,
                amount: line.amount,
                excluded: line.excluded,
            })
            .collect(),
        lifecycle: None,
    }
}

/// A history entry's flags on the wire: the engine's bits (the same numbers), except that a
/// reversed transaction is no longer `reversible`: the flag says what `reverse` accepts now.
/// (The engine keeps both bits: its ring must still tell a reversed plain transaction,
/// `already_reversed`, from one never reversible.)
fn wire_flags(entry: &HistoryEntry) -> u8 {
    if entry.has(HistoryEntry::REVERSED) {
        entry.flags & !HistoryEntry::REVERSIBLE
    } else {
        entry.flags
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_engine::RejectCode;

    #[test]
    fn wire_statuses_mirror_the_engine_reject_codes() {
        for code in RejectCode::ALL {
            let status = status_of(*code);
            assert_eq!(status.code(), code.code(), "{code:?}");
            assert_eq!(status.name(), code.name(), "{code:?}");
        }
        // And the other way round: the engine range of the wire table has nothing else.
        for status in Status::ALL.iter().filter(|s| (1..100).contains(&s.code())) {
            assert!(RejectCode::from_code(status.code()).is_some(), "{status:?}");
        }
    }

    /// The server prices nothing: a purchase of one amount is a basket of one line of its
    /// category, a basket goes to the engine line by line, as sent.
    #[test]
    fn purchases_become_engine_purchases_of_their_lines() {
        let book =
            Book { points: ClassId(1), redemption: ClassId(3), asset: ledger_engine::AssetId(0) };
        let meta = WriteMeta { key: 9, store: 4, category: 7, ..WriteMeta::default() };
        let lines = |plan: Plan| match plan {
            Plan::Submit { command: Command::Write(request) } => match request.operation {
                Operation::Purchase { customer, lines } => {
                    assert_eq!(
                        (customer, request.kind, request.metadata.store),
                        (42, TxKind::PURCHASE, 4)
                    );
                    lines.to_vec()
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        let one = lines(book.plan(1, &Op::Purchase { meta, customer: 42, amount: 1234 }));
        assert_eq!(one, [Line { category: 7, amount: 1234, excluded: false }]);
        let basket = ledger_protocol::ops::Basket::new(&[
            BasketLine { category: 1, amount: 5, excluded: false },
            BasketLine { category: 2, amount: 6, excluded: true },
        ])
        .unwrap();
        let two = lines(book.plan(1, &Op::PurchaseBasket { meta, customer: 42, basket }));
        assert_eq!(
            two,
            [
                Line { category: 1, amount: 5, excluded: false },
                Line { category: 2, amount: 6, excluded: true },
            ]
        );
        assert!(matches!(
            book.plan(1, &Op::Explain { tx: 77, lifecycle: true }),
            Plan::Submit { command: Command::Read(Query::Explain { tx: TxId(77) }) }
        ));
    }
}
