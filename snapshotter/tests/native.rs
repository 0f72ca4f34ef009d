//! The conformance suite on the native (copying) snapshotter.

use std::path::Path;

use snapshotter::{NativeSnapshotter, Snapshotter};

snapshotter::conformance_tests!(|root: &Path| -> Box<dyn Snapshotter> {
    Box::new(NativeSnapshotter::open(root).expect("open native snapshotter"))
});
