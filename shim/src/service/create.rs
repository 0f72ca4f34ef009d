//! Task.Create: the bundle's config, rootfs mounts, stdio, `runc create`.

use super::*;
use crate::idmap::{IdmappedBinds, Userns, UsernsSet};

impl Service {
    pub(super) async fn do_create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        let id = req.id.clone();
        if !util::valid_identifier(&id) {
            return Err(Error::new(
                Code::InvalidArgument,
                format!("invalid container id {id:?}"),
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(Error::new(
                Code::Unimplemented,
                "restore from a checkpoint is not supported by containerd-shim-corral-v1",
            ));
        }
        {
            let mut st = self.state.lock().unwrap();
            if st.containers.contains_key(&id) || !st.creating.insert(id.clone()) {
                return Err(Error::new(
                    Code::AlreadyExists,
                    format!("container {id} already exists"),
                ));
            }
        }
        let result = self.create_container(&req).await;
        let mut st = self.state.lock().unwrap();
        st.creating.remove(&id);
        let mut c = result?;
        let pid = c.init.pid;
        if let Some(exit) = Self::claim_exit(&mut st.unclaimed, pid, c.init.spawn_seq) {
            c.init.set_exited(exit.status, util::now());
        }
        let mut ev = TaskCreate::new();
        ev.container_id = id.clone();
        ev.bundle = req.bundle.clone();
        ev.rootfs = req.rootfs.clone();
        let mut tio = TaskIO::new();
        tio.stdin = req.stdin.clone();
        tio.stdout = req.stdout.clone();
        tio.stderr = req.stderr.clone();
        tio.terminal = req.terminal;
        ev.io = MessageField::some(tio);
        ev.checkpoint = req.checkpoint.clone();
        ev.pid = pid;
        self.events.publish(&ev);
        st.containers.insert(id, c);
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    pub(super) async fn create_container(&self, req: &CreateTaskRequest) -> Result<Container> {
        let bundle = if req.bundle.is_empty() {
            std::env::current_dir().map_err(|e| Error::new(Code::Internal, e.to_string()))?
        } else {
            PathBuf::from(&req.bundle)
        };
        let spec = Spec::load(&bundle).map_err(|e| Error::new(Code::InvalidArgument, e))?;
        let opts = crate::options::decode(req.options.as_ref())?;
        if opts.root.is_empty() {
            default_root_parent()?;
        }
        let runc = Arc::new(Runc {
            binary: if opts.binary_name.is_empty() {
                "runc".into()
            } else {
                opts.binary_name.clone()
            },
            root: Path::new(if opts.root.is_empty() {
                DEFAULT_RUNC_ROOT
            } else {
                &opts.root
            })
            .join(&self.namespace),
            log: bundle.join("log.json"),
            systemd_cgroup: opts.systemd_cgroup,
        });
        let record = BundleRecord {
            runc_binary: runc.binary.clone(),
            runc_root: runc.root.clone(),
            systemd_cgroup: runc.systemd_cgroup,
        };
        let record = serde_json::to_vec(&record).expect("record serialises");
        util::atomic_write(&bundle.join(BUNDLE_RECORD), &record, 0o600)
            .map_err(|e| Error::new(Code::Internal, format!("write bundle record: {e}")))?;

        // A user namespace (joined by path, or made for the spec's mappings) idmaps the
        // rootfs layers and every bind that asks for it: runc 1.1.5 cannot (see `idmap`).
        let mut namespaces = UsernsSet::new(&self.reaper);
        let userns = match spec.user_namespace() {
            Some(u) => {
                let root = u.mappings.host_root().ok_or_else(|| {
                    Error::new(
                        Code::InvalidArgument,
                        "the spec has a user namespace whose linux.uidMappings and \
                         linux.gidMappings do not both map id 0 (the container's root)",
                    )
                })?;
                let ns = match &u.path {
                    Some(p) => Userns::open(p),
                    None => Userns::with_mappings(&self.reaper, &u.mappings),
                }
                .map_err(|e| Error::new(Code::Internal, format!("user namespace: {e}")))?;
                namespaces.insert(u.mappings.clone(), ns);
                Some((u.mappings, root))
            }
            None => None,
        };
        let rootfs = bundle.join("rootfs");
        let mut rootfs_mounted = false;
        if !req.rootfs.is_empty() {
            std::fs::create_dir_all(&rootfs)
                .map_err(|e| Error::new(Code::Internal, format!("create rootfs dir: {e}")))?;
            // A root filesystem already chowned into the container's range (ctr run --uidmap
            // makes such a snapshot) is mounted as it is; idmapping would shift it twice.
            let shifted = userns.as_ref().is_some_and(|(mappings, _)| {
                mount::top_layer(&req.rootfs)
                    .and_then(|top| std::fs::metadata(top).ok())
                    .is_some_and(|m| {
                        use std::os::unix::fs::MetadataExt;
                        mappings.owns(m.uid(), m.gid())
                    })
            });
            let mounted = match &userns {
                Some((mappings, root)) if !shifted => {
                    let idmap = mount::Idmap {
                        userns: namespaces.get(mappings).map_err(mount_error)?,
                        root: *root,
                    };
                    mount::mount_all(&req.rootfs, &rootfs, Some(&idmap))
                }
                _ => mount::mount_all(&req.rootfs, &rootfs, None),
            };
            mounted.map_err(mount_error)?;
            rootfs_mounted = true;
        }
        let unmount = |mounted: bool| {
            if mounted && let Err(e) = mount::unmount_all(&rootfs) {
                log::warn!("unmount rootfs of {}: {e}", req.id);
            }
        };
        // Attached only until runc create has bound them into the container; dropped on
        // every path out of here.
        let binds = match IdmappedBinds::prepare(&bundle, &mut namespaces) {
            Ok(b) => b,
            Err(e) => {
                unmount(rootfs_mounted);
                return Err(mount_error(e));
            }
        };
        drop(namespaces);
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let setup = IoSetup {
            paths: &stdio,
            container_id: &req.id,
            namespace: &self.namespace,
            io_uid: opts.io_uid,
            io_gid: opts.io_gid,
        };
        let (child_stdio, mut pio) = match ProcessIo::open(&setup).await {
            Ok(x) => x,
            Err(e) => {
                unmount(rootfs_mounted);
                return Err(Error::new(
                    crate::io::error_code(&e),
                    format!("set up stdio: {e}"),
                ));
            }
        };
        let pid_file = bundle.join("init.pid");
        let spawn_seq = self.reaper.seq();
        let console = match req.terminal.then(ConsoleSocket::new).transpose() {
            Ok(c) => c,
            Err(e) => {
                unmount(rootfs_mounted);
                return Err(Error::new(Code::Internal, format!("console socket: {e}")));
            }
        };
        let copts = CreateOpts {
            pid_file: &pid_file,
            console_socket: console.as_ref().map(|c| c.path()),
            no_pivot: opts.no_pivot_root,
            no_new_keyring: opts.no_new_keyring,
        };
        let create = runc.create(&self.reaper, &req.id, &bundle, &copts, child_stdio);
        let (res, master) = with_console(create, console.as_ref()).await;
        drop(binds);
        let pid = res.and_then(|()| {
            util::read_pid_file(&pid_file).map_err(|e| Error::new(Code::Internal, e.to_string()))
        });
        let pid = match pid {
            Ok(p) => p,
            Err(e) => {
                drop(pio);
                let _ = runc.delete(&self.reaper, &req.id, true).await;
                unmount(rootfs_mounted);
                return Err(e);
            }
        };
        if let Some(master) = master {
            let attached = master.and_then(|m| pio.attach_console(m, &stdio));
            if let Err(e) = attached {
                let _ = runc.delete(&self.reaper, &req.id, true).await;
                unmount(rootfs_mounted);
                return Err(Error::new(Code::Internal, format!("console: {e}")));
            }
        }
        let mut init = Process::new("", stdio);
        init.pid = pid;
        init.spawn_seq = spawn_seq;
        init.io = Some(pio);
        Ok(Container {
            bundle,
            runc,
            private_pid_ns: spec.private_pid_namespace(),
            rootfs_mounted,
            deleting: false,
            init,
            execs: HashMap::new(),
        })
    }
}

/// A mount failure's code: what cannot be idmapped is Unimplemented, a bad mount request
/// InvalidArgument, anything else Internal.
fn mount_error(e: std::io::Error) -> Error {
    let code = match e.kind() {
        std::io::ErrorKind::Unsupported => Code::Unimplemented,
        std::io::ErrorKind::InvalidInput => Code::InvalidArgument,
        _ => Code::Internal,
    };
    Error::new(code, e.to_string())
}

/// Makes `/run/corral` (the parent of [`DEFAULT_RUNC_ROOT`]) if it is missing, mode 0711:
/// runc would make it 0700 along with its root, and it is also corrald's socket directory,
/// which the socket's group must be able to pass through. An existing one is left as it is.
fn default_root_parent() -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let Some(parent) = Path::new(DEFAULT_RUNC_ROOT).parent() else {
        return Ok(());
    };
    match std::fs::DirBuilder::new().mode(0o711).create(parent) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(Error::new(
            Code::Internal,
            format!("create {}: {e}", parent.display()),
        )),
        _ => Ok(()),
    }
}
