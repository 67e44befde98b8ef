//! Rows into PostgreSQL: one chunk of consecutive records of a shard per transaction, with
//! binary `COPY` for transactions and postings, and the shard's watermark moved in the same
//! transaction, so a crash at any moment neither loses nor repeats a row.

use std::time::{Duration, SystemTime};

use bytes::{BufMut, BytesMut};
use ledger_engine::Timestamp;
use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, accepts, to_sql_checked};

use super::loyalty::LoyaltyRows;
use super::rows::{AccountRow, PostingRow, TxRow};

/// Consecutive records of one shard, as rows.
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    /// The shard.
    pub shard: u16,
    /// The first record's LSN.
    pub first_lsn: u64,
    /// The last record's LSN, hash and time: the watermark once written.
    pub last_lsn: u64,
    /// See `last_lsn`.
    pub last_hash: [u8; 32],
    /// See `last_lsn`.
    pub last_time: Timestamp,
    /// A row per record.
    pub transactions: Vec<TxRow>,
    /// A row per movement.
    pub postings: Vec<PostingRow>,
    /// The accounts the postings name that this replicator has not written yet.
    pub accounts: Vec<AccountRow>,
    /// The loyalty programme's rows.
    pub loyalty: LoyaltyRows,
}

/// What writing a chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Its rows are in, and the watermark is its last record.
    Rows,
    /// The watermark was already at or past it (a retry of a commit whose answer was lost):
    /// nothing was written.
    AlreadyThere,
}

/// Why a chunk was not written; nothing was.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// PostgreSQL refused or failed (down, slow, out of space): retry later.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The watermark is not the record before the chunk: this database holds another part of
    /// the history than the replicator thought.
    #[error(
        "shard {shard}: the replica's watermark is lsn {watermark}, the chunk starts at {first}"
    )]
    Gap {
        /// The shard.
        shard: u16,
        /// The replica's watermark.
        watermark: u64,
        /// The chunk's first LSN.
        first: u64,
    },
}

/// The watermark (LSN, record hash) of `shard`, if it has one.
pub async fn watermark(
    client: &Client,
    shard: u16,
) -> Result<Option<(u64, [u8; 32])>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT lsn, record_hash FROM shard_watermarks WHERE shard = $1",
            &[&i32::from(shard)],
        )
        .await?;
    Ok(row.map(|row| {
        let hash: Vec<u8> = row.get(1);
        (row.get::<_, i64>(0) as u64, hash.try_into().unwrap_or([0; 32]))
    }))
}

/// The time of a record as PostgreSQL keeps it (to the microsecond).
pub fn system_time(time: Timestamp) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(time.0)
}

/// A u64 as PostgreSQL's binary `numeric`: base-10000 digits, most significant first.
#[derive(Debug, Clone, Copy)]
pub struct Numeric(pub u64);

impl ToSql for Numeric {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let mut digits = Vec::with_capacity(5);
        let mut rest = self.0;
        while rest > 0 {
            digits.push(i16::try_from(rest % 10_000).expect("below 10000"));
            rest /= 10_000;
        }
        // Weight: the power of 10000 of the first digit; trailing zero digits may be left out.
        let weight = i16::try_from(digits.len()).expect("at most 5 digits") - 1;
        digits.reverse();
        while digits.last() == Some(&0) {
            digits.pop();
        }
        out.put_i16(i16::try_from(digits.len()).expect("at most 5 digits"));
        out.put_i16(weight.max(0));
        out.put_u16(0x0000); // positive
        out.put_u16(0); // no digits after the point
        for digit in digits {
            out.put_i16(digit);
        }
        Ok(IsNull::No)
    }

    accepts!(NUMERIC);
    to_sql_checked!();
}

/// A day (days since 1970-01-01) as PostgreSQL's binary `date` (days since 2000-01-01).
#[derive(Debug, Clone, Copy)]
pub struct Date(pub u32);

/// Days from 1970-01-01 to 2000-01-01.
const POSTGRES_EPOCH_DAYS: i64 = 10_957;

impl ToSql for Date {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let days = i32::try_from(i64::from(self.0) - POSTGRES_EPOCH_DAYS)?;
        out.put_i32(days);
        Ok(IsNull::No)
    }

    accepts!(DATE);
    to_sql_checked!();
}

/// A column value of a `COPY` row.
type Value = Box<dyn ToSql + Sync + Send>;

/// `COPY table (columns) FROM STDIN BINARY` of `rows`, each turned into its values (in the
/// columns' order) by `values`.
async fn copy<R>(
    transaction: &tokio_postgres::Transaction<'_>,
    table: &str,
    columns: &[(&str, Type)],
    rows: &[R],
    values: impl Fn(&R) -> Vec<Value>,
) -> Result<u64, tokio_postgres::Error> {
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let types: Vec<Type> = columns.iter().map(|(_, ty)| ty.clone()).collect();
    let statement = format!("COPY {table} ({}) FROM STDIN BINARY", names.join(", "));
    let sink = transaction.copy_in(&statement).await?;
    let writer = BinaryCopyInWriter::new(sink, &types);
    tokio::pin!(writer);
    for row in rows {
        let values = values(row);
        let refs: Vec<&(dyn ToSql + Sync)> =
            values.iter().map(|value| value.as_ref() as &(dyn ToSql + Sync)).collect();
        writer.as_mut().write(&refs).await?;
    }
    writer.finish().await
}

/// Writes `chunk` in one transaction: its rows, the accounts, the watermark.
pub async fn write_chunk(client: &mut Client, chunk: &Chunk) -> Result<Written, WriteError> {
    let shard = i32::from(chunk.shard);
    let transaction = client.transaction().await?;
    let current = transaction
        .query_opt("SELECT lsn FROM shard_watermarks WHERE shard = $1 FOR UPDATE", &[&shard])
        .await?
        .map_or(0, |row| row.get::<_, i64>(0) as u64);
    // A chunk of no record that writes a shard's members and lots whole (`loyalty_synced`).
    let sync_only = chunk.transactions.is_empty() && chunk.loyalty.whole;
    if current >= chunk.last_lsn && !(sync_only && current == chunk.last_lsn) {
        transaction.commit().await?;
        return Ok(Written::AlreadyThere);
    }
    if current + 1 != chunk.first_lsn {
        return Err(WriteError::Gap {
            shard: chunk.shard,
            watermark: current,
            first: chunk.first_lsn,
        });
    }
    let first_time = chunk.transactions.first().map_or(chunk.last_time, |tx| tx.time);
    transaction
        .execute(
            "SELECT ledger_ensure_partitions($1, $2)",
            &[&system_time(first_time), &system_time(chunk.last_time)],
        )
        .await?;
    copy(
        &transaction,
        "transactions",
        &[
            ("time", Type::TIMESTAMPTZ),
            ("shard", Type::INT4),
            ("lsn", Type::INT8),
            ("tx_id", Type::INT8),
            ("record_kind", Type::TEXT),
            ("tx_kind", Type::INT4),
            ("terminal", Type::INT8),
            ("store", Type::INT8),
            ("idempotency_key", Type::BYTEA),
            ("customer", Type::INT8),
            ("metadata", Type::JSONB),
        ],
        &chunk.transactions,
        |row| {
            vec![
                Box::new(system_time(row.time)),
                Box::new(shard),
                Box::new(row.lsn as i64),
                Box::new(row.tx_id.map(|id| id as i64)),
                Box::new(row.record_kind),
                Box::new(row.tx_kind.map(i32::from)),
                Box::new(row.terminal.map(i64::from)),
                Box::new(row.store.map(i64::from)),
                Box::new(row.idempotency_key.map(|key| key.to_vec())),
                Box::new(row.customer.map(|customer| customer as i64)),
                Box::new(row.metadata.clone()),
            ]
        },
    )
    .await?;
    copy(
        &transaction,
        "postings",
        &[
            ("time", Type::TIMESTAMPTZ),
            ("shard", Type::INT4),
            ("lsn", Type::INT8),
            ("index", Type::INT4),
            ("tx_id", Type::INT8),
            ("debit", Type::TEXT),
            ("credit", Type::TEXT),
            ("asset", Type::TEXT),
            ("amount", Type::NUMERIC),
            ("effect", Type::TEXT),
            ("customer", Type::INT8),
            ("flow", Type::TEXT),
        ],
        &chunk.postings,
        |row| {
            vec![
                Box::new(system_time(row.time)),
                Box::new(shard),
                Box::new(row.lsn as i64),
                Box::new(i32::try_from(row.index).unwrap_or(i32::MAX)),
                Box::new(row.tx_id.map(|id| id as i64)),
                Box::new(row.debit.clone()),
                Box::new(row.credit.clone()),
                Box::new(row.asset.clone()),
                Box::new(Numeric(row.amount)),
                Box::new(row.effect),
                Box::new(row.customer.map(|customer| customer as i64)),
                Box::new(row.flow),
            ]
        },
    )
    .await?;
    write_loyalty(&transaction, shard, &chunk.loyalty).await?;
    if !chunk.accounts.is_empty() {
        let column =
            |f: fn(&AccountRow) -> String| chunk.accounts.iter().map(f).collect::<Vec<_>>();
        let owners: Vec<i64> = chunk.accounts.iter().map(|a| a.owner as i64).collect();
        let flags: Vec<bool> = chunk.accounts.iter().map(|a| a.no_overdraft).collect();
        transaction
            .execute(
                "INSERT INTO accounts (address, namespace, class, asset, owner, no_overdraft) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], \
                 $5::int8[], $6::bool[]) ON CONFLICT (address) DO NOTHING",
                &[
                    &column(|a| a.address.clone()),
                    &column(|a| a.namespace.to_string()),
                    &column(|a| a.class.clone()),
                    &column(|a| a.asset.clone()),
                    &owners,
                    &flags,
                ],
            )
            .await?;
    }
    let last_lsn = chunk.last_lsn as i64;
    transaction
        .execute(
            "INSERT INTO shard_watermarks (shard, lsn, record_hash, record_time) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (shard) DO UPDATE SET lsn = $2, \
             record_hash = $3, record_time = $4, updated_at = now(), \
             loyalty_synced = shard_watermarks.loyalty_synced OR $5",
            &[
                &shard,
                &last_lsn,
                &chunk.last_hash.as_slice(),
                &system_time(chunk.last_time),
                &chunk.loyalty.whole,
            ],
        )
        .await?;
    transaction.commit().await?;
    Ok(Written::Rows)
}

/// Why a database is not this ledger's replica.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// PostgreSQL failed.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// It replicates another data directory.
    #[error(
        "the replica database holds the ledger of data directory {theirs:016x} ({their_shards} \
         shards), not this one ({ours:016x}, {our_shards} shards): give it a database of its own"
    )]
    Foreign {
        /// The database's.
        theirs: u64,
        /// Its shards.
        their_shards: u16,
        /// This data directory's.
        ours: u64,
        /// Its shards.
        our_shards: u16,
    },
}

/// Claims the database for this data directory, or refuses one that holds another's.
pub async fn claim(
    client: &Client,
    cluster_id: u64,
    shard_count: u16,
) -> Result<(), IdentityError> {
    let ours = (cluster_id as i64, i32::from(shard_count));
    client
        .execute(
            "INSERT INTO ledger_identity (cluster_id, shard_count) VALUES ($1, $2) \
             ON CONFLICT (singleton) DO NOTHING",
            &[&ours.0, &ours.1],
        )
        .await?;
    let row = client.query_one("SELECT cluster_id, shard_count FROM ledger_identity", &[]).await?;
    let theirs: (i64, i32) = (row.get(0), row.get(1));
    if theirs != ours {
        return Err(IdentityError::Foreign {
            theirs: theirs.0 as u64,
            their_shards: u16::try_from(theirs.1).unwrap_or(u16::MAX),
            ours: cluster_id,
            our_shards: shard_count,
        });
    }
    Ok(())
}

/// Whether `shard`'s members and lots are whole in the replica (false for a shard replicated
/// before migration 2 until the replicator writes them whole).
pub async fn loyalty_synced(client: &Client, shard: u16) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT loyalty_synced FROM shard_watermarks WHERE shard = $1",
            &[&i32::from(shard)],
        )
        .await?;
    Ok(row.is_none_or(|row| row.get(0)))
}

/// The loyalty rows of a chunk, in its transaction.
async fn write_loyalty(
    transaction: &tokio_postgres::Transaction<'_>,
    shard: i32,
    rows: &LoyaltyRows,
) -> Result<(), tokio_postgres::Error> {
    let time = |time: Timestamp| system_time(time);
    if !rows.purchases.is_empty() {
        copy(
            transaction,
            "purchases",
            &[
                ("tx_id", Type::INT8),
                ("time", Type::TIMESTAMPTZ),
                ("shard", Type::INT4),
                ("lsn", Type::INT8),
                ("customer", Type::INT8),
                ("terminal", Type::INT8),
                ("store", Type::INT8),
                ("receipt", Type::TEXT),
                ("spend", Type::NUMERIC),
                ("lines", Type::INT4),
                ("rules_version", Type::INT4),
                ("earned", Type::NUMERIC),
                ("bonus", Type::NUMERIC),
                ("cashback", Type::NUMERIC),
                ("tier_before", Type::INT4),
                ("tier_after", Type::INT4),
                ("points_held", Type::BOOL),
                ("state", Type::TEXT),
                ("refunded", Type::NUMERIC),
                ("state_changed_at", Type::TIMESTAMPTZ),
                ("state_lsn", Type::INT8),
            ],
            &rows.purchases,
            |row| {
                vec![
                    Box::new(row.tx_id as i64),
                    Box::new(time(row.time)),
                    Box::new(shard),
                    Box::new(row.lsn as i64),
                    Box::new(row.customer as i64),
                    Box::new(i64::from(row.terminal)),
                    Box::new(i64::from(row.store)),
                    Box::new(row.receipt.clone()),
                    Box::new(Numeric(row.spend)),
                    Box::new(i32::try_from(row.lines).unwrap_or(i32::MAX)),
                    Box::new(i32::try_from(row.rules_version).unwrap_or(i32::MAX)),
                    Box::new(Numeric(row.earned)),
                    Box::new(Numeric(row.bonus)),
                    Box::new(Numeric(row.cashback)),
                    Box::new(i32::from(row.tier_before)),
                    Box::new(i32::from(row.tier_after)),
                    Box::new(row.points_held),
                    Box::new(row.state),
                    Box::new(Numeric(row.refunded)),
                    Box::new(time(row.state_time)),
                    Box::new(row.state_lsn as i64),
                ]
            },
        )
        .await?;
    }
    if !rows.updates.is_empty() {
        let ids: Vec<i64> = rows.updates.iter().map(|u| u.tx_id as i64).collect();
        let states: Vec<&str> = rows.updates.iter().map(|u| u.state).collect();
        let refunded: Vec<Numeric> = rows.updates.iter().map(|u| Numeric(u.refunded)).collect();
        let times: Vec<SystemTime> = rows.updates.iter().map(|u| time(u.time)).collect();
        let lsns: Vec<i64> = rows.updates.iter().map(|u| u.lsn as i64).collect();
        transaction
            .execute(
                "UPDATE purchases p SET state = u.state, refunded = u.refunded, \
                 state_changed_at = u.time, state_lsn = u.lsn \
                 FROM UNNEST($1::int8[], $2::text[], $3::numeric[], $4::timestamptz[], \
                 $5::int8[]) AS u(tx_id, state, refunded, time, lsn) WHERE p.tx_id = u.tx_id",
                &[&ids, &states, &refunded, &times, &lsns],
            )
            .await?;
    }
    if !rows.transitions.is_empty() {
        copy(
            transaction,
            "purchase_transitions",
            &[
                ("time", Type::TIMESTAMPTZ),
                ("shard", Type::INT4),
                ("lsn", Type::INT8),
                ("tx_id", Type::INT8),
                ("purchase", Type::INT8),
                ("customer", Type::INT8),
                ("event", Type::TEXT),
                ("state_after", Type::TEXT),
                ("refunded", Type::NUMERIC),
                ("earned_back", Type::NUMERIC),
                ("bonus_back", Type::NUMERIC),
                ("cashback_back", Type::NUMERIC),
                ("points_owed", Type::NUMERIC),
                ("cashback_owed", Type::NUMERIC),
            ],
            &rows.transitions,
            |row| {
                let change = &row.change;
                vec![
                    Box::new(time(row.time)),
                    Box::new(shard),
                    Box::new(row.lsn as i64),
                    Box::new(change.tx_id as i64),
                    Box::new(change.purchase as i64),
                    Box::new(change.customer as i64),
                    Box::new(change.event),
                    Box::new(change.state_after),
                    Box::new(Numeric(change.refunded)),
                    Box::new(Numeric(change.earned_back)),
                    Box::new(Numeric(change.bonus_back)),
                    Box::new(Numeric(change.cashback_back)),
                    Box::new(Numeric(change.points_owed)),
                    Box::new(Numeric(change.cashback_owed)),
                ]
            },
        )
        .await?;
    }
    if !rows.tiers.is_empty() {
        copy(
            transaction,
            "tier_changes",
            &[
                ("time", Type::TIMESTAMPTZ),
                ("shard", Type::INT4),
                ("lsn", Type::INT8),
                ("tx_id", Type::INT8),
                ("customer", Type::INT8),
                ("tier_before", Type::INT4),
                ("tier_after", Type::INT4),
                ("record_kind", Type::TEXT),
            ],
            &rows.tiers,
            |row| {
                vec![
                    Box::new(time(row.time)),
                    Box::new(shard),
                    Box::new(row.lsn as i64),
                    Box::new(row.tx_id.map(|id| id as i64)),
                    Box::new(row.customer as i64),
                    Box::new(i32::from(row.before)),
                    Box::new(i32::from(row.after)),
                    Box::new(row.record_kind),
                ]
            },
        )
        .await?;
    }
    // Versions are recorded on every shard: the first shard's row stays, with the earliest
    // record time.
    for row in &rows.rule_versions {
        transaction
            .execute(
                "INSERT INTO rule_versions (version, effective_at, recorded_at, points_class, \
                 points_asset, issuance_class, breakage_class, cashback_class, \
                 cashback_funding_class, clawback_class, cashback_clawback_class, \
                 point_value_minor_units, point_value_points, earned_months, bonus_months, \
                 transfer_months, tier_window_months, refund_days, pending_hold_days, tiers, \
                 promotions) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
                 $14, $15, $16, $17, $18, $19, $20, $21) ON CONFLICT (version) DO UPDATE SET \
                 recorded_at = LEAST(rule_versions.recorded_at, EXCLUDED.recorded_at)",
                &[
                    &i32::try_from(row.version).unwrap_or(i32::MAX),
                    &row.effective_at.map(time),
                    &time(row.recorded_at),
                    &row.points_class,
                    &row.points_asset,
                    &row.issuance_class,
                    &row.breakage_class,
                    &row.cashback_class,
                    &row.cashback_funding_class,
                    &row.clawback_class,
                    &row.cashback_clawback_class,
                    &(row.point_value_minor_units as i64),
                    &(row.point_value_points as i64),
                    &i32::from(row.earned_months),
                    &i32::from(row.bonus_months),
                    &i32::from(row.transfer_months),
                    &i32::from(row.tier_window_months),
                    &i32::from(row.refund_days),
                    &row.pending_hold_days.map(i32::from),
                    &row.tiers,
                    &row.promotions,
                ],
            )
            .await?;
    }
    for row in &rows.rates {
        transaction
            .execute(
                "INSERT INTO exchange_rates (version, effective_at, recorded_at, from_asset, \
                 to_asset, numerator, denominator, money_asset, from_customer_class, from_fund, \
                 from_money_fund, from_value_minor_units, from_value_points, \
                 to_customer_class, to_fund, to_money_fund, to_value_minor_units, \
                 to_value_points) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
                 $13, $14, $15, $16, $17, $18) ON CONFLICT (version) DO UPDATE SET \
                 recorded_at = LEAST(exchange_rates.recorded_at, EXCLUDED.recorded_at)",
                &[
                    &i32::try_from(row.version).unwrap_or(i32::MAX),
                    &row.effective_at.map(time),
                    &time(row.recorded_at),
                    &row.from_asset,
                    &row.to_asset,
                    &(row.numerator as i64),
                    &(row.denominator as i64),
                    &row.money_asset,
                    &row.from_accounts[0],
                    &row.from_accounts[1],
                    &row.from_accounts[2],
                    &(row.from_value.0 as i64),
                    &(row.from_value.1 as i64),
                    &row.to_accounts[0],
                    &row.to_accounts[1],
                    &row.to_accounts[2],
                    &(row.to_value.0 as i64),
                    &(row.to_value.1 as i64),
                ],
            )
            .await?;
    }
    // Members and lots as of the chunk's end: the changed members' lots replaced whole.
    if rows.whole {
        transaction.execute("DELETE FROM lots WHERE shard = $1", &[&shard]).await?;
        transaction.execute("DELETE FROM members WHERE shard = $1", &[&shard]).await?;
    } else if !rows.members.is_empty() {
        let customers: Vec<i64> = rows.members.iter().map(|m| m.customer as i64).collect();
        transaction.execute("DELETE FROM lots WHERE customer = ANY($1)", &[&customers]).await?;
    }
    if !rows.lots.is_empty() {
        copy(
            transaction,
            "lots",
            &[
                ("customer", Type::INT8),
                ("kind", Type::TEXT),
                ("expires_on", Type::DATE),
                ("origin_tx", Type::INT8),
                ("amount", Type::NUMERIC),
                ("remaining", Type::NUMERIC),
                ("shard", Type::INT4),
            ],
            &rows.lots,
            |row| {
                vec![
                    Box::new(row.customer as i64),
                    Box::new(row.kind),
                    Box::new(Date(row.expires_day)),
                    Box::new(row.origin as i64),
                    Box::new(Numeric(row.amount)),
                    Box::new(Numeric(row.remaining)),
                    Box::new(shard),
                ]
            },
        )
        .await?;
    }
    if !rows.members.is_empty() {
        let members = &rows.members;
        let customers: Vec<i64> = members.iter().map(|m| m.customer as i64).collect();
        let tiers: Vec<i32> = members.iter().map(|m| i32::from(m.tier)).collect();
        let in_lots: Vec<Numeric> = members.iter().map(|m| Numeric(m.points_in_lots)).collect();
        let held: Vec<Numeric> = members.iter().map(|m| Numeric(m.points_held)).collect();
        let lots: Vec<i32> =
            members.iter().map(|m| i32::try_from(m.lots).unwrap_or(i32::MAX)).collect();
        let first: Vec<Option<SystemTime>> =
            members.iter().map(|m| m.first_purchase.map(time)).collect();
        let lsns: Vec<i64> = members.iter().map(|m| m.lsn as i64).collect();
        transaction
            .execute(
                "INSERT INTO members (customer, shard, tier, points_in_lots, points_held, lots, \
                 first_purchase_at, updated_lsn) SELECT u.customer, $1, u.tier, u.in_lots, \
                 u.held, u.lots, u.first, u.lsn FROM UNNEST($2::int8[], $3::int4[], \
                 $4::numeric[], $5::numeric[], $6::int4[], $7::timestamptz[], $8::int8[]) \
                 AS u(customer, tier, in_lots, held, lots, first, lsn) \
                 ON CONFLICT (customer) DO UPDATE SET tier = EXCLUDED.tier, \
                 points_in_lots = EXCLUDED.points_in_lots, points_held = EXCLUDED.points_held, \
                 lots = EXCLUDED.lots, updated_lsn = EXCLUDED.updated_lsn, \
                 first_purchase_at = COALESCE(members.first_purchase_at, \
                 EXCLUDED.first_purchase_at)",
                &[&shard, &customers, &tiers, &in_lots, &held, &lots, &first, &lsns],
            )
            .await?;
    }
    if rows.whole {
        // The cohorts: each member's first purchase, from the purchase records replicated.
        transaction
            .execute(
                "UPDATE members m SET first_purchase_at = f.first FROM ( \
                   SELECT customer, min(time) AS first FROM transactions \
                   WHERE shard = $1 AND record_kind = 'purchase' GROUP BY customer) f \
                 WHERE m.shard = $1 AND m.customer = f.customer",
                &[&shard],
            )
            .await?;
    }
    Ok(())
}
