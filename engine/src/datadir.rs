//! The data directory: its identity file, its lock, and where each shard lives.
//!
//! Layout (docs/operations.md):
//! ```text
//! <data>/ledgerd.meta            format, data directory id, shard count (written once)
//! <data>/LOCK                    held (flock) by the one process using the directory
//! <data>/shard-000/wal/          00000000000000000001.wal, …, spare.zero
//! <data>/shard-000/snapshots/    snapshot-<lsn>.snap
//! ```
//! The shard count is fixed when the directory is created: customers are mapped to shards by
//! it, so opening with another count is refused rather than silently losing accounts.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::limits::SHARD_COUNT_MAX;
use crate::wal::segment::sync_dir;

/// The meta file's name.
pub const META_FILE: &str = "ledgerd.meta";
/// The lock file's name.
pub const LOCK_FILE: &str = "LOCK";
/// Version of the data directory layout.
pub const LAYOUT_VERSION: u32 = 1;

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// An I/O error.
    #[error("data directory i/o on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Another process holds the lock.
    #[error("data directory {0} is in use by another process")]
    Locked(PathBuf),
    /// The meta file is damaged or from an unknown version.
    #[error("invalid {path}: {reason}")]
    InvalidMeta {
        /// The meta file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The requested shard count differs from the directory's.
    #[error(
        "data directory has {existing} shards but {requested} were requested; the shard count \
         is fixed when a data directory is created"
    )]
    ShardCountMismatch {
        /// Shards in the directory.
        existing: u16,
        /// Shards requested.
        requested: u16,
    },
    /// The requested shard count is out of range.
    #[error("shard count must be 1..={SHARD_COUNT_MAX}, got {0}")]
    ShardCountInvalid(usize),
}

/// The settings that decide what replaying a WAL produces. They are fixed when a data
/// directory is created and read back from `ledgerd.meta` by the server and by offline tools,
/// so a WAL is always replayed under the rules it was written under. (A record that changes
/// them, applied at its place in the WAL, is the way to make them adjustable later.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Semantics {
    /// Postings per transaction.
    pub transaction_postings_max: usize,
    /// Idempotency keys remembered per shard.
    pub idempotency_keys_max: usize,
    /// How long idempotency keys are remembered.
    pub idempotency_retention_nanos: u64,
    /// Open holds per shard.
    pub holds_open_max: usize,
    /// Longest hold timeout.
    pub hold_timeout_max_nanos: u64,
    /// Cross-shard transfers in flight per shard.
    pub transfers_in_flight_max: usize,
    /// Recent postings remembered per shard (history and reversals).
    pub history_entries_max: usize,
}

/// What `ledgerd.meta` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataDirMeta {
    /// Random id shared by every WAL segment and snapshot of the directory.
    pub cluster_id: u64,
    /// Shards, fixed at creation.
    pub shard_count: u16,
    /// The replay rules, fixed at creation.
    pub semantics: Semantics,
}

/// An open, locked data directory.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    meta: DataDirMeta,
    /// Holds the advisory lock for as long as the directory is open.
    _lock: File,
}

impl DataDir {
    /// Opens (creating if needed) and locks `path`. A new directory gets `shard_count`
    /// shards and `semantics`; an existing one must have been created with the same count
    /// (when given) and keeps its own semantics.
    pub fn open(
        path: &Path,
        shard_count: Option<u16>,
        semantics: Semantics,
    ) -> Result<DataDir, DataDirError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DataDirError::Io { path, source }
        };
        fs::create_dir_all(path).map_err(io(path))?;
        let lock_path = path.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(DataDirError::Locked(path.to_path_buf()));
            }
            Err(fs::TryLockError::Error(source)) => {
                return Err(DataDirError::Io { path: lock_path, source });
            }
        }
        let meta_path = path.join(META_FILE);
        let meta = match fs::read_to_string(&meta_path) {
            Ok(text) => {
                let meta = parse_meta(&text).map_err(|reason| DataDirError::InvalidMeta {
                    path: meta_path.clone(),
                    reason,
                })?;
                if let Some(requested) = shard_count
                    && requested != meta.shard_count
                {
                    return Err(DataDirError::ShardCountMismatch {
                        existing: meta.shard_count,
                        requested,
                    });
                }
                meta
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let shard_count = shard_count.unwrap_or_else(default_shard_count);
                if shard_count == 0 || usize::from(shard_count) > SHARD_COUNT_MAX {
                    return Err(DataDirError::ShardCountInvalid(usize::from(shard_count)));
                }
                let meta = DataDirMeta { cluster_id: new_cluster_id(path), shard_count, semantics };
                write_meta(path, &meta_path, &meta).map_err(io(&meta_path))?;
                meta
            }
            Err(source) => return Err(DataDirError::Io { path: meta_path, source }),
        };
        Ok(DataDir { path: path.to_path_buf(), meta, _lock: lock })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its identity and shard count.
    pub fn meta(&self) -> DataDirMeta {
        self.meta
    }
}

/// The default shard count: the number of CPUs.
pub fn default_shard_count() -> u16 {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    u16::try_from(cpus.min(SHARD_COUNT_MAX)).unwrap_or(1)
}

/// Reads the meta file of a data directory without locking it (for offline tools).
pub fn read_meta(path: &Path) -> Result<DataDirMeta, DataDirError> {
    let meta_path = path.join(META_FILE);
    let text = fs::read_to_string(&meta_path)
        .map_err(|source| DataDirError::Io { path: meta_path.clone(), source })?;
    parse_meta(&text).map_err(|reason| DataDirError::InvalidMeta { path: meta_path, reason })
}

fn parse_meta(text: &str) -> Result<DataDirMeta, String> {
    if text.len() > 4096 {
        return Err("meta file is too large".to_string());
    }
    let mut layout = None;
    let mut cluster_id = None;
    let mut shard_count = None;
    let mut numbers = std::collections::BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (key, value) = line.split_once('=').ok_or(format!("malformed line {line:?}"))?;
        let (key, value) = (key.trim(), value.trim().trim_matches('"'));
        match key {
            "transaction_postings_max"
            | "idempotency_keys_max"
            | "idempotency_retention_nanos"
            | "holds_open_max"
            | "hold_timeout_max_nanos"
            | "transfers_in_flight_max"
            | "history_entries_max" => {
                let number = value.parse::<u64>().map_err(|e| format!("{key}: {e}"))?;
                numbers.insert(key, number);
            }
            "layout_version" => {
                layout = Some(value.parse::<u32>().map_err(|e| format!("layout_version: {e}"))?)
            }
            "cluster_id" => {
                cluster_id =
                    Some(u64::from_str_radix(value, 16).map_err(|e| format!("cluster_id: {e}"))?)
            }
            "shard_count" => {
                shard_count = Some(value.parse::<u16>().map_err(|e| format!("shard_count: {e}"))?)
            }
            _ => return Err(format!("unknown key {key:?}")),
        }
    }
    match layout {
        Some(LAYOUT_VERSION) => {}
        Some(other) => return Err(format!("unsupported layout_version {other}")),
        None => return Err("missing layout_version".to_string()),
    }
    let shard_count = shard_count.ok_or("missing shard_count")?;
    if shard_count == 0 || usize::from(shard_count) > SHARD_COUNT_MAX {
        return Err(format!("shard_count {shard_count} out of range"));
    }
    let number = |key: &str| numbers.get(key).copied().ok_or(format!("missing {key}"));
    let count = |key: &str| -> Result<usize, String> {
        usize::try_from(number(key)?)
            .ok()
            .filter(|value| *value > 0)
            .ok_or(format!("{key} out of range"))
    };
    // The two retained tables keep two generations of at least one entry, at ring positions
    // that fit in u32.
    let table = |key: &str| -> Result<usize, String> {
        let value = count(key)?;
        if (2..=u32::MAX as usize).contains(&value) {
            Ok(value)
        } else {
            Err(format!("{key} must be 2..={}", u32::MAX))
        }
    };
    let retention = number("idempotency_retention_nanos")?;
    if retention == 0 {
        return Err("idempotency_retention_nanos must be at least 1".to_string());
    }
    let semantics = Semantics {
        transaction_postings_max: count("transaction_postings_max")?,
        idempotency_keys_max: table("idempotency_keys_max")?,
        idempotency_retention_nanos: retention,
        holds_open_max: table("holds_open_max")?,
        hold_timeout_max_nanos: number("hold_timeout_max_nanos")?,
        transfers_in_flight_max: count("transfers_in_flight_max")?,
        // Added after the first directories were written: those keep the default.
        history_entries_max: if numbers.contains_key("history_entries_max") {
            count("history_entries_max")?
        } else {
            crate::limits::Limits::default().history_entries_max
        },
    };
    Ok(DataDirMeta { cluster_id: cluster_id.ok_or("missing cluster_id")?, shard_count, semantics })
}

fn write_meta(dir: &Path, path: &Path, meta: &DataDirMeta) -> std::io::Result<()> {
    let text = format!(
        "# ledgerd data directory; written once at creation, do not edit.\n\
         layout_version = {LAYOUT_VERSION}\n\
         cluster_id = \"{:016x}\"\n\
         shard_count = {}\n\
         # Replay rules: the WAL of this directory is replayed under these.\n\
         transaction_postings_max = {}\n\
         idempotency_keys_max = {}\n\
         idempotency_retention_nanos = {}\n\
         holds_open_max = {}\n\
         hold_timeout_max_nanos = {}\n\
         transfers_in_flight_max = {}\n\
         history_entries_max = {}\n",
        meta.cluster_id,
        meta.shard_count,
        meta.semantics.transaction_postings_max,
        meta.semantics.idempotency_keys_max,
        meta.semantics.idempotency_retention_nanos,
        meta.semantics.holds_open_max,
        meta.semantics.hold_timeout_max_nanos,
        meta.semantics.transfers_in_flight_max,
        meta.semantics.history_entries_max,
    );
    let tmp = path.with_extension("meta.tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// A random-enough id for a data directory: it only has to differ between directories, so
/// that files copied from one into another are recognised.
fn new_cluster_id(path: &Path) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let mut seed = Vec::new();
    seed.extend_from_slice(&nanos.to_le_bytes());
    seed.extend_from_slice(&std::process::id().to_le_bytes());
    seed.extend_from_slice(path.as_os_str().as_encoded_bytes());
    let stack_address = &seed as *const Vec<u8> as u64;
    seed.extend_from_slice(&stack_address.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn semantics(keys: usize) -> Semantics {
        Semantics {
            transaction_postings_max: 16,
            idempotency_keys_max: keys,
            idempotency_retention_nanos: 1_000,
            holds_open_max: 10,
            hold_timeout_max_nanos: 2_000,
            transfers_in_flight_max: 8,
            history_entries_max: 32,
        }
    }

    #[test]
    fn a_directory_is_created_locked_and_reopened_with_its_shard_count_and_semantics() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path(), Some(3), semantics(100)).unwrap();
        assert_eq!(first.meta().shard_count, 3);
        assert!(matches!(
            DataDir::open(dir.path(), Some(3), semantics(100)),
            Err(DataDirError::Locked(_))
        ));
        let cluster_id = first.meta().cluster_id;
        drop(first);
        // Reopened with other semantics: the directory keeps the ones it was created with.
        let again = DataDir::open(dir.path(), None, semantics(5)).unwrap();
        assert_eq!(
            again.meta(),
            DataDirMeta { cluster_id, shard_count: 3, semantics: semantics(100) }
        );
        drop(again);
        let error = DataDir::open(dir.path(), Some(4), semantics(100)).unwrap_err();
        assert!(matches!(error, DataDirError::ShardCountMismatch { existing: 3, requested: 4 }));
        assert_eq!(read_meta(dir.path()).unwrap().semantics, semantics(100));
    }

    fn meta_text(keys: u64, holds: u64, retention: u64) -> String {
        format!(
            "layout_version = 1\ncluster_id = \"1\"\nshard_count = 2\n\
             transaction_postings_max = 16\nidempotency_keys_max = {keys}\n\
             idempotency_retention_nanos = {retention}\nholds_open_max = {holds}\n\
             hold_timeout_max_nanos = 5\ntransfers_in_flight_max = 8\n"
        )
    }

    #[test]
    fn damaged_meta_is_refused() {
        assert!(parse_meta(&meta_text(64, 10, 1_000)).is_ok());
        let cases = [
            String::new(),
            "layout_version = 1\nshard_count = 2\n".to_string(),
            "layout_version = 9\ncluster_id = \"1\"\nshard_count = 2\n".to_string(),
            "layout_version = 1\ncluster_id = \"1\"\nshard_count = 2\n".to_string(),
            "garbage".to_string(),
            meta_text(1, 10, 1_000),
            meta_text(64, 1, 1_000),
            meta_text(64, 10, 0),
        ];
        for text in &cases {
            assert!(parse_meta(text).is_err(), "{text:?}");
        }
        assert!(matches!(
            DataDir::open(tempfile::tempdir().unwrap().path(), Some(0), semantics(1)),
            Err(DataDirError::ShardCountInvalid(0))
        ));
    }
}
