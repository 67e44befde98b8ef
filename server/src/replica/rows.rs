//! What a followed record becomes in the replica: a `transactions` row, a `postings` row per
//! movement of value, and the `accounts` those name (docs/reporting.md, "Tables"). Pure: the
//! record, its movements and the shard's registry in, rows out.

use ledger_engine::Timestamp;
use ledger_engine::follow::Followed;
use ledger_engine::ledger::account::{AccountId, ClassId, Namespace};
use ledger_engine::ledger::record::Body;
use ledger_engine::ledger::registry::Registry;
use ledger_engine::loyalty::calendar::rfc3339;
use ledger_engine::loyalty::liability::Flow;
use serde_json::{Map, Value, json};

/// A `transactions` row.
#[derive(Debug, Clone, PartialEq)]
pub struct TxRow {
    /// When the shard decided the record.
    pub time: Timestamp,
    /// The shard.
    pub shard: u16,
    /// The record's LSN.
    pub lsn: u64,
    /// Its transaction id, if it has one.
    pub tx_id: Option<u64>,
    /// The record kind's name.
    pub record_kind: &'static str,
    /// The client's transaction kind.
    pub tx_kind: Option<u16>,
    /// The terminal.
    pub terminal: Option<u32>,
    /// The store (none when 0).
    pub store: Option<u32>,
    /// The idempotency key, big-endian.
    pub idempotency_key: Option<[u8; 16]>,
    /// The customer the record is about.
    pub customer: Option<u64>,
    /// Everything else (docs/reporting.md, "metadata").
    pub metadata: Value,
}

/// A `postings` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostingRow {
    /// The record's time, shard and LSN.
    pub time: Timestamp,
    /// See `time`.
    pub shard: u16,
    /// See `time`.
    pub lsn: u64,
    /// The posting's place in its record.
    pub index: u32,
    /// The record's transaction id.
    pub tx_id: Option<u64>,
    /// The account debited.
    pub debit: String,
    /// The account credited.
    pub credit: String,
    /// The asset's code.
    pub asset: String,
    /// The amount.
    pub amount: u64,
    /// `posted`, `pending` or `released`.
    pub effect: &'static str,
    /// The customer whose account it moves (the credited side's first).
    pub customer: Option<u64>,
    /// Which flow of the programme's points it is.
    pub flow: Option<&'static str>,
}

/// An `accounts` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRow {
    /// The address.
    pub address: String,
    /// `customer`, `house`, `partner`, `transit`.
    pub namespace: &'static str,
    /// The class's name.
    pub class: String,
    /// The asset's code.
    pub asset: String,
    /// The owner.
    pub owner: u64,
    /// No overdraft.
    pub no_overdraft: bool,
}

/// An account's address, or its ids when the registry does not know it (never, for a record
/// that applied).
pub fn address(registry: &Registry, account: AccountId) -> String {
    registry.address(account).map_or_else(
        || format!("unknown:{}:{}", account.class().0, account.owner()),
        |a| a.to_string(),
    )
}

/// The `accounts` row of `account`.
pub fn account_row(registry: &Registry, account: AccountId) -> AccountRow {
    let class = registry.class(account.class());
    let asset = class
        .map(|class| class.asset)
        .or_else(|| {
            // A transit account's owner is its asset's id.
            (account.class() == ClassId::TRANSIT)
                .then(|| u16::try_from(account.owner()).ok())
                .flatten()
                .map(ledger_engine::ledger::account::AssetId)
        })
        .and_then(|asset| registry.asset(asset))
        .map_or_else(String::new, |asset| asset.code.to_string());
    AccountRow {
        address: address(registry, account),
        namespace: match class.map(|class| class.namespace) {
            Some(Namespace::Customer) => "customer",
            Some(Namespace::House) => "house",
            Some(Namespace::Partner) => "partner",
            None => "transit",
        },
        class: class.map_or_else(|| "transit".to_string(), |class| class.name.to_string()),
        asset,
        owner: account.owner(),
        no_overdraft: class
            .is_some_and(|class| class.flags.contains(ledger_engine::AccountFlags::NO_OVERDRAFT)),
    }
}

/// The rows of one followed record of `shard`: its transaction row and its postings.
pub fn rows(shard: u16, followed: &Followed<'_>) -> (TxRow, Vec<PostingRow>) {
    let registry = followed.registry;
    let record = followed.record;
    let body = &record.body;
    let header = body.header();
    let tx_id = body.tx_id().map(|id| id.0);
    let customer_of = |account: AccountId| {
        registry
            .class(account.class())
            .filter(|class| class.namespace == Namespace::Customer)
            .map(|_| account.owner())
    };
    let customer = match body {
        Body::Purchase(purchase) => Some(purchase.customer),
        Body::LotsExpire(expire) => Some(expire.customer),
        _ => followed
            .moved
            .iter()
            .find_map(|moved| customer_of(moved.debit).or_else(|| customer_of(moved.credit))),
    };
    let mut metadata = Map::new();
    if let Some(header) = header {
        let meta = &header.metadata;
        if !meta.receipt.as_str().is_empty() {
            metadata.insert("receipt".into(), json!(meta.receipt.as_str()));
        }
        if meta.category != 0 {
            metadata.insert("category".into(), json!(meta.category));
        }
        if let Some(annotation) = &meta.annotation {
            metadata.insert("actor".into(), json!(annotation.actor()));
            metadata.insert("reason".into(), json!(annotation.reason()));
        }
    }
    match body {
        Body::Purchase(purchase) => {
            let outcome = &purchase.outcome;
            // Every component, zeros left out: a purchase row stays small (the replica's
            // insert rate is bounded by its bytes).
            let mut earning = Map::new();
            earning.insert("rules_version".into(), json!(outcome.rules_version));
            for (name, value) in [
                ("base", outcome.base),
                ("category", outcome.category),
                ("tier", outcome.tier_points),
                ("cap_cut", outcome.cap_cut),
                ("earned", outcome.earned),
                ("bonus", outcome.bonus),
                ("cashback", outcome.cashback),
            ] {
                if value != 0 {
                    earning.insert(name.into(), json!(value));
                }
            }
            if outcome.tier_before != 0 || outcome.tier_after != 0 {
                earning.insert("tier_before".into(), json!(outcome.tier_before));
                earning.insert("tier_after".into(), json!(outcome.tier_after));
            }
            if !outcome.promotions.is_empty() {
                let promotions: Vec<Value> = outcome
                    .promotions
                    .iter()
                    .map(|p| json!({"promotion": p.promotion, "points": p.points}))
                    .collect();
                earning.insert("promotions".into(), Value::Array(promotions));
            }
            metadata.insert("earning".into(), Value::Object(earning));
        }
        Body::HoldCreate(hold) => {
            let expires = record.timestamp.plus_nanos(hold.timeout_nanos);
            metadata.insert("expires_at".into(), json!(rfc3339(expires)));
        }
        Body::HoldCapture(capture) => {
            metadata.insert("hold".into(), json!(capture.hold.0));
        }
        Body::HoldVoid(void) => {
            metadata.insert("hold".into(), json!(void.hold.0));
        }
        Body::HoldExpire(expire) => {
            metadata.insert("hold".into(), json!(expire.hold.0));
        }
        Body::Reversal(reversal) => {
            metadata.insert("original".into(), json!(reversal.original.0));
        }
        _ => {}
    }
    let tx = TxRow {
        time: record.timestamp,
        shard,
        lsn: record.lsn.0,
        tx_id,
        record_kind: body.kind().name(),
        tx_kind: header.map(|header| header.kind.0),
        terminal: header.map(|header| header.terminal.0),
        store: header.map(|header| header.metadata.store).filter(|store| *store != 0),
        idempotency_key: header
            .and_then(|header| header.idempotency)
            .map(|key| key.get().to_be_bytes()),
        customer,
        metadata: Value::Object(metadata),
    };
    let postings = followed
        .moved
        .iter()
        .enumerate()
        .map(|(index, moved)| PostingRow {
            time: record.timestamp,
            shard,
            lsn: record.lsn.0,
            index: u32::try_from(index).expect("a record moves fewer than 2^32 times"),
            tx_id,
            debit: address(registry, moved.debit),
            credit: address(registry, moved.credit),
            asset: registry
                .asset(moved.asset)
                .map_or_else(|| moved.asset.0.to_string(), |asset| asset.code.to_string()),
            amount: moved.amount,
            effect: moved.effect.name(),
            customer: customer_of(moved.credit).or_else(|| customer_of(moved.debit)),
            flow: moved.flow.map(Flow::name),
        })
        .collect();
    (tx, postings)
}
