//! `shmkit-manager`: the manager process that Python's
//! `shmkit.managers.SharedMemoryManager.start()` spawns. A small native
//! program starts and exits several times faster than a fork of the
//! Python process, which has to copy (and later tear down) the whole
//! interpreter's address space.
//!
//! Not meant to be run by hand: it reads its settings (key included) as a
//! framed pickle on stdin, reports its address on stdout, and takes the
//! tracking channel as descriptor 3 (see `shmkit::manager::serve_child_relay`).

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

/// The descriptor the parent hands the tracking channel on.
const RELAY_FD: i32 = 3;

fn main() -> ExitCode {
    // A few threads, little memory: one malloc arena spares each thread
    // the 128 MiB arena glibc would reserve (and trim) for it at start-up.
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // thread exists.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    // Check that descriptor 3 is a socket before taking ownership of it.
    let is_socket = rustix::fs::fstat(
        // SAFETY: only borrowed for the fstat; an invalid number just fails.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(RELAY_FD) },
    )
    .is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket
    });
    if !is_socket {
        eprintln!(
            "shmkit-manager: descriptor {RELAY_FD} is not the tracking channel; this program \
             is started by shmkit.managers.SharedMemoryManager.start(), not by hand \
             (for a standalone manager, run `shmkit serve`)"
        );
        return ExitCode::from(2);
    }
    // SAFETY: descriptor 3 is open (fstat succeeded), was handed to this
    // program for this purpose, and nothing else in it uses that number.
    let relay = UnixStream::from(unsafe { OwnedFd::from_raw_fd(RELAY_FD) });
    match shmkit::manager::serve_child_relay(relay) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmkit-manager: {e}");
            ExitCode::FAILURE
        }
    }
}
