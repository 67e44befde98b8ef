-- ledgerd reporting replica, migration 1: which ledger this database holds, each shard's
-- watermark, and the ledger's transactions, postings and accounts.
-- Documented column by column in docs/reporting.md. Applied once, in one transaction, by
-- `ledgerd migrate` or the replicator at start; never edited after it is released.

-- The ledger this database replicates: one row, written by the replicator's first batch.
CREATE TABLE ledger_identity (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- The data directory's id (ledgerd.meta `cluster_id`, a u64 stored as its two's
    -- complement in a bigint: compare with the same cast).
    cluster_id bigint NOT NULL,
    shard_count integer NOT NULL CHECK (shard_count BETWEEN 1 AND 1024),
    first_replicated_at timestamptz NOT NULL DEFAULT now()
);

-- How far each shard is replicated: the last record whose rows are in this database, written
-- in the same transaction as those rows.
CREATE TABLE shard_watermarks (
    shard integer PRIMARY KEY CHECK (shard BETWEEN 0 AND 1023),
    lsn bigint NOT NULL CHECK (lsn >= 0),
    -- SHA-256 of record `lsn` (the WAL's hash chain): a database holding another history is
    -- refused at start.
    record_hash bytea NOT NULL CHECK (length(record_hash) = 32),
    -- The time the shard gave record `lsn`.
    record_time timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Every WAL record, a row each: client transactions and everything else the shards record.
-- Partitioned by month of `time`; `ledger_ensure_partitions` makes the months a batch needs.
CREATE TABLE transactions (
    time timestamptz NOT NULL,
    shard integer NOT NULL,
    lsn bigint NOT NULL,
    -- The transaction id (a u64 below 2^63 until the year 2093), or NULL for records that
    -- name none (definitions).
    tx_id bigint,
    -- The record kind's name (docs/wal-format.md): transaction, hold_create, purchase, ….
    record_kind text NOT NULL,
    -- The client's transaction kind (docs/protocol.md), for client records.
    tx_kind integer,
    terminal bigint,
    store bigint,
    -- The client's idempotency key (16 bytes, big-endian), for client records.
    idempotency_key bytea CHECK (length(idempotency_key) = 16),
    -- The customer the record is about, when it is about one.
    customer bigint,
    -- Receipt, category, the earning breakdown of a purchase, who made an admin write and why,
    -- and the kind's own fields (docs/reporting.md, "metadata").
    metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (time, shard, lsn)
) PARTITION BY RANGE (time);

CREATE INDEX transactions_customer_time ON transactions (customer, time) WHERE customer IS NOT NULL;
CREATE INDEX transactions_tx_id ON transactions (tx_id) WHERE tx_id IS NOT NULL;

-- Every posting of every record: the double entry. For each asset the sum over all postings
-- of (credit side +amount, debit side -amount) is 0 by construction.
CREATE TABLE postings (
    time timestamptz NOT NULL,
    shard integer NOT NULL,
    lsn bigint NOT NULL,
    -- The posting's place in its record (0, 1, …).
    index integer NOT NULL,
    tx_id bigint,
    debit text NOT NULL,
    credit text NOT NULL,
    asset text NOT NULL,
    -- Minor units (or points): a u64, exact.
    amount numeric(20, 0) NOT NULL CHECK (amount > 0),
    -- pending: a reservation (a hold's or a pending purchase's), not in posted balances.
    -- posted: moves posted balances. released: the end of a reservation without posting.
    effect text NOT NULL CHECK (effect IN ('posted', 'pending', 'released')),
    -- The customer whose account the posting moves (the credited side's when both are
    -- customers'), NULL when neither is a customer's: a customer's postings by time.
    customer bigint,
    PRIMARY KEY (time, shard, lsn, index)
) PARTITION BY RANGE (time);

-- A customer's postings by time. (Indexes on the addresses cost three times the insert time
-- of the table: an account's history is a customer's, or a time range's.)
CREATE INDEX postings_customer_time ON postings (customer, time) WHERE customer IS NOT NULL;

-- Every account any posting names.
CREATE TABLE accounts (
    address text PRIMARY KEY,
    namespace text NOT NULL,
    class text NOT NULL,
    asset text NOT NULL,
    -- The customer (or partner, or shard) the account belongs to.
    owner bigint NOT NULL,
    no_overdraft boolean NOT NULL
);

-- Makes the monthly partitions of `transactions` and `postings` that cover [from_time, to_time].
CREATE FUNCTION ledger_ensure_partitions(from_time timestamptz, to_time timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    month timestamptz := date_trunc('month', from_time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    next timestamptz;
    suffix text;
BEGIN
    WHILE month <= to_time LOOP
        next := month + interval '1 month';
        suffix := to_char(month AT TIME ZONE 'UTC', 'YYYY_MM');
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I PARTITION OF transactions FOR VALUES FROM (%L) TO (%L)',
            'transactions_' || suffix, month, next);
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I PARTITION OF postings FOR VALUES FROM (%L) TO (%L)',
            'postings_' || suffix, month, next);
        month := next;
    END LOOP;
END;
$$;
