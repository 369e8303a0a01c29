//! What every live tracker on this machine tracks, read from outside: the
//! tables are memfds named [`TABLE_MEMFD`], held open by each tracked
//! process and by its watcher, so `/proc/PID/fd` leads to them.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;

use crate::sys;

use super::{map_table, Table, TABLE_MEMFD, TABLE_SIZE, VALID};

/// The names one process tree has registered with its tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The process that started tracking (the tree's root; its fork children
    /// share its table). It may have exited while its watcher cleans up.
    pub pid: i32,
    /// Bare segment names (no leading slash), each once.
    pub names: Vec<String>,
}

/// Every tracker table this process may read, deduplicated: the tracked
/// process and its watcher hold the same one. Tables of other users'
/// processes are skipped unless this process may read their `/proc` entries
/// (root may).
///
/// ```
/// let seg = shmkit::SharedMemory::options().track(true).create(4096)?;
/// let mine = std::process::id() as i32;
/// let all = shmkit::tracker::registered();
/// assert!(all
///     .iter()
///     .any(|r| r.pid == mine && r.names.iter().any(|n| n == seg.name())));
/// seg.unlink()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
pub fn registered() -> Vec<Registration> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    let wanted = format!("/memfd:{} (deleted)", TABLE_MEMFD.to_string_lossy());
    for proc_entry in procs.flatten() {
        let pid_name = proc_entry.file_name();
        if !pid_name.as_encoded_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue; // gone, or not ours to read
        };
        for fd_entry in fds.flatten() {
            let path = fd_entry.path();
            if std::fs::read_link(&path).is_ok_and(|l| l.as_os_str() == wanted.as_str()) {
                if let Some(reg) = read_table(&path, &mut seen) {
                    out.push(reg);
                }
            }
        }
    }
    out
}

fn read_table(path: &std::path::Path, seen: &mut HashSet<(u64, u64)>) -> Option<Registration> {
    let fd: OwnedFd = sys::tracking::open_readonly(path).ok()?;
    let st = sys::fstat(&fd).ok()?;
    if !seen.insert((st.st_dev, st.st_ino)) || st.st_size != TABLE_SIZE as i64 {
        return None;
    }
    let mapping = map_table(&fd, false).ok()?;
    let table = Table(&mapping);
    let pid = table.owner().load(Ordering::Relaxed);
    let mut names = Vec::new();
    for i in table.used_slots() {
        if table.state(i).load(Ordering::Acquire) != VALID {
            continue;
        }
        if let Some(name) = copy_name(&table, i) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Some(Registration { pid, names })
}

/// Slot `i`'s name, if it is one.
fn copy_name(table: &Table, i: usize) -> Option<String> {
    let len = table.name_len(i);
    if len == 0 || len > 255 {
        return None;
    }
    let name = table.name(i);
    String::from_utf8(name.to_vec()).ok()
}
