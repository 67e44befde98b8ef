//! The replicator: a thread per shard that follows the shard's WAL from the replica's
//! watermark (not an in-memory queue, so restarts of either side and a backlog of any size are
//! the same case) and writes what it reads in chunks, each chunk with its watermark in one
//! PostgreSQL transaction.
//!
//! It never touches the POS path: it reads the WAL files and the shard's durable LSN (an
//! atomic), and a PostgreSQL that is down, slow or refusing only makes it wait and retry with
//! capped backoff. A database that holds another ledger, or another history of this one, is
//! refused loudly (an error in the log and the shard's state `refused`) and left alone.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use ledger_engine::follow::{FollowError, Follower};
use ledger_engine::ledger::account::AccountId;
use ledger_engine::recovery::ShardPaths;
use ledger_engine::{Engine, Limits, Lsn, ShardId};

use super::rows::{account_row, rows};
use super::writer::{Chunk, Written, claim, loyalty_synced, watermark, write_chunk};
use super::{ReplicaConfig, connect, migrations};

/// Records a chunk holds at most.
pub const CHUNK_RECORDS_MAX: u64 = 50_000;
/// How often a caught-up shard looks for new durable records.
const POLL: Duration = Duration::from_millis(20);
/// Backoff after a failure: doubling from the first to the cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Where a shard's replication stands (`ReplicaShard::state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Connecting, checking the database, opening the WAL at the watermark.
    Starting = 0,
    /// Copying records.
    Running = 1,
    /// PostgreSQL failed; retrying.
    Retrying = 2,
    /// The database holds another ledger or another history: stopped, by design.
    Refused = 3,
}

impl State {
    /// Its name (metrics, the admin API).
    pub fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Retrying => "retrying",
            State::Refused => "refused",
        }
    }
}

/// One shard's replication figures, read by `/metrics` and the admin API.
#[derive(Debug, Default)]
pub struct ReplicaShard {
    /// The replica's watermark: the last record whose rows are in PostgreSQL.
    pub lsn: AtomicU64,
    /// That record's time (ns since the epoch).
    pub time_nanos: AtomicU64,
    /// Records and postings written.
    pub records: AtomicU64,
    /// See `records`.
    pub postings: AtomicU64,
    /// Failed attempts (each logged).
    pub failures: AtomicU64,
    /// When the replicator started (ns since the epoch): the lag's base until a record is in.
    pub started_nanos: AtomicU64,
    state: AtomicU8,
}

impl ReplicaShard {
    /// Where it stands.
    pub fn state(&self) -> State {
        match self.state.load(Ordering::Relaxed) {
            1 => State::Running,
            2 => State::Retrying,
            3 => State::Refused,
            _ => State::Starting,
        }
    }

    /// How far behind the shard it is, given the shard's durable LSN and the time now:
    /// records not yet in PostgreSQL, and how long since the last record that is (since the
    /// replicator started, when none is yet; zero when none is missing).
    pub fn lag(&self, durable: u64, now: ledger_engine::Timestamp) -> (u64, Duration) {
        let records = durable.saturating_sub(self.lsn.load(Ordering::Relaxed));
        let seconds = if records == 0 {
            Duration::ZERO
        } else {
            let base = self
                .time_nanos
                .load(Ordering::Relaxed)
                .max(self.started_nanos.load(Ordering::Relaxed));
            Duration::from_nanos(now.0.saturating_sub(base))
        };
        (records, seconds)
    }

    fn set(&self, state: State) {
        self.state.store(state as u8, Ordering::Relaxed);
    }
}

/// The replicator of every shard.
pub struct Replicator {
    /// Per shard, its figures.
    pub shards: Vec<Arc<ReplicaShard>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Replicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicator").field("shards", &self.shards.len()).finish_non_exhaustive()
    }
}

/// What a shard's thread needs.
struct ShardJob {
    engine: Arc<Engine>,
    config: ReplicaConfig,
    data_dir: PathBuf,
    limits: Limits,
    shard: ShardId,
    figures: Arc<ReplicaShard>,
    stop: Arc<AtomicBool>,
}

impl Replicator {
    /// Starts a thread per shard of `engine` (whose data directory and limits these are).
    pub fn spawn(
        engine: Arc<Engine>,
        config: ReplicaConfig,
        limits: Limits,
    ) -> std::io::Result<Replicator> {
        let stop = Arc::new(AtomicBool::new(false));
        let data_dir = engine.data_dir().to_path_buf();
        let mut shards = Vec::new();
        let mut threads = Vec::new();
        for index in 0..engine.shard_count() {
            let figures = Arc::new(ReplicaShard::default());
            figures.started_nanos.store(engine.now().0, Ordering::Relaxed);
            shards.push(Arc::clone(&figures));
            let job = ShardJob {
                engine: Arc::clone(&engine),
                config: config.clone(),
                data_dir: data_dir.clone(),
                limits: limits.clone(),
                shard: ShardId::new(index).expect("the engine's shards"),
                figures,
                stop: Arc::clone(&stop),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("ledger-replica-{index}"))
                    .spawn(move || job.run())?,
            );
        }
        Ok(Replicator { shards, stop, threads })
    }

    /// Stops every shard's thread (a chunk being written is finished or rolled back by
    /// PostgreSQL; either way the watermark says where to resume).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Why a session with the database ended.
enum Ended {
    /// Asked to stop.
    Stopped,
    /// Worth retrying.
    Failed(String),
    /// Never worth retrying.
    Refused(String),
}

impl ShardJob {
    fn run(self) {
        crate::priority::lower(self.config.nice, "the replicator");
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, shard = self.shard.index(), "the replicator cannot start");
                return;
            }
        };
        let mut backoff = BACKOFF_FIRST;
        while !self.stop.load(Ordering::Relaxed) {
            match runtime.block_on(self.session()) {
                Ended::Stopped => return,
                Ended::Refused(why) => {
                    self.figures.set(State::Refused);
                    tracing::error!(shard = self.shard.index(), "replication refused: {why}");
                    return;
                }
                Ended::Failed(why) => {
                    self.figures.set(State::Retrying);
                    self.figures.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        shard = self.shard.index(),
                        retry_in_ms = backoff.as_millis() as u64,
                        "replication paused: {why}"
                    );
                    self.sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Sleeps up to `duration`, waking early when asked to stop.
    fn sleep(&self, duration: Duration) {
        let deadline = std::time::Instant::now() + duration;
        while !self.stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
            std::thread::sleep(POLL.min(deadline - std::time::Instant::now()));
        }
    }

    /// One connection's life: check the database, open the WAL at its watermark, copy until
    /// something fails or the replicator stops.
    async fn session(&self) -> Ended {
        let shard = self.shard.index();
        let mut client = match connect(&self.config).await {
            Ok(client) => client,
            Err(error) => return Ended::Failed(format!("{error:#}")),
        };
        // The WAL, not PostgreSQL, is the store of record: a commit PostgreSQL loses in a crash
        // takes its watermark with it (they are one transaction), and the replicator copies
        // those records again. So the replica's commits need not wait for its disk.
        if let Err(error) = client.batch_execute("SET synchronous_commit = off").await {
            return Ended::Failed(error.to_string());
        }
        if let Err(error) = migrations::migrate(&mut client).await {
            return match error {
                migrations::MigrateError::Postgres(error) => Ended::Failed(error.to_string()),
                refused => Ended::Refused(refused.to_string()),
            };
        }
        let meta = match ledger_engine::datadir::read_meta(&self.data_dir) {
            Ok(meta) => meta,
            Err(error) => return Ended::Failed(error.to_string()),
        };
        match claim(&client, meta.cluster_id, meta.shard_count).await {
            Ok(()) => {}
            Err(super::writer::IdentityError::Postgres(error)) => {
                return Ended::Failed(error.to_string());
            }
            Err(foreign) => return Ended::Refused(foreign.to_string()),
        }
        let (lsn, hash) = match watermark(&client, shard).await {
            Ok(found) => found.unwrap_or((0, [0; 32])),
            Err(error) => return Ended::Failed(error.to_string()),
        };
        let config = ledger_engine::engine::ledger_config(&meta, self.shard, &self.limits);
        let paths = ShardPaths::new(&self.data_dir, shard);
        // The thread is this shard's alone: reading the files here blocks nothing else (the
        // connection's task waits, idle, on the same thread).
        let opened = Follower::open(&paths, config, meta.cluster_id, Lsn(lsn));
        let mut follower = match opened {
            Ok(follower) => follower,
            // The WAL does not reach the watermark: the database is ahead of this history.
            Err(error) => {
                return Ended::Refused(format!(
                    "the WAL cannot be read at the replica's watermark lsn {lsn}: {error}"
                ));
            }
        };
        if lsn > 0 && follower.last_hash() != hash {
            return Ended::Refused(format!(
                "record {lsn} of shard {shard} differs from the one the replica holds: the \
                 database holds another history of this ledger"
            ));
        }
        // A shard replicated before the loyalty tables existed: its members and lots, whole.
        match loyalty_synced(&client, shard).await {
            Ok(true) => {}
            Ok(false) => {
                let mut chunk = Chunk {
                    shard,
                    first_lsn: lsn + 1,
                    last_lsn: lsn,
                    last_hash: hash,
                    last_time: follower.last_time(),
                    ..Chunk::default()
                };
                chunk.loyalty.whole = true;
                chunk.loyalty.finish(follower.ledger());
                if let Err(error) = write_chunk(&mut client, &chunk).await {
                    return Ended::Failed(error.to_string());
                }
                tracing::info!(
                    shard,
                    lsn,
                    members = chunk.loyalty.members.len(),
                    "members and lots written whole"
                );
            }
            Err(error) => return Ended::Failed(error.to_string()),
        }
        self.figures.lsn.store(lsn, Ordering::Relaxed);
        self.figures.time_nanos.store(follower.last_time().0, Ordering::Relaxed);
        self.engine.release_wal_below(self.shard, Lsn(lsn));
        self.figures.set(State::Running);
        tracing::info!(shard, lsn, "replicating");
        let mut written_accounts: HashSet<AccountId> = HashSet::new();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ended::Stopped;
            }
            let durable = self.engine.stats().get(usize::from(shard)).map_or(0, |s| s.durable_lsn);
            if durable <= follower.lsn().0 {
                tokio::time::sleep(POLL).await;
                continue;
            }
            let until = Lsn(durable.min(follower.lsn().0 + CHUNK_RECORDS_MAX));
            let chunk = match read_chunk(&mut follower, until, shard, &mut written_accounts) {
                Ok(chunk) => chunk,
                Err(error) => return Ended::Refused(format!("the WAL: {error}")),
            };
            match write_chunk(&mut client, &chunk).await {
                Ok(Written::Rows | Written::AlreadyThere) => {
                    self.engine.release_wal_below(self.shard, Lsn(chunk.last_lsn));
                    self.figures.lsn.store(chunk.last_lsn, Ordering::Relaxed);
                    self.figures.time_nanos.store(chunk.last_time.0, Ordering::Relaxed);
                    self.figures
                        .records
                        .fetch_add(chunk.transactions.len() as u64, Ordering::Relaxed);
                    self.figures.postings.fetch_add(chunk.postings.len() as u64, Ordering::Relaxed);
                }
                Err(error) => {
                    // The follower is past the chunk: the next session reopens it at the
                    // watermark, whatever PostgreSQL kept.
                    return Ended::Failed(error.to_string());
                }
            }
        }
    }
}

/// The records after the follower's LSN up to `until`, as a chunk, with the accounts they
/// name that `written_accounts` does not hold yet (which it then holds: an account is written
/// once per session, and again harmlessly after a restart).
fn read_chunk(
    follower: &mut Follower,
    until: Lsn,
    shard: u16,
    written_accounts: &mut HashSet<AccountId>,
) -> Result<Chunk, FollowError<std::convert::Infallible>> {
    let mut chunk = Chunk { shard, first_lsn: follower.lsn().0 + 1, ..Chunk::default() };
    follower.advance(until, |followed| {
        let (tx, postings) = rows(shard, followed);
        for moved in followed.moved {
            for account in [moved.debit, moved.credit] {
                if written_accounts.insert(account) {
                    chunk.accounts.push(account_row(followed.registry, account));
                }
            }
        }
        chunk.transactions.push(tx);
        chunk.postings.extend(postings);
        chunk.loyalty.add(followed);
        Ok(())
    })?;
    chunk.loyalty.finish(follower.ledger());
    chunk.last_lsn = follower.lsn().0;
    chunk.last_hash = follower.last_hash();
    chunk.last_time = follower.last_time();
    Ok(chunk)
}
