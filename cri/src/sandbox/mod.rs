//! Pod sandboxes: the pause container, the pod's network and its files. One file per CRI call.

pub mod files;
mod remove;
pub mod run;
pub mod status;
pub mod stop;
