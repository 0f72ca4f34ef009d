//! Starting a created container without `runc start`.
//!
//! `runc create` leaves the container's init (`runc init`) waiting to open
//! `<runc root>/<id>/exec.fifo` for writing. `runc start` of a created container does little
//! more than open that fifo for reading, read the byte init writes into it (after which init
//! runs the `startContainer` hooks and execs the user's process, which closes its end), and
//! remove the fifo, whose absence is what makes runc report the container `running` from then
//! on. Doing that here spares a runc process (a Go runtime start) on every container start.
//!
//! As runc does (1.1, `linuxContainer.exec`): while waiting, every [`CHECK_EVERY`] the init is
//! checked; once it is gone (reaped by the shim, missing or a zombie) whatever init wrote
//! before dying decides: a byte means it was released and ran (a very short container), none
//! means it died before starting, and the start fails with "container process is already
//! dead".
//!
//! runc opens the fifo blocking, on a thread that is left behind if init never opens its end.
//! Here the read end is opened non-blocking instead, which never waits, and watched through
//! the runtime's poller: Linux reports no hang-up on a fifo's read end until a writer has come
//! and gone, so readiness means data or init's end closed. Nothing blocks, nothing is left
//! behind, and dropping the future (a deadline) closes the fd.
//!
//! Poststart hooks are unaffected: runc 1.1 runs them in `create`, not in `start`.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::process::Exited;

/// runc's name for the fifo, in the container's directory under runc's root.
pub const EXEC_FIFO: &str = "exec.fifo";
/// How often the init is checked while waiting, as runc does.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Why the init was not released.
#[derive(Debug, thiserror::Error)]
pub enum FifoError {
    #[error("container process is already dead")]
    InitDead,
    #[error("exec fifo {path}: {err}")]
    Io { path: PathBuf, err: io::Error },
}

/// The container's exec fifo, open for reading, when the runtime left one.
pub struct ExecFifo {
    path: PathBuf,
    file: File,
}

impl ExecFifo {
    /// Opens `<root>/<id>/exec.fifo` without waiting for a writer. `Ok(None)` when there is no
    /// fifo there (a runtime that starts containers some other way: its `start` is needed).
    pub fn open(runc_root: &Path, id: &str) -> Result<Option<ExecFifo>, FifoError> {
        let path = runc_root.join(id).join(EXEC_FIFO);
        let io_err = |err| FifoError::Io {
            path: path.clone(),
            err,
        };
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_fifo() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        }
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        // Checked again on what was opened: the name could have been replaced in between.
        let m = file.metadata().map_err(io_err)?;
        if !m.file_type().is_fifo() {
            return Ok(None);
        }
        Ok(Some(ExecFifo { path, file }))
    }

    /// Releases the init `pid` and returns once it has exec'd the user's process (or exited
    /// after being released); then removes the fifo. `exited` is the init's exit as the shim
    /// records it. Cancel-safe: dropped, it only closes the fifo.
    pub async fn release(
        self,
        pid: u32,
        mut exited: watch::Receiver<Option<Exited>>,
    ) -> Result<(), FifoError> {
        let io_err = |err| FifoError::Io {
            path: self.path.clone(),
            err,
        };
        // SAFETY: the file moves into the AsyncFd, so nothing else closes or reuses its fd
        // while it is registered.
        let fd = unsafe { AsyncFd::register_with_interest(self.file, Interest::READABLE) }
            .map_err(|e| io_err(io::Error::from(e)))?;
        let mut got = 0usize;
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ready = fd.readable() => {
                    let mut guard = ready.map_err(io_err)?;
                    match guard.try_io(|f| read_some(f.get_ref())) {
                        // Init's end closed: it exec'd (the fd is close-on-exec) or died.
                        Ok(Ok(0)) => break,
                        Ok(Ok(n)) => got += n,
                        Ok(Err(e)) => return Err(io_err(e)),
                        Err(_would_block) => {}
                    }
                }
                _ = tick.tick() => {
                    if exited.borrow_and_update().is_some() || init_gone(pid) {
                        got += drain(fd.get_ref()).map_err(io_err)?;
                        break;
                    }
                }
                // The shim recorded the exit: no need to wait for the next check.
                Ok(()) = exited.changed() => {
                    if exited.borrow_and_update().is_some() {
                        got += drain(fd.get_ref()).map_err(io_err)?;
                        break;
                    }
                }
            }
        }
        if got == 0 {
            return Err(FifoError::InitDead);
        }
        drop(fd);
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(e)),
        }
    }
}

fn read_some(mut f: &File) -> io::Result<usize> {
    let mut buf = [0u8; 16];
    f.read(&mut buf)
}

/// Reads what is in the fifo now, without waiting: the byte of an init that died after
/// writing it.
fn drain(f: &File) -> io::Result<usize> {
    let mut n = 0;
    loop {
        match read_some(f) {
            Ok(0) => return Ok(n),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// True when `pid` no longer runs: no such process, or a zombie or dead one. (The shim reaps
/// its children at once, so a pid gone may be reused; that only reads as alive until the
/// reaper's record of the exit arrives.)
fn init_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| rest.starts_with(['Z', 'X', 'x'])),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Instant;

    fn mkfifo(dir: &Path, id: &str) -> PathBuf {
        let d = dir.join(id);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join(EXEC_FIFO);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o622)).unwrap();
        p
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn tempdir(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("execfifo-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    #[test]
    fn no_fifo_or_not_a_fifo_means_the_runtime_starts_it() {
        let d = tempdir("none");
        assert!(ExecFifo::open(&d.0, "c1").unwrap().is_none());
        std::fs::create_dir_all(d.0.join("c2")).unwrap();
        std::fs::write(d.0.join("c2").join(EXEC_FIFO), b"0").unwrap();
        assert!(ExecFifo::open(&d.0, "c2").unwrap().is_none());
    }

    #[test]
    fn a_writer_releases_and_the_fifo_is_removed() {
        let d = tempdir("ok");
        let p = mkfifo(&d.0, "c1");
        rt().block_on(async {
            let fifo = ExecFifo::open(&d.0, "c1").unwrap().expect("a fifo");
            let (_tx, rx) = watch::channel(None);
            // As runc init: open for writing (blocks until a reader is there), write a byte,
            // linger a little, close.
            let writer_path = p.clone();
            let writer = std::thread::spawn(move || {
                let mut w = std::fs::OpenOptions::new()
                    .write(true)
                    .open(writer_path)
                    .unwrap();
                w.write_all(b"0").unwrap();
                std::thread::sleep(Duration::from_millis(50));
            });
            // A live pid (ours): only the fifo can end the wait.
            fifo.release(std::process::id(), rx).await.unwrap();
            writer.join().unwrap();
        });
        assert!(!p.exists(), "the fifo must be removed after the start");
    }

    #[test]
    fn a_dead_init_that_never_wrote_is_an_error_not_a_hang() {
        let d = tempdir("dead");
        let p = mkfifo(&d.0, "c1");
        rt().block_on(async {
            let fifo = ExecFifo::open(&d.0, "c1").unwrap().expect("a fifo");
            let (tx, rx) = watch::channel(None);
            tx.send_replace(Some(Exited {
                status: 1,
                at: crate::util::now(),
            }));
            let t0 = Instant::now();
            let err = tokio::time::timeout(Duration::from_secs(5), fifo.release(u32::MAX, rx))
                .await
                .expect("no hang")
                .unwrap_err();
            assert!(matches!(err, FifoError::InitDead), "{err}");
            assert!(t0.elapsed() < Duration::from_secs(2));
        });
        assert!(p.exists(), "a failed start leaves the fifo to runc delete");
    }

    #[test]
    fn a_byte_written_before_init_died_counts_as_started() {
        let d = tempdir("short");
        let p = mkfifo(&d.0, "c1");
        rt().block_on(async {
            let fifo = ExecFifo::open(&d.0, "c1").unwrap().expect("a fifo");
            // The writer writes and keeps its end open: no EOF, so only the death check (a
            // pid that does not exist) ends the wait, and it must find the byte.
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&p)
                .unwrap();
            w.write_all(b"0").unwrap();
            let (_tx, rx) = watch::channel(None);
            tokio::time::timeout(Duration::from_secs(5), fifo.release(u32::MAX, rx))
                .await
                .expect("no hang")
                .unwrap();
            drop(w);
        });
        assert!(!p.exists());
    }
}
