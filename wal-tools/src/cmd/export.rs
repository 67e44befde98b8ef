//! `ledger-wal export`: the records the filters select as rows for spreadsheets and other
//! tools, CSV (with a header) or JSON lines: one row per record (`transactions`), per movement
//! of value (`postings`), per lifecycle transition of a purchase (`transitions`), or per lot
//! of points as of the end of the range (`lots`). The columns are documented in
//! docs/operations.md, "Auditing: `ledger-wal`".

use std::io::Write;
use std::path::Path;

use ledger_engine::follow::Followed;
use ledger_engine::ledger::account::AccountId;
use ledger_engine::ledger::registry::Registry;
use ledger_engine::loyalty::calendar::{Date, civil_from_days};
use serde_json::{Value, json};

use crate::Outcome;
use crate::filter::{Filter, Walked, customer_of, related, walk};

/// What to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Rows {
    /// One row per record.
    Transactions,
    /// One row per movement of value (posted, pending or released).
    Postings,
    /// One row per lifecycle transition of a purchase.
    Transitions,
    /// One row per lot of points, as of the end of the range.
    Lots,
}

/// How.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Comma-separated values with a header row (RFC 4180).
    Csv,
    /// One JSON object per line.
    Json,
}

const TRANSACTIONS: [&str; 14] = [
    "shard",
    "lsn",
    "time",
    "record_kind",
    "tx_id",
    "tx_kind",
    "terminal",
    "store",
    "receipt",
    "customer",
    "related_tx",
    "movements",
    "actor",
    "reason",
];
const POSTINGS: [&str; 12] = [
    "shard",
    "lsn",
    "time",
    "record_kind",
    "tx_id",
    "index",
    "debit",
    "credit",
    "asset",
    "amount",
    "effect",
    "flow",
];
const TRANSITIONS: [&str; 14] = [
    "shard",
    "lsn",
    "time",
    "tx_id",
    "purchase",
    "customer",
    "event",
    "state_after",
    "refunded",
    "earned_back",
    "bonus_back",
    "cashback_back",
    "points_owed",
    "cashback_owed",
];
const LOTS: [&str; 9] =
    ["shard", "lsn", "customer", "origin_tx", "kind", "expires", "amount", "remaining", "tier"];

/// Writes rows in one format.
enum Sink<W: Write> {
    Csv(Box<csv::Writer<W>>),
    Json { columns: &'static [&'static str], out: W },
}

impl<W: Write> Sink<W> {
    fn new(format: Format, columns: &'static [&'static str], out: W) -> anyhow::Result<Self> {
        Ok(match format {
            Format::Csv => {
                let mut csv = csv::WriterBuilder::new().has_headers(false).from_writer(out);
                csv.write_record(columns)?;
                Sink::Csv(Box::new(csv))
            }
            Format::Json => Sink::Json { columns, out },
        })
    }

    /// One row: a value per column, in order (`Null`: empty).
    fn row(&mut self, values: &[Value]) -> anyhow::Result<()> {
        match self {
            Sink::Csv(csv) => {
                let cell = |value: &Value| match value {
                    Value::Null => String::new(),
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                csv.write_record(values.iter().map(cell))?;
            }
            Sink::Json { columns, out } => {
                debug_assert_eq!(values.len(), columns.len());
                let object: serde_json::Map<String, Value> = columns
                    .iter()
                    .zip(values)
                    .map(|(column, value)| ((*column).to_string(), value.clone()))
                    .collect();
                serde_json::to_writer(&mut *out, &object)?;
                out.write_all(b"\n")?;
            }
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Sink::Csv(mut csv) => csv.flush()?,
            Sink::Json { mut out, .. } => out.flush()?,
        }
        Ok(())
    }
}

fn address(registry: &Registry, id: AccountId) -> String {
    registry
        .address(id)
        .map_or_else(|| format!("unknown:{}:{}", id.class().0, id.owner()), |a| a.to_string())
}

fn date(day: u32) -> String {
    let Date { year, month, day } = civil_from_days(i64::from(day));
    format!("{year:04}-{month:02}-{day:02}")
}

fn transaction_row(shard: u16, followed: &Followed<'_>) -> Vec<Value> {
    let record = followed.record;
    let header = record.body.header();
    let annotation = header.and_then(|header| header.metadata.annotation.as_ref());
    vec![
        json!(shard),
        json!(record.lsn.0),
        json!(crate::time::rfc3339(record.timestamp)),
        json!(record.body.kind().name()),
        json!(record.body.tx_id().map(|id| id.0)),
        json!(header.map(|header| header.kind.to_string())),
        json!(header.map(|header| header.terminal.0)),
        json!(header.map(|header| header.metadata.store).filter(|store| *store != 0)),
        json!(
            header
                .map(|header| header.metadata.receipt.as_str().to_string())
                .filter(|receipt| !receipt.is_empty())
        ),
        json!(customer_of(&record.body)),
        json!(related(&record.body).map(|id| id.0)),
        json!(followed.moved.len()),
        json!(annotation.map(|annotation| annotation.actor().to_string())),
        json!(annotation.map(|annotation| annotation.reason().to_string())),
    ]
}

fn posting_rows(
    shard: u16,
    followed: &Followed<'_>,
    sink: &mut dyn FnMut(&[Value]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let record = followed.record;
    let registry = followed.registry;
    let time = crate::time::rfc3339(record.timestamp);
    for (index, moved) in followed.moved.iter().enumerate() {
        sink(&[
            json!(shard),
            json!(record.lsn.0),
            json!(time),
            json!(record.body.kind().name()),
            json!(record.body.tx_id().map(|id| id.0)),
            json!(index),
            json!(address(registry, moved.debit)),
            json!(address(registry, moved.credit)),
            json!(registry.asset(moved.asset).map(|asset| asset.code.to_string())),
            json!(moved.amount),
            json!(moved.effect.name()),
            json!(moved.flow.map(|flow| flow.name())),
        ])?;
    }
    Ok(())
}

fn transition_row(shard: u16, followed: &Followed<'_>) -> Option<Vec<Value>> {
    let t = followed.transition()?;
    let record = followed.record;
    Some(vec![
        json!(shard),
        json!(record.lsn.0),
        json!(crate::time::rfc3339(record.timestamp)),
        json!(t.tx_id),
        json!(t.purchase),
        json!(t.customer),
        json!(t.event),
        json!(t.state_after),
        json!(t.refunded),
        json!(t.earned_back),
        json!(t.bonus_back),
        json!(t.cashback_back),
        json!(t.points_owed),
        json!(t.cashback_owed),
    ])
}

pub fn run(
    data_dir: &Path,
    rows: Rows,
    format: Format,
    filter: &Filter,
    quiet: bool,
) -> anyhow::Result<Outcome> {
    if rows == Rows::Lots
        && (filter.account.is_some()
            || filter.tx.is_some()
            || !filter.kind.is_empty()
            || filter.from_lsn.is_some()
            || filter.from_time.is_some()
            || filter.store.is_some()
            || filter.terminal.is_some())
    {
        eprintln!(
            "ledger-wal: lots are state, not records: they take --customer, --shard, --to-lsn and --to-time (the moment) only"
        );
        return Ok(Outcome::Usage);
    }
    let columns: &'static [&'static str] = match rows {
        Rows::Transactions => &TRANSACTIONS,
        Rows::Postings => &POSTINGS,
        Rows::Transitions => &TRANSITIONS,
        Rows::Lots => &LOTS,
    };
    let out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut sink = Sink::new(format, columns, out)?;
    let walked = if rows == Rows::Lots {
        lots(data_dir, filter, &mut sink)?;
        Walked::Whole
    } else {
        walk(data_dir, filter, quiet, |shard, followed| {
            match rows {
                Rows::Transactions => sink.row(&transaction_row(shard, followed))?,
                Rows::Postings => posting_rows(shard, followed, &mut |row| sink.row(row))?,
                Rows::Transitions => {
                    if let Some(row) = transition_row(shard, followed) {
                        sink.row(&row)?;
                    }
                }
                Rows::Lots => unreachable!("above"),
            }
            Ok(true)
        })?
    };
    sink.finish()?;
    match walked {
        Walked::Whole => Ok(Outcome::Sound),
        Walked::Damaged(problem) => {
            eprintln!("ledger-wal: {problem}");
            Ok(Outcome::Problems)
        }
    }
}

/// Every lot of the selected members as of the end of the range: each shard's state there
/// (the newest snapshot before it, then the WAL).
fn lots<W: Write>(data_dir: &Path, filter: &Filter, sink: &mut Sink<W>) -> anyhow::Result<()> {
    let meta = ledger_engine::datadir::read_meta(data_dir)?;
    for shard in filter.shards(&meta)? {
        let follower =
            crate::filter::follower_as_of(data_dir, &meta, shard, filter.to_lsn, filter.to_time)?;
        let ledger = follower.ledger();
        let lsn = follower.lsn().0;
        let mut members: Vec<_> = ledger
            .members()
            .iter()
            .filter(|(customer, _)| filter.customer.is_none_or(|c| c == **customer))
            .collect();
        members.sort_unstable_by_key(|(customer, _)| **customer);
        for (customer, member) in members {
            for lot in member.lots.iter() {
                sink.row(&[
                    json!(shard),
                    json!(lsn),
                    json!(customer),
                    json!(lot.origin.0),
                    json!(lot.kind.name()),
                    json!(date(lot.expires_day)),
                    json!(lot.amount),
                    json!(lot.remaining),
                    json!(member.tier()),
                ])?;
            }
        }
    }
    Ok(())
}
