//! One module per group of commands; each is a thin sequence of daemon calls.

pub mod containers;
pub mod images;
pub mod pull;
pub mod system;
