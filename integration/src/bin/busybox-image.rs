//! `busybox-image OUT.tar [REFERENCE]`: writes an OCI image archive around Debian's static
//! busybox (the same image the tests use), for `corral images import` — there is no internet
//! image registry here. `make image` runs it. The reference defaults to
//! `docker.io/library/busybox:latest`, which `corral run busybox` finds.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(out) = args.next() else {
        eprintln!("usage: busybox-image OUT.tar [REFERENCE]");
        return ExitCode::from(2);
    };
    let reference = args
        .next()
        .unwrap_or_else(|| "docker.io/library/busybox:latest".to_string());
    let busybox = integration::image::busybox_path();
    let tar = match integration::image::build_image_tar(&busybox, &reference) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "busybox-image: cannot build from {}: {e} (install busybox-static)",
                busybox.display()
            );
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::write(&out, tar) {
        eprintln!("busybox-image: write {out}: {e}");
        return ExitCode::FAILURE;
    }
    println!("{out}: {reference}");
    ExitCode::SUCCESS
}
