//! `ledgerd`'s configuration: defaults, then a TOML file (`--config`), then environment
//! variables (`LEDGER_…`), then command-line flags, each overriding the one before.
//!
//! Every value is checked before anything starts: a bad address, a zero limit or limits that
//! contradict each other stop the server with a message naming the setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use ledger_engine::datadir::DataDirMeta;
use serde::Deserialize;

/// The ledger server: an in-memory double-entry ledger with a write-ahead log, serving POS
/// terminals over a binary TCP protocol (docs/protocol.md).
///
/// Settings come from defaults, then the file given by --config, then LEDGER_* environment
/// variables, then these flags; later ones win. `--print-config` shows the result.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
pub struct Args {
    /// Data directory (created if missing): WAL segments, snapshots, the directory's identity,
    /// and on first start `credentials.toml` with a POS terminal's id and secret
    /// [default: ./data].
    #[arg(long, env = "LEDGER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Address of the POS protocol listener [default: 127.0.0.1:7400]. Loopback by default:
    /// expose it on purpose, behind TLS termination or a private network.
    #[arg(long, env = "LEDGER_POS_ADDR")]
    pub pos_addr: Option<SocketAddr>,

    /// Shards of a new data directory (default: one per two CPUs, at least one: each shard keeps
    /// two threads busy, applying and writing its WAL). An existing directory keeps the count
    /// it was created with; giving another one is an error.
    #[arg(long, env = "LEDGER_SHARDS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub shards: Option<u16>,

    /// TOML configuration file (keys as in docs/operations.md, "Configuration").
    #[arg(long, env = "LEDGER_CONFIG")]
    pub config: Option<PathBuf>,

    /// POS terminal credentials file [default: <data-dir>/credentials.toml, created on first
    /// start with one terminal].
    #[arg(long, env = "LEDGER_CREDENTIALS")]
    pub credentials: Option<PathBuf>,

    /// Operations per second each terminal may send, over all its connections, unless its
    /// credentials entry says otherwise [default: 2000000].
    #[arg(long, env = "LEDGER_POS_RATE_PER_TERMINAL")]
    pub rate_per_terminal: Option<u32>,

    /// Requests one connection may have unanswered [default: 4096].
    #[arg(long, env = "LEDGER_POS_IN_FLIGHT_MAX")]
    pub in_flight_max: Option<u16>,

    /// Threads serving network connections [default: 1].
    #[arg(long, env = "LEDGER_IO_THREADS", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub io_threads: Option<u16>,

    /// Log format: `pretty` for people, `json` (one object per line) for log collectors
    /// [default: pretty].
    #[arg(long, env = "LEDGER_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Loyalty rule file (TOML, docs/loyalty.md): checked before anything starts, and recorded
    /// as a new rule version when it differs from the version in force (or from the version
    /// already scheduled at its `effective_at`).
    #[arg(long, env = "LEDGER_RULES")]
    pub rules: Option<PathBuf>,

    /// Address of the admin HTTP API [default: 127.0.0.1:7401]. Loopback by default, like the
    /// POS listener.
    #[arg(long, env = "LEDGER_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,

    /// Admin API tokens file [default: <data-dir>/admin-tokens.toml, created on first start
    /// with one admin token, printed once].
    #[arg(long, env = "LEDGER_ADMIN_TOKENS")]
    pub admin_tokens: Option<PathBuf>,

    /// PostgreSQL connection string of the reporting replica (docs/reporting.md), e.g.
    /// `postgres://ledger:…@127.0.0.1:5432/reports` [default: none: no replica].
    #[arg(long, env = "LEDGER_REPLICA_URL")]
    pub replica_url: Option<String>,

    /// Print the effective configuration (secrets are never printed) and exit.
    #[arg(long)]
    pub print_config: bool,

    /// A tool instead of the server.
    #[command(subcommand)]
    pub command: Option<Tool>,
}

/// `ledgerd`'s tools.
#[derive(Debug, clap::Subcommand)]
pub enum Tool {
    /// Loyalty rule files.
    Rules {
        /// What to do.
        #[command(subcommand)]
        action: RulesAction,
    },
    /// Create or migrate the reporting replica's schema in the PostgreSQL database of
    /// `--replica-url` (or `[replica] url`, or `LEDGER_REPLICA_URL`), then exit: 0 done, 1
    /// refused or unreachable, 2 no replica configured.
    Migrate,
    /// Prove that the reporting replica equals the WAL: at each shard's watermark, every
    /// account's balance and pending counters in PostgreSQL equal the data directory's
    /// replayed to that LSN, and every asset sums to zero there. Exit 0 equal, 1 a difference
    /// (the first is printed), 2 no replica configured, 3 unreachable or unreadable.
    Reconcile,
}

/// `ledgerd rules …`.
#[derive(Debug, clap::Subcommand)]
pub enum RulesAction {
    /// Check a rule file without the server (exit 0 valid, 1 refused with the line and the
    /// reason) and, given `--line`s, print what a sample purchase would earn.
    Check(crate::rules_check::CheckArgs),
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The `[pos]` table of the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PosFile {
    addr: Option<SocketAddr>,
    credentials: Option<PathBuf>,
    frame_bytes_max: Option<u32>,
    batch_ops_max: Option<u16>,
    in_flight_max: Option<u16>,
    ops_in_flight_max: Option<u32>,
    ops_in_flight_total_max: Option<u32>,
    connections_max: Option<u32>,
    handshakes_max: Option<u32>,
    rate_per_terminal: Option<u32>,
    handshake_timeout_ms: Option<u64>,
    drain_timeout_ms: Option<u64>,
    earn_points: Option<u64>,
    earn_per_minor_units: Option<u64>,
    io_threads: Option<u16>,
}

/// The `[admin]` table of the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminFile {
    addr: Option<SocketAddr>,
    tokens: Option<PathBuf>,
    body_bytes_max: Option<u64>,
    timeout_ms: Option<u64>,
    nice: Option<i32>,
}

/// The `[snapshots]` table of the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotsFile {
    every_records: Option<u64>,
    every_secs: Option<u64>,
}

/// The `[scrub]` table of the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScrubFile {
    rate_mib_per_sec: Option<u64>,
    interval_secs: Option<u64>,
}

/// The `[wal]` table of the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WalFile {
    segment_bytes: Option<u64>,
    batch_records_max: Option<usize>,
}

/// The configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    data_dir: Option<PathBuf>,
    shards: Option<u16>,
    hold_timeout_max_ms: Option<u64>,
    idempotency_window: Option<String>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    pos: PosFile,
    #[serde(default)]
    admin: AdminFile,
    #[serde(default)]
    snapshots: SnapshotsFile,
    #[serde(default)]
    wal: WalFile,
    #[serde(default)]
    scrub: ScrubFile,
    #[serde(default)]
    replica: ReplicaFile,
}

/// The `[replica]` table of the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicaFile {
    url: Option<String>,
    nice: Option<i32>,
}

/// The idempotency window "as long as the WAL is kept", in nanoseconds (the engine's
/// retention never ends).
pub const IDEMPOTENCY_WINDOW_WAL: u64 = u64::MAX;

/// The default idempotency window: 24 hours.
pub const IDEMPOTENCY_WINDOW_DEFAULT: u64 = 24 * 3600 * 1_000_000_000;

/// Parses an idempotency window: a whole number of seconds (`s`), minutes (`m`), hours (`h`) or
/// days (`d`), from one second to 3,650 days, or `wal` (as long as the WAL is kept).
pub fn parse_window(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    if text == "wal" {
        return Ok(IDEMPOTENCY_WINDOW_WAL);
    }
    let unit = text.chars().last().unwrap_or(' ');
    let seconds_per_unit: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => bail!(
            "idempotency_window must be like \"24h\", \"90m\", \"7d\" or \"wal\", not {text:?}"
        ),
    };
    let number: u64 = text[..text.len() - 1]
        .parse()
        .with_context(|| format!("idempotency_window {text:?}: not a whole number of {unit}"))?;
    let seconds = number.saturating_mul(seconds_per_unit);
    if !(1..=3650 * 86_400).contains(&seconds) {
        bail!("idempotency_window must be from 1s to 3650d, or \"wal\", not {text:?}");
    }
    Ok(seconds * 1_000_000_000)
}

/// An idempotency window as the configuration file writes it.
pub fn format_window(nanos: u64) -> String {
    if nanos == IDEMPOTENCY_WINDOW_WAL {
        return "wal".to_string();
    }
    let seconds = nanos / 1_000_000_000;
    match seconds {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The background scrub: re-reading data at rest (`ShardTuning::scrub_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubConfig {
    /// MiB read per second at most, per shard; 0 turns the scrub off.
    pub rate_mib_per_sec: u64,
    /// Seconds between passes.
    pub interval_secs: u64,
}

/// The WAL's settings (not replay rules: they may change between runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalConfig {
    /// Bytes of each new segment file.
    pub segment_bytes: u64,
    /// Records per group-commit batch at most; a segment must hold a full batch.
    pub batch_records_max: usize,
}

/// Largest configuration file read.
const CONFIG_BYTES_MAX: u64 = 1024 * 1024;

/// The default longest hold timeout: 30 days, in milliseconds.
pub const HOLD_TIMEOUT_MAX_MS_DEFAULT: u64 = 30 * 24 * 3600 * 1000;

/// Settings of the POS listener and its sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PosConfig {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The credentials file.
    pub credentials: PathBuf,
    /// Largest frame accepted, header included: a batch of `batch_ops_max` of the largest
    /// operations must fit.
    pub frame_bytes_max: usize,
    /// Most operations in one request (TigerBeetle's batches are 8,189).
    pub batch_ops_max: usize,
    /// Most unanswered requests per connection.
    pub in_flight_max: usize,
    /// Most unanswered operations per connection (requests carry up to `batch_ops_max`): what
    /// bounds a connection's memory in the server and the engine, about 250 bytes each.
    pub ops_in_flight_max: usize,
    /// Most unanswered operations over all connections; past it requests are refused `busy`.
    pub ops_in_flight_total_max: usize,
    /// Most open connections; one more is answered `busy` and closed.
    pub connections_max: usize,
    /// Most connections that have not completed the handshake (at most `connections_max`):
    /// one more is answered `busy` and closed, so that peers that never authenticate cannot
    /// take every connection from the terminals that do.
    pub handshakes_max: usize,
    /// Default operations per second per terminal (its burst is one second's worth).
    pub rate_per_terminal: u32,
    /// Time a new connection has to authenticate.
    pub handshake_timeout: Duration,
    /// Time connections have to finish their in-flight requests at shutdown.
    pub drain_timeout: Duration,
    /// The base earn rate of the flat rule set recorded as version 1 of a programme that has
    /// none and was given no rule file: `earn_points` points per `earn_per_minor_units` minor
    /// units. Once a version exists these settings are not read (docs/loyalty.md).
    pub earn_points: u64,
    /// See `earn_points`.
    pub earn_per_minor_units: u64,
    /// Threads of the async runtime that serves connections.
    pub io_threads: usize,
}

/// When shards take snapshots: after this many records or this much time since the last one,
/// whichever comes first (and at shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// Records between snapshots.
    pub every_records: u64,
    /// Time between snapshots.
    pub every: Duration,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Shards of a new data directory (`None`: `default_shards()`).
    pub shards: Option<u16>,
    /// The longest hold timeout of a new data directory, in milliseconds: a replay rule, fixed
    /// in its `ledgerd.meta` when the directory is created (an existing one keeps its own).
    pub hold_timeout_max_ms: u64,
    /// How long idempotency keys are remembered by a new data directory, in nanoseconds
    /// (`IDEMPOTENCY_WINDOW_WAL`: as long as the WAL is kept): a replay rule, like
    /// `hold_timeout_max_ms`.
    pub idempotency_window_nanos: u64,
    /// Whether the file set `hold_timeout_max_ms` and `idempotency_window` (not defaults): an
    /// existing directory whose own values differ is then worth a warning.
    pub replay_rules_set: (bool, bool),
    /// The WAL's segment size and batch size.
    pub wal: WalConfig,
    /// The background scrub.
    pub scrub: ScrubConfig,
    /// Log format.
    pub log_format: LogFormat,
    /// The POS protocol.
    pub pos: PosConfig,
    /// The admin HTTP API.
    pub admin: crate::admin::AdminConfig,
    /// Snapshots.
    pub snapshots: SnapshotConfig,
    /// The PostgreSQL reporting replica, if one is configured.
    pub replica: Option<crate::replica::ReplicaConfig>,
}

impl Config {
    /// Merges defaults, the file, the environment and the flags (clap has already merged the
    /// last two), then checks the result.
    pub fn resolve(args: &Args) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => File::default(),
        };
        let data_dir =
            args.data_dir.clone().or(file.data_dir).unwrap_or_else(|| PathBuf::from("./data"));
        let pos = &file.pos;
        let config = Config {
            shards: args.shards.or(file.shards),
            hold_timeout_max_ms: file.hold_timeout_max_ms.unwrap_or(HOLD_TIMEOUT_MAX_MS_DEFAULT),
            idempotency_window_nanos: match &file.idempotency_window {
                Some(text) => parse_window(text)?,
                None => IDEMPOTENCY_WINDOW_DEFAULT,
            },
            replay_rules_set: (
                file.hold_timeout_max_ms.is_some(),
                file.idempotency_window.is_some(),
            ),
            scrub: ScrubConfig {
                rate_mib_per_sec: file.scrub.rate_mib_per_sec.unwrap_or(16),
                interval_secs: file.scrub.interval_secs.unwrap_or(3600),
            },
            wal: {
                let defaults = ledger_engine::Limits::default();
                WalConfig {
                    segment_bytes: file.wal.segment_bytes.unwrap_or(defaults.segment_bytes),
                    batch_records_max: file
                        .wal
                        .batch_records_max
                        .unwrap_or(defaults.batch_records_max),
                }
            },
            log_format: args.log_format.or(file.log_format).unwrap_or(LogFormat::Pretty),
            pos: PosConfig {
                addr: args
                    .pos_addr
                    .or(pos.addr)
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7400))),
                credentials: args
                    .credentials
                    .clone()
                    .or(pos.credentials.clone())
                    .unwrap_or_else(|| data_dir.join("credentials.toml")),
                frame_bytes_max: pos.frame_bytes_max.map_or(1024 * 1024, |v| v as usize),
                batch_ops_max: usize::from(pos.batch_ops_max.unwrap_or(8192)),
                in_flight_max: usize::from(
                    args.in_flight_max.or(pos.in_flight_max).unwrap_or(4096),
                ),
                ops_in_flight_max: pos.ops_in_flight_max.map_or(65_536, |v| v as usize),
                ops_in_flight_total_max: pos
                    .ops_in_flight_total_max
                    .map_or(1 << 20, |v| v as usize),
                connections_max: pos.connections_max.map_or(4096, |v| v as usize),
                // At most connections_max: a smaller connections_max lowers the default too.
                handshakes_max: pos.handshakes_max.map_or_else(
                    || pos.connections_max.map_or(4096, |v| v as usize).min(1024),
                    |v| v as usize,
                ),
                rate_per_terminal: args
                    .rate_per_terminal
                    .or(pos.rate_per_terminal)
                    .unwrap_or(2_000_000),
                handshake_timeout: Duration::from_millis(
                    pos.handshake_timeout_ms.unwrap_or(10_000),
                ),
                drain_timeout: Duration::from_millis(pos.drain_timeout_ms.unwrap_or(10_000)),
                earn_points: pos.earn_points.unwrap_or(1),
                earn_per_minor_units: pos.earn_per_minor_units.unwrap_or(100),
                io_threads: usize::from(args.io_threads.or(pos.io_threads).unwrap_or(1)),
            },
            admin: crate::admin::AdminConfig {
                addr: args
                    .admin_addr
                    .or(file.admin.addr)
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7401))),
                tokens: args
                    .admin_tokens
                    .clone()
                    .or(file.admin.tokens.clone())
                    .unwrap_or_else(|| data_dir.join("admin-tokens.toml")),
                body_bytes_max: usize::try_from(file.admin.body_bytes_max.unwrap_or(1024 * 1024))
                    .unwrap_or(usize::MAX),
                timeout: Duration::from_millis(file.admin.timeout_ms.unwrap_or(30_000)),
                nice: file.admin.nice.unwrap_or(10),
            },
            snapshots: SnapshotConfig {
                every_records: file.snapshots.every_records.unwrap_or(5_000_000),
                every: Duration::from_secs(file.snapshots.every_secs.unwrap_or(600)),
            },
            replica: args
                .replica_url
                .clone()
                .or(file.replica.url)
                .filter(|url| !url.trim().is_empty())
                .map(|url| crate::replica::ReplicaConfig {
                    url,
                    nice: file.replica.nice.unwrap_or(10),
                }),
            data_dir,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let pos = &self.pos;
        if let Some(shards) = self.shards
            && !(1..=1024).contains(&shards)
        {
            bail!("shards must be 1..=1024, not {shards}");
        }
        let positive = [
            ("pos.batch_ops_max", pos.batch_ops_max as u64),
            ("pos.in_flight_max", pos.in_flight_max as u64),
            ("pos.connections_max", pos.connections_max as u64),
            ("pos.handshakes_max", pos.handshakes_max as u64),
            ("pos.rate_per_terminal", u64::from(pos.rate_per_terminal)),
            ("pos.earn_per_minor_units", pos.earn_per_minor_units),
            ("pos.io_threads", pos.io_threads as u64),
            ("snapshots.every_records", self.snapshots.every_records),
            ("snapshots.every_secs", self.snapshots.every.as_secs()),
            ("scrub.interval_secs", self.scrub.interval_secs),
        ];
        for (name, value) in positive {
            if value == 0 {
                bail!("{name} must be at least 1");
            }
        }
        if pos.ops_in_flight_max < pos.batch_ops_max
            || pos.ops_in_flight_total_max < pos.ops_in_flight_max
        {
            bail!(
                "pos.ops_in_flight_max must hold a full batch (pos.batch_ops_max) and \
                 pos.ops_in_flight_total_max one connection's worth"
            );
        }
        // A hold's timeout travels as a u32 of milliseconds: a longer maximum means nothing.
        if !(1..=u64::from(u32::MAX)).contains(&self.hold_timeout_max_ms) {
            bail!("hold_timeout_max_ms must be 1..={}", u32::MAX);
        }
        let limits = self.engine_limits();
        if let Err(error) = limits.validate() {
            bail!(
                "[wal] segment_bytes and batch_records_max: {error} (with {} records per batch, \
                 segments need at least {} bytes)",
                limits.batch_records_max,
                limits.segment_bytes_min()
            );
        }
        if pos.handshakes_max > pos.connections_max {
            bail!("pos.handshakes_max must be at most pos.connections_max");
        }
        if self.scrub.rate_mib_per_sec > 100_000 {
            bail!("scrub.rate_mib_per_sec must be at most 100000 (0 turns the scrub off)");
        }
        let admin = &self.admin;
        if !(1..=64 * 1024 * 1024).contains(&admin.body_bytes_max) {
            bail!("admin.body_bytes_max must be 1..=67108864");
        }
        if !(1..=600_000).contains(&admin.timeout.as_millis()) {
            bail!("admin.timeout_ms must be 1..=600000");
        }
        if !(0..=19).contains(&admin.nice) {
            bail!("admin.nice must be 0..=19");
        }
        if self.replica.as_ref().is_some_and(|replica| !(0..=19).contains(&replica.nice)) {
            bail!("replica.nice must be 0..=19");
        }
        if let Some(replica) = &self.replica
            && let Err(error) = replica.url.parse::<tokio_postgres::Config>()
        {
            bail!(
                "replica.url {} is not a PostgreSQL connection string: {error}",
                crate::replica::redacted(&replica.url)
            );
        }
        if admin.addr == pos.addr && admin.addr.port() != 0 {
            bail!("admin.addr and pos.addr must differ ({})", admin.addr);
        }
        if pos.io_threads > 64 {
            bail!("pos.io_threads must be at most 64");
        }
        if pos.frame_bytes_max > ledger_protocol::frame::FRAME_BYTES_LIMIT {
            bail!("pos.frame_bytes_max must be at most 16 MiB");
        }
        // A full batch of the largest fixed-size operations must fit in a frame, or clients
        // could build requests that are within every advertised limit and still refused; a
        // basket purchase is larger, and a frame holds at least one of the largest.
        let batch_bytes = ledger_protocol::frame::FRAME_HEADER_BYTES
            + ledger_protocol::ops::COUNT_HEADER_BYTES
            + (pos.batch_ops_max * ledger_protocol::ops::FIXED_OP_BYTES_MAX)
                .max(ledger_protocol::ops::OP_BYTES_MAX);
        if batch_bytes > pos.frame_bytes_max {
            bail!(
                "pos.frame_bytes_max ({}) cannot hold a batch of pos.batch_ops_max ({}) \
                 operations: it needs {batch_bytes}",
                pos.frame_bytes_max,
                pos.batch_ops_max
            );
        }
        Ok(())
    }

    /// The engine's runtime limits with the WAL settings applied.
    pub fn engine_limits(&self) -> ledger_engine::Limits {
        ledger_engine::Limits {
            segment_bytes: self.wal.segment_bytes,
            batch_records_max: self.wal.batch_records_max,
            ..ledger_engine::Limits::default()
        }
    }

    /// The replay rules this configuration sets explicitly that `meta` (an existing data
    /// directory) overrides, one sentence each: they are fixed when a directory is created.
    pub fn overridden_replay_rules(&self, meta: &DataDirMeta) -> Vec<String> {
        let mut overridden = Vec::new();
        let own_hold = meta.semantics.hold_timeout_max_nanos / 1_000_000;
        if self.replay_rules_set.0 && own_hold != self.hold_timeout_max_ms {
            overridden.push(format!(
                "hold_timeout_max_ms = {} is ignored: the data directory keeps its own {own_hold}",
                self.hold_timeout_max_ms
            ));
        }
        let own_window = meta.semantics.idempotency_retention_nanos;
        if self.replay_rules_set.1 && own_window != self.idempotency_window_nanos {
            overridden.push(format!(
                "idempotency_window = {:?} is ignored: the data directory keeps its own {:?}",
                format_window(self.idempotency_window_nanos),
                format_window(own_window)
            ));
        }
        overridden
    }

    /// The longest hold timeout, in nanoseconds, for the engine's replay rules.
    pub fn hold_timeout_max_nanos(&self) -> u64 {
        self.hold_timeout_max_ms.saturating_mul(1_000_000)
    }

    /// The effective configuration as TOML, for `--print-config`. The shard count and the hold
    /// timeout maximum are those of `directory` (its `ledgerd.meta`) when the data directory
    /// exists: they are fixed when it is created.
    pub fn to_toml(&self, directory: Option<&DataDirMeta>) -> String {
        let pos = &self.pos;
        let (shards, hold_timeout_max_ms, window, origin) = match directory {
            Some(meta) => (
                meta.shard_count,
                meta.semantics.hold_timeout_max_nanos / 1_000_000,
                meta.semantics.idempotency_retention_nanos,
                "the data directory's (ledgerd.meta)",
            ),
            None => (
                self.shards.unwrap_or_else(default_shards),
                self.hold_timeout_max_ms,
                self.idempotency_window_nanos,
                "for a new data directory",
            ),
        };
        format!(
            "data_dir = {:?}\n# shards, hold_timeout_max_ms and idempotency_window: {origin}, \
             fixed when it is created\nshards = {shards}\nhold_timeout_max_ms = \
             {hold_timeout_max_ms}\nidempotency_window = \"{}\"\n\
             log_format = \"{}\"\n\n[pos]\naddr = \"{}\"\n\
             credentials = {:?}\nframe_bytes_max = {}\nbatch_ops_max = {}\nin_flight_max = {}\n\
             ops_in_flight_max = {}\nops_in_flight_total_max = {}\n\
             connections_max = {}\nhandshakes_max = {}\nrate_per_terminal = {}\n\
             handshake_timeout_ms = {}\n\
             drain_timeout_ms = {}\nearn_points = {}\nearn_per_minor_units = {}\nio_threads = {}\n\n\
             [admin]\naddr = \"{}\"\ntokens = {:?}\nbody_bytes_max = {}\ntimeout_ms = {}\nnice = {}\n\n\
             [snapshots]\nevery_records = {}\nevery_secs = {}\n\n\
             [wal]\nsegment_bytes = {}\nbatch_records_max = {}\n\n\
             [scrub]\nrate_mib_per_sec = {}\ninterval_secs = {}\n\n\
             [replica]\n{}\n",
            self.data_dir.display().to_string(),
            format_window(window),
            match self.log_format {
                LogFormat::Pretty => "pretty",
                LogFormat::Json => "json",
            },
            pos.addr,
            pos.credentials.display().to_string(),
            pos.frame_bytes_max,
            pos.batch_ops_max,
            pos.in_flight_max,
            pos.ops_in_flight_max,
            pos.ops_in_flight_total_max,
            pos.connections_max,
            pos.handshakes_max,
            pos.rate_per_terminal,
            pos.handshake_timeout.as_millis(),
            pos.drain_timeout.as_millis(),
            pos.earn_points,
            pos.earn_per_minor_units,
            pos.io_threads,
            self.admin.addr,
            self.admin.tokens.display().to_string(),
            self.admin.body_bytes_max,
            self.admin.timeout.as_millis(),
            self.admin.nice,
            self.snapshots.every_records,
            self.snapshots.every.as_secs(),
            self.wal.segment_bytes,
            self.wal.batch_records_max,
            self.scrub.rate_mib_per_sec,
            self.scrub.interval_secs,
            match &self.replica {
                Some(replica) => format!(
                    "url = {:?}\nnice = {}",
                    crate::replica::redacted(&replica.url),
                    replica.nice
                ),
                None => "# url: none (no replica)".to_string(),
            },
        )
    }
}

/// Shards of a new data directory when none is configured: one per two CPUs, at least one.
/// A shard keeps two threads busy under load (applying, and writing its WAL), and the network
/// needs the rest; on 2 cores one shard served 735k POS tx/s and two 561k
/// (docs/performance.md, "POS protocol").
pub fn default_shards() -> u16 {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    u16::try_from(cpus / 2).unwrap_or(1024).clamp(1, 1024)
}

fn read_file(path: &Path) -> anyhow::Result<File> {
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("cannot read configuration file {}", path.display()))?;
    if metadata.len() > CONFIG_BYTES_MAX {
        bail!("configuration file {} is larger than 1 MiB", path.display());
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read configuration file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid configuration file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("ledgerd").chain(list.iter().copied())).unwrap()
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ledgerd.toml");
        std::fs::write(
            &file,
            "data_dir = \"/srv/ledger\"\nshards = 3\n[pos]\naddr = \"127.0.0.1:9000\"\n\
             in_flight_max = 8\nearn_points = 2\n[snapshots]\nevery_records = 1000\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let config = Config::resolve(&args(&["--config", path])).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/srv/ledger"));
        assert_eq!(config.shards, Some(3));
        assert_eq!(config.pos.addr.port(), 9000);
        assert_eq!(config.pos.in_flight_max, 8);
        assert_eq!(config.pos.earn_points, 2);
        assert_eq!(config.snapshots.every_records, 1000);
        assert_eq!(config.snapshots.every, Duration::from_secs(600));
        assert_eq!(config.pos.credentials, PathBuf::from("/srv/ledger/credentials.toml"));
        let config =
            Config::resolve(&args(&["--config", path, "--pos-addr", "127.0.0.1:9001"])).unwrap();
        assert_eq!(config.pos.addr.port(), 9001);
        let defaults = Config::resolve(&args(&[])).unwrap();
        assert_eq!(defaults.pos.addr, SocketAddr::from(([127, 0, 0, 1], 7400)));
        assert_eq!(defaults.data_dir, PathBuf::from("./data"));
        assert_eq!((defaults.pos.connections_max, defaults.pos.handshakes_max), (4096, 1024));
        let few = dir.path().join("few.toml");
        std::fs::write(&few, "[pos]\nconnections_max = 100\n").unwrap();
        let few = Config::resolve(&args(&["--config", few.to_str().unwrap()])).unwrap();
        assert_eq!(few.pos.handshakes_max, 100, "never more than connections_max by default");
        // The printed configuration reads back as the same configuration.
        let printed = dir.path().join("printed.toml");
        std::fs::write(&printed, config.to_toml(None)).unwrap();
        let again = Config::resolve(&args(&["--config", printed.to_str().unwrap()])).unwrap();
        assert_eq!(again.pos, config.pos);
        assert_eq!(again.hold_timeout_max_ms, config.hold_timeout_max_ms);
        assert_eq!(again.snapshots, config.snapshots);
        assert_eq!(again.idempotency_window_nanos, config.idempotency_window_nanos);
        assert_eq!(again.wal, config.wal);
        assert_eq!(again.scrub, config.scrub);
    }

    #[test]
    fn idempotency_windows_and_wal_sizes_parse_and_print() {
        assert_eq!(parse_window("24h").unwrap(), IDEMPOTENCY_WINDOW_DEFAULT);
        assert_eq!(parse_window("90m").unwrap(), 90 * 60 * 1_000_000_000);
        assert_eq!(parse_window("wal").unwrap(), IDEMPOTENCY_WINDOW_WAL);
        for window in ["1d", "90m", "7d", "45s", "wal"] {
            assert_eq!(format_window(parse_window(window).unwrap()), window);
        }
        for bad in ["", "24", "h", "0s", "-1h", "1.5h", "3651d", "forever"] {
            assert!(parse_window(bad).is_err(), "{bad:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("small.toml");
        std::fs::write(
            &file,
            "idempotency_window = \"wal\"\n[wal]\nsegment_bytes = 1048576\nbatch_records_max = 64\n",
        )
        .unwrap();
        let config = Config::resolve(&args(&["--config", file.to_str().unwrap()])).unwrap();
        assert_eq!(config.idempotency_window_nanos, IDEMPOTENCY_WINDOW_WAL);
        assert_eq!(config.engine_limits().segment_bytes, 1 << 20);
        assert!(config.to_toml(None).contains("idempotency_window = \"wal\""));
    }

    #[test]
    fn replay_rules_set_in_the_file_that_an_existing_directory_overrides_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let meta = DataDirMeta {
            cluster_id: 1,
            shard_count: 1,
            semantics: ledger_engine::datadir::Semantics {
                transaction_postings_max: 16,
                idempotency_keys_max: 1024,
                idempotency_retention_nanos: IDEMPOTENCY_WINDOW_DEFAULT,
                holds_open_max: 16,
                hold_timeout_max_nanos: HOLD_TIMEOUT_MAX_MS_DEFAULT * 1_000_000,
                transfers_in_flight_max: 16,
                history_entries_max: 16,
            },
        };
        // Defaults never warn, even where the directory's own values differ from them.
        let defaults = Config::resolve(&args(&[])).unwrap();
        let mut other = meta;
        other.semantics.idempotency_retention_nanos = IDEMPOTENCY_WINDOW_WAL;
        other.semantics.hold_timeout_max_nanos = 5_000_000;
        assert!(defaults.overridden_replay_rules(&other).is_empty());
        // Values set in the file and equal to the directory's do not either.
        let file = dir.path().join("rules.toml");
        std::fs::write(&file, "idempotency_window = \"wal\"\nhold_timeout_max_ms = 5\n").unwrap();
        let config = Config::resolve(&args(&["--config", file.to_str().unwrap()])).unwrap();
        assert!(config.overridden_replay_rules(&other).is_empty());
        let overridden = config.overridden_replay_rules(&meta);
        assert_eq!(overridden.len(), 2, "{overridden:?}");
        assert!(overridden[0].starts_with("hold_timeout_max_ms = 5 is ignored"), "{overridden:?}");
        assert!(overridden[1].contains("\"wal\" is ignored") && overridden[1].contains("\"1d\""));
    }

    #[test]
    fn bad_settings_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("[pos]\nbatch_ops_max = 0\n", "pos.batch_ops_max"),
            ("[pos]\nops_in_flight_max = 100\n", "pos.ops_in_flight_max"),
            ("[pos]\nconnections_max = 10\nhandshakes_max = 11\n", "pos.handshakes_max"),
            ("[pos]\nframe_bytes_max = 1000\n", "pos.frame_bytes_max"),
            ("[pos]\nearn_per_minor_units = 0\n", "pos.earn_per_minor_units"),
            ("[pos]\nsurprise = 1\n", "surprise"),
            ("shards = 0\n", "shards"),
            ("hold_timeout_max_ms = 0\n", "hold_timeout_max_ms"),
            ("hold_timeout_max_ms = 4294967296\n", "hold_timeout_max_ms"),
            ("[snapshots]\nevery_secs = 0\n", "snapshots.every_secs"),
            ("idempotency_window = \"1y\"\n", "idempotency_window"),
            ("[wal]\nsegment_bytes = 1048576\n", "segment_bytes"),
            ("[wal]\nbatch_records_max = 0\n", "batch_records_max"),
            ("[scrub]\ninterval_secs = 0\n", "scrub.interval_secs"),
            ("[pos]\naddr = \"nowhere\"\n", "invalid configuration"),
        ];
        for (text, expected) in cases {
            let file = dir.path().join("bad.toml");
            std::fs::write(&file, text).unwrap();
            let error = Config::resolve(&args(&["--config", file.to_str().unwrap()])).unwrap_err();
            let message = format!("{error:#}");
            assert!(message.contains(expected), "{text:?}: {message}");
        }
    }
}
