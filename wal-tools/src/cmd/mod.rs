//! One module per subcommand.

pub mod balance;
pub mod dump;
pub mod explain;
pub mod export;
pub mod history;
pub mod liability;
pub mod reconcile;
pub mod snapshot;
pub mod stats;
pub mod verify;
