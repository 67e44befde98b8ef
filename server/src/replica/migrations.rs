//! The replica's schema, created and migrated by versioned SQL migrations (`migrations/`),
//! each applied once, in order, in one transaction with the others a run applies, under an
//! advisory lock so that two `ledgerd` starting together do not race. The table
//! `ledger_schema_migrations` lists what was applied, with each migration's SHA-256: a
//! database whose applied migration differs from this build's (edited after release), or that
//! holds a migration this build does not know (a newer `ledgerd`), is refused.

use sha2::Digest;
use tokio_postgres::Client;

/// One migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its version: 1, 2, … in order.
    pub version: i32,
    /// What it does, in a word or two.
    pub name: &'static str,
    /// Its SQL.
    pub sql: &'static str,
}

/// Every migration of this build, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "base", sql: include_str!("migrations/0001_base.sql") },
    Migration { version: 2, name: "loyalty", sql: include_str!("migrations/0002_loyalty.sql") },
];

/// The advisory lock migrations take (an arbitrary constant: "ledgerd" in ASCII).
const LOCK_KEY: i64 = 0x006c_6564_6765_7264;

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// Versions applied now, in order.
    pub applied: Vec<i32>,
    /// The schema's version now.
    pub version: i32,
}

/// Why the schema could not be brought up to date; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// PostgreSQL refused or failed.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// An applied migration is not the one this build has.
    #[error(
        "migration {version} ({name}) in the database differs from this build's: it was \
         changed after it was applied; restore the released migration"
    )]
    Changed {
        /// The version.
        version: i32,
        /// Its name.
        name: String,
    },
    /// The database was migrated by a newer `ledgerd`.
    #[error(
        "the database holds migration {0}, which this build does not know: it was migrated by \
         a newer ledgerd"
    )]
    Newer(i32),
}

fn checksum(sql: &str) -> String {
    let digest = sha2::Sha256::digest(sql.as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Applies the migrations `client`'s database lacks.
pub async fn migrate(client: &mut Client) -> Result<Migrated, MigrateError> {
    migrate_with(client, MIGRATIONS).await
}

/// `migrate` with a given list (tests add one to see a second run apply only it).
pub async fn migrate_with(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<Migrated, MigrateError> {
    let transaction = client.transaction().await?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY]).await?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS ledger_schema_migrations (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 sha256 text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
    let rows = transaction
        .query("SELECT version, name, sha256 FROM ledger_schema_migrations ORDER BY version", &[])
        .await?;
    let mut done = Vec::new();
    for row in &rows {
        let (version, name, sha): (i32, String, String) = (row.get(0), row.get(1), row.get(2));
        match migrations.iter().find(|m| m.version == version) {
            None => return Err(MigrateError::Newer(version)),
            Some(known) if checksum(known.sql) != sha => {
                return Err(MigrateError::Changed { version, name });
            }
            Some(_) => done.push(version),
        }
    }
    let mut applied = Vec::new();
    for migration in migrations.iter().filter(|m| !done.contains(&m.version)) {
        transaction.batch_execute(migration.sql).await?;
        transaction
            .execute(
                "INSERT INTO ledger_schema_migrations (version, name, sha256) VALUES ($1, $2, $3)",
                &[&migration.version, &migration.name, &checksum(migration.sql)],
            )
            .await?;
        applied.push(migration.version);
    }
    transaction.commit().await?;
    let version = migrations.iter().map(|m| m.version).max().unwrap_or(0);
    if !applied.is_empty() {
        tracing::info!(?applied, version, "replica schema migrated");
    }
    Ok(Migrated { applied, version })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_from_1() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version as usize, index + 1, "{}", migration.name);
            assert!(!migration.sql.trim().is_empty());
        }
    }
}
