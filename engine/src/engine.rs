//! `Engine`: the shards of one data directory behind one handle.
//!
//! `Engine::open` locks the data directory, recovers every shard in parallel (each on its own
//! thread), checks that the shards agree on the registry (completing any definition a crash
//! left half-applied), then starts them. `submit` routes commands to shards by customer and
//! never blocks: a full inbox answers `Busy` at once through the caller's sink. `shutdown`
//! answers what is queued, flushes, snapshots (if configured) and joins every thread.
//!
//! **Boundary:** this is the API the server, the benches and the tests use.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError, bounded};

use crate::clock::{Clock, SystemClock};
use crate::datadir::{DataDir, DataDirError, Semantics};
use crate::ids::{CustomerId, Lsn, ShardId, Timestamp, TxId, shard_for_customer};
use crate::ledger::account::{
    Account, AccountAddress, AccountFlags, AccountId, AssetId, ClassId, Name, Namespace,
};
use crate::ledger::command::{Command, Operation, Query, Response};
use crate::ledger::record::{AssetDefine, Body, ClassDefine, PurchaseRef, RateDefine, RulesDefine};
use crate::ledger::registry::Registry;
use crate::ledger::{Ledger, LedgerConfig};
use crate::limits::{Limits, LimitsError};
use crate::loyalty::RuleSet;
use crate::loyalty::exchange::{ExchangeError, ExchangeRate, RateTerms, Rates};
use crate::loyalty::programme::{Programme, ProgrammeAccounts, RulesVersion};
use crate::recovery::{RecoveryError, RecoveryReport, ShardPaths};
use crate::reject::RejectCode;
use crate::shard::{
    Control, Input, ReplySink, ShardActor, ShardSetup, ShardShared, ShardStats, ShardTuning,
};
use crate::wal::writer::IoFaults;

/// How an engine is opened.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The data directory (created if missing).
    pub data_dir: PathBuf,
    /// Shards of a new data directory (`None`: one per CPU). An existing directory keeps its
    /// count; a different explicit count is an error.
    pub shard_count: Option<u16>,
    /// Runtime limits.
    pub limits: Limits,
    /// How long idempotency keys are remembered.
    pub idempotency_retention_nanos: u64,
    /// Longest hold timeout accepted.
    pub hold_timeout_max_nanos: u64,
    /// Shard timing, snapshot cadence and WAL retention.
    pub tuning: ShardTuning,
    /// The clock that stamps records.
    pub clock: Arc<dyn Clock>,
    /// Injected I/O failures (tests only).
    pub faults: Option<Arc<dyn IoFaults>>,
}

impl EngineConfig {
    /// Defaults for `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> EngineConfig {
        let defaults = LedgerConfig::new(ShardId::new(0).expect("shard 0"), 1);
        EngineConfig {
            data_dir: data_dir.into(),
            shard_count: None,
            limits: Limits::default(),
            idempotency_retention_nanos: defaults.idempotency_retention_nanos,
            hold_timeout_max_nanos: defaults.hold_timeout_max_nanos,
            tuning: ShardTuning::default(),
            clock: Arc::new(SystemClock),
            faults: None,
        }
    }

    /// The replay rules a new data directory gets from this configuration.
    pub fn semantics(&self) -> Semantics {
        Semantics {
            transaction_postings_max: self.limits.transaction_postings_max,
            idempotency_keys_max: self.limits.idempotency_keys_max,
            idempotency_retention_nanos: self.idempotency_retention_nanos,
            holds_open_max: self.limits.holds_open_max,
            hold_timeout_max_nanos: self.hold_timeout_max_nanos,
            transfers_in_flight_max: self.limits.transfers_in_flight_max,
            history_entries_max: self.limits.history_entries_max,
        }
    }
}

/// The state-machine configuration of `shard` under a data directory's replay rules, with
/// `limits` for everything else.
pub fn ledger_config(
    meta: &crate::datadir::DataDirMeta,
    shard: ShardId,
    limits: &Limits,
) -> LedgerConfig {
    let semantics = meta.semantics;
    LedgerConfig {
        shard,
        shard_count: meta.shard_count,
        limits: Limits {
            transaction_postings_max: semantics.transaction_postings_max,
            idempotency_keys_max: semantics.idempotency_keys_max,
            holds_open_max: semantics.holds_open_max,
            transfers_in_flight_max: semantics.transfers_in_flight_max,
            history_entries_max: semantics.history_entries_max,
            ..limits.clone()
        },
        idempotency_retention_nanos: semantics.idempotency_retention_nanos,
        hold_timeout_max_nanos: semantics.hold_timeout_max_nanos,
    }
}

/// Why an engine could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The limits are inconsistent.
    #[error(transparent)]
    Limits(#[from] LimitsError),
    /// The data directory cannot be used.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// A shard could not be recovered.
    #[error("shard {shard}: {error}")]
    Recovery {
        /// The shard.
        shard: u16,
        /// Why.
        error: RecoveryError,
    },
    /// The shards disagree on definitions in a way a crash cannot explain.
    #[error("shards disagree on definitions: {0}")]
    RegistryDiverged(String),
    /// A shard thread stopped during start-up.
    #[error("shard {0} stopped during start-up")]
    ShardLost(u16),
}

/// Why a definition failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DefineError {
    /// The name is already defined differently, or is not a valid name.
    #[error("definition conflicts with an existing one: {0}")]
    Conflict(String),
    /// A shard refused or failed.
    #[error("shard {shard} refused the definition: {code}")]
    Refused {
        /// The shard.
        shard: u16,
        /// Its answer.
        code: RejectCode,
    },
}

struct ShardHandle {
    inbox: Sender<Input>,
    control: Sender<Control>,
    shared: Arc<ShardShared>,
    thread: Option<JoinHandle<()>>,
}

/// The ledger engine: all shards of one data directory.
pub struct Engine {
    shards: Vec<ShardHandle>,
    shard_count: u16,
    data_dir: DataDir,
    registry: RwLock<Registry>,
    /// The loyalty programme's rule versions, as shard 0's would be (each shard decides with
    /// its own; they differ only in when an "at once" version took effect).
    programme: RwLock<Programme>,
    /// The partner exchange's rates, as shard 0's would be (they differ between shards only
    /// in when an "at once" rate took effect).
    rates: RwLock<Rates>,
    clock: Arc<dyn Clock>,
    /// Serialises definitions, so every shard sees them in the same order.
    define_lock: Mutex<()>,
    closed: AtomicBool,
    recovery_reports: Vec<RecoveryReport>,
    limits: Limits,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("data_dir", &self.data_dir.path())
            .field("shards", &self.shard_count)
            .finish()
    }
}

impl Engine {
    /// Opens the data directory, recovers every shard and starts them.
    pub fn open(config: EngineConfig) -> Result<Engine, OpenError> {
        config.limits.validate()?;
        let data_dir = DataDir::open(&config.data_dir, config.shard_count, config.semantics())?;
        let meta = data_dir.meta();
        if meta.semantics != config.semantics() {
            tracing::warn!(
                stored = ?meta.semantics,
                configured = ?config.semantics(),
                "the data directory keeps the replay rules it was created with"
            );
        }
        let limits = ledger_config(&meta, ShardId::new(0).expect("shard 0"), &config.limits).limits;
        limits.validate()?;
        let shard_count = meta.shard_count;
        let shards_usize = usize::from(shard_count);

        let mut peer_senders = Vec::with_capacity(shards_usize);
        let mut peer_receivers = Vec::with_capacity(shards_usize);
        for _ in 0..shard_count {
            let (tx, rx) = bounded(config.limits.peer_queue_depth_max);
            peer_senders.push(tx);
            peer_receivers.push(rx);
        }
        let peers = Arc::new(peer_senders);
        let mut shards = Vec::with_capacity(shards_usize);
        let mut recovered_receivers = Vec::with_capacity(shards_usize);
        for (index, peer_inbox) in (0..shard_count).zip(peer_receivers) {
            let shard = ShardId::new(index).expect("shard count is bounded");
            let (inbox_tx, inbox_rx) = bounded(config.limits.inbox_depth_max);
            let (control_tx, control_rx) = bounded(1);
            let (recovered_tx, recovered_rx) = bounded(1);
            let shared = Arc::new(ShardShared::default());
            // Without a reader, retention needs no one's leave; with one, nothing it may need
            // goes until it says how far it read.
            let reader = if config.tuning.wal_reader { 0 } else { u64::MAX };
            shared.reader_lsn.store(reader, std::sync::atomic::Ordering::Relaxed);
            let setup = ShardSetup {
                paths: ShardPaths::new(data_dir.path(), index),
                config: ledger_config(&meta, shard, &config.limits),
                cluster_id: meta.cluster_id,
                tuning: config.tuning.clone(),
                clock: Arc::clone(&config.clock),
                faults: config.faults.clone(),
                inbox: inbox_rx,
                peer_inbox,
                control: control_rx,
                peers: Arc::clone(&peers),
                shared: Arc::clone(&shared),
                recovered: recovered_tx,
            };
            let thread = std::thread::Builder::new()
                .name(format!("ledger-shard-{index}"))
                .spawn(move || ShardActor::run_thread(setup))
                .expect("spawn a shard thread");
            shards.push(ShardHandle {
                inbox: inbox_tx,
                control: control_tx,
                shared,
                thread: Some(thread),
            });
            recovered_receivers.push(recovered_rx);
        }

        let mut reports = Vec::with_capacity(shards_usize);
        let mut registries = Vec::with_capacity(shards_usize);
        let mut programmes = Vec::with_capacity(shards_usize);
        let mut rate_sets = Vec::with_capacity(shards_usize);
        let mut failure = None;
        for (index, receiver) in recovered_receivers.iter().enumerate() {
            let index = u16::try_from(index).expect("bounded");
            // A shard thread that dies drops its sender, which ends this wait.
            match receiver.recv() {
                Ok(Ok((report, registry, programme, rates))) => {
                    reports.push(report);
                    registries.push(registry);
                    programmes.push(programme);
                    rate_sets.push(rates);
                }
                Ok(Err(error)) => {
                    failure.get_or_insert(OpenError::Recovery { shard: index, error });
                }
                Err(_) => {
                    failure.get_or_insert(OpenError::ShardLost(index));
                }
            }
        }
        let reconciled = match failure {
            Some(error) => Err(error),
            None => reconcile(&registries, &programmes, &rate_sets),
        };
        let (reference, (programme, rates), missing) = match reconciled {
            Ok(result) => result,
            Err(error) => {
                for shard in &mut shards {
                    let _ = shard.control.send(Control::Shutdown);
                    if let Some(thread) = shard.thread.take() {
                        let _ = thread.join();
                    }
                }
                return Err(error);
            }
        };
        for (shard, missing_definitions) in shards.iter().zip(missing) {
            let _ = shard.control.send(Control::Start { missing_definitions });
        }
        for (index, report) in reports.iter().enumerate() {
            tracing::info!(
                shard = index,
                snapshot_lsn = report.snapshot_lsn.0,
                replayed = report.records_replayed,
                torn_tail = report.torn_tail.is_some(),
                pricing_mismatches = report.pricing_mismatches,
                "shard recovered"
            );
        }
        Ok(Engine {
            shards,
            shard_count,
            data_dir,
            registry: RwLock::new(reference),
            programme: RwLock::new(programme),
            rates: RwLock::new(rates),
            clock: Arc::clone(&config.clock),
            define_lock: Mutex::new(()),
            closed: AtomicBool::new(false),
            recovery_reports: reports,
            limits,
        })
    }

    /// Shards of this engine.
    pub fn shard_count(&self) -> u16 {
        self.shard_count
    }

    /// The data directory's path.
    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir.path()
    }

    /// What recovery found for each shard.
    pub fn recovery_reports(&self) -> &[RecoveryReport] {
        &self.recovery_reports
    }

    /// A copy of the registry (assets and classes).
    pub fn registry(&self) -> Registry {
        self.registry.read().expect("registry lock").clone()
    }

    /// The compact key of an account address.
    pub fn resolve(&self, address: &AccountAddress) -> Result<AccountId, RejectCode> {
        self.registry.read().expect("registry lock").resolve(address)
    }

    /// The shard that owns `customer`'s accounts.
    pub fn shard_of_customer(&self, customer: CustomerId) -> ShardId {
        shard_for_customer(customer, self.shard_count)
    }

    /// The shard a command goes to: that of its first customer account, of its hold, or shard
    /// 0 for commands that name only house and partner accounts.
    pub fn route(&self, command: &Command) -> Result<ShardId, RejectCode> {
        route(&self.registry.read().expect("registry lock"), self.shard_count, command)
    }

    /// Submits commands; every one is answered through `sink` with its tag, once durable.
    /// Never blocks: commands for a shard whose inbox is full are answered `Busy` at once.
    pub fn submit(&self, sink: &Arc<dyn ReplySink>, commands: Vec<(u64, Command)>) {
        if commands.is_empty() {
            return;
        }
        if self.closed.load(Ordering::Acquire) {
            let replies = commands
                .into_iter()
                .map(|(tag, _)| (tag, Response::Rejected(RejectCode::ShuttingDown)))
                .collect();
            sink.deliver(replies);
            return;
        }
        let mut immediate = Vec::new();
        let mut per_shard: Vec<Vec<(u64, Command)>> =
            (0..self.shard_count).map(|_| Vec::new()).collect();
        {
            let registry = self.registry.read().expect("registry lock");
            for (tag, command) in commands {
                match route(&registry, self.shard_count, &command) {
                    Ok(shard) => per_shard[shard.as_usize()].push((tag, command)),
                    Err(code) => immediate.push((tag, Response::Rejected(code))),
                }
            }
        }
        let chunk = self.limits.batch_records_max.max(1);
        for (handle, mut commands) in self.shards.iter().zip(per_shard) {
            while !commands.is_empty() {
                let rest =
                    if commands.len() > chunk { commands.split_off(chunk) } else { Vec::new() };
                let input = Input::Commands { sink: Arc::clone(sink), commands };
                match handle.inbox.try_send(input) {
                    Ok(()) => {}
                    Err(error) => {
                        let code = match &error {
                            TrySendError::Full(Input::Commands { commands, .. }) => {
                                let refused = commands.len() as u64;
                                handle.shared.busy.fetch_add(refused, Ordering::Relaxed);
                                RejectCode::Busy
                            }
                            TrySendError::Full(_) => RejectCode::Busy,
                            TrySendError::Disconnected(_) => RejectCode::ShuttingDown,
                        };
                        if let Input::Commands { commands, .. } = error.into_inner() {
                            immediate.extend(
                                commands
                                    .into_iter()
                                    .map(|(tag, _)| (tag, Response::Rejected(code))),
                            );
                        }
                    }
                }
                commands = rest;
            }
        }
        if !immediate.is_empty() {
            sink.deliver(immediate);
        }
    }

    /// Submits one command and waits for its answer.
    pub fn execute(&self, command: Command) -> Response {
        let waiter = Arc::new(OneReply::default());
        let sink: Arc<dyn ReplySink> = waiter.clone();
        self.submit(&sink, vec![(0, command)]);
        waiter.wait()
    }

    /// Defines an asset on every shard, or returns the existing one if it is identical.
    pub fn define_asset(&self, code: &str, scale: u8) -> Result<AssetId, DefineError> {
        let _guard = self.define_lock.lock().expect("define lock");
        let code = Name::asset(code).map_err(|e| DefineError::Conflict(e.to_string()))?;
        let body = {
            let registry = self.registry.read().expect("registry lock");
            if let Some(existing) = registry.asset_by_code(code.as_str()) {
                return if existing.scale == scale {
                    Ok(existing.id)
                } else {
                    Err(DefineError::Conflict(format!(
                        "asset {code} exists with scale {}",
                        existing.scale
                    )))
                };
            }
            if scale > crate::ledger::registry::ASSET_SCALE_MAX {
                return Err(DefineError::Conflict(format!("scale {scale} exceeds 18")));
            }
            AssetDefine { id: registry.next_asset_id(), code, scale }
        };
        let id = body.id;
        self.broadcast_definition(Body::AssetDefine(body))?;
        Ok(id)
    }

    /// Defines an account class on every shard, or returns the existing one if identical.
    pub fn define_class(
        &self,
        namespace: Namespace,
        name: &str,
        asset: AssetId,
        flags: AccountFlags,
    ) -> Result<ClassId, DefineError> {
        let _guard = self.define_lock.lock().expect("define lock");
        let name = Name::class(name).map_err(|e| DefineError::Conflict(e.to_string()))?;
        let body = {
            let registry = self.registry.read().expect("registry lock");
            if registry.asset(asset).is_none() {
                return Err(DefineError::Conflict(format!("asset {} is not defined", asset.0)));
            }
            if let Some(existing) = registry.class_by_name(namespace, &name) {
                return if existing.asset == asset && existing.flags == flags {
                    Ok(existing.id)
                } else {
                    Err(DefineError::Conflict(format!(
                        "class {name} exists with another asset or flags"
                    )))
                };
            }
            ClassDefine { id: registry.next_class_id(), namespace, name, asset, flags }
        };
        let id = body.id;
        self.broadcast_definition(Body::ClassDefine(body))?;
        Ok(id)
    }

    /// A copy of the programme's rule versions.
    pub fn programme(&self) -> Programme {
        self.programme.read().expect("programme lock").clone()
    }

    /// Records a new version of the programme's rules on every shard, effective at
    /// `effective_at` (`None`: at once), unless it would change nothing: with no effective time,
    /// rules and accounts equal to the version in force; with one, a version already asked for
    /// at that time with the same content. Returns the version and whether it is new.
    ///
    /// Refused (nothing recorded): invalid rules, accounts of the wrong kinds, an effective time
    /// in the past, or one another version already takes effect at.
    pub fn define_rules(
        &self,
        rules: RuleSet,
        accounts: ProgrammeAccounts,
        effective_at: Option<Timestamp>,
    ) -> Result<(u32, bool), DefineError> {
        let _guard = self.define_lock.lock().expect("define lock");
        rules.validate().map_err(|error| DefineError::Conflict(error.to_string()))?;
        let now = self.clock.now();
        let body = {
            let programme = self.programme.read().expect("programme lock");
            let same =
                |version: &RulesVersion| version.accounts == accounts && *version.rules == rules;
            match effective_at {
                None => {
                    if let Some(version) = programme.in_force(now).filter(|v| same(v)) {
                        return Ok((version.version, false));
                    }
                }
                Some(at) => {
                    if let Some(version) =
                        programme.versions().iter().find(|v| v.requested_at == at)
                    {
                        return if same(version) {
                            Ok((version.version, false))
                        } else {
                            Err(DefineError::Conflict(format!(
                                "version {} already takes effect at {}",
                                version.version,
                                crate::loyalty::calendar::rfc3339(at)
                            )))
                        };
                    }
                    if at < now {
                        return Err(DefineError::Conflict(format!(
                            "effective time {} is in the past",
                            crate::loyalty::calendar::rfc3339(at)
                        )));
                    }
                }
            }
            let requested = effective_at.unwrap_or(Timestamp(0));
            let registry = self.registry.read().expect("registry lock");
            let version = programme.next_version();
            programme.check_define(version, requested, &accounts, &rules, &registry).map_err(
                |code| {
                    DefineError::Conflict(format!("the programme's accounts are refused: {code}"))
                },
            )?;
            RulesDefine { version, effective_at: requested, accounts, rules: Arc::new(rules) }
        };
        let version = body.version;
        self.broadcast_definition(Body::RulesDefine(body))?;
        Ok((version, true))
    }

    /// Now, by the engine's clock (the one its shards stamp records with).
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The WAL reader (`ShardTuning::wal_reader`) has read shard `shard` up to `lsn`:
    /// retention may delete what only it needed below (the newest snapshot at or below `lsn`
    /// and the segments after it stay). Ignored without a reader.
    pub fn release_wal_below(&self, shard: ShardId, lsn: Lsn) {
        if let Some(handle) = self.shards.get(usize::from(shard.index())) {
            let reader = &handle.shared.reader_lsn;
            if reader.load(std::sync::atomic::Ordering::Relaxed) != u64::MAX {
                reader.store(lsn.0, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// A copy of the partner exchange's rates.
    pub fn rates(&self) -> Rates {
        self.rates.read().expect("rates lock").clone()
    }

    /// Records a rate of the partner exchange on every shard (docs/loyalty.md, "Partner
    /// exchange"), effective at `effective_at` (`None`: at once), unless it would change
    /// nothing: with no effective time, the same terms as the rate of the pair in force; with
    /// one, a rate of the pair already asked for at that time with the same terms. Returns the
    /// version and whether it is new.
    ///
    /// Refused (nothing recorded): a pair of one asset, terms out of range, accounts of the
    /// wrong kinds, an effective time in the past, or one another rate of the pair already
    /// takes effect at.
    pub fn define_rate(
        &self,
        terms: RateTerms,
        effective_at: Option<Timestamp>,
    ) -> Result<(u32, bool), DefineError> {
        let _guard = self.define_lock.lock().expect("define lock");
        let now = self.clock.now();
        let refused =
            |error: ExchangeError| DefineError::Conflict(format!("rate refused: {error}"));
        let body = {
            let rates = self.rates.read().expect("rates lock");
            let requested = effective_at.unwrap_or(Timestamp(0));
            if effective_at.is_none()
                && let Some(rate) = rates.in_force(terms.from.asset, terms.to.asset, now)
                && rate.terms == terms
            {
                return Ok((rate.version, false));
            }
            if effective_at.is_some_and(|at| at < now) {
                return Err(refused(ExchangeError::EffectiveTimePast));
            }
            let registry = self.registry.read().expect("registry lock");
            if let Some(version) = rates.check(&terms, requested, &registry).map_err(refused)? {
                return Ok((version, false));
            }
            RateDefine { version: rates.next_version(), effective_at: requested, terms }
        };
        let version = body.version;
        self.broadcast_definition(Body::RateDefine(body))?;
        Ok((version, true))
    }

    fn broadcast_definition(&self, body: Body) -> Result<(), DefineError> {
        let mut replies = Vec::with_capacity(self.shards.len());
        for (index, shard) in self.shards.iter().enumerate() {
            let (reply_tx, reply_rx) = bounded(1);
            let input = Input::Define { body: Box::new(body.clone()), reply: reply_tx };
            let shard_index = u16::try_from(index).expect("bounded");
            // Definitions wait for room in the inbox: they are rare and must reach every shard.
            shard.inbox.send(input).map_err(|_| DefineError::Refused {
                shard: shard_index,
                code: RejectCode::ShuttingDown,
            })?;
            replies.push((shard_index, reply_rx));
        }
        for (shard, reply) in replies {
            match reply.recv() {
                Ok(Ok(())) => {}
                Ok(Err(code)) => return Err(DefineError::Refused { shard, code }),
                Err(_) => {
                    return Err(DefineError::Refused { shard, code: RejectCode::ShuttingDown });
                }
            }
        }
        let mut registry = self.registry.write().expect("registry lock");
        let applied = match body {
            Body::AssetDefine(define) => registry.define_asset(crate::ledger::registry::AssetDef {
                id: define.id,
                code: define.code,
                scale: define.scale,
            }),
            Body::ClassDefine(define) => registry.define_class(crate::ledger::registry::ClassDef {
                id: define.id,
                namespace: define.namespace,
                name: define.name,
                asset: define.asset,
                flags: define.flags,
            }),
            Body::RulesDefine(define) => {
                self.programme.write().expect("programme lock").define(
                    define.version,
                    define.effective_at,
                    define.accounts,
                    define.rules,
                    self.clock.now(),
                );
                Ok(())
            }
            Body::RateDefine(define) => {
                let now = self.clock.now();
                let mut rates = self.rates.write().expect("rates lock");
                rates.define(define.terms, define.effective_at, now);
                Ok(())
            }
            _ => unreachable!("only definitions are broadcast"),
        };
        applied.expect("the engine's registry mirrors the shards'");
        Ok(())
    }

    /// Counters of every shard.
    pub fn stats(&self) -> Vec<ShardStats> {
        self.shards
            .iter()
            .enumerate()
            .map(|(index, shard)| {
                shard
                    .shared
                    .stats(ShardId::new(u16::try_from(index).expect("bounded")).expect("bounded"))
            })
            .collect()
    }

    /// Whether any shard stopped after an I/O error.
    pub fn is_poisoned(&self) -> bool {
        self.shards.iter().any(|shard| shard.shared.poisoned.load(Ordering::Acquire))
    }

    /// The points held in lots, over all shards, by the month they expire in
    /// (`year × 12 + month − 1`): what the programme owes, and when it stops owing it.
    pub fn liability_by_expiry_month(
        &self,
    ) -> Result<std::collections::BTreeMap<u32, u64>, RejectCode> {
        Ok(self.liability()?.by_expiry_month)
    }

    /// The programme's liability figures, every shard's added up (docs/loyalty.md,
    /// "Liability and breakage"): each customer class's total, points flows per day, the
    /// liability by expiry month, members per tier. Each shard keeps its figures as records
    /// apply; this asks each for them.
    pub fn liability(&self) -> Result<crate::ledger::liability::ShardLiability, RejectCode> {
        let mut total = crate::ledger::liability::ShardLiability::default();
        for index in 0..self.shard_count {
            let shard = ShardId::new(index).expect("bounded");
            match self.query_shard(shard, Query::Liability) {
                Response::Liability(figures) => total.merge(&figures)?,
                Response::Rejected(code) => return Err(code),
                other => unreachable!("a liability query answers {other:?}"),
            }
        }
        Ok(total)
    }

    /// Every asset's running sums over every account of every shard: the global
    /// sum-of-balances check (each asset's debits equal its credits, posted and pending).
    pub fn asset_totals(&self) -> Result<Vec<crate::ledger::AssetTotals>, RejectCode> {
        let mut sums: Vec<crate::ledger::AssetTotals> = Vec::new();
        for index in 0..self.shard_count {
            let shard = ShardId::new(index).expect("bounded");
            let totals = match self.query_shard(shard, Query::Totals) {
                Response::Totals(totals) => totals,
                Response::Rejected(code) => return Err(code),
                other => unreachable!("a totals query answers {other:?}"),
            };
            if sums.len() < totals.len() {
                sums.resize(totals.len(), crate::ledger::AssetTotals::default());
            }
            for (sum, shard_totals) in sums.iter_mut().zip(totals) {
                let add = |a: u128, b: u128| a.checked_add(b).ok_or(RejectCode::Overflow);
                sum.debits_posted = add(sum.debits_posted, shard_totals.debits_posted)?;
                sum.credits_posted = add(sum.credits_posted, shard_totals.credits_posted)?;
                sum.debits_pending = add(sum.debits_pending, shard_totals.debits_pending)?;
                sum.credits_pending = add(sum.credits_pending, shard_totals.credits_pending)?;
            }
        }
        Ok(sums)
    }

    /// The global view of an account that exists as one slice per shard (house, partner,
    /// transit): the sum of the slices. Customer accounts have one slice, on their shard.
    pub fn account_total(&self, account: AccountId) -> Result<Account, RejectCode> {
        let mut total = Account::default();
        let mut found = false;
        for index in 0..self.shard_count {
            let shard = ShardId::new(index).expect("bounded");
            match self.query_shard(shard, Query::Account(account)) {
                Response::Account(view) => {
                    found = true;
                    let c = view.counters;
                    let add = |a: u128, b: u128| a.checked_add(b).ok_or(RejectCode::Overflow);
                    total.debits_posted = add(total.debits_posted, c.debits_posted)?;
                    total.credits_posted = add(total.credits_posted, c.credits_posted)?;
                    total.debits_pending = add(total.debits_pending, c.debits_pending)?;
                    total.credits_pending = add(total.credits_pending, c.credits_pending)?;
                }
                Response::Rejected(RejectCode::AccountNotFound) => {}
                Response::Rejected(code) => return Err(code),
                other => unreachable!("an account query answers an account: {other:?}"),
            }
        }
        if found { Ok(total) } else { Err(RejectCode::AccountNotFound) }
    }

    /// Sends a query to one shard and waits for its answer.
    pub fn query_shard(&self, shard: ShardId, query: Query) -> Response {
        let waiter = Arc::new(OneReply::default());
        let sink: Arc<dyn ReplySink> = waiter.clone();
        let input =
            Input::Commands { sink: Arc::clone(&sink), commands: vec![(0, Command::Read(query))] };
        match self.shards[shard.as_usize()].inbox.try_send(input) {
            Ok(()) => waiter.wait(),
            Err(TrySendError::Full(_)) => Response::Rejected(RejectCode::Busy),
            Err(TrySendError::Disconnected(_)) => Response::Rejected(RejectCode::ShuttingDown),
        }
    }

    /// Takes a snapshot of every shard now; returns their LSNs.
    pub fn snapshot_now(&self) -> Result<Vec<Lsn>, String> {
        let mut replies = Vec::new();
        for shard in &self.shards {
            let (reply_tx, reply_rx) = bounded(1);
            shard
                .inbox
                .send(Input::Snapshot { reply: reply_tx })
                .map_err(|_| "engine is stopping".to_string())?;
            replies.push(reply_rx);
        }
        replies
            .into_iter()
            .map(|reply| reply.recv().map_err(|_| "shard stopped".to_string())?)
            .collect()
    }

    /// Stops accepting commands, answers what is queued, flushes, snapshots (if configured)
    /// and joins every thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.closed.store(true, Ordering::Release);
        for shard in &self.shards {
            let _ = shard.control.send(Control::Shutdown);
        }
        for shard in &mut self.shards {
            if let Some(thread) = shard.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// See `Engine::route`.
fn route(registry: &Registry, shard_count: u16, command: &Command) -> Result<ShardId, RejectCode> {
    let customer_shard = |account: AccountId| -> Option<ShardId> {
        let (_, _, namespace) = registry.account_terms(account)?;
        (namespace == Namespace::Customer)
            .then(|| shard_for_customer(CustomerId(account.owner()), shard_count))
    };
    let shard_zero = ShardId::new(0).expect("shard 0");
    let hold_shard = |hold: TxId| {
        ShardId::new(hold.shard())
            .filter(|shard| shard.index() < shard_count)
            .ok_or(RejectCode::HoldNotFound)
    };
    Ok(match command {
        Command::Write(request) => match &request.operation {
            Operation::Post { postings } => postings
                .iter()
                .find_map(|posting| {
                    customer_shard(posting.debit).or_else(|| customer_shard(posting.credit))
                })
                .unwrap_or(shard_zero),
            Operation::Hold { posting, .. } => customer_shard(posting.debit)
                .or_else(|| customer_shard(posting.credit))
                .unwrap_or(shard_zero),
            Operation::Capture { hold, .. } | Operation::Void { hold } => hold_shard(*hold)?,
            Operation::Reverse { original } => ShardId::new(original.shard())
                .filter(|shard| shard.index() < shard_count)
                .ok_or(RejectCode::TransactionNotFound)?,
            Operation::Transfer { source, .. } => customer_shard(*source).unwrap_or(shard_zero),
            Operation::Purchase { customer, .. } | Operation::Convert { customer, .. } => {
                shard_for_customer(CustomerId(*customer), shard_count)
            }
            Operation::PurchaseChange { reference, .. } => match reference {
                PurchaseRef::Id(id) => ShardId::new(id.shard())
                    .filter(|shard| shard.index() < shard_count)
                    .ok_or(RejectCode::PurchaseNotFound)?,
                PurchaseRef::Receipt { customer } => {
                    shard_for_customer(CustomerId(*customer), shard_count)
                }
            },
        },
        Command::Read(Query::Member { customer, .. }) => {
            shard_for_customer(CustomerId(*customer), shard_count)
        }
        Command::Read(Query::HistoryPage { customer, .. } | Query::Activity { customer }) => {
            shard_for_customer(CustomerId(*customer), shard_count)
        }
        Command::Read(
            Query::Explain { tx } | Query::Purchase { tx } | Query::Transaction { tx },
        ) => ShardId::new(tx.shard())
            .filter(|shard| shard.index() < shard_count)
            .ok_or(RejectCode::TransactionNotFound)?,
        Command::Read(
            Query::Account(account)
            | Query::History { account, .. }
            | Query::Idempotency { account, .. },
        ) => customer_shard(*account).unwrap_or(shard_zero),
        Command::Read(Query::Hold(hold)) => hold_shard(*hold)?,
        Command::Read(Query::Purchases { shard, .. }) => ShardId::new(*shard)
            .filter(|shard| shard.index() < shard_count)
            .ok_or(RejectCode::PurchaseNotFound)?,
        // One shard's figures; `Engine::liability_by_expiry_month` sums them all.
        Command::Read(Query::Liability | Query::Totals) => shard_zero,
    })
}

/// What start-up agrees on from every shard's definitions: the most complete registry, rule
/// versions and rates, and per shard the definitions it misses.
type Reconciled = (Registry, (Programme, Rates), Vec<Vec<Body>>);

/// Checks that every shard's registry is a prefix of the longest one and returns, per shard,
/// the definitions it misses. A crash during a definition leaves some shards without it; any
/// other difference means the shards were not written by the same history.
fn reconcile(
    registries: &[Registry],
    programmes: &[Programme],
    rate_sets: &[Rates],
) -> Result<Reconciled, OpenError> {
    let rates =
        rate_sets.iter().max_by_key(|rates| rates.versions().len()).cloned().unwrap_or_default();
    let programme = programmes
        .iter()
        .max_by_key(|programme| programme.versions().len())
        .cloned()
        .unwrap_or_default();
    let reference = registries
        .iter()
        .max_by_key(|registry| (registry.assets().len(), registry.classes().len()))
        .cloned()
        .unwrap_or_default();
    let mut missing = Vec::with_capacity(registries.len());
    for (index, registry) in registries.iter().enumerate() {
        if !registry.is_prefix_of(&reference) {
            return Err(OpenError::RegistryDiverged(format!(
                "shard {index}'s assets and classes are not a prefix of the most complete shard's"
            )));
        }
        // The missing definitions are a suffix of one serial history. Applying its assets before
        // its classes gives every definition the same id it has on the reference shard (ids are
        // dense per kind) and every class finds its asset.
        let mut bodies = Vec::new();
        for asset in &reference.assets()[registry.assets().len()..] {
            bodies.push(Body::AssetDefine(AssetDefine {
                id: asset.id,
                code: asset.code.clone(),
                scale: asset.scale,
            }));
        }
        for class in &reference.classes()[registry.classes().len()..] {
            bodies.push(Body::ClassDefine(ClassDefine {
                id: class.id,
                namespace: class.namespace,
                name: class.name.clone(),
                asset: class.asset,
                flags: class.flags,
            }));
        }
        // Rule versions come after: they name classes, which are all defined by now.
        let own = programmes.get(index).map_or(&[][..], Programme::versions);
        let same = |a: &RulesVersion, b: &RulesVersion| {
            (a.version, a.requested_at, a.accounts, &a.rules)
                == (b.version, b.requested_at, b.accounts, &b.rules)
        };
        if own.len() > programme.versions().len()
            || !own.iter().zip(programme.versions()).all(|(a, b)| same(a, b))
        {
            return Err(OpenError::RegistryDiverged(format!(
                "shard {index}'s rule versions are not a prefix of the most complete shard's"
            )));
        }
        for version in &programme.versions()[own.len()..] {
            bodies.push(Body::RulesDefine(RulesDefine {
                version: version.version,
                effective_at: version.requested_at,
                accounts: version.accounts,
                rules: Arc::clone(&version.rules),
            }));
        }
        // Rates last: they name classes too.
        let own = rate_sets.get(index).map_or(&[][..], Rates::versions);
        let same = |a: &ExchangeRate, b: &ExchangeRate| {
            (a.version, a.requested_at, a.terms) == (b.version, b.requested_at, b.terms)
        };
        if own.len() > rates.versions().len()
            || !own.iter().zip(rates.versions()).all(|(a, b)| same(a, b))
        {
            return Err(OpenError::RegistryDiverged(format!(
                "shard {index}'s exchange rates are not a prefix of the most complete shard's"
            )));
        }
        for rate in &rates.versions()[own.len()..] {
            bodies.push(Body::RateDefine(RateDefine {
                version: rate.version,
                effective_at: rate.requested_at,
                terms: rate.terms,
            }));
        }
        missing.push(bodies);
    }
    Ok((reference, (programme, rates), missing))
}

/// A sink that waits for exactly one answer.
#[derive(Default)]
struct OneReply {
    slot: Mutex<Option<Response>>,
    ready: Condvar,
}

impl OneReply {
    fn wait(&self) -> Response {
        let mut slot = self.slot.lock().expect("reply lock");
        loop {
            if let Some(response) = slot.take() {
                return response;
            }
            slot = self.ready.wait(slot).expect("reply lock");
        }
    }
}

impl ReplySink for OneReply {
    fn deliver(&self, replies: Vec<(u64, Response)>) {
        if let Some((_, response)) = replies.into_iter().next() {
            *self.slot.lock().expect("reply lock") = Some(response);
            self.ready.notify_all();
        }
    }
}

/// The state a shard would have after replaying its WAL from LSN 1 up to `until` (or its end),
/// without snapshots: for tests and tools that compare it with a live shard. Reads files only.
pub fn replay_shard_offline(
    data_dir: &std::path::Path,
    shard: ShardId,
    config: LedgerConfig,
    until: Option<Lsn>,
) -> Result<Ledger, RecoveryError> {
    let meta = crate::datadir::read_meta(data_dir).map_err(|error| RecoveryError::Io {
        path: data_dir.to_path_buf(),
        source: std::io::Error::other(error.to_string()),
    })?;
    let paths = ShardPaths::new(data_dir, shard.index());
    let mut ledger = Ledger::new(config);
    let options = crate::wal::reader::ScanOptions {
        shard: Some(shard),
        cluster_id: Some(meta.cluster_id),
        visit_until: until,
        ..crate::wal::reader::ScanOptions::all()
    };
    crate::recovery::replay_wal(&paths.wal, &mut ledger, &options, None)?;
    Ok(ledger)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loyalty::programme::ProgrammeAccounts;

    fn programme(versions: &[(u32, u64)]) -> Programme {
        let accounts = ProgrammeAccounts {
            points: ClassId(1),
            issuance: ClassId(2),
            breakage: ClassId(3),
            cashback: None,
            clawback: None,
            cashback_clawback: None,
        };
        let mut programme = Programme::default();
        for (points, requested) in versions {
            let version = programme.next_version();
            let rules = Arc::new(RuleSet::flat(*points, 100));
            // Each shard stamps an "at once" version with its own record time.
            let now = Timestamp(1_000 + u64::from(version));
            programme.define(version, Timestamp(*requested), accounts, rules, now);
        }
        programme
    }

    /// Rates of a pair (their accounts are not reconcile's to check), at `requested` times.
    fn rates(requested: &[u64]) -> Rates {
        use crate::ledger::account::{AccountId, AssetId, ClassId};
        let side = |asset| crate::loyalty::exchange::ExchangeSide {
            asset: AssetId(asset),
            customer: ClassId(1),
            fund: AccountId::new(ClassId(2), 0),
            money: AccountId::new(ClassId(3), 0),
            value: crate::loyalty::rules::PointValue::default(),
        };
        let terms = RateTerms {
            from: side(1),
            to: side(0),
            numerator: 1,
            denominator: 1,
            money: AssetId(2),
        };
        let mut rates = Rates::default();
        for at in requested {
            rates.define(terms, Timestamp(*at), Timestamp(1_000));
        }
        rates
    }

    /// A crash while a rule version or a rate was being recorded leaves it on some shards
    /// only: start-up hands the others what they miss, in order, after any missing
    /// definitions.
    #[test]
    fn shards_missing_rule_versions_get_them_at_start_up() {
        let registries = vec![Registry::default(); 3];
        let full = programme(&[(1, 0), (2, 5_000)]);
        let programmes = vec![full.clone(), programme(&[(1, 0)]), Programme::default()];
        let rate_sets = vec![rates(&[0]), rates(&[0, 7_000]), Rates::default()];
        let (_, (reference, reference_rates), missing) =
            reconcile(&registries, &programmes, &rate_sets).unwrap();
        assert_eq!(reference, full);
        assert_eq!(reference_rates, rate_sets[1]);
        let versions = |bodies: &Vec<Body>| {
            bodies
                .iter()
                .map(|body| match body {
                    Body::RulesDefine(define) => ("rules", define.version, define.effective_at.0),
                    Body::RateDefine(define) => ("rate", define.version, define.effective_at.0),
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(versions(&missing[0]), [("rate", 2, 7_000)]);
        assert_eq!(versions(&missing[1]), [("rules", 2, 5_000)]);
        assert_eq!(
            versions(&missing[2]),
            [("rules", 1, 0), ("rules", 2, 5_000), ("rate", 1, 0), ("rate", 2, 7_000)]
        );
        // Shards whose versions differ were not written by one history: start-up refuses.
        let diverged = vec![full.clone(), programme(&[(3, 0)]), Programme::default()];
        assert!(matches!(
            reconcile(&registries, &diverged, &rate_sets),
            Err(OpenError::RegistryDiverged(message)) if message.contains("rule versions")
        ));
        let diverged_rates = vec![rates(&[0]), rates(&[9_000, 7_000]), Rates::default()];
        assert!(matches!(
            reconcile(&registries, &programmes, &diverged_rates),
            Err(OpenError::RegistryDiverged(message)) if message.contains("exchange rates")
        ));
    }
}
