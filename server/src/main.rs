//! `ledgerd`: runs the ledger engine on a data directory.
//!
//! Start-up opens (or creates) the data directory, recovers every shard, makes sure the
//! default loyalty definitions exist (`bootstrap`), and serves until SIGTERM or SIGINT. Shutdown
//! stops taking requests, answers what is queued, flushes, snapshots and exits 0; a second
//! signal exits at once. The POS protocol and the admin API (later issues) attach here.
//!
//! Run with: `cargo run --release -p ledger-server --bin ledgerd -- --data-dir ./data`

mod bootstrap;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use ledger_engine::{Engine, EngineConfig};

/// The ledger server: an in-memory double-entry ledger with a write-ahead log.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Data directory (created if missing): WAL segments, snapshots, the directory's identity.
    #[arg(long, env = "LEDGER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,

    /// Shards of a new data directory (default: one per CPU). An existing directory keeps the
    /// count it was created with; giving another one is an error.
    #[arg(long, env = "LEDGER_SHARDS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    shards: Option<u16>,

    /// Log format: `pretty` for people, `json` (one object per line) for log collectors.
    #[arg(long, env = "LEDGER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEDGER_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal, and never with NO_COLOR set.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    let mut config = EngineConfig::new(&args.data_dir);
    config.shard_count = args.shards;
    let engine = Arc::new(
        Engine::open(config)
            .with_context(|| format!("cannot open data directory {}", args.data_dir.display()))?,
    );
    let definitions =
        bootstrap::define_defaults(&engine).context("cannot define the default assets")?;
    tracing::info!(
        data_dir = %args.data_dir.display(),
        shards = engine.shard_count(),
        assets = definitions.assets,
        classes = definitions.classes,
        "ledgerd ready"
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut signals = runtime.block_on(async { ShutdownSignals::new() })?;
    runtime.block_on(signals.next());
    tracing::info!("shutting down: answering queued requests, flushing, snapshotting");
    // A second signal during the drain exits at once.
    runtime.spawn(async move {
        signals.next().await;
        tracing::warn!("second signal: exiting without a clean shutdown");
        std::process::exit(130);
    });
    let engine = Arc::into_inner(engine).context("the engine is still shared at shutdown")?;
    engine.shutdown();
    tracing::info!("ledgerd stopped");
    Ok(())
}

/// SIGTERM and SIGINT, registered once for the life of the process (a stream registered after
/// a signal arrived could report that signal again).
struct ShutdownSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn new() -> anyhow::Result<ShutdownSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(ShutdownSignals {
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}
