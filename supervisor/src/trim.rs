//! Memory handed back to the system after a burst of work.
//!
//! glibc keeps freed memory in its arenas for reuse; after 50 containers are removed, the
//! pages their requests, shim connections and buffers used stay resident until something
//! asks for them again. The calls that end such a burst (task and container deletes, pulls)
//! ask for a trim; one trim runs a moment after the last ask, so a burst of deletes costs
//! one `malloc_trim`, off the request path.

use std::sync::LazyLock;
use std::time::Duration;

use tokio::sync::Notify;

/// How long after the last ask the trim runs.
const SETTLE: Duration = Duration::from_millis(500);

static WANTED: LazyLock<Notify> = LazyLock::new(Notify::new);

/// Asks for a trim soon. Cheap; asks before the trim runs coalesce into one.
pub fn soon() {
    WANTED.notify_one();
}

/// Runs the trims for the daemon's lifetime.
pub async fn run() {
    loop {
        WANTED.notified().await;
        // Asks that arrive while settling leave one stored permit: one more trim, not many.
        tokio::time::sleep(SETTLE).await;
        // SAFETY: malloc_trim only returns free pages of the allocator's arenas to the system.
        let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
    }
}
