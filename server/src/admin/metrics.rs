//! `/metrics`: Prometheus text format (prometheus-client), docs/admin-api.md, "Metrics".
//!
//! HTTP requests are counted and timed as they are answered. Everything else is read when
//! Prometheus scrapes: the POS listener's atomics and each shard's counters
//! (`Engine::stats`), so the hot paths pay nothing for being measured. Counters that come from
//! those sources are advanced by the difference since the last scrape (scrapes are serialised),
//! so they stay monotonic as Prometheus expects.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ledger_engine::Engine;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::pos::stats::PosStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteTimeLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    shard: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

type ShardCounter = Family<ShardLabels, Counter>;
type ShardGauge = Family<ShardLabels, Gauge>;
type ShardSeconds = Family<ShardLabels, Gauge<f64, AtomicU64>>;
/// Reads one figure of a shard's stats.
type Read = fn(&ledger_engine::ShardStats) -> u64;
/// A metric's name, help and how it is read.
type Described = (&'static str, &'static str, Read);

/// The metrics of one `ledgerd`.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<RouteLabels, Counter>,
    http_seconds: Family<RouteTimeLabels, Histogram>,
    pos_connections_open: Gauge,
    pos_connections: Counter,
    pos_auth_failures: Counter,
    pos_requests: Counter,
    pos_operations: Counter,
    pos_outcomes: Family<StatusLabels, Counter>,
    shard_counters: Vec<(Read, ShardCounter)>,
    shard_gauges: Vec<(Read, ShardGauge)>,
    snapshot_age: ShardSeconds,
    expiry_overdue: ShardSeconds,
    fdatasync_seconds:
        Family<ShardLabels, prometheus_client::metrics::counter::Counter<f64, AtomicU64>>,
    scrape: Mutex<()>,
    /// The POS listener's state, once it runs (its counters and latencies are read at scrape).
    pub pos: PosSlot,
    /// The replicator's figures, when there is a replica.
    pub replica: std::sync::OnceLock<Vec<std::sync::Arc<crate::replica::replicator::ReplicaShard>>>,
    replica_gauges: ReplicaGauges,
}

/// The replica's series (`ledger_replica_*`).
#[derive(Debug, Default)]
struct ReplicaGauges {
    lsn: ShardGauge,
    lag_records: ShardGauge,
    lag_seconds: ShardSeconds,
    running: ShardGauge,
    refused: ShardGauge,
    records: ShardCounter,
    postings: ShardCounter,
    failures: ShardCounter,
}

impl ReplicaGauges {
    fn register(registry: &mut Registry) -> ReplicaGauges {
        let gauges = ReplicaGauges::default();
        registry.register(
            "replica_lsn",
            "The replica's watermark: the last record whose rows are in PostgreSQL",
            gauges.lsn.clone(),
        );
        registry.register(
            "replica_lag_records",
            "Durable records not yet in PostgreSQL",
            gauges.lag_records.clone(),
        );
        registry.register(
            "replica_lag_seconds",
            "Time since the last record in PostgreSQL, while records are missing (0: none)",
            gauges.lag_seconds.clone(),
        );
        registry.register(
            "replica_running",
            "1 while the shard's replication copies records (0: starting, retrying, refused)",
            gauges.running.clone(),
        );
        registry.register(
            "replica_refused",
            "1 when the database holds another ledger or history: replication stopped",
            gauges.refused.clone(),
        );
        registry.register(
            "replica_records",
            "Records written to PostgreSQL",
            gauges.records.clone(),
        );
        registry.register(
            "replica_postings",
            "Postings written to PostgreSQL",
            gauges.postings.clone(),
        );
        registry.register(
            "replica_failures",
            "Failed attempts to reach or write PostgreSQL (each retried)",
            gauges.failures.clone(),
        );
        gauges
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Adds to `counter` what `now` has beyond it (sources only grow; a smaller one is ignored).
fn advance(counter: &Counter, now: u64) {
    let seen = counter.get();
    if now > seen {
        counter.inc_by(now - seen);
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric of docs/admin-api.md, "Metrics".
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ledger");
        let http_requests = Family::<RouteLabels, Counter>::default();
        registry.register(
            "http_requests",
            "Admin API requests answered, by route and status",
            http_requests.clone(),
        );
        let http_seconds = Family::<RouteTimeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
        });
        registry.register(
            "http_request_duration_seconds",
            "Admin API request latency, by route",
            http_seconds.clone(),
        );
        let pos_connections_open = Gauge::default();
        registry.register(
            "pos_connections_open",
            "POS connections open now",
            pos_connections_open.clone(),
        );
        let pos_connections = Counter::default();
        registry.register("pos_connections", "POS connections accepted", pos_connections.clone());
        let pos_auth_failures = Counter::default();
        registry.register(
            "pos_auth_failures",
            "POS handshakes that failed (unknown terminal, wrong MAC, timeout)",
            pos_auth_failures.clone(),
        );
        let pos_requests = Counter::default();
        registry.register("pos_requests", "POS request frames received", pos_requests.clone());
        let pos_operations = Counter::default();
        registry.register(
            "pos_operations",
            "POS operations in accepted requests",
            pos_operations.clone(),
        );
        let pos_outcomes = Family::<StatusLabels, Counter>::default();
        registry.register(
            "pos_outcomes",
            "POS outcomes (operation results and refused frames) by status: rejections by reason",
            pos_outcomes.clone(),
        );
        let mut shard_counters: Vec<(Read, ShardCounter)> = Vec::new();
        let counters: [Described; 10] = [
            ("shard_records", "WAL records appended", |s| s.records),
            ("shard_batches", "Commit groups handed to the WAL writer", |s| s.batches),
            ("shard_rejected", "Commands refused", |s| s.rejected),
            ("shard_busy", "Commands refused busy (inbox full)", |s| s.busy),
            ("shard_fdatasyncs", "fdatasync calls", |s| s.syncs),
            ("shard_wal_bytes", "Bytes written to the WAL", |s| s.wal_bytes),
            ("shard_key_index_hits", "Retries answered from the key index on disk", |s| {
                s.key_index_hits
            }),
            ("shard_scrub_bytes", "Bytes the background scrub read", |s| s.scrub_bytes),
            ("shard_scrub_findings", "Damage the background scrub found", |s| s.scrub_findings),
            ("shard_expiry_records", "Lot expiries recorded (one per member and turn)", |s| {
                s.expiry_records
            }),
        ];
        for (name, help, read) in counters {
            let family = ShardCounter::default();
            registry.register(name, help, family.clone());
            shard_counters.push((read, family));
        }
        let mut shard_gauges: Vec<(Read, ShardGauge)> = Vec::new();
        let gauges: [Described; 11] = [
            ("shard_applied_lsn", "LSN of the last applied record", |s| s.applied_lsn),
            ("shard_durable_lsn", "LSN up to which the WAL is durable", |s| s.durable_lsn),
            ("shard_snapshot_lsn", "LSN of the last snapshot written", |s| s.last_snapshot_lsn),
            ("shard_queue_depth", "Records applied and not yet durable", |s| {
                s.applied_lsn.saturating_sub(s.durable_lsn)
            }),
            ("shard_poisoned", "1 when the shard stopped after an I/O error", |s| {
                u64::from(s.poisoned)
            }),
            ("shard_accounts", "Accounts on the shard", |s| s.accounts),
            ("shard_holds", "Open holds", |s| s.holds),
            ("shard_lots", "Point lots held by the shard's members", |s| s.lots),
            (
                "shard_expiry_behind",
                "1 when the expiry sweep's last turn had more due than it takes",
                |s| u64::from(s.expiry_behind),
            ),
            ("shard_idempotency_keys", "Idempotency keys in memory", |s| s.idempotency_keys),
            ("shard_transfers_in_flight", "Cross-shard transfers not yet settled", |s| {
                s.transfers_in_flight
            }),
        ];
        for (name, help, read) in gauges {
            let family = ShardGauge::default();
            registry.register(name, help, family.clone());
            shard_gauges.push((read, family));
        }
        let snapshot_age = ShardSeconds::default();
        registry.register(
            "shard_snapshot_age_seconds",
            "Time since the last record the newest snapshot covers (0: it covers every applied \
             record; -1: records and no snapshot)",
            snapshot_age.clone(),
        );
        let expiry_overdue = ShardSeconds::default();
        registry.register(
            "shard_expiry_overdue_seconds",
            "How long the earliest lot still held has been due (0: none due): the expiry sweep's lag",
            expiry_overdue.clone(),
        );
        let replica_gauges = ReplicaGauges::register(&mut registry);
        let pos = PosSlot::default();
        registry.register_collector(Box::new(PosLatency(std::sync::Arc::clone(&pos))));
        let fdatasync_seconds = Family::default();
        registry.register(
            "shard_fdatasync_seconds",
            "Time spent in fdatasync",
            fdatasync_seconds.clone(),
        );
        Metrics {
            registry,
            http_requests,
            http_seconds,
            pos_connections_open,
            pos_connections,
            pos_auth_failures,
            pos_requests,
            pos_operations,
            pos_outcomes,
            shard_counters,
            shard_gauges,
            snapshot_age,
            expiry_overdue,
            fdatasync_seconds,
            scrape: Mutex::new(()),
            pos,
            replica: std::sync::OnceLock::new(),
            replica_gauges,
        }
    }

    fn replica_series(
        &self,
        labels: &ShardLabels,
        replica: &crate::replica::replicator::ReplicaShard,
        durable: u64,
        now: ledger_engine::Timestamp,
    ) {
        use crate::replica::replicator::State;
        let gauges = &self.replica_gauges;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let signed = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        let (records, seconds) = replica.lag(durable, now);
        gauges.lsn.get_or_create(labels).set(signed(load(&replica.lsn)));
        gauges.lag_records.get_or_create(labels).set(signed(records));
        gauges.lag_seconds.get_or_create(labels).set(seconds.as_secs_f64());
        gauges.running.get_or_create(labels).set(i64::from(replica.state() == State::Running));
        gauges.refused.get_or_create(labels).set(i64::from(replica.state() == State::Refused));
        advance(&gauges.records.get_or_create(labels), load(&replica.records));
        advance(&gauges.postings.get_or_create(labels), load(&replica.postings));
        advance(&gauges.failures.get_or_create(labels), load(&replica.failures));
    }

    /// Counts one answered admin request.
    pub fn observe_http(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let (method, route) = (method.to_string(), route.to_string());
        self.http_requests
            .get_or_create(&RouteLabels { method: method.clone(), route: route.clone(), status })
            .inc();
        self.http_seconds.get_or_create(&RouteTimeLabels { method, route }).observe(seconds);
    }

    /// The text exposition, with the POS listener's and the shards' figures read now.
    pub fn render(&self, pos: Option<&PosStats>, engine: Option<&Engine>) -> String {
        let _serialised = self.scrape.lock().expect("scrape lock");
        if let Some(pos) = pos {
            let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
            self.pos_connections_open
                .set(i64::try_from(load(&pos.connections_open)).unwrap_or(i64::MAX));
            advance(&self.pos_connections, load(&pos.connections_accepted));
            advance(&self.pos_auth_failures, load(&pos.auth_failures));
            advance(&self.pos_requests, load(&pos.requests));
            advance(&self.pos_operations, load(&pos.operations));
            for (status, count) in pos.outcome_counts() {
                let labels = StatusLabels { status: status.name().to_string() };
                advance(&self.pos_outcomes.get_or_create(&labels), count);
            }
        }
        if let Some(engine) = engine {
            let now = engine.now();
            for stats in engine.stats() {
                let labels = ShardLabels { shard: stats.shard };
                for (read, family) in &self.shard_counters {
                    advance(&family.get_or_create(&labels), read(&stats));
                }
                for (read, family) in &self.shard_gauges {
                    family
                        .get_or_create(&labels)
                        .set(i64::try_from(read(&stats)).unwrap_or(i64::MAX));
                }
                let age = stats.snapshot_age(now).map_or(-1.0, |age| age.as_secs_f64());
                self.snapshot_age.get_or_create(&labels).set(age);
                let overdue = stats.expiry_overdue(now).as_secs_f64();
                self.expiry_overdue.get_or_create(&labels).set(overdue);
                if let Some(replica) =
                    self.replica.get().and_then(|r| r.get(usize::from(stats.shard)))
                {
                    self.replica_series(&labels, replica, stats.durable_lsn, now);
                }
                let seconds = stats.sync_nanos_total as f64 / 1e9;
                let counter = self.fdatasync_seconds.get_or_create(&labels);
                let seen = counter.get();
                if seconds > seen {
                    counter.inc_by(seconds - seen);
                }
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// `ledger_pos_operation_duration_seconds{opcode}`: each opcode's latency from the read that
/// brought its request to the encoding of its answer (`PosStats::observe`).
struct PosLatency(PosSlot);

/// The POS listener's state, once it runs.
type PosSlot = std::sync::Arc<std::sync::OnceLock<std::sync::Arc<crate::pos::Shared>>>;

impl std::fmt::Debug for PosLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PosLatency")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpcodeLabels {
    opcode: String,
}

impl prometheus_client::collector::Collector for PosLatency {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use crate::pos::stats::LATENCY_BUCKETS;
        let mut family = encoder.encode_descriptor(
            "pos_operation_duration_seconds",
            "POS operation latency, from the read that brought the request to its answer, by opcode",
            None,
            prometheus_client::metrics::MetricType::Histogram,
        )?;
        let Some(pos) = self.0.get() else { return Ok(()) };
        for opcode in ledger_protocol::ops::Opcode::ALL {
            let Some((buckets, sum_nanos)) = pos.stats.latency(*opcode as u8) else { continue };
            // Per-bucket counts: the encoder makes them cumulative, and writes the last bound
            // (infinity) as +Inf.
            let mut bounds: Vec<(f64, u64)> = Vec::with_capacity(LATENCY_BUCKETS + 1);
            for (index, count) in buckets.iter().take(LATENCY_BUCKETS).enumerate() {
                bounds.push((1e-6 * f64::from(1u32 << index), *count));
            }
            bounds.push((f64::INFINITY, buckets[LATENCY_BUCKETS]));
            let count = buckets.iter().sum();
            let labels = OpcodeLabels { opcode: opcode.name().to_string() };
            family
                .encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum_nanos as f64 / 1e9,
                    count,
                    &bounds,
                    None,
                )?;
        }
        Ok(())
    }
}
