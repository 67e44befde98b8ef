//! Rows into PostgreSQL: one chunk of consecutive records of a shard per transaction, with
//! binary `COPY` for transactions and postings, and the shard's watermark moved in the same
//! transaction, so a crash at any moment neither loses nor repeats a row.

use std::time::{Duration, SystemTime};

use bytes::{BufMut, BytesMut};
use ledger_engine::Timestamp;
use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, accepts, to_sql_checked};

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

/// A column value of a `COPY` row.
type Value = Box<dyn ToSql + Sync + Send>;

/// `COPY … FROM STDIN BINARY` of `rows`, each turned into its values by `values`.
async fn copy<R>(
    transaction: &tokio_postgres::Transaction<'_>,
    statement: &str,
    types: &[Type],
    rows: &[R],
    values: impl Fn(&R) -> Vec<Value>,
) -> Result<u64, tokio_postgres::Error> {
    let sink = transaction.copy_in(statement).await?;
    let writer = BinaryCopyInWriter::new(sink, types);
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
    if current >= chunk.last_lsn {
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
        "COPY transactions (time, shard, lsn, tx_id, record_kind, tx_kind, terminal, store, \
         idempotency_key, customer, metadata) FROM STDIN BINARY",
        &[
            Type::TIMESTAMPTZ,
            Type::INT4,
            Type::INT8,
            Type::INT8,
            Type::TEXT,
            Type::INT4,
            Type::INT8,
            Type::INT8,
            Type::BYTEA,
            Type::INT8,
            Type::JSONB,
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
        "COPY postings (time, shard, lsn, index, tx_id, debit, credit, asset, amount, effect, \
         customer) FROM STDIN BINARY",
        &[
            Type::TIMESTAMPTZ,
            Type::INT4,
            Type::INT8,
            Type::INT4,
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::NUMERIC,
            Type::TEXT,
            Type::INT8,
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
            ]
        },
    )
    .await?;
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
             record_hash = $3, record_time = $4, updated_at = now()",
            &[&shard, &last_lsn, &chunk.last_hash.as_slice(), &system_time(chunk.last_time)],
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
