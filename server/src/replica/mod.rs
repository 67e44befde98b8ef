//! The reporting replica: every shard's WAL copied into PostgreSQL for finance and analysts
//! (docs/reporting.md). Without a connection string `ledgerd` runs without it.
//!
//! - `migrations`: the schema, versioned and applied at start or by `ledgerd migrate`.

pub mod loyalty;
pub mod migrations;
pub mod reconcile;
pub mod replicator;
pub mod rows;
pub mod writer;

use std::time::Duration;

use anyhow::Context;
use tokio_postgres::{Client, NoTls};

/// Where the replica is.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// The connection string (`postgres://user:password@host:port/database` or
    /// `host=… user=… dbname=…`).
    pub url: String,
    /// The nice value (0..=19) of the replicator's threads: they yield the cores to the POS
    /// path and the shards.
    pub nice: i32,
}

impl std::fmt::Debug for ReplicaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaConfig").field("url", &redacted(&self.url)).finish()
    }
}

/// A connection string without its password, for logs and `--print-config`.
pub fn redacted(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        // postgres://user:password@host/… → postgres://user:***@host/…
        if let Some((credentials, host)) = rest.rsplit_once('@')
            && let Some((user, _)) = credentials.split_once(':')
        {
            return format!("{scheme}://{user}:***@{host}");
        }
        return url.to_string();
    }
    // key=value form: hide the value of password=…
    url.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the replica; the connection is driven by a task on the current runtime.
pub async fn connect(config: &ReplicaConfig) -> anyhow::Result<Client> {
    let mut pg: tokio_postgres::Config = config.url.parse().with_context(|| {
        format!("the replica's connection string {} is invalid", redacted(&config.url))
    })?;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(CONNECT_TIMEOUT);
    }
    pg.application_name("ledgerd");
    let (client, connection) = pg
        .connect(NoTls)
        .await
        .with_context(|| format!("cannot connect to the replica {}", redacted(&config.url)))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "the replica's connection ended");
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redacted("postgres://ledger:s3cret@db.example:5432/reports"),
            "postgres://ledger:***@db.example:5432/reports"
        );
        assert_eq!(redacted("postgres://ledger@db/reports"), "postgres://ledger@db/reports");
        assert_eq!(
            redacted("host=db user=ledger password=s3cret dbname=reports"),
            "host=db user=ledger password=*** dbname=reports"
        );
        let config = ReplicaConfig { url: "postgres://a:b@c/d".into(), nice: 0 };
        assert!(!format!("{config:?}").contains(":b@"));
    }
}
