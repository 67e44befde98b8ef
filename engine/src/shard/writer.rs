//! The WAL writer thread of a shard: group commit, then the answers.
//!
//! It takes every batch queued by the shard thread (up to `GROUP_JOBS_MAX`), writes them with
//! one `pwrite` each and makes them durable with one `fdatasync`. Only after that does it
//! publish the durable LSN, deliver the batches' replies, send their messages to other shards
//! and pass queued snapshots on to the snapshotter (a snapshot of LSN L must never reach the
//! disk before record L does).
//!
//! **Invariant:** fail-stop. After a write or fdatasync error the shard is poisoned: every
//! reply of the failed group and of every later batch is `ShardFailed` (their outcome is
//! unknown until restart), nothing more is written, and the shard thread refuses new work.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::snapshotter::{SnapshotJob, SnapshotterJob};
use super::{PeerMessage, ReplySink, ShardShared};
use crate::clock::Clock;
use crate::ids::{Lsn, ShardId};
use crate::keyindex::indexer::IndexerJob;
use crate::ledger::StateCapture;
use crate::ledger::command::Response;
use crate::ledger::keys::KeyEntry;
use crate::reject::RejectCode;
use crate::wal::format::Hash;
use crate::wal::mark::MARK_INTERVAL;
use crate::wal::writer::WalWriter;

/// Jobs the writer takes per commit group at most: bounds the latency one group adds.
const GROUP_JOBS_MAX: usize = 16;

/// Replies for one sink, in the order their commands were applied.
pub(crate) struct ReplyGroup {
    pub(crate) sink: Arc<dyn ReplySink>,
    pub(crate) replies: Vec<(u64, Response)>,
}

/// Everything one batch of the shard releases once durable.
#[derive(Default)]
pub(crate) struct Batch {
    /// Encoded, unsealed records.
    pub(crate) bytes: Vec<u8>,
    /// LSN of the last record in `bytes` (zero when there is none).
    pub(crate) last_lsn: Lsn,
    /// Answers to commands.
    pub(crate) replies: Vec<ReplyGroup>,
    /// Messages to other shards.
    pub(crate) peer_sends: Vec<(ShardId, PeerMessage)>,
    /// Answers to definitions.
    pub(crate) define_replies: Vec<Sender<Result<(), RejectCode>>>,
    /// The key entries the batch's records handed out, for the key indexer once durable.
    pub(crate) keys: Vec<KeyEntry>,
}

impl Batch {
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
            && self.replies.is_empty()
            && self.peer_sends.is_empty()
            && self.define_replies.is_empty()
    }

    /// Queues a reply to `sink`, joining the previous group when it is the same sink.
    pub(crate) fn reply(&mut self, sink: &Arc<dyn ReplySink>, tag: u64, response: Response) {
        let same_sink = self
            .replies
            .last()
            .is_some_and(|group| std::ptr::addr_eq(Arc::as_ptr(&group.sink), Arc::as_ptr(sink)));
        if !same_sink {
            self.replies.push(ReplyGroup { sink: Arc::clone(sink), replies: Vec::new() });
        }
        self.replies.last_mut().expect("pushed above").replies.push((tag, response));
    }
}

/// A job for the writer.
pub(crate) enum WriterJob {
    /// A batch to make durable.
    Batch(Batch),
    /// A snapshot of the ledger as of the last record queued before it.
    Snapshot {
        capture: Box<StateCapture>,
        replies: Vec<Sender<Result<Lsn, String>>>,
        /// Filled by the writer: the hash of the snapshot's last record.
        last_hash: Option<Hash>,
    },
}

pub(crate) struct WriterThread {
    pub(crate) wal: WalWriter,
    pub(crate) shard: ShardId,
    pub(crate) jobs: Receiver<WriterJob>,
    pub(crate) recycle: Sender<Vec<u8>>,
    pub(crate) peers: Arc<Vec<Sender<PeerMessage>>>,
    pub(crate) snapshots: Sender<SnapshotterJob>,
    pub(crate) shared: Arc<ShardShared>,
    pub(crate) clock: Arc<dyn Clock>,
    /// The key indexer: the entries of each durable batch go there (it may make the writer
    /// wait: the entries not yet in runs stay bounded).
    pub(crate) indexer: Sender<IndexerJob>,
}

impl WriterThread {
    pub(crate) fn run(mut self) {
        let mut group: Vec<WriterJob> = Vec::with_capacity(GROUP_JOBS_MAX);
        let mut last_mark = Instant::now();
        while let Ok(first) = self.jobs.recv() {
            group.push(first);
            while group.len() < GROUP_JOBS_MAX {
                match self.jobs.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            let failed = !self.commit(&mut group);
            for job in group.drain(..) {
                self.release(job, failed);
            }
            // After the answers: the mark delays no acknowledgement, only the next group.
            if !failed && last_mark.elapsed() >= MARK_INTERVAL {
                self.wal.mark_durable(self.clock.now());
                last_mark = Instant::now();
            }
        }
        if !self.shared.poisoned.load(Ordering::Acquire) {
            self.wal.mark_durable(self.clock.now());
        }
    }

    /// Writes and syncs the group; false if the shard is (now) poisoned.
    fn commit(&mut self, group: &mut [WriterJob]) -> bool {
        if self.shared.poisoned.load(Ordering::Acquire) {
            return false;
        }
        let now = self.clock.now();
        let mut last_lsn = None;
        for job in group.iter_mut() {
            match job {
                WriterJob::Batch(batch) => {
                    if let Err(error) = self.wal.append(&mut batch.bytes, now) {
                        return self.poison("write", &error);
                    }
                    if batch.last_lsn > Lsn::ZERO {
                        last_lsn = Some(batch.last_lsn);
                    }
                }
                WriterJob::Snapshot { capture, last_hash, .. } => {
                    assert_eq!(
                        capture.lsn().next(),
                        self.wal.next_lsn(),
                        "snapshot of written state"
                    );
                    *last_hash = Some(self.wal.last_hash());
                }
            }
        }
        let started = Instant::now();
        if let Err(error) = self.wal.sync() {
            return self.poison("fdatasync", &error);
        }
        let counters = self.wal.counters();
        let shared = &self.shared;
        shared.syncs.store(counters.syncs, Ordering::Relaxed);
        shared.wal_bytes.store(counters.bytes, Ordering::Relaxed);
        let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        shared.sync_nanos_total.fetch_add(elapsed, Ordering::Relaxed);
        if let Some(lsn) = last_lsn {
            assert_eq!(lsn.next(), self.wal.next_lsn());
            // Published before any reply is delivered: whoever holds an answer can rely on it.
            shared.durable_lsn.store(lsn.0, Ordering::Release);
        }
        true
    }

    fn poison(&self, operation: &str, error: &std::io::Error) -> bool {
        tracing::error!(
            shard = self.shard.index(),
            %error,
            "wal {operation} failed: the shard stops (fail-stop); restart to recover"
        );
        self.shared.poisoned.store(true, Ordering::Release);
        false
    }

    fn release(&self, job: WriterJob, failed: bool) {
        match job {
            WriterJob::Batch(mut batch) => {
                for group in batch.replies.drain(..) {
                    let ReplyGroup { sink, mut replies } = group;
                    if failed {
                        for (_, response) in &mut replies {
                            *response = Response::Rejected(RejectCode::ShardFailed);
                        }
                    }
                    sink.deliver(replies);
                }
                for reply in batch.define_replies.drain(..) {
                    let outcome = if failed { Err(RejectCode::ShardFailed) } else { Ok(()) };
                    let _ = reply.send(outcome);
                }
                if !failed && batch.last_lsn > Lsn::ZERO {
                    let entries = std::mem::take(&mut batch.keys);
                    let job = IndexerJob::Entries { entries, through: batch.last_lsn };
                    // Gone only when the shard is stopping.
                    let _ = self.indexer.send(job);
                }
                if !failed {
                    for (shard, message) in batch.peer_sends.drain(..) {
                        // A full or closed peer channel drops the message; the sender's re-drive
                        // timer sends it again.
                        let _ = self.peers[shard.as_usize()].try_send(message);
                    }
                }
                let mut bytes = std::mem::take(&mut batch.bytes);
                bytes.clear();
                let _ = self.recycle.try_send(bytes);
            }
            WriterJob::Snapshot { capture, replies, last_hash } => {
                let Some(last_hash) = last_hash.filter(|_| !failed) else {
                    self.shared.snapshot_in_progress.store(false, Ordering::Release);
                    for reply in replies {
                        let _ = reply.send(Err("the shard failed before the snapshot".to_string()));
                    }
                    return;
                };
                // The shard starts a snapshot only when none is in progress, so the
                // snapshotter's one-slot queue is free.
                let job = SnapshotJob { capture, last_hash, replies };
                if self.snapshots.send(SnapshotterJob::Write(job)).is_err() {
                    self.shared.snapshot_in_progress.store(false, Ordering::Release);
                }
            }
        }
    }
}
