//! Generated rust-protobuf messages and async ttrpc services. Module names follow the proto
//! file stems (the generator's cross-file paths are `super::<stem>::...`).
#![allow(
    clippy::all,
    unused_imports,
    unused_qualifications,
    non_camel_case_types,
    missing_docs
)]
#![allow(
    renamed_and_removed_lints,
    unknown_lints,
    elided_lifetimes_in_paths,
    unused_mut,
    nonstandard_style
)]

macro_rules! generated {
    ($($name:ident),* $(,)?) => {
        $(pub mod $name {
            include!(concat!(env!("OUT_DIR"), "/ttrpc/", stringify!($name), ".rs"));
        })*
    };
}

generated!(
    mount,
    task,
    shim,
    shim_ttrpc,
    task_events,
    events,
    events_ttrpc,
    options,
    v1_metrics,
    v2_metrics,
);
