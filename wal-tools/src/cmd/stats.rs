//! `ledger-wal stats`: what each shard's WAL holds, segment by segment: records, bytes, time
//! span, LSN range, record kinds, the assets the records moved, and commit groups (each the
//! records one fdatasync made durable). Records are replayed by the engine's follower (from the
//! newest snapshot the first segment needs, when retention removed older segments), checked as
//! `verify` checks them, so the assets are those the records really moved.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use ledger_engine::datadir;
use ledger_engine::engine::ledger_config;
use ledger_engine::follow::{FollowError, Follower};
use ledger_engine::recovery::ShardPaths;
use ledger_engine::wal::reader::{self, ScanOptions};
use ledger_engine::{Limits, Lsn, ShardId, Timestamp};
use serde_json::json;

use crate::Outcome;

/// One segment's figures.
#[derive(Debug, Clone)]
struct SegmentStats {
    shard: u16,
    segment: u64,
    records: u64,
    bytes: u64,
    first_lsn: u64,
    last_lsn: u64,
    first_time: Timestamp,
    last_time: Timestamp,
    kinds: BTreeMap<&'static str, u64>,
    assets: BTreeMap<String, u64>,
    /// Groups that start in the segment.
    groups: u64,
}

impl SegmentStats {
    fn new(shard: u16, segment: u64) -> SegmentStats {
        SegmentStats {
            shard,
            segment,
            records: 0,
            bytes: 0,
            first_lsn: 0,
            last_lsn: 0,
            first_time: Timestamp(0),
            last_time: Timestamp(0),
            kinds: BTreeMap::new(),
            assets: BTreeMap::new(),
            groups: 0,
        }
    }

    fn add(&mut self, other: &SegmentStats) {
        if self.records == 0 {
            (self.first_lsn, self.first_time) = (other.first_lsn, other.first_time);
        }
        if other.records > 0 {
            (self.last_lsn, self.last_time) = (other.last_lsn, other.last_time);
        }
        self.records += other.records;
        self.bytes += other.bytes;
        self.groups += other.groups;
        for (kind, count) in &other.kinds {
            *self.kinds.entry(kind).or_default() += count;
        }
        for (asset, count) in &other.assets {
            *self.assets.entry(asset.clone()).or_default() += count;
        }
    }

    fn json(&self, scope: &str) -> serde_json::Value {
        let mean = (self.groups > 0).then(|| self.records as f64 / self.groups as f64);
        json!({
            "scope": scope,
            "shard": self.shard,
            "segment": (scope == "segment").then_some(self.segment),
            "records": self.records,
            "bytes": self.bytes,
            "first_lsn": self.first_lsn,
            "last_lsn": self.last_lsn,
            "first_time": (self.records > 0).then(|| crate::time::rfc3339(self.first_time)),
            "last_time": (self.records > 0).then(|| crate::time::rfc3339(self.last_time)),
            "kinds": self.kinds,
            "assets": self.assets,
            "commit_groups": self.groups,
            "mean_group_records": mean,
        })
    }
}

/// Thousands separated by commas: 1,234,567.
pub fn grouped(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The LSN before the first record the shard's oldest segment holds (0 for a whole WAL).
pub fn first_lsn_before(wal: &Path, shard: ShardId, cluster_id: u64) -> anyhow::Result<Lsn> {
    let options = ScanOptions {
        shard: Some(shard),
        cluster_id: Some(cluster_id),
        visit_until: Some(Lsn(u64::MAX)),
        stop_at_until: true,
        ..ScanOptions::all()
    };
    // Stop at the first record visited: only the oldest segment's header and first record are
    // read.
    let mut first = None;
    let scanned = reader::scan(wal, &options, |record| {
        first = Some(record.header.lsn);
        Err(())
    });
    match scanned {
        Ok(_) | Err(Ok(())) => Ok(first.map_or(Lsn::ZERO, |lsn| Lsn(lsn.0 - 1))),
        Err(Err(error)) => Err(error).context("cannot read the wal"),
    }
}

/// A follower of shard `index` at the WAL's first record: from LSN 0, or, when retention
/// removed the records before the oldest segment, from the snapshot just before it (else the
/// oldest snapshot after it).
pub fn follower_from_start(data_dir: &Path, index: u16) -> anyhow::Result<Follower> {
    let meta = datadir::read_meta(data_dir).context("cannot read the data directory")?;
    let shard = ShardId::new(index).context("shard out of range")?;
    let paths = ShardPaths::new(data_dir, index);
    let config = ledger_config(&meta, shard, &Limits::default());
    let first = first_lsn_before(&paths.wal, shard, meta.cluster_id)?;
    match Follower::open(&paths, config.clone(), meta.cluster_id, first) {
        Ok(follower) => Ok(follower),
        Err(error) => {
            let later = ledger_engine::snapshot::find_snapshots(&paths.snapshots)
                .unwrap_or_default()
                .into_iter()
                .map(|(lsn, _)| lsn)
                .filter(|lsn| *lsn > first)
                .min();
            let Some(at) = later else {
                return Err(error).context(format!("shard {index}: cannot open its wal"));
            };
            Follower::open(&paths, config, meta.cluster_id, at)
                .with_context(|| format!("shard {index}: cannot open its wal at lsn {at}"))
        }
    }
}

fn shard_stats(data_dir: &Path, index: u16) -> anyhow::Result<Vec<SegmentStats>> {
    let mut follower = follower_from_start(data_dir, index)?;
    let mut segments: BTreeMap<u64, SegmentStats> = BTreeMap::new();
    let visited = follower.advance(Lsn(u64::MAX), |followed| {
        let place = followed.place;
        let stats = segments
            .entry(place.segment)
            .or_insert_with(|| SegmentStats::new(index, place.segment));
        let (lsn, time) = (followed.record.lsn.0, followed.record.timestamp);
        if stats.records == 0 {
            (stats.first_lsn, stats.first_time) = (lsn, time);
        }
        (stats.last_lsn, stats.last_time) = (lsn, time);
        stats.records += 1;
        stats.bytes += u64::from(place.len);
        if place.commit_index == 0 {
            stats.groups += 1;
        }
        *stats.kinds.entry(followed.record.body.kind().name()).or_default() += 1;
        for moved in followed.moved {
            let code = followed
                .registry
                .asset(moved.asset)
                .map_or_else(|| moved.asset.0.to_string(), |asset| asset.code.to_string());
            *stats.assets.entry(code).or_default() += 1;
        }
        Ok::<(), std::convert::Infallible>(())
    });
    match visited {
        Ok(_) => Ok(segments.into_values().collect()),
        Err(FollowError::Recovery(error)) => Err(error).context(format!("shard {index}")),
        Err(FollowError::Stopped(never)) => match never {},
    }
}

pub fn run(data_dir: &Path, only: Option<u16>, as_json: bool) -> anyhow::Result<Outcome> {
    let meta = datadir::read_meta(data_dir).context("cannot read the data directory")?;
    let shards = crate::filter::shards(&meta, only)?;
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY).set_header([
        "shard", "segment", "records", "bytes", "lsn", "from", "to", "groups", "mean", "kinds",
        "assets",
    ]);
    for column in [2, 3, 7, 8] {
        if let Some(column) = table.column_mut(column) {
            column.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    for index in shards {
        let segments = shard_stats(data_dir, index)?;
        let mut total = SegmentStats::new(index, 0);
        for segment in &segments {
            total.add(segment);
        }
        let rows = segments.iter().map(|s| ("segment", s)).chain([("shard", &total)]);
        for (scope, stats) in rows {
            if as_json {
                println!("{}", stats.json(scope));
                continue;
            }
            let listed = |map: Vec<String>| map.join(" ");
            table.add_row([
                stats.shard.to_string(),
                if scope == "segment" { stats.segment.to_string() } else { "all".to_string() },
                grouped(stats.records),
                grouped(stats.bytes),
                format!("{}..={}", stats.first_lsn, stats.last_lsn),
                crate::time::rfc3339(stats.first_time),
                crate::time::rfc3339(stats.last_time),
                grouped(stats.groups),
                if stats.groups > 0 {
                    format!("{:.1}", stats.records as f64 / stats.groups as f64)
                } else {
                    "-".to_string()
                },
                listed(stats.kinds.iter().map(|(k, n)| format!("{k}:{}", grouped(*n))).collect()),
                listed(stats.assets.keys().cloned().collect()),
            ]);
        }
    }
    if !as_json {
        println!("{table}");
    }
    Ok(Outcome::Sound)
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_are_grouped_by_thousands() {
        let cases = [(0, "0"), (999, "999"), (1_000, "1,000"), (1_234_567, "1,234,567")];
        for (value, text) in cases {
            assert_eq!(super::grouped(value), text);
        }
        assert_eq!(super::grouped(u64::MAX), "18,446,744,073,709,551,615");
    }
}
