-- ledgerd reporting replica, migration 2: the loyalty programme's tables (members, lots,
-- purchases and their transitions, tier changes, rule and rate versions), each posting's flow,
-- and the reporting views. Documented column by column in docs/reporting.md. Never edited
-- after release.

-- Where each shard's loyalty rows begin. Purchases, transitions, tier changes and posting
-- flows exist for the records after `loyalty_from`; members and lots are whole while
-- `loyalty_synced` (the replicator writes them whole, then sets it, for shards replicated
-- before this migration).
ALTER TABLE shard_watermarks
    ADD COLUMN loyalty_from bigint NOT NULL DEFAULT 0,
    ADD COLUMN loyalty_synced boolean NOT NULL DEFAULT true;
UPDATE shard_watermarks SET loyalty_from = lsn, loyalty_synced = false;

-- Which flow of the programme's points a posted posting is (docs/loyalty.md, "Liability and
-- breakage"): issued, redeemed, expired, refunded; NULL for every other posting.
ALTER TABLE postings ADD COLUMN flow text
    CHECK (flow IN ('issued', 'redeemed', 'expired', 'refunded'));

-- Holds by the hold they end (captures, voids, expiries): `open_holds`.
CREATE INDEX transactions_hold ON transactions (((metadata ->> 'hold')::bigint))
    WHERE record_kind IN ('hold_capture', 'hold_void', 'hold_expire');

-- Every rule version of the programme (recorded on every shard; one row).
CREATE TABLE rule_versions (
    version integer PRIMARY KEY CHECK (version >= 1),
    -- The effective time the operator asked for; NULL: at once.
    effective_at timestamptz,
    -- The earliest time a shard recorded it.
    recorded_at timestamptz NOT NULL,
    -- When it takes effect: the later of the two.
    in_force_from timestamptz GENERATED ALWAYS AS (GREATEST(effective_at, recorded_at)) STORED,
    points_class text NOT NULL,
    points_asset text NOT NULL,
    issuance_class text NOT NULL,
    breakage_class text NOT NULL,
    cashback_class text,
    cashback_funding_class text,
    clawback_class text,
    cashback_clawback_class text,
    -- A point is worth point_value_minor_units / point_value_points minor units of money.
    point_value_minor_units bigint NOT NULL CHECK (point_value_minor_units > 0),
    point_value_points bigint NOT NULL CHECK (point_value_points > 0),
    earned_months integer NOT NULL,
    bonus_months integer NOT NULL,
    transfer_months integer NOT NULL,
    tier_window_months integer NOT NULL,
    refund_days integer NOT NULL,
    -- Days a pending purchase's points are held; NULL: available at once.
    pending_hold_days integer,
    -- [{"tier": 0, "name": "base", "threshold": 0}, …]
    tiers jsonb NOT NULL,
    -- [{"promotion": 0, "name": "black-friday", "starts_at": "…", "ends_at": "…"}, …]
    promotions jsonb NOT NULL
);

-- Every rate of the partner exchange (recorded on every shard; one row).
CREATE TABLE exchange_rates (
    version integer PRIMARY KEY CHECK (version >= 1),
    effective_at timestamptz,
    recorded_at timestamptz NOT NULL,
    in_force_from timestamptz GENERATED ALWAYS AS (GREATEST(effective_at, recorded_at)) STORED,
    from_asset text NOT NULL,
    to_asset text NOT NULL,
    -- `amount` points of from_asset convert to floor(amount × numerator / denominator).
    numerator bigint NOT NULL CHECK (numerator > 0),
    denominator bigint NOT NULL CHECK (denominator > 0),
    money_asset text NOT NULL,
    from_customer_class text NOT NULL,
    from_fund text NOT NULL,
    from_money_fund text NOT NULL,
    from_value_minor_units bigint NOT NULL,
    from_value_points bigint NOT NULL,
    to_customer_class text NOT NULL,
    to_fund text NOT NULL,
    to_money_fund text NOT NULL,
    to_value_minor_units bigint NOT NULL,
    to_value_points bigint NOT NULL
);

-- Every member (a customer with loyalty state), as of its shard's watermark.
CREATE TABLE members (
    customer bigint PRIMARY KEY,
    shard integer NOT NULL,
    -- The tier their last purchase (or give-back) recorded.
    tier integer NOT NULL CHECK (tier >= 0),
    -- Points in their lots, and points parked from their lots by open holds (both in their
    -- posted balance: the two add up to it).
    points_in_lots numeric(20, 0) NOT NULL CHECK (points_in_lots >= 0),
    points_held numeric(20, 0) NOT NULL CHECK (points_held >= 0),
    lots integer NOT NULL CHECK (lots >= 0),
    -- Their first purchase replicated (their cohort is its month); NULL: none.
    first_purchase_at timestamptz,
    updated_lsn bigint NOT NULL
) WITH (fillfactor = 70);

-- Every open lot (a lot with points left), as of its shard's watermark. Spent and expired
-- lots leave the table; their history is in `postings`.
CREATE TABLE lots (
    customer bigint NOT NULL,
    kind text NOT NULL CHECK (kind IN ('earned', 'bonus', 'transfer')),
    -- It expires at 00:00 UTC of this day.
    expires_on date NOT NULL,
    -- The transaction whose credit opened it (0: the programme's start).
    origin_tx bigint NOT NULL,
    amount numeric(20, 0) NOT NULL CHECK (amount > 0),
    remaining numeric(20, 0) NOT NULL CHECK (remaining > 0 AND remaining <= amount),
    shard integer NOT NULL,
    PRIMARY KEY (customer, kind, expires_on)
);

CREATE INDEX lots_expires_on ON lots (expires_on);

-- Every purchase, with its lifecycle state as of its shard's watermark.
CREATE TABLE purchases (
    tx_id bigint PRIMARY KEY,
    time timestamptz NOT NULL,
    shard integer NOT NULL,
    lsn bigint NOT NULL,
    customer bigint NOT NULL,
    terminal bigint NOT NULL,
    store bigint NOT NULL,
    receipt text NOT NULL,
    -- The basket's total and its number of lines.
    spend numeric(20, 0) NOT NULL,
    lines integer NOT NULL,
    rules_version integer NOT NULL,
    earned numeric(20, 0) NOT NULL,
    bonus numeric(20, 0) NOT NULL,
    cashback numeric(20, 0) NOT NULL,
    tier_before integer NOT NULL,
    tier_after integer NOT NULL,
    -- Its points were credited pending (the programme held them until settlement).
    points_held boolean NOT NULL,
    state text NOT NULL
        CHECK (state IN ('pending', 'settled', 'failed', 'partly_refunded', 'refunded')),
    -- How much of its refund basis is refunded.
    refunded numeric(20, 0) NOT NULL DEFAULT 0,
    -- The record that set `state` (the purchase's own until a transition).
    state_changed_at timestamptz NOT NULL,
    state_lsn bigint NOT NULL
);

CREATE INDEX purchases_customer_time ON purchases (customer, time);
-- Time ranges: a BRIN index (purchases arrive in time order per shard), cheap to keep.
CREATE INDEX purchases_time ON purchases USING brin (time);

-- Every transition of a purchase after the till.
CREATE TABLE purchase_transitions (
    time timestamptz NOT NULL,
    shard integer NOT NULL,
    lsn bigint NOT NULL,
    -- The transition's own transaction id.
    tx_id bigint NOT NULL,
    purchase bigint NOT NULL,
    customer bigint NOT NULL,
    event text NOT NULL CHECK (event IN ('settle', 'fail', 'refund', 'release', 'reverse')),
    state_after text NOT NULL
        CHECK (state_after IN ('pending', 'settled', 'failed', 'partly_refunded', 'refunded')),
    refunded numeric(20, 0) NOT NULL,
    -- What it took back (and, of that, what the member owes on a clawback account).
    earned_back numeric(20, 0) NOT NULL,
    bonus_back numeric(20, 0) NOT NULL,
    cashback_back numeric(20, 0) NOT NULL,
    points_owed numeric(20, 0) NOT NULL,
    cashback_owed numeric(20, 0) NOT NULL,
    PRIMARY KEY (shard, lsn)
);

CREATE INDEX purchase_transitions_purchase ON purchase_transitions (purchase);

-- Every change of a member's recorded tier.
CREATE TABLE tier_changes (
    time timestamptz NOT NULL,
    shard integer NOT NULL,
    lsn bigint NOT NULL,
    tx_id bigint,
    customer bigint NOT NULL,
    tier_before integer NOT NULL,
    tier_after integer NOT NULL,
    -- The record that changed it: purchase, purchase_refund, purchase_fail, ….
    record_kind text NOT NULL,
    PRIMARY KEY (shard, lsn, customer)
);

CREATE INDEX tier_changes_customer_time ON tier_changes (customer, time);

-- Views ---------------------------------------------------------------------------------

-- Every account's figures now (as of each shard's watermark), from the postings.
CREATE VIEW account_balances AS
SELECT a.address, a.namespace, a.class, a.asset, a.owner,
       COALESCE(m.posted, 0) AS balance,
       COALESCE(m.pending_debits, 0) AS pending_debits,
       COALESCE(m.pending_credits, 0) AS pending_credits
FROM accounts a
LEFT JOIN (
    SELECT account, SUM(posted) AS posted, SUM(pending_debits) AS pending_debits,
           SUM(pending_credits) AS pending_credits
    FROM (
        SELECT credit AS account,
               CASE effect WHEN 'posted' THEN amount ELSE 0 END AS posted,
               0::numeric AS pending_debits,
               CASE effect WHEN 'pending' THEN amount WHEN 'released' THEN -amount ELSE 0 END
                   AS pending_credits
        FROM postings
        UNION ALL
        SELECT debit,
               CASE effect WHEN 'posted' THEN -amount ELSE 0 END,
               CASE effect WHEN 'pending' THEN amount WHEN 'released' THEN -amount ELSE 0 END,
               0
        FROM postings
    ) moved
    GROUP BY account
) m ON m.account = a.address;

-- The rule version in force now.
CREATE VIEW rule_version_in_force AS
SELECT * FROM rule_versions
WHERE in_force_from <= now()
ORDER BY in_force_from DESC, version DESC
LIMIT 1;

-- What members hold, per customer class: points outstanding, cashback owed, and (below zero)
-- what members owe back.
CREATE VIEW liability_by_class AS
SELECT class, asset, SUM(balance) AS total, COUNT(*) FILTER (WHERE balance <> 0) AS accounts
FROM account_balances
WHERE namespace = 'customer'
GROUP BY class, asset;

-- What members hold, per asset.
CREATE VIEW liability_by_asset AS
SELECT asset, SUM(total) AS total
FROM liability_by_class
GROUP BY asset;

-- The points outstanding and their value in money at the point value in force now.
CREATE VIEW liability_in_money AS
SELECT v.points_asset AS asset, l.total AS points,
       floor(l.total * v.point_value_minor_units / v.point_value_points) AS value_minor_units,
       v.version AS rules_version
FROM rule_version_in_force v
JOIN liability_by_class l ON l.class = v.points_class;

-- Points in lots by the month they expire in (points parked by holds are not in it).
CREATE VIEW liability_by_expiry_month AS
SELECT date_trunc('month', expires_on)::date AS month, SUM(remaining) AS points,
       COUNT(*) AS lots, COUNT(DISTINCT customer) AS members
FROM lots
GROUP BY 1;

-- Points members hold (in lots and held by holds), by the month of their first purchase
-- (NULL: members who never bought, such as transfer recipients).
CREATE VIEW liability_by_cohort AS
SELECT date_trunc('month', first_purchase_at AT TIME ZONE 'UTC')::date AS cohort,
       SUM(points_in_lots + points_held) AS points, COUNT(*) AS members
FROM members
GROUP BY 1;

-- Points issued, redeemed, expired and refunded per UTC day.
CREATE VIEW points_flows_daily AS
SELECT (time AT TIME ZONE 'UTC')::date AS day,
       COALESCE(SUM(amount) FILTER (WHERE flow = 'issued'), 0) AS issued,
       COALESCE(SUM(amount) FILTER (WHERE flow = 'redeemed'), 0) AS redeemed,
       COALESCE(SUM(amount) FILTER (WHERE flow = 'expired'), 0) AS expired,
       COALESCE(SUM(amount) FILTER (WHERE flow = 'refunded'), 0) AS refunded
FROM postings
WHERE flow IS NOT NULL
GROUP BY 1;

-- Breakage per month: points expired over points issued in the month (NULL: none issued).
CREATE VIEW breakage_by_month AS
SELECT date_trunc('month', day)::date AS month, SUM(issued) AS issued, SUM(expired) AS expired,
       SUM(expired) / NULLIF(SUM(issued), 0) AS rate
FROM points_flows_daily
GROUP BY 1;

-- Holds neither captured, voided nor expired, with what they reserve.
CREATE VIEW open_holds AS
SELECT h.tx_id AS hold, h.time, h.shard, h.lsn, h.customer, h.terminal, h.store,
       p.debit, p.credit, p.asset, p.amount,
       (h.metadata ->> 'expires_at')::timestamptz AS expires_at
FROM transactions h
JOIN postings p ON p.time = h.time AND p.shard = h.shard AND p.lsn = h.lsn
                AND p.effect = 'pending'
WHERE h.record_kind = 'hold_create'
  AND NOT EXISTS (
      SELECT 1 FROM transactions e
      WHERE e.record_kind IN ('hold_capture', 'hold_void', 'hold_expire')
        AND (e.metadata ->> 'hold')::bigint = h.tx_id);

-- Members per recorded tier, named by the rule version in force.
CREATE VIEW tier_distribution AS
SELECT m.tier, t.name, COUNT(*) AS members
FROM members m
LEFT JOIN LATERAL (
    SELECT x ->> 'name' AS name
    FROM rule_version_in_force v, jsonb_array_elements(v.tiers) x
    WHERE (x ->> 'tier')::integer = m.tier
) t ON true
GROUP BY m.tier, t.name;

-- Purchases by lifecycle state.
CREATE VIEW purchases_by_state AS
SELECT state, COUNT(*) AS purchases, SUM(spend) AS spend, SUM(earned + bonus) AS points,
       SUM(cashback) AS cashback
FROM purchases
GROUP BY state;
