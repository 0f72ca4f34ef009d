//! Annotations corral's components exchange on the wire, beyond containerd's own.
//!
//! Shared here so that the sender (corral-cri) and the receiver (the shim) spell them the same.

/// `Task.Update` annotation asking the shim to reopen the CRI log of the task's init process
/// (value `"1"`): kubelet renames the log file when it rotates it and then calls
/// `ReopenContainerLog`, so the shim closes the renamed file and creates a new one at the
/// original path. Only valid for a task whose stdout/stderr is `file:///path?format=cri`; may
/// be sent with empty (or no) resources.
pub const LOG_REOPEN: &str = "io.corral.log.reopen";
