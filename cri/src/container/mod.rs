//! Containers in a pod: one file per CRI call, plus how exits are recorded.

mod create;
mod exec_sync;
mod exit;
mod remove;
mod start;
mod status;
mod stop;
mod update;

pub use start::cri_log_uri;
pub use stop::parse_signal;
