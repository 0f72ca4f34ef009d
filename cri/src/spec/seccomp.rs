//! Seccomp: which profile a security context asks for, our built-in RuntimeDefault profile,
//! and Localhost profiles (read by the caller; parsed here).
//!
//! | asked for                                      | linux.seccomp                  |
//! |------------------------------------------------|--------------------------------|
//! | nothing (no `seccomp`, no `seccomp_profile_path`) | none (unconfined, as containerd) |
//! | Unconfined / `unconfined`                      | none                           |
//! | RuntimeDefault / `runtime/default`, `docker/default` | [`default_profile`]      |
//! | Localhost `/path` / `localhost//path`          | the file's OCI `LinuxSeccomp`  |
//! | anything, privileged                           | none                           |
//!
//! The default profile is ours, modelled on Docker's and containerd's: deny with EPERM,
//! allow the system calls ordinary programs make, allow the ones a capability governs only
//! when the container holds that capability (so adding SYS_ADMIN makes `mount` work), let
//! `clone` create no namespaces without SYS_ADMIN, and answer `clone3` with ENOSYS then, so
//! libc falls back to `clone`. Left out on purpose: keyrings (not namespaced), userfaultfd,
//! io_uring (a long list of kernel escalations; Docker and later containerd dropped it too),
//! kernel modules, reboot, swap and clock setting unless the capability is there.

use protocol::grpc::runtime::v1::SecurityProfile;
use protocol::grpc::runtime::v1::security_profile::ProfileType;
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};

/// What a security context asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    Unconfined,
    RuntimeDefault,
    /// An absolute path on the node.
    Localhost(String),
}

const LOCALHOST_PREFIX: &str = "localhost/";

/// The choice from `seccomp`, else from the deprecated `seccomp_profile_path`.
pub fn choose(profile: Option<&SecurityProfile>, deprecated_path: &str) -> Result<Choice> {
    let choice = match profile {
        Some(p) => {
            let kind = ProfileType::try_from(p.profile_type).map_err(|_| {
                Error::invalid(format!("unknown seccomp profile type {}", p.profile_type))
            })?;
            if kind != ProfileType::Localhost && !p.localhost_ref.is_empty() {
                return Err(Error::invalid(format!(
                    "seccomp localhost_ref {:?} is only valid with profile type Localhost",
                    p.localhost_ref
                )));
            }
            match kind {
                ProfileType::Unconfined => Choice::Unconfined,
                ProfileType::RuntimeDefault => Choice::RuntimeDefault,
                ProfileType::Localhost => Choice::Localhost(
                    p.localhost_ref
                        .strip_prefix(LOCALHOST_PREFIX)
                        .unwrap_or(&p.localhost_ref)
                        .to_string(),
                ),
            }
        }
        None => match deprecated_path {
            "" | "unconfined" => Choice::Unconfined,
            "runtime/default" | "docker/default" => Choice::RuntimeDefault,
            p => match p.strip_prefix(LOCALHOST_PREFIX) {
                Some(path) => Choice::Localhost(path.to_string()),
                None => {
                    return Err(Error::invalid(format!(
                        "invalid seccomp_profile_path {p:?}: expected runtime/default, \
                         unconfined or localhost/<path>"
                    )));
                }
            },
        },
    };
    if let Choice::Localhost(path) = &choice
        && !path.starts_with('/')
    {
        return Err(Error::invalid(format!(
            "seccomp Localhost profile {path:?} is not an absolute path"
        )));
    }
    Ok(choice)
}

/// The file the caller must read for `choose(...)`: Some for Localhost, unless privileged.
pub fn file_to_read(
    profile: Option<&SecurityProfile>,
    deprecated_path: &str,
    privileged: bool,
) -> Result<Option<String>> {
    if privileged {
        return Ok(None);
    }
    Ok(match choose(profile, deprecated_path)? {
        Choice::Localhost(p) => Some(p),
        _ => None,
    })
}

/// `linux.seccomp` for a choice; `contents` is the Localhost file as the caller read it, and
/// `bounding` the process's bounding capabilities (the default profile depends on them).
pub fn linux_seccomp(
    choice: &Choice,
    contents: Option<&str>,
    bounding: &[String],
) -> Result<Option<Value>> {
    match choice {
        Choice::Unconfined => Ok(None),
        Choice::RuntimeDefault => Ok(Some(default_profile(bounding))),
        Choice::Localhost(path) => {
            let text = contents
                .ok_or_else(|| Error::internal(format!("seccomp profile {path} was not read")))?;
            localhost_profile(path, text).map(Some)
        }
    }
}

/// The fields of an OCI `LinuxSeccomp`; others (Docker's `archMap`, comments) are dropped, as
/// containerd's JSON decoding drops them.
const OCI_FIELDS: &[&str] = &[
    "defaultAction",
    "defaultErrnoRet",
    "architectures",
    "flags",
    "listenerPath",
    "listenerMetadata",
    "syscalls",
];

/// A Localhost profile: an OCI `LinuxSeccomp` object with at least a `defaultAction`.
pub fn localhost_profile(path: &str, text: &str) -> Result<Value> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Error::invalid(format!("seccomp profile {path}: not valid JSON: {e}")))?;
    let Value::Object(fields) = v else {
        return Err(Error::invalid(format!(
            "seccomp profile {path}: not a JSON object"
        )));
    };
    if !fields.get("defaultAction").is_some_and(Value::is_string) {
        return Err(Error::invalid(format!(
            "seccomp profile {path}: defaultAction is missing"
        )));
    }
    let kept: Map<String, Value> = fields
        .into_iter()
        .filter(|(k, _)| OCI_FIELDS.contains(&k.as_str()))
        .collect();
    Ok(Value::Object(kept))
}

/// System calls every container may make.
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
    // files and directories
    "access", "faccessat", "faccessat2", "chdir", "fchdir", "getcwd", "chmod", "fchmod",
    "fchmodat", "fchmodat2", "chown", "chown32", "fchown", "fchown32", "fchownat", "lchown",
    "lchown32", "creat", "open", "openat", "openat2", "close", "close_range", "link", "linkat",
    "symlink", "symlinkat", "unlink", "unlinkat", "rename", "renameat", "renameat2", "mkdir",
    "mkdirat", "rmdir", "mknod", "mknodat", "readlink", "readlinkat", "stat", "stat64", "lstat",
    "lstat64", "fstat", "fstat64", "fstatat64", "newfstatat", "statx", "statfs", "statfs64",
    "fstatfs", "fstatfs64", "truncate", "truncate64", "ftruncate", "ftruncate64", "utime",
    "utimes", "utimensat", "utimensat_time64", "futimesat", "getdents", "getdents64", "umask",
    "fallocate", "fadvise64", "fadvise64_64", "fsync", "fdatasync", "sync", "syncfs",
    "sync_file_range", "flock", "readahead", "getxattr", "lgetxattr", "fgetxattr", "setxattr",
    "lsetxattr", "fsetxattr", "listxattr", "llistxattr", "flistxattr", "removexattr",
    "lremovexattr", "fremovexattr", "inotify_init", "inotify_init1", "inotify_add_watch",
    "inotify_rm_watch", "fanotify_mark",
    // reading, writing, waiting on descriptors
    "read", "readv", "pread64", "preadv", "preadv2", "write", "writev", "pwrite64", "pwritev",
    "pwritev2", "lseek", "_llseek", "dup", "dup2", "dup3", "fcntl", "fcntl64", "ioctl", "pipe",
    "pipe2", "sendfile", "sendfile64", "splice", "tee", "vmsplice", "copy_file_range", "select",
    "_newselect", "pselect6", "pselect6_time64", "poll", "ppoll", "ppoll_time64",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_wait",
    "epoll_wait_old", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "signalfd",
    "signalfd4", "timerfd_create", "timerfd_settime", "timerfd_settime64", "timerfd_gettime",
    "timerfd_gettime64", "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents",
    "io_pgetevents", "io_pgetevents_time64", "memfd_create",
    // memory
    "brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "madvise", "mincore", "mlock",
    "mlock2", "mlockall", "munlock", "munlockall", "msync", "membarrier", "remap_file_pages",
    "pkey_alloc", "pkey_free", "pkey_mprotect", "map_shadow_stack", "cachestat",
    // threads and synchronisation
    "futex", "futex_time64", "futex_waitv", "get_robust_list", "set_robust_list", "rseq",
    "set_tid_address", "get_thread_area", "set_thread_area",
    // processes
    "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid", "waitpid",
    "kill", "tkill", "tgkill", "getpid", "getppid", "gettid", "getpgid", "setpgid", "getpgrp",
    "getsid", "setsid", "prctl", "capget", "capset", "getpriority", "setpriority",
    "sched_getaffinity", "sched_setaffinity", "sched_getattr", "sched_setattr",
    "sched_getparam", "sched_setparam", "sched_getscheduler", "sched_setscheduler",
    "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval",
    "sched_rr_get_interval_time64", "sched_yield", "getrlimit", "setrlimit", "ugetrlimit",
    "prlimit64", "getrusage", "times", "ioprio_get", "ioprio_set", "pidfd_open",
    "pidfd_send_signal", "restart_syscall", "seccomp", "landlock_add_rule",
    "landlock_create_ruleset", "landlock_restrict_self", "uname", "sysinfo", "getrandom",
    "getcpu",
    // ptrace of one's own children: safe since Linux 4.8 (seccomp is rechecked after it)
    "ptrace",
    // identity
    "getuid", "getuid32", "geteuid", "geteuid32", "getgid", "getgid32", "getegid",
    "getegid32", "getresuid", "getresuid32", "getresgid", "getresgid32", "getgroups",
    "getgroups32", "setuid", "setuid32", "setgid", "setgid32", "setreuid", "setreuid32",
    "setregid", "setregid32", "setresuid", "setresuid32", "setresgid", "setresgid32",
    "setfsuid", "setfsuid32", "setfsgid", "setfsgid32", "setgroups", "setgroups32",
    // signals
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigsuspend", "rt_sigpending",
    "rt_sigqueueinfo", "rt_tgsigqueueinfo", "rt_sigtimedwait", "rt_sigtimedwait_time64",
    "sigaltstack", "signal", "sigaction", "sigprocmask", "sigreturn", "sigsuspend",
    "sigpending", "pause", "alarm",
    // time (setting the clocks needs SYS_TIME, below; adjtimex only reads without it)
    "clock_gettime", "clock_gettime64", "clock_getres", "clock_getres_time64",
    "clock_nanosleep", "clock_nanosleep_time64", "gettimeofday", "time", "nanosleep",
    "getitimer", "setitimer", "timer_create", "timer_delete", "timer_gettime",
    "timer_gettime64", "timer_settime", "timer_settime64", "timer_getoverrun", "adjtimex",
    "clock_adjtime", "clock_adjtime64",
    // sockets
    "socket", "socketpair", "socketcall", "bind", "connect", "listen", "accept", "accept4",
    "getsockname", "getpeername", "getsockopt", "setsockopt", "sendto", "send", "sendmsg",
    "sendmmsg", "recvfrom", "recv", "recvmsg", "recvmmsg", "recvmmsg_time64", "shutdown",
    // System V and POSIX IPC (namespaced)
    "ipc", "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "semctl", "msgget", "msgsnd", "msgrcv", "msgctl", "mq_open",
    "mq_unlink", "mq_timedsend", "mq_timedsend_time64", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_notify", "mq_getsetattr",
];

/// System calls a capability governs: allowed only when the container holds it.
#[rustfmt::skip]
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
            "lookup_dcookie", "mount", "mount_setattr", "move_mount", "name_to_handle_at",
            "open_tree", "perf_event_open", "quotactl", "quotactl_fd", "setdomainname",
            "sethostname", "setns", "syslog", "umount", "umount2", "unshare",
        ],
    ),
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    ("CAP_SYS_MODULE", &["init_module", "finit_module", "delete_module"]),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev"],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// `personality` values allowed: Linux, 32-bit Linux, UNAME26 (and both), and the query.
const PERSONALITIES: &[u64] = &[0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];

/// CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET.
const CLONE_NAMESPACE_FLAGS: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;

const ENOSYS: u32 = 38;

/// The seccomp architectures a process of this build's architecture may use.
fn architectures() -> &'static [&'static str] {
    if cfg!(target_arch = "x86_64") {
        &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    } else if cfg!(target_arch = "aarch64") {
        &["SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"]
    } else if cfg!(target_arch = "riscv64") {
        &["SCMP_ARCH_RISCV64"]
    } else if cfg!(target_arch = "s390x") {
        &["SCMP_ARCH_S390", "SCMP_ARCH_S390X"]
    } else {
        &[]
    }
}

/// Calls only some architectures have.
fn arch_syscalls() -> &'static [&'static str] {
    if cfg!(target_arch = "x86_64") {
        &["arch_prctl", "modify_ldt"]
    } else if cfg!(target_arch = "aarch64") {
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ]
    } else if cfg!(target_arch = "riscv64") {
        &["riscv_flush_icache"]
    } else if cfg!(target_arch = "s390x") {
        &[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ]
    } else {
        &[]
    }
}

/// The RuntimeDefault profile for a process with these bounding capabilities.
pub fn default_profile(bounding: &[String]) -> Value {
    let has = |cap: &str| bounding.iter().any(|c| c == cap);
    let mut names: Vec<&str> = ALLOWED.to_vec();
    names.extend(arch_syscalls());
    for (cap, calls) in BY_CAPABILITY {
        if has(cap) {
            names.extend(*calls);
        }
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(*n));
    let mut rules = vec![json!({"names": names, "action": "SCMP_ACT_ALLOW"})];
    for p in PERSONALITIES {
        rules.push(json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": p, "op": "SCMP_CMP_EQ"}]}));
    }
    if !has("CAP_SYS_ADMIN") {
        // The flags are clone's first argument, except on s390 where it is the second.
        let index = if cfg!(target_arch = "s390x") { 1 } else { 0 };
        rules.push(json!({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": index, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0,
                      "op": "SCMP_CMP_MASKED_EQ"}]}));
        // clone3 passes its flags in memory seccomp cannot read: refuse it as unknown, so
        // libc falls back to clone (moby#42681).
        rules.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": architectures(),
        "syscalls": rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(kind: ProfileType, r: &str) -> SecurityProfile {
        SecurityProfile {
            profile_type: kind as i32,
            localhost_ref: r.into(),
        }
    }

    fn allowed(p: &Value) -> Vec<String> {
        p["syscalls"][0]["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect()
    }

    fn caps(l: &[&str]) -> Vec<String> {
        l.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn nothing_asked_is_unconfined() {
        assert_eq!(choose(None, "").unwrap(), Choice::Unconfined);
    }

    #[test]
    fn profile_types_map_to_choices() {
        let rd = profile(ProfileType::RuntimeDefault, "");
        assert_eq!(choose(Some(&rd), "").unwrap(), Choice::RuntimeDefault);
        let un = profile(ProfileType::Unconfined, "");
        assert_eq!(
            choose(Some(&un), "runtime/default").unwrap(),
            Choice::Unconfined
        );
        let lh = profile(ProfileType::Localhost, "/var/lib/kubelet/seccomp/a.json");
        assert_eq!(
            choose(Some(&lh), "").unwrap(),
            Choice::Localhost("/var/lib/kubelet/seccomp/a.json".into())
        );
        let lh = profile(ProfileType::Localhost, "localhost//p.json");
        assert_eq!(
            choose(Some(&lh), "").unwrap(),
            Choice::Localhost("/p.json".into())
        );
    }

    #[test]
    fn the_deprecated_path_is_read_when_there_is_no_profile() {
        assert_eq!(
            choose(None, "runtime/default").unwrap(),
            Choice::RuntimeDefault
        );
        assert_eq!(
            choose(None, "docker/default").unwrap(),
            Choice::RuntimeDefault
        );
        assert_eq!(choose(None, "unconfined").unwrap(), Choice::Unconfined);
        assert_eq!(
            choose(None, "localhost//etc/p.json").unwrap(),
            Choice::Localhost("/etc/p.json".into())
        );
        let e = choose(None, "strict").unwrap_err();
        assert!(e.message.contains("\"strict\""), "{e}");
    }

    #[test]
    fn a_localhost_ref_on_another_type_is_invalid() {
        let p = profile(ProfileType::RuntimeDefault, "/x.json");
        let e = choose(Some(&p), "").unwrap_err();
        assert_eq!(e.code, protocol::Code::InvalidArgument);
    }

    #[test]
    fn a_relative_localhost_path_is_invalid() {
        let p = profile(ProfileType::Localhost, "x.json");
        assert!(
            choose(Some(&p), "")
                .unwrap_err()
                .message
                .contains("absolute")
        );
        let p = profile(ProfileType::Localhost, "");
        assert!(choose(Some(&p), "").is_err());
    }

    #[test]
    fn an_unknown_profile_type_is_invalid() {
        let p = SecurityProfile {
            profile_type: 9,
            localhost_ref: String::new(),
        };
        assert!(choose(Some(&p), "").is_err());
    }

    #[test]
    fn only_unprivileged_localhost_profiles_are_read() {
        let lh = profile(ProfileType::Localhost, "/p.json");
        assert_eq!(
            file_to_read(Some(&lh), "", false).unwrap().unwrap(),
            "/p.json"
        );
        assert_eq!(file_to_read(Some(&lh), "", true).unwrap(), None);
        assert_eq!(file_to_read(None, "runtime/default", false).unwrap(), None);
    }

    #[test]
    fn localhost_profiles_keep_oci_fields_only() {
        let p = localhost_profile(
            "/p.json",
            r#"{"defaultAction":"SCMP_ACT_ALLOW","archMap":[],"syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        assert_eq!(p["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(p["syscalls"][0]["names"][0], "sethostname");
        assert!(p.get("archMap").is_none());
    }

    #[test]
    fn bad_localhost_profiles_are_invalid_and_named() {
        let e = localhost_profile("/p.json", "{nope").unwrap_err();
        assert!(
            e.message.contains("/p.json") && e.message.contains("JSON"),
            "{e}"
        );
        let e = localhost_profile("/p.json", "[]").unwrap_err();
        assert!(e.message.contains("object"), "{e}");
        let e = localhost_profile("/p.json", r#"{"syscalls":[]}"#).unwrap_err();
        assert!(e.message.contains("defaultAction"), "{e}");
    }

    #[test]
    fn linux_seccomp_per_choice() {
        let b = caps(&[]);
        assert_eq!(linux_seccomp(&Choice::Unconfined, None, &b).unwrap(), None);
        let d = linux_seccomp(&Choice::RuntimeDefault, None, &b)
            .unwrap()
            .unwrap();
        assert_eq!(d["defaultAction"], "SCMP_ACT_ERRNO");
        let l = Choice::Localhost("/p.json".into());
        let v = linux_seccomp(&l, Some(r#"{"defaultAction":"SCMP_ACT_LOG"}"#), &b)
            .unwrap()
            .unwrap();
        assert_eq!(v, json!({"defaultAction": "SCMP_ACT_LOG"}));
        assert_eq!(
            linux_seccomp(&l, None, &b).unwrap_err().code,
            protocol::Code::Internal
        );
    }

    #[test]
    fn default_profile_denies_by_default_and_allows_the_basics() {
        let p = default_profile(&caps(&["CAP_CHOWN"]));
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        let a = allowed(&p);
        for call in [
            "read",
            "write",
            "openat",
            "execve",
            "futex",
            "socket",
            "exit_group",
        ] {
            assert!(a.contains(&call.to_string()), "{call}");
        }
        for call in [
            "mount",
            "sethostname",
            "reboot",
            "init_module",
            "keyctl",
            "io_uring_setup",
        ] {
            assert!(!a.contains(&call.to_string()), "{call}");
        }
        let mut sorted = a.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), a.len(), "no name twice");
    }

    #[test]
    fn capabilities_unlock_their_calls() {
        let p = default_profile(&caps(&["CAP_SYS_ADMIN", "CAP_SYS_TIME"]));
        let a = allowed(&p);
        for call in ["mount", "sethostname", "unshare", "clone3", "clock_settime"] {
            assert!(a.contains(&call.to_string()), "{call}");
        }
        assert!(!a.contains(&"reboot".to_string()));
    }

    #[test]
    fn without_sys_admin_clone_is_masked_and_clone3_is_enosys() {
        let p = default_profile(&caps(&["CAP_CHOWN"]));
        let rules = p["syscalls"].as_array().unwrap();
        let clone = rules
            .iter()
            .find(|r| r["names"] == json!(["clone"]))
            .unwrap();
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone["args"][0]["value"], 0x7e02_0000u64);
        let clone3 = rules
            .iter()
            .find(|r| r["names"] == json!(["clone3"]))
            .unwrap();
        assert_eq!(clone3["action"], "SCMP_ACT_ERRNO");
        assert_eq!(clone3["errnoRet"], 38);
        let p = default_profile(&caps(&["CAP_SYS_ADMIN"]));
        let rules = p["syscalls"].as_array().unwrap();
        assert!(!rules.iter().any(|r| r["names"] == json!(["clone3"])));
    }

    #[test]
    fn personality_is_limited_to_known_values() {
        let p = default_profile(&[]);
        let per: Vec<_> = p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"] == json!(["personality"]))
            .map(|r| r["args"][0]["value"].as_u64().unwrap())
            .collect();
        assert_eq!(per, PERSONALITIES);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x86_64_profile_covers_the_compat_arches() {
        let p = default_profile(&[]);
        assert_eq!(
            p["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        assert!(allowed(&p).contains(&"arch_prctl".to_string()));
    }
}
