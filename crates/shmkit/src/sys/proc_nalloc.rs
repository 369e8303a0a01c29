//! Reading `/proc` without allocating: line by line through a stack
//! buffer, directories through `getdents` into another. The tracker's
//! watcher judges segments with it after `fork`, when the allocator may be
//! locked by a thread that no longer exists. (`crate::usage` reads the same
//! files with ordinary, allocating I/O.)

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;

use rustix::fs::{self, Mode, OFlags, CWD};
use rustix::io::Errno;

use super::stack_text::Line;
use super::FileKey;

/// A hexadecimal number as `/proc` prints device numbers and addresses.
pub(crate) fn parse_hex(s: &[u8]) -> Option<usize> {
    let mut v: usize = 0;
    if s.is_empty() {
        return None;
    }
    for &b in s {
        let d = (b as char).to_digit(16)?;
        v = v.checked_mul(16)?.checked_add(d as usize)?;
    }
    Some(v)
}

/// An unsigned decimal number; None if empty, not all digits, or too big.
pub(crate) fn parse_dec(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |v, &b| {
        v.checked_mul(10)?
            .checked_add(u64::from(b.checked_sub(b'0').filter(|&d| d < 10)?))
    })
}

/// `/proc/PID` followed by `tail`, NUL-terminated.
pub(crate) fn proc_path(pid: i32, tail: &[u8]) -> Option<Line> {
    let mut path = Line::new();
    path.push(b"/proc/")
        .num(usize::try_from(pid).ok()?)
        .push(tail)
        .push(b"\0");
    Some(path)
}

/// Calls `f` on each line of the file at `path` (a line longer than the
/// 8 KiB buffer is skipped) until it returns false; false if the file
/// cannot be opened. No allocation.
pub(crate) fn each_line(path: &CStr, f: impl FnMut(&[u8]) -> bool) -> bool {
    each_line_at(path, f).is_ok()
}

/// [`each_line`], with the reason the file could not be opened.
pub(crate) fn each_line_at(path: &CStr, mut f: impl FnMut(&[u8]) -> bool) -> Result<(), Errno> {
    let file = fs::openat(CWD, path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    let mut buf = [0u8; 8192];
    let mut have = 0;
    loop {
        let n = match rustix::io::read(&file, &mut buf[have..]) {
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(_) => 0,
        };
        let end = have + n;
        let mut start = 0;
        while let Some(nl) = buf[start..end].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + nl];
            start += nl + 1;
            if !f(line) {
                return Ok(());
            }
        }
        // Keep the unfinished line; drop one that fills the buffer.
        if start == 0 && end == buf.len() {
            have = 0;
        } else {
            buf.copy_within(start..end, 0);
            have = end - start;
        }
        if n == 0 {
            return Ok(());
        }
    }
}

/// The first 1 KiB of `/proc/PID/stat` on the stack; None if the process
/// is gone or its entry unreadable.
fn read_stat(pid: i32, buf: &mut [u8; 1024]) -> Option<usize> {
    let path = proc_path(pid, b"/stat")?;
    let fd = fs::openat(
        CWD,
        path.c_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    rustix::io::read(&fd, buf).ok()
}

/// Numeric field `n` (1-based, `n` >= 3) of `/proc/PID/stat`.
pub(crate) fn stat_field(pid: i32, n: usize) -> Option<u64> {
    let mut buf = [0u8; 1024];
    let len = read_stat(pid, &mut buf)?;
    // The command name (field 2) may hold spaces: count from its ')'.
    let after = buf[..len].iter().rposition(|&b| b == b')')? + 2;
    let field = buf[after..len]
        .split(|&b| b == b' ')
        .nth(n.checked_sub(3)?)?;
    parse_dec(field)
}

/// Whether process `pid` is a zombie (state `Z` or `X`) or gone; false
/// for a negative `pid`, which names no process.
pub(crate) fn zombie_or_gone(pid: i32) -> bool {
    let Some(path) = proc_path(pid, b"/stat") else {
        return false;
    };
    let mut buf = [0u8; 1024];
    let Ok(fd) = fs::openat(
        CWD,
        path.c_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return true; // gone
    };
    let len = rustix::io::read(&fd, &mut buf).unwrap_or(0);
    buf[..len]
        .iter()
        .rposition(|&b| b == b')')
        .and_then(|at| buf.get(at + 2))
        .is_some_and(|&state| state == b'Z' || state == b'X')
}

/// Calls `f` with each pid in `/proc` until it returns false; an error if
/// `/proc` cannot be opened.
pub(crate) fn each_pid(mut f: impl FnMut(i32) -> bool) -> Result<(), Errno> {
    let proc_dir = fs::openat(
        CWD,
        c"/proc",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut space = [MaybeUninit::<u8>::uninit(); 4096];
    let mut entries = fs::RawDir::new(proc_dir.as_fd(), &mut space);
    while let Some(Ok(entry)) = entries.next() {
        let Some(pid) = parse_dec(entry.file_name().to_bytes()).and_then(|p| i32::try_from(p).ok())
        else {
            continue;
        };
        if !f(pid) {
            break;
        }
    }
    Ok(())
}

/// Calls `f` with the number and file of each descriptor of process `pid`
/// open on a file in `/dev/shm` (a renamed or unlinked one too), until it
/// returns false. Other descriptors are skipped without a `stat`.
pub(crate) fn each_shm_fd(pid: i32, mut f: impl FnMut(u64, FileKey) -> bool) -> Result<(), Errno> {
    let path = proc_path(pid, b"/fd").ok_or(Errno::INVAL)?;
    let dir = fs::openat(
        CWD,
        path.c_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut space = [MaybeUninit::<u8>::uninit(); 4096];
    let mut entries = fs::RawDir::new(dir.as_fd(), &mut space);
    let mut target = [0u8; 32];
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let name = entry.file_name();
        let Some(fd) = parse_dec(name.to_bytes()) else {
            continue;
        };
        // Segments live in /dev/shm (a renamed or unlinked one too, with
        // " (deleted)" after it): skip everything else without a stat.
        let Ok(len) = fs::readlinkat_raw(&dir, name, &mut target[..]) else {
            continue;
        };
        if !target[..len.min(target.len())].starts_with(b"/dev/shm/") {
            continue;
        }
        let Ok(st) = fs::statat(&dir, name, fs::AtFlags::empty()) else {
            continue;
        };
        if !f(fd, (fs::major(st.st_dev), fs::minor(st.st_dev), st.st_ino)) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn numbers_parse_as_proc_prints_them() {
        assert_eq!(parse_hex(b"1b"), Some(0x1b));
        assert_eq!(parse_hex(b""), None);
        assert_eq!(parse_hex(b"1g"), None);
        assert_eq!(parse_dec(b"2295756"), Some(2_295_756));
        assert_eq!(parse_dec(b""), None);
        assert_eq!(parse_dec(b"-1"), None);
        assert_eq!(parse_dec(b"99999999999999999999"), None, "overflow");
    }

    #[test]
    fn lines_are_read_whole_and_the_walk_stops_on_request() {
        let mut seen = 0;
        let mut pid_line = false;
        assert!(each_line(c"/proc/self/status", |line| {
            seen += 1;
            pid_line = line.starts_with(b"Pid:");
            !pid_line
        }));
        assert!(pid_line, "stopped at the Pid: line");
        assert!(seen > 1);
        assert_eq!(
            each_line_at(c"/proc/self/no such file", |_| true),
            Err(Errno::NOENT)
        );
    }

    #[test]
    fn stat_fields_of_this_process() {
        let me = std::process::id() as i32;
        // Field 4 is the parent's pid.
        assert_eq!(
            stat_field(me, 4),
            Some(u64::from(std::os::unix::process::parent_id()))
        );
        assert_eq!(stat_field(me, 2), None, "fields before the name's end");
        assert!(!zombie_or_gone(me));
        assert!(!zombie_or_gone(-1));
    }

    #[test]
    fn each_shm_fd_finds_a_segment_descriptor_by_its_file() {
        let shm = crate::SharedMemory::create(64).unwrap();
        let st = crate::sys::fd_stat(&shm).unwrap();
        let me = std::process::id() as i32;
        let mut found = None;
        each_shm_fd(me, |fd, key| {
            if key == st.key {
                found = Some(fd);
            }
            found.is_none()
        })
        .unwrap();
        assert_eq!(found, Some(shm.as_raw_fd() as u64));
        let mut pids = 0;
        let mut mine = false;
        each_pid(|pid| {
            pids += 1;
            mine |= pid == me;
            true
        })
        .unwrap();
        assert!(mine && pids >= 1);
        shm.unlink().unwrap();
    }
}
