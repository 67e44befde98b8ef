//! Segment files on disk: names, listing, and zero-filled preallocation.
//!
//! A shard's WAL directory holds `<sequence>.wal` files (20 decimal digits, so names sort in
//! order) and at most one `spare.zero`: a zero-filled, fsync'd file of `segment_bytes` ready to
//! become the next segment. Zero-filling up front is what makes each group commit's fdatasync
//! cheap: the file's size and extents never change while records are written into it, so the
//! filesystem has no metadata to journal (ECOSYSTEM.md §4: about twice as fast on this disk as
//! appending or writing into merely fallocated space). Files being prepared carry a `.tmp`
//! suffix and are deleted at start-up.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The spare segment, ready to be renamed into place.
pub const SPARE_FILE: &str = "spare.zero";
const TMP_SUFFIX: &str = ".tmp";
const ZERO_CHUNK_BYTES: usize = 1 << 20;

/// The file name of segment `sequence`.
pub fn segment_file_name(sequence: u64) -> String {
    format!("{sequence:020}.wal")
}

/// The sequence number in a segment file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments of a WAL directory, in sequence order.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(sequence) = name.to_str().and_then(parse_segment_file_name) {
            segments.push((sequence, entry.path()));
        }
    }
    segments.sort_unstable_by_key(|(sequence, _)| *sequence);
    Ok(segments)
}

/// Deletes the leftovers of preparations that a crash interrupted.
pub fn remove_temporary_files(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_str().is_some_and(|name| name.ends_with(TMP_SUFFIX)) {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Makes a directory's entries (creations, renames, deletions) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes zeros into `file` from `from` up to `bytes`, then makes them durable with
/// `sync_all` (the file's size may change, so its metadata must be flushed too).
pub fn zero_fill(file: &mut File, from: u64, bytes: u64) -> io::Result<()> {
    write_zeros(file, from, bytes)?;
    file.sync_all()
}

fn write_zeros(file: &mut File, from: u64, to: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let zeros = vec![0u8; ZERO_CHUNK_BYTES];
    file.seek(SeekFrom::Start(from))?;
    let mut left = to.saturating_sub(from);
    while left > 0 {
        let chunk = usize::try_from(left.min(ZERO_CHUNK_BYTES as u64)).expect("chunk fits");
        file.write_all(&zeros[..chunk])?;
        left -= chunk as u64;
    }
    Ok(())
}

/// Block alignment of direct I/O.
const DIRECT_ALIGN: usize = 4096;

/// Zero-fills a new file of `bytes`, bypassing the page cache where the filesystem allows.
///
/// Writing zeros through the page cache into fresh blocks costs about 2.6 s of kernel CPU per
/// GiB on the reference VM (block allocation and page-cache insertion); with `O_DIRECT` it is
/// about 0.12 s (docs/performance.md). On a 2-core machine that difference is a large share of
/// the CPU the shards need. The WAL itself is still written buffered; the few partial pages it
/// touches are read back once. Filesystems without `O_DIRECT` (tmpfs) get the buffered path.
fn zero_fill_new(path: &Path, bytes: u64) -> io::Result<File> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let aligned = bytes - bytes % DIRECT_ALIGN as u64;
    let direct = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    if let (Ok(file), true) = (direct, aligned > 0) {
        // An aligned window into an over-allocated buffer: direct I/O needs an aligned address.
        let buffer = vec![0u8; ZERO_CHUNK_BYTES + DIRECT_ALIGN];
        let skip = buffer.as_ptr().align_offset(DIRECT_ALIGN);
        let zeros = &buffer[skip..skip + ZERO_CHUNK_BYTES];
        let mut offset = 0u64;
        let written = loop {
            if offset >= aligned {
                break Ok(());
            }
            let chunk = (aligned - offset).min(ZERO_CHUNK_BYTES as u64) as usize;
            if let Err(error) = file.write_all_at(&zeros[..chunk], offset) {
                break Err(error);
            }
            offset += chunk as u64;
        };
        if written.is_ok() {
            drop(file);
            let mut file = OpenOptions::new().write(true).open(path)?;
            write_zeros(&mut file, aligned, bytes)?;
            file.sync_all()?;
            return Ok(file);
        }
    }
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
    zero_fill(&mut file, 0, bytes)?;
    Ok(file)
}

/// Creates a zero-filled file at `path` through a `.tmp` file and a rename, so that the name
/// only ever points at a complete, durable file.
pub fn create_zeroed(path: &Path, bytes: u64) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp);
    drop(zero_fill_new(&tmp, bytes)?);
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Makes sure a spare of `bytes` exists in `dir`.
pub fn prepare_spare(dir: &Path, bytes: u64) -> io::Result<()> {
    let spare = dir.join(SPARE_FILE);
    match fs::metadata(&spare) {
        Ok(metadata) if metadata.len() == bytes => Ok(()),
        Ok(_) => {
            // A spare of another size (the configuration changed): replace it.
            fs::remove_file(&spare)?;
            create_zeroed(&spare, bytes)
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => create_zeroed(&spare, bytes),
        Err(error) => Err(error),
    }
}

/// Turns the spare (or, if there is none of the right size, a freshly zero-filled file) into
/// segment `sequence` and opens it for writing. The rename is made durable before returning.
pub fn install_segment(dir: &Path, sequence: u64, bytes: u64) -> io::Result<File> {
    let path = dir.join(segment_file_name(sequence));
    let spare = dir.join(SPARE_FILE);
    let spare_ready = fs::metadata(&spare).is_ok_and(|metadata| metadata.len() == bytes);
    if spare_ready {
        fs::rename(&spare, &path)?;
        sync_dir(dir)?;
    } else {
        create_zeroed(&path, bytes)?;
    }
    OpenOptions::new().read(true).write(true).open(&path)
}

/// A background thread that keeps a spare segment ready, so that the WAL writer's roll is a
/// rename instead of zero-filling a whole segment while requests wait.
#[derive(Debug)]
pub struct SpareMaker {
    requests: Option<crossbeam_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SpareMaker {
    /// Starts the thread for `dir` and asks for a first spare of `bytes`.
    pub fn start(dir: &Path, bytes: u64, name: String) -> io::Result<SpareMaker> {
        let (requests, wanted) = crossbeam_channel::bounded::<()>(1);
        let dir = dir.to_path_buf();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            while wanted.recv().is_ok() {
                if let Err(error) = prepare_spare(&dir, bytes) {
                    // Not fatal: the writer zero-fills the next segment itself.
                    tracing::warn!(%error, dir = %dir.display(), "cannot prepare a spare wal segment");
                }
            }
        })?;
        let maker = SpareMaker { requests: Some(requests), thread: Some(thread) };
        maker.request();
        Ok(maker)
    }

    /// Asks for a spare (a no-op if one is already being made).
    pub fn request(&self) {
        if let Some(requests) = &self.requests {
            let _ = requests.try_send(());
        }
    }
}

impl Drop for SpareMaker {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_and_parse() {
        assert_eq!(segment_file_name(7), "00000000000000000007.wal");
        assert_eq!(parse_segment_file_name("00000000000000000007.wal"), Some(7));
        assert_eq!(parse_segment_file_name("7.wal"), None);
        assert_eq!(parse_segment_file_name("00000000000000000007.wal.tmp"), None);
        assert_eq!(parse_segment_file_name(SPARE_FILE), None);
    }

    #[test]
    fn spares_become_segments() {
        let dir = tempfile::tempdir().unwrap();
        prepare_spare(dir.path(), 4096).unwrap();
        let file = install_segment(dir.path(), 1, 4096).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 4096);
        assert!(!dir.path().join(SPARE_FILE).exists());
        // Without a spare, the segment is zero-filled in place.
        let file = install_segment(dir.path(), 2, 8192).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 8192);
        let listed: Vec<u64> =
            list_segments(dir.path()).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(listed, vec![1, 2]);
        let bytes = fs::read(dir.path().join(segment_file_name(2))).unwrap();
        assert!(bytes.iter().all(|b| *b == 0));
    }
}
