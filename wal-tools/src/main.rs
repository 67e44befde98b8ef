//! `ledger-wal`: the auditors' tool. It reads a data directory's WAL segments and snapshots
//! directly, read-only, and needs no running server.
//!
//! Exit codes (scripts rely on them): 0 everything checked is sound; 1 problems were found
//! (the report says which, with file, offset and LSN); 2 usage error; 3 the files could not be
//! read (missing directory, permissions).
//!
//! Layout: `cmd/`, one file per subcommand (`verify`, `dump`, `explain`, `stats`); `time.rs`
//! formats timestamps.

mod cmd;
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
    /// invariants (every asset sums to zero, no overdraft) and that every snapshot equals the
    /// replayed state at its LSN.
    Verify {
        #[command(flatten)]
        scope: Scope,
    },
    /// Print the records of one shard's WAL, checked as `verify` checks them.
    Dump {
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The shard.
        #[arg(long, default_value_t = 0)]
        shard: u16,
        /// First LSN to print.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Records to print at most.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
        limit: u64,
        /// JSON lines instead of a table.
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
    let result = match args.command {
        Command::Verify { scope } => cmd::verify::run(&scope.data_dir, scope.shard, scope.json),
        Command::Dump { data_dir, shard, from, limit, json } => {
            cmd::dump::run(&data_dir, shard, from, limit, json)
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
