//! The snapshotter thread of a shard: prepares capture buffers, encodes captured states, writes
//! them crash-safely, keeps the two newest snapshots and, if the retention policy says so,
//! deletes WAL segments that the older of them covers.
//!
//! It runs beside the shard. When a snapshot is due, the shard asks for a capture buffer sized
//! for its state; the snapshotter allocates it and faults every page in, so that the shard's
//! only pause, copying its state into the buffer, touches memory that is already mapped
//! (measured in `ShardStats::snapshot_pause_nanos_last`). The buffer of the last snapshot is
//! kept and handed out again while it is large enough: faulting hundreds of megabytes in for
//! every snapshot cost both cores several percent under sustained load. A failed snapshot is logged and
//! reported but does not stop the shard, since the WAL alone can rebuild the state.

use std::fs;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_channel::{Receiver, Sender};

use super::{ShardShared, WalRetention};
use crate::ids::Lsn;
use crate::keyindex::indexer::IndexerJob;
use crate::ledger::StateCapture;
use crate::recovery::ShardPaths;
use crate::snapshot;
use crate::wal::format::{Hash, SEGMENT_HEADER_BYTES, SegmentHeader};
use crate::wal::segment;

/// Snapshots kept: the newest, and one older in case the newest is found damaged.
pub(crate) const SNAPSHOTS_KEPT: usize = 2;

pub(crate) struct SnapshotJob {
    pub(crate) capture: Box<StateCapture>,
    pub(crate) last_hash: Hash,
    pub(crate) replies: Vec<Sender<Result<Lsn, String>>>,
}

/// What the snapshotter is asked to do.
pub(crate) enum SnapshotterJob {
    /// Prepare a capture buffer with room for this many accounts, idempotency keys and history
    /// entries, and
    /// send it back to the shard.
    Prepare { accounts: usize, keys: usize, history: usize },
    /// Write this captured state (sent by the WAL writer once the WAL covers it).
    Write(SnapshotJob),
}

pub(crate) struct Snapshotter {
    /// The capture buffer of the last snapshot written, kept for the next one.
    pub(crate) spare: Option<Box<StateCapture>>,
    pub(crate) jobs: Receiver<SnapshotterJob>,
    /// Where prepared capture buffers go (to the shard).
    pub(crate) prepared: Sender<Box<StateCapture>>,
    pub(crate) paths: ShardPaths,
    pub(crate) cluster_id: u64,
    pub(crate) retention: WalRetention,
    pub(crate) shared: Arc<ShardShared>,
    /// The key indexer: a snapshot of LSN L is written only once the key index runs reach L,
    /// so that recovery from it finds every key after L in the records it replays.
    pub(crate) indexer: Sender<IndexerJob>,
}

impl Snapshotter {
    pub(crate) fn run(mut self) {
        while let Ok(job) = self.jobs.recv() {
            let job = match job {
                SnapshotterJob::Prepare { accounts, keys, history } => {
                    let capture = match self.spare.take() {
                        Some(spare) if spare.has_room(accounts, keys, history) => spare,
                        _ => Box::new(StateCapture::prepared(accounts, keys, history)),
                    };
                    let _ = self.prepared.try_send(capture);
                    continue;
                }
                SnapshotterJob::Write(job) => job,
            };
            let lsn = job.capture.lsn();
            let created = job.capture.timestamp();
            let shard = job.capture.shard().index();
            let mut job = job;
            let outcome = self.write(&mut job);
            match &outcome {
                Ok(()) => {
                    self.shared.last_snapshot_lsn.store(lsn.0, Ordering::Relaxed);
                    self.shared.last_snapshot_created.store(created.0, Ordering::Relaxed);
                    tracing::info!(shard, lsn = lsn.0, "snapshot written");
                }
                Err(error) => tracing::error!(%error, "snapshot failed"),
            }
            self.shared.snapshot_in_progress.store(false, Ordering::Release);
            for reply in job.replies.drain(..) {
                let _ = reply.send(outcome.clone().map(|()| lsn));
            }
            self.spare = Some(job.capture);
        }
    }

    fn write(&self, job: &mut SnapshotJob) -> Result<(), String> {
        let lsn = job.capture.lsn();
        let (reply, reached) = crossbeam_channel::bounded(1);
        self.indexer
            .send(IndexerJob::Reach { through: lsn, reply: Some(reply) })
            .map_err(|_| "the key indexer stopped".to_string())?;
        reached
            .recv()
            .map_err(|_| "the key indexer stopped".to_string())?
            .map_err(|error| format!("the key index cannot reach lsn {lsn}: {error}"))?;
        let bytes = snapshot::encode(&mut job.capture, self.cluster_id, job.last_hash);
        snapshot::write(&self.paths.snapshots, lsn, &bytes).map_err(|e| e.to_string())?;
        let snapshots =
            snapshot::list_snapshots(&self.paths.snapshots).map_err(|e| e.to_string())?;
        // A WAL reader resumes from the newest snapshot at or below its position (LSN 0: the
        // start of the WAL): that one stays too, and so do the segments after it.
        let reader = self.shared.reader_lsn.load(Ordering::Relaxed);
        let reader_base = (reader != u64::MAX).then(|| {
            snapshots.iter().map(|(lsn, _)| *lsn).find(|lsn| lsn.0 <= reader).unwrap_or(Lsn::ZERO)
        });
        for (lsn, path) in snapshots.iter().skip(SNAPSHOTS_KEPT) {
            if Some(*lsn) == reader_base {
                continue;
            }
            fs::remove_file(path).map_err(|e| format!("removing {}: {e}", path.display()))?;
        }
        if self.retention == WalRetention::DeleteCovered
            && let Some((oldest_kept, _)) = snapshots.iter().take(SNAPSHOTS_KEPT).next_back()
        {
            let covered = reader_base.map_or(*oldest_kept, |base| base.min(*oldest_kept));
            let first = delete_covered_segments(&self.paths, covered)?;
            self.shared.wal_first_lsn.store(first.0, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Deletes segments all of whose records are at or below `covered`: segment i goes when
/// segment i+1 starts at or before `covered + 1`. The newest segment is never deleted.
/// Returns the first LSN the WAL holds afterwards.
fn delete_covered_segments(paths: &ShardPaths, covered: Lsn) -> Result<Lsn, String> {
    let segments = segment::list_segments(&paths.wal).map_err(|e| e.to_string())?;
    let mut first_lsns = Vec::with_capacity(segments.len());
    for (_, path) in &segments {
        let mut head = [0u8; SEGMENT_HEADER_BYTES as usize];
        let read = fs::File::open(path).and_then(|mut file| file.read_exact(&mut head));
        let header = read.ok().and_then(|()| SegmentHeader::decode(&head).ok());
        first_lsns.push(header.map(|header| header.first_lsn));
    }
    let mut deleted = false;
    for (index, (_, path)) in segments.iter().enumerate() {
        let next_start = first_lsns.get(index + 1).copied().flatten();
        match next_start {
            Some(next) if next <= covered.next() => {
                fs::remove_file(path).map_err(|e| format!("removing {}: {e}", path.display()))?;
                deleted = true;
            }
            _ => break,
        }
    }
    if deleted {
        segment::sync_dir(&paths.wal).map_err(|e| e.to_string())?;
    }
    let kept = first_lsns.iter().zip(&segments).find(|(_, (_, path))| path.exists());
    Ok(kept.and_then(|(first, _)| *first).unwrap_or(Lsn(1)))
}
