//! A progress bar for long reads: bytes of WAL read, rate and ETA, drawn on standard error
//! only when it is a terminal and `--quiet` is not given (so piped output and scripts see
//! nothing of it). Shards read at once share one bar.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ledger_engine::recovery::ShardPaths;
use ledger_engine::wal::segment;

/// Records between two updates of the bar (an update is an atomic and a clock read).
const UPDATE_EVERY: u32 = 4096;

/// The bar over the WAL segments of some shards.
pub struct Progress {
    bar: Option<ProgressBar>,
    /// Per shard, the bytes before each of its segments in the shard's WAL.
    starts: BTreeMap<u16, BTreeMap<u64, u64>>,
}

impl Progress {
    /// A bar over the WAL of `shards` of `data_dir`, hidden when `quiet` or when standard
    /// error is not a terminal.
    pub fn new(quiet: bool, data_dir: &Path, shards: &[u16], what: &str) -> Progress {
        let shown = !quiet && std::io::stderr().is_terminal();
        let mut starts = BTreeMap::new();
        let mut total = 0u64;
        for shard in shards {
            let wal = ShardPaths::new(data_dir, *shard).wal;
            let mut segments = BTreeMap::new();
            let mut before = 0u64;
            for (sequence, path) in segment::list_segments(&wal).unwrap_or_default() {
                segments.insert(sequence, before);
                before += std::fs::metadata(&path).map_or(0, |meta| meta.len());
            }
            total += before;
            starts.insert(*shard, segments);
        }
        let bar = shown.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(what.to_string());
            bar
        });
        Progress { bar, starts }
    }

    /// The part of the bar one shard moves (several may move it at once).
    pub fn shard(&self, shard: u16) -> ShardProgress {
        ShardProgress {
            bar: self.bar.clone(),
            starts: self.starts.get(&shard).cloned().unwrap_or_default(),
            shown: 0,
            countdown: 0,
        }
    }

    /// The read is over: the bar is cleared.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// One shard's share of a `Progress`.
pub struct ShardProgress {
    bar: Option<ProgressBar>,
    starts: BTreeMap<u64, u64>,
    /// Bytes of this shard already added to the bar.
    shown: u64,
    countdown: u32,
}

impl ShardProgress {
    /// A record at `offset` of segment `segment` was read.
    pub fn at(&mut self, segment: u64, offset: u64) {
        let Some(bar) = &self.bar else { return };
        if self.countdown > 0 {
            self.countdown -= 1;
            return;
        }
        self.countdown = UPDATE_EVERY;
        let position = self.starts.get(&segment).copied().unwrap_or(0) + offset;
        bar.inc(position.saturating_sub(self.shown));
        self.shown = self.shown.max(position);
    }
}
