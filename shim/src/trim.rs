//! Dropping start-up code from the shim's resident memory once it is idle.
//!
//! One shim runs per container, so its resident pages multiply. Start-up (runtime set-up,
//! Create, Start) runs code that an idle shim never touches again, but those text pages stay
//! mapped and count in Pss. `MADV_DONTNEED` on our own executable's text segment unmaps
//! them; the kernel maps back, from the page cache, only what runs afterwards. It is safe on
//! text only: those pages are clean and identical to the file. Writable or relocated segments
//! are never touched.

use std::fs;

/// Unmaps the resident pages of our executable's text segment.
pub fn trim_text() {
    let Ok(exe) = fs::read_link("/proc/self/exe") else {
        return;
    };
    let exe = exe.to_string_lossy().into_owned();
    let Ok(maps) = fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines() {
        // "start-end perms offset dev inode path"
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
            continue;
        };
        if perms != "r-xp" || parts.nth(3) != Some(exe.as_str()) {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: the range is our own clean, read-only, executable file mapping; dropping its
        // pages only means they are faulted in again from the file when next used.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_RANDOM);
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}
