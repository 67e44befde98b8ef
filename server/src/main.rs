//! `ledgerd`: runs the ledger engine on a data directory and serves POS terminals over the
//! binary protocol of docs/protocol.md.
//!
//! Start-up opens (or creates) the data directory, recovers every shard, makes sure the
//! default loyalty definitions exist (`bootstrap`), loads (or on first start creates) the
//! terminal credentials, binds the POS listener and logs its address. The admin HTTP API
//! (`admin`) listens from before recovery, answering "not ready" until the engine is up.
//! Shutdown on SIGTERM or SIGINT stops accepting, lets connections answer what is in flight,
//! stops the admin API, flushes, snapshots and exits 0; a second signal exits at once.
//!
//! Run with: `cargo run --release -p ledger-server --bin ledgerd -- --data-dir ./data`

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use ledger_engine::{Engine, EngineConfig};

use ledger_server::config::{self, Args, Config, LogFormat};
use ledger_server::{admin, bootstrap, credentials, pos};

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

/// `ledgerd migrate`: the replica's schema brought up to date. Exit 0 done, 1 refused or
/// unreachable, 2 no replica configured.
fn migrate(config: &Config) -> i32 {
    let Some(replica) = &config.replica else {
        eprintln!(
            "error: no replica is configured: give --replica-url, [replica] url or \
             LEDGER_REPLICA_URL"
        );
        return 2;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return 1;
        }
    };
    let migrated = runtime.block_on(async {
        let mut client = ledger_server::replica::connect(replica).await?;
        anyhow::Ok(ledger_server::replica::migrations::migrate(&mut client).await?)
    });
    match migrated {
        Ok(migrated) => {
            println!(
                "ledgerd: replica schema at version {} (applied now: {:?})",
                migrated.version, migrated.applied
            );
            0
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            1
        }
    }
}

/// `ledgerd reconcile`: exit 0 the replica equals the WAL, 1 a difference, 2 no replica
/// configured, 3 unreachable or unreadable.
fn reconcile(config: &Config) -> i32 {
    let Some(replica) = &config.replica else {
        eprintln!(
            "error: no replica is configured: give --replica-url, [replica] url or \
             LEDGER_REPLICA_URL"
        );
        return 2;
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return 3;
        }
    };
    let found = runtime.block_on(async {
        let client = ledger_server::replica::connect(replica).await?;
        ledger_server::replica::reconcile::reconcile(
            &client,
            &config.data_dir,
            &config.engine_limits(),
        )
        .await
    });
    match found {
        Ok(found) => {
            let shards: Vec<String> =
                found.shards.iter().map(|(shard, lsn)| format!("{shard}@{lsn}")).collect();
            println!(
                "shards (at lsn): {}; accounts compared: {}",
                shards.join(" "),
                found.accounts
            );
            for (asset, sum) in &found.assets {
                println!("asset {asset}: posted balances sum to {sum}");
            }
            match &found.difference {
                Some(difference) => println!("DIFFERENCE: {difference}"),
                None => println!("every account equals the WAL's"),
            }
            match &found.loyalty_difference {
                Some(difference) => println!("DIFFERENCE: {difference}"),
                None => println!("every member ({}) and lot equals the WAL's", found.members),
            }
            if found.balanced() { 0 } else { 1 }
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            3
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(config::Tool::Rules { action: config::RulesAction::Check(check) }) = &args.command {
        // Exit 0 valid, 1 refused, 2 bad arguments (docs/operations.md, "Loyalty rules").
        let code = match ledger_server::rules_check::run(check) {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(error) => {
                eprintln!("error: {error:#}");
                2
            }
        };
        std::process::exit(code);
    }
    let config = Config::resolve(&args)?;
    if matches!(args.command, Some(config::Tool::Migrate)) {
        init_logging(config.log_format);
        std::process::exit(migrate(&config));
    }
    if matches!(args.command, Some(config::Tool::Reconcile)) {
        init_logging(config.log_format);
        std::process::exit(reconcile(&config));
    }
    if args.print_config {
        // An existing data directory's replay rules are what the server would run with.
        let directory = ledger_engine::datadir::read_meta(&config.data_dir).ok();
        print!("{}", config.to_toml(directory.as_ref()));
        return Ok(());
    }
    init_logging(config.log_format);
    // A rule file is checked before anything starts: a bad one changes nothing.
    let rules = match &args.rules {
        Some(path) => {
            Some(ledger_engine::loyalty::rules_file::read(path).map_err(
                |error| match error.line {
                    0 => anyhow::anyhow!("{}: {}", path.display(), error.message),
                    line => anyhow::anyhow!("{}:{line}: {}", path.display(), error.message),
                },
            )?)
        }
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.pos.io_threads)
        .thread_name("ledgerd-io")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // The admin API listens from before recovery: /healthz answers, /readyz says "not ready".
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let tokens = admin::auth::load_or_create(
        &config.admin.tokens,
        &config.data_dir.join("admin-tokens.toml"),
    )?;
    let admin_tokens = tokens.len();
    let admin_state = Arc::new(admin::AdminState::new(config.admin.clone(), tokens));
    let admin = admin::AdminThread::spawn(Arc::clone(&admin_state))?;
    tracing::info!(addr = %admin.addr, tokens = admin_tokens, "admin API listening");
    let mut engine_config = EngineConfig::new(&config.data_dir);
    // A replay rule: it applies to a new directory; an existing one keeps its own.
    engine_config.hold_timeout_max_nanos = config.hold_timeout_max_nanos();
    engine_config.idempotency_retention_nanos = config.idempotency_window_nanos;
    engine_config.limits = config.engine_limits();
    engine_config.tuning.scrub_rate_bytes_per_sec =
        config.scrub.rate_mib_per_sec.saturating_mul(1024 * 1024);
    engine_config.tuning.scrub_interval =
        std::time::Duration::from_secs(config.scrub.interval_secs);
    engine_config.tuning.snapshot_every_records = config.snapshots.every_records;
    engine_config.tuning.snapshot_every = config.snapshots.every;
    // With a replica, no WAL it has not copied (nor the snapshot it would resume from) goes.
    engine_config.tuning.wal_reader = config.replica.is_some();
    // An existing directory keeps its count; a new one gets the configured or default count.
    let exists = ledger_engine::datadir::read_meta(&config.data_dir).is_ok();
    engine_config.shard_count = match config.shards {
        Some(shards) => Some(shards),
        None if exists => None,
        None => Some(config::default_shards()),
    };
    let engine =
        Arc::new(Engine::open(engine_config).with_context(|| {
            format!("cannot open data directory {}", config.data_dir.display())
        })?);
    if let Ok(meta) = ledger_engine::datadir::read_meta(&config.data_dir) {
        for overridden in config.overridden_replay_rules(&meta) {
            tracing::warn!("{overridden} (fixed when the directory was created)");
        }
    }
    let definitions =
        bootstrap::define_defaults(&engine).context("cannot define the default assets")?;
    if let Some(recorded) =
        bootstrap::record_rules(&engine, definitions.accounts, rules.as_ref(), &config.pos)?
    {
        tracing::info!(
            version = recorded.version,
            new = recorded.new,
            "loyalty rules {}",
            if recorded.new { "recorded" } else { "unchanged" }
        );
    }
    admin_state.set_engine(Arc::clone(&engine));
    let credentials = credentials::load_or_create(&config)?;
    let book = pos::handler::Book::new(&engine)?;
    let terminals = pos::terminals::Terminals::new(
        credentials,
        config.pos.credentials.clone(),
        config.pos.rate_per_terminal,
    );
    let shared = Arc::new(pos::Shared {
        engine: Arc::clone(&engine),
        book,
        config: config.pos.clone(),
        terminals,
        stats: pos::stats::PosStats::default(),
        ops_in_flight: Arc::default(),
    });
    admin_state.set_pos(Arc::clone(&shared));
    // The reporting replica follows the WAL files on threads of its own: the POS path never
    // waits for it, whatever PostgreSQL does.
    let replicator = match &config.replica {
        Some(replica) => {
            let replicator = ledger_server::replica::replicator::Replicator::spawn(
                Arc::clone(&engine),
                replica.clone(),
                config.engine_limits(),
            )
            .context("cannot start the replicator")?;
            admin_state.set_replica(replicator.shards.clone());
            tracing::info!(url = %ledger_server::replica::redacted(&replica.url), "replicating to PostgreSQL");
            Some(replicator)
        }
        None => None,
    };
    let mut signals = runtime.block_on(async { ShutdownSignals::new() })?;
    // Ready only once a signal can no longer kill the process before a clean shutdown.
    tracing::info!(
        data_dir = %config.data_dir.display(),
        shards = engine.shard_count(),
        assets = definitions.assets,
        classes = definitions.classes,
        terminals = shared.terminals.enabled_count(),
        "ledgerd ready"
    );
    let drained = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.pos.addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.pos.addr))?;
        let addr = listener.local_addr().context("no local address")?;
        tracing::info!(%addr, "POS protocol listening");
        anyhow::Ok(pos::run(listener, Arc::clone(&shared), signals.next()).await)
    })?;
    tracing::info!(
        closed = drained.closed,
        abandoned = drained.abandoned,
        "connections drained; flushing and snapshotting"
    );
    // A second signal during the rest of the shutdown exits at once.
    runtime.spawn(async move {
        signals.next().await;
        tracing::warn!("second signal: exiting without a clean shutdown");
        std::process::exit(130);
    });
    let outcomes: Vec<String> = shared
        .stats
        .outcome_counts()
        .iter()
        .map(|(status, count)| format!("{status}={count}"))
        .collect();
    tracing::info!(
        requests = shared.stats.requests.load(std::sync::atomic::Ordering::Relaxed),
        operations = shared.stats.operations.load(std::sync::atomic::Ordering::Relaxed),
        outcomes = outcomes.join(" "),
        "POS totals"
    );
    // The admin API answers what is in flight, then lets go of the engine.
    if let Err(error) = admin.stop() {
        tracing::warn!(%error, "the admin API stopped with an error");
    }
    drop(admin_state);
    drop(shared);
    // What is durable is in the WAL; the replicator resumes from its watermark next time.
    if let Some(replicator) = replicator {
        replicator.stop();
    }
    for stats in engine.stats() {
        tracing::info!(
            shard = stats.shard,
            records = stats.records,
            batches = stats.batches,
            fdatasyncs = stats.syncs,
            fdatasync_mean_us = stats.sync_nanos_total / stats.syncs.max(1) / 1000,
            rejected = stats.rejected,
            busy = stats.busy,
            snapshot_pause_last_us = stats.snapshot_pause_nanos_last / 1000,
            key_index_runs = stats.key_index_runs,
            key_index_hits = stats.key_index_hits,
            key_index_waits = stats.key_index_waits,
            key_index_wait_ms = stats.key_index_wait_nanos / 1_000_000,
            scrub_passes = stats.scrub_passes,
            scrub_mib = stats.scrub_bytes / (1024 * 1024),
            scrub_findings = stats.scrub_findings,
            "shard totals"
        );
    }
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
        tracing::info!("shutting down: no new connections; answering requests in flight");
    }
}
