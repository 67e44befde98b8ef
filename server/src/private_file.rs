//! Files that hold secrets or what guards them (the POS credentials, the admin token hashes):
//! written whole or not at all, readable by the owner only, and a warning when an operator
//! loosened that.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

/// Writes `bytes` to `path` atomically with mode 0600: a temporary file beside it, fsync'd,
/// renamed over `path`, the directory fsync'd.
pub fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Logs a warning when `path` (`what`, for the message) is readable by others than its owner.
pub fn warn_if_shared(path: &Path, what: &str) -> anyhow::Result<()> {
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", mode & 0o777),
            "the {what} file is readable by others: chmod 600 it"
        );
    }
    Ok(())
}
