//! `pause-image OUT.tar [REFERENCE]`: writes an OCI image archive holding only our static pause
//! program (integration/images/pause.c, compiled with `cc -static`), the pod sandbox image
//! corral-cri runs (there is no internet image registry here). `make image` imports it into
//! corrald's `k8s.io` namespace as `registry.k8s.io/pause:3.10`, corral-cri's default.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(out) = args.next() else {
        eprintln!("usage: pause-image OUT.tar [REFERENCE]");
        return ExitCode::from(2);
    };
    let reference = args
        .next()
        .unwrap_or_else(|| integration::cri::PAUSE_REF.to_string());
    let tar = match integration::image::pause_image_tar(&reference) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("pause-image: {e} (needs gcc and libc6-dev)");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::write(&out, tar) {
        eprintln!("pause-image: write {out}: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
