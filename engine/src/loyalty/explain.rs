//! Why a purchase earned what it did: its record's outcome with the names the rule version
//! gives its tiers and promotions. The shard answers from the purchases it keeps in memory
//! (`RecentPurchases`); `from_wal` answers for any purchase from the WAL alone, as auditors'
//! tools do. Docs: docs/loyalty.md, "Explain".

use std::collections::VecDeque;
use std::path::Path;

use super::programme::{Programme, RulesVersion};
use crate::ids::{Lsn, ShardId, Timestamp, TxId};
use crate::ledger::record::{Body, Purchase};

/// One promotion's part of an explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplainedPromotion {
    /// Its position in the version's promotions.
    pub index: u8,
    /// Its name.
    pub name: String,
    /// Points it gave, before the cut.
    pub points: u64,
}

/// Why a purchase earned what it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The purchase's transaction id.
    pub tx_id: TxId,
    /// Its record's LSN on its shard.
    pub lsn: Lsn,
    /// When it was decided.
    pub timestamp: Timestamp,
    /// The record, inputs and outcome.
    pub purchase: Purchase,
    /// When the version that priced it took effect (on the purchase's shard).
    pub rules_effective_at: Timestamp,
    /// The name of the tier it was priced at.
    pub tier_before: String,
    /// The name of the tier it left the customer in.
    pub tier_after: String,
    /// Each promotion that gave points, named.
    pub promotions: Vec<ExplainedPromotion>,
    /// The caps in force (points per UTC day and month).
    pub caps: super::rules::Caps,
    /// The purchase's lifecycle entry, while its shard keeps it (the refund window); `None`
    /// from the WAL alone.
    pub lifecycle: Option<super::purchases::Refundable>,
}

impl Explanation {
    /// The explanation of `purchase`, priced by `version`.
    pub fn new(
        purchase: &Purchase,
        lsn: Lsn,
        timestamp: Timestamp,
        version: &RulesVersion,
    ) -> Explanation {
        let rules = &version.rules;
        let tier = |index: u8| {
            rules
                .tiers
                .get(usize::from(index))
                .map_or_else(|| format!("tier {index}"), |t| t.name.clone())
        };
        let outcome = &purchase.outcome;
        Explanation {
            tx_id: purchase.header.id,
            lsn,
            timestamp,
            purchase: purchase.clone(),
            rules_effective_at: version.effective_at,
            tier_before: tier(outcome.tier_before),
            tier_after: tier(outcome.tier_after),
            promotions: outcome
                .promotions
                .iter()
                .map(|promotion| ExplainedPromotion {
                    index: promotion.promotion,
                    name: rules.promotions.get(usize::from(promotion.promotion)).map_or_else(
                        || format!("promotion {}", promotion.promotion),
                        |p| p.name.clone(),
                    ),
                    points: promotion.points,
                })
                .collect(),
            caps: rules.caps,
            lifecycle: None,
        }
    }
}

/// The last purchases a shard applied, by transaction id: what `Query::Explain` answers from.
/// Not part of the shard's state (snapshots do not hold it): after a restart it holds the
/// purchases replayed since the snapshot.
#[derive(Debug, Clone, Default)]
pub struct RecentPurchases {
    capacity: usize,
    /// In the order applied, which is the order of their ids (a shard's ids increase): found by
    /// binary search, so remembering one is a copy into a ring, with no hashing.
    entries: VecDeque<(Lsn, Timestamp, Purchase)>,
}

impl RecentPurchases {
    /// Keeps the last `capacity` purchases.
    pub fn new(capacity: usize) -> RecentPurchases {
        RecentPurchases { capacity, entries: VecDeque::new() }
    }

    /// Remembers a purchase that applied, forgetting the oldest beyond the capacity.
    pub fn push(&mut self, lsn: Lsn, timestamp: Timestamp, purchase: &Purchase) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        debug_assert!(
            self.entries.back().is_none_or(|(_, _, last)| last.header.id < purchase.header.id),
            "a shard's transaction ids increase"
        );
        self.entries.push_back((lsn, timestamp, purchase.clone()));
    }

    /// The purchase `tx`, if still remembered.
    pub fn get(&self, tx: TxId) -> Option<&(Lsn, Timestamp, Purchase)> {
        let index = self.entries.binary_search_by_key(&tx, |(_, _, p)| p.header.id).ok()?;
        self.entries.get(index)
    }
}

/// Why `explain_from_wal` found no explanation.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The transaction's shard holds no purchase with this id.
    #[error("no purchase {0} in shard {1}'s WAL")]
    NotFound(TxId, u16),
    /// The WAL could not be read.
    #[error("{0}")]
    Wal(String),
}

/// Explains purchase `tx` from the WAL of its shard (named by its id) in `data_dir` alone,
/// reading the rule versions recorded before it. Versions whose records retention already
/// removed are taken from the shard's newest snapshot that reads (versions never change once
/// recorded, so a later snapshot's copy is the same version).
pub fn from_wal(data_dir: &Path, tx: TxId) -> Result<Explanation, ExplainError> {
    let meta = crate::datadir::read_meta(data_dir)
        .map_err(|error| ExplainError::Wal(error.to_string()))?;
    let shard = tx.shard();
    let shard_id = ShardId::new(shard)
        .filter(|id| id.index() < meta.shard_count)
        .ok_or(ExplainError::NotFound(tx, shard))?;
    let paths = crate::recovery::ShardPaths::new(data_dir, shard);
    let options = crate::wal::reader::ScanOptions {
        shard: Some(shard_id),
        cluster_id: Some(meta.cluster_id),
        ..crate::wal::reader::ScanOptions::all()
    };
    let mut programme = Programme::default();
    let mut from_snapshot: Option<Programme> = None;
    let mut found = None;
    // The visitor stops the scan with `None` once it found the purchase.
    let scanned = crate::wal::reader::scan(&paths.wal, &options, |record| {
        use crate::ledger::record::RecordKind;
        if !matches!(record.kind, RecordKind::RulesDefine | RecordKind::Purchase) {
            return Ok(());
        }
        let lsn = record.header.lsn;
        let decoded = record.decode().map_err(|error| Some(format!("lsn {lsn}: {error}")))?;
        match decoded.body {
            Body::RulesDefine(define) if define.version == programme.next_version() => {
                let at = decoded.timestamp;
                programme.define(
                    define.version,
                    define.effective_at,
                    define.accounts,
                    define.rules,
                    at,
                );
            }
            Body::Purchase(purchase) if purchase.header.id == tx => {
                let wanted = purchase.outcome.rules_version;
                let version = match programme.version(wanted) {
                    Some(version) => Some(version),
                    None => from_snapshot
                        .get_or_insert_with(|| newest_snapshot_programme(data_dir, &meta, shard_id))
                        .version(wanted),
                };
                let version = version.ok_or_else(|| {
                    Some(format!(
                        "lsn {lsn}: rule version {wanted} is neither in the WAL before it nor in a \
                         snapshot"
                    ))
                })?;
                found = Some(Explanation::new(&purchase, lsn, decoded.timestamp, version));
                return Err(None);
            }
            _ => {}
        }
        Ok(())
    });
    match scanned {
        Ok(_) | Err(Ok(None)) => {}
        Err(Ok(Some(reason))) => return Err(ExplainError::Wal(reason)),
        Err(Err(error)) => return Err(ExplainError::Wal(error.to_string())),
    }
    found.ok_or(ExplainError::NotFound(tx, shard))
}

/// The rule versions of the newest snapshot of `shard` that reads, or none.
fn newest_snapshot_programme(
    data_dir: &Path,
    meta: &crate::datadir::DataDirMeta,
    shard: ShardId,
) -> Programme {
    let paths = crate::recovery::ShardPaths::new(data_dir, shard.index());
    let config = crate::engine::ledger_config(meta, shard, &crate::limits::Limits::default());
    let snapshots = crate::snapshot::find_snapshots(&paths.snapshots).unwrap_or_default();
    snapshots
        .iter()
        .rev()
        .find_map(|(_, path)| crate::snapshot::load(path, config.clone(), meta.cluster_id).ok())
        .map(|(_, ledger)| ledger.programme().clone())
        .unwrap_or_default()
}
