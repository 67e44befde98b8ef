//! Settlement reports: the payment processor's word on which purchases were paid. A report is
//! a CSV file (docs/loyalty.md, "Settlement reports"), read and checked whole here, then
//! matched to the purchases a shard keeps (`purchases::Purchases`) by store and receipt.
//! Pure: the admin API's import and the auditors' `ledger-wal reconcile` call the same code,
//! one with the engine's purchases, the other with the WAL's.
//!
//! Matching: a row's store and receipt give the purchase's receipt key
//! (`purchases::receipt_key`). Among the purchases with that key, one is the match; when
//! several share it (a receipt number reused), the one made on the row's UTC day; otherwise
//! the row is `ambiguous`. A row whose amount differs from the purchase's spend is an amount
//! mismatch and moves nothing. Pending purchases made within the report's days that no row
//! matched are the ledger's unmatched side.

use std::collections::{HashMap, HashSet};

use super::calendar::day_index;
use super::lifecycle::LifecycleState;
use super::purchases::{Refundable, receipt_key};
use crate::ids::Timestamp;

/// Rows a report may have.
pub const SETTLEMENT_ROWS_MAX: usize = 100_000;
/// Longest external payment id, in bytes.
pub const PAYMENT_ID_BYTES_MAX: usize = 64;
/// The columns, in the order the documents list them (a file may order them otherwise).
pub const COLUMNS: [&str; 6] = ["payment_id", "receipt", "store", "time", "amount", "status"];
/// Days either side of a report's rows within which its purchases are looked for: a payment
/// is usually dated the day of its purchase, at most one day off across midnight.
pub const DAYS_AROUND: u32 = 1;

/// What the processor says of a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SettlementStatus {
    /// Paid: the purchase settles.
    Settled,
    /// Not paid (declined, reversed, charged back): the purchase fails.
    Failed,
}

impl SettlementStatus {
    /// Its name in a report.
    pub fn name(self) -> &'static str {
        match self {
            SettlementStatus::Settled => "settled",
            SettlementStatus::Failed => "failed",
        }
    }

    /// Whether a purchase in `state` already is where this status puts it (a settled purchase
    /// refunded since is settled).
    pub fn reached(self, state: LifecycleState) -> bool {
        match self {
            SettlementStatus::Settled => matches!(
                state,
                LifecycleState::Settled | LifecycleState::PartlyRefunded | LifecycleState::Refunded
            ),
            SettlementStatus::Failed => state == LifecycleState::Failed,
        }
    }
}

/// One row of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementRow {
    /// Its line in the file (the header is line 1).
    pub line: u64,
    /// The processor's payment id: unique in the report.
    pub payment_id: String,
    /// The till's receipt.
    pub receipt: String,
    /// The store.
    pub store: u32,
    /// When the payment was made.
    pub time: Timestamp,
    /// What was paid, in minor units: compared with the purchase's spend.
    pub amount: u64,
    /// Paid or not.
    pub status: SettlementStatus,
}

impl SettlementRow {
    /// The receipt key of its store and receipt.
    pub fn receipt_key(&self) -> u64 {
        receipt_key(self.store, &self.receipt)
    }
}

/// Why a report was refused: nothing in it is used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}{}: {message}", column.map(|c| format!(", {c}")).unwrap_or_default())]
pub struct ReportError {
    /// The line (1: the header; 0: the file as a whole).
    pub line: u64,
    /// The column, when one is at fault.
    pub column: Option<&'static str>,
    /// What is wrong.
    pub message: String,
}

fn refused(line: u64, column: Option<&'static str>, message: impl Into<String>) -> ReportError {
    ReportError { line, column, message: message.into() }
}

/// Reads a report: a header naming the six columns (in any order, no other), then 1 to
/// `SETTLEMENT_ROWS_MAX` rows. The whole file is checked before anything is returned.
pub fn parse(bytes: &[u8]) -> Result<Vec<SettlementRow>, ReportError> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(bytes);
    let header = reader.headers().map_err(|error| refused(1, None, error.to_string()))?.clone();
    let mut positions = [usize::MAX; COLUMNS.len()];
    for (index, name) in header.iter().enumerate() {
        let name = name.trim();
        let Some(column) = COLUMNS.iter().position(|known| *known == name) else {
            return Err(refused(
                1,
                None,
                format!("unknown column {name:?}; the columns are {COLUMNS:?}"),
            ));
        };
        if positions[column] != usize::MAX {
            return Err(refused(1, None, format!("column {name:?} is named twice")));
        }
        positions[column] = index;
    }
    if let Some(missing) = positions.iter().position(|p| *p == usize::MAX) {
        return Err(refused(1, None, format!("column {:?} is missing", COLUMNS[missing])));
    }
    let mut rows = Vec::new();
    let mut payments = HashSet::new();
    for record in reader.records() {
        let record = record.map_err(|error| {
            let line = error.position().map_or(0, csv::Position::line);
            refused(line, None, error.to_string())
        })?;
        let line = record.position().map_or(0, csv::Position::line);
        if rows.len() == SETTLEMENT_ROWS_MAX {
            return Err(refused(line, None, format!("more than {SETTLEMENT_ROWS_MAX} rows")));
        }
        let field = |column: usize| record.get(positions[column]).unwrap_or("").trim();
        let row = row(line, [0, 1, 2, 3, 4, 5].map(field))?;
        if !payments.insert(row.payment_id.clone()) {
            return Err(refused(
                line,
                Some("payment_id"),
                format!("{:?} is listed twice", row.payment_id),
            ));
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(refused(0, None, "the report has no rows"));
    }
    Ok(rows)
}

/// One row's fields, in `COLUMNS` order, checked.
fn row(line: u64, fields: [&str; 6]) -> Result<SettlementRow, ReportError> {
    let [payment_id, receipt, store, time, amount, status] = fields;
    let visible = |text: &str| text.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if payment_id.is_empty() || payment_id.len() > PAYMENT_ID_BYTES_MAX || !visible(payment_id) {
        return Err(refused(
            line,
            Some("payment_id"),
            format!("1 to {PAYMENT_ID_BYTES_MAX} visible ASCII characters"),
        ));
    }
    if receipt.is_empty() || receipt.len() > crate::limits::RECEIPT_BYTES_MAX {
        return Err(refused(
            line,
            Some("receipt"),
            format!("1 to {} bytes", crate::limits::RECEIPT_BYTES_MAX),
        ));
    }
    let store = store
        .parse::<u32>()
        .map_err(|_| refused(line, Some("store"), format!("{store:?} is not a store number")))?;
    let time = super::rules_file::parse_timestamp(time)
        .map_err(|message| refused(line, Some("time"), message))?;
    let amount = amount.parse::<u64>().ok().filter(|amount| *amount > 0).ok_or_else(|| {
        refused(
            line,
            Some("amount"),
            format!("{amount:?} is not a whole number of minor units above 0"),
        )
    })?;
    let status = match status.to_ascii_lowercase().as_str() {
        "settled" => SettlementStatus::Settled,
        "failed" => SettlementStatus::Failed,
        _ => {
            return Err(refused(
                line,
                Some("status"),
                format!("{status:?} is neither settled nor failed"),
            ));
        }
    };
    Ok(SettlementRow {
        line,
        payment_id: payment_id.to_string(),
        receipt: receipt.to_string(),
        store,
        time,
        amount,
        status,
    })
}

/// The UTC days within which a report's purchases are looked for: its rows' days, widened by
/// `DAYS_AROUND` each side.
pub fn candidate_days(rows: &[SettlementRow]) -> (u32, u32) {
    let (first, last) = report_days(rows);
    (first.saturating_sub(DAYS_AROUND), last.saturating_add(DAYS_AROUND))
}

/// The first and last UTC day of a report's rows.
pub fn report_days(rows: &[SettlementRow]) -> (u32, u32) {
    let days = rows.iter().map(|row| day_index(row.time));
    let first = days.clone().min().unwrap_or(0);
    (first, days.max().unwrap_or(first))
}

/// Why a row matched no purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    /// No purchase has its store and receipt (within the days looked at).
    NoPurchase,
    /// Several have, none made on the row's day or several on it.
    Ambiguous,
    /// An earlier row of the report matched the same purchase.
    DuplicateReceipt,
}

impl Unmatched {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Unmatched::NoPurchase => "no_purchase",
            Unmatched::Ambiguous => "ambiguous",
            Unmatched::DuplicateReceipt => "duplicate_receipt",
        }
    }
}

/// What a row came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowMatch {
    /// Its purchase, with the same amount.
    Matched(Refundable),
    /// Its purchase, whose spend differs from the row's amount.
    AmountMismatch(Refundable),
    /// No purchase.
    Unmatched(Unmatched),
}

/// A report matched to purchases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciliation {
    /// Per row, in the report's order.
    pub rows: Vec<RowMatch>,
    /// Pending purchases made within the report's days that no row matched, in id order.
    pub unmatched_purchases: Vec<Refundable>,
}

/// Matches `rows` to `purchases` (each with its receipt key; those of `candidate_days`, in
/// any order).
pub fn reconcile(rows: &[SettlementRow], purchases: &[(Refundable, u64)]) -> Reconciliation {
    let mut by_key: HashMap<u64, Vec<&Refundable>> = HashMap::new();
    for (purchase, key) in purchases {
        if *key != 0 {
            by_key.entry(*key).or_default().push(purchase);
        }
    }
    let mut taken = HashSet::new();
    let matches = rows
        .iter()
        .map(|row| {
            let found = by_key.get(&row.receipt_key()).map_or(&[][..], Vec::as_slice);
            let purchase = match found {
                [] => return RowMatch::Unmatched(Unmatched::NoPurchase),
                [only] => *only,
                several => {
                    let day = day_index(row.time);
                    let mut same_day = several.iter().filter(|p| p.day == day);
                    match (same_day.next(), same_day.next()) {
                        (Some(one), None) => *one,
                        _ => return RowMatch::Unmatched(Unmatched::Ambiguous),
                    }
                }
            };
            if !taken.insert(purchase.id) {
                return RowMatch::Unmatched(Unmatched::DuplicateReceipt);
            }
            if purchase.spend == row.amount {
                RowMatch::Matched(*purchase)
            } else {
                RowMatch::AmountMismatch(*purchase)
            }
        })
        .collect();
    let (first, last) = report_days(rows);
    let mut unmatched_purchases: Vec<Refundable> = purchases
        .iter()
        .map(|(purchase, _)| *purchase)
        .filter(|p| p.state == LifecycleState::Pending && (first..=last).contains(&p.day))
        .filter(|p| !taken.contains(&p.id))
        .collect();
    unmatched_purchases.sort_unstable_by_key(|p| p.id);
    Reconciliation { rows: matches, unmatched_purchases }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TxId;
    use crate::loyalty::purchases::Gave;

    const HEADER: &str = "payment_id,receipt,store,time,amount,status\n";
    const DAY: u32 = 20_784; // 2026-11-27

    fn purchase(id: u64, day: u32, spend: u64, state: LifecycleState) -> Refundable {
        let gave = Gave { earned: 10, bonus: 0, cashback: 0 };
        let mut entry =
            Refundable::new(TxId(id), 7, (spend, spend), gave, (day, 1), false).unwrap();
        entry.state = state;
        entry
    }

    fn report(rows: &[&str]) -> Vec<SettlementRow> {
        parse(format!("{HEADER}{}\n", rows.join("\n")).as_bytes()).unwrap()
    }

    #[test]
    fn a_report_is_read_whole_in_any_column_order() {
        let rows = parse(
            b"status,amount,time,store,receipt,payment_id\n\
              SETTLED,2500,2026-11-27T10:00:00Z,7,R-1,pay-1\n\
              failed,100,2026-11-27T11:00:00+01:00,7,\"R,2\",pay-2\n",
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].line, rows[0].status, rows[0].amount),
            (2, SettlementStatus::Settled, 2500)
        );
        assert_eq!((rows[1].receipt.as_str(), rows[1].status), ("R,2", SettlementStatus::Failed));
        assert_eq!(rows[1].time.0 - rows[0].time.0, 0, "10:00Z and 11:00+01:00 are one instant");
        assert_eq!(day_index(rows[0].time), DAY);
    }

    #[test]
    fn bad_reports_are_refused_with_line_and_column() {
        let good = "p,R-1,7,2026-11-27T10:00:00Z,2500,settled";
        let cases: &[(String, u64, Option<&str>)] = &[
            (String::new(), 1, None),
            (HEADER.to_string(), 0, None),
            (
                "payment_id,receipt,store,time,amount\np,R,7,2026-11-27T10:00:00Z,1\n".into(),
                1,
                None,
            ),
            (format!("{},extra\n{good},x\n", HEADER.trim_end()), 1, None),
            (format!("{HEADER}{good}\n{good}\n"), 3, Some("payment_id")),
            (format!("{HEADER}p,R-1,7,2026-11-27T10:00:00Z,0,settled\n"), 2, Some("amount")),
            (format!("{HEADER}p,R-1,7,2026-11-27T10:00:00Z,-5,settled\n"), 2, Some("amount")),
            (format!("{HEADER}p,R-1,7,2026-11-27T10:00:00Z,2.50,settled\n"), 2, Some("amount")),
            (format!("{HEADER}p,R-1,x,2026-11-27T10:00:00Z,25,settled\n"), 2, Some("store")),
            (format!("{HEADER}p,R-1,7,2026-11-27 10:00,25,settled\n"), 2, Some("time")),
            (format!("{HEADER}p,R-1,7,2026-11-27T10:00:00,25,settled\n"), 2, Some("time")),
            (format!("{HEADER}p,R-1,7,2026-11-27T10:00:00Z,25,paid\n"), 2, Some("status")),
            (format!("{HEADER}p,,7,2026-11-27T10:00:00Z,25,settled\n"), 2, Some("receipt")),
            (format!("{HEADER},R,7,2026-11-27T10:00:00Z,25,settled\n"), 2, Some("payment_id")),
            (format!("{HEADER}{good}\nq,R-2,7\n"), 3, None),
        ];
        for (text, line, column) in cases {
            let error = parse(text.as_bytes()).expect_err(text);
            assert_eq!((error.line, error.column), (*line, *column), "{text:?}: {error}");
        }
        let mut long = HEADER.to_string();
        for i in 0..=SETTLEMENT_ROWS_MAX {
            long.push_str(&format!("p{i},R{i},1,2026-11-27T10:00:00Z,1,settled\n"));
        }
        let error = parse(long.as_bytes()).unwrap_err();
        assert!(error.message.contains("more than"), "{error}");
    }

    #[test]
    fn rows_match_by_store_and_receipt_and_report_both_sides() {
        let rows = report(&[
            "pay-1,R-1,7,2026-11-27T10:00:00Z,2500,settled",
            "pay-2,R-2,7,2026-11-27T10:05:00Z,999,settled",
            "pay-3,R-3,7,2026-11-27T10:10:00Z,100,failed",
            "pay-4,R-9,7,2026-11-27T10:15:00Z,100,settled",
            "pay-5,R-1,7,2026-11-27T10:20:00Z,2500,settled",
            "pay-6,R-5,8,2026-11-27T10:30:00Z,300,settled",
        ]);
        let key = |store, receipt| receipt_key(store, receipt);
        let purchases = [
            (purchase(1, DAY, 2500, LifecycleState::Pending), key(7, "R-1")),
            (purchase(2, DAY, 1000, LifecycleState::Pending), key(7, "R-2")),
            (purchase(3, DAY, 100, LifecycleState::Pending), key(7, "R-3")),
            // Not in the report: pending on the report's day (listed), settled (not), the day
            // after the report (not).
            (purchase(4, DAY, 50, LifecycleState::Pending), key(7, "R-4")),
            (purchase(5, DAY, 50, LifecycleState::Settled), key(7, "R-6")),
            (purchase(6, DAY + 1, 50, LifecycleState::Pending), key(7, "R-7")),
            // R-5 at store 8 was used on two days: the row's day decides.
            (purchase(7, DAY - 1, 300, LifecycleState::Pending), key(8, "R-5")),
            (purchase(8, DAY, 300, LifecycleState::Pending), key(8, "R-5")),
            // A purchase without a receipt matches nothing.
            (purchase(9, DAY, 77, LifecycleState::Settled), 0),
        ];
        let result = reconcile(&rows, &purchases);
        assert_eq!(result.rows[0], RowMatch::Matched(purchases[0].0));
        assert_eq!(result.rows[1], RowMatch::AmountMismatch(purchases[1].0));
        assert_eq!(result.rows[2], RowMatch::Matched(purchases[2].0));
        assert_eq!(result.rows[3], RowMatch::Unmatched(Unmatched::NoPurchase));
        assert_eq!(result.rows[4], RowMatch::Unmatched(Unmatched::DuplicateReceipt));
        assert_eq!(result.rows[5], RowMatch::Matched(purchases[7].0));
        let ids: Vec<u64> = result.unmatched_purchases.iter().map(|p| p.id.0).collect();
        assert_eq!(ids, [4], "pending, in the report's days, matched by no row");

        // Two purchases with the row's receipt on the row's day: neither is chosen.
        let twice = [
            (purchase(1, DAY, 2500, LifecycleState::Pending), key(7, "R-1")),
            (purchase(2, DAY, 2500, LifecycleState::Pending), key(7, "R-1")),
        ];
        let result = reconcile(&rows[..1], &twice);
        assert_eq!(result.rows[0], RowMatch::Unmatched(Unmatched::Ambiguous));
        assert_eq!(result.unmatched_purchases.len(), 2);
        assert_eq!(candidate_days(&rows), (DAY - 1, DAY + 1));
    }

    #[test]
    fn a_status_is_reached_by_the_states_it_leads_to() {
        use LifecycleState::*;
        let settled: Vec<_> = [Pending, Settled, Failed, PartlyRefunded, Refunded]
            .into_iter()
            .filter(|state| SettlementStatus::Settled.reached(*state))
            .collect();
        assert_eq!(settled, [Settled, PartlyRefunded, Refunded]);
        assert!(SettlementStatus::Failed.reached(Failed));
        assert!(!SettlementStatus::Failed.reached(Settled));
    }
}
