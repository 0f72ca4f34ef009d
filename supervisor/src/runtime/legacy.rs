//! The legacy `io.containerd.runtime.v1.linux` runtime, run with containerd's runc v2 shim.
//!
//! containerd 1.6 still serves the v1 runtime (deprecated since 1.4, removed in 2.0) with its
//! own `containerd-shim`, which speaks an older ttrpc service than the task v2 API every other
//! shim speaks. corrald does not implement that protocol; it runs a v1 container with
//! `io.containerd.runc.v2` instead — containerd's successor to `containerd-shim`, the same runc
//! process code behind a v2 API — after translating the v1 options into the v2 ones:
//!
//! ```text
//! container runtime options  containerd.linux.runc.RuncOptions   runtime, runtime_root,
//!                                                                criu_path, systemd_cgroup
//! task options               containerd.linux.runc.CreateOptions no_pivot_root, no_new_keyring,
//!                                                                shim_cgroup, io_uid, io_gid,
//!                                                                criu_work_path, criu_image_path
//!                     ──▶    containerd.runc.v1.Options          binary_name, root, …
//! ```
//!
//! What the client sees is what containerd's v1 runtime shows it: the task runs under runc as
//! the options say, and a runc binary that does not exist fails the task's creation with the
//! same `OCI runtime create failed: … exec: "<binary>": executable file not found` error. The
//! remaining `CreateOptions` fields (`open_tcp`, `external_unix_sockets`, `terminal`,
//! `file_locks`, `empty_namespaces`, `cgroups_mode`) only matter when restoring a checkpoint,
//! which corrald does not do; they are ignored. Options of any other type are refused
//! (InvalidArgument), as containerd's v1 runtime refuses them.
//!
//! A runtime entry named `io.containerd.runtime.v1.linux` in corrald's config turns the mapping
//! off: that entry's shim then gets the options as they are.

use protocol::Code;
use protocol::protobuf::Message as _;
use tonic::Status;

/// The legacy runtime's name.
pub const RUNTIME_V1: &str = "io.containerd.runtime.v1.linux";
/// The runtime that runs it.
pub const RUNTIME_RUNC_V2: &str = "io.containerd.runc.v2";

const RUNC_OPTIONS_V1: &str = "containerd.linux.runc.RuncOptions";
const CREATE_OPTIONS_V1: &str = "containerd.linux.runc.CreateOptions";

/// `containerd.linux.runc.RuncOptions`: the v1 runtime's container options.
#[derive(Clone, PartialEq, prost::Message)]
struct RuncOptions {
    #[prost(string, tag = "1")]
    runtime: String,
    #[prost(string, tag = "2")]
    runtime_root: String,
    #[prost(string, tag = "3")]
    criu_path: String,
    #[prost(bool, tag = "4")]
    systemd_cgroup: bool,
}

/// `containerd.linux.runc.CreateOptions`: the v1 runtime's task options (the fields that do
/// not concern restoring a checkpoint).
#[derive(Clone, PartialEq, prost::Message)]
struct CreateOptions {
    #[prost(bool, tag = "1")]
    no_pivot_root: bool,
    #[prost(bool, tag = "8")]
    no_new_keyring: bool,
    #[prost(string, tag = "9")]
    shim_cgroup: String,
    #[prost(uint32, tag = "10")]
    io_uid: u32,
    #[prost(uint32, tag = "11")]
    io_gid: u32,
    #[prost(string, tag = "12")]
    criu_work_path: String,
    #[prost(string, tag = "13")]
    criu_image_path: String,
}

/// `type.googleapis.com/x.y` and `x.y` name the same type.
fn type_name(any: &prost_types::Any) -> &str {
    any.type_url.rsplit('/').next().unwrap_or("")
}

fn decode<M: prost::Message + Default>(
    any: Option<&prost_types::Any>,
    want: &str,
    what: &str,
) -> Result<Option<M>, Status> {
    let Some(any) = any.filter(|a| !a.type_url.is_empty()) else {
        return Ok(None);
    };
    if type_name(any) != want {
        return Err(Code::InvalidArgument.grpc_status(format!(
            "{what} of runtime {RUNTIME_V1} must be {want}, not {}",
            any.type_url
        )));
    }
    M::decode(any.value.as_slice())
        .map(Some)
        .map_err(|e| Code::InvalidArgument.grpc_status(format!("{what} ({want}): {e}")))
}

/// The `containerd.runc.v1.Options` for the runc v2 shim equivalent to a v1 container's
/// runtime options and its task's options; None if neither brings any.
pub fn runc_v2_options(
    container: Option<&prost_types::Any>,
    task: Option<&prost_types::Any>,
) -> Result<Option<prost_types::Any>, Status> {
    let runc: Option<RuncOptions> = decode(container, RUNC_OPTIONS_V1, "container options")?;
    let create: Option<CreateOptions> = decode(task, CREATE_OPTIONS_V1, "task options")?;
    if runc.is_none() && create.is_none() {
        return Ok(None);
    }
    let runc = runc.unwrap_or_default();
    let create = create.unwrap_or_default();
    let v2 = protocol::options::Options {
        binary_name: runc.runtime,
        root: runc.runtime_root,
        criu_path: runc.criu_path,
        systemd_cgroup: runc.systemd_cgroup,
        no_pivot_root: create.no_pivot_root,
        no_new_keyring: create.no_new_keyring,
        shim_cgroup: create.shim_cgroup,
        io_uid: create.io_uid,
        io_gid: create.io_gid,
        criu_work_path: create.criu_work_path,
        criu_image_path: create.criu_image_path,
        ..Default::default()
    };
    let value = v2
        .write_to_bytes()
        .map_err(|e| Code::Internal.grpc_status(format!("encode runc options: {e}")))?;
    Ok(Some(prost_types::Any {
        type_url: protocol::grpc::any::RUNC_OPTIONS.into(),
        value,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any<M: prost::Message>(type_url: &str, m: &M) -> prost_types::Any {
        prost_types::Any {
            type_url: type_url.into(),
            value: m.encode_to_vec(),
        }
    }

    #[test]
    fn v1_options_become_runc_v2_options() {
        let runc = RuncOptions {
            runtime: "no-runc".into(),
            runtime_root: "/run/x".into(),
            criu_path: "/bin/criu".into(),
            systemd_cgroup: true,
        };
        let create = CreateOptions {
            no_pivot_root: true,
            no_new_keyring: true,
            shim_cgroup: "/shim".into(),
            io_uid: 7,
            io_gid: 8,
            criu_work_path: "/w".into(),
            criu_image_path: "/i".into(),
        };
        let out = runc_v2_options(
            Some(&any(
                "type.googleapis.com/containerd.linux.runc.RuncOptions",
                &runc,
            )),
            Some(&any(CREATE_OPTIONS_V1, &create)),
        )
        .unwrap()
        .unwrap();
        assert_eq!(out.type_url, "containerd.runc.v1.Options");
        let v2 = protocol::options::Options::parse_from_bytes(&out.value).unwrap();
        assert_eq!(v2.binary_name, "no-runc");
        assert_eq!(v2.root, "/run/x");
        assert_eq!(v2.criu_path, "/bin/criu");
        assert!(v2.systemd_cgroup && v2.no_pivot_root && v2.no_new_keyring);
        assert_eq!(v2.shim_cgroup, "/shim");
        assert_eq!((v2.io_uid, v2.io_gid), (7, 8));
        assert_eq!(v2.criu_work_path, "/w");
        assert_eq!(v2.criu_image_path, "/i");

        // Only one of the two.
        let out = runc_v2_options(None, Some(&any(CREATE_OPTIONS_V1, &create)))
            .unwrap()
            .unwrap();
        let v2 = protocol::options::Options::parse_from_bytes(&out.value).unwrap();
        assert_eq!(v2.binary_name, "");
        assert_eq!(v2.shim_cgroup, "/shim");
    }

    #[test]
    fn no_options_stay_none() {
        assert_eq!(runc_v2_options(None, None).unwrap(), None);
        let empty = prost_types::Any::default();
        assert_eq!(runc_v2_options(Some(&empty), Some(&empty)).unwrap(), None);
    }

    #[test]
    fn options_of_another_type_are_refused() {
        let v2 = prost_types::Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![],
        };
        let e = runc_v2_options(Some(&v2), None).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains(RUNC_OPTIONS_V1) && e.message().contains(RUNTIME_V1),
            "{e}"
        );
        let e = runc_v2_options(None, Some(&v2)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains(CREATE_OPTIONS_V1), "{e}");
        let garbage = prost_types::Any {
            type_url: RUNC_OPTIONS_V1.into(),
            value: vec![0x0a, 0x05, b'x'],
        };
        let e = runc_v2_options(Some(&garbage), None).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
}
