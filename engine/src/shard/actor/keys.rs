//! The shard thread's side of the key index (`crate::keyindex`): answering keys its table in
//! memory forgot, handing new entries on, installing runs, waiting before a rotation, expiry.
//!
//! **Invariant:** the idempotency table forgets a generation only once the installed runs
//! reach its newest LSN (`ensure_runs_before_rotation`); if the indexer cannot write runs any
//! more, the shard stops instead.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::{ShardActor, ShardSetup};
use crate::ids::{IdempotencyKey, Lsn, ShardId, TerminalId, Timestamp};
use crate::keyindex::indexer::IndexerJob;
use crate::keyindex::run::RunIdentity;
use crate::keyindex::{self, KEYS_DIR, KeyIndex, Lookup};
use crate::ledger::Refusal;
use crate::ledger::keys::KeyEntry;
use crate::recovery::{self, Recovered, RecoveryError};
use crate::reject::RejectCode;
use crate::wal::reader::WalError;

/// How long the shard waits for one run before it checks for failure again.
const RUN_WAIT_STEP: Duration = Duration::from_millis(100);

/// How the key index answers a write with `(terminal, key)` and `fingerprint`, a key the
/// shard's table has no entry for: `None` for a fresh key. A damaged run makes the answer
/// `idempotency_unverifiable` and is sent to the indexer to be set aside.
pub(super) fn answer_from_key_index(
    keys: &mut KeyIndex,
    indexer: Option<&Sender<IndexerJob>>,
    shard: ShardId,
    (terminal, key, fingerprint): (TerminalId, IdempotencyKey, u64),
    now: Timestamp,
) -> Option<Refusal> {
    match keys.lookup(terminal, key, now) {
        Lookup::Absent => None,
        Lookup::Found(entry) => Some(entry.answer(fingerprint)),
        Lookup::Unreadable(reason) => {
            let damaged = keys.take_damaged();
            if !damaged.is_empty() {
                tracing::error!(
                    shard = shard.index(),
                    %reason,
                    "a key index run is damaged: writes whose key may be in it are refused \
                     until a restart rebuilds it from the wal"
                );
                if let Some(indexer) = indexer {
                    let _ = indexer.send(IndexerJob::SetAside(damaged));
                }
            }
            Some(Refusal::Rejected(RejectCode::IdempotencyUnverifiable))
        }
    }
}

/// Recovers the shard (`recovery::recover_shard`) and readies its key index
/// (`keyindex::prepare`, rebuilding runs from the WAL if some are damaged or missing). Refuses a
/// WAL that ends before the runs do: a run holds only durable records, so the WAL lost some.
pub(super) fn recover(
    setup: &ShardSetup,
    key_identity: RunIdentity,
    run_entries: usize,
) -> Result<(Recovered, keyindex::Prepared), RecoveryError> {
    let retention = setup.config.idempotency_retention_nanos;
    let opened = KeyIndex::open(&setup.paths.root.join(KEYS_DIR), key_identity, retention)?;
    // Refund marks of records the runs do not reach yet (the entries are in the table).
    let runs_reach = opened.index.durable_through();
    let mut marks: Vec<KeyEntry> = Vec::new();
    let mut keep_marks = |entry: KeyEntry, lsn: Lsn| {
        if entry.mark && lsn > runs_reach {
            marks.push(entry);
        }
    };
    let recovered = recovery::recover_shard(
        &setup.paths,
        setup.config.clone(),
        setup.cluster_id,
        Some(&mut keep_marks),
    )?;
    let prepared = keyindex::prepare(opened, &recovered.ledger, marks, |dir| {
        keyindex::rebuild_from_wal(
            dir,
            &setup.paths,
            setup.config.clone(),
            key_identity,
            run_entries,
        )
    })?;
    let through = prepared.index.durable_through();
    if through > recovered.ledger.lsn() {
        return Err(RecoveryError::Wal(WalError::Gap {
            dir: setup.paths.wal.clone(),
            lsn: recovered.ledger.lsn().next(),
            reason: format!(
                "the key index holds the keys of records up to lsn {through}, which were durable, \
                 but the wal ends at lsn {}",
                recovered.ledger.lsn()
            ),
        }));
    }
    Ok((recovered, prepared))
}

impl ShardActor {
    /// How a write with `(terminal, key)` and `fingerprint` is answered because the key was
    /// used before: from the table in memory when it has an entry for the key (inside its
    /// window or not), else from the key index. `None`: a fresh key.
    pub(super) fn remembered(
        &mut self,
        terminal: TerminalId,
        key: IdempotencyKey,
        fingerprint: u64,
    ) -> Option<Refusal> {
        if self.ledger.idempotency_knows(terminal, key) {
            return self.ledger.remembered(terminal, key, fingerprint, self.now);
        }
        answer_from_key_index(
            &mut self.keys,
            self.indexer.as_ref(),
            self.shard,
            (terminal, key, fingerprint),
            self.now,
        )
    }

    /// Installs the runs the indexer wrote since the last call.
    pub(super) fn install_key_runs(&mut self) {
        if self.key_doorbell.try_recv().is_err() {
            return;
        }
        for run in self.key_mailbox.take() {
            self.keys.install(run);
        }
        self.publish_key_index();
    }

    /// Before a write that makes the table forget its older generation: waits until the runs
    /// reach that generation's newest LSN. False if they never will (the indexer failed): the
    /// shard is then poisoned, and the write must not be applied.
    pub(super) fn ensure_runs_before_rotation(&mut self) -> bool {
        let (left, horizon) = self.ledger.idempotency_rotation();
        if left > 0 || self.keys.durable_through() >= horizon {
            return true;
        }
        self.install_key_runs_now();
        if self.keys.durable_through() >= horizon {
            return true;
        }
        // The indexer is behind (or holds the generation's tail in its buffer): hand it what is
        // in the batch and ask for a run that reaches the horizon.
        let started = Instant::now();
        self.flush();
        if let Some(indexer) = &self.indexer {
            let _ = indexer.send(IndexerJob::Reach { through: horizon, reply: None });
        }
        loop {
            self.install_key_runs_now();
            if self.keys.durable_through() >= horizon {
                break;
            }
            if self.key_mailbox.failed() || self.poisoned() {
                tracing::error!(
                    shard = self.shard.index(),
                    horizon = horizon.0,
                    "the key index cannot reach the keys the table is about to forget: the \
                     shard stops rather than forget them"
                );
                self.shared.poisoned.store(true, Ordering::Release);
                return false;
            }
            let _ = self.key_doorbell.recv_timeout(RUN_WAIT_STEP);
        }
        let waited = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.shared.key_index_waits.fetch_add(1, Ordering::Relaxed);
        self.shared.key_index_wait_nanos.fetch_add(waited, Ordering::Relaxed);
        true
    }

    fn install_key_runs_now(&mut self) {
        for run in self.key_mailbox.take() {
            self.keys.install(run);
        }
        self.publish_key_index();
    }

    /// When the table has started a new generation since the last call, asks the indexer at
    /// once for a run that reaches the generation that just closed: the indexer then has a
    /// whole generation of writes to finish it before the table forgets that generation
    /// (`ensure_runs_before_rotation` waits only if it has not).
    pub(super) fn ask_for_runs_ahead(&mut self) {
        let (_, horizon) = self.ledger.idempotency_rotation();
        if horizon > self.key_horizon_asked {
            self.key_horizon_asked = horizon;
            if let Some(indexer) = &self.indexer {
                let _ = indexer.send(IndexerJob::Reach { through: horizon, reply: None });
            }
        }
    }

    /// Moves the key entries of the records applied since the last batch into the batch, for
    /// the indexer once the batch is durable; a refund mark is also kept at hand until a run
    /// holds it.
    pub(super) fn collect_key_events(&mut self) {
        let lsn = self.ledger.lsn();
        for entry in self.ledger.drain_key_events() {
            if entry.mark {
                self.keys.note_mark(entry, lsn);
            }
            self.batch.keys.push(entry);
        }
    }

    /// Deletes runs past the idempotency window.
    pub(super) fn expire_key_runs(&mut self) {
        let wal_first = Lsn(self.shared.wal_first_lsn.load(Ordering::Relaxed));
        let expired = self.keys.expire(self.now, wal_first);
        if !expired.is_empty() {
            if let Some(indexer) = &self.indexer {
                let _ = indexer.send(IndexerJob::Delete(expired));
            }
            self.publish_key_index();
        }
    }

    /// Publishes the index's figures in the shard's stats.
    pub(super) fn publish_key_index(&self) {
        let (runs, entries, memory) = self.keys.size();
        let counters = self.keys.counters();
        let shared = &self.shared;
        shared.key_index_runs.store(runs as u64, Ordering::Relaxed);
        shared.key_index_keys.store(entries, Ordering::Relaxed);
        shared.key_index_memory_bytes.store(memory as u64, Ordering::Relaxed);
        shared.key_index_through.store(self.keys.durable_through().0, Ordering::Relaxed);
        shared.key_index_lookups.store(counters.lookups, Ordering::Relaxed);
        shared.key_index_block_reads.store(counters.block_reads, Ordering::Relaxed);
        shared.key_index_hits.store(counters.hits, Ordering::Relaxed);
        shared.key_index_expired_hits.store(counters.expired_hits, Ordering::Relaxed);
        shared.key_index_keys_expired.store(counters.keys_expired, Ordering::Relaxed);
        shared.key_index_unreadable.store(counters.unreadable, Ordering::Relaxed);
    }
}
