//! Threads that must not take the cores from the tills: the admin API's and the replicator's
//! run at a nice value of their own (docs/design-decisions.md).

/// Sets the calling thread's nice value (Linux keeps one per thread; threads it starts
/// inherit it). A failure is logged: `what` still runs, at the default priority.
pub fn lower(nice: i32, what: &str) {
    if nice == 0 {
        return;
    }
    let thread = rustix::thread::gettid();
    if let Err(error) = rustix::process::setpriority_process(Some(thread), nice) {
        tracing::warn!(%error, nice, "cannot lower the priority of {what}");
    }
}
