//! The acknowledgement log (`--ack-log FILE`) and `ledger-load verify`.
//!
//! While the load runs, every acknowledged write that moves points is appended as
//! `A <tx_id> <customer> <delta>` (a transfer gives two lines), and flushed to the file after
//! every batch of answers, so the log survives the death of the server (the load generator
//! lives on). When a connection dies with writes in flight, their outcome is unknown: each is
//! logged as `U <customer> <hex of the encoded operation>`, to be settled by `verify`.
//!
//! `verify` first settles the writes in doubt by sending each again with its original
//! idempotency key (what a till does after a timeout): the server answers the original result
//! if it had committed the write, or commits it now; either way its delta counts. Then it
//! reads every logged customer's balance and compares it with the sum of its deltas, retrying
//! for a while so cross-shard transfers still in flight can land. This is exact only when the
//! load was the only writer since the data directory was created.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ledger_protocol::Status;
use ledger_protocol::client::Client;
use ledger_protocol::credentials::{hex_decode, hex_encode};
use ledger_protocol::ops::{Op, OpResult, RawOp, Reply};

use crate::workload::Sent;

/// Longest line `verify` reads.
const LINE_BYTES_MAX: usize = 1024;

/// The log, shared by every connection.
#[derive(Debug)]
pub struct AckLog {
    file: Mutex<BufWriter<File>>,
}

impl AckLog {
    /// Creates (or appends to) the log at `path`.
    pub fn open(path: &Path, terminal: u32) -> anyhow::Result<AckLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the ack log {}", path.display()))?;
        let log = AckLog { file: Mutex::new(BufWriter::new(file)) };
        log.append(&format!("# ledger-load ack log, terminal {terminal}\n"))?;
        Ok(log)
    }

    /// Appends lines and hands them to the operating system at once.
    pub fn append(&self, lines: &str) -> anyhow::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut file = self.file.lock().expect("ack log lock");
        file.write_all(lines.as_bytes())?;
        file.flush()?;
        Ok(())
    }
}

/// Appends the lines of an acknowledged write. `customer_of_hold` is the customer of a
/// capture's hold.
pub fn acknowledged(
    lines: &mut String,
    sent: &Sent,
    customer_of_hold: u64,
    tx_id: u64,
    points: u64,
) {
    use std::fmt::Write as _;
    if let Op::Capture { points, .. } = sent.op {
        let _ = writeln!(lines, "A {tx_id} {customer_of_hold} -{points}");
        return;
    }
    for (customer, delta) in sent.deltas(points) {
        if delta != 0 {
            let _ = writeln!(lines, "A {tx_id} {customer} {delta}");
        }
    }
}

/// Appends the line of a write whose outcome is unknown.
pub fn in_doubt(lines: &mut String, sent: &Sent, customer_of_hold: u64) {
    use std::fmt::Write as _;
    if sent.op.meta().is_none() {
        return;
    }
    let mut bytes = Vec::new();
    sent.op.encode(&mut bytes);
    let _ = writeln!(lines, "U {customer_of_hold} {}", hex_encode(&bytes));
}

/// What a log says.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Sum of acknowledged deltas per customer.
    pub expected: HashMap<u64, i128>,
    /// Writes in doubt, with the customer of a capture's hold.
    pub in_doubt: Vec<(Sent, u64)>,
    /// Acknowledged lines.
    pub acknowledged: u64,
}

/// Reads an ack log.
pub fn parse(path: &Path) -> anyhow::Result<Parsed> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut parsed = Parsed::default();
    let mut reader = BufReader::new(file);
    let mut bytes = Vec::with_capacity(LINE_BYTES_MAX + 1);
    for number in 1.. {
        // A line is read up to its bound, never whole: the file may be anything.
        bytes.clear();
        let limit = u64::try_from(LINE_BYTES_MAX + 1).expect("a small bound");
        let read = std::io::Read::take(&mut reader, limit)
            .read_until(b'\n', &mut bytes)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if read == 0 {
            break;
        }
        let at = || format!("{}:{number}", path.display());
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        if bytes.len() > LINE_BYTES_MAX {
            bail!("{}: line longer than {LINE_BYTES_MAX} bytes", at());
        }
        let line = std::str::from_utf8(&bytes).with_context(|| format!("{}: not UTF-8", at()))?;
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        match fields.as_slice() {
            [] => {}
            [comment, ..] if comment.starts_with('#') => {}
            ["A", _tx, customer, delta] => {
                let customer: u64 =
                    customer.parse().with_context(|| format!("{}: customer", at()))?;
                let delta: i128 = delta.parse().with_context(|| format!("{}: delta", at()))?;
                let sum = parsed.expected.entry(customer).or_default();
                *sum = sum
                    .checked_add(delta)
                    .with_context(|| format!("{}: the sum of deltas overflows", at()))?;
                parsed.acknowledged += 1;
            }
            ["U", customer, hex] => {
                let customer: u64 =
                    customer.parse().with_context(|| format!("{}: customer", at()))?;
                let bytes = hex_decode(hex).with_context(|| format!("{}: not hex", at()))?;
                let op =
                    decode_op(&bytes).with_context(|| format!("{}: not an operation", at()))?;
                parsed.in_doubt.push((Sent { op }, customer));
            }
            _ => bail!("{}: not an ack log line: {line:?}", at()),
        }
    }
    Ok(parsed)
}

fn decode_op(bytes: &[u8]) -> Option<Op> {
    let (&opcode, rest) = bytes.split_first()?;
    let body = rest.get(3..)?;
    Op::decode(RawOp { opcode, body }).ok().filter(|op| op.meta().is_some())
}

/// The outcome of a verification.
#[derive(Debug)]
pub struct Verdict {
    /// Customers compared.
    pub customers: usize,
    /// Writes in doubt that turned out committed (or were committed by the retry).
    pub settled: usize,
    /// `(customer, expected, actual)` of the customers that differ, at most 20.
    pub mismatches: Vec<(u64, i128, i128)>,
}

/// Settles writes in doubt and compares balances.
pub async fn verify(
    addr: SocketAddr,
    terminal: u32,
    secret: &[u8],
    mut parsed: Parsed,
    settle: Duration,
) -> anyhow::Result<Verdict> {
    let client = Client::connect(addr, terminal, secret)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let batch = usize::from(client.welcome().batch_ops_max).clamp(1, 1000);
    let mut settled = 0;
    let doubt = std::mem::take(&mut parsed.in_doubt);
    for chunk in doubt.chunks(batch) {
        let ops: Vec<Op> = chunk.iter().map(|(sent, _)| sent.op).collect();
        let results = client.call(&ops).await.context("settling writes in doubt")?;
        for ((sent, hold_customer), result) in chunk.iter().zip(&results) {
            match result {
                OpResult::Ok(Reply::Committed(committed)) => {
                    settled += 1;
                    let mut lines = String::new();
                    acknowledged(
                        &mut lines,
                        sent,
                        *hold_customer,
                        committed.tx_id,
                        committed.points,
                    );
                    for line in lines.lines() {
                        let mut fields = line.split_ascii_whitespace().skip(2);
                        let customer = fields.next().and_then(|c| c.parse::<u64>().ok());
                        let delta = fields.next().and_then(|d| d.parse::<i128>().ok());
                        if let (Some(customer), Some(delta)) = (customer, delta) {
                            *parsed.expected.entry(customer).or_default() += delta;
                        }
                    }
                }
                OpResult::Refused(status) if status.is_transient() => {
                    bail!("a write in doubt could not be settled ({status}): run verify again")
                }
                _ => {}
            }
        }
    }
    let mut customers: Vec<u64> = parsed.expected.keys().copied().collect();
    customers.sort_unstable();
    let deadline = Instant::now() + settle;
    loop {
        let mut mismatches = Vec::new();
        for chunk in customers.chunks(batch) {
            let ops: Vec<Op> =
                chunk.iter().map(|customer| Op::Balance { customer: *customer }).collect();
            let results = client.call(&ops).await.context("reading balances")?;
            for (customer, result) in chunk.iter().zip(results) {
                let actual = match result {
                    OpResult::Ok(Reply::Balance(view)) => i128::from(view.posted),
                    OpResult::Refused(Status::AccountNotFound) => 0,
                    other => bail!("balance of customer {customer}: {other:?}"),
                };
                let expected = parsed.expected.get(customer).copied().unwrap_or(0);
                if actual != expected {
                    mismatches.push((*customer, expected, actual));
                }
            }
        }
        if mismatches.is_empty() || Instant::now() >= deadline {
            mismatches.truncate(20);
            return Ok(Verdict { customers: customers.len(), settled, mismatches });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_protocol::ops::WriteMeta;

    #[test]
    fn lines_round_trip_through_the_parser() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acks.log");
        let log = AckLog::open(&path, 1).unwrap();
        let meta = WriteMeta { key: 9, ..Default::default() };
        let mut lines = String::new();
        let purchase = Sent { op: Op::Purchase { meta, customer: 4, amount: 1_000 } };
        acknowledged(&mut lines, &purchase, 0, 100, 10);
        let transfer = Sent { op: Op::Transfer { meta, source: 4, destination: 5, points: 3 } };
        acknowledged(&mut lines, &transfer, 0, 101, 3);
        let capture = Sent { op: Op::Capture { meta, hold: 77, points: 2 } };
        acknowledged(&mut lines, &capture, 4, 102, 2);
        in_doubt(&mut lines, &Sent { op: Op::Redeem { meta, customer: 5, points: 1 } }, 0);
        in_doubt(&mut lines, &Sent { op: Op::Balance { customer: 5 } }, 0);
        log.append(&lines).unwrap();
        let parsed = parse(&path).unwrap();
        assert_eq!(parsed.expected.get(&4), Some(&(10 - 3 - 2)));
        assert_eq!(parsed.expected.get(&5), Some(&3));
        assert_eq!(parsed.acknowledged, 4);
        assert_eq!(parsed.in_doubt.len(), 1, "reads are never in doubt");
        assert!(matches!(parsed.in_doubt[0].0.op, Op::Redeem { customer: 5, points: 1, .. }));

        std::fs::write(&path, "A 1 two 3\n").unwrap();
        assert!(parse(&path).unwrap_err().to_string().contains(":1"));
        std::fs::write(&path, "Z\n").unwrap();
        assert!(parse(&path).is_err());
        // A line at its bound is read; one byte more, with or without a newline, is refused.
        let padded = |len: usize| format!("A 1 7 1{}", " ".repeat(len - 7));
        std::fs::write(&path, format!("{}\n", padded(LINE_BYTES_MAX))).unwrap();
        assert_eq!(parse(&path).unwrap().expected.get(&7), Some(&1));
        for ending in ["\n", ""] {
            std::fs::write(&path, format!("{}{ending}", padded(LINE_BYTES_MAX + 1))).unwrap();
            let error = parse(&path).unwrap_err().to_string();
            assert!(error.contains("line longer than"), "{error}");
        }
        let huge = format!("A 1 7 {}\nA 2 7 {}\n", i128::MAX, 1);
        std::fs::write(&path, huge).unwrap();
        assert!(parse(&path).unwrap_err().to_string().contains("overflows"));
    }
}
