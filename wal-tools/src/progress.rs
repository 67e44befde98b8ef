//! A progress bar for long scans: bytes of WAL read, rate and ETA, drawn on standard error
//! only when it is a terminal and `--quiet` is not given (so piped output and scripts see
//! nothing of it).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ledger_engine::follow::Place;
use ledger_engine::recovery::ShardPaths;
use ledger_engine::wal::segment;

/// Records between two updates of the bar (an update is an atomic and a clock read).
const UPDATE_EVERY: u32 = 4096;

/// The bar over the WAL segments of some shards.
pub struct Progress {
    bar: Option<ProgressBar>,
    /// Per shard, the bytes before each of its segments in the whole read.
    starts: BTreeMap<u16, BTreeMap<u64, u64>>,
    current: BTreeMap<u64, u64>,
    countdown: u32,
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
            for (sequence, path) in segment::list_segments(&wal).unwrap_or_default() {
                segments.insert(sequence, total);
                total += std::fs::metadata(&path).map_or(0, |meta| meta.len());
            }
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
        Progress { bar, starts, current: BTreeMap::new(), countdown: 0 }
    }

    /// The walk moves on to `shard`.
    pub fn shard(&mut self, shard: u16) {
        self.current = self.starts.get(&shard).cloned().unwrap_or_default();
        self.countdown = 0;
    }

    /// A record at `place` was read.
    pub fn at(&mut self, place: Place) {
        let Some(bar) = &self.bar else { return };
        if self.countdown > 0 {
            self.countdown -= 1;
            return;
        }
        self.countdown = UPDATE_EVERY;
        let before = self.current.get(&place.segment).copied().unwrap_or(0);
        bar.set_position(before + place.offset);
    }

    /// The read is over: the bar is cleared.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
