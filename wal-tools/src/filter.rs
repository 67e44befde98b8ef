//! The record filters `dump` and `export` share, and the walk that applies them: each shard
//! concerned is followed (the engine's replay, so a record that names no posting still shows
//! the movements it made) from the newest snapshot before the range to its end, and every record
//! that passes the filter is handed on, with a progress bar on a terminal.

use std::path::Path;

use anyhow::Context;
use ledger_engine::datadir::{self, DataDirMeta};
use ledger_engine::engine::ledger_config;
use ledger_engine::follow::{FollowError, Followed, Follower};
use ledger_engine::ledger::account::{AccountAddress, AccountId, Namespace};
use ledger_engine::ledger::record::{Body, RecordKind};
use ledger_engine::recovery::ShardPaths;
use ledger_engine::wal::reader::{self, ScanOptions};
use ledger_engine::{CustomerId, Limits, Lsn, ShardId, Timestamp, TxId};

use crate::progress::Progress;

/// Which records: every condition given must hold (none given: every record).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    /// Only records that moved this account (`customer:42:points`, `house:issuance`).
    #[arg(long, value_parser = account_address)]
    pub account: Option<AccountAddress>,
    /// Only records that moved a customer's value or changed their loyalty state.
    #[arg(long)]
    pub customer: Option<u64>,
    /// Only this transaction and the records that name it (a capture of a hold, a reversal,
    /// a purchase's settlement, refund or release, a transfer's arrival).
    #[arg(long)]
    pub tx: Option<u64>,
    /// Only records of this kind (repeatable): `transaction`, `purchase`, `purchase_refund`,
    /// `lots_expire`, … (`docs/wal-format.md`, "Record kinds").
    #[arg(long, value_parser = record_kind)]
    pub kind: Vec<RecordKind>,
    /// Only records at or after this LSN (of each shard read).
    #[arg(long, visible_alias = "from")]
    pub from_lsn: Option<u64>,
    /// Only records at or before this LSN (of each shard read).
    #[arg(long)]
    pub to_lsn: Option<u64>,
    /// Only records at or after this time (RFC 3339).
    #[arg(long, value_parser = crate::as_of_time)]
    pub from_time: Option<Timestamp>,
    /// Only records at or before this time (RFC 3339).
    #[arg(long, value_parser = crate::as_of_time)]
    pub to_time: Option<Timestamp>,
    /// Only transactions made at this store.
    #[arg(long)]
    pub store: Option<u32>,
    /// Only transactions sent by this terminal.
    #[arg(long)]
    pub terminal: Option<u32>,
    /// Only this shard (by default: the shard of `--customer` or `--tx`, else every shard).
    #[arg(long)]
    pub shard: Option<u16>,
}

/// An `--account` value.
fn account_address(text: &str) -> Result<AccountAddress, String> {
    text.parse::<AccountAddress>().map_err(|error| error.to_string())
}

/// A `--kind` value.
fn record_kind(text: &str) -> Result<RecordKind, String> {
    let kinds = (1..=u16::MAX).map_while(RecordKind::from_u16);
    if let Some(kind) = kinds.clone().find(|kind| kind.name() == text) {
        return Ok(kind);
    }
    let names: Vec<&str> = kinds.map(RecordKind::name).collect();
    Err(format!("no record kind is called {text:?}; the kinds are {}", names.join(", ")))
}

impl Filter {
    /// The shards to read: `--shard`, or the shard of `--customer`, `--tx` or a customer's
    /// `--account`, or every shard.
    pub fn shards(&self, meta: &DataDirMeta) -> anyhow::Result<Vec<u16>> {
        let count = meta.shard_count;
        let implied = match (self.customer, self.tx, &self.account) {
            (Some(customer), _, _) => {
                Some(ledger_engine::ids::shard_for_customer(CustomerId(customer), count).index())
            }
            (None, Some(tx), _) => Some(TxId(tx).shard()),
            (None, None, Some(AccountAddress::Customer { customer, .. })) => {
                Some(ledger_engine::ids::shard_for_customer(*customer, count).index())
            }
            _ => None,
        };
        shards(meta, self.shard.or(implied))
    }
}

/// One shard, or every shard of the directory.
pub fn shards(meta: &DataDirMeta, only: Option<u16>) -> anyhow::Result<Vec<u16>> {
    let count = meta.shard_count;
    match only {
        Some(shard) if shard < count => Ok(vec![shard]),
        Some(shard) => anyhow::bail!("shard {shard} does not exist (the directory has {count})"),
        None => Ok((0..count).collect()),
    }
}

/// A filter ready to test records.
struct Selector<'a> {
    filter: &'a Filter,
    /// `filter.account` as the registry names it, once it is defined.
    account_id: Option<AccountId>,
}

impl Selector<'_> {
    fn matches(&mut self, followed: &Followed<'_>) -> bool {
        let filter = self.filter;
        let record = followed.record;
        if filter.from_time.is_some_and(|from| record.timestamp < from)
            || filter.from_lsn.is_some_and(|from| record.lsn.0 < from)
        {
            return false;
        }
        if !filter.kind.is_empty() && !filter.kind.contains(&record.body.kind()) {
            return false;
        }
        let header = record.body.header();
        if let Some(store) = filter.store
            && header.is_none_or(|header| header.metadata.store != store)
        {
            return false;
        }
        if let Some(terminal) = filter.terminal
            && header.is_none_or(|header| header.terminal.0 != terminal)
        {
            return false;
        }
        if let Some(tx) = filter.tx
            && record.body.tx_id() != Some(TxId(tx))
            && related(&record.body) != Some(TxId(tx))
        {
            return false;
        }
        if let Some(address) = &filter.account {
            if self.account_id.is_none() {
                self.account_id = followed.registry.resolve(address).ok();
            }
            let Some(id) = self.account_id else { return false };
            if !followed.moved.iter().any(|moved| moved.debit == id || moved.credit == id) {
                return false;
            }
        }
        if let Some(customer) = filter.customer {
            let registry = followed.registry;
            let theirs = |id: AccountId| {
                id.owner() == customer
                    && registry
                        .class(id.class())
                        .is_some_and(|c| c.namespace == Namespace::Customer)
            };
            let moved = followed.moved.iter().any(|m| theirs(m.debit) || theirs(m.credit));
            if !moved
                && !followed.members.touched.contains(&customer)
                && customer_of(&record.body) != Some(customer)
            {
                return false;
            }
        }
        true
    }
}

/// The transaction a record names besides its own (a hold, an original, a purchase, a
/// transfer's source), if any.
pub fn related(body: &Body) -> Option<TxId> {
    match body {
        Body::HoldCapture(capture) => Some(capture.hold),
        Body::HoldVoid(void) => Some(void.hold),
        Body::HoldExpire(expire) => Some(expire.hold),
        Body::Reversal(reversal) => Some(reversal.original),
        Body::PurchaseChange(change) => Some(change.outcome.purchase),
        Body::PurchaseRelease(release) => Some(release.purchase),
        Body::TransferIn(transfer) => Some(transfer.source_tx),
        _ => None,
    }
}

/// The customer a record is about, when its body names one.
pub fn customer_of(body: &Body) -> Option<u64> {
    match body {
        Body::Purchase(purchase) => Some(purchase.customer),
        Body::PurchaseChange(change) => Some(change.outcome.customer),
        Body::LotsExpire(expire) => Some(expire.customer),
        Body::Conversion(conversion) => Some(conversion.customer),
        _ => None,
    }
}

/// The last LSN of `shard` whose record's time passes `keep` (`Lsn::ZERO`: none), by a scan
/// that checks every record but replays nothing; it stops at the first record that fails.
pub fn last_lsn_while(
    paths: &ShardPaths,
    meta: &DataDirMeta,
    shard: ShardId,
    keep: impl Fn(Timestamp) -> bool,
) -> anyhow::Result<Lsn> {
    let options =
        ScanOptions { shard: Some(shard), cluster_id: Some(meta.cluster_id), ..ScanOptions::all() };
    let mut last = Lsn::ZERO;
    let scanned = reader::scan(&paths.wal, &options, |record| {
        if !keep(record.header.timestamp) {
            return Err(());
        }
        last = record.header.lsn;
        Ok(())
    });
    match scanned {
        Ok(_) | Err(Ok(())) => Ok(last),
        Err(Err(error)) => {
            Err(error).with_context(|| format!("cannot read the wal of shard {}", shard.index()))
        }
    }
}

/// The state of shard `index` as of a moment: its last record at or before `to_lsn` and
/// `to_time` (either may be absent; neither: the WAL's last whole record), replayed from the
/// newest snapshot before it.
pub fn follower_as_of(
    data_dir: &Path,
    meta: &DataDirMeta,
    index: u16,
    to_lsn: Option<u64>,
    to_time: Option<Timestamp>,
) -> anyhow::Result<Follower> {
    let shard = ShardId::new(index).context("shard out of range")?;
    let paths = ShardPaths::new(data_dir, index);
    let last = last_lsn_while(&paths, meta, shard, |time| to_time.is_none_or(|to| time <= to))?;
    follower_at(data_dir, meta, index, last.min(Lsn(to_lsn.unwrap_or(u64::MAX))))
}

/// Opens a follower of `shard` at `lsn`, or at the first record the WAL still holds when
/// retention deleted the segments before `lsn`.
pub fn follower_at(
    data_dir: &Path,
    meta: &DataDirMeta,
    index: u16,
    lsn: Lsn,
) -> anyhow::Result<Follower> {
    let shard = ShardId::new(index).context("shard out of range")?;
    let paths = ShardPaths::new(data_dir, index);
    let first = crate::cmd::stats::first_lsn_before(&paths.wal, shard, meta.cluster_id)?;
    if lsn <= first {
        return crate::cmd::stats::follower_from_start(data_dir, index);
    }
    let config = ledger_config(meta, shard, &Limits::default());
    Follower::open(&paths, config, meta.cluster_id, lsn)
        .with_context(|| format!("shard {index} cannot be replayed to lsn {lsn}"))
}

/// How a walk ended.
pub enum Walked {
    /// Every shard was read to the end of the range.
    Whole,
    /// A shard's files stopped it: the message names the file, offset and LSN.
    Damaged(String),
}

/// Follows each shard `filter` selects over its range and hands every record that passes it to
/// `visit` (with its shard), in shard order, then LSN order. `visit` answers `false` to stop.
pub fn walk(
    data_dir: &Path,
    filter: &Filter,
    quiet: bool,
    mut visit: impl FnMut(u16, &Followed<'_>) -> anyhow::Result<bool>,
) -> anyhow::Result<Walked> {
    let meta =
        datadir::read_meta(data_dir).context("cannot read the data directory's meta file")?;
    let shards = filter.shards(&meta)?;
    let mut selector = Selector { filter, account_id: None };
    let progress = Progress::new(quiet, data_dir, &shards, "reading");
    for index in shards {
        let shard = ShardId::new(index).context("shard out of range")?;
        let paths = ShardPaths::new(data_dir, index);
        // Start after the last record before the range (without replaying what precedes it
        // when a snapshot covers it).
        let mut start = Lsn(filter.from_lsn.unwrap_or(1).saturating_sub(1));
        if let Some(from) = filter.from_time {
            start = start.max(last_lsn_while(&paths, &meta, shard, |time| time < from)?);
        }
        let mut end = Lsn(filter.to_lsn.unwrap_or(u64::MAX));
        if let Some(to) = filter.to_time {
            // The follower applies a record before it is seen: find the end first.
            end = end.min(last_lsn_while(&paths, &meta, shard, |time| time <= to)?);
            if end == Lsn::ZERO {
                continue;
            }
        }
        let mut follower = follower_at(data_dir, &meta, index, start)?;
        selector.account_id = None;
        let mut shown = progress.shard(index);
        let mut enough = false;
        let visited = follower.advance(end, |followed| {
            shown.at(followed.place.segment, followed.place.offset);
            if !selector.matches(followed) {
                return Ok(());
            }
            match visit(index, followed) {
                Ok(true) => Ok(()),
                Ok(false) => {
                    enough = true;
                    Err(None)
                }
                Err(error) => Err(Some(error)),
            }
        });
        match visited {
            Err(FollowError::Stopped(None)) if enough => break,
            Ok(_) | Err(FollowError::Stopped(None)) => {}
            Err(FollowError::Stopped(Some(error))) => return Err(error),
            Err(FollowError::Recovery(error)) => {
                progress.finish();
                return Ok(Walked::Damaged(format!("shard {index}: {error}")));
            }
        }
    }
    progress.finish();
    Ok(Walked::Whole)
}
