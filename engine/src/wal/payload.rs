//! Spec: docs/wal-format.md, "Payloads". The byte layout of each record body, and the
//! fingerprint that idempotency compares.
//!
//! Every field is fixed-width little-endian except the short strings (a u8 length, then UTF-8
//! bytes). Decoding checks every count against the format limits before allocating and
//! refuses trailing bytes, so a payload decodes to exactly one body or to a typed error.

use crate::amount::Amount;
use crate::codec::{DecodeError, Decoder, Encoder};
use crate::ids::{IdempotencyKey, ShardId, TerminalId, Timestamp, TxId};
use crate::ledger::account::{AccountFlags, AccountId, AssetId, ClassId, Name, Namespace};
use crate::ledger::record::{
    Annotation, AssetDefine, Body, ClassDefine, Conversion, HoldCapture, HoldCreate, HoldExpire,
    HoldVoid, LotsExpire, Metadata, Posting, Purchase, PurchaseChange, PurchaseEvent, PurchaseRef,
    PurchaseRelease, RateDefine, Receipt, RecordKind, Reversal, RulesDefine, Transaction,
    TransferIn, TransferOut, TransferSettle, TransitionOutcome, TxHeader, TxKind,
};
use crate::limits::{NAME_BYTES_MAX, RECEIPT_BYTES_MAX, TRANSACTION_POSTINGS_MAX};

/// Bytes of a client header before the part the fingerprint covers: tx id (8), terminal (4),
/// idempotency key (16).
pub const FINGERPRINT_OFFSET: usize = 28;

/// Bytes of an encoded posting.
pub const POSTING_BYTES: usize = 12 + 12 + 2 + 8;

/// Offset of the receipt's length byte in a client header: after tx id, terminal and key
/// (`FINGERPRINT_OFFSET`) come kind 2, store 4, category 2.
const RECEIPT_LENGTH_OFFSET: usize = FINGERPRINT_OFFSET + 2 + 4 + 2;
const _: () = assert!(RECEIPT_LENGTH_OFFSET == 36);

/// Bytes at the end of a `TransferOut` payload that the engine assigns (destination shard and
/// sequence), which the fingerprint leaves out.
pub const TRANSFER_OUT_ASSIGNED_BYTES: usize = 2 + 8;

/// Bytes at the end of a `Conversion` payload that the shard decides (rate version, points
/// credited, the two values), which the fingerprint leaves out.
pub const CONVERSION_DECIDED_BYTES: usize = 4 + 8 + 8 + 8;

/// The fingerprint of a client record: XXH3-64, seeded with the record kind, of the payload
/// from `FINGERPRINT_OFFSET` to its end (minus `TRANSFER_OUT_ASSIGNED_BYTES` for a transfer).
/// It covers everything the client chose except the key itself, and nothing the engine chose,
/// so a retry with the same key matches exactly when it asks for the same thing.
pub fn fingerprint(kind: RecordKind, payload: &[u8]) -> u64 {
    let end = match kind {
        RecordKind::TransferOut => payload.len().saturating_sub(TRANSFER_OUT_ASSIGNED_BYTES),
        RecordKind::Conversion => payload.len().saturating_sub(CONVERSION_DECIDED_BYTES),
        // A reversal's postings are derived by the engine from the original: the request is
        // the header and the original's id.
        RecordKind::Reversal => header_len(payload).map_or(payload.len(), |header| header + 8),
        // A purchase's outcome is decided by the shard: the request is the header, the
        // customer and the basket.
        RecordKind::Purchase => header_len(payload).map_or(payload.len(), |header| {
            let customer_end = header + 8;
            payload.get(customer_end).map_or(payload.len(), |count| {
                customer_end + crate::loyalty::codec::lines_len(usize::from(*count))
            })
        }),
        // A transition's outcome is decided by the shard: the request is the header, the
        // purchase's reference and, for a refund, its amount or lines.
        RecordKind::PurchaseSettle | RecordKind::PurchaseFail | RecordKind::PurchaseRefund => {
            change_request_len(kind, payload).unwrap_or(payload.len())
        }
        _ => payload.len(),
    };
    let covered = payload.get(FINGERPRINT_OFFSET..end.min(payload.len())).unwrap_or(&[]);
    xxhash_rust::xxh3::xxh3_64_with_seed(covered, kind as u64)
}

/// Bytes of a purchase transition's request (header, reference, refund): where the shard's
/// outcome starts. `None` if the payload is too short to tell.
fn change_request_len(kind: RecordKind, payload: &[u8]) -> Option<usize> {
    let reference_end = header_len(payload)? + 9;
    if kind != RecordKind::PurchaseRefund {
        return Some(reference_end);
    }
    match *payload.get(reference_end)? {
        REFUND_BY_AMOUNT => Some(reference_end + 1 + 8),
        _ => {
            let count = *payload.get(reference_end + 1)?;
            Some(reference_end + 1 + crate::loyalty::codec::lines_len(usize::from(count)))
        }
    }
}

const REFERENCE_BY_ID: u8 = 1;
const REFERENCE_BY_RECEIPT: u8 = 2;
const REFUND_BY_AMOUNT: u8 = 1;
const REFUND_BY_LINES: u8 = 2;

fn encode_change(encoder: &mut Encoder<'_>, change: &PurchaseChange) {
    encode_header(encoder, &change.header);
    match change.reference {
        PurchaseRef::Id(id) => {
            encoder.u8(REFERENCE_BY_ID);
            encoder.u64(id.0);
        }
        PurchaseRef::Receipt { customer } => {
            encoder.u8(REFERENCE_BY_RECEIPT);
            encoder.u64(customer);
        }
    }
    match &change.event {
        PurchaseEvent::Settle | PurchaseEvent::Fail => {}
        PurchaseEvent::RefundAmount(amount) => {
            encoder.u8(REFUND_BY_AMOUNT);
            encoder.u64(amount.get());
        }
        PurchaseEvent::RefundLines(lines) => {
            encoder.u8(REFUND_BY_LINES);
            crate::loyalty::codec::encode_lines(encoder, lines);
        }
    }
    // Decided by the shard: after the request, outside the fingerprint.
    let outcome = &change.outcome;
    encoder.u64(outcome.purchase.0);
    encoder.u64(outcome.customer);
    encoder.u8(outcome.state);
    for value in [
        outcome.refunded,
        outcome.earned,
        outcome.bonus,
        outcome.cashback,
        outcome.points_owed,
        outcome.cashback_owed,
    ] {
        encoder.u64(value);
    }
    encoder.u8(outcome.tier_after);
}

fn decode_change(kind: RecordKind, decoder: &mut Decoder<'_>) -> Result<Body, DecodeError> {
    let header = decode_header(decoder)?;
    let reference = match decoder.u8("purchase reference")? {
        REFERENCE_BY_ID => PurchaseRef::Id(TxId(decoder.u64("purchase")?)),
        REFERENCE_BY_RECEIPT => PurchaseRef::Receipt { customer: decoder.u64("customer")? },
        other => {
            return Err(DecodeError::Invalid { field: "purchase reference", value: other.into() });
        }
    };
    let event = match kind {
        RecordKind::PurchaseSettle => PurchaseEvent::Settle,
        RecordKind::PurchaseFail => PurchaseEvent::Fail,
        _ => match decoder.u8("refund basis")? {
            REFUND_BY_AMOUNT => {
                PurchaseEvent::RefundAmount(decode_amount(decoder, "refund amount")?)
            }
            REFUND_BY_LINES => {
                PurchaseEvent::RefundLines(crate::loyalty::codec::decode_lines(decoder)?)
            }
            other => {
                return Err(DecodeError::Invalid { field: "refund basis", value: other.into() });
            }
        },
    };
    let purchase = TxId(decoder.u64("purchase")?);
    let customer = decoder.u64("customer")?;
    let state = decoder.u8("purchase state")?;
    if crate::loyalty::lifecycle::LifecycleState::from_u8(state).is_none() {
        return Err(DecodeError::Invalid { field: "purchase state", value: state.into() });
    }
    let mut values = [0_u64; 6];
    for (value, field) in values.iter_mut().zip([
        "refunded",
        "earned taken back",
        "bonus taken back",
        "cashback taken back",
        "points owed",
        "cashback owed",
    ]) {
        *value = decoder.u64(field)?;
    }
    let [refunded, earned, bonus, cashback, points_owed, cashback_owed] = values;
    let tier_after = decoder.u8("tier after")?;
    if points_owed > earned.saturating_add(bonus) || cashback_owed > cashback {
        return Err(DecodeError::Invalid { field: "owed above what is taken back", value: 0 });
    }
    let outcome = TransitionOutcome {
        purchase,
        customer,
        state,
        refunded,
        earned,
        bonus,
        cashback,
        points_owed,
        cashback_owed,
        tier_after,
    };
    Ok(Body::PurchaseChange(PurchaseChange { header, reference, event, outcome }))
}

pub(crate) fn encode_account_id(encoder: &mut Encoder<'_>, id: AccountId) {
    encoder.u64(id.owner());
    encoder.u32(id.class().0);
}

pub(crate) fn decode_account_id(decoder: &mut Decoder<'_>) -> Result<AccountId, DecodeError> {
    let owner = decoder.u64("account owner")?;
    let class = decoder.u32("account class")?;
    Ok(AccountId::new(ClassId(class), owner))
}

pub(crate) fn encode_posting(encoder: &mut Encoder<'_>, posting: &Posting) {
    encode_account_id(encoder, posting.debit);
    encode_account_id(encoder, posting.credit);
    encoder.u16(posting.asset.0);
    encoder.u64(posting.amount.get());
}

pub(crate) fn decode_posting(decoder: &mut Decoder<'_>) -> Result<Posting, DecodeError> {
    let debit = decode_account_id(decoder)?;
    let credit = decode_account_id(decoder)?;
    let asset = AssetId(decoder.u16("posting asset")?);
    let amount = decode_amount(decoder, "posting amount")?;
    Ok(Posting { debit, credit, asset, amount })
}

fn decode_postings(
    decoder: &mut Decoder<'_>,
) -> Result<crate::ledger::record::Postings, DecodeError> {
    let count = usize::from(decoder.u16("posting count")?);
    if count > TRANSACTION_POSTINGS_MAX {
        return Err(DecodeError::Invalid { field: "posting count", value: count as u128 });
    }
    (0..count).map(|_| decode_posting(decoder)).collect()
}

fn decode_amount(decoder: &mut Decoder<'_>, field: &'static str) -> Result<Amount, DecodeError> {
    let value = decoder.u64(field)?;
    Amount::new(value).ok_or(DecodeError::Invalid { field, value: 0 })
}

fn decode_shard(decoder: &mut Decoder<'_>, field: &'static str) -> Result<ShardId, DecodeError> {
    let index = decoder.u16(field)?;
    ShardId::new(index).ok_or(DecodeError::Invalid { field, value: u128::from(index) })
}

fn decode_bool(decoder: &mut Decoder<'_>, field: &'static str) -> Result<bool, DecodeError> {
    match decoder.u8(field)? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(DecodeError::Invalid { field, value: u128::from(other) }),
    }
}

/// Bit 7 of a client header's receipt length: an annotation follows the receipt (format 7).
const ANNOTATED: u8 = 0x80;

fn encode_header(encoder: &mut Encoder<'_>, header: &TxHeader) {
    encoder.u64(header.id.0);
    encoder.u32(header.terminal.0);
    encoder.u128(header.idempotency.map_or(0, IdempotencyKey::get));
    encoder.u16(header.kind.0);
    encoder.u32(header.metadata.store);
    encoder.u16(header.metadata.category);
    let receipt = header.metadata.receipt.as_str();
    match &header.metadata.annotation {
        None => encoder.short_str(receipt),
        Some(annotation) => {
            let len = u8::try_from(receipt.len()).expect("receipts are at most 32 bytes");
            encoder.u8(len | ANNOTATED);
            encoder.bytes(receipt.as_bytes());
            encoder.short_str(annotation.actor());
            let reason = annotation.reason().as_bytes();
            encoder.u16(u16::try_from(reason.len()).expect("reasons are at most 512 bytes"));
            encoder.bytes(reason);
        }
    }
}

/// Bytes of the client header at the start of `payload` (docs/wal-format.md, "client
/// header"), annotation included; `None` if the payload is too short to tell.
fn header_len(payload: &[u8]) -> Option<usize> {
    let flags = *payload.get(RECEIPT_LENGTH_OFFSET)?;
    let receipt_end = RECEIPT_LENGTH_OFFSET + 1 + usize::from(flags & !ANNOTATED);
    if flags & ANNOTATED == 0 {
        return Some(receipt_end);
    }
    let actor_end = receipt_end + 1 + usize::from(*payload.get(receipt_end)?);
    let reason = payload.get(actor_end..actor_end + 2)?;
    Some(actor_end + 2 + usize::from(u16::from_le_bytes([reason[0], reason[1]])))
}

fn decode_header(decoder: &mut Decoder<'_>) -> Result<TxHeader, DecodeError> {
    let id = TxId(decoder.u64("tx id")?);
    let terminal = TerminalId(decoder.u32("terminal")?);
    let idempotency = IdempotencyKey::new(decoder.u128("idempotency key")?);
    let kind = TxKind(decoder.u16("tx kind")?);
    let store = decoder.u32("store")?;
    let category = decoder.u16("category")?;
    let flags = decoder.u8("receipt length")?;
    let len = usize::from(flags & !ANNOTATED);
    if len > RECEIPT_BYTES_MAX {
        return Err(DecodeError::Invalid { field: "receipt length", value: u128::from(flags) });
    }
    let bytes = decoder.take("receipt", len)?;
    let receipt = std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| Receipt::new(text).ok())
        .ok_or(DecodeError::Invalid { field: "receipt", value: len as u128 })?;
    let annotation = if flags & ANNOTATED == 0 {
        None
    } else {
        let actor = decoder.short_str("actor", crate::limits::ANNOTATION_ACTOR_BYTES_MAX)?;
        let reason_len = decoder.u16("reason length")?;
        let reason = decoder.take("reason", usize::from(reason_len))?;
        let reason = std::str::from_utf8(reason)
            .map_err(|_| DecodeError::Invalid { field: "reason", value: u128::from(reason_len) })?;
        let annotation = Annotation::new(actor, reason).map_err(|_| DecodeError::Invalid {
            field: "annotation",
            value: u128::from(reason_len),
        })?;
        Some(std::sync::Arc::new(annotation))
    };
    Ok(TxHeader {
        id,
        kind,
        terminal,
        idempotency,
        metadata: Metadata { store, category, receipt, annotation },
    })
}

/// Appends `record` to `out` as an unsealed frame (docs/wal-format.md: length, LSN, timestamp,
/// kind and payload; the writer seals it). Returns where it starts.
pub fn encode_record(out: &mut Vec<u8>, record: &crate::ledger::record::Record) -> usize {
    let start =
        super::format::begin_record(out, record.lsn, record.timestamp, record.body.kind() as u16);
    encode_body(&record.body, out);
    super::format::finish_record(out, start);
    start
}

/// Appends the payload of `body` to `out`.
pub fn encode_body(body: &Body, out: &mut Vec<u8>) {
    let mut encoder = Encoder::new(out);
    match body {
        Body::Transaction(tx) => {
            encode_header(&mut encoder, &tx.header);
            assert!(tx.postings.len() <= TRANSACTION_POSTINGS_MAX, "postings are bounded");
            encoder.u16(u16::try_from(tx.postings.len()).expect("bounded above"));
            for posting in &tx.postings {
                encode_posting(&mut encoder, posting);
            }
        }
        Body::HoldCreate(hold) => {
            encode_header(&mut encoder, &hold.header);
            encode_posting(&mut encoder, &hold.posting);
            encoder.u64(hold.timeout_nanos);
        }
        Body::HoldCapture(capture) => {
            encode_header(&mut encoder, &capture.header);
            encoder.u64(capture.hold.0);
            encoder.u64(capture.amount.map_or(0, Amount::get));
        }
        Body::HoldVoid(void) => {
            encode_header(&mut encoder, &void.header);
            encoder.u64(void.hold.0);
        }
        Body::HoldExpire(expire) => {
            encoder.u64(expire.id.0);
            encoder.u64(expire.hold.0);
        }
        Body::TransferOut(transfer) => {
            encode_header(&mut encoder, &transfer.header);
            encode_account_id(&mut encoder, transfer.source);
            encode_account_id(&mut encoder, transfer.destination);
            encoder.u16(transfer.asset.0);
            encoder.u64(transfer.amount.get());
            // Assigned by the engine, not the client: last, outside the fingerprint.
            encoder.u16(transfer.destination_shard.index());
            encoder.u64(transfer.sequence);
        }
        Body::TransferIn(transfer) => {
            encoder.u64(transfer.id.0);
            encoder.u16(transfer.source_shard.index());
            encoder.u64(transfer.sequence);
            encoder.u64(transfer.source_tx.0);
            encode_account_id(&mut encoder, transfer.source);
            encode_account_id(&mut encoder, transfer.destination);
            encoder.u16(transfer.asset.0);
            encoder.u64(transfer.amount.get());
            encoder.u8(u8::from(transfer.accepted));
        }
        Body::Reversal(reversal) => {
            encode_header(&mut encoder, &reversal.header);
            encoder.u64(reversal.original.0);
            assert!(reversal.postings.len() <= TRANSACTION_POSTINGS_MAX, "postings are bounded");
            encoder.u16(u16::try_from(reversal.postings.len()).expect("bounded above"));
            for posting in &reversal.postings {
                encode_posting(&mut encoder, posting);
            }
        }
        Body::TransferSettle(settle) => {
            encoder.u64(settle.id.0);
            encoder.u16(settle.destination_shard.index());
            encoder.u64(settle.sequence);
            encoder.u8(u8::from(settle.accepted));
        }
        Body::AssetDefine(define) => {
            encoder.u16(define.id.0);
            encoder.short_str(define.code.as_str());
            encoder.u8(define.scale);
        }
        Body::ClassDefine(define) => {
            encoder.u32(define.id.0);
            encoder.u8(define.namespace as u8);
            encoder.short_str(define.name.as_str());
            encoder.u16(define.asset.0);
            encoder.u32(define.flags.bits());
        }
        Body::Purchase(purchase) => {
            encode_header(&mut encoder, &purchase.header);
            encoder.u64(purchase.customer);
            crate::loyalty::codec::encode_lines(&mut encoder, &purchase.lines);
            // Decided by the shard: after the inputs, outside the fingerprint.
            crate::loyalty::codec::encode_outcome(&mut encoder, &purchase.outcome);
        }
        Body::LotsExpire(expire) => {
            encoder.u64(expire.id.0);
            encoder.u64(expire.customer);
            encoder.u8(u8::try_from(expire.lots.len()).expect("at most 255 lots per record"));
            for part in &expire.lots {
                crate::loyalty::codec::encode_part(&mut encoder, part);
            }
        }
        Body::RulesDefine(define) => {
            encoder.u32(define.version);
            encoder.u64(define.effective_at.0);
            crate::loyalty::codec::encode_accounts(&mut encoder, &define.accounts);
            crate::loyalty::codec::encode_rules(&mut encoder, &define.rules);
            crate::loyalty::codec::encode_settings(&mut encoder, &define.accounts, &define.rules);
        }
        Body::PurchaseChange(change) => encode_change(&mut encoder, change),
        Body::PurchaseRelease(release) => {
            encoder.u64(release.id.0);
            encoder.u64(release.purchase.0);
        }
        Body::RateDefine(define) => {
            encoder.u32(define.version);
            encoder.u64(define.effective_at.0);
            crate::loyalty::codec::encode_rate_terms(&mut encoder, &define.terms);
        }
        Body::Conversion(conversion) => {
            encode_header(&mut encoder, &conversion.header);
            encoder.u64(conversion.customer);
            encoder.u16(conversion.from.0);
            encoder.u16(conversion.to.0);
            encoder.u64(conversion.amount.get());
            // Decided by the shard: last, outside the fingerprint.
            let priced = &conversion.priced;
            encoder.u32(priced.version);
            encoder.u64(priced.credited);
            encoder.u64(priced.from_value);
            encoder.u64(priced.to_value);
        }
    }
}

/// Decodes the payload of a record of `kind`.
pub fn decode_body(kind: RecordKind, payload: &[u8]) -> Result<Body, DecodeError> {
    let mut decoder = Decoder::new(payload);
    let body = match kind {
        RecordKind::Transaction => {
            let header = decode_header(&mut decoder)?;
            let postings = decode_postings(&mut decoder)?;
            Body::Transaction(Transaction { header, postings })
        }
        RecordKind::HoldCreate => Body::HoldCreate(HoldCreate {
            header: decode_header(&mut decoder)?,
            posting: decode_posting(&mut decoder)?,
            timeout_nanos: decoder.u64("timeout")?,
        }),
        RecordKind::HoldCapture => Body::HoldCapture(HoldCapture {
            header: decode_header(&mut decoder)?,
            hold: TxId(decoder.u64("hold")?),
            amount: Amount::new(decoder.u64("capture amount")?),
        }),
        RecordKind::HoldVoid => Body::HoldVoid(HoldVoid {
            header: decode_header(&mut decoder)?,
            hold: TxId(decoder.u64("hold")?),
        }),
        RecordKind::HoldExpire => Body::HoldExpire(HoldExpire {
            id: TxId(decoder.u64("tx id")?),
            hold: TxId(decoder.u64("hold")?),
        }),
        RecordKind::TransferOut => Body::TransferOut(TransferOut {
            header: decode_header(&mut decoder)?,
            source: decode_account_id(&mut decoder)?,
            destination: decode_account_id(&mut decoder)?,
            asset: AssetId(decoder.u16("asset")?),
            amount: decode_amount(&mut decoder, "amount")?,
            destination_shard: decode_shard(&mut decoder, "destination shard")?,
            sequence: decoder.u64("sequence")?,
        }),
        RecordKind::TransferIn => Body::TransferIn(TransferIn {
            id: TxId(decoder.u64("tx id")?),
            source_shard: decode_shard(&mut decoder, "source shard")?,
            sequence: decoder.u64("sequence")?,
            source_tx: TxId(decoder.u64("source tx")?),
            source: decode_account_id(&mut decoder)?,
            destination: decode_account_id(&mut decoder)?,
            asset: AssetId(decoder.u16("asset")?),
            amount: decode_amount(&mut decoder, "amount")?,
            accepted: decode_bool(&mut decoder, "accepted")?,
        }),
        RecordKind::Reversal => {
            let header = decode_header(&mut decoder)?;
            let original = TxId(decoder.u64("original tx")?);
            let postings = decode_postings(&mut decoder)?;
            Body::Reversal(Reversal { header, original, postings })
        }
        RecordKind::TransferSettle => Body::TransferSettle(TransferSettle {
            id: TxId(decoder.u64("tx id")?),
            destination_shard: decode_shard(&mut decoder, "destination shard")?,
            sequence: decoder.u64("sequence")?,
            accepted: decode_bool(&mut decoder, "accepted")?,
        }),
        RecordKind::AssetDefine => {
            let id = AssetId(decoder.u16("asset id")?);
            let code = decoder.short_str("asset code", NAME_BYTES_MAX)?;
            let code = Name::asset(code)
                .map_err(|_| DecodeError::Invalid { field: "asset code", value: 0 })?;
            let scale = decoder.u8("asset scale")?;
            Body::AssetDefine(AssetDefine { id, code, scale })
        }
        RecordKind::ClassDefine => {
            let id = ClassId(decoder.u32("class id")?);
            let namespace = decoder.u8("namespace")?;
            let namespace = Namespace::from_u8(namespace)
                .ok_or(DecodeError::Invalid { field: "namespace", value: u128::from(namespace) })?;
            let name = decoder.short_str("class name", NAME_BYTES_MAX)?;
            let name = Name::class(name)
                .map_err(|_| DecodeError::Invalid { field: "class name", value: 0 })?;
            let asset = AssetId(decoder.u16("asset")?);
            let flags = decoder.u32("flags")?;
            let flags = AccountFlags::from_bits(flags)
                .ok_or(DecodeError::Invalid { field: "flags", value: u128::from(flags) })?;
            Body::ClassDefine(ClassDefine { id, namespace, name, asset, flags })
        }
        RecordKind::Purchase => Body::Purchase(Purchase {
            header: decode_header(&mut decoder)?,
            customer: decoder.u64("customer")?,
            lines: crate::loyalty::codec::decode_lines(&mut decoder)?,
            outcome: crate::loyalty::codec::decode_outcome(&mut decoder)?,
        }),
        RecordKind::LotsExpire => {
            let id = TxId(decoder.u64("tx id")?);
            let customer = decoder.u64("customer")?;
            let count = decoder.u8("lot count")?;
            if count == 0 {
                return Err(DecodeError::Invalid { field: "lot count", value: 0 });
            }
            let lots = (0..count)
                .map(|_| crate::loyalty::codec::decode_part(&mut decoder))
                .collect::<Result<_, _>>()?;
            Body::LotsExpire(LotsExpire { id, customer, lots })
        }
        RecordKind::RulesDefine => {
            let version = decoder.u32("rule version")?;
            let effective_at = Timestamp(decoder.u64("effective at")?);
            let mut accounts = crate::loyalty::codec::decode_accounts(&mut decoder)?;
            let rules = crate::loyalty::codec::decode_version_rules(
                &mut decoder,
                &mut accounts,
                crate::loyalty::codec::Settings::IfAny,
            )?;
            Body::RulesDefine(RulesDefine {
                version,
                effective_at,
                accounts,
                rules: std::sync::Arc::new(rules),
            })
        }
        RecordKind::PurchaseSettle | RecordKind::PurchaseFail | RecordKind::PurchaseRefund => {
            decode_change(kind, &mut decoder)?
        }
        RecordKind::PurchaseRelease => Body::PurchaseRelease(PurchaseRelease {
            id: TxId(decoder.u64("tx id")?),
            purchase: TxId(decoder.u64("purchase")?),
        }),
        RecordKind::RateDefine => Body::RateDefine(RateDefine {
            version: decoder.u32("rate version")?,
            effective_at: Timestamp(decoder.u64("effective at")?),
            terms: crate::loyalty::codec::decode_rate_terms(&mut decoder)?,
        }),
        RecordKind::Conversion => {
            let header = decode_header(&mut decoder)?;
            let customer = decoder.u64("customer")?;
            let from = AssetId(decoder.u16("from asset")?);
            let to = AssetId(decoder.u16("to asset")?);
            let amount = decode_amount(&mut decoder, "amount")?;
            let priced = crate::loyalty::exchange::Priced {
                version: decoder.u32("rate version")?,
                credited: decoder.u64("credited")?,
                from_value: decoder.u64("from value")?,
                to_value: decoder.u64("to value")?,
            };
            if priced.version == 0 || priced.credited == 0 {
                return Err(DecodeError::Invalid { field: "conversion outcome", value: 0 });
            }
            Body::Conversion(Conversion { header, customer, from, to, amount, priced })
        }
    };
    decoder.finish()?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TerminalId;

    fn annotated(key: u128, reason: &str) -> TxHeader {
        let mut header = header(key);
        header.terminal = TerminalId(0);
        header.metadata.annotation =
            Some(std::sync::Arc::new(Annotation::new("ops.anna", reason).unwrap()));
        header
    }

    #[test]
    fn an_annotation_round_trips_and_is_part_of_the_request() {
        let transaction = |header: TxHeader| {
            Body::Transaction(Transaction { header, postings: smallvec::smallvec![posting(5)] })
        };
        let purchase = |header: TxHeader, earned: u64| {
            let outcome = crate::loyalty::pricing::PurchaseOutcome {
                earned,
                base: earned,
                rules_version: 1,
                ..Default::default()
            };
            let lines = smallvec::smallvec![crate::loyalty::Line {
                category: 1,
                amount: 9,
                excluded: false
            }];
            Body::Purchase(Purchase { header, customer: 5, lines, outcome })
        };
        let print = |body: &Body| {
            let mut bytes = Vec::new();
            encode_body(body, &mut bytes);
            assert_eq!(decode_body(body.kind(), &bytes).as_ref(), Ok(body), "round trip");
            for len in 0..bytes.len() {
                assert!(decode_body(body.kind(), &bytes[..len]).is_err(), "cut at {len}");
            }
            fingerprint(body.kind(), &bytes)
        };
        let plain = print(&transaction(header(1)));
        let noted = print(&transaction(annotated(1, "goodwill")));
        assert_ne!(plain, noted);
        assert_ne!(noted, print(&transaction(annotated(1, "another reason"))));
        // The outcome of an annotated purchase stays outside its fingerprint: the header's
        // end is found past the annotation.
        assert_eq!(print(&purchase(annotated(2, "x"), 1)), print(&purchase(annotated(2, "x"), 7)));
        assert_ne!(print(&purchase(annotated(2, "x"), 1)), print(&purchase(annotated(2, "y"), 1)));
        // A bad actor or reason, or bit 6 set, does not decode.
        let mut bytes = Vec::new();
        encode_body(&transaction(annotated(1, "goodwill")), &mut bytes);
        let mut flipped = bytes.clone();
        flipped[RECEIPT_LENGTH_OFFSET] |= 0x40;
        assert!(decode_body(RecordKind::Transaction, &flipped).is_err());
        let reason_at = bytes.len() - 2 - POSTING_BYTES - "goodwill".len();
        let mut control = bytes.clone();
        control[reason_at] = b'\n';
        assert!(decode_body(RecordKind::Transaction, &control).is_err());
        assert!(Annotation::new("ops anna", "x").is_err());
        assert!(Annotation::new("ops", " ").is_err());
        assert!(Annotation::new("ops", &"x".repeat(513)).is_err());
    }

    fn header(key: u128) -> TxHeader {
        TxHeader {
            id: TxId(42),
            kind: TxKind::PURCHASE,
            terminal: TerminalId(7),
            idempotency: IdempotencyKey::new(key),
            metadata: Metadata {
                store: 12,
                category: 3,
                receipt: Receipt::new("R-1").unwrap(),
                annotation: None,
            },
        }
    }

    fn posting(amount: u64) -> Posting {
        Posting {
            debit: AccountId::new(ClassId(2), 0),
            credit: AccountId::new(ClassId(1), 99),
            asset: AssetId(0),
            amount: Amount::new(amount).unwrap(),
        }
    }

    fn change(reference: PurchaseRef, event: PurchaseEvent) -> PurchaseChange {
        let outcome = TransitionOutcome {
            purchase: TxId(77),
            customer: 99,
            state: 4,
            refunded: 1_234,
            earned: 12,
            bonus: 3,
            cashback: 4,
            points_owed: 2,
            cashback_owed: 1,
            tier_after: 1,
        };
        PurchaseChange { header: header(6), reference, event, outcome }
    }

    #[test]
    fn a_transitions_fingerprint_covers_the_request_not_the_outcome() {
        let encode = |body: &PurchaseChange| {
            let mut bytes = Vec::new();
            let body = Body::PurchaseChange(body.clone());
            encode_body(&body, &mut bytes);
            fingerprint(body.kind(), &bytes)
        };
        for event in [
            PurchaseEvent::Settle,
            PurchaseEvent::RefundAmount(Amount::new(5).unwrap()),
            PurchaseEvent::RefundLines(smallvec::smallvec![crate::loyalty::Line {
                category: 1,
                amount: 5,
                excluded: false
            }]),
        ] {
            let base = change(PurchaseRef::Id(TxId(77)), event);
            let decided = PurchaseChange {
                outcome: TransitionOutcome { earned: 1, ..base.outcome },
                ..base.clone()
            };
            assert_eq!(encode(&base), encode(&decided));
            let other = PurchaseChange { reference: PurchaseRef::Id(TxId(78)), ..base.clone() };
            assert_ne!(encode(&base), encode(&other));
        }
        let amount = |value| {
            change(
                PurchaseRef::Id(TxId(77)),
                PurchaseEvent::RefundAmount(Amount::new(value).unwrap()),
            )
        };
        assert_ne!(encode(&amount(5)), encode(&amount(6)));
        // A settlement and a failure of one purchase differ by their kind (the seed).
        let settle = change(PurchaseRef::Id(TxId(77)), PurchaseEvent::Settle);
        let fail = change(PurchaseRef::Id(TxId(77)), PurchaseEvent::Fail);
        assert_ne!(encode(&settle), encode(&fail));
    }

    #[test]
    fn every_body_round_trips() {
        let bodies = vec![
            Body::Transaction(Transaction {
                header: header(1),
                postings: smallvec::smallvec![posting(5), posting(6)],
            }),
            Body::HoldCreate(HoldCreate {
                header: header(2),
                posting: posting(7),
                timeout_nanos: 9,
            }),
            Body::HoldCapture(HoldCapture { header: header(3), hold: TxId(4), amount: None }),
            Body::HoldCapture(HoldCapture {
                header: header(3),
                hold: TxId(4),
                amount: Amount::new(2),
            }),
            Body::HoldVoid(HoldVoid { header: header(4), hold: TxId(4) }),
            Body::HoldExpire(HoldExpire { id: TxId(8), hold: TxId(4) }),
            Body::TransferOut(TransferOut {
                header: header(5),
                destination_shard: ShardId::new(1).unwrap(),
                sequence: 3,
                source: posting(1).credit,
                destination: AccountId::new(ClassId(1), 100),
                asset: AssetId(0),
                amount: Amount::new(10).unwrap(),
            }),
            Body::TransferIn(TransferIn {
                id: TxId(9),
                source_shard: ShardId::new(0).unwrap(),
                sequence: 3,
                source_tx: TxId(8),
                source: posting(1).credit,
                destination: AccountId::new(ClassId(1), 100),
                asset: AssetId(0),
                amount: Amount::new(10).unwrap(),
                accepted: true,
            }),
            Body::TransferSettle(TransferSettle {
                id: TxId(10),
                destination_shard: ShardId::new(1).unwrap(),
                sequence: 3,
                accepted: false,
            }),
            Body::AssetDefine(AssetDefine {
                id: AssetId(0),
                code: Name::asset("PTS").unwrap(),
                scale: 0,
            }),
            Body::ClassDefine(ClassDefine {
                id: ClassId(1),
                namespace: Namespace::Customer,
                name: Name::class("points").unwrap(),
                asset: AssetId(0),
                flags: AccountFlags::NO_OVERDRAFT,
            }),
            Body::RulesDefine(crate::ledger::record::RulesDefine {
                version: 2,
                effective_at: Timestamp(5),
                accounts: crate::loyalty::programme::ProgrammeAccounts {
                    points: ClassId(1),
                    issuance: ClassId(2),
                    breakage: ClassId(3),
                    cashback: Some((ClassId(4), ClassId(5))),
                    clawback: Some(ClassId(6)),
                    cashback_clawback: Some(ClassId(7)),
                },
                rules: std::sync::Arc::new({
                    let mut rules = crate::testing::loyalty::example_rules();
                    rules.purchases.refund_days = 30;
                    rules.purchases.pending =
                        crate::loyalty::rules::PendingPoints::Held { days: 5 };
                    rules.purchases.point_value =
                        crate::loyalty::rules::PointValue { minor_units: 3, points: 4 };
                    rules
                }),
            }),
            Body::PurchaseChange(change(PurchaseRef::Id(TxId(77)), PurchaseEvent::Settle)),
            Body::PurchaseChange(change(PurchaseRef::Id(TxId(77)), PurchaseEvent::Fail)),
            Body::PurchaseChange(change(
                PurchaseRef::Receipt { customer: 99 },
                PurchaseEvent::RefundAmount(Amount::new(1_234).unwrap()),
            )),
            Body::PurchaseChange(change(
                PurchaseRef::Id(TxId(77)),
                PurchaseEvent::RefundLines(smallvec::smallvec![
                    crate::loyalty::Line { category: 20, amount: 5_000, excluded: false },
                    crate::loyalty::Line { category: 40, amount: 2_500, excluded: true },
                ]),
            )),
            Body::PurchaseRelease(PurchaseRelease { id: TxId(11), purchase: TxId(77) }),
            Body::RateDefine(RateDefine { version: 3, effective_at: Timestamp(9), terms: terms() }),
            Body::Conversion(conversion()),
        ];
        for body in bodies {
            let mut bytes = Vec::new();
            encode_body(&body, &mut bytes);
            assert_eq!(decode_body(body.kind(), &bytes), Ok(body.clone()));
            // Any truncation is a typed error, but one: a rule version cut before its settings
            // is a rule version of format 4 (the frame's length and CRC say where it ends).
            let settings_start = match &body {
                Body::RulesDefine(_) => bytes.len() - crate::loyalty::codec::SETTINGS_BYTES,
                _ => usize::MAX,
            };
            for len in 0..bytes.len() {
                let decoded = decode_body(body.kind(), &bytes[..len]);
                if len == settings_start {
                    assert!(decoded.is_ok_and(|decoded| decoded != body));
                } else {
                    assert!(decoded.is_err());
                }
            }
            bytes.push(0);
            assert_eq!(decode_body(body.kind(), &bytes), Err(DecodeError::Trailing(1)));
        }
    }

    fn terms() -> crate::loyalty::exchange::RateTerms {
        use crate::loyalty::exchange::{ExchangeSide, RateTerms};
        use crate::loyalty::rules::PointValue;
        let side = |asset, class| ExchangeSide {
            asset: AssetId(asset),
            customer: ClassId(class),
            fund: AccountId::new(ClassId(class + 1), 0),
            money: AccountId::new(ClassId(9), u64::from(asset) + 1),
            value: PointValue { minor_units: u64::from(asset) + 1, points: 3 },
        };
        RateTerms {
            from: side(1, 5),
            to: side(0, 1),
            numerator: 3,
            denominator: 2,
            money: AssetId(2),
        }
    }

    fn conversion() -> Conversion {
        Conversion {
            header: header(12),
            customer: 42,
            from: AssetId(1),
            to: AssetId(0),
            amount: Amount::new(7).unwrap(),
            priced: crate::loyalty::exchange::Priced {
                version: 3,
                credited: 10,
                from_value: 4,
                to_value: 3,
            },
        }
    }

    #[test]
    fn a_conversions_fingerprint_covers_the_request_not_the_price() {
        let encode = |conversion: Conversion| {
            let mut bytes = Vec::new();
            let body = Body::Conversion(conversion);
            encode_body(&body, &mut bytes);
            fingerprint(body.kind(), &bytes)
        };
        let base = conversion();
        let repriced = Conversion {
            priced: crate::loyalty::exchange::Priced { version: 4, credited: 11, ..base.priced },
            ..base.clone()
        };
        assert_eq!(encode(base.clone()), encode(repriced));
        let other_amount = Conversion { amount: Amount::new(8).unwrap(), ..base.clone() };
        assert_ne!(encode(base.clone()), encode(other_amount));
        assert_ne!(encode(base.clone()), encode(Conversion { to: AssetId(3), ..base.clone() }));
        assert_ne!(encode(base.clone()), encode(Conversion { customer: 43, ..base.clone() }));
    }

    #[test]
    fn fingerprint_ignores_id_and_key_but_not_the_request() {
        let encode = |body: &Body| {
            let mut bytes = Vec::new();
            encode_body(body, &mut bytes);
            fingerprint(body.kind(), &bytes)
        };
        let base = Transaction { header: header(1), postings: smallvec::smallvec![posting(5)] };
        let mut other_id = base.clone();
        other_id.header.id = TxId(43);
        assert_eq!(encode(&Body::Transaction(base.clone())), encode(&Body::Transaction(other_id)));
        let mut other_amount = base.clone();
        other_amount.postings[0] = posting(6);
        assert_ne!(
            encode(&Body::Transaction(base.clone())),
            encode(&Body::Transaction(other_amount))
        );
        let mut other_receipt = base.clone();
        other_receipt.header.metadata.receipt = Receipt::new("R-2").unwrap();
        assert_ne!(encode(&Body::Transaction(base)), encode(&Body::Transaction(other_receipt)));
    }
}
