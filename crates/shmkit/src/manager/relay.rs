//! The tracking channel of a manager process started by Python's
//! `shmkit.managers.SharedMemoryManager`: a Unix stream socket from the
//! parent, beside the server, so that the parent never opens an
//! authenticated connection per segment.
//!
//! The parent writes lines:
//!
//! * `+NAME`: track segment `NAME` (it is unlinked at once if the server
//!   is already stopping, so it cannot leak);
//! * `!`: shut down: unlink every tracked segment and stop the server;
//! * an empty line: answered with `.` once every line before it is handled.
//!
//! The lines are handled in the manager process itself, through the
//! server's [`Stopper`], in the order they were sent.

use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::os::unix::net::UnixStream;

use super::error::ManagerError;
use super::process::serve_child_with;
use super::server::Stopper;
use crate::error::Result;

/// [`serve_child`](super::serve_child) with the tracking channel `relay`
/// beside the server. Returns when the server stops (a `!`, a `shutdown`
/// request, `SIGTERM`, or the parent's death); names still in the channel
/// then are unlinked.
pub fn serve_child_relay(relay: UnixStream) -> Result<()> {
    let reader = relay
        .try_clone()
        .map_err(|e| ManagerError::io("clone the tracking channel", e))?;
    let mut thread = None;
    let served = serve_child_with(|stopper| {
        thread = Some(
            std::thread::Builder::new()
                .name("shmkit-manager-relay".into())
                .spawn(move || run(reader, &stopper))
                .map_err(|e| ManagerError::io("spawn a thread", e))?,
        );
        Ok(())
    });
    // What is still queued is read, then end of file: the thread unlinks
    // the names it finds, since the server no longer tracks any.
    let _ = relay.shutdown(std::net::Shutdown::Read);
    if let Some(thread) = thread {
        let _ = thread.join();
    }
    served
}

fn run(mut sock: UnixStream, stopper: &Stopper) {
    let mut buf = vec![0u8; 16 << 10];
    let mut pending = Vec::new();
    loop {
        let n = match sock.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(at) = pending[start..].iter().position(|&b| b == b'\n') {
            if handle(&pending[start..start + at], &mut sock, stopper).is_break() {
                // The parent's shutdown: it sends nothing after it, so this
                // thread is done, and the main thread need not wake it.
                return;
            }
            start += at + 1;
        }
        pending.drain(..start);
    }
    // A name cut short by the parent's death cannot be known: dropped.
}

fn handle(line: &[u8], sock: &mut UnixStream, stopper: &Stopper) -> ControlFlow<()> {
    match line {
        b"" => {
            let _ = sock.write_all(b".");
        }
        b"!" => {
            stopper.stop();
            return ControlFlow::Break(());
        }
        [b'+', name @ ..] => {
            let Ok(name) = std::str::from_utf8(name) else {
                return ControlFlow::Continue(()); // the parent sends only names it made
            };
            if !stopper.track(name) {
                let _ = crate::unlink(name);
            }
        }
        _ => tracing::warn!("unknown line on the manager's tracking channel"),
    }
    ControlFlow::Continue(())
}
