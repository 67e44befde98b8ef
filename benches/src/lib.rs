//! Shared helpers of the benchmarks: a ledger with the loyalty setup, and generators of
//! ready-to-apply records.

use ledger_engine::ledger::record::{Body, Record, Transaction, TxHeader};
use ledger_engine::ledger::{Ledger, LedgerConfig};
use ledger_engine::wal::payload;
use ledger_engine::{
    AccountFlags, AccountId, Amount, AssetId, ClassId, IdempotencyKey, Limits, Lsn, Metadata,
    Namespace, Posting, ShardId, TerminalId, Timestamp, TxKind,
};

/// The loyalty classes as `ledger_with_loyalty` defines them.
#[derive(Debug, Clone, Copy)]
pub struct Classes {
    /// The points asset.
    pub pts: AssetId,
    /// `customer:<id>:points`.
    pub points: ClassId,
    /// `house:issuance`.
    pub issuance: ClassId,
}

/// The definitions of the loyalty setup, as WAL bodies.
pub fn loyalty_definitions() -> Vec<Body> {
    use ledger_engine::ledger::account::Name;
    use ledger_engine::ledger::record::{AssetDefine, ClassDefine};
    let pts = AssetId(0);
    vec![
        Body::AssetDefine(AssetDefine { id: pts, code: Name::asset("PTS").unwrap(), scale: 0 }),
        Body::ClassDefine(ClassDefine {
            id: ClassId(1),
            namespace: Namespace::Customer,
            name: Name::class("points").unwrap(),
            asset: pts,
            flags: AccountFlags::NO_OVERDRAFT,
        }),
        Body::ClassDefine(ClassDefine {
            id: ClassId(2),
            namespace: Namespace::House,
            name: Name::class("issuance").unwrap(),
            asset: pts,
            flags: AccountFlags::NONE,
        }),
    ]
}

/// A single-shard ledger with the loyalty definitions applied.
pub fn ledger_with_loyalty(limits: Limits) -> (Ledger, Classes) {
    let config = LedgerConfig { limits, ..LedgerConfig::new(ShardId::new(0).unwrap(), 1) };
    let mut ledger = Ledger::new(config);
    let pts = AssetId(0);
    let timestamp = Timestamp(1_800_000_000_000_000_000);
    for body in loyalty_definitions() {
        let record = Record { lsn: ledger.lsn().next(), timestamp, body };
        ledger.apply(&record, 0).unwrap();
    }
    (ledger, Classes { pts, points: ClassId(1), issuance: ClassId(2) })
}

/// A generator of one-posting earn records, continuing a ledger's LSNs.
pub struct EarnRecords {
    rng: u64,
    key: u128,
    /// `Some(n)`: random customers among `n`; `None`: customers 0, 1, 2… in turn.
    customers: Option<u64>,
    next_customer: u64,
    classes: Classes,
}

impl EarnRecords {
    /// Earns for `customers` distinct customers, drawn at random.
    pub fn new(classes: Classes, customers: u64) -> EarnRecords {
        EarnRecords {
            rng: 0x9E37_79B9_7F4A_7C15,
            key: 0,
            customers: Some(customers),
            next_customer: 0,
            classes,
        }
    }

    /// Earns for customers 0, 1, 2…: each record creates one account.
    pub fn sequential(classes: Classes) -> EarnRecords {
        EarnRecords {
            rng: 0x9E37_79B9_7F4A_7C15,
            key: 0,
            customers: None,
            next_customer: 0,
            classes,
        }
    }

    /// The next `count` records after `lsn`, with their fingerprints.
    pub fn take(&mut self, ledger: &Ledger, count: usize) -> Vec<(Record, u64)> {
        let mut lsn = ledger.lsn();
        let timestamp = ledger.timestamp().plus_nanos(1);
        let mut ids = ledger_engine::ids::TxIdGenerator::new(
            ledger.shard(),
            Some(ledger.peek_tx_id(timestamp)),
        );
        (0..count)
            .map(|_| {
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                self.key += 1;
                lsn = Lsn(lsn.0 + 1);
                let customer = match self.customers {
                    Some(customers) => self.rng % customers,
                    None => {
                        self.next_customer += 1;
                        self.next_customer - 1
                    }
                };
                let posting = Posting {
                    debit: AccountId::new(self.classes.issuance, 0),
                    credit: AccountId::new(self.classes.points, customer),
                    asset: self.classes.pts,
                    amount: Amount::new(1 + self.rng % 100).unwrap(),
                };
                let header = TxHeader {
                    id: ids.next(timestamp),
                    kind: TxKind::PURCHASE,
                    terminal: TerminalId(1),
                    idempotency: IdempotencyKey::new(self.key),
                    metadata: Metadata::default(),
                };
                let body = Body::Transaction(Transaction {
                    header,
                    postings: [posting].into_iter().collect(),
                });
                let mut bytes = Vec::new();
                payload::encode_body(&body, &mut bytes);
                let fingerprint = payload::fingerprint(body.kind(), &bytes);
                (Record { lsn, timestamp, body }, fingerprint)
            })
            .collect()
    }
}
