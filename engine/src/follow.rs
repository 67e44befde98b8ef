//! A shard's ledger followed through its WAL, for readers outside the shard: the reporting
//! replica copies each record with the movements of value it made, and the auditors' tools
//! need the state as of an LSN.
//!
//! A `Follower` starts from the newest snapshot at or below the LSN it is opened at and replays
//! the WAL to it, then `advance`s record by record. It reads the files only (read-only, like
//! `ledger-wal`), so it follows a WAL `ledgerd` is still writing as far as the caller says is
//! durable; each record is checked (frame, checksum, hash chain, identity) and applied by the
//! same `Ledger::apply` as recovery, so what it reports is what the shard holds.

use std::path::PathBuf;

use crate::ids::{Lsn, ShardId, Timestamp};
use crate::ledger::record::Record;
use crate::ledger::{Ledger, LedgerConfig, Moved};
use crate::loyalty::members::MembersJournal;
use crate::recovery::{RecoveryError, ShardPaths};
use crate::snapshot;
use crate::wal::format::{HASH_ZERO, Hash};
use crate::wal::payload;
use crate::wal::reader::{self, ScanOptions};

/// One record as the follower applied it.
#[derive(Debug)]
pub struct Followed<'a> {
    /// The record.
    pub record: &'a Record,
    /// Its hash (the next record's `prev_hash`).
    pub hash: Hash,
    /// The movements of value it made, in order.
    pub moved: &'a [Moved],
    /// The customers whose loyalty state it changed, and the tiers it changed.
    pub members: &'a MembersJournal,
    /// The shard's assets and classes once it applied (to name the accounts moved).
    pub registry: &'a crate::ledger::registry::Registry,
    /// The shard's ledger once it applied.
    pub ledger: &'a Ledger,
    /// Where the record is in the files.
    pub place: Place,
}

/// Where a record is in its shard's WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// Its segment's sequence.
    pub segment: u64,
    /// Its byte offset in the segment file.
    pub offset: u64,
    /// Its length in bytes (header, payload and padding).
    pub len: u32,
    /// Records before it in its commit group (0: it starts one).
    pub commit_index: u32,
}

/// Why following stopped.
#[derive(Debug, thiserror::Error)]
pub enum FollowError<E> {
    /// The files: unreadable, damaged, or not this shard's.
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    /// The caller's visitor stopped.
    #[error("stopped by the reader")]
    Stopped(E),
}

/// A shard's ledger, kept up with its WAL.
pub struct Follower {
    ledger: Ledger,
    wal: PathBuf,
    shard: ShardId,
    cluster_id: u64,
    last_hash: Hash,
    last_time: Timestamp,
    /// Where the next `advance` resumes reading (`None`: from the start of the segment that
    /// holds the next record).
    cursor: Option<reader::Cursor>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("shard", &self.shard)
            .field("lsn", &self.ledger.lsn())
            .finish_non_exhaustive()
    }
}

impl Follower {
    /// The ledger of `config.shard` as of `at`: the newest snapshot at or below it that loads,
    /// then the WAL up to it.
    pub fn open(
        paths: &ShardPaths,
        config: LedgerConfig,
        cluster_id: u64,
        at: Lsn,
    ) -> Result<Follower, RecoveryError> {
        let shard = config.shard;
        let mut base = None;
        // `find_snapshots`, not `list_snapshots`, which deletes `.tmp` files: one may be a
        // snapshot the shard is writing at this moment.
        for (lsn, path) in snapshot::find_snapshots(&paths.snapshots)? {
            if lsn > at {
                continue;
            }
            match snapshot::load(&path, config.clone(), cluster_id) {
                Ok(loaded) => {
                    base = Some(loaded);
                    break;
                }
                Err(error) => tracing::warn!(%error, "a follower skips a snapshot"),
            }
        }
        let (ledger, last_hash, last_time) = match base {
            Some((header, ledger)) => (ledger, header.last_hash, header.created),
            None => (Ledger::new(config), HASH_ZERO, Timestamp(0)),
        };
        let mut follower = Follower {
            ledger,
            wal: paths.wal.clone(),
            shard,
            cluster_id,
            last_hash,
            last_time,
            cursor: None,
        };
        // Catch up with the engine's replay (a reading thread and an applying one, no journal),
        // then follow record by record from where it stopped.
        if at > follower.lsn() {
            let options = ScanOptions {
                shard: Some(shard),
                cluster_id: Some(cluster_id),
                visit_after: follower.lsn(),
                hash_at_visit_after: (follower.lsn() > Lsn::ZERO).then_some(follower.last_hash),
                visit_until: Some(at),
                stop_at_until: true,
                ..ScanOptions::all()
            };
            let mut seen = LastSeen { hash: follower.last_hash, time: follower.last_time };
            let (end, _) = crate::recovery::replay_wal_observed(
                &follower.wal,
                &mut follower.ledger,
                &options,
                &mut seen,
            )?;
            (follower.last_hash, follower.last_time) = (seen.hash, seen.time);
            follower.cursor = end.cursor;
        }
        follower.ledger.set_journal(true);
        if follower.lsn() != at {
            return Err(RecoveryError::Wal(reader::WalError::Gap {
                dir: follower.wal.clone(),
                lsn: at,
                reason: format!("the wal ends at lsn {}", follower.lsn()),
            }));
        }
        Ok(follower)
    }

    /// The LSN of the last record applied.
    pub fn lsn(&self) -> Lsn {
        self.ledger.lsn()
    }

    /// The hash of that record (zeros before the first).
    pub fn last_hash(&self) -> Hash {
        self.last_hash
    }

    /// The time of that record (0 before the first, or the snapshot's time).
    pub fn last_time(&self) -> Timestamp {
        self.last_time
    }

    /// The ledger as of `lsn()`.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Applies the records after `lsn()` up to `until` (or the WAL's end, if sooner), handing
    /// each to `visit` once applied; answers the LSN reached. Nothing past `until` is read:
    /// the next call resumes at the commit group after the last record read (or at that
    /// record's own group, re-checked but not applied again, if it was not closed yet).
    pub fn advance<E>(
        &mut self,
        until: Lsn,
        mut visit: impl FnMut(&Followed<'_>) -> Result<(), E>,
    ) -> Result<Lsn, FollowError<E>> {
        if until <= self.lsn() {
            return Ok(self.lsn());
        }
        let options = ScanOptions {
            shard: Some(self.shard),
            cluster_id: Some(self.cluster_id),
            visit_after: self.lsn(),
            hash_at_visit_after: (self.lsn() > Lsn::ZERO).then_some(self.last_hash),
            visit_until: Some(until),
            durable_mark: None,
            last_segment: None,
            // Only what the caller says is durable is read, and the next call resumes where
            // this one stops: a segment is read once however many calls it takes.
            stop_at_until: true,
            resume: self.cursor.take(),
        };
        let Follower { ledger, wal, last_hash, last_time, .. } = self;
        let scanned = reader::scan(wal, &options, |record| {
            let decoded = record.decode().map_err(|error| {
                Err(RecoveryError::Replay {
                    path: wal.join(crate::wal::segment::segment_file_name(record.segment)),
                    offset: record.offset,
                    lsn: record.header.lsn,
                    reason: error.to_string(),
                })
            })?;
            let fingerprint = payload::fingerprint(record.kind, record.payload());
            ledger.apply(&decoded, fingerprint).map_err(|refusal| {
                Err(RecoveryError::Replay {
                    path: wal.join(crate::wal::segment::segment_file_name(record.segment)),
                    offset: record.offset,
                    lsn: record.header.lsn,
                    reason: crate::recovery::refusal_reason(&decoded, refusal),
                })
            })?;
            *last_hash = record.hash;
            *last_time = decoded.timestamp;
            let journal = ledger.take_journal();
            let registry = ledger.registry();
            visit(&Followed {
                record: &decoded,
                hash: record.hash,
                moved: &journal.moved,
                members: &journal.members,
                registry,
                ledger,
                place: Place {
                    segment: record.segment,
                    offset: record.offset,
                    len: record.header.len,
                    commit_index: record.header.commit_index,
                },
            })
            .map_err(Ok)
        });
        // The visitor's error: `Ok(stop)` from the caller, `Err(…)` a record that does not
        // decode or apply; the scan's own: the files.
        match scanned {
            Ok(end) => {
                self.cursor = end.cursor;
                Ok(self.lsn())
            }
            Err(Ok(Ok(stop))) => Err(FollowError::Stopped(stop)),
            Err(Ok(Err(error))) => Err(FollowError::Recovery(error)),
            Err(Err(error)) => Err(FollowError::Recovery(error.into())),
        }
    }
}

/// The hash and time of the last record a catch-up replay applied.
struct LastSeen {
    hash: Hash,
    time: Timestamp,
}

impl crate::recovery::ReplayObserver for LastSeen {
    fn before(&mut self, _: &Ledger, _: &Record, _: crate::recovery::ReplayPlace) {}

    fn after(&mut self, _: &mut Ledger, record: &Record, place: crate::recovery::ReplayPlace) {
        (self.hash, self.time) = (place.hash, record.timestamp);
    }
}

/// A purchase's lifecycle transition, as a record made it (`Followed::transition`): what the
/// replica's `purchase_transitions` rows and `ledger-wal export transitions` hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The id of the record's transaction.
    pub tx_id: u64,
    /// The purchase.
    pub purchase: u64,
    /// Its member.
    pub customer: u64,
    /// `settle`, `fail`, `refund`, `release` or `reverse`.
    pub event: &'static str,
    /// The purchase's state after it.
    pub state_after: &'static str,
    /// Refunded of its basis after it.
    pub refunded: u64,
    /// Earned points it took back.
    pub earned_back: u64,
    /// Bonus points it took back.
    pub bonus_back: u64,
    /// Cashback it took back.
    pub cashback_back: u64,
    /// Of the points taken back, what the member owes (spent already).
    pub points_owed: u64,
    /// Of the cashback taken back, what the member owes.
    pub cashback_owed: u64,
}

impl Followed<'_> {
    /// The lifecycle transition the record made, if it made one: a settlement, failure or
    /// refund (`purchase_change`), a release of held points, or a reversal of a purchase the
    /// shard still keeps (which ends it failed).
    pub fn transition(&self) -> Option<Transition> {
        use crate::ledger::record::{Body, PurchaseEvent};
        use crate::loyalty::lifecycle::LifecycleState;
        let purchases = self.ledger.purchases();
        match &self.record.body {
            Body::PurchaseChange(change) => {
                let outcome = &change.outcome;
                let event = match change.event {
                    PurchaseEvent::Settle => "settle",
                    PurchaseEvent::Fail => "fail",
                    PurchaseEvent::RefundAmount(_) | PurchaseEvent::RefundLines(_) => "refund",
                };
                Some(Transition {
                    tx_id: change.header.id.0,
                    purchase: outcome.purchase.0,
                    customer: outcome.customer,
                    event,
                    state_after: LifecycleState::from_u8(outcome.state)
                        .map_or("pending", LifecycleState::name),
                    refunded: outcome.refunded,
                    earned_back: outcome.earned,
                    bonus_back: outcome.bonus,
                    cashback_back: outcome.cashback,
                    points_owed: outcome.points_owed,
                    cashback_owed: outcome.cashback_owed,
                })
            }
            Body::PurchaseRelease(release) => {
                let entry = purchases.get(release.purchase);
                Some(Transition {
                    tx_id: release.id.0,
                    purchase: release.purchase.0,
                    customer: entry.map_or(0, |entry| entry.customer),
                    event: "release",
                    state_after: entry.map_or("pending", |entry| entry.state.name()),
                    refunded: entry.map_or(0, |entry| entry.refunded),
                    earned_back: 0,
                    bonus_back: 0,
                    cashback_back: 0,
                    points_owed: 0,
                    cashback_owed: 0,
                })
            }
            // A reversal of a purchase the shard keeps ends it failed (a reversal of a failed
            // purchase is refused, so failed now means this reversal did it).
            Body::Reversal(reversal) => {
                let entry = purchases.get(reversal.original)?;
                if entry.state != LifecycleState::Failed {
                    return None;
                }
                let gave = entry.gave();
                Some(Transition {
                    tx_id: reversal.header.id.0,
                    purchase: reversal.original.0,
                    customer: entry.customer,
                    event: "reverse",
                    state_after: entry.state.name(),
                    refunded: entry.refunded,
                    earned_back: gave.earned,
                    bonus_back: gave.bonus,
                    cashback_back: gave.cashback,
                    points_owed: 0,
                    cashback_owed: 0,
                })
            }
            _ => None,
        }
    }
}
