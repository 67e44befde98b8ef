//! The admin API's writes: each is one engine request, idempotent by its `Idempotency-Key`
//! header, recorded with who made it (the token's name) and why (a mandatory reason) in its
//! WAL record (`Annotation`, WAL format 7). Docs: docs/admin-api.md, "Writes".
//!
//! Admin writes are made as terminal 0, a terminal no POS credentials file may name, so their
//! keys never meet a till's. The key is the header's text hashed (SHA-256, first 128 bits):
//! the same key with the same body is answered with the original result, the same key with
//! another body (another reason or another token included) is `409 idempotency_conflict`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use ledger_engine::ledger::account::{AccountId, Namespace};
use ledger_engine::ledger::record::{Annotation, PurchaseEvent, PurchaseRef};
use ledger_engine::{
    Amount, Command, IdempotencyKey, Metadata, Operation, Posting, Request as EngineRequest,
    Response, TerminalId, TxId, TxKind,
};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use utoipa::ToSchema;

use super::ask::ask;
use super::auth::{Principal, Role};
use super::error::{ApiError, ErrorBody};
use super::{AdminState, Caller};

/// The terminal admin writes are made as.
pub const ADMIN_TERMINAL: TerminalId = TerminalId(0);

/// Longest `Idempotency-Key` accepted.
const KEY_BYTES_MAX: usize = 255;

type Shared = State<Arc<AdminState>>;

/// A JSON body, refused with a JSON error: `415` without a JSON content type, `413` over the
/// size limit, `400` when it does not parse or has unknown fields.
pub struct Body<T>(pub T);

impl<T, S> FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Body<T>, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(json_error(&rejection)),
        }
    }
}

fn json_error(rejection: &JsonRejection) -> ApiError {
    let status = rejection.status();
    let code = match status {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        _ => "bad_request",
    };
    let status = if code == "bad_request" { StatusCode::BAD_REQUEST } else { status };
    ApiError::new(status, code, rejection.body_text())
}

/// The caller, if their role may make the write, and then the body: the role is checked
/// before the body is read, so a caller without it learns nothing more than `403`.
fn admitted<T>(
    caller: &Caller,
    role: Role,
    body: Result<Body<T>, ApiError>,
) -> Result<(&Principal, T), ApiError> {
    let principal = caller.require(role)?;
    let Body(body) = body?;
    Ok((principal, body))
}

/// The answer to a write.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WriteResult {
    /// The transaction's id.
    pub tx_id: String,
    /// Its position in its shard's WAL.
    pub lsn: u64,
    /// When its shard recorded it (RFC 3339).
    pub time: String,
    /// What it moved (for a conversion, the points credited; for a settlement or a refund,
    /// the points taken back or posted).
    pub amount: String,
    /// Whether this answers an earlier write with the same key (nothing was posted now).
    pub duplicate: bool,
}

/// The engine key of an `Idempotency-Key` header.
fn key_of(headers: &HeaderMap) -> Result<IdempotencyKey, ApiError> {
    let text = headers
        .get("idempotency-key")
        .ok_or_else(|| ApiError::bad_request("writes need an Idempotency-Key header"))?
        .to_str()
        .map_err(|_| ApiError::bad_request("the Idempotency-Key must be visible ASCII"))?;
    if text.is_empty() || text.len() > KEY_BYTES_MAX || !text.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::bad_request(
            "the Idempotency-Key must be 1 to 255 visible ASCII characters",
        ));
    }
    let digest = sha2::Sha256::digest(text.as_bytes());
    let key = u128::from_be_bytes(digest[..16].try_into().expect("16 bytes"));
    Ok(IdempotencyKey::new(key.max(1)).expect("not zero"))
}

/// Makes `operation` as the caller, with `reason`, and answers the engine's result.
async fn write(
    state: &AdminState,
    (principal, headers): (&Principal, &HeaderMap),
    kind: TxKind,
    reason: &str,
    operation: Operation,
) -> Result<Json<WriteResult>, ApiError> {
    let key = key_of(headers)?;
    let annotation = Annotation::new(&principal.name, reason).map_err(ApiError::bad_request)?;
    let engine = state.engine()?;
    let request = EngineRequest {
        terminal: ADMIN_TERMINAL,
        idempotency: Some(key),
        kind,
        metadata: Metadata { annotation: Some(Arc::new(annotation)), ..Metadata::default() },
        operation,
    };
    let (committed, duplicate) = match ask(engine, Command::Write(request)).await? {
        Response::Committed(committed) => (committed, false),
        Response::Duplicate(committed) => (committed, true),
        Response::Rejected(code) => return Err(ApiError::rejected(code)),
        other => return Err(ApiError::internal(format!("a write answered {other:?}"))),
    };
    Ok(Json(WriteResult {
        tx_id: committed.tx_id.0.to_string(),
        lsn: committed.lsn.0,
        time: ledger_engine::loyalty::calendar::rfc3339(committed.timestamp),
        amount: committed.amount.to_string(),
        duplicate,
    }))
}

/// A positive amount given as a decimal string.
fn positive(text: &str, what: &str) -> Result<Amount, ApiError> {
    text.parse::<u64>().ok().and_then(Amount::new).ok_or_else(|| {
        ApiError::bad_request(format!(
            "{what} must be a whole number from 1 to 2^64 - 1, as a string"
        ))
    })
}

/// The customer class named `name` (`points` when none is given).
fn customer_class(
    state: &AdminState,
    name: Option<&str>,
) -> Result<ledger_engine::ledger::registry::ClassDef, ApiError> {
    let name = name.unwrap_or("points");
    let parsed = ledger_engine::ledger::account::Name::class(name)
        .map_err(|error| ApiError::bad_request(format!("class: {error}")))?;
    state
        .engine()?
        .registry()
        .class_by_name(Namespace::Customer, &parsed)
        .cloned()
        .ok_or_else(|| ApiError::bad_request(format!("no customer class {name:?}")))
}

/// A manual adjustment.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentBody {
    /// The customer account's class (default `points`).
    pub class: Option<String>,
    /// Signed whole number as a string: positive credits the customer, negative debits them.
    pub amount: String,
    /// Why (1..=512 bytes): recorded in the WAL with the token's name.
    pub reason: String,
}

/// A manual adjustment: one balanced posting between the customer's account and the
/// `house:adjustment` account of its asset.
#[utoipa::path(post, path = "/v1/customers/{customer}/adjustments", tag = "writes",
    params(("customer" = u64, Path, description = "the customer's id"),
        ("Idempotency-Key" = String, Header, description = "1..=255 visible ASCII characters")),
    request_body = AdjustmentBody,
    security(("bearer" = ["operator"])),
    responses(
        (status = 200, description = "recorded (or the original answer of the same key)", body = WriteResult),
        (status = 400, description = "a bad body, amount, class or key", body = ErrorBody),
        (status = 409, description = "the key was used with another body", body = ErrorBody),
        (status = 422, description = "refused by the ledger (insufficient_funds …)", body = ErrorBody),
    ))]
pub async fn adjustment(
    State(state): Shared,
    caller: Caller,
    headers: HeaderMap,
    Path(customer): Path<String>,
    body: Result<Body<AdjustmentBody>, ApiError>,
) -> Result<Json<WriteResult>, ApiError> {
    let (principal, body) = admitted(&caller, Role::Operator, body)?;
    let customer = super::routes::number(&customer, "customer")?;
    let (negative, magnitude) = match body.amount.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, body.amount.as_str()),
    };
    let amount = positive(magnitude, "amount")?;
    let class = customer_class(&state, body.class.as_deref())?;
    let registry = state.engine()?.registry();
    let house = registry
        .classes()
        .iter()
        .find(|c| {
            c.namespace == Namespace::House
                && c.name.as_str() == "adjustment"
                && c.asset == class.asset
        })
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "class_unknown",
                "no house:adjustment account holds this class's asset",
            )
        })?;
    let (customer_account, house_account) =
        (AccountId::new(class.id, customer), AccountId::new(house.id, 0));
    let (debit, credit) = if negative {
        (customer_account, house_account)
    } else {
        (house_account, customer_account)
    };
    let posting = Posting { debit, credit, asset: class.asset, amount };
    let operation = Operation::Post { postings: smallvec::smallvec![posting] };
    write(&state, (principal, &headers), TxKind::ADJUSTMENT, &body.reason, operation).await
}

/// A write that needs only a reason.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    /// Why (1..=512 bytes).
    pub reason: String,
}

/// Voids an open hold: its reservation is released.
#[utoipa::path(post, path = "/v1/holds/{hold}/void", tag = "writes",
    params(("hold" = u64, Path, description = "the hold's id"),
        ("Idempotency-Key" = String, Header, description = "1..=255 visible ASCII characters")),
    request_body = ReasonBody,
    security(("bearer" = ["support"])),
    responses(
        (status = 200, description = "voided", body = WriteResult),
        (status = 404, description = "no such open hold", body = ErrorBody),
        (status = 409, description = "the key was used with another body", body = ErrorBody),
        (status = 422, description = "refused (hold_expired …)", body = ErrorBody),
    ))]
pub async fn void_hold(
    State(state): Shared,
    caller: Caller,
    headers: HeaderMap,
    Path(hold): Path<String>,
    body: Result<Body<ReasonBody>, ApiError>,
) -> Result<Json<WriteResult>, ApiError> {
    let (principal, body) = admitted(&caller, Role::Support, body)?;
    let hold = TxId(super::routes::number(&hold, "hold")?);
    let operation = Operation::Void { hold };
    write(&state, (principal, &headers), TxKind::GENERIC, &body.reason, operation).await
}

/// A line of a basket, as a refund by lines names it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineBody {
    /// The product category.
    pub category: u16,
    /// Minor units, as a string.
    pub amount: String,
    /// Whether the till excluded it from earning.
    #[serde(default)]
    pub excluded: bool,
}

/// A refund: by amount or by lines, one of the two.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    /// Minor units of the purchase's spend refunded, as a string.
    pub amount: Option<String>,
    /// The returned lines, as the receipt shows them (1..=32).
    pub lines: Option<Vec<LineBody>>,
    /// Why (1..=512 bytes).
    pub reason: String,
}

async fn change(
    state: &AdminState,
    (principal, headers): (&Principal, &HeaderMap),
    purchase: &str,
    event: PurchaseEvent,
    reason: &str,
) -> Result<Json<WriteResult>, ApiError> {
    let purchase = TxId(super::routes::number(purchase, "purchase")?);
    let kind = match event {
        PurchaseEvent::Settle => TxKind::GENERIC,
        _ => TxKind::REFUND,
    };
    let operation = Operation::PurchaseChange { reference: PurchaseRef::Id(purchase), event };
    write(state, (principal, headers), kind, reason, operation).await
}

/// Refunds part of a settled purchase, by amount or by lines: the points it earned are taken
/// back in proportion (docs/loyalty.md, "Purchase lifecycle and refunds").
#[utoipa::path(post, path = "/v1/purchases/{purchase}/refund", tag = "writes",
    params(("purchase" = u64, Path, description = "the purchase's transaction id"),
        ("Idempotency-Key" = String, Header, description = "1..=255 visible ASCII characters")),
    request_body = RefundBody,
    security(("bearer" = ["support"])),
    responses(
        (status = 200, description = "refunded", body = WriteResult),
        (status = 404, description = "no such purchase", body = ErrorBody),
        (status = 409, description = "the key was used with another body", body = ErrorBody),
        (status = 422, description = "refused (purchase_not_settled, refund_exceeds_purchase …)", body = ErrorBody),
    ))]
pub async fn refund(
    State(state): Shared,
    caller: Caller,
    headers: HeaderMap,
    Path(purchase): Path<String>,
    body: Result<Body<RefundBody>, ApiError>,
) -> Result<Json<WriteResult>, ApiError> {
    let (principal, body) = admitted(&caller, Role::Support, body)?;
    let event = match (&body.amount, &body.lines) {
        (Some(amount), None) => PurchaseEvent::RefundAmount(positive(amount, "amount")?),
        (None, Some(lines)) => {
            if lines.is_empty() || lines.len() > 32 {
                return Err(ApiError::bad_request("a refund by lines names 1 to 32 lines"));
            }
            let mut basket = ledger_engine::loyalty::Lines::new();
            for line in lines {
                basket.push(ledger_engine::loyalty::Line {
                    category: line.category,
                    amount: positive(&line.amount, "a line's amount")?.get(),
                    excluded: line.excluded,
                });
            }
            PurchaseEvent::RefundLines(basket)
        }
        _ => {
            return Err(ApiError::bad_request("a refund gives an amount or lines, one of the two"));
        }
    };
    change(&state, (principal, &headers), &purchase, event, &body.reason).await
}

/// Settles a pending purchase: its payment is confirmed.
#[utoipa::path(post, path = "/v1/purchases/{purchase}/settle", tag = "writes",
    params(("purchase" = u64, Path, description = "the purchase's transaction id"),
        ("Idempotency-Key" = String, Header, description = "1..=255 visible ASCII characters")),
    request_body = ReasonBody,
    security(("bearer" = ["operator"])),
    responses(
        (status = 200, description = "settled", body = WriteResult),
        (status = 404, description = "no such purchase", body = ErrorBody),
        (status = 422, description = "refused (purchase_already_settled, purchase_failed …)", body = ErrorBody),
    ))]
pub async fn settle(
    State(state): Shared,
    caller: Caller,
    headers: HeaderMap,
    Path(purchase): Path<String>,
    body: Result<Body<ReasonBody>, ApiError>,
) -> Result<Json<WriteResult>, ApiError> {
    let (principal, body) = admitted(&caller, Role::Operator, body)?;
    change(&state, (principal, &headers), &purchase, PurchaseEvent::Settle, &body.reason).await
}

/// Fails a purchase (its payment failed or was charged back): what is left of it is taken
/// back.
#[utoipa::path(post, path = "/v1/purchases/{purchase}/fail", tag = "writes",
    params(("purchase" = u64, Path, description = "the purchase's transaction id"),
        ("Idempotency-Key" = String, Header, description = "1..=255 visible ASCII characters")),
    request_body = ReasonBody,
    security(("bearer" = ["operator"])),
    responses(
        (status = 200, description = "failed", body = WriteResult),
        (status = 404, description = "no such purchase", body = ErrorBody),
        (status = 422, description = "refused (purchase_failed …)", body = ErrorBody),
    ))]
pub async fn fail(
    State(state): Shared,
    caller: Caller,
    headers: HeaderMap,
    Path(purchase): Path<String>,
    body: Result<Body<ReasonBody>, ApiError>,
) -> Result<Json<WriteResult>, ApiError> {
    let (principal, body) = admitted(&caller, Role::Operator, body)?;
    change(&state, (principal, &headers), &purchase, PurchaseEvent::Fail, &body.reason).await
}

/// A transfer between two customers.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    /// The customer debited.
    pub from: u64,
    /// The customer credited.
    pub to: u64,
    /// Their accounts' class (default `points`).
    pub class: Option<String>,
    /// How much, as a string.
    pub amount: String,
    /// Why (1..=512 bytes).
    pub reason: String,
}

/// Moves points (or another customer class's asset) from one customer to another, on one
/// shard or across two.
#[utoipa::path(post, path = "/v1/transfers", tag = "writes",
    params(("Idempotency-Key" = String, Header, description = "1..=255 visible ASCII characters")),
    request_body = TransferBody,
    security(("bearer" = ["operator"])),
    responses(
        (status = 200, description = "moved", body = WriteResult),
        (status = 409, description = "the key was used with another body", body = ErrorBody),
        (status = 422, description = "refused (insufficient_funds, accounts_same …)", body = ErrorBody),
    ))]
pub async fn transfer(
    State(state): Shared,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Body<TransferBody>, ApiError>,
) -> Result<Json<WriteResult>, ApiError> {
    let (principal, body) = admitted(&caller, Role::Operator, body)?;
    let class = customer_class(&state, body.class.as_deref())?;
    let amount = positive(&body.amount, "amount")?;
    let operation = Operation::Transfer {
        source: AccountId::new(class.id, body.from),
        destination: AccountId::new(class.id, body.to),
        amount,
    };
    write(&state, (principal, &headers), TxKind::TRANSFER, &body.reason, operation).await
}

/// A partner conversion.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversionBody {
    /// The member.
    pub customer: u64,
    /// The asset given (its code: `PARTNER_A_POINTS`, `PTS` …).
    pub from: String,
    /// The asset received.
    pub to: String,
    /// Points of `from` given, as a string.
    pub amount: String,
    /// Why (1..=512 bytes).
    pub reason: String,
}

/// Converts a member's points of one asset into another at the exchange rate in force
/// (docs/loyalty.md, "Partner exchange").
#[utoipa::path(post, path = "/v1/conversions", tag = "writes",
    params(("Idempotency-Key" = String, Header, description = "1..=255 visible ASCII characters")),
    request_body = ConversionBody,
    security(("bearer" = ["operator"])),
    responses(
        (status = 200, description = "converted; `amount` is what was credited", body = WriteResult),
        (status = 409, description = "the key was used with another body", body = ErrorBody),
        (status = 422, description = "refused (rate_missing, conversion_too_small …)", body = ErrorBody),
    ))]
pub async fn conversion(
    State(state): Shared,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Body<ConversionBody>, ApiError>,
) -> Result<Json<WriteResult>, ApiError> {
    let (principal, body) = admitted(&caller, Role::Operator, body)?;
    let registry = state.engine()?.registry();
    let asset = |code: &str| {
        registry
            .assets()
            .iter()
            .find(|asset| asset.code.as_str() == code)
            .map(|asset| asset.id)
            .ok_or_else(|| ApiError::bad_request(format!("no asset {code:?}")))
    };
    let (from, to) = (asset(&body.from)?, asset(&body.to)?);
    let amount = positive(&body.amount, "amount")?;
    let operation = Operation::Convert { customer: body.customer, from, to, amount };
    write(&state, (principal, &headers), TxKind::EXCHANGE, &body.reason, operation).await
}
