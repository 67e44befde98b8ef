//! `InjectedFaults`: fails the Nth write or fdatasync, as a full disk or a dying device would,
//! or stalls fdatasync until released, as a slow device would.

use std::io;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Condvar, Mutex};

use crate::wal::writer::IoFaults;

/// Fails every write after `writes_left` more succeed, and every sync after `syncs_left`
/// more succeed (negative: never fail); can hold syncs until released.
#[derive(Debug)]
pub struct InjectedFaults {
    writes_left: AtomicI64,
    syncs_left: AtomicI64,
    stalled: Mutex<bool>,
    released: Condvar,
}

impl InjectedFaults {
    /// Faults that never fire until armed.
    pub fn new() -> InjectedFaults {
        InjectedFaults {
            writes_left: AtomicI64::new(-1),
            syncs_left: AtomicI64::new(-1),
            stalled: Mutex::new(false),
            released: Condvar::new(),
        }
    }

    /// Lets `count` more fdatasyncs succeed, then fails every one after.
    pub fn fail_sync_after(&self, count: i64) {
        self.syncs_left.store(count, Ordering::SeqCst);
    }

    /// Lets `count` more writes succeed, then fails every one after.
    pub fn fail_write_after(&self, count: i64) {
        self.writes_left.store(count, Ordering::SeqCst);
    }

    /// Makes every fdatasync wait until `release_syncs`.
    pub fn stall_syncs(&self) {
        *self.stalled.lock().expect("fault lock") = true;
    }

    /// Lets stalled fdatasyncs go on.
    pub fn release_syncs(&self) {
        *self.stalled.lock().expect("fault lock") = false;
        self.released.notify_all();
    }

    fn tick(counter: &AtomicI64, what: &str) -> io::Result<()> {
        let left = counter.load(Ordering::SeqCst);
        if left < 0 {
            return Ok(());
        }
        if left == 0 {
            return Err(io::Error::other(format!("injected {what} failure")));
        }
        counter.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Default for InjectedFaults {
    fn default() -> InjectedFaults {
        InjectedFaults::new()
    }
}

impl IoFaults for InjectedFaults {
    fn before_write(&self) -> io::Result<()> {
        InjectedFaults::tick(&self.writes_left, "write")
    }

    fn before_sync(&self) -> io::Result<()> {
        let stalled = self.stalled.lock().expect("fault lock");
        drop(self.released.wait_while(stalled, |stalled| *stalled).expect("fault lock"));
        InjectedFaults::tick(&self.syncs_left, "fdatasync")
    }
}
