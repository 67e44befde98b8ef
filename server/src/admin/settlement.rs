//! The admin API's settlement import: a payment processor's report (CSV, read and matched by
//! `ledger_engine::loyalty::settlement`) moves each matched pending purchase to SETTLED or
//! FAILED, and the answer lists matched rows, amount mismatches and what is unmatched on each
//! side, with totals. Docs: docs/admin-api.md, "Settlement import".
//!
//! Idempotent: a row's transition is written with a key derived from its payment id and
//! status (terminal 0, like every admin write), and a purchase already where the row puts it
//! is not written again, so importing a file twice changes nothing the second time; a retry
//! after an unknown outcome gets the original answers.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query as QueryParams, State};
use axum::http::{HeaderMap, StatusCode, header};
use ledger_engine::ledger::command::PURCHASES_PAGE_MAX;
use ledger_engine::ledger::record::{Annotation, PurchaseEvent, PurchaseRef};
use ledger_engine::loyalty::purchases::Refundable;
use ledger_engine::loyalty::settlement::{
    self, Reconciliation, RowMatch, SettlementRow, SettlementStatus,
};
use ledger_engine::{
    Command, IdempotencyKey, Metadata, Operation, Query, RejectCode, Request as EngineRequest,
    Response, TxId, TxKind,
};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use utoipa::{IntoParams, ToSchema};

use super::ask::{ask, ask_all};
use super::auth::{Principal, Role};
use super::error::{ApiError, ErrorBody};
use super::routes::date;
use super::writes::ADMIN_TERMINAL;
use super::{AdminState, Caller};

type Shared = State<Arc<AdminState>>;

/// Transitions submitted to the engine at once.
const WRITES_PER_SUBMIT: usize = 1024;
/// Unmatched purchases an answer lists at most (the totals count them all).
const UNMATCHED_PURCHASES_LISTED_MAX: usize = 10_000;

/// Query parameters of an import.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ImportParams {
    /// Match and report without moving any purchase.
    #[serde(default)]
    pub dry_run: bool,
}

/// A count and the amount it adds up to (minor units, a decimal string).
#[derive(Debug, Default, Clone, Serialize, Deserialize, ToSchema)]
pub struct Sum {
    /// Rows or purchases.
    pub count: u64,
    /// Their amounts added.
    pub amount: String,
}

/// A purchase of the ledger.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PurchaseSide {
    /// Its transaction id.
    pub tx_id: String,
    /// The member.
    pub customer: u64,
    /// Its UTC day (YYYY-MM-DD).
    pub day: String,
    /// Its spend (minor units).
    pub amount: String,
    /// Its lifecycle state when matched: `pending`, `settled`, `failed`, `partly_refunded`,
    /// `refunded`.
    pub state: String,
}

/// A row of the report as it was read.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReportSide {
    /// Its line in the file (the header is line 1).
    pub line: u64,
    /// The processor's payment id.
    pub payment_id: String,
    /// The receipt.
    pub receipt: String,
    /// The store.
    pub store: u32,
    /// The payment's time (RFC 3339, UTC).
    pub time: String,
    /// The amount paid (minor units).
    pub amount: String,
    /// `settled` or `failed`.
    pub status: String,
}

/// A row matched to its purchase, and what became of it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MatchedRow {
    /// The row.
    pub row: ReportSide,
    /// Its purchase.
    pub purchase: PurchaseSide,
    /// `settled` / `failed` (moved now), `already_settled` / `already_failed` (it was there:
    /// nothing written), `would_settle` / `would_fail` (a dry run), or `refused` (the ledger
    /// refused the transition: `code` says why; nothing changed).
    pub outcome: String,
    /// The engine's reject code, for `refused`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The transaction that moved it (for `settled` / `failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_id: Option<String>,
}

/// A row whose amount differs from its purchase's spend: nothing moved.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Mismatch {
    /// The row.
    pub row: ReportSide,
    /// Its purchase.
    pub purchase: PurchaseSide,
}

/// A row that matched no purchase.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UnmatchedRow {
    /// The row.
    pub row: ReportSide,
    /// `no_purchase`, `ambiguous` (several purchases with its store and receipt, not one on
    /// its day) or `duplicate_receipt` (an earlier row took that purchase).
    pub reason: String,
}

/// The figures of an import.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct SettlementTotals {
    /// Every row of the report.
    pub report: Sum,
    /// Rows matched to a purchase of the same amount.
    pub matched: Sum,
    /// Of those, purchases moved now.
    pub changed: Sum,
    /// Of those, purchases already where the row puts them.
    pub already: Sum,
    /// Of those, transitions the ledger refused.
    pub refused: Sum,
    /// Rows whose purchase's spend differs (amounts as the report gives them).
    pub amount_mismatches: Sum,
    /// The spend of those rows' purchases.
    pub amount_mismatches_ledger: Sum,
    /// Rows without a purchase.
    pub unmatched_rows: Sum,
    /// Pending purchases of the report's days without a row.
    pub unmatched_purchases: Sum,
}

/// What an import found and did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SettlementReport {
    /// Nothing was moved (`?dry_run=true`).
    pub dry_run: bool,
    /// The UTC days whose purchases were looked at (the report's, one more each side).
    pub days: [String; 2],
    /// Rows matched, in the report's order.
    pub matched: Vec<MatchedRow>,
    /// Rows whose amount differs from their purchase's.
    pub amount_mismatches: Vec<Mismatch>,
    /// Rows with no purchase.
    pub unmatched_rows: Vec<UnmatchedRow>,
    /// Pending purchases made on the report's days that no row matched (the first 10,000).
    pub unmatched_purchases: Vec<PurchaseSide>,
    /// The figures.
    pub totals: SettlementTotals,
}

/// Imports a settlement report (CSV: `payment_id,receipt,store,time,amount,status`): each
/// matched pending purchase settles or fails; the answer lists matched rows, amount
/// mismatches and what is unmatched on each side, with totals. Importing a file again changes
/// nothing.
#[utoipa::path(post, path = "/v1/settlements", tag = "writes",
    params(ImportParams),
    request_body(content = String, content_type = "text/csv",
        description = "the report: a header naming the six columns, then 1 to 100,000 rows"),
    security(("bearer" = ["operator"])),
    responses(
        (status = 200, description = "matched, moved, reported", body = SettlementReport),
        (status = 400, description = "a malformed report (line and column) or parameter", body = ErrorBody),
        (status = 413, description = "larger than admin.body_bytes_max", body = ErrorBody),
        (status = 415, description = "not text/csv", body = ErrorBody),
    ))]
pub async fn import(
    State(state): Shared,
    caller: Caller,
    headers: HeaderMap,
    params: Result<QueryParams<ImportParams>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SettlementReport>, ApiError> {
    let principal = caller.require(Role::Operator)?;
    let QueryParams(params) =
        params.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let csv = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().to_ascii_lowercase().starts_with("text/csv"));
    if !csv {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "a settlement report is sent as Content-Type: text/csv",
        ));
    }
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "bad_request"
        };
        ApiError::new(status, code, rejection.body_text())
    })?;
    let rows = tokio::task::spawn_blocking(move || settlement::parse(&body))
        .await
        .map_err(|error| ApiError::internal(format!("reading a report failed: {error}")))?
        .map_err(|error| ApiError::bad_request(format!("settlement report: {error}")))?;
    let engine = state.engine()?;
    let days = settlement::candidate_days(&rows);
    let purchases = purchases_of_days(engine, days).await?;
    let (rows, reconciliation) = tokio::task::spawn_blocking(move || {
        let reconciliation = settlement::reconcile(&rows, &purchases);
        (rows, reconciliation)
    })
    .await
    .map_err(|error| ApiError::internal(format!("matching a report failed: {error}")))?;
    let outcomes = if params.dry_run {
        None
    } else {
        Some(transitions(engine, principal, &rows, &reconciliation).await?)
    };
    let report = report(&rows, &reconciliation, outcomes.as_deref(), days);
    tracing::info!(
        token = %principal.name,
        rows = rows.len(),
        matched = report.totals.matched.count,
        changed = report.totals.changed.count,
        mismatches = report.totals.amount_mismatches.count,
        unmatched_rows = report.totals.unmatched_rows.count,
        unmatched_purchases = report.totals.unmatched_purchases.count,
        dry_run = params.dry_run,
        "settlement report imported"
    );
    Ok(Json(report))
}

/// Every shard's purchases made on `days`, page by page.
async fn purchases_of_days(
    engine: &ledger_engine::Engine,
    (from_day, to_day): (u32, u32),
) -> Result<Vec<(Refundable, u64)>, ApiError> {
    let mut purchases = Vec::new();
    for shard in 0..engine.shard_count() {
        let mut after: Option<TxId> = None;
        loop {
            let limit = u16::try_from(PURCHASES_PAGE_MAX).expect("a page fits u16");
            let query = Query::Purchases { shard, from_day, to_day, after, limit };
            let page = match ask(engine, Command::Read(query)).await? {
                Response::Purchases(page) => page,
                Response::Rejected(code) => return Err(ApiError::rejected(code)),
                other => return Err(ApiError::internal(format!("a purchases page: {other:?}"))),
            };
            let full = page.len() == PURCHASES_PAGE_MAX;
            after = page.last().map(|(purchase, _)| purchase.id);
            purchases.extend(page);
            if !full {
                break;
            }
        }
    }
    Ok(purchases)
}

/// What became of a matched row.
#[derive(Debug, Clone)]
enum Outcome {
    /// Moved now by this transaction.
    Moved(TxId),
    /// Already there.
    Already,
    /// The ledger refused.
    Refused(RejectCode),
}

/// The key of a row's transition: its payment id and status, hashed (SHA-256, 128 bits).
fn key_of(row: &SettlementRow) -> IdempotencyKey {
    let mut digest = sha2::Sha256::new();
    digest.update(b"ledgerd settlement\0");
    digest.update(row.payment_id.as_bytes());
    digest.update(b"\0");
    digest.update(row.status.name().as_bytes());
    let digest = digest.finalize();
    let key = u128::from_be_bytes(digest[..16].try_into().expect("16 bytes"));
    IdempotencyKey::new(key.max(1)).expect("not zero")
}

/// Writes the transitions of the matched rows whose purchase is not yet where the row puts
/// it; answers an outcome per row of the report (`None` for rows not matched).
async fn transitions(
    engine: &ledger_engine::Engine,
    principal: &Principal,
    rows: &[SettlementRow],
    reconciliation: &Reconciliation,
) -> Result<Vec<Option<Outcome>>, ApiError> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; rows.len()];
    let mut pending: Vec<(usize, Command)> = Vec::new();
    for (index, (row, found)) in rows.iter().zip(&reconciliation.rows).enumerate() {
        let RowMatch::Matched(purchase) = found else { continue };
        if row.status.reached(purchase.state) {
            outcomes[index] = Some(Outcome::Already);
            continue;
        }
        let (kind, event) = match row.status {
            SettlementStatus::Settled => (TxKind::GENERIC, PurchaseEvent::Settle),
            SettlementStatus::Failed => (TxKind::REFUND, PurchaseEvent::Fail),
        };
        let reason = format!("settlement report, payment {}", row.payment_id);
        let annotation = Annotation::new(&principal.name, &reason).map_err(ApiError::internal)?;
        let request = EngineRequest {
            terminal: ADMIN_TERMINAL,
            idempotency: Some(key_of(row)),
            kind,
            metadata: Metadata { annotation: Some(Arc::new(annotation)), ..Metadata::default() },
            operation: Operation::PurchaseChange { reference: PurchaseRef::Id(purchase.id), event },
        };
        pending.push((index, Command::Write(request)));
    }
    for chunk in pending.chunks(WRITES_PER_SUBMIT) {
        let commands = chunk.iter().map(|(_, command)| command.clone()).collect();
        let responses = ask_all(engine, commands).await?;
        for ((index, _), response) in chunk.iter().zip(responses) {
            let status = rows[*index].status;
            outcomes[*index] = Some(match response {
                Response::Committed(committed) | Response::Duplicate(committed) => {
                    Outcome::Moved(committed.tx_id)
                }
                // The purchase moved there since it was read (a till, another import).
                Response::Rejected(RejectCode::PurchaseAlreadySettled)
                    if status == SettlementStatus::Settled =>
                {
                    Outcome::Already
                }
                Response::Rejected(RejectCode::PurchaseFailed)
                    if status == SettlementStatus::Failed =>
                {
                    Outcome::Already
                }
                Response::Rejected(code @ (RejectCode::ShardFailed | RejectCode::ShuttingDown)) => {
                    return Err(ApiError::rejected(code));
                }
                Response::Rejected(code) => Outcome::Refused(code),
                other => {
                    return Err(ApiError::internal(format!("a transition answered {other:?}")));
                }
            });
        }
    }
    Ok(outcomes)
}

fn report_side(row: &SettlementRow) -> ReportSide {
    ReportSide {
        line: row.line,
        payment_id: row.payment_id.clone(),
        receipt: row.receipt.clone(),
        store: row.store,
        time: ledger_engine::loyalty::calendar::rfc3339(row.time),
        amount: row.amount.to_string(),
        status: row.status.name().to_string(),
    }
}

fn purchase_side(purchase: &Refundable) -> PurchaseSide {
    PurchaseSide {
        tx_id: purchase.id.0.to_string(),
        customer: purchase.customer,
        day: date(purchase.day),
        amount: purchase.spend.to_string(),
        state: purchase.state.name().to_string(),
    }
}

/// Adds up counts and amounts (128 bits: 100,000 amounts of up to 2^64 − 1).
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    count: u64,
    amount: u128,
}

impl Tally {
    fn add(&mut self, amount: u64) {
        self.count += 1;
        self.amount += u128::from(amount);
    }

    fn sum(self) -> Sum {
        Sum { count: self.count, amount: self.amount.to_string() }
    }
}

fn report(
    rows: &[SettlementRow],
    reconciliation: &Reconciliation,
    outcomes: Option<&[Option<Outcome>]>,
    (from_day, to_day): (u32, u32),
) -> SettlementReport {
    let [mut all, mut matched, mut changed, mut already, mut refused] = [Tally::default(); 5];
    let [
        mut mismatched,
        mut mismatched_ledger,
        mut unmatched_rows_sum,
        mut unmatched_purchases_sum,
    ] = [Tally::default(); 4];
    let mut report = SettlementReport {
        dry_run: outcomes.is_none(),
        days: [date(from_day), date(to_day)],
        matched: Vec::new(),
        amount_mismatches: Vec::new(),
        unmatched_rows: Vec::new(),
        unmatched_purchases: Vec::new(),
        totals: SettlementTotals::default(),
    };
    for (index, (row, found)) in rows.iter().zip(&reconciliation.rows).enumerate() {
        all.add(row.amount);
        match found {
            RowMatch::Matched(purchase) => {
                matched.add(row.amount);
                let verb = match row.status {
                    SettlementStatus::Settled => "settle",
                    SettlementStatus::Failed => "fail",
                };
                let outcome = outcomes.and_then(|outcomes| outcomes[index].clone());
                let (outcome, code, tx_id) = match outcome {
                    None if row.status.reached(purchase.state) => {
                        already.add(row.amount);
                        (format!("already_{}", row.status.name()), None, None)
                    }
                    None => (format!("would_{verb}"), None, None),
                    Some(Outcome::Already) => {
                        already.add(row.amount);
                        (format!("already_{}", row.status.name()), None, None)
                    }
                    Some(Outcome::Moved(tx)) => {
                        changed.add(row.amount);
                        (row.status.name().to_string(), None, Some(tx.0.to_string()))
                    }
                    Some(Outcome::Refused(code)) => {
                        refused.add(row.amount);
                        ("refused".to_string(), Some(code.name().to_string()), None)
                    }
                };
                report.matched.push(MatchedRow {
                    row: report_side(row),
                    purchase: purchase_side(purchase),
                    outcome,
                    code,
                    tx_id,
                });
            }
            RowMatch::AmountMismatch(purchase) => {
                mismatched.add(row.amount);
                mismatched_ledger.add(purchase.spend);
                report
                    .amount_mismatches
                    .push(Mismatch { row: report_side(row), purchase: purchase_side(purchase) });
            }
            RowMatch::Unmatched(reason) => {
                unmatched_rows_sum.add(row.amount);
                report.unmatched_rows.push(UnmatchedRow {
                    row: report_side(row),
                    reason: reason.name().to_string(),
                });
            }
        }
    }
    for purchase in &reconciliation.unmatched_purchases {
        unmatched_purchases_sum.add(purchase.spend);
        if report.unmatched_purchases.len() < UNMATCHED_PURCHASES_LISTED_MAX {
            report.unmatched_purchases.push(purchase_side(purchase));
        }
    }
    report.totals = SettlementTotals {
        report: all.sum(),
        matched: matched.sum(),
        changed: changed.sum(),
        already: already.sum(),
        refused: refused.sum(),
        amount_mismatches: mismatched.sum(),
        amount_mismatches_ledger: mismatched_ledger.sum(),
        unmatched_rows: unmatched_rows_sum.sum(),
        unmatched_purchases: unmatched_purchases_sum.sum(),
    };
    report
}
