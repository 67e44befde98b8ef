//! `ledger-wal`: the auditors' tool. It reads a data directory's WAL segments and snapshots
//! directly, read-only, and needs no running server.
//!
//! Exit codes (scripts rely on them): 0 everything checked is sound; 1 problems were found
//! (the report says which, with file, offset and LSN); 2 usage error; 3 the files could not be
//! read (missing directory, permissions).
//!
//! Layout: `cmd/`, one file per subcommand; `filter.rs`, the record filters of `dump` and
//! `export` and the walk that applies them; `progress.rs`, the progress bar of long reads;
//! `time.rs` formats timestamps.

mod cmd;
mod filter;
mod progress;
mod time;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Inspect and verify a ledgerd data directory without the server.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "Exit codes: 0 sound, 1 problems found, 2 usage error, 3 files unreadable."
)]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// No progress bar (it is drawn only on a terminal anyway).
    #[arg(long, short, global = true)]
    quiet: bool,
}

/// Which data directory and shards a subcommand reads, and how it answers.
#[derive(Debug, clap::Args)]
struct Scope {
    /// The data directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// Only this shard.
    #[arg(long)]
    shard: Option<u16>,
    /// For machines: JSON (verify: one object; the others: one object per line) instead of a
    /// report for people.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check every record (checksum, hash chain, LSN order), replay the WAL, check the
    /// invariants (every asset sums to zero, no overdraft, lots sum to balances, no negative
    /// lot), price every purchase again by its recorded rule version, check that every
    /// lifecycle transition and tier change is the one the state allows, and that every
    /// snapshot equals the replayed state at its LSN.
    Verify {
        #[command(flatten)]
        scope: Scope,
        /// Check from this LSN (replay starts at the newest snapshot before it).
        #[arg(long)]
        from_lsn: Option<u64>,
        /// Check up to this LSN (the records after it are not read).
        #[arg(long)]
        to_lsn: Option<u64>,
        /// Do not price purchases again (the rest is checked).
        #[arg(long)]
        no_repricing: bool,
        /// Check the files only (frames, checksums, hash chain, durable mark, snapshots'
        /// hashes), at the disk's pace: nothing is replayed, so no invariant is checked.
        #[arg(long, conflicts_with_all = ["from_lsn", "no_repricing"])]
        chain_only: bool,
    },
    /// Print the records the filters select (every shard's, by default), replayed and checked
    /// as `verify` checks them, each with its details (a purchase with its earning
    /// breakdown).
    Dump {
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
        #[command(flatten)]
        filter: filter::Filter,
        /// Records to print at most.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Rows for spreadsheets and other tools, with the filters of `dump`: one per record
    /// (`transactions`), per movement of value (`postings`), per lifecycle transition of a
    /// purchase (`transitions`), or per lot as of the end of the range (`lots`). Columns:
    /// docs/operations.md.
    Export {
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// What to export.
        #[arg(value_enum)]
        rows: cmd::export::Rows,
        /// CSV with a header row, or JSON lines.
        #[arg(long, value_enum, default_value = "csv")]
        format: cmd::export::Format,
        #[command(flatten)]
        filter: filter::Filter,
    },
    /// The snapshots: `list` (headers, checksums), `inspect` (and what they hold), `verify`
    /// (and equality with the state the WAL gives at their LSN).
    Snapshot {
        #[command(subcommand)]
        action: SnapshotAction,
    },
    /// What the programme owes its members as of a moment, from the WAL alone: per customer
    /// class and asset, the points' money value, and the points in lots by expiry month.
    Liability {
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// As of the last record at or before this time (RFC 3339); default: the WAL's end.
        #[arg(long, value_parser = as_of_time)]
        as_of: Option<ledger_engine::Timestamp>,
        /// JSON lines (`"scope"`: `total`, `class`, `asset`, `expiry_month`) instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Match an external settlement report (CSV: payment_id,receipt,store,time,amount,status)
    /// against the purchases in the WAL, row by row. Changes nothing; exit 0 when it balanced.
    Reconcile {
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The report.
        #[arg(long)]
        settlement: PathBuf,
        /// JSON lines (`"scope"`: `row`, `purchase`, `totals`) instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Per shard and segment: records, bytes, time span, LSN range, record kinds, the assets
    /// the records moved, commit groups (count and mean size). JSON lines with `--json`: one
    /// object per segment (`"scope": "segment"`) and one per shard (`"scope": "shard"`).
    Stats {
        #[command(flatten)]
        scope: Scope,
    },
    /// Balances as of a time or an LSN, by replay from the nearest snapshot before it: every
    /// account of a customer with their lots and tier, or one account (a house account is the
    /// sum of its slices on every shard). Without `--as-of*`: as of the WAL's last record.
    Balance {
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Every account of this customer, with their lots and tier.
        #[arg(long, conflicts_with = "account", required_unless_present = "account")]
        customer: Option<u64>,
        /// One account, by address (`customer:42:points`, `house:issuance`).
        #[arg(long)]
        account: Option<String>,
        /// As of the last record at or before this time (RFC 3339, `2026-11-27T10:00:00Z`).
        #[arg(long, conflicts_with = "as_of_lsn", value_parser = as_of_time)]
        as_of: Option<ledger_engine::Timestamp>,
        /// As of this LSN of the shard concerned.
        #[arg(long)]
        as_of_lsn: Option<u64>,
        /// JSON lines (`"scope"`: `account`, `member`, `lot`) instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Every record that moved a customer's value or changed their loyalty state, across all
    /// segments of their shard, in order, with what it did to their accounts. Exit 1 when the
    /// WAL holds none.
    History {
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The customer.
        customer: u64,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Why a purchase earned what it did (rule version, tier, every component, caps), from
    /// its shard's WAL alone. Exit 1 when the WAL holds no purchase with this id.
    Explain {
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The purchase's transaction id (it names its shard).
        tx: u64,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

impl Command {
    /// The data directory every subcommand reads.
    fn data_dir(&self) -> &std::path::Path {
        match self {
            Command::Verify { scope, .. }
            | Command::Stats { scope }
            | Command::Snapshot {
                action:
                    SnapshotAction::List { scope }
                    | SnapshotAction::Inspect { scope }
                    | SnapshotAction::Verify { scope },
            } => &scope.data_dir,
            Command::Dump { data_dir, .. }
            | Command::Export { data_dir, .. }
            | Command::Liability { data_dir, .. }
            | Command::Reconcile { data_dir, .. }
            | Command::Balance { data_dir, .. }
            | Command::History { data_dir, .. }
            | Command::Explain { data_dir, .. } => data_dir,
        }
    }
}

/// What `snapshot` does.
#[derive(Debug, Subcommand)]
enum SnapshotAction {
    /// Every snapshot's header, its checksum checked.
    List {
        #[command(flatten)]
        scope: Scope,
    },
    /// Headers and what each holds (accounts, holds, members, lots, purchases kept).
    Inspect {
        #[command(flatten)]
        scope: Scope,
    },
    /// Headers, contents and equality with the state the WAL gives at each one's LSN.
    Verify {
        #[command(flatten)]
        scope: Scope,
    },
}

/// How a command ended, as an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything checked is sound.
    Sound,
    /// Problems were found and reported.
    Problems,
    /// Files could not be read.
    Unreadable,
    /// The arguments ask for something that cannot be answered.
    Usage,
}

/// An `--as-of` time.
fn as_of_time(text: &str) -> Result<ledger_engine::Timestamp, String> {
    ledger_engine::loyalty::rules_file::parse_timestamp(text)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let quiet = args.quiet;
    let data_dir = args.command.data_dir();
    if !data_dir.is_dir() {
        eprintln!("ledger-wal: {} is not a directory", data_dir.display());
        return ExitCode::from(3);
    }
    let result = match args.command {
        Command::Verify { scope, from_lsn, to_lsn, no_repricing, chain_only } => cmd::verify::run(
            &scope.data_dir,
            scope.shard,
            cmd::verify::Range { reprice: !no_repricing, chain_only, from: from_lsn, to: to_lsn },
            scope.json,
            quiet,
        ),
        Command::Dump { data_dir, filter, limit, json } => {
            cmd::dump::run(&data_dir, &filter, limit, json, quiet)
        }
        Command::Export { data_dir, rows, format, filter } => {
            cmd::export::run(&data_dir, rows, format, &filter, quiet)
        }
        Command::Snapshot { action } => {
            let (scope, action) = match action {
                SnapshotAction::List { scope } => (scope, cmd::snapshot::Action::List),
                SnapshotAction::Inspect { scope } => (scope, cmd::snapshot::Action::Inspect),
                SnapshotAction::Verify { scope } => (scope, cmd::snapshot::Action::Verify),
            };
            cmd::snapshot::run(&scope.data_dir, scope.shard, action, scope.json)
        }
        Command::Liability { data_dir, as_of, json } => cmd::liability::run(&data_dir, as_of, json),
        Command::Reconcile { data_dir, settlement, json } => {
            cmd::reconcile::run(&data_dir, &settlement, json, quiet)
        }
        Command::Explain { data_dir, tx, json } => cmd::explain::run(&data_dir, tx, json),
        Command::Balance { data_dir, customer, account, as_of, as_of_lsn, json } => {
            let whose = match (customer, account) {
                (Some(customer), _) => cmd::balance::Whose::Customer(customer),
                (None, Some(account)) => cmd::balance::Whose::Account(account),
                (None, None) => unreachable!("clap requires one"),
            };
            let when = match (as_of, as_of_lsn) {
                (Some(time), _) => cmd::balance::AsOf::Time(time),
                (None, Some(lsn)) => cmd::balance::AsOf::Lsn(lsn),
                (None, None) => cmd::balance::AsOf::End,
            };
            cmd::balance::run(&data_dir, &whose, when, json)
        }
        Command::History { data_dir, customer, json } => {
            cmd::history::run(&data_dir, customer, json)
        }
        Command::Stats { scope } => cmd::stats::run(&scope.data_dir, scope.shard, scope.json),
    };
    match result {
        Ok(Outcome::Sound) => ExitCode::SUCCESS,
        Ok(Outcome::Problems) => ExitCode::from(1),
        Ok(Outcome::Unreadable) => ExitCode::from(3),
        Ok(Outcome::Usage) => ExitCode::from(2),
        Err(error) => {
            eprintln!("ledger-wal: {error:#}");
            ExitCode::from(3)
        }
    }
}
