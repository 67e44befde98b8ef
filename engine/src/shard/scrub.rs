//! The scrubber thread of a shard: re-reads data at rest at a bounded rate, so that damage is
//! found while the shard runs, not at the next start or the next audit.
//!
//! Start-up reads every segment header but only the records it replays (those after the newest
//! snapshot); a bit that rots in an older segment, in a snapshot kept as a fallback, or in a key
//! index run would otherwise go unnoticed until someone needs it. A pass checks:
//! - every finished WAL segment (all but the newest, which the WAL writer is writing): headers,
//!   record checksums, LSNs, commit trailers, zero tails, and the hash chain across them;
//! - every snapshot: header and body checksums;
//! - every key index run: header, fences, filter, and every block and entry.
//!
//! Findings are logged as errors and counted (`ShardStats::scrub_findings`). A damaged key
//! index run is set aside, so that the next start rebuilds it from the WAL; damage to the WAL
//! or a snapshot is for an operator (docs/operations.md, "Scrub"): the shard keeps serving from
//! memory, and the next start refuses a WAL it cannot trust.
//!
//! Reads are paced to `rate_bytes_per_sec`, a megabyte at a time, so that a pass costs the WAL's
//! fdatasyncs little (docs/performance.md, "Scrub").

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::ShardShared;
use crate::ids::{Lsn, ShardId};
use crate::keyindex::KEYS_DIR;
use crate::keyindex::indexer::IndexerJob;
use crate::keyindex::run::{self, Run, RunError, RunIdentity};
use crate::recovery::ShardPaths;
use crate::snapshot;
use crate::wal::reader::{self, ScanOptions};
use crate::wal::segment;

pub(crate) struct Scrubber {
    pub(crate) paths: ShardPaths,
    pub(crate) shard: ShardId,
    pub(crate) cluster_id: u64,
    pub(crate) key_identity: RunIdentity,
    /// Bytes read per second at most.
    pub(crate) rate_bytes_per_sec: u64,
    /// Time between the end of a pass and the start of the next (and before the first).
    pub(crate) interval: Duration,
    /// Disconnected when the shard stops: the scrubber ends within a pace step.
    pub(crate) stop: Receiver<()>,
    /// Where damaged key index runs are sent to be set aside.
    pub(crate) indexer: Sender<IndexerJob>,
    pub(crate) shared: Arc<ShardShared>,
}

/// Paces reads and notices the stop.
struct Pacer<'a> {
    shared: &'a ShardShared,
    rate_bytes_per_sec: u64,
    started: Instant,
    bytes: u64,
    stop: &'a Receiver<()>,
    stopped: bool,
}

impl Pacer<'_> {
    /// Counts `bytes` read, and sleeps until reading them is within the rate.
    fn pace(&mut self, bytes: u64) {
        self.bytes += bytes;
        self.shared.scrub_bytes.fetch_add(bytes, Ordering::Relaxed);
        if self.stopped {
            return;
        }
        let due = u128::from(self.bytes) * 1_000_000_000 / u128::from(self.rate_bytes_per_sec);
        let due = Duration::from_nanos(u64::try_from(due).unwrap_or(u64::MAX));
        let elapsed = self.started.elapsed();
        if due > elapsed {
            self.stopped = !wait(self.stop, due - elapsed);
        }
    }
}

/// Sleeps for `duration` unless the stop comes first; false once stopping.
fn wait(stop: &Receiver<()>, duration: Duration) -> bool {
    matches!(stop.recv_timeout(duration), Err(RecvTimeoutError::Timeout) | Ok(()))
}

impl Scrubber {
    pub(crate) fn run(self) {
        loop {
            if !wait(&self.stop, self.interval) {
                return;
            }
            let started = Instant::now();
            let mut pacer = Pacer {
                shared: &self.shared,
                rate_bytes_per_sec: self.rate_bytes_per_sec.max(1),
                started,
                bytes: 0,
                stop: &self.stop,
                stopped: false,
            };
            let findings = self.pass(&mut pacer);
            if pacer.stopped {
                return;
            }
            let shared = &self.shared;
            shared.scrub_passes.fetch_add(1, Ordering::Relaxed);
            shared.scrub_findings.fetch_add(findings, Ordering::Relaxed);
            shared.scrub_findings_last.store(findings, Ordering::Relaxed);
            let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            shared.scrub_pass_nanos_last.store(nanos, Ordering::Relaxed);
            tracing::debug!(
                shard = self.shard.index(),
                bytes = pacer.bytes,
                findings,
                "scrub pass"
            );
        }
    }

    /// One pass; returns the findings.
    fn pass(&self, pacer: &mut Pacer<'_>) -> u64 {
        let mut findings = 0;
        let mut finding = |what: &str, detail: String| {
            findings += 1;
            tracing::error!(shard = self.shard.index(), what, %detail, "scrub found damage");
        };
        if let Err(detail) = self.scrub_wal(pacer) {
            finding("wal", detail);
        }
        // Listed without `list_snapshots`, which deletes `.tmp` files: one may be a snapshot
        // the snapshotter is writing.
        match snapshot::find_snapshots(&self.paths.snapshots) {
            Ok(snapshots) => {
                for (_, path) in snapshots {
                    match snapshot::read_checked(&path, &mut |bytes| pacer.pace(bytes)) {
                        Ok(_) => {}
                        Err(snapshot::SnapshotError::Io { source, .. }) if is_gone(&source) => {}
                        Err(error) => finding("snapshot", error.to_string()),
                    }
                    if pacer.stopped {
                        return findings;
                    }
                }
            }
            Err(error) => finding("snapshot", error.to_string()),
        }
        for path in self.runs() {
            let verified = Run::open(&path, self.key_identity)
                .and_then(|run| run.verify_paced(&mut |bytes| pacer.pace(bytes)));
            match verified {
                Ok(_) => {}
                // Deleted (past the window) since it was listed.
                Err(RunError::Io { source, .. }) if is_gone(&source) => {}
                Err(error) => {
                    finding("key index run", error.to_string());
                    let _ = self.indexer.send(IndexerJob::SetAside(vec![path]));
                }
            }
            if pacer.stopped {
                return findings;
            }
        }
        findings
    }

    /// Checks every finished segment, in order, with the hash chain between them.
    fn scrub_wal(&self, pacer: &mut Pacer<'_>) -> Result<(), String> {
        let segments = segment::list_segments(&self.paths.wal).map_err(|e| e.to_string())?;
        let (Some((first, first_path)), Some((newest, _))) = (segments.first(), segments.last())
        else {
            return Ok(());
        };
        if first == newest {
            return Ok(());
        }
        let head = std::fs::read(first_path).map_err(|e| e.to_string())?;
        let header = crate::wal::format::SegmentHeader::decode(&head)
            .map_err(|e| format!("{}: {e}", first_path.display()))?;
        let options = ScanOptions {
            shard: Some(self.shard),
            cluster_id: Some(self.cluster_id),
            visit_after: Lsn(header.first_lsn.0 - 1),
            last_segment: Some(newest - 1),
            ..ScanOptions::all()
        };
        let stopped = std::cell::Cell::new(false);
        let scanned = reader::scan_paced(
            &self.paths.wal,
            &options,
            &mut |bytes| {
                pacer.pace(bytes);
                stopped.set(pacer.stopped);
            },
            |_| if stopped.get() { Err(()) } else { Ok(()) },
        );
        match scanned {
            Ok(_) | Err(Ok(())) => Ok(()),
            // A segment deleted by retention since it was listed.
            Err(Err(reader::WalError::Io { source, .. })) if is_gone(&source) => Ok(()),
            Err(Err(error)) => Err(error.to_string()),
        }
    }

    fn runs(&self) -> Vec<std::path::PathBuf> {
        let dir = self.paths.root.join(KEYS_DIR);
        let mut runs: Vec<_> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                    .filter(|path| is_run(path))
                    .collect()
            })
            .unwrap_or_default();
        runs.sort();
        runs
    }
}

fn is_run(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| run::parse_run_file_name(name).is_some())
}

fn is_gone(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::NotFound
}
