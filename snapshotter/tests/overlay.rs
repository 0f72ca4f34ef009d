//! The conformance suite on the overlayfs snapshotter, plus overlay-specific mount shapes.

use std::path::Path;

use snapshotter::{OverlaySnapshotter, Snapshotter};

snapshotter::conformance_tests!(|root: &Path| -> Box<dyn Snapshotter> {
    Box::new(OverlaySnapshotter::open(root).expect("open overlay snapshotter"))
});

mod overlay_specific {
    use std::fs;
    use std::path::{Path, PathBuf};

    use snapshotter::testsuite::{Env, expect_code, layer, require_root};
    use snapshotter::{Code, Labels, Mount, MountGuard, Options, OverlaySnapshotter, Snapshotter};

    fn open(root: &Path) -> Box<dyn Snapshotter> {
        let opts = Options {
            overlay_index_off: Some(true),
            ..Options::default()
        };
        Box::new(OverlaySnapshotter::open_with(root, opts).unwrap())
    }

    fn opt<'a>(m: &'a Mount, prefix: &str) -> Option<&'a str> {
        m.options.iter().find_map(|o| o.strip_prefix(prefix))
    }

    /// Mounts exactly as containerd's overlay snapshotter returns them.
    #[test]
    fn containerd_mount_shapes() {
        let env = Env::new(&open);
        let sn = &*env.sn;
        let snaps = env.root().join("snapshots");
        let m = sn.prepare("a", None, Labels::new()).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].kind, "bind");
        assert_eq!(m[0].options, ["rw", "rbind"]);
        let a_fs = PathBuf::from(&m[0].source);
        assert_eq!(a_fs.parent().unwrap().parent().unwrap(), snaps);
        assert!(a_fs.ends_with("fs"));
        sn.commit("L1", "a", Labels::new()).unwrap();

        // A view of one parent is a read-only bind of the parent's layer itself.
        let v = sn.view("v1", Some("L1"), Labels::new()).unwrap();
        assert_eq!(v[0].kind, "bind");
        assert_eq!(v[0].options, ["ro", "rbind"]);
        assert_eq!(PathBuf::from(&v[0].source), a_fs);

        // A view without a parent: a read-only bind of its own (empty) layer.
        let v0 = sn.view("v0", None, Labels::new()).unwrap();
        assert_eq!(v0[0].options, ["ro", "rbind"]);

        let b = sn.prepare("b", Some("L1"), Labels::new()).unwrap();
        // The committed snapshot keeps the active's layer directory.
        let l2_fs = opt(&b[0], "upperdir=").unwrap().to_string();
        sn.commit("L2", "b", Labels::new()).unwrap();
        let m = sn.prepare("c", Some("L2"), Labels::new()).unwrap();
        assert_eq!(
            (m[0].kind.as_str(), m[0].source.as_str()),
            ("overlay", "overlay")
        );
        assert_eq!(m[0].options[0], "index=off");
        assert!(m[0].options[1].starts_with("workdir="));
        assert!(m[0].options[2].starts_with("upperdir="));
        let c_dir = Path::new(opt(&m[0], "upperdir=").unwrap())
            .parent()
            .unwrap();
        assert_eq!(
            opt(&m[0], "workdir=").unwrap(),
            c_dir.join("work").to_str().unwrap()
        );
        assert_eq!(
            opt(&m[0], "lowerdir=").unwrap(),
            format!("{l2_fs}:{}", a_fs.display()),
            "lowerdir lists the chain nearest first"
        );
        assert_eq!(m[0].options.len(), 4);

        // A view of several layers: an overlay with only lowerdir.
        let v = sn.view("v2", Some("L2"), Labels::new()).unwrap();
        assert_eq!(v[0].kind, "overlay");
        assert_eq!(
            v[0].options,
            [
                "index=off".to_string(),
                format!("lowerdir={l2_fs}:{}", a_fs.display())
            ]
        );

        // Layer dirs are short and numeric.
        for entry in fs::read_dir(&snaps).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(name.parse::<u64>().is_ok(), "{name}");
        }
        // The DB admits one instance per root.
        let second = OverlaySnapshotter::open(env.root());
        expect_code(second.map(|_| ()), Code::Unavailable);
    }

    #[test]
    fn overlay_works_here() {
        if !require_root("overlay support check") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        OverlaySnapshotter::check_supported(d.path()).expect("overlayfs works on this host");
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            0,
            "the probe cleans up"
        );
    }

    #[test]
    fn root_with_separators_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let e = OverlaySnapshotter::open(d.path().join("a:b")).map(|_| ());
        let msg = expect_code(e, Code::Unimplemented);
        assert!(msg.contains("a:b"), "{msg}");
    }

    /// As root: a 130-layer chain really mounts, and every layer is visible.
    #[test]
    fn deep_chain_mounts() {
        if !require_root("130-layer overlay mount") {
            return;
        }
        let env = Env::new(&open);
        let sn = &*env.sn;
        let mut parent: Option<String> = None;
        for i in 0..130 {
            let name = format!("layer-{i}");
            layer(
                sn,
                &name,
                parent.as_deref(),
                &[(&format!("f{i}"), &i.to_string()), ("top", &i.to_string())],
            );
            parent = Some(name);
        }
        let mounts = sn.prepare("ctr", parent.as_deref(), Labels::new()).unwrap();
        let lower = opt(&mounts[0], "lowerdir=").unwrap();
        assert_eq!(lower.split(':').count(), 130);
        let raw = mounts[0].options.join(",").len();
        let (_, data, chdir) = mounts[0].mount_data();
        eprintln!(
            "130 layers: options {raw} bytes as returned, {} bytes as mounted (chdir {chdir:?})",
            data.len()
        );
        assert!(data.len() < 4096);
        let target = tempfile::tempdir().unwrap();
        let g = MountGuard::mount(&mounts, target.path()).expect("mount 130 layers");
        for i in [0, 1, 64, 128, 129] {
            assert_eq!(
                fs::read_to_string(g.target().join(format!("f{i}"))).unwrap(),
                i.to_string()
            );
        }
        assert_eq!(
            fs::read_to_string(g.target().join("top")).unwrap(),
            "129",
            "nearest layer wins"
        );
        fs::write(g.target().join("new"), "n").unwrap();
        drop(g);
        let upper = opt(&mounts[0], "upperdir=").unwrap();
        assert_eq!(
            fs::read_to_string(Path::new(upper).join("new")).unwrap(),
            "n"
        );
        // The mounter's private cwd did not leak into this process.
        assert_ne!(
            std::env::current_dir().unwrap(),
            env.root().join("snapshots")
        );
    }
}
