//! Our shim driven directly, without containerd: the `start` contract (address on stdout only,
//! `address` file, detached server, grouping), the Task service's error codes for unknown ids and
//! unsupported calls, Shutdown, and the idempotent `delete` action.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use integration::{corral_shim_path, require_root, unique_namespace, wait_until};
use protobuf::Message;
use protocol::Code;
use protocol::shim::*;
use protocol::shim_ttrpc::TaskClient;

const T: Duration = Duration::from_secs(10);

struct Shim {
    dir: tempfile::TempDir,
    namespace: String,
    address: String,
}

impl Shim {
    fn new() -> Shim {
        Shim {
            dir: tempfile::tempdir().unwrap(),
            namespace: unique_namespace(),
            address: String::new(),
        }
    }

    /// A bundle with a config.json carrying `annotations`.
    fn bundle(&self, id: &str, annotations: &str) -> PathBuf {
        let b = self.dir.path().join(id);
        fs::create_dir_all(&b).unwrap();
        fs::write(
            b.join("config.json"),
            format!(r#"{{"ociVersion":"1.0.2","annotations":{{{annotations}}}}}"#),
        )
        .unwrap();
        b
    }

    fn daemon_address(&self) -> String {
        self.dir
            .path()
            .join("d.sock")
            .to_string_lossy()
            .into_owned()
    }

    fn command(&self, bundle: &Path, id: &str, action: &str) -> Command {
        let mut cmd = Command::new(corral_shim_path());
        cmd.args([
            "-namespace",
            &self.namespace,
            "-address",
            &self.daemon_address(),
        ]);
        cmd.args(["-publish-binary", "/bin/true", "-id", id]);
        if action == "delete" {
            cmd.args(["-bundle", &bundle.to_string_lossy()]);
        }
        cmd.arg(action).current_dir(bundle).stdin(Stdio::null());
        // No daemon: events are not published, which must not stop the shim.
        cmd.env_remove("TTRPC_ADDRESS");
        cmd
    }

    fn start(&mut self, bundle: &Path, id: &str) -> String {
        let out = self.command(bundle, id, "start").output().unwrap();
        assert!(out.status.success(), "start failed: {out:?}");
        assert!(out.stderr.is_empty(), "start wrote to stderr: {out:?}");
        let address = String::from_utf8(out.stdout).unwrap();
        self.address = address.clone();
        address
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        // Whatever a failed test left running: the server of our namespace.
        for pid in server_pids(&self.namespace) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(path) = self.address.strip_prefix("unix://") {
            let _ = fs::remove_file(path);
        }
    }
}

fn server_pids(namespace: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let ours = args
            .first()
            .is_some_and(|a| a.ends_with(b"containerd-shim-corral-v1"));
        let in_ns = args
            .windows(2)
            .any(|w| w[0] == b"-namespace" && w[1] == namespace.as_bytes());
        let action = args.iter().any(|a| *a == b"start" || *a == b"delete");
        if ours && in_ns && !action {
            pids.push(pid);
        }
    }
    pids
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn code(e: &ttrpc::Error) -> Code {
    Code::of_ttrpc(e)
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(T.as_nanos() as i64)
}

#[test]
fn start_serves_groups_and_shuts_down() {
    if !require_root() {
        return;
    }
    let mut shim = Shim::new();
    let group = r#""io.kubernetes.cri.sandbox-id":"sandbox1""#;
    let b1 = shim.bundle("c1", group);
    let address = shim.start(&b1, "c1");
    assert!(
        address.starts_with("unix:///run/containerd/s/") && !address.ends_with('\n'),
        "{address:?}"
    );
    assert_eq!(fs::read_to_string(b1.join("address")).unwrap(), address);
    let sock = address.strip_prefix("unix://").unwrap();
    let meta = fs::metadata(sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let servers = wait_until("server running", T, || {
        let p = server_pids(&shim.namespace);
        (p.len() == 1).then_some(p)
    });
    // Detached: its own session, not ours.
    let sid = |pid: u32| -> String {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        after.split_whitespace().nth(3).unwrap().to_string()
    };
    assert_ne!(sid(servers[0]), sid(std::process::id()));

    // A second container of the same group shares the shim.
    let b2 = shim.bundle("c2", group);
    assert_eq!(shim.start(&b2, "c2"), address);
    assert_eq!(server_pids(&shim.namespace), servers);

    rt().block_on(async {
        let client = TaskClient::new(ttrpc::r#async::Client::connect(&address).await.unwrap());
        let c = client
            .connect(
                ctx(),
                &ConnectRequest {
                    id: "c1".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(c.shim_pid, servers[0]);
        assert_eq!(c.task_pid, 0);

        let e = client
            .state(
                ctx(),
                &StateRequest {
                    id: "c1".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(code(&e), Code::NotFound, "{e:?}");
        let e = client
            .kill(
                ctx(),
                &KillRequest {
                    id: "c1".into(),
                    signal: 9,
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(code(&e), Code::NotFound, "{e:?}");
        let e = client
            .checkpoint(
                ctx(),
                &CheckpointTaskRequest {
                    id: "c1".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(code(&e), Code::Unimplemented, "{e:?}");
        let e = client
            .create(
                ctx(),
                &CreateTaskRequest {
                    id: "bad/id".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(code(&e), Code::InvalidArgument, "{e:?}");

        client
            .shutdown(
                ctx(),
                &ShutdownRequest {
                    id: "c1".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    });
    // No container left: the server exits and its socket is gone.
    wait_until("server exited", T, || {
        server_pids(&shim.namespace).is_empty().then_some(())
    });
    assert!(!Path::new(sock).exists(), "socket left behind");
}

#[test]
fn delete_action_is_idempotent_and_prints_only_the_response() {
    if !require_root() {
        return;
    }
    let shim = Shim::new();
    let b = shim.bundle("gone", "");
    fs::write(b.join("init.pid"), "4242").unwrap();
    fs::create_dir_all(b.join("rootfs")).unwrap();
    for _ in 0..2 {
        let out = shim.command(&b, "gone", "delete").output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let resp = DeleteResponse::parse_from_bytes(&out.stdout)
            .unwrap_or_else(|e| panic!("stdout is not a DeleteResponse ({e}): {out:?}"));
        assert_eq!(resp.pid, 4242);
        assert_eq!(resp.exit_status, 137);
        assert!(resp.exited_at.seconds > 0);
    }
}

#[test]
fn version_and_bad_command_lines() {
    let out = Command::new(corral_shim_path()).arg("-v").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("io.containerd.corral.v1"));

    let out = Command::new(corral_shim_path())
        .args(["-id", "x", "start"])
        .env_remove("NAMESPACE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("namespace"),
        "{out:?}"
    );
}
