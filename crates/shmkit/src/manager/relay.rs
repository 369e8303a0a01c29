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
//! The lines are handled by the server's own loop (a [`Source`]), through
//! its [`Stopper`], in the order they were sent.

use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use super::error::ManagerError;
use super::process::serve_child_with;
use super::server::{Source, Stopper};
use crate::error::Result;

/// [`serve_child`](super::serve_child) with the tracking channel `relay`
/// beside the server. Returns when the server stops (a `!`, a `shutdown`
/// request, `SIGTERM`, or the parent's death); names still in the channel
/// then are unlinked.
pub fn serve_child_relay(relay: UnixStream) -> Result<()> {
    relay
        .set_nonblocking(true)
        .map_err(|e| ManagerError::io("set up the tracking channel", e))?;
    let mut channel = Channel {
        sock: relay,
        pending: Vec::new(),
    };
    let served = serve_child_with(&mut [&mut channel]);
    // What is still queued is read, then end of file. The server no longer
    // tracks anything, so those names are unlinked here.
    let _ = channel.sock.shutdown(std::net::Shutdown::Read);
    let _ = channel.sock.set_nonblocking(false);
    let mut rest = Vec::new();
    let _ = channel.sock.read_to_end(&mut rest);
    channel.pending.extend_from_slice(&rest);
    for line in channel.pending.split(|&b| b == b'\n') {
        if let Some(name) = line
            .strip_prefix(b"+")
            .and_then(|n| std::str::from_utf8(n).ok())
        {
            let _ = crate::unlink(name);
        }
    }
    served
}

/// The parent's end of the channel, read without blocking the server.
struct Channel {
    sock: UnixStream,
    /// Bytes read but not yet a whole line.
    pending: Vec<u8>,
}

impl Source for Channel {
    fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    fn ready(&mut self, stopper: &Stopper) -> bool {
        let mut buf = [0u8; 16 << 10];
        loop {
            let n = match self.sock.read(&mut buf) {
                // End of file: the parent is gone (its pidfd says so too).
                Ok(0) => return false,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            };
            self.pending.extend_from_slice(&buf[..n]);
            let mut start = 0;
            while let Some(at) = self.pending[start..].iter().position(|&b| b == b'\n') {
                let line = &self.pending[start..start + at];
                let flow = handle(line, &self.sock, stopper);
                start += at + 1;
                if flow.is_break() {
                    // The parent's shutdown: it sends nothing after it.
                    self.pending.drain(..start);
                    return false;
                }
            }
            self.pending.drain(..start);
        }
    }
}

fn handle(line: &[u8], mut sock: &UnixStream, stopper: &Stopper) -> ControlFlow<()> {
    match line {
        b"" => {
            // The parent waits for this byte; a full buffer cannot happen
            // (it sends one empty line and waits).
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
