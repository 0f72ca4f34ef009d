//! `containerd-shim-corral-v1`: see the `shim` library for what it is and how it is laid out.

fn main() -> std::process::ExitCode {
    shim::main()
}
