//! The POS terminals' credentials file: loaded at start-up, created on the first start.
//!
//! When the configured file is the default one (`<data-dir>/credentials.toml`) and it does not
//! exist, `ledgerd` creates it with one terminal (id 1) and a random 256-bit secret, mode 0600,
//! written to a temporary file, fsync'd and renamed, and prints its path, so that a new
//! operator can point a client (or `ledger-load`) at it. A file named explicitly must exist.

use std::path::Path;

use anyhow::{Context, bail};
use ledger_protocol::{Credentials, Terminal};

use crate::config::Config;

/// Loads the credentials file, creating the default one if it is missing.
pub fn load_or_create(config: &Config) -> anyhow::Result<Credentials> {
    let path = &config.pos.credentials;
    let default = config.data_dir.join("credentials.toml");
    if !path.exists() {
        if *path != default {
            bail!("credentials file {} does not exist", path.display());
        }
        create(path).with_context(|| format!("cannot create {}", path.display()))?;
        // The contract with scripts and operators: the path goes to stdout.
        println!("ledgerd: POS terminal credentials written to {}", path.display());
        tracing::info!(path = %path.display(), "created the credentials file with terminal 1");
    }
    crate::private_file::warn_if_shared(path, "credentials")?;
    Credentials::load(path).with_context(|| format!("invalid credentials file {}", path.display()))
}

fn create(path: &Path) -> anyhow::Result<()> {
    let mut secret = vec![0u8; 32];
    getrandom::fill(&mut secret).map_err(|error| anyhow::anyhow!("no randomness: {error}"))?;
    let credentials =
        Credentials::new(vec![Terminal { id: 1, secret, rate_per_second: None, disabled: false }])?;
    crate::private_file::write(path, credentials.to_toml().as_bytes())
}
