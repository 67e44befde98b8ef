//! The ledger state as bytes: the body of a snapshot (docs/snapshot-format.md, "Body").
//!
//! The encoding is canonical: collections whose in-memory order is a hash map's are sorted by
//! key, and the time-ordered tables keep their insertion order, so two equal ledgers encode to
//! the same bytes. The snapshot file adds the header and the checksum around this body.

use super::account::{Account, AccountFlags, AccountId, AssetId, Name, Namespace};
use super::command::Committed;
use super::history::{HistoryEntry, NO_ENTRY};
use super::record::TxKind;
use super::registry::{AssetDef, ClassDef};
use super::{
    AssetTotals, Hold, HoldClosure, IdempotencyEntry, Ledger, LedgerConfig, OutboundTransfer,
};
use crate::amount::Amount;
use crate::codec::{DecodeError, Decoder, Encoder};
use crate::ids::{IdempotencyKey, Lsn, ShardId, TerminalId, Timestamp, TxId, TxIdGenerator};
use crate::limits::NAME_BYTES_MAX;
use crate::reject::RejectCode;
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

/// A copy of a shard's state, taken at a batch boundary and encoded off the shard thread.
///
/// It holds only what a snapshot needs, as plain vectors: taking it is a copy, not a clone of
/// the ledger's tables. The snapshotter prepares one ahead of time (`StateCapture::prepared`:
/// allocated and with every page already faulted in), so the shard's pause is a copy into
/// mapped memory (docs/performance.md, "Snapshots").
#[derive(Debug, Clone)]
pub struct StateCapture {
    shard: ShardId,
    shard_count: u16,
    lsn: Lsn,
    timestamp: Timestamp,
    last_tx_id: Option<TxId>,
    registry: super::registry::Registry,
    accounts: Vec<(AccountId, Account)>,
    holds: Vec<(TxId, Hold)>,
    holds_closed_previous: usize,
    holds_closed: Vec<(Timestamp, TxId, HoldClosure)>,
    holds_closed_evicted: u64,
    idempotency_previous: usize,
    idempotency: Vec<(Timestamp, (TerminalId, IdempotencyKey), IdempotencyEntry)>,
    idempotency_evicted: u64,
    idempotency_forgotten: Lsn,
    transfers_out: Vec<((ShardId, u64), OutboundTransfer)>,
    transfers_out_next: Vec<u64>,
    transfers_in_last: Vec<u64>,
    transfers_in_refused: Vec<(ShardId, u64)>,
    history_first: u64,
    history: Vec<HistoryEntry>,
    programme: crate::loyalty::programme::Programme,
    members: crate::loyalty::members::Members,
    /// The refundable purchases and their receipt keys (the receipt index and the queue of held
    /// purchases follow from them on load, and are not copied).
    purchases: Vec<(crate::loyalty::purchases::Refundable, u64)>,
    flows: crate::loyalty::liability::Flows,
    rates: crate::loyalty::exchange::Rates,
}

/// Bytes of an encoded history entry.
const HISTORY_ENTRY_BYTES: usize = 8 + 8 + 2 + 12 + 12 + 8 + 1 + 1 + 1 + 8;

/// Fills `vector` to `capacity` and empties it again: the memory is allocated and every page
/// written once, so later pushes up to `capacity` neither allocate nor fault.
fn prefault<T: Copy>(vector: &mut Vec<T>, capacity: usize, filler: T) {
    vector.clear();
    vector.resize(capacity, filler);
    vector.clear();
}

impl StateCapture {
    fn empty(shard: ShardId) -> StateCapture {
        StateCapture {
            shard,
            shard_count: 1,
            lsn: Lsn::ZERO,
            timestamp: Timestamp(0),
            last_tx_id: None,
            registry: super::registry::Registry::default(),
            accounts: Vec::new(),
            holds: Vec::new(),
            holds_closed_previous: 0,
            holds_closed: Vec::new(),
            holds_closed_evicted: 0,
            idempotency_previous: 0,
            idempotency: Vec::new(),
            idempotency_evicted: 0,
            idempotency_forgotten: Lsn::ZERO,
            transfers_out: Vec::new(),
            transfers_out_next: Vec::new(),
            transfers_in_last: Vec::new(),
            transfers_in_refused: Vec::new(),
            history_first: 0,
            history: Vec::new(),
            programme: crate::loyalty::programme::Programme::default(),
            members: crate::loyalty::members::Members::default(),
            purchases: Vec::new(),
            flows: crate::loyalty::liability::Flows::default(),
            rates: crate::loyalty::exchange::Rates::default(),
        }
    }

    /// A capture with room for `accounts` accounts, `keys` idempotency keys and `history`
    /// history entries, allocated and faulted in. Made by the snapshotter, off the shard thread.
    pub fn prepared(accounts: usize, keys: usize, history: usize) -> StateCapture {
        let mut capture = StateCapture::empty(ShardId::new(0).expect("shard 0"));
        prefault(
            &mut capture.accounts,
            accounts,
            (AccountId::new(super::account::ClassId(0), 0), Account::ZERO),
        );
        let key = IdempotencyKey::new(1).expect("non-zero");
        let committed =
            Committed { tx_id: TxId(0), lsn: Lsn::ZERO, timestamp: Timestamp(0), amount: 0 };
        let entry = IdempotencyEntry::new(0, committed);
        prefault(&mut capture.idempotency, keys, (Timestamp(0), (TerminalId(0), key), entry));
        let account = AccountId::new(super::account::ClassId(0), 0);
        let filler = HistoryEntry {
            tx_id: TxId(0),
            timestamp: Timestamp(0),
            kind: TxKind::GENERIC,
            account,
            counterparty: account,
            amount: 0,
            flags: 0,
            posting: 0,
            postings: 0,
            previous: NO_ENTRY,
        };
        prefault(&mut capture.history, history, filler);
        capture
    }

    /// Whether the buffer has room for `accounts` accounts, `keys` idempotency keys and
    /// `history` history entries without growing (so a capture into it faults no page in).
    pub fn has_room(&self, accounts: usize, keys: usize, history: usize) -> bool {
        self.accounts.capacity() >= accounts
            && self.idempotency.capacity() >= keys
            && self.history.capacity() >= history
    }

    /// The last LSN the capture includes.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// The timestamp of that record.
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    /// The shard.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// Shards of the data directory.
    pub fn shard_count(&self) -> u16 {
        self.shard_count
    }

    /// Accounts captured.
    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// Appends the canonical encoding (docs/snapshot-format.md, "Body") to `out`. Sorts the
    /// accounts and holds in place.
    pub fn encode(&mut self, out: &mut Vec<u8>) {
        self.encode_version(out, crate::snapshot::SNAPSHOT_VERSION);
    }

    /// The encoding of snapshot format `version` (1: without the history section; 2: without
    /// refunds in the idempotency entries and the origin of transfers; 3: without the amount of
    /// each remembered write; 4: without what the key index needs: the LSN forgotten through
    /// and each unsettled transfer's fingerprint and time; 5: without the loyalty programme; 6:
    /// without the members and parked points; 7: without the rule versions' settings and the
    /// refundable purchases; 8: without the exchange rates),
    /// so that tools can compare an old snapshot with a replayed state.
    pub fn encode_version(&mut self, out: &mut Vec<u8>, version: u16) {
        self.accounts.sort_unstable_by_key(|(id, _)| *id);
        self.holds.sort_unstable_by_key(|(id, _)| *id);
        let mut encoder = Encoder::new(out);
        encoder.u64(self.lsn.0);
        encoder.u64(self.timestamp.0);
        encoder.u64(self.last_tx_id.map_or(0, |id| id.0));

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

        encoder.u64(length(self.accounts.len()));
        for (id, account) in &self.accounts {
            encode_account_id(&mut encoder, *id);
            encoder.u128(account.debits_pending);
            encoder.u128(account.debits_posted);
            encoder.u128(account.credits_pending);
            encoder.u128(account.credits_posted);
        }

        encoder.u64(length(self.holds.len()));
        for (id, hold) in &self.holds {
            encoder.u64(id.0);
            encode_posting(&mut encoder, &hold.posting);
            encoder.u64(hold.expires_at.0);
        }

        encoder.u64(length(self.holds_closed.len()));
        encoder.u64(length(self.holds_closed_previous));
        for (inserted, id, closure) in &self.holds_closed {
            encoder.u64(inserted.0);
            encoder.u64(id.0);
            encoder.u8(*closure as u8);
        }
        encoder.u64(self.holds_closed_evicted);

        encoder.u64(length(self.idempotency.len()));
        encoder.u64(length(self.idempotency_previous));
        for (inserted, (terminal, key), entry) in &self.idempotency {
            encoder.u64(inserted.0);
            encoder.u32(terminal.0);
            encoder.u128(key.get());
            encoder.u64(entry.fingerprint);
            encoder.u64(entry.tx_id.0);
            encoder.u64(entry.lsn.0);
            if version >= 4 {
                encoder.u64(entry.amount);
            }
            if version >= 3 {
                encoder.u8(entry.refused.map_or(0, |code| code.code() as u8));
            }
        }
        encoder.u64(self.idempotency_evicted);
        if version >= 5 {
            encoder.u64(self.idempotency_forgotten.0);
        }

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
            if version >= 3 {
                let (terminal, key) = transfer.origin.map_or((0, 0), |(t, k)| (t.0, k.get()));
                encoder.u32(terminal);
                encoder.u128(key);
            }
            if version >= 5 {
                encoder.u64(transfer.fingerprint);
                encoder.u64(transfer.inserted.0);
            }
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

        if version < 2 {
            return;
        }
        encoder.u64(self.history_first);
        encoder.u64(length(self.history.len()));
        for entry in &self.history {
            encoder.u64(entry.tx_id.0);
            encoder.u64(entry.timestamp.0);
            encoder.u16(entry.kind.0);
            encode_account_id(&mut encoder, entry.account);
            encode_account_id(&mut encoder, entry.counterparty);
            encoder.u64(entry.amount);
            encoder.u8(entry.flags);
            encoder.u8(entry.posting);
            encoder.u8(entry.postings);
            encoder.u64(entry.previous);
        }
        if version < 6 {
            return;
        }
        let versions = self.programme.versions();
        encoder.u32(u32::try_from(versions.len()).expect("at most RULE_VERSIONS_MAX"));
        for rules_version in versions {
            encoder.u32(rules_version.version);
            encoder.u64(rules_version.requested_at.0);
            encoder.u64(rules_version.effective_at.0);
            crate::loyalty::codec::encode_accounts(&mut encoder, &rules_version.accounts);
            crate::loyalty::codec::encode_rules(&mut encoder, &rules_version.rules);
            if version >= 8 {
                crate::loyalty::codec::encode_settings(
                    &mut encoder,
                    &rules_version.accounts,
                    &rules_version.rules,
                );
            }
        }
        if version < 7 {
            return;
        }
        encode_members(&mut encoder, &self.members);
        if version < 8 {
            return;
        }
        encode_purchases(&mut encoder, &self.purchases);
        encode_flows(&mut encoder, &self.flows);
        if version < 9 {
            return;
        }
        encode_rates(&mut encoder, &self.rates);
    }
}

/// Section 18: the exchange rates, in version order.
fn encode_rates(encoder: &mut Encoder<'_>, rates: &crate::loyalty::exchange::Rates) {
    let versions = rates.versions();
    encoder.u32(u32::try_from(versions.len()).expect("at most RATE_VERSIONS_MAX"));
    for rate in versions {
        encoder.u32(rate.version);
        encoder.u64(rate.requested_at.0);
        encoder.u64(rate.effective_at.0);
        crate::loyalty::codec::encode_rate_terms(encoder, &rate.terms);
    }
}

fn decode_rates(decoder: &mut Decoder<'_>, ledger: &mut Ledger) -> Result<(), DecodeError> {
    use crate::loyalty::exchange::{ExchangeRate, RATE_VERSIONS_MAX};
    let count = decoder.count("rate count", RATE_VERSIONS_MAX)?;
    for _ in 0..count {
        let version = decoder.u32("rate version")?;
        let requested_at = Timestamp(decoder.u64("rate requested at")?);
        let effective_at = Timestamp(decoder.u64("rate effective at")?);
        let terms = crate::loyalty::codec::decode_rate_terms(decoder)?;
        let rate = ExchangeRate { version, terms, requested_at, effective_at };
        ledger
            .rates_mut()
            .restore(rate)
            .map_err(|field| DecodeError::Invalid { field, value: u128::from(version) })?;
    }
    Ok(())
}

/// Sections 14 (members, by customer) and 15 (parked points, by transaction).
fn encode_members(encoder: &mut Encoder<'_>, members: &crate::loyalty::members::Members) {
    let mut sorted: Vec<_> = members.iter().collect();
    sorted.sort_unstable_by_key(|(customer, _)| **customer);
    encoder.u64(length(sorted.len()));
    for (customer, member) in sorted {
        encoder.u64(*customer);
        let caps = member.caps();
        encoder.u8(member.tier());
        encoder.u32(caps.day);
        encoder.u64(caps.day_points);
        encoder.u32(caps.month);
        encoder.u64(caps.month_points);
        encoder.u8(u8::try_from(member.months.len()).expect("at most MONTHS_KEPT_MAX"));
        for month in &member.months {
            encoder.u32(month.month);
            encoder.u64(month.points);
        }
        encoder.u32(u32::try_from(member.lots.len()).expect("at most LOTS_PER_MEMBER_MAX"));
        for lot in member.lots.iter() {
            encoder.u64(lot.origin.0);
            encoder.u8(lot.kind as u8);
            encoder.u32(lot.expires_day);
            encoder.u64(lot.amount);
            encoder.u64(lot.remaining);
        }
    }
    let mut parked: Vec<_> = members.parked().collect();
    parked.sort_unstable_by_key(|(tx, _)| **tx);
    encoder.u64(length(parked.len()));
    for (tx, entry) in parked {
        encoder.u64(tx.0);
        encoder.u64(entry.customer);
        encoder.u8(u8::from(entry.in_balance));
        encoder.u32(u32::try_from(entry.parts.len()).expect("at most LOTS_PER_MEMBER_MAX"));
        for part in &entry.parts {
            crate::loyalty::codec::encode_part(encoder, part);
        }
    }
}

/// Bytes of one entry of section 16.
const PURCHASE_ENTRY_BYTES: usize = 8 * 5 + 4 * 4 + 2 + 1 + 1 + 8;

/// Section 16: the refundable purchases, by id.
fn encode_purchases(
    encoder: &mut Encoder<'_>,
    purchases: &[(crate::loyalty::purchases::Refundable, u64)],
) {
    encoder.u64(length(purchases.len()));
    for &(ref entry, receipt) in purchases {
        let gave = entry.gave();
        encoder.u64(entry.id.0);
        encoder.u64(entry.customer);
        encoder.u64(entry.spend);
        encoder.u64(entry.weight);
        encoder.u64(entry.refunded);
        encoder.u32(u32::try_from(gave.earned).expect("entries hold u32 components"));
        encoder.u32(u32::try_from(gave.bonus).expect("entries hold u32 components"));
        encoder.u32(u32::try_from(gave.cashback).expect("entries hold u32 components"));
        encoder.u32(entry.day);
        encoder.u16(entry.version);
        encoder.u8(entry.state as u8);
        encoder.u8(entry.flags);
        encoder.u64(receipt);
    }
}

/// Section 17: points flows by UTC day, oldest first.
fn encode_flows(encoder: &mut Encoder<'_>, flows: &crate::loyalty::liability::Flows) {
    encoder.u64(length(flows.len()));
    for (day, day_flows) in flows.days() {
        encoder.u32(day);
        encoder.u64(day_flows.issued);
        encoder.u64(day_flows.redeemed);
        encoder.u64(day_flows.expired);
        encoder.u64(day_flows.refunded);
    }
}

/// Reads section 17.
fn decode_flows(decoder: &mut Decoder<'_>, ledger: &mut Ledger) -> Result<(), DecodeError> {
    use crate::loyalty::liability::DayFlows;
    let days = count(decoder, "flow day count", 4 + 4 * 8)?;
    for _ in 0..days {
        let day = decoder.u32("flow day")?;
        let flows = DayFlows {
            issued: decoder.u64("points issued")?,
            redeemed: decoder.u64("points redeemed")?,
            expired: decoder.u64("points expired")?,
            refunded: decoder.u64("points refunded")?,
        };
        ledger
            .flows_mut()
            .restore(day, flows)
            .map_err(|field| DecodeError::Invalid { field, value: u128::from(day) })?;
    }
    Ok(())
}

/// Reads section 16.
fn decode_purchases(decoder: &mut Decoder<'_>, ledger: &mut Ledger) -> Result<(), DecodeError> {
    use crate::loyalty::lifecycle::LifecycleState;
    use crate::loyalty::purchases::{Gave, Refundable};
    let invalid = |field: &'static str, value: u128| DecodeError::Invalid { field, value };
    let entries = count(decoder, "purchase count", PURCHASE_ENTRY_BYTES)?;
    let mut previous = None;
    for _ in 0..entries {
        let id = TxId(decoder.u64("purchase")?);
        if previous.is_some_and(|previous| previous >= id) {
            return Err(invalid("purchase order", u128::from(id.0)));
        }
        previous = Some(id);
        let customer = decoder.u64("purchase customer")?;
        let spend = decoder.u64("purchase spend")?;
        let weight = decoder.u64("purchase weight")?;
        let refunded = decoder.u64("purchase refunded")?;
        let gave = Gave {
            earned: u64::from(decoder.u32("purchase earned")?),
            bonus: u64::from(decoder.u32("purchase bonus")?),
            cashback: u64::from(decoder.u32("purchase cashback")?),
        };
        let day = decoder.u32("purchase day")?;
        let version = decoder.u16("purchase rule version")?;
        let state = decoder.u8("purchase state")?;
        let state =
            LifecycleState::from_u8(state).ok_or(invalid("purchase state", state.into()))?;
        let flags = decoder.u8("purchase flags")?;
        if flags & !(Refundable::BY_LINES | Refundable::HELD) != 0 {
            return Err(invalid("purchase flags", flags.into()));
        }
        let receipt = decoder.u64("purchase receipt key")?;
        let basis = if flags & Refundable::BY_LINES != 0 { weight } else { spend };
        let held = flags & Refundable::HELD != 0;
        if refunded > basis
            || ledger.programme.version(u32::from(version)).is_none()
            || (held && (state != LifecycleState::Pending || refunded != 0))
        {
            return Err(invalid("purchase entry", u128::from(id.0)));
        }
        let mut entry = Refundable::new(id, customer, (spend, weight), gave, (day, version), held)
            .expect("u32 components");
        (entry.refunded, entry.state, entry.flags) = (refunded, state, flags);
        ledger.purchases.push(entry, receipt);
    }
    Ok(())
}

/// Reads sections 14 and 15.
fn decode_members(decoder: &mut Decoder<'_>, ledger: &mut Ledger) -> Result<(), DecodeError> {
    use crate::loyalty::lots::{LOTS_PER_MEMBER_MAX, Lot, LotKind};
    use crate::loyalty::members::{CapsCounters, MONTHS_KEPT_MAX, Member, MonthPoints, Parked};
    let invalid = |field: &'static str, value: u128| DecodeError::Invalid { field, value };
    let members = count(decoder, "member count", 8 + 1 + 24 + 1 + 4)?;
    let mut previous = None;
    for _ in 0..members {
        let customer = decoder.u64("member")?;
        if previous.is_some_and(|previous| previous >= customer) {
            return Err(invalid("member order", u128::from(customer)));
        }
        previous = Some(customer);
        let tier = decoder.u8("tier")?;
        let caps = CapsCounters {
            day: decoder.u32("caps day")?,
            day_points: decoder.u64("caps day points")?,
            month: decoder.u32("caps month")?,
            month_points: decoder.u64("caps month points")?,
        };
        let mut member =
            Member::restore(tier, caps).map_err(|field| invalid(field, u128::from(customer)))?;
        let months = usize::from(decoder.u8("month count")?);
        if months > MONTHS_KEPT_MAX {
            return Err(invalid("month count", months as u128));
        }
        for _ in 0..months {
            let month =
                MonthPoints { month: decoder.u32("month")?, points: decoder.u64("month points")? };
            if member.months.last().is_some_and(|last| last.month >= month.month)
                || month.points == 0
            {
                return Err(invalid("months", u128::from(month.month)));
            }
            member.months.push(month);
        }
        let lots = decoder.count("lot count", LOTS_PER_MEMBER_MAX)?;
        for _ in 0..lots {
            let origin = TxId(decoder.u64("lot origin")?);
            let kind = decoder.u8("lot kind")?;
            let kind = LotKind::from_u8(kind).ok_or(invalid("lot kind", u128::from(kind)))?;
            let lot = Lot {
                origin,
                kind,
                expires_day: decoder.u32("lot expiry day")?,
                amount: decoder.u64("lot amount")?,
                remaining: decoder.u64("lot remaining")?,
            };
            member.lots.restore(lot).map_err(|field| invalid(field, u128::from(customer)))?;
        }
        ledger
            .members
            .restore_member(customer, member)
            .map_err(|field| invalid(field, u128::from(customer)))?;
    }
    let entries = count(decoder, "parked count", 8 + 8 + 1 + 4)?;
    let mut previous = None;
    for _ in 0..entries {
        let tx = TxId(decoder.u64("parked transaction")?);
        if previous.is_some_and(|previous| previous >= tx) {
            return Err(invalid("parked order", u128::from(tx.0)));
        }
        previous = Some(tx);
        let customer = decoder.u64("parked customer")?;
        let in_balance = match decoder.u8("parked in balance")? {
            0 => false,
            1 => true,
            other => return Err(invalid("parked in balance", u128::from(other))),
        };
        let parts = decoder.count("parked parts", LOTS_PER_MEMBER_MAX)?;
        let parts = (0..parts)
            .map(|_| crate::loyalty::codec::decode_part(decoder))
            .collect::<Result<_, _>>()?;
        let parked = Parked { customer, parts, in_balance };
        ledger
            .members
            .restore_parked(tx, parked)
            .map_err(|field| invalid(field, u128::from(tx.0)))?;
    }
    Ok(())
}

impl Ledger {
    /// Copies the state into `capture`, reusing its memory.
    pub fn capture_into(&self, capture: &mut StateCapture) {
        capture.shard = self.config.shard;
        capture.shard_count = self.config.shard_count;
        capture.lsn = self.lsn;
        capture.timestamp = self.timestamp;
        capture.last_tx_id = self.tx_ids.last();
        capture.registry.clone_from(&self.registry);
        capture.accounts.clear();
        capture.accounts.extend(self.accounts.iter().map(|(id, account)| (*id, *account)));
        capture.holds.clear();
        capture.holds.extend(self.holds.iter().map(|(id, hold)| (*id, *hold)));
        let (previous, closed) = self.holds_closed.iter();
        capture.holds_closed_previous = previous;
        capture.holds_closed.clear();
        capture.holds_closed.extend(closed.map(|(at, id, closure)| (at, *id, *closure)));
        capture.holds_closed_evicted = self.holds_closed.evicted_early();
        let (previous, keys) = self.idempotency.iter();
        capture.idempotency_previous = previous;
        capture.idempotency.clear();
        capture.idempotency.extend(keys.map(|(at, key, entry)| (at, *key, *entry)));
        capture.idempotency_evicted = self.idempotency.evicted_early();
        capture.idempotency_forgotten = self.idempotency_forgotten;
        capture.transfers_out.clear();
        capture.transfers_out.extend(self.transfers_out.iter().map(|(key, t)| (*key, *t)));
        capture.transfers_out_next.clone_from(&self.transfers_out_next);
        capture.transfers_in_last.clone_from(&self.transfers_in_last);
        capture.transfers_in_refused.clear();
        capture.transfers_in_refused.extend(self.transfers_in_refused.iter().copied());
        capture.history.clear();
        let mut history = self.history.iter().peekable();
        capture.history_first =
            history.peek().map_or(self.history.next_sequence(), |(sequence, _)| *sequence);
        capture.history.extend(history.map(|(_, entry)| *entry));
        capture.programme.clone_from(&self.programme);
        capture.members.clone_from(&self.members);
        capture.purchases.clear();
        capture.purchases.extend(self.purchases.iter().map(|(entry, receipt)| (*entry, receipt)));
        capture.flows.clone_from(&self.flows);
        capture.rates.clone_from(&self.rates);
    }

    /// A copy of the state for a snapshot.
    pub fn capture(&self) -> StateCapture {
        let mut capture = StateCapture::empty(self.config.shard);
        self.capture_into(&mut capture);
        capture
    }

    /// Appends the canonical encoding of the state to `out`.
    pub fn encode_state(&self, out: &mut Vec<u8>) {
        self.capture().encode(out);
    }

    /// The encoding of the state in snapshot format `version` (see `StateCapture::encode_version`).
    pub fn encode_state_version(&self, out: &mut Vec<u8>, version: u16) {
        self.capture().encode_version(out, version);
    }

    /// Rebuilds a ledger from `encode_state` bytes of the current snapshot version.
    pub fn decode_state(config: LedgerConfig, bytes: &[u8]) -> Result<Ledger, DecodeError> {
        Ledger::decode_state_version(config, bytes, crate::snapshot::SNAPSHOT_VERSION)
    }

    /// Rebuilds a ledger from the body of a snapshot of format `version`. Totals are
    /// recomputed from the accounts, and history heads from the history; the caller checks
    /// invariants afterwards.
    pub fn decode_state_version(
        config: LedgerConfig,
        bytes: &[u8],
        version: u16,
    ) -> Result<Ledger, DecodeError> {
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

        let v3 = usize::from(version >= 3);
        let v4 = usize::from(version >= 4);
        let keys = count(&mut decoder, "idempotency count", 52 + v3 + 8 * v4)?;
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
            // Version 3 and older did not record what a write moved: its retries report 0.
            let amount = if version >= 4 { decoder.u64("idempotency amount")? } else { 0 };
            let committed = Committed { tx_id, lsn, timestamp: inserted, amount };
            let refused = if version >= 3 {
                match decoder.u8("idempotency refusal")? {
                    0 => None,
                    code => Some(
                        RejectCode::from_code(u16::from(code))
                            .ok_or(invalid("idempotency refusal", u128::from(code)))?,
                    ),
                }
            } else {
                None
            };
            let entry =
                IdempotencyEntry { refused, ..IdempotencyEntry::new(fingerprint, committed) };
            entries.push((inserted, (terminal, key), entry));
        }
        let evicted = decoder.u64("idempotency evicted")?;
        // Before version 5 the LSN forgotten through was not recorded: if the table had rotated,
        // everything before its oldest entry may have been forgotten.
        let oldest = entries.first().map(|(_, _, entry)| entry.lsn);
        ledger.idempotency_forgotten = if version >= 5 {
            Lsn(decoder.u64("idempotency forgotten through")?)
        } else if previous > 0 {
            Lsn(oldest.map_or(0, |lsn| lsn.0.saturating_sub(1)))
        } else {
            Lsn::ZERO
        };
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
        let v5 = usize::from(version >= 5);
        let transfers = count(
            &mut decoder,
            "transfer count",
            2 + 8 + 8 + 8 + 12 + 12 + 2 + 8 + 20 * v3 + 16 * v5,
        )?;
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
            let origin = if version >= 3 {
                let terminal = TerminalId(decoder.u32("transfer terminal")?);
                IdempotencyKey::new(decoder.u128("transfer key")?).map(|key| (terminal, key))
            } else {
                None
            };
            let (fingerprint, inserted) = if version >= 5 {
                let fingerprint = decoder.u64("transfer fingerprint")?;
                (fingerprint, Timestamp(decoder.u64("transfer time")?))
            } else {
                // Filled from the idempotency table below, where it still has the request.
                (0, ledger.timestamp)
            };
            let transfer = OutboundTransfer {
                tx_id,
                lsn,
                source,
                destination,
                asset,
                amount,
                origin,
                fingerprint,
                inserted,
            };
            ledger.transfers_out_by_tx.insert(tx_id, (shard, sequence));
            ledger.transfers_out.insert((shard, sequence), transfer);
        }
        if version < 5 {
            recover_transfer_origins(&mut ledger, version < 3);
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
        // Version 1 has no history section: such a ledger starts with an empty history.
        if version >= 2 {
            decode_history(&mut decoder, &mut ledger)?;
        }
        if version >= 6 {
            decode_programme(&mut decoder, &mut ledger, version)?;
        }
        if version >= 7 {
            decode_members(&mut decoder, &mut ledger)?;
        } else if let Some(first) = ledger.programme.versions().first() {
            // Before version 7 lots were not kept: the points customers hold become lots as
            // if the programme had started at its first version.
            let started = first.effective_at;
            ledger.lots_at_programme_start(started);
        }
        if version >= 8 {
            decode_purchases(&mut decoder, &mut ledger)?;
            decode_flows(&mut decoder, &mut ledger)?;
        }
        if version >= 9 {
            decode_rates(&mut decoder, &mut ledger)?;
        }
        ledger.refresh_flow_classes();
        ledger.restore_class_totals().map_err(|()| DecodeError::Invalid {
            field: "account balances (a customer class's total overflows)",
            value: 0,
        })?;
        decoder.finish()?;
        Ok(ledger)
    }
}

/// Reads the programme section: every rule version, in version order.
fn decode_programme(
    decoder: &mut Decoder<'_>,
    ledger: &mut Ledger,
    snapshot_version: u16,
) -> Result<(), DecodeError> {
    use crate::loyalty::codec::Settings;
    use crate::loyalty::programme::{RULE_VERSIONS_MAX, RulesVersion};
    let count = decoder.count("rule version count", RULE_VERSIONS_MAX)?;
    for _ in 0..count {
        let version = decoder.u32("rule version")?;
        let requested_at = Timestamp(decoder.u64("rule requested at")?);
        let effective_at = Timestamp(decoder.u64("rule effective at")?);
        let mut accounts = crate::loyalty::codec::decode_accounts(decoder)?;
        let settings = if snapshot_version >= 8 { Settings::Present } else { Settings::Absent };
        let rules = crate::loyalty::codec::decode_version_rules(decoder, &mut accounts, settings)?;
        ledger
            .programme_mut()
            .restore(RulesVersion {
                version,
                requested_at,
                effective_at,
                accounts,
                rules: std::sync::Arc::new(rules),
            })
            .map_err(|field| DecodeError::Invalid { field, value: u128::from(version) })?;
    }
    Ok(())
}

/// Fills in what older snapshots did not record of the unsettled transfers, from the
/// idempotency table (the entry whose transaction is the transfer's first step): the origin
/// (terminal and key; format 2 and older, when `origins`) and the request's fingerprint and time
/// (format 4 and older). A key the table forgot is left unknown (origin) or zero (fingerprint).
fn recover_transfer_origins(ledger: &mut Ledger, origins: bool) {
    if ledger.transfers_out.is_empty() {
        return;
    }
    let wanted: std::collections::HashMap<TxId, (ShardId, u64)> =
        ledger.transfers_out.iter().map(|(key, transfer)| (transfer.tx_id, *key)).collect();
    let (_, entries) = ledger.idempotency.iter();
    type Found = ((ShardId, u64), (TerminalId, IdempotencyKey), u64, Timestamp);
    let found: Vec<Found> = entries
        .filter_map(|(inserted, origin, entry)| {
            wanted
                .get(&entry.tx_id)
                .map(|transfer| (*transfer, *origin, entry.fingerprint, inserted))
        })
        .collect();
    for (transfer, origin, fingerprint, inserted) in found {
        if let Some(transfer) = ledger.transfers_out.get_mut(&transfer) {
            if origins {
                transfer.origin = Some(origin);
            }
            transfer.fingerprint = fingerprint;
            transfer.inserted = inserted;
        }
    }
}

/// Reads the history section and rebuilds the ring and each account's newest entry. Entries
/// must be in ring order (transaction ids never decrease), name accounts that exist, and link
/// only to older entries.
fn decode_history(decoder: &mut Decoder<'_>, ledger: &mut Ledger) -> Result<(), DecodeError> {
    let invalid = |field: &'static str, value: u128| DecodeError::Invalid { field, value };
    let first = decoder.u64("history first sequence")?;
    let entries_len = count(decoder, "history count", HISTORY_ENTRY_BYTES)?;
    let mut entries = Vec::with_capacity(entries_len);
    for offset in 0..entries_len {
        let sequence = first
            .checked_add(offset as u64)
            .filter(|sequence| *sequence != NO_ENTRY)
            .ok_or(invalid("history sequence", u128::from(first)))?;
        let entry = HistoryEntry {
            tx_id: TxId(decoder.u64("history tx id")?),
            timestamp: Timestamp(decoder.u64("history timestamp")?),
            kind: TxKind(decoder.u16("history kind")?),
            account: decode_account_id(decoder)?,
            counterparty: decode_account_id(decoder)?,
            amount: decoder.u64("history amount")?,
            flags: decoder.u8("history flags")?,
            posting: decoder.u8("history posting")?,
            postings: decoder.u8("history postings")?,
            previous: decoder.u64("history previous")?,
        };
        if !HistoryEntry::flags_are_known(entry.flags) {
            return Err(invalid("history flags", u128::from(entry.flags)));
        }
        if entry.amount == 0 {
            return Err(invalid("history amount", 0));
        }
        if entry.posting >= entry.postings {
            return Err(invalid("history posting", u128::from(entry.posting)));
        }
        if entry.previous != NO_ENTRY && entry.previous >= sequence {
            return Err(invalid("history previous", u128::from(entry.previous)));
        }
        if entries.last().is_some_and(|last: &HistoryEntry| last.tx_id > entry.tx_id) {
            return Err(invalid("history order", u128::from(entry.tx_id.0)));
        }
        if ledger.accounts.get(&entry.account).is_none() {
            return Err(invalid("history account", u128::from(entry.account.owner())));
        }
        entries.push(entry);
    }
    let heads: Vec<(AccountId, u64)> =
        entries.iter().zip(first..).map(|(entry, sequence)| (entry.account, sequence)).collect();
    if !ledger.history.restore(first, entries) {
        return Err(invalid("history count", entries_len as u128));
    }
    // Later entries of an account overwrite earlier ones: each account ends at its newest.
    for (account, sequence) in heads {
        ledger.accounts.set_history_head(&account, sequence);
    }
    Ok(())
}
