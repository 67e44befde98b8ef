//! Nothing here: the checks live in tests/tidy.rs.
