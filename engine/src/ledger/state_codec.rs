//! The ledger state as bytes: the body of a snapshot (docs/snapshot-format.md, "Body").
//!
//! The encoding is canonical: collections whose in-memory order is a hash map's are sorted by
//! key, and the time-ordered tables keep their insertion order, so two equal ledgers encode to
//! the same bytes. The snapshot file adds the header and the checksum around this body.

use super::account::{Account, AccountFlags, AccountId, AssetId, Name, Namespace};
use super::command::Committed;
use super::registry::{AssetDef, ClassDef};
use super::{
    AssetTotals, Hold, HoldClosure, IdempotencyEntry, Ledger, LedgerConfig, OutboundTransfer,
};
use crate::amount::Amount;
use crate::codec::{DecodeError, Decoder, Encoder};
use crate::ids::{IdempotencyKey, Lsn, ShardId, TerminalId, Timestamp, TxId, TxIdGenerator};
use crate::limits::NAME_BYTES_MAX;
use crate::wal::payload::{
    POSTING_BYTES, decode_account_id, decode_posting, encode_account_id, encode_posting,
};

const ACCOUNT_ENTRY_BYTES: usize = 8 + 4 + 4 * 16;

/// Reads a u64 count and bounds it by the bytes left, so garbage cannot make us allocate.
fn count(
    decoder: &mut Decoder<'_>,
    field: &'static str,
    entry_bytes: usize,
) -> Result<usize, DecodeError> {
    let value = decoder.u64(field)?;
    let max = decoder.remaining() / entry_bytes.max(1);
    usize::try_from(value)
        .ok()
        .filter(|count| *count <= max)
        .ok_or(DecodeError::Invalid { field, value: u128::from(value) })
}

fn length(len: usize) -> u64 {
    u64::try_from(len).expect("collection lengths fit in u64")
}

impl Ledger {
    /// Appends the canonical encoding of the state to `out`.
    pub fn encode_state(&self, out: &mut Vec<u8>) {
        let mut encoder = Encoder::new(out);
        encoder.u64(self.lsn.0);
        encoder.u64(self.timestamp.0);
        encoder.u64(self.tx_ids.last().map_or(0, |id| id.0));

        encoder.u32(u32::try_from(self.registry.assets().len()).expect("bounded by u16"));
        for asset in self.registry.assets() {
            encoder.short_str(asset.code.as_str());
            encoder.u8(asset.scale);
        }
        encoder.u32(u32::try_from(self.registry.classes().len()).expect("bounded by u32"));
        for class in self.registry.classes() {
            encoder.u8(class.namespace as u8);
            encoder.short_str(class.name.as_str());
            encoder.u16(class.asset.0);
            encoder.u32(class.flags.bits());
        }

        let mut accounts: Vec<(&AccountId, &Account)> = self.accounts.iter().collect();
        accounts.sort_unstable_by_key(|(id, _)| **id);
        encoder.u64(length(accounts.len()));
        for (id, account) in accounts {
            encode_account_id(&mut encoder, *id);
            encoder.u128(account.debits_pending);
            encoder.u128(account.debits_posted);
            encoder.u128(account.credits_pending);
            encoder.u128(account.credits_posted);
        }

        let mut holds: Vec<(&TxId, &Hold)> = self.holds.iter().collect();
        holds.sort_unstable_by_key(|(id, _)| **id);
        encoder.u64(length(holds.len()));
        for (id, hold) in holds {
            encoder.u64(id.0);
            encode_posting(&mut encoder, &hold.posting);
            encoder.u64(hold.expires_at.0);
        }

        let (previous, closed) = self.holds_closed.iter();
        encoder.u64(length(self.holds_closed.len()));
        encoder.u64(length(previous));
        for (inserted, id, closure) in closed {
            encoder.u64(inserted.0);
            encoder.u64(id.0);
            encoder.u8(*closure as u8);
        }
        encoder.u64(self.holds_closed.evicted_early());

        let (previous, keys) = self.idempotency.iter();
        encoder.u64(length(self.idempotency.len()));
        encoder.u64(length(previous));
        for (inserted, (terminal, key), entry) in keys {
            encoder.u64(inserted.0);
            encoder.u32(terminal.0);
            encoder.u128(key.get());
            encoder.u64(entry.fingerprint);
            encoder.u64(entry.committed.tx_id.0);
            encoder.u64(entry.committed.lsn.0);
        }
        encoder.u64(self.idempotency.evicted_early());

        encoder.u64(length(self.transfers_out.len()));
        for ((shard, sequence), transfer) in &self.transfers_out {
            encoder.u16(shard.index());
            encoder.u64(*sequence);
            encoder.u64(transfer.tx_id.0);
            encoder.u64(transfer.lsn.0);
            encode_account_id(&mut encoder, transfer.source);
            encode_account_id(&mut encoder, transfer.destination);
            encoder.u16(transfer.asset.0);
            encoder.u64(transfer.amount.get());
        }
        for next in &self.transfers_out_next {
            encoder.u64(*next);
        }
        for last in &self.transfers_in_last {
            encoder.u64(*last);
        }
        encoder.u64(length(self.transfers_in_refused.len()));
        for (shard, sequence) in &self.transfers_in_refused {
            encoder.u16(shard.index());
            encoder.u64(*sequence);
        }
    }

    /// Rebuilds a ledger from `encode_state` bytes. Totals are recomputed from the accounts;
    /// the caller checks invariants afterwards.
    pub fn decode_state(config: LedgerConfig, bytes: &[u8]) -> Result<Ledger, DecodeError> {
        let invalid = |field: &'static str, value: u128| DecodeError::Invalid { field, value };
        let mut ledger = Ledger::new(config);
        let mut decoder = Decoder::new(bytes);
        ledger.lsn = Lsn(decoder.u64("lsn")?);
        ledger.timestamp = Timestamp(decoder.u64("timestamp")?);
        let last_tx = decoder.u64("last tx id")?;
        ledger.tx_ids =
            TxIdGenerator::new(ledger.config.shard, (last_tx != 0).then_some(TxId(last_tx)));

        let assets = decoder.count("asset count", usize::from(u16::MAX))?;
        for index in 0..assets {
            let code = decoder.short_str("asset code", NAME_BYTES_MAX)?;
            let code = Name::asset(code).map_err(|_| invalid("asset code", index as u128))?;
            let scale = decoder.u8("asset scale")?;
            let id =
                AssetId(u16::try_from(index).map_err(|_| invalid("asset count", index as u128))?);
            ledger
                .registry
                .define_asset(AssetDef { id, code, scale })
                .map_err(|_| invalid("asset definition", index as u128))?;
            ledger.totals.push(AssetTotals::default());
        }
        let classes = decoder.count("class count", decoder.remaining())?;
        for index in 0..classes {
            let namespace = decoder.u8("class namespace")?;
            let namespace = Namespace::from_u8(namespace)
                .ok_or(invalid("class namespace", u128::from(namespace)))?;
            let name = decoder.short_str("class name", NAME_BYTES_MAX)?;
            let name = Name::class(name).map_err(|_| invalid("class name", index as u128))?;
            let asset = AssetId(decoder.u16("class asset")?);
            let flags = decoder.u32("class flags")?;
            let flags =
                AccountFlags::from_bits(flags).ok_or(invalid("class flags", u128::from(flags)))?;
            let id = ledger.registry.next_class_id();
            ledger
                .registry
                .define_class(ClassDef { id, namespace, name, asset, flags })
                .map_err(|_| invalid("class definition", index as u128))?;
        }

        let accounts = count(&mut decoder, "account count", ACCOUNT_ENTRY_BYTES)?;
        ledger.accounts.reserve(accounts);
        let mut previous: Option<AccountId> = None;
        for _ in 0..accounts {
            let id = decode_account_id(&mut decoder)?;
            if previous.is_some_and(|previous| previous >= id) {
                return Err(invalid("account order", u128::from(id.owner())));
            }
            previous = Some(id);
            let account = Account {
                debits_pending: decoder.u128("debits pending")?,
                debits_posted: decoder.u128("debits posted")?,
                credits_pending: decoder.u128("credits pending")?,
                credits_posted: decoder.u128("credits posted")?,
            };
            let (asset, _, _) = ledger
                .registry
                .account_terms(id)
                .ok_or(invalid("account class", u128::from(id.class().0)))?;
            let totals = &mut ledger.totals[usize::from(asset.0)];
            let sums = [
                (&mut totals.debits_pending, account.debits_pending),
                (&mut totals.debits_posted, account.debits_posted),
                (&mut totals.credits_pending, account.credits_pending),
                (&mut totals.credits_posted, account.credits_posted),
            ];
            for (total, value) in sums {
                *total = total.checked_add(value).ok_or(invalid("asset totals", value))?;
            }
            ledger.accounts.insert(id, account);
        }

        let holds = count(&mut decoder, "hold count", 8 + POSTING_BYTES + 8)?;
        for _ in 0..holds {
            let id = TxId(decoder.u64("hold id")?);
            let posting = decode_posting(&mut decoder)?;
            let expires_at = Timestamp(decoder.u64("hold expires at")?);
            if ledger.holds.insert(id, Hold { posting, expires_at }).is_some() {
                return Err(invalid("hold id", u128::from(id.0)));
            }
            ledger.hold_deadlines.insert((expires_at, id));
        }

        let closed = count(&mut decoder, "closed hold count", 17)?;
        let previous =
            usize::try_from(decoder.u64("closed hold generation")?).unwrap_or(usize::MAX);
        let mut entries = Vec::with_capacity(closed);
        for _ in 0..closed {
            let inserted = Timestamp(decoder.u64("closed hold time")?);
            let id = TxId(decoder.u64("closed hold id")?);
            let closure = match decoder.u8("closed hold state")? {
                1 => HoldClosure::Captured,
                2 => HoldClosure::Voided,
                3 => HoldClosure::Expired,
                other => return Err(invalid("closed hold state", u128::from(other))),
            };
            entries.push((inserted, id, closure));
        }
        let evicted = decoder.u64("closed holds evicted")?;
        if !ledger.holds_closed.restore(previous, entries.into_iter(), evicted) {
            return Err(invalid("closed hold entries", closed as u128));
        }

        let keys = count(&mut decoder, "idempotency count", 52)?;
        let previous =
            usize::try_from(decoder.u64("idempotency generation")?).unwrap_or(usize::MAX);
        let mut entries = Vec::with_capacity(keys);
        for _ in 0..keys {
            let inserted = Timestamp(decoder.u64("idempotency time")?);
            let terminal = TerminalId(decoder.u32("idempotency terminal")?);
            let key = decoder.u128("idempotency key")?;
            let key = IdempotencyKey::new(key).ok_or(invalid("idempotency key", 0))?;
            let fingerprint = decoder.u64("idempotency fingerprint")?;
            let tx_id = TxId(decoder.u64("idempotency tx id")?);
            let lsn = Lsn(decoder.u64("idempotency lsn")?);
            let committed = Committed { tx_id, lsn, timestamp: inserted };
            entries.push((inserted, (terminal, key), IdempotencyEntry { fingerprint, committed }));
        }
        let evicted = decoder.u64("idempotency evicted")?;
        if !ledger.idempotency.restore(previous, entries.into_iter(), evicted) {
            return Err(invalid("idempotency entries", keys as u128));
        }

        let shard_count = ledger.config.shard_count;
        let decode_shard = |decoder: &mut Decoder<'_>| -> Result<ShardId, DecodeError> {
            let index = decoder.u16("shard")?;
            ShardId::new(index)
                .filter(|shard| shard.index() < shard_count)
                .ok_or(invalid("shard", u128::from(index)))
        };
        let transfers = count(&mut decoder, "transfer count", 2 + 8 + 8 + 8 + 12 + 12 + 2 + 8)?;
        for _ in 0..transfers {
            let shard = decode_shard(&mut decoder)?;
            let sequence = decoder.u64("transfer sequence")?;
            let tx_id = TxId(decoder.u64("transfer tx id")?);
            let lsn = Lsn(decoder.u64("transfer lsn")?);
            let source = decode_account_id(&mut decoder)?;
            let destination = decode_account_id(&mut decoder)?;
            let asset = AssetId(decoder.u16("transfer asset")?);
            let amount = decoder.u64("transfer amount")?;
            let amount = Amount::new(amount).ok_or(invalid("transfer amount", 0))?;
            let transfer = OutboundTransfer { tx_id, lsn, source, destination, asset, amount };
            ledger.transfers_out.insert((shard, sequence), transfer);
        }
        for next in &mut ledger.transfers_out_next {
            *next = decoder.u64("transfer next sequence")?;
        }
        for last in &mut ledger.transfers_in_last {
            *last = decoder.u64("transfer last sequence")?;
        }
        let refused = count(&mut decoder, "refused transfer count", 10)?;
        for _ in 0..refused {
            let shard = decode_shard(&mut decoder)?;
            let sequence = decoder.u64("refused transfer sequence")?;
            ledger.transfers_in_refused.insert((shard, sequence));
        }
        decoder.finish()?;
        Ok(ledger)
    }
}
