//! Who else uses a segment, judged by the watcher after `fork` without
//! allocating: the locks in `/proc/locks`, then every process's mappings
//! (`/proc/PID/maps`) and descriptors (`/proc/PID/fd`), by the rule
//! `shmkit ls` applies (`crate::usage`, which may allocate). The watcher's
//! own "cleanup pending" marks are no use: they are how watchers judge.

use rustix::io::Errno;

use crate::sys::proc_nalloc::{
    self, each_line, each_line_at, parse_dec, parse_hex, proc_path, stat_field,
};
use crate::sys::stack_text::Line;
use crate::tracker::mark::CLEANUP_MARK_START;

use super::wait::exiting_now;

/// A segment file's identity, as `/proc` prints it.
#[derive(Clone, Copy)]
pub(super) struct Key {
    pub(super) major: u32,
    pub(super) minor: u32,
    pub(super) ino: u64,
}

/// Whether `MAJOR:MINOR:INODE` (hex, hex, decimal: `/proc/locks`) is `key`.
fn is_lock_file(field: &[u8], key: Key) -> bool {
    let mut parts = field.split(|&b| b == b':');
    parts.next().and_then(parse_hex) == Some(key.major as usize)
        && parts.next().and_then(parse_hex) == Some(key.minor as usize)
        && parts.next().and_then(parse_dec) == Some(key.ino)
}

/// The fields of a held lock in a line of `/proc/locks`
/// (`ID: KIND MODE ACCESS PID MAJOR:MINOR:INODE START END`): pid, file,
/// start. None for a waiter (`ID: -> …`), which holds nothing.
fn lock_fields(line: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty()).skip(1);
    if fields.next()? == b"->" {
        return None;
    }
    let pid = fields.nth(2)?;
    Some((pid, fields.next()?, fields.next()?))
}

/// Whether a lock starting at `start` is a watcher's "cleanup pending"
/// mark, which says a watcher is judging the segment, not that anyone uses
/// it (`inspect` skips it too).
fn is_mark_start(start: &[u8]) -> bool {
    parse_dec(start) == Some(CLEANUP_MARK_START as u64)
}

/// Whether every process that holds a `flock` on the segment `key` is
/// exiting, per `/proc/locks` (one that died with ours and is still closing
/// its files), or is another watcher judging the segment at this moment
/// (its probe's `LOCK_EX`): either way a retry may find the segment free.
/// A live holder makes it that process's business (it may be about to
/// unlink it itself), so no retry. True when it cannot be told.
pub(super) fn held_only_by_exiting(key: Key) -> bool {
    let mut live_holder = false;
    each_line(c"/proc/locks", |line| {
        let Some((pid, file, _)) = lock_fields(line) else {
            return true;
        };
        if line.split(|&b| b == b' ').any(|f| f == b"FLOCK") && is_lock_file(file, key) {
            live_holder = parse_dec(pid)
                .and_then(|p| i32::try_from(p).ok())
                .is_some_and(|p| !exiting_now(p) && !judging(p, key));
        }
        !live_holder
    });
    !live_holder
}

/// Whether process `pid` is a watcher judging the segment `key`: it has a
/// descriptor of it that holds a "cleanup pending" mark.
fn judging(pid: i32, key: Key) -> bool {
    let mut marked = false;
    let _ = proc_nalloc::each_shm_fd(pid, |fd, (major, minor, ino)| {
        marked = (major, minor, ino) == (key.major, key.minor, key.ino) && holds_mark(pid, fd);
        !marked
    });
    marked
}

/// What a look at a segment's users found, from the weakest claim on it to
/// the strongest; several findings combine into the strongest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Users {
    /// Nobody but us.
    None,
    /// Only processes that are exiting (died with ours, still closing
    /// their files), or another watcher judging it too: worth a retry.
    Exiting,
    /// A process that could have it open could not be inspected (another
    /// user's, without privilege): kept, as no use is not proven.
    Unknown,
    /// A live process maps it, holds it open or holds a lock on it.
    Live,
}

/// Who uses the segment `key` (owned by `uid`, permission bits `mode`)
/// besides this watcher, by the rule `shmkit ls` applies
/// (`crate::usage`): a mapping, an open descriptor or a lock, in any
/// process this one may inspect, read from `/proc` with stack buffers only.
/// A watcher's descriptors that hold a "cleanup pending" mark are not
/// uses: they are how watchers judge, and two watchers judging the same
/// segment must not keep it for each other. While another watcher judges
/// it, its descriptor defeats the lease and its probe's `flock` looks
/// like a use, so what cannot be told is worth a retry once it is done.
pub(super) fn users_of(key: Key, uid: u32, mode: u32) -> Users {
    // A pid is positive and below 2^22 (`pid_max`), so it fits an i32.
    let me = crate::sys::own_pid() as i32;
    let mut found = Users::None;
    // Our own probe's descriptor holds one mark; more are other watchers'.
    let mut marks = 0;
    each_line(c"/proc/locks", |line| {
        let Some((pid, file, start)) = lock_fields(line) else {
            return true;
        };
        if !is_lock_file(file, key) {
            return true;
        }
        if is_mark_start(start) {
            marks += 1;
            return true;
        }
        // The kernel prints -1 for an OFD lock, 0 for another namespace's
        // taker: either way a lock proves an open file, so a use.
        let pid = parse_signed(pid).unwrap_or(0);
        if pid == i64::from(me) {
            return true; // our own probe's flock
        }
        let exiting =
            i32::try_from(pid).is_ok_and(|p| p > 0 && (exiting_now(p) || judging(p, key)));
        found = found.max(if exiting { Users::Exiting } else { Users::Live });
        found != Users::Live
    });
    if found == Users::Live {
        return found;
    }
    let listed = proc_nalloc::each_pid(|pid| {
        if pid != me {
            found = found.max(process_uses(pid, key, uid, mode));
        }
        found != Users::Live
    });
    if listed.is_err() {
        found = Users::Unknown;
    }
    if found == Users::Unknown && marks > 1 {
        return Users::Exiting;
    }
    found
}

/// Whether process `pid` maps or holds open the segment `key`.
fn process_uses(pid: i32, key: Key, uid: u32, mode: u32) -> Users {
    let mut uses = false;
    let mut blind = false;
    let maps = proc_path(pid, b"/maps");
    // "START-END PERMS OFFSET MAJOR:MINOR INODE [PATH]"
    let read = maps.as_ref().map_or(Err(Errno::INVAL), |p| {
        each_line_at(p.c_str(), |line| {
            let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
            let dev = fields.nth(3).unwrap_or(b"");
            let ino = fields.next().and_then(parse_dec);
            let mut parts = dev.split(|&b| b == b':');
            uses = ino == Some(key.ino)
                && parts.next().and_then(parse_hex) == Some(key.major as usize)
                && parts.next().and_then(parse_hex) == Some(key.minor as usize);
            !uses
        })
    });
    match read {
        Ok(()) => {}
        Err(Errno::NOENT | Errno::SRCH) => return Users::None, // gone
        Err(_) => blind = true,
    }
    if !uses {
        match open_fds_use(pid, key) {
            Ok(found) => uses = found,
            Err(Errno::NOENT | Errno::SRCH) => return Users::None,
            Err(_) => blind = true,
        }
    }
    if uses {
        return if exiting_now(pid) {
            Users::Exiting
        } else {
            Users::Live
        };
    }
    if blind && !holds_nothing(pid) && could_open(pid, uid, mode) {
        return Users::Unknown;
    }
    Users::None
}

/// Whether a descriptor of process `pid` other than a watcher's mark is
/// open on the segment `key`.
fn open_fds_use(pid: i32, key: Key) -> Result<bool, Errno> {
    let mut found = false;
    proc_nalloc::each_shm_fd(pid, |fd, (major, minor, ino)| {
        found = (major, minor, ino) == (key.major, key.minor, key.ino) && !holds_mark(pid, fd);
        !found
    })?;
    Ok(found)
}

/// Whether descriptor `fd` of process `pid` holds a "cleanup pending" mark
/// (`/proc/PID/fdinfo/FD` lists the locks an open file holds).
fn holds_mark(pid: i32, fd: u64) -> bool {
    let (Ok(pid), Ok(fd)) = (usize::try_from(pid), usize::try_from(fd)) else {
        return false;
    };
    let mut path = Line::new();
    path.push(b"/proc/")
        .num(pid)
        .push(b"/fdinfo/")
        .num(fd)
        .push(b"\0");
    let mut mark = false;
    each_line(path.c_str(), |line| {
        // "lock:\t1: OFDLCK ADVISORY READ -1 00:1b:12 START END"
        if let Some(rest) = line.strip_prefix(b"lock:") {
            mark = lock_fields(rest.trim_ascii_start()).is_some_and(|(_, _, s)| is_mark_start(s));
        }
        !mark
    });
    mark
}

/// Whether `pid` can hold no file at all: a zombie, or a kernel thread.
fn holds_nothing(pid: i32) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    proc_nalloc::zombie_or_gone(pid)
        || stat_field(pid, 9).is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// Whether process `pid`, whose `/proc` entries this watcher may not read,
/// could have opened a segment owned by `uid` with permission bits `mode`:
/// always if the mode lets its group or others in, else if one of its user
/// ids is root's or the owner's (the rule the manager's clean-up applies;
/// `/proc/PID/status` is readable by all). One gone meanwhile could not.
fn could_open(pid: i32, uid: u32, mode: u32) -> bool {
    if mode & 0o077 != 0 {
        return true;
    }
    let Some(path) = proc_path(pid, b"/status") else {
        return true;
    };
    let mut could = true;
    let opened = each_line(path.c_str(), |line| {
        let Some(ids) = line.strip_prefix(b"Uid:") else {
            return true;
        };
        could = ids
            .split(|&b| b == b'\t' || b == b' ')
            .filter(|f| !f.is_empty())
            .any(|f| parse_dec(f).is_none_or(|u| u == 0 || u == u64::from(uid)));
        false
    });
    opened && could
}

/// A decimal number with an optional leading `-` (`/proc/locks` pids).
fn parse_signed(s: &[u8]) -> Option<i64> {
    match s.strip_prefix(b"-") {
        Some(digits) => parse_dec(digits)
            .and_then(|v| i64::try_from(v).ok())
            .map(|v| -v),
        None => parse_dec(s).and_then(|v| i64::try_from(v).ok()),
    }
}
