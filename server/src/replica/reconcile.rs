//! Reconciliation: proves that the replica says what the WAL says. At each shard's watermark,
//! every account's posted balance and pending counters computed from PostgreSQL's postings
//! equal those of the shard's ledger replayed from its files to that LSN (`Follower`), and
//! every asset sums to zero in PostgreSQL. `ledgerd reconcile` runs it (docs/reporting.md,
//! "Reconciliation"); it reads the data directory's files only, so it runs beside a live
//! `ledgerd`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use ledger_engine::follow::Follower;
use ledger_engine::recovery::ShardPaths;
use ledger_engine::{Limits, Lsn, ShardId};
use tokio_postgres::Client;

use super::loyalty::LoyaltyRows;
use super::rows::address;

/// An account's figures: posted balance, pending debits, pending credits.
type Figures = (i128, i128, i128);

/// The first account whose figures differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The shard.
    pub shard: u16,
    /// The LSN compared at (the replica's watermark).
    pub lsn: u64,
    /// The account.
    pub account: String,
    /// (posted balance, pending debits, pending credits) in PostgreSQL.
    pub replica: Figures,
    /// The same, replayed from the WAL.
    pub wal: Figures,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "shard {} at lsn {}: {} is (posted {}, pending debits {}, pending credits {}) in \
             PostgreSQL and (posted {}, pending debits {}, pending credits {}) in the WAL",
            self.shard,
            self.lsn,
            self.account,
            self.replica.0,
            self.replica.1,
            self.replica.2,
            self.wal.0,
            self.wal.1,
            self.wal.2
        )
    }
}

/// What a reconciliation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Per shard, the LSN compared at.
    pub shards: Vec<(u16, u64)>,
    /// Accounts compared.
    pub accounts: u64,
    /// Per asset, the sum of posted balances in PostgreSQL (0 when sound).
    pub assets: Vec<(String, i128)>,
    /// The first difference, if any.
    pub difference: Option<Difference>,
    /// Members compared (their tier, points in lots and held, lots).
    pub members: u64,
    /// The first member or lot whose row differs from the WAL's, if any.
    pub loyalty_difference: Option<String>,
}

impl Reconciled {
    /// Whether the replica equals the WAL and every asset sums to zero.
    pub fn balanced(&self) -> bool {
        self.difference.is_none()
            && self.loyalty_difference.is_none()
            && self.assets.iter().all(|(_, sum)| *sum == 0)
    }
}

fn number(text: &str) -> anyhow::Result<i128> {
    text.parse().with_context(|| format!("{text:?} is not an integer"))
}

/// Reconciles the replica `client` holds with the data directory `data_dir`.
pub async fn reconcile(
    client: &Client,
    data_dir: &Path,
    limits: &Limits,
) -> anyhow::Result<Reconciled> {
    let meta = ledger_engine::datadir::read_meta(data_dir)
        .with_context(|| format!("cannot read the data directory {}", data_dir.display()))?;
    let identity = client
        .query_opt("SELECT cluster_id, shard_count FROM ledger_identity", &[])
        .await
        .context("the database holds no replica (no ledger_identity)")?
        .context("the database holds no replica yet")?;
    let cluster: i64 = identity.get(0);
    anyhow::ensure!(
        cluster as u64 == meta.cluster_id,
        "the database holds the ledger of data directory {:016x}, not {:016x}",
        cluster as u64,
        meta.cluster_id
    );
    let mut result = Reconciled {
        shards: Vec::new(),
        accounts: 0,
        assets: Vec::new(),
        difference: None,
        members: 0,
        loyalty_difference: None,
    };
    for index in 0..meta.shard_count {
        let lsn = super::writer::watermark(client, index).await?.map_or(0, |(lsn, _)| lsn);
        result.shards.push((index, lsn));
        let shard = ShardId::new(index).context("a shard of the directory")?;
        let config = ledger_engine::engine::ledger_config(&meta, shard, limits);
        let paths = ShardPaths::new(data_dir, index);
        let cluster_id = meta.cluster_id;
        let follower = tokio::task::spawn_blocking(move || {
            Follower::open(&paths, config, cluster_id, Lsn(lsn))
        })
        .await?
        .with_context(|| format!("cannot replay shard {index} to lsn {lsn}"))?;
        let ledger = follower.ledger();
        let mut wal: BTreeMap<String, Figures> = BTreeMap::new();
        for (id, account) in ledger.accounts() {
            let figures = (
                account.balance_posted(),
                i128::try_from(account.debits_pending).unwrap_or(i128::MAX),
                i128::try_from(account.credits_pending).unwrap_or(i128::MAX),
            );
            if figures != (0, 0, 0) {
                wal.insert(address(ledger.registry(), *id), figures);
            }
        }
        let rows = client
            .query(
                "SELECT account, SUM(posted)::text, SUM(pending_debits)::text, \
                 SUM(pending_credits)::text FROM ( \
                   SELECT credit AS account, \
                     CASE effect WHEN 'posted' THEN amount ELSE 0 END AS posted, \
                     0::numeric AS pending_debits, \
                     CASE effect WHEN 'pending' THEN amount WHEN 'released' THEN -amount ELSE 0 END \
                       AS pending_credits \
                   FROM postings WHERE shard = $1 AND lsn <= $2 \
                   UNION ALL \
                   SELECT debit, CASE effect WHEN 'posted' THEN -amount ELSE 0 END, \
                     CASE effect WHEN 'pending' THEN amount WHEN 'released' THEN -amount ELSE 0 END, \
                     0 \
                   FROM postings WHERE shard = $1 AND lsn <= $2) moved \
                 GROUP BY account",
                &[&i32::from(index), &(lsn as i64)],
            )
            .await?;
        let mut replica: BTreeMap<String, Figures> = BTreeMap::new();
        for row in rows {
            let figures = (number(row.get(1))?, number(row.get(2))?, number(row.get(3))?);
            if figures != (0, 0, 0) {
                replica.insert(row.get(0), figures);
            }
        }
        let names: std::collections::BTreeSet<&String> = wal.keys().chain(replica.keys()).collect();
        result.accounts += names.len() as u64;
        if result.difference.is_none() {
            for name in names {
                let (ours, theirs) = (
                    wal.get(name).copied().unwrap_or_default(),
                    replica.get(name).copied().unwrap_or_default(),
                );
                if ours != theirs {
                    result.difference = Some(Difference {
                        shard: index,
                        lsn,
                        account: name.clone(),
                        replica: theirs,
                        wal: ours,
                    });
                    break;
                }
            }
        }
        let members = compare_members(client, index, lsn, ledger).await?;
        result.members += members.0;
        if result.loyalty_difference.is_none() {
            result.loyalty_difference = members.1;
        }
    }
    // Every asset at zero: the posted balances of all accounts (every shard's slice), by
    // the asset the `accounts` table gives each account.
    for row in client
        .query(
            "SELECT a.asset, SUM(m.delta)::text FROM ( \
               SELECT credit AS account, amount AS delta FROM postings WHERE effect = 'posted' \
               UNION ALL SELECT debit, -amount FROM postings WHERE effect = 'posted') m \
             JOIN accounts a ON a.address = m.account GROUP BY a.asset ORDER BY a.asset",
            &[],
        )
        .await?
    {
        result.assets.push((row.get(0), number(row.get(1))?));
    }
    Ok(result)
}

/// Compares `shard`'s members and lots in PostgreSQL with `ledger`'s (the WAL replayed to
/// the watermark `lsn`): members compared, and the first row that differs.
async fn compare_members(
    client: &Client,
    shard: u16,
    lsn: u64,
    ledger: &ledger_engine::ledger::Ledger,
) -> anyhow::Result<(u64, Option<String>)> {
    let mut wal = LoyaltyRows::default();
    wal.whole = true;
    wal.finish(ledger);
    let members: Vec<String> = wal
        .members
        .iter()
        .map(|m| {
            format!(
                "member {}: tier {}, {} points in {} lots, {} held",
                m.customer, m.tier, m.points_in_lots, m.lots, m.points_held
            )
        })
        .collect();
    let mut lots: Vec<String> = wal
        .lots
        .iter()
        .map(|l| {
            format!(
                "lot of {} ({}, expiring on day {}): origin {}, {} of {} left",
                l.customer, l.kind, l.expires_day, l.origin, l.remaining, l.amount
            )
        })
        .collect();
    lots.sort();
    let shard_id = i32::from(shard);
    let replica_members: Vec<String> = client
        .query(
            "SELECT customer, tier, points_in_lots::text, lots, points_held::text FROM members \
             WHERE shard = $1 ORDER BY customer",
            &[&shard_id],
        )
        .await?
        .iter()
        .map(|row| {
            format!(
                "member {}: tier {}, {} points in {} lots, {} held",
                row.get::<_, i64>(0) as u64,
                row.get::<_, i32>(1),
                row.get::<_, String>(2),
                row.get::<_, i32>(3),
                row.get::<_, String>(4)
            )
        })
        .collect();
    let mut replica_lots: Vec<String> = client
        .query(
            "SELECT customer, kind, (expires_on - DATE '1970-01-01'), origin_tx, \
             remaining::text, amount::text FROM lots WHERE shard = $1",
            &[&shard_id],
        )
        .await?
        .iter()
        .map(|row| {
            format!(
                "lot of {} ({}, expiring on day {}): origin {}, {} of {} left",
                row.get::<_, i64>(0) as u64,
                row.get::<_, String>(1),
                row.get::<_, i32>(2),
                row.get::<_, i64>(3) as u64,
                row.get::<_, String>(4),
                row.get::<_, String>(5)
            )
        })
        .collect();
    replica_lots.sort();
    let first = |ours: &[String], theirs: &[String]| -> Option<String> {
        let differs = ours.iter().zip(theirs).find(|(a, b)| a != b);
        match differs {
            Some((wal, replica)) => Some(format!("WAL: {wal}; PostgreSQL: {replica}")),
            None if ours.len() > theirs.len() => {
                Some(format!("WAL: {}; PostgreSQL: no such row", ours[theirs.len()]))
            }
            None if theirs.len() > ours.len() => {
                Some(format!("WAL: no such row; PostgreSQL: {}", theirs[ours.len()]))
            }
            None => None,
        }
    };
    let difference = first(&members, &replica_members)
        .or_else(|| first(&lots, &replica_lots))
        .map(|what| format!("shard {shard} at lsn {lsn}: {what}"));
    Ok((members.len() as u64, difference))
}
