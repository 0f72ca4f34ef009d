//! Thin `*at` syscall wrappers on directory fds: every operation names a directory fd and a
//! single path component, so nothing we do here ever resolves a symlink the layer planted.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub(crate) fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Retries a syscall wrapper on EINTR.
fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Opens a directory the caller named (the root itself may be reached through symlinks: the
/// caller chose it, the layer did not).
pub(crate) fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path.as_os_str().as_bytes())?;
    let fd = retry(|| {
        cvt(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens directory `name` in `dir` without following a symlink.
pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    let fd = retry(|| {
        cvt(unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a multi-component relative path beneath `dir` with openat2, refusing any symlink and
/// any escape. Returns `Ok(None)` when openat2 is not available (old kernel, seccomp).
pub(crate) fn open_dir_beneath(dir: BorrowedFd<'_>, rel: &CStr) -> io::Result<Option<OwnedFd>> {
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    let r = retry(|| {
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                rel.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    });
    match r {
        Ok(fd) => Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens directory `rel` (a normalised relative path, empty for `dir` itself) beneath `dir`
/// without following any symlink: openat2 when the kernel has it, else one `O_NOFOLLOW`
/// component at a time. `Ok(None)` when it does not exist, or is reached only through a
/// symlink or a non-directory.
pub(crate) fn open_dir_rel(dir: BorrowedFd<'_>, rel: &[u8]) -> io::Result<Option<OwnedFd>> {
    let absent = |e: &io::Error| {
        matches!(
            e.raw_os_error(),
            Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP) | Some(libc::EXDEV)
        )
    };
    let c = cstr(if rel.is_empty() { b"." } else { rel })?;
    match open_dir_beneath(dir, &c) {
        Ok(Some(fd)) => return Ok(Some(fd)),
        Ok(None) => {}
        Err(e) if absent(&e) => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut cur = open_dir_at(dir, c".")?;
    for comp in rel.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
        match open_dir_at(cur.as_fd_ref(), &cstr(comp)?) {
            Ok(fd) => cur = fd,
            Err(e) if absent(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(cur))
}

pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// Creates (exclusively) and opens a regular file for writing, never following a symlink.
pub(crate) fn create_file_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<std::fs::File> {
    let fd = retry(|| {
        cvt(unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        })
    })?;
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<libc::stat>> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(st))
}

pub(crate) fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub(crate) fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) })?;
    Ok(())
}

pub(crate) fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, is_dir: bool) -> io::Result<()> {
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    Ok(())
}

pub(crate) fn symlink_at(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })?;
    Ok(())
}

pub(crate) fn link_at(
    odir: BorrowedFd<'_>,
    oname: &CStr,
    ndir: BorrowedFd<'_>,
    nname: &CStr,
) -> io::Result<()> {
    cvt(unsafe {
        libc::linkat(
            odir.as_raw_fd(),
            oname.as_ptr(),
            ndir.as_raw_fd(),
            nname.as_ptr(),
            0,
        )
    })?;
    Ok(())
}

pub(crate) fn mknod_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32, dev: u64) -> io::Result<()> {
    cvt(unsafe {
        libc::mknodat(
            dir.as_raw_fd(),
            name.as_ptr(),
            mode as libc::mode_t,
            dev as libc::dev_t,
        )
    })?;
    Ok(())
}

pub(crate) fn lchown_at(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    cvt(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

pub(crate) fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    cvt(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })?;
    Ok(())
}

pub(crate) fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) })?;
    Ok(())
}

/// chmod of a non-symlink entry by name. Only used right after we created the entry ourselves
/// as a device node or fifo, so following is not a concern (and Linux cannot chmod symlinks).
pub(crate) fn chmod_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    cvt(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t, 0) })?;
    Ok(())
}

fn timespec(t: (i64, u32)) -> libc::timespec {
    libc::timespec {
        tv_sec: t.0 as libc::time_t,
        tv_nsec: t.1 as libc::c_long,
    }
}

pub(crate) fn futimens(fd: BorrowedFd<'_>, atime: (i64, u32), mtime: (i64, u32)) -> io::Result<()> {
    let ts = [timespec(atime), timespec(mtime)];
    cvt(unsafe { libc::futimens(fd.as_raw_fd(), ts.as_ptr()) })?;
    Ok(())
}

pub(crate) fn lutimes_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    atime: (i64, u32),
    mtime: (i64, u32),
) -> io::Result<()> {
    let ts = [timespec(atime), timespec(mtime)];
    cvt(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

/// `/proc/self/fd/<dir>/<name>`: lets the `l*xattr` calls address a non-followed final
/// component relative to a directory fd (there is no `setxattrat` on older kernels).
fn proc_path(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<CString> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name.to_bytes());
    cstr(&p)
}

pub(crate) fn fsetxattr(fd: BorrowedFd<'_>, key: &CStr, value: &[u8]) -> io::Result<()> {
    cvt(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })?;
    Ok(())
}

pub(crate) fn lsetxattr_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    key: &CStr,
    value: &[u8],
) -> io::Result<()> {
    let p = proc_path(dir, name)?;
    cvt(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })?;
    Ok(())
}

/// Lists and reads all xattrs of `path` without following a final symlink, sorted by name.
pub(crate) fn lxattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = cstr(path.as_os_str().as_bytes())?;
    let mut names = vec![0u8; 1024];
    let n = loop {
        let r = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => names.resize(names.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(e),
        }
    };
    let mut out = Vec::new();
    for key in names[..n].split(|b| *b == 0).filter(|k| !k.is_empty()) {
        let ck = cstr(key)?;
        let mut val = vec![0u8; 256];
        loop {
            let r = unsafe {
                libc::lgetxattr(c.as_ptr(), ck.as_ptr(), val.as_mut_ptr().cast(), val.len())
            };
            if r >= 0 {
                val.truncate(r as usize);
                out.push((key.to_vec(), val));
                break;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) => val.resize(val.len() * 4, 0),
                // Removed between list and get.
                Some(libc::ENODATA) => break,
                _ => return Err(e),
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Removes `name` in `dir` and, if it is a directory, everything below it, never following a
/// symlink. A missing entry is not an error.
pub(crate) fn remove_all_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if !is_dir(&st) {
        return ignore_enoent(unlink_at(dir, name, false));
    }
    let sub = match open_dir_at(dir, name) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    for child in read_dir_names(sub.as_fd_ref())? {
        remove_all_at(sub.as_fd_ref(), &child)?;
    }
    ignore_enoent(unlink_at(dir, name, true))
}

fn ignore_enoent(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// Small helper so call sites read `fd.as_fd_ref()` rather than `fd.as_fd()` with imports.
pub(crate) trait AsFdRef {
    fn as_fd_ref(&self) -> BorrowedFd<'_>;
}

impl AsFdRef for OwnedFd {
    fn as_fd_ref(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.as_fd()
    }
}

/// Names in a directory (without `.` and `..`), unsorted.
pub(crate) fn read_dir_names(dir: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    // fdopendir takes ownership of the fd it is given, so hand it a duplicate.
    let dup = cvt(unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
    let dp = unsafe { libc::fdopendir(dup) };
    if dp.is_null() {
        let e = io::Error::last_os_error();
        unsafe { libc::close(dup) };
        return Err(e);
    }
    // The dup shares the file offset with `dir`; start from the beginning.
    unsafe { libc::rewinddir(dp) };
    let mut out = Vec::new();
    loop {
        unsafe { *libc::__errno_location() = 0 };
        let ent = unsafe { libc::readdir64(dp) };
        if ent.is_null() {
            let errno = unsafe { *libc::__errno_location() };
            unsafe { libc::closedir(dp) };
            if errno != 0 {
                return Err(io::Error::from_raw_os_error(errno));
            }
            return Ok(out);
        }
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        let b = name.to_bytes();
        if b != b"." && b != b".." {
            out.push(name.to_owned());
        }
    }
}
