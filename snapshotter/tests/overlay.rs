//! The conformance suite on the overlayfs snapshotter, plus overlay-specific mount shapes.

use std::path::Path;

use snapshotter::{OverlaySnapshotter, Snapshotter};

snapshotter::conformance_tests!(|root: &Path| -> Box<dyn Snapshotter> {
    Box::new(OverlaySnapshotter::open(root).expect("open overlay snapshotter"))
});
