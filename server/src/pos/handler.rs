//! What each POS operation means for the ledger: `Book::plan` turns a decoded operation into an
//! engine command (or an answer that needs no engine), and `answer` turns the engine's response
//! into the operation's result.
//!
//! | operation | engine command | postings |
//! |---|---|---|
//! | purchase | `Post`, kind purchase | `house:issuance` → `customer:<id>:points`, the earned points |
//! | redeem | `Post`, kind redeem | `customer:<id>:points` → `house:redemption` |
//! | hold | `Hold`, kind redeem | as redeem, reserved until capture, void or timeout |
//! | capture / void | `Capture` / `Void` | the hold's posting, whole or part / released |
//! | reverse | `Reverse`, kind reversal | the original's postings, turned round |
//! | transfer | `Transfer`, kind transfer | customer → customer, same or another shard |
//! | balance / history | `Query::Account` / `Query::History` | — |
//! | purchase earning 0 points | `Query::Idempotency` | — |
//!
//! Earned points are `amount × earn_points / earn_per_minor_units`, rounded down, computed
//! with 128-bit integers; a purchase that earns nothing posts nothing and is not remembered: it
//! asks its customer's shard whether its key is taken, and is answered `idempotency_conflict`
//! if it is (as any retry with another payload), `ok` with 0 points and transaction id 0 if not.

use ledger_engine::ledger::history::HistoryEntry;
use ledger_engine::{
    AccountId, Amount, ClassId, Command, IdempotencyKey, Metadata, Namespace, Operation, Posting,
    Query, Receipt, Request, Response, TerminalId, TxId, TxKind,
};
use ledger_protocol::Status;
use ledger_protocol::ops::{BalanceView, Committed, HistoryItem, Op, OpResult, Reply, WriteMeta};

use crate::config::PosConfig;

/// The accounts and rates the POS operations post with.
#[derive(Debug, Clone)]
pub struct Book {
    points: ClassId,
    issuance: ClassId,
    redemption: ClassId,
    asset: ledger_engine::AssetId,
    earn_points: u64,
    earn_per_minor_units: u64,
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
    pub fn new(engine: &ledger_engine::Engine, config: &PosConfig) -> anyhow::Result<Book> {
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
        Ok(Book {
            points,
            issuance: class(Namespace::House, "issuance")?.0,
            redemption: class(Namespace::House, "redemption")?.0,
            asset,
            earn_points: config.earn_points,
            earn_per_minor_units: config.earn_per_minor_units,
        })
    }

    fn customer(&self, customer: u64) -> AccountId {
        AccountId::new(self.points, customer)
    }

    fn posting(&self, debit: AccountId, credit: AccountId, points: u64) -> Result<Posting, Status> {
        let amount = Amount::new(points).ok_or(Status::AmountZero)?;
        Ok(Posting { debit, credit, asset: self.asset, amount })
    }

    /// Points a purchase of `amount` minor units earns.
    pub fn earned(&self, amount: u64) -> Result<u64, Status> {
        let points = u128::from(amount) * u128::from(self.earn_points)
            / u128::from(self.earn_per_minor_units);
        u64::try_from(points).map_err(|_| Status::Overflow)
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
                metadata: Metadata { store: meta.store, category: meta.category, receipt },
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
            Op::Purchase { ref meta, customer, amount } => {
                let points = self.earned(amount)?;
                if meta.key == 0 {
                    return Err(Status::IdempotencyKeyMissing);
                }
                if points == 0 {
                    // Nothing to post, nothing remembered; but a key the terminal used for a
                    // committed write is a conflict, as for any retry with another payload.
                    let key = IdempotencyKey::new(meta.key).ok_or(Status::IdempotencyKeyMissing)?;
                    let query = Query::Idempotency {
                        account: self.customer(customer),
                        terminal: TerminalId(terminal),
                        key,
                    };
                    return Ok(Plan::Submit { command: Command::Read(query) });
                }
                let posting =
                    self.posting(house(self.issuance), self.customer(customer), points)?;
                Plan::Submit { command: write(meta, TxKind::PURCHASE, post(posting))? }
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

/// The wire status of an engine refusal: the same number (the tables are checked to agree).
pub fn status_of(code: ledger_engine::RejectCode) -> Status {
    Status::from_code(code.code()).unwrap_or(Status::InternalError)
}

/// The result of an operation from the engine's response. A committed write reports the
/// points the engine says it moved (`Committed::amount`): for a whole capture the points
/// captured, for a void the points released, for a reversal the points turned round.
pub fn answer(opcode: u8, response: Response) -> OpResult {
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
        // Only a purchase that earns nothing asks whether its key is taken.
        Response::Remembered(true) => OpResult::Refused(Status::IdempotencyConflict),
        Response::Remembered(false) => OpResult::Ok(Reply::Committed(Committed {
            tx_id: 0,
            timestamp: 0,
            lsn: 0,
            points: 0,
            duplicate: false,
        })),
        // No POS operation asks for a hold's view; an answer of the wrong shape is a bug
        // somewhere between here and the engine, reported rather than guessed at.
        Response::Hold(_) | Response::Member(_) => {
            tracing::error!(opcode, "the engine answered a hold view to a POS operation");
            OpResult::Refused(Status::InternalError)
        }
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

    #[test]
    fn earned_points_round_down_in_integers() {
        let config =
            crate::config::PosConfig { earn_points: 3, earn_per_minor_units: 200, ..test_config() };
        let book = Book {
            points: ClassId(1),
            issuance: ClassId(2),
            redemption: ClassId(3),
            asset: ledger_engine::AssetId(0),
            earn_points: config.earn_points,
            earn_per_minor_units: config.earn_per_minor_units,
        };
        assert_eq!(book.earned(199), Ok(2));
        assert_eq!(book.earned(66), Ok(0));
        let exact = u64::try_from(u128::from(u64::MAX) * 3 / 200).unwrap();
        assert_eq!(book.earned(u64::MAX), Ok(exact));
        let generous = Book { earn_points: 1000, earn_per_minor_units: 1, ..book };
        assert_eq!(generous.earned(u64::MAX), Err(Status::Overflow));
    }

    fn test_config() -> crate::config::PosConfig {
        crate::config::PosConfig {
            addr: ([127, 0, 0, 1], 0).into(),
            credentials: "unused".into(),
            frame_bytes_max: 1 << 20,
            batch_ops_max: 8192,
            in_flight_max: 16,
            ops_in_flight_max: 8192,
            ops_in_flight_total_max: 8192,
            connections_max: 16,
            handshakes_max: 16,
            rate_per_terminal: 1,
            handshake_timeout: std::time::Duration::from_secs(1),
            drain_timeout: std::time::Duration::from_secs(1),
            earn_points: 1,
            earn_per_minor_units: 100,
            io_threads: 1,
        }
    }
}
