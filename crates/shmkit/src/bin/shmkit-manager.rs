//! `shmkit-manager`: the manager process that Python's
//! `shmkit.managers.SharedMemoryManager.start()` spawns. A small native
//! program starts and exits several times faster than a fork of the
//! Python process, which has to copy (and later tear down) the whole
//! interpreter's address space.
//!
//! Not meant to be run by hand: it reads its settings (key included) as a
//! framed pickle on stdin (`shmkit::manager::Settings`), reports its
//! address on stdout, and takes the tracking channel as descriptor 3 (see
//! `shmkit::manager::serve_child_relay`).

#![forbid(unsafe_code)]

use std::process::ExitCode;

/// The descriptor the parent hands the tracking channel on.
const RELAY_FD: i32 = 3;

fn main() -> ExitCode {
    let Some(relay) = shmkit::manager::inherited_relay(RELAY_FD) else {
        eprintln!(
            "shmkit-manager: descriptor {RELAY_FD} is not the tracking channel; this program \
             is started by shmkit.managers.SharedMemoryManager.start(), not by hand \
             (for a standalone manager, run `shmkit serve`)"
        );
        return ExitCode::from(2);
    };
    match shmkit::manager::serve_child_relay(relay) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmkit-manager: {e}");
            ExitCode::FAILURE
        }
    }
}
