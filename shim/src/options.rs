//! The runtime options a daemon hands the shim as a protobuf `Any`: on `start`'s stdin (for
//! `shim_cgroup`) and in Task.Create (runc binary and root, stdio owner, create flags).
//!
//! Two message types arrive. `containerd.runc.v1.Options` is what containerd's clients send to
//! a runtime named `io.containerd.runc.*`. For any other runtime name, ours
//! (`io.containerd.corral.v1`) included, containerd 1.6's Go client (`WithShimCgroup`,
//! `WithUIDOwner`, ... in `task_opts_unix.go`) sends the legacy linux runtime's
//! `containerd.linux.runc.CreateOptions` instead. Its fields that mean the same thing are
//! mapped onto `Options`; the rest (checkpoint flags) have no use here. Any other type carries
//! nothing we understand and gives the defaults.
//!
//! `CreateOptions` is decoded by hand: it is the one message of the legacy runtime we read, and
//! these few fields do not warrant another generated type family.

use protobuf::well_known_types::any::Any;
use protobuf::{CodedInputStream, Message};
use protocol::Code;
use protocol::options::Options;

use crate::error::{Error, Result};

/// Type of the runc-v2 runtimes' options.
pub const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";
/// Type of the legacy `io.containerd.runtime.v1.linux` create options.
pub const LEGACY_CREATE_OPTIONS: &str = "containerd.linux.runc.CreateOptions";

/// The options in `any`, the defaults when there is none or it is of another type.
pub fn decode(any: Option<&Any>) -> Result<Options> {
    let Some(any) = any else {
        return Ok(Options::new());
    };
    // containerd's typeurl writes the bare name; a `<host>/` prefix is allowed by Any.
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    let invalid = |e: protobuf::Error| {
        Error::new(
            Code::InvalidArgument,
            format!("invalid runtime options ({name}): {e}"),
        )
    };
    match name {
        RUNC_OPTIONS => Options::parse_from_bytes(&any.value).map_err(invalid),
        LEGACY_CREATE_OPTIONS => legacy_create_options(&any.value).map_err(invalid),
        _ => Ok(Options::new()),
    }
}

/// The options on `start`'s stdin (empty when the daemon sent none).
pub fn decode_bytes(bytes: &[u8]) -> Result<Options> {
    if bytes.is_empty() {
        return Ok(Options::new());
    }
    let any = Any::parse_from_bytes(bytes).map_err(|e| {
        Error::new(
            Code::InvalidArgument,
            format!("invalid runtime options: not a protobuf Any: {e}"),
        )
    })?;
    decode(Some(&any))
}

/// `containerd.linux.runc.CreateOptions` (containerd's runtime/linux/runctypes/runc.proto):
/// 1 no_pivot_root, 8 no_new_keyring, 9 shim_cgroup, 10 io_uid, 11 io_gid, 12 criu_work_path,
/// 13 criu_image_path are kept; 2-7 (checkpoint flags) are skipped.
fn legacy_create_options(bytes: &[u8]) -> protobuf::Result<Options> {
    let mut o = Options::new();
    let mut is = CodedInputStream::from_bytes(bytes);
    while let Some(tag) = is.read_raw_tag_or_eof()? {
        // A tag is `field << 3 | wire type`: varints are type 0, strings type 2.
        match tag {
            8 => o.no_pivot_root = is.read_bool()?,
            64 => o.no_new_keyring = is.read_bool()?,
            74 => o.shim_cgroup = is.read_string()?,
            80 => o.io_uid = is.read_uint32()?,
            88 => o.io_gid = is.read_uint32()?,
            98 => o.criu_work_path = is.read_string()?,
            106 => o.criu_image_path = is.read_string()?,
            _ => protobuf::rt::skip_field_for_tag(tag, &mut is)?,
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::CodedOutputStream;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        let mut a = Any::new();
        a.type_url = type_url.into();
        a.value = value;
        a
    }

    #[test]
    fn runc_options_are_read_as_they_are() {
        let mut o = Options::new();
        o.shim_cgroup = "/shim".into();
        o.root = "/r".into();
        o.io_uid = 7;
        let got = decode(Some(&any(RUNC_OPTIONS, o.write_to_bytes().unwrap()))).unwrap();
        assert_eq!(got, o);
        let prefixed = any(
            "types.googleapis.com/containerd.runc.v1.Options",
            o.write_to_bytes().unwrap(),
        );
        assert_eq!(decode(Some(&prefixed)).unwrap(), o);
        let bytes = prefixed.write_to_bytes().unwrap();
        assert_eq!(decode_bytes(&bytes).unwrap(), o);
    }

    #[test]
    fn legacy_create_options_map_onto_options() {
        // What the Go client sends for WithShimCgroup + WithUIDOwner to a runtime not named
        // io.containerd.runc.*, with checkpoint fields (skipped) in between.
        let mut buf = Vec::new();
        {
            let mut os = CodedOutputStream::vec(&mut buf);
            os.write_bool(1, true).unwrap();
            os.write_bool(2, true).unwrap();
            os.write_string(6, "network").unwrap();
            os.write_string(7, "soft").unwrap();
            os.write_bool(8, true).unwrap();
            os.write_string(9, "/containerd/shim").unwrap();
            os.write_uint32(10, 1000).unwrap();
            os.write_uint32(11, 2000).unwrap();
            os.write_string(12, "/work").unwrap();
            os.write_string(13, "/image").unwrap();
            os.write_string(99, "from a newer containerd").unwrap();
            os.flush().unwrap();
        }
        let o = decode(Some(&any(LEGACY_CREATE_OPTIONS, buf))).unwrap();
        assert!(o.no_pivot_root);
        assert!(o.no_new_keyring);
        assert_eq!(o.shim_cgroup, "/containerd/shim");
        assert_eq!((o.io_uid, o.io_gid), (1000, 2000));
        assert_eq!(o.criu_work_path, "/work");
        assert_eq!(o.criu_image_path, "/image");
        assert!(o.root.is_empty() && o.binary_name.is_empty());
    }

    #[test]
    fn other_types_give_defaults_and_garbage_is_invalid() {
        assert_eq!(decode(None).unwrap(), Options::new());
        assert_eq!(decode_bytes(&[]).unwrap(), Options::new());
        let other = any("runtimeoptions.v1.Options", vec![0xff, 0xff]);
        assert_eq!(decode(Some(&other)).unwrap(), Options::new());
        for t in [RUNC_OPTIONS, LEGACY_CREATE_OPTIONS] {
            let e = decode(Some(&any(t, vec![0x0a, 0x05, b'a']))).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
            assert!(e.msg.contains(t), "{}", e.msg);
        }
        let e = decode_bytes(b"\xff\xff\xff").unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }
}
