//! What every fuzz target shares: [`target!`] makes one from a property (a function of bytes
//! that panics when corral mishandles them; see `protocol::fuzzing`).

pub use libfuzzer_sys;
pub use protocol::fuzzing::{CountingAlloc, set_allocation_cap};

/// `target!(property, cap)`: a libFuzzer target running `property` on every input, with an
/// allocator that fails (aborting, which libFuzzer reports with the input) any single
/// allocation over `cap` bytes: a hostile length must be refused, not allocated.
#[macro_export]
macro_rules! target {
    ($property:path, $cap:expr) => {
        #[global_allocator]
        static ALLOC: $crate::CountingAlloc = $crate::CountingAlloc;

        $crate::libfuzzer_sys::fuzz_target!(
            init: {
                $crate::set_allocation_cap($cap);
            },
            |data: &[u8]| $property(data)
        );
    };
}
