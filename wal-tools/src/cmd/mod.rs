//! One module per subcommand.

pub mod dump;
pub mod explain;
pub mod stats;
pub mod verify;
