//! The shard thread: recovery, then the apply loop.
//!
//! Each turn of the loop waits for input (or the tick), reads the clock once, expires every hold
//! due by then, drains what is waiting (up to `batch_records_max` records per batch), applies
//! it, and hands the batch to the writer. Timestamps are made non-decreasing here, so a clock
//! that steps back cannot break the WAL's order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded, select};

mod keys;

use super::scrub::Scrubber;
use super::snapshotter::{Snapshotter, SnapshotterJob};
use super::writer::{Batch, WriterJob, WriterThread};
use super::{Control, Input, PeerMessage, ReplySink, ShardShared, ShardTuning};
use crate::clock::Clock;
use crate::ids::{CustomerId, Lsn, ShardId, Timestamp, shard_for_customer};
use crate::keyindex::indexer::{Indexer, IndexerJob, Mailbox};
use crate::keyindex::run::RunIdentity;
use crate::keyindex::{KEYS_DIR, KeyIndex};
use crate::ledger::account::Namespace;
use crate::ledger::command::HISTORY_PAGE_MAX;
use crate::ledger::command::{Command, Committed, Operation, Query, Request, Response};
use crate::ledger::record::PurchaseRef;
use crate::ledger::record::{
    Body, HoldCapture, HoldCreate, HoldExpire, HoldVoid, LotsExpire, Posting, Postings, Record,
    Reversal, Transaction, TransferIn, TransferOut, TransferSettle, TxHeader,
};
use crate::ledger::registry::Registry;
use crate::ledger::{Ledger, LedgerConfig, Refusal, StateCapture};
use crate::recovery::{RecoveryError, RecoveryReport, ShardPaths};
use crate::reject::RejectCode;
use crate::wal::writer::{IoFaults, WalIdentity, WalWriter};
use crate::wal::{format, payload};

/// How many commands ahead of the one being applied the shard prefetches: enough to cover a
/// memory miss with the work of the commands in between, few enough to stay in L1/L2.
const PREFETCH_DISTANCE: usize = 16;

/// Recycled batch buffers kept per shard.
const RECYCLED_BUFFERS_MAX: usize = 4;

/// Jobs queued for the key indexer (entries of durable batches, mostly). The WAL writer waits
/// when the queue is full: the indexer's pace bounds the memory of entries not yet in runs.
const INDEXER_QUEUE_DEPTH: usize = 256;

/// Everything a shard thread starts with.
pub(crate) struct ShardSetup {
    pub(crate) paths: ShardPaths,
    pub(crate) config: LedgerConfig,
    pub(crate) cluster_id: u64,
    pub(crate) tuning: ShardTuning,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) faults: Option<Arc<dyn IoFaults>>,
    pub(crate) inbox: Receiver<Input>,
    pub(crate) peer_inbox: Receiver<PeerMessage>,
    pub(crate) control: Receiver<Control>,
    pub(crate) peers: Arc<Vec<Sender<PeerMessage>>>,
    pub(crate) shared: Arc<ShardShared>,
    /// Where the outcome of recovery is reported.
    pub(crate) recovered: Sender<Result<Recovered, RecoveryError>>,
}

/// What a shard reports once recovered: how recovery went and the definitions it holds.
pub(crate) type Recovered = (
    RecoveryReport,
    Registry,
    crate::loyalty::programme::Programme,
    crate::loyalty::exchange::Rates,
);

/// A request for a cross-shard transfer waiting for the transfer's acknowledgement before it
/// is answered: the request that made it, or a retry of it.
struct TransferWaiter {
    sink: Arc<dyn ReplySink>,
    tag: u64,
    committed: Committed,
    /// A retry: answered `Duplicate` rather than `Committed` if the transfer is accepted.
    retry: bool,
}

impl TransferWaiter {
    fn answer(&self, accepted: bool) -> Response {
        match (accepted, self.retry) {
            (true, false) => Response::Committed(self.committed),
            (true, true) => Response::Duplicate(self.committed),
            (false, _) => Response::Rejected(RejectCode::TransferRefunded),
        }
    }
}

pub(crate) struct ShardActor {
    ledger: Ledger,
    shard: ShardId,
    tuning: ShardTuning,
    clock: Arc<dyn Clock>,
    inbox: Receiver<Input>,
    peer_inbox: Receiver<PeerMessage>,
    control: Receiver<Control>,
    peers: Arc<Vec<Sender<PeerMessage>>>,
    shared: Arc<ShardShared>,
    writer: Option<Sender<WriterJob>>,
    recycled: Receiver<Vec<u8>>,
    /// The batch being built; handed to the writer by `flush`.
    batch: Batch,
    /// The timestamp of records applied in this turn of the loop.
    now: Timestamp,
    /// Requests waiting for unsettled transfers, by `(destination, sequence)`.
    waiters: HashMap<(ShardId, u64), Vec<TransferWaiter>>,
    last_redrive: Instant,
    /// LSN of the last snapshot started (or recovered from).
    snapshot_lsn: Lsn,
    /// Explicit snapshot requests waiting for the next snapshot to start.
    snapshot_waiters: Vec<Sender<Result<Lsn, String>>>,
    /// Whether the expiry sweep left due lots for the next turn.
    sweep_behind: bool,
    /// Where capture buffers are asked for (`None` once stopping: the snapshotter ends when
    /// every sender is gone).
    snapshotter: Option<Sender<SnapshotterJob>>,
    /// Where prepared capture buffers arrive.
    prepared: Receiver<Box<StateCapture>>,
    /// Whether a capture buffer was asked for and has not arrived yet.
    preparing: bool,
    last_snapshot: Instant,
    /// The key index runs this shard looks keys up in (keys its table in memory forgot).
    keys: KeyIndex,
    /// Where the indexer leaves the runs it writes, and the bell it rings then.
    key_mailbox: Arc<Mailbox>,
    key_doorbell: Receiver<()>,
    /// Where the shard asks the indexer for runs and hands it expired ones (`None` once
    /// stopping).
    indexer: Option<Sender<IndexerJob>>,
    /// Dropped to stop the scrubber.
    scrub_stop: Option<Sender<()>>,
    /// The newest generation horizon the indexer was asked to reach ahead of time.
    key_horizon_asked: Lsn,
}

/// Publishes the earliest expiry day among the shard's lots (for the expiry-sweep metrics): at
/// recovery and at every flush, since only applied records change the lots.
fn publish_next_expiry(shared: &ShardShared, ledger: &Ledger) {
    let day = ledger.members().next_expiry_day().map_or(u64::MAX, u64::from);
    shared.expiry_next_day.store(day, Ordering::Relaxed);
}

impl ShardActor {
    /// The body of a shard thread: recover, report, wait for the start signal, serve.
    pub(crate) fn run_thread(setup: ShardSetup) {
        let shard = setup.config.shard;
        let key_identity = RunIdentity {
            shard,
            shard_count: setup.config.shard_count,
            cluster_id: setup.cluster_id,
        };
        let run_entries = (setup.config.limits.idempotency_keys_max / 2).max(1);
        let (recovered, prepared) = match keys::recover(&setup, key_identity, run_entries) {
            Ok(recovered) => recovered,
            Err(error) => {
                let _ = setup.recovered.send(Err(error));
                return;
            }
        };
        let keys_dir = setup.paths.root.join(KEYS_DIR);
        let identity = WalIdentity {
            shard,
            shard_count: setup.config.shard_count,
            cluster_id: setup.cluster_id,
        };
        let wal = WalWriter::open(
            &setup.paths.wal,
            identity,
            setup.config.limits.segment_bytes,
            recovered.position,
            setup.clock.now(),
            setup.faults.clone(),
        );
        let wal = match wal {
            Ok(wal) => wal,
            Err(source) => {
                let error = RecoveryError::Io { path: setup.paths.wal.clone(), source };
                let _ = setup.recovered.send(Err(error));
                return;
            }
        };
        let mut ledger = recovered.ledger;
        ledger.set_key_events(true);
        // Replay accepted every record of the WAL; what this shard decides from now on keeps
        // every customer balance reportable.
        ledger.bound_customer_balances();
        let lsn = ledger.lsn();
        setup.shared.applied_lsn.store(lsn.0, Ordering::Relaxed);
        setup.shared.durable_lsn.store(lsn.0, Ordering::Relaxed);
        let mut report = recovered.report;
        report.key_index = prepared.report;
        setup.shared.last_snapshot_lsn.store(report.snapshot_lsn.0, Ordering::Relaxed);
        setup.shared.last_snapshot_created.store(report.snapshot_created.0, Ordering::Relaxed);
        publish_next_expiry(&setup.shared, &ledger);
        setup.shared.lots.store(ledger.members().lot_count(), Ordering::Relaxed);
        let report =
            (report, ledger.registry().clone(), ledger.programme().clone(), ledger.rates().clone());
        if setup.recovered.send(Ok(report)).is_err() {
            return;
        }

        let (writer_tx, writer_rx) = bounded(setup.config.limits.write_queue_depth_max);
        let (recycle_tx, recycle_rx) = bounded(RECYCLED_BUFFERS_MAX);
        // Room for one preparation request from the shard and one write from the writer.
        let (snapshot_tx, snapshot_rx) = bounded(2);
        let (prepared_tx, prepared_rx) = bounded(1);
        let (indexer_tx, indexer_rx) = bounded(INDEXER_QUEUE_DEPTH);
        let (doorbell_tx, doorbell_rx) = bounded(1);
        let key_mailbox = Arc::new(Mailbox::default());
        let indexer = Indexer {
            dir: keys_dir,
            identity: key_identity,
            jobs: indexer_rx,
            mailbox: Arc::clone(&key_mailbox),
            doorbell: doorbell_tx,
            from: prepared.index.durable_through(),
            through: lsn,
            buffer: prepared.seed,
            run_entries,
            stats: Arc::clone(&setup.shared.key_indexer),
        };
        let snapshotter = Snapshotter {
            spare: None,
            jobs: snapshot_rx,
            prepared: prepared_tx,
            paths: setup.paths.clone(),
            cluster_id: setup.cluster_id,
            retention: setup.tuning.wal_retention,
            shared: Arc::clone(&setup.shared),
            indexer: indexer_tx.clone(),
        };
        let writer = WriterThread {
            wal,
            shard,
            jobs: writer_rx,
            recycle: recycle_tx,
            peers: Arc::clone(&setup.peers),
            snapshots: snapshot_tx.clone(),
            shared: Arc::clone(&setup.shared),
            clock: Arc::clone(&setup.clock),
            indexer: indexer_tx.clone(),
        };
        let (scrub_stop, scrub_stopped) = bounded::<()>(0);
        let scrubber = (setup.tuning.scrub_rate_bytes_per_sec > 0).then(|| Scrubber {
            paths: setup.paths.clone(),
            shard,
            cluster_id: setup.cluster_id,
            key_identity,
            rate_bytes_per_sec: setup.tuning.scrub_rate_bytes_per_sec,
            interval: setup.tuning.scrub_interval,
            stop: scrub_stopped,
            indexer: indexer_tx.clone(),
            shared: Arc::clone(&setup.shared),
        });
        let threads = spawn_helpers(shard, writer, snapshotter, indexer, scrubber);
        let mut actor = ShardActor {
            ledger,
            shard,
            tuning: setup.tuning,
            clock: setup.clock,
            inbox: setup.inbox,
            peer_inbox: setup.peer_inbox,
            control: setup.control,
            peers: setup.peers,
            shared: setup.shared,
            writer: Some(writer_tx),
            recycled: recycle_rx,
            batch: Batch::default(),
            now: Timestamp(0),
            waiters: HashMap::new(),
            last_redrive: Instant::now(),
            snapshot_lsn: lsn,
            snapshot_waiters: Vec::new(),
            sweep_behind: false,
            snapshotter: Some(snapshot_tx),
            prepared: prepared_rx,
            preparing: false,
            last_snapshot: Instant::now(),
            keys: prepared.index,
            key_mailbox,
            key_doorbell: doorbell_rx,
            indexer: Some(indexer_tx),
            scrub_stop: Some(scrub_stop),
            key_horizon_asked: Lsn::ZERO,
        };
        actor.publish_key_index();
        match actor.control.recv() {
            Ok(Control::Start { missing_definitions }) => {
                actor.begin_turn();
                for body in missing_definitions {
                    actor.append(body).expect("missing definitions extend a prefix");
                }
                actor.flush();
                actor.redrive_transfers();
                actor.serve();
            }
            Ok(Control::Shutdown) | Err(_) => {}
        }
        actor.stop(threads);
    }

    fn serve(&mut self) {
        loop {
            // While the expiry sweep is behind, the next turn comes at once.
            let tick = if self.sweep_behind { std::time::Duration::ZERO } else { self.tuning.tick };
            select! {
                recv(self.control) -> message => {
                    if matches!(message, Ok(Control::Shutdown) | Err(_)) {
                        self.drain_before_stop();
                        return;
                    }
                }
                recv(self.peer_inbox) -> message => {
                    self.begin_turn();
                    if let Ok(message) = message {
                        self.on_peer(message);
                    }
                    self.drain();
                }
                recv(self.inbox) -> input => {
                    self.begin_turn();
                    if let Ok(input) = input {
                        self.on_input(input);
                    }
                    self.drain();
                }
                default(tick) => self.begin_turn(),
            }
            self.on_tick();
            self.flush();
        }
    }

    /// Reads the clock for the records of this turn, never going back, and expires every hold
    /// due by then before anything else of the turn is applied: no request of the turn sees a
    /// hold whose deadline is at or before the turn's time, neither in the available balance
    /// nor in a capture or void. After recovery the first turn expires what fell due while the
    /// server was down. Replay needs no clock for this: the expiries are records, logged before
    /// the requests of the turn.
    fn begin_turn(&mut self) {
        self.now = self.clock.now().max(self.ledger.timestamp()).max(self.now);
        self.install_key_runs();
        self.expire_due_holds();
        self.expire_due_lots();
        self.release_held_purchases();
    }

    /// Ends the hold on the points of pending purchases past `pending_hold_days`: a
    /// `PurchaseRelease` record for each, up to what the batch has room for.
    fn release_held_purchases(&mut self) {
        if self.poisoned() {
            return;
        }
        let limit = self.ledger.config().limits.batch_records_max;
        let room =
            limit.saturating_sub(self.batch_records()).min(self.tuning.lots_expired_per_turn);
        for purchase in self.ledger.purchases_due_release(self.now, room) {
            let release = self.ledger.release_body(purchase, self.now);
            self.append(Body::PurchaseRelease(release)).expect("due holds of purchases end");
        }
    }

    /// The expiry sweep: a `LotsExpire` record for each of up to `lots_expired_per_turn`
    /// customers with lots due at `self.now`.
    fn expire_due_lots(&mut self) {
        if self.poisoned() {
            return;
        }
        let limit = self.ledger.config().limits.batch_records_max;
        let room =
            limit.saturating_sub(self.batch_records()).min(self.tuning.lots_expired_per_turn);
        let due = self.ledger.lots_due(self.now, room);
        self.sweep_behind = room > 0 && due.len() == room;
        let expired = due.len() as u64;
        for (customer, lots) in due {
            let expire = LotsExpire { id: self.ledger.peek_tx_id(self.now), customer, lots };
            self.append(Body::LotsExpire(expire)).expect("due lots expire");
        }
        self.shared.expiry_records.fetch_add(expired, Ordering::Relaxed);
        self.shared.expiry_behind.store(self.sweep_behind, Ordering::Relaxed);
    }

    /// Expires a customer's due lots before a request of theirs, so that no request spends or
    /// sees points past their expiry, whatever the sweep's pace.
    fn expire_lots_of(&mut self, customer: u64) {
        let lots = self.ledger.lots_due_of(customer, self.now);
        if !lots.is_empty() && !self.poisoned() {
            let expire = LotsExpire { id: self.ledger.peek_tx_id(self.now), customer, lots };
            self.append(Body::LotsExpire(expire)).expect("due lots expire");
            self.shared.expiry_records.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The members a command reads or debits.
    fn members_of(&self, command: &Command) -> smallvec::SmallVec<[u64; 2]> {
        let points = self.ledger.programme().points_class();
        let mut customers = smallvec::SmallVec::new();
        let mut add = |account: crate::ledger::account::AccountId| {
            if Some(account.class()) == points && !customers.contains(&account.owner()) {
                customers.push(account.owner());
            }
        };
        match command {
            Command::Write(request) => match &request.operation {
                Operation::Post { postings } => postings.iter().for_each(|p| add(p.debit)),
                Operation::Hold { posting, .. } => add(posting.debit),
                Operation::Transfer { source, .. } => add(*source),
                Operation::PurchaseChange { reference, .. } => {
                    let customer = match reference {
                        PurchaseRef::Id(id) => {
                            self.ledger.purchases().get(*id).map(|entry| entry.customer)
                        }
                        PurchaseRef::Receipt { customer } => Some(*customer),
                    };
                    if let Some(customer) = customer.filter(|_| points.is_some()) {
                        customers.push(customer);
                    }
                }
                Operation::Convert { customer, .. } => {
                    if points.is_some() {
                        customers.push(*customer);
                    }
                }
                Operation::Purchase { .. }
                | Operation::Capture { .. }
                | Operation::Void { .. }
                | Operation::Reverse { .. } => {}
            },
            Command::Read(Query::Account(account) | Query::History { account, .. }) => {
                add(*account)
            }
            Command::Read(Query::Member { customer, .. }) if points.is_some() => {
                customers.push(*customer)
            }
            Command::Read(_) => {}
        }
        customers
    }

    /// Appends a `HoldExpire` record for every open hold due at `self.now`, flushing full
    /// batches on the way.
    fn expire_due_holds(&mut self) {
        if self.poisoned() {
            return;
        }
        let limit = self.ledger.config().limits.batch_records_max;
        loop {
            let room = limit.saturating_sub(self.batch_records());
            if room == 0 {
                self.flush();
                continue;
            }
            let due = self.ledger.holds_due(self.now, room);
            if due.is_empty() {
                return;
            }
            for hold in due {
                let expire = HoldExpire { id: self.ledger.peek_tx_id(self.now), hold };
                self.append(Body::HoldExpire(expire)).expect("a due hold expires");
            }
        }
    }

    /// Processes what else is waiting, up to a full batch's worth of inputs.
    fn drain(&mut self) {
        let limit = self.ledger.config().limits.batch_records_max;
        for _ in 0..limit {
            if let Ok(message) = self.peer_inbox.try_recv() {
                self.on_peer(message);
            } else if let Ok(input) = self.inbox.try_recv() {
                self.on_input(input);
            } else {
                break;
            }
        }
    }

    /// Answers everything already queued, then returns.
    fn drain_before_stop(&mut self) {
        self.begin_turn();
        while let Ok(input) = self.inbox.try_recv() {
            self.on_input(input);
        }
        while let Ok(message) = self.peer_inbox.try_recv() {
            self.on_peer(message);
        }
        self.flush();
    }

    fn stop(mut self, threads: Helpers) {
        let Helpers {
            writer: writer_thread,
            snapshotter: snapshot_thread,
            indexer: indexer_thread,
            scrubber,
        } = threads;
        drop(self.scrub_stop.take());
        if let Some(scrubber) = scrubber {
            let _ = scrubber.join();
        }
        let mut replies = std::mem::take(&mut self.snapshot_waiters);
        let wanted = self.tuning.snapshot_on_shutdown
            && self.ledger.lsn().0 > self.shared.last_snapshot_lsn.load(Ordering::Relaxed);
        if self.poisoned() {
            for reply in replies {
                let _ = reply.send(Err("the shard failed".to_string()));
            }
        } else if wanted || !replies.is_empty() {
            let (reply_tx, reply_rx) = bounded(1);
            replies.push(reply_tx);
            // At shutdown the pause does not matter: capture into fresh memory.
            let capture = Box::new(self.ledger.capture());
            self.start_snapshot(capture, replies);
            drop(self.writer.take());
            let _ = reply_rx.recv();
        }
        // Transfers still waiting for their acknowledgement are committed on this shard and
        // complete after restart (re-drive), accepted or refunded: their outcome is not known
        // yet, so they are answered `shutting_down`, whose retry with the same key after the
        // restart gets the outcome.
        for waiter in self.waiters.drain().flat_map(|(_, waiters)| waiters) {
            let answer = Response::Rejected(RejectCode::ShuttingDown);
            waiter.sink.deliver(vec![(waiter.tag, answer)]);
        }
        drop(self.writer.take());
        drop(self.snapshotter.take());
        let _ = writer_thread.join();
        let _ = snapshot_thread.join();
        // The writer and the snapshotter held the indexer's other senders: it ends now.
        drop(self.indexer.take());
        let _ = indexer_thread.join();
    }

    fn poisoned(&self) -> bool {
        self.shared.poisoned.load(Ordering::Acquire)
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Commands { sink, commands } => {
                let poisoned = self.poisoned();
                let limit = self.ledger.config().limits.batch_records_max;
                // Software pipelining: while applying command i, the memory of command
                // i + PREFETCH_DISTANCE is being fetched, so each miss overlaps with work.
                let mut commands = commands.into_iter();
                for (_, command) in commands.as_slice().iter().take(PREFETCH_DISTANCE) {
                    self.prefetch(command);
                }
                while let Some((tag, command)) = commands.next() {
                    if let Some((_, ahead)) = commands.as_slice().get(PREFETCH_DISTANCE - 1) {
                        self.prefetch(ahead);
                    }
                    if poisoned {
                        self.batch.reply(&sink, tag, Response::Rejected(RejectCode::ShardFailed));
                        continue;
                    }
                    if self.ledger.lots_due_by(self.now) {
                        for customer in self.members_of(&command) {
                            if self.batch_records() >= limit {
                                self.flush();
                            }
                            self.expire_lots_of(customer);
                        }
                    }
                    if self.batch_records() >= limit {
                        self.flush();
                    }
                    let response = match command {
                        Command::Read(query) => self.query(query),
                        Command::Write(request) => match self.write(request, &sink, tag) {
                            Some(response) => response,
                            None => continue,
                        },
                    };
                    if response.rejected().is_some() {
                        self.shared.rejected.fetch_add(1, Ordering::Relaxed);
                    }
                    self.batch.reply(&sink, tag, response);
                }
            }
            Input::Define { body, reply } => {
                if self.poisoned() {
                    let _ = reply.send(Err(RejectCode::ShardFailed));
                    return;
                }
                match self.append(*body) {
                    Ok(_) => self.batch.define_replies.push(reply),
                    Err(Refusal::Rejected(code)) => {
                        let _ = reply.send(Err(code));
                    }
                    Err(Refusal::Duplicate(_)) => unreachable!("definitions carry no key"),
                }
            }
            Input::Snapshot { reply } => {
                if self.poisoned() {
                    let _ = reply.send(Err("the shard failed".to_string()));
                } else {
                    // Taken at the end of this turn, or after the snapshot in progress.
                    self.snapshot_waiters.push(reply);
                }
            }
        }
    }

    /// Records in the batch being built: `applied_lsn` is the last LSN handed to the writer.
    fn prefetch(&self, command: &Command) {
        if let Command::Write(request) = command {
            self.ledger.prefetch(request);
            // Most keys are fresh, and a fresh key is looked up in every run's filter.
            if let Some(key) = request.idempotency {
                self.keys.prefetch(request.terminal, key);
            }
        }
    }

    fn batch_records(&self) -> usize {
        let flushed = self.shared.applied_lsn.load(Ordering::Relaxed);
        usize::try_from(self.ledger.lsn().0 - flushed).unwrap_or(usize::MAX)
    }

    fn query(&mut self, query: Query) -> Response {
        match query {
            Query::Account(id) => match self.ledger.account(id) {
                Some(view) => Response::Account(view),
                None => Response::Rejected(RejectCode::AccountNotFound),
            },
            Query::Hold(id) => match self.ledger.hold(id) {
                Some(view) => Response::Hold(view),
                None => Response::Rejected(RejectCode::HoldNotFound),
            },
            Query::History { account, limit } => {
                let limit = usize::from(limit).min(HISTORY_PAGE_MAX);
                Response::History(self.ledger.history_of(account, limit))
            }
            Query::Idempotency { terminal, key, .. } => {
                let remembered = self.ledger.remembers_key(terminal, key, self.now)
                    || (!self.ledger.idempotency_knows(terminal, key)
                        && !matches!(
                            self.keys.lookup(terminal, key, self.now),
                            crate::keyindex::Lookup::Absent
                        ));
                Response::Remembered(remembered)
            }
            Query::Liability => Response::Liability(Box::new(self.ledger.liability())),
            Query::HistoryPage { customer, before, limit, filter } => {
                let limit = usize::from(limit).min(HISTORY_PAGE_MAX);
                Response::HistoryPage(Box::new(
                    self.ledger.history_page(customer, before, limit, &filter),
                ))
            }
            Query::Activity { customer } => {
                Response::Activity(Box::new(self.ledger.customer_activity(customer)))
            }
            Query::Totals => Response::Totals(
                (0..self.ledger.registry().assets().len())
                    .map(|asset| {
                        let asset = crate::ledger::account::AssetId(
                            u16::try_from(asset).expect("asset ids are u16"),
                        );
                        self.ledger.totals(asset).unwrap_or_default()
                    })
                    .collect(),
            ),
            Query::Transaction { tx } => match self.ledger.transaction_entries(tx) {
                entries if entries.is_empty() => {
                    Response::Rejected(RejectCode::TransactionNotFound)
                }
                entries => Response::History(entries),
            },
            Query::Purchase { tx } => match self.ledger.purchases().get(tx) {
                Some(entry) => Response::Purchase(*entry),
                None => Response::Rejected(RejectCode::PurchaseNotFound),
            },
            Query::Purchases { from_day, to_day, after, limit, .. } => {
                let limit = usize::from(limit).min(crate::ledger::command::PURCHASES_PAGE_MAX);
                Response::Purchases(self.ledger.purchases().page((from_day, to_day), after, limit))
            }
            Query::Explain { tx } => match self.ledger.explain(tx) {
                Some(explanation) => Response::Explanation(Box::new(explanation)),
                None => Response::Rejected(RejectCode::TransactionNotFound),
            },
            Query::Member { customer, within_days } => {
                match self.ledger.member_view(customer, within_days, self.now) {
                    Some(view) => Response::Member(Box::new(view)),
                    None => Response::Rejected(RejectCode::AccountNotFound),
                }
            }
        }
    }

    /// Applies a client write. `None` means the answer comes later (a cross-shard transfer
    /// is answered when the destination acknowledges it).
    fn write(&mut self, request: Request, sink: &Arc<dyn ReplySink>, tag: u64) -> Option<Response> {
        let Request { terminal, idempotency, kind, metadata, operation } = request;
        let header = TxHeader {
            id: self.ledger.peek_tx_id(self.now),
            kind,
            terminal,
            idempotency,
            metadata,
        };
        let body = match operation {
            Operation::Post { postings } => Body::Transaction(Transaction { header, postings }),
            Operation::Hold { posting, timeout_nanos } => {
                Body::HoldCreate(HoldCreate { header, posting, timeout_nanos })
            }
            Operation::Capture { hold, amount } => {
                Body::HoldCapture(HoldCapture { header, hold, amount })
            }
            Operation::Void { hold } => Body::HoldVoid(HoldVoid { header, hold }),
            Operation::Reverse { original } => match self.ledger.reversal_postings(original) {
                Ok(postings) => Body::Reversal(Reversal { header, original, postings }),
                Err(code) => {
                    let probe =
                        Body::Reversal(Reversal { header, original, postings: Postings::new() });
                    return Some(self.refuse_unbuilt(probe, code));
                }
            },
            Operation::Purchase { customer, lines } => {
                match self.ledger.price_purchase(header.clone(), customer, lines.clone(), self.now)
                {
                    Ok(purchase) => Body::Purchase(purchase),
                    Err(code) => {
                        let outcome = crate::loyalty::pricing::PurchaseOutcome::default();
                        let probe = Body::Purchase(crate::ledger::record::Purchase {
                            header,
                            customer,
                            lines,
                            outcome,
                        });
                        return Some(self.refuse_unbuilt(probe, code));
                    }
                }
            }
            Operation::PurchaseChange { reference, event } => {
                match self.ledger.decide_purchase_change(
                    header.clone(),
                    reference,
                    event.clone(),
                    self.now,
                ) {
                    Ok(change) => Body::PurchaseChange(change),
                    Err(code) => {
                        let outcome = crate::ledger::record::TransitionOutcome::default();
                        let probe = Body::PurchaseChange(crate::ledger::record::PurchaseChange {
                            header,
                            reference,
                            event,
                            outcome,
                        });
                        return Some(self.refuse_unbuilt(probe, code));
                    }
                }
            }
            Operation::Convert { customer, from, to, amount } => {
                match self.ledger.decide_conversion(
                    header.clone(),
                    customer,
                    (from, to),
                    amount,
                    self.now,
                ) {
                    Ok(conversion) => Body::Conversion(conversion),
                    Err(code) => {
                        let priced = crate::loyalty::exchange::Priced::default();
                        let probe = Body::Conversion(crate::ledger::record::Conversion {
                            header,
                            customer,
                            from,
                            to,
                            amount,
                            priced,
                        });
                        return Some(self.refuse_unbuilt(probe, code));
                    }
                }
            }
            Operation::Transfer { source, destination, amount } => {
                match self.transfer_body(header, source, destination, amount) {
                    Ok(body) => body,
                    Err(code) => return Some(Response::Rejected(code)),
                }
            }
        };
        let outbound = match &body {
            Body::TransferOut(transfer) => Some(transfer.clone()),
            _ => None,
        };
        match (self.append(body), outbound) {
            (Ok(committed), Some(transfer)) => {
                let key = (transfer.destination_shard, transfer.sequence);
                self.batch
                    .peer_sends
                    .push((transfer.destination_shard, transfer_in_message(self.shard, &transfer)));
                self.wait_for_transfer(key, sink, tag, committed, false);
                None
            }
            (Ok(committed), None) => Some(Response::Committed(committed)),
            (Err(Refusal::Duplicate(committed)), outbound) => {
                // A retry of a cross-shard transfer still in flight is answered with the
                // transfer's outcome.
                match outbound.and_then(|_| self.ledger.transfer_out_of(committed.tx_id)) {
                    Some(key) => {
                        self.wait_for_transfer(key, sink, tag, committed, true);
                        None
                    }
                    None => Some(Response::Duplicate(committed)),
                }
            }
            (Err(Refusal::Rejected(code)), _) => Some(Response::Rejected(code)),
        }
    }

    /// Queues a request to be answered when transfer `key` is acknowledged.
    fn wait_for_transfer(
        &mut self,
        key: (ShardId, u64),
        sink: &Arc<dyn ReplySink>,
        tag: u64,
        committed: Committed,
        retry: bool,
    ) {
        let waiter = TransferWaiter { sink: Arc::clone(sink), tag, committed, retry };
        self.waiters.entry(key).or_default().push(waiter);
    }

    /// The answer to a write whose record cannot be built (a reversal of an original reversed
    /// already, a purchase the rules cannot price now). A retry of such a write that committed
    /// is answered as the duplicate it is (or as a conflict, if its key was used for something
    /// else) before the refusal: `probe` is the request with what the shard would decide left
    /// empty, which the fingerprint does not cover.
    fn refuse_unbuilt(&mut self, probe: Body, code: RejectCode) -> Response {
        let header = probe.header().expect("client writes have a header");
        let Some(key) = header.idempotency else {
            return Response::Rejected(RejectCode::IdempotencyKeyMissing);
        };
        let mut bytes = Vec::new();
        payload::encode_body(&probe, &mut bytes);
        let fingerprint = payload::fingerprint(probe.kind(), &bytes);
        match self.remembered(header.terminal, key, fingerprint) {
            Some(Refusal::Duplicate(committed)) => Response::Duplicate(committed),
            None => Response::Rejected(code),
            Some(Refusal::Rejected(refusal)) => Response::Rejected(refusal),
        }
    }

    /// A transfer between two customer accounts: one posting when both live here, the first
    /// step of a cross-shard transfer otherwise.
    fn transfer_body(
        &self,
        header: TxHeader,
        source: crate::ledger::account::AccountId,
        destination: crate::ledger::account::AccountId,
        amount: crate::amount::Amount,
    ) -> Result<Body, RejectCode> {
        if header.idempotency.is_none() {
            return Err(RejectCode::IdempotencyKeyMissing);
        }
        let registry = self.ledger.registry();
        let (asset, _, source_namespace) =
            registry.account_terms(source).ok_or(RejectCode::ClassUnknown)?;
        let (_, _, destination_namespace) =
            registry.account_terms(destination).ok_or(RejectCode::ClassUnknown)?;
        if source_namespace != Namespace::Customer || destination_namespace != Namespace::Customer {
            return Err(RejectCode::AccountKindInvalid);
        }
        let shard_count = self.ledger.config().shard_count;
        let destination_shard = shard_for_customer(CustomerId(destination.owner()), shard_count);
        if destination_shard == self.shard {
            let posting = Posting { debit: source, credit: destination, asset, amount };
            return Ok(Body::Transaction(Transaction {
                header,
                postings: smallvec::smallvec![posting],
            }));
        }
        Ok(Body::TransferOut(TransferOut {
            header,
            destination_shard,
            sequence: self.ledger.transfer_out_next(destination_shard),
            source,
            destination,
            asset,
            amount,
        }))
    }

    /// Encodes `body` as the next record, applies it, and keeps it in the batch if it applied.
    fn append(&mut self, body: Body) -> Result<Committed, Refusal> {
        let keyed = body.header().is_some_and(|header| header.idempotency.is_some());
        // The table may forget a generation only once the key index runs hold it; waiting
        // flushes the batch, so it comes before this record is encoded into it.
        if keyed && !self.ensure_runs_before_rotation() {
            return Err(Refusal::Rejected(RejectCode::ShardFailed));
        }
        let lsn = self.ledger.lsn().next();
        let bytes = &mut self.batch.bytes;
        if bytes.capacity() == 0
            && let Ok(recycled) = self.recycled.try_recv()
        {
            *bytes = recycled;
        }
        let kind = body.kind();
        let record = Record { lsn, timestamp: self.now, body };
        let start = payload::encode_record(bytes, &record);
        let fingerprint = payload::fingerprint(kind, &bytes[start + format::RECORD_HEADER_BYTES..]);
        // A key the table in memory has no entry for may be in the key index.
        let (keys, indexer, shard, now) =
            (&mut self.keys, self.indexer.as_ref(), self.shard, self.now);
        let mut older_keys = |terminal, key, fingerprint| {
            keys::answer_from_key_index(keys, indexer, shard, (terminal, key, fingerprint), now)
        };
        match self.ledger.apply_with_older_keys(&record, fingerprint, &mut older_keys) {
            Ok(committed) => {
                self.batch.last_lsn = lsn;
                Ok(committed)
            }
            Err(refusal) => {
                self.batch.bytes.truncate(start);
                Err(refusal)
            }
        }
    }

    fn on_peer(&mut self, message: PeerMessage) {
        if self.poisoned() {
            return;
        }
        match message {
            PeerMessage::TransferIn {
                source_shard,
                sequence,
                source_tx,
                source,
                destination,
                asset,
                amount,
            } => {
                let last = self.ledger.transfer_in_last(source_shard);
                let accepted = if sequence <= last {
                    // Already applied (perhaps in this very batch): acknowledge again.
                    !self.ledger.transfer_in_refused(source_shard, sequence)
                } else if sequence > last + 1 {
                    // An earlier transfer is missing; the source re-sends them in order.
                    return;
                } else {
                    let mut transfer = TransferIn {
                        id: self.ledger.peek_tx_id(self.now),
                        source_shard,
                        sequence,
                        source_tx,
                        source,
                        destination,
                        asset,
                        amount,
                        accepted: true,
                    };
                    match self.append(Body::TransferIn(transfer)) {
                        Ok(_) => true,
                        Err(refusal) => {
                            tracing::warn!(
                                ?refusal,
                                sequence,
                                "incoming transfer refused; the source refunds"
                            );
                            transfer.accepted = false;
                            self.append(Body::TransferIn(transfer))
                                .expect("a refused transfer-in applies");
                            false
                        }
                    }
                };
                let ack =
                    PeerMessage::TransferAck { destination_shard: self.shard, sequence, accepted };
                self.batch.peer_sends.push((source_shard, ack));
            }
            PeerMessage::TransferAck { destination_shard, sequence, accepted } => {
                if self.ledger.transfer_out(destination_shard, sequence).is_none() {
                    return; // Already settled: a repeated acknowledgement.
                }
                let settle = TransferSettle {
                    id: self.ledger.peek_tx_id(self.now),
                    destination_shard,
                    sequence,
                    accepted,
                };
                self.append(Body::TransferSettle(settle))
                    .expect("a settle of a sent transfer applies");
                for waiter in
                    self.waiters.remove(&(destination_shard, sequence)).unwrap_or_default()
                {
                    self.batch.reply(&waiter.sink, waiter.tag, waiter.answer(accepted));
                }
            }
        }
    }

    /// Periodic work: re-send unacknowledged transfers, snapshot when due. (Due holds expire at
    /// the start of every turn, `begin_turn`.)
    fn on_tick(&mut self) {
        if self.poisoned() {
            return;
        }
        self.expire_key_runs();
        if self.last_redrive.elapsed() >= self.tuning.transfer_redrive {
            self.redrive_transfers();
        }
        let records_since_snapshot = self.ledger.lsn().0 - self.snapshot_lsn.0;
        let by_count = self.tuning.snapshot_every_records > 0
            && records_since_snapshot >= self.tuning.snapshot_every_records;
        let by_time = !self.tuning.snapshot_every.is_zero()
            && records_since_snapshot > 0
            && self.last_snapshot.elapsed() >= self.tuning.snapshot_every;
        let requested = !self.snapshot_waiters.is_empty();
        if (by_count || by_time || requested)
            && !self.shared.snapshot_in_progress.load(Ordering::Acquire)
        {
            // First a capture buffer, prepared (allocated, faulted in) by the snapshotter;
            // the capture itself happens when it arrives.
            self.shared.snapshot_in_progress.store(true, Ordering::Release);
            let accounts = self.ledger.account_count();
            let keys = self.ledger.idempotency_stats().0;
            let history = self.ledger.history_len();
            let prepare = SnapshotterJob::Prepare {
                accounts: accounts + accounts / 8 + 1024,
                keys: keys + keys / 8 + 1024,
                // The ring only grows up to its capacity; a little room covers the batches
                // applied before the capture.
                history: (history + history / 8 + 1024).min(self.ledger.history_capacity()),
            };
            if self
                .snapshotter
                .as_ref()
                .is_some_and(|snapshotter| snapshotter.send(prepare).is_ok())
            {
                self.preparing = true;
            } else {
                self.shared.snapshot_in_progress.store(false, Ordering::Release);
            }
        }
        if self.preparing
            && let Ok(capture) = self.prepared.try_recv()
        {
            self.preparing = false;
            self.flush();
            let replies = std::mem::take(&mut self.snapshot_waiters);
            self.start_snapshot(capture, replies);
        }
    }

    /// Sends every durable, unsettled transfer again, in order per destination.
    fn redrive_transfers(&mut self) {
        self.last_redrive = Instant::now();
        let durable = Lsn(self.shared.durable_lsn.load(Ordering::Acquire));
        for (destination, sequence, transfer) in self.ledger.transfers_out() {
            if transfer.lsn > durable {
                continue;
            }
            let message = PeerMessage::TransferIn {
                source_shard: self.shard,
                sequence,
                source_tx: transfer.tx_id,
                source: transfer.source,
                destination: transfer.destination,
                asset: transfer.asset,
                amount: transfer.amount,
            };
            if self.peers[destination.as_usize()].try_send(message).is_err() {
                break;
            }
        }
    }

    /// Copies the state into `capture` (the shard's only pause for a snapshot) and queues it
    /// behind the batches already queued.
    fn start_snapshot(
        &mut self,
        mut capture: Box<StateCapture>,
        replies: Vec<Sender<Result<Lsn, String>>>,
    ) {
        assert!(self.batch.is_empty(), "flush before snapshotting");
        self.shared.snapshot_in_progress.store(true, Ordering::Release);
        let started = Instant::now();
        self.ledger.capture_into(&mut capture);
        let pause = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.shared.snapshot_pause_nanos_last.store(pause, Ordering::Relaxed);
        self.snapshot_lsn = self.ledger.lsn();
        self.last_snapshot = Instant::now();
        self.send_to_writer(WriterJob::Snapshot { capture, replies, last_hash: None });
    }

    /// Hands the current batch to the writer.
    fn flush(&mut self) {
        self.collect_key_events();
        if self.batch.is_empty() {
            return;
        }
        self.publish_key_index();
        let batch = std::mem::take(&mut self.batch);
        let shared = &self.shared;
        let lsn = self.ledger.lsn().0;
        let records = lsn - shared.applied_lsn.swap(lsn, Ordering::Relaxed);
        shared.records.fetch_add(records, Ordering::Relaxed);
        shared.batches.fetch_add(1, Ordering::Relaxed);
        shared.accounts.store(self.ledger.account_count() as u64, Ordering::Relaxed);
        shared.lots.store(self.ledger.members().lot_count(), Ordering::Relaxed);
        publish_next_expiry(shared, &self.ledger);
        shared.holds.store(self.ledger.hold_count() as u64, Ordering::Relaxed);
        let (keys, evicted) = self.ledger.idempotency_stats();
        shared.idempotency_keys.store(keys as u64, Ordering::Relaxed);
        shared.idempotency_evicted_early.store(evicted, Ordering::Relaxed);
        shared
            .transfers_in_flight
            .store(self.ledger.transfers_out().count() as u64, Ordering::Relaxed);
        self.send_to_writer(WriterJob::Batch(batch));
        self.ask_for_runs_ahead();
    }

    fn send_to_writer(&mut self, job: WriterJob) {
        let Some(writer) = &self.writer else { return };
        if writer.send(job).is_err() {
            // The writer is gone only after a panic; treat it as a failed write.
            self.shared.poisoned.store(true, Ordering::Release);
        }
    }
}

fn transfer_in_message(source_shard: ShardId, transfer: &TransferOut) -> PeerMessage {
    PeerMessage::TransferIn {
        source_shard,
        sequence: transfer.sequence,
        source_tx: transfer.header.id,
        source: transfer.source,
        destination: transfer.destination,
        asset: transfer.asset,
        amount: transfer.amount,
    }
}

/// The threads that work beside a shard thread.
struct Helpers {
    writer: JoinHandle<()>,
    snapshotter: JoinHandle<()>,
    indexer: JoinHandle<()>,
    scrubber: Option<JoinHandle<()>>,
}

fn spawn_helpers(
    shard: ShardId,
    writer: WriterThread,
    snapshotter: Snapshotter,
    indexer: Indexer,
    scrubber: Option<Scrubber>,
) -> Helpers {
    let writer = std::thread::Builder::new()
        .name(format!("ledger-wal-{}", shard.index()))
        .spawn(move || writer.run())
        .expect("spawn the wal writer thread");
    let snapshotter = std::thread::Builder::new()
        .name(format!("ledger-snap-{}", shard.index()))
        .spawn(move || snapshotter.run())
        .expect("spawn the snapshot thread");
    let indexer = std::thread::Builder::new()
        .name(format!("ledger-keys-{}", shard.index()))
        .spawn(move || indexer.run())
        .expect("spawn the key indexer thread");
    let scrubber = scrubber.map(|scrubber| {
        std::thread::Builder::new()
            .name(format!("ledger-scrub-{}", shard.index()))
            .spawn(move || scrubber.run())
            .expect("spawn the scrub thread")
    });
    Helpers { writer, snapshotter, indexer, scrubber }
}
