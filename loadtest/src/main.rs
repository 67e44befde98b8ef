//! `ledger-load`: the POS-like load generator. It drives `ledgerd` over the binary TCP
//! protocol, which does not exist yet (issue 3 adds both). Until then it says so and exits
//! with the usage-error code, so that no script mistakes it for a finished run.
//!
//! In-process load against the engine itself: `cargo bench -p ledger-benches --bench durable`.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "ledger-load: the POS protocol it drives is not implemented yet; \
         for in-process load use `cargo bench -p ledger-benches --bench durable`"
    );
    ExitCode::from(2)
}
