//! Test support shared by the engine's tests, other crates' tests and the benches: a reference
//! model of the ledger, and injected I/O faults.

pub mod crash;
pub mod faults;
pub mod loyalty;
pub mod model;

/// Copies a directory tree (test data directories, fixtures).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
