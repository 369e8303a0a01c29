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
//! its [`Stopper`], in the order they were sent. [`RelayClient`] writes
//! them: this module owns both ends.

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

/// Starts a program's manager process (as `shmkit-manager`, which the
/// Python package spawns) on the tracking channel inherited as descriptor
/// `fd`: `None` if that is not an open socket.
///
/// Call it first thing in `main`, before other threads exist, and only in a
/// program whose parent handed it `fd` for this purpose: it takes that
/// descriptor over.
#[doc(hidden)]
pub fn inherited_relay(fd: i32) -> Option<UnixStream> {
    // A few threads and little memory: one malloc arena is enough.
    crate::sys::single_malloc_arena();
    crate::sys::take_inherited_socket(fd)
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

/// One line of the channel, without its newline.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    Track(&'a str),
    Confirm,
    Shutdown,
    Unknown,
}

fn parse(line: &[u8]) -> Line<'_> {
    match line {
        b"" => Line::Confirm,
        b"!" => Line::Shutdown,
        // The parent sends only names it made, which are UTF-8.
        [b'+', name @ ..] => std::str::from_utf8(name).map_or(Line::Unknown, Line::Track),
        _ => Line::Unknown,
    }
}

fn handle(line: &[u8], mut sock: &UnixStream, stopper: &Stopper) -> ControlFlow<()> {
    match parse(line) {
        Line::Confirm => {
            // The parent waits for this byte; a full buffer cannot happen
            // (it has at most two requests unanswered).
            let _ = sock.write_all(CONFIRMED);
        }
        Line::Shutdown => {
            stopper.stop();
            return ControlFlow::Break(());
        }
        Line::Track(name) => {
            if !stopper.track(name) {
                let _ = crate::unlink(name);
            }
        }
        Line::Unknown => tracing::warn!("unknown line on the manager's tracking channel"),
    }
    ControlFlow::Continue(())
}

/// The manager process's answer to a confirmation request.
const CONFIRMED: &[u8] = b".";

/// The parent's end of the tracking channel. Writes are small and whole
/// (one `write` each on a stream socket with room); only
/// [`await_confirmations`](RelayClient::await_confirmations) waits.
#[derive(Debug)]
pub struct RelayClient {
    sock: UnixStream,
}

impl RelayClient {
    /// The client for the parent's end `sock` of a channel whose other end
    /// a manager process serves with [`serve_child_relay`].
    pub fn new(sock: UnixStream) -> RelayClient {
        RelayClient { sock }
    }

    /// Asks the manager process to track segment `name`. A name holding a
    /// newline cannot be sent (it would end the line): `InvalidInput`, and
    /// the caller asks the server instead.
    pub fn send_track(&self, name: &str) -> std::io::Result<()> {
        if name.contains('\n') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a name holding a newline cannot go on the tracking channel",
            ));
        }
        let mut line = Vec::with_capacity(name.len() + 2);
        line.push(b'+');
        line.extend_from_slice(name.as_bytes());
        line.push(b'\n');
        (&self.sock).write_all(&line)
    }

    /// Asks the manager process to confirm, with one answer, that it has
    /// handled every line sent before this request.
    pub fn request_confirmation(&self) -> std::io::Result<()> {
        (&self.sock).write_all(b"\n")
    }

    /// Reads the answers to `count` requests; returns how many came before
    /// the manager process closed the channel. Anything but an answer is
    /// `InvalidData`.
    pub fn await_confirmations(&self, count: usize) -> std::io::Result<usize> {
        let mut got = 0;
        let mut buf = [0u8; 16];
        while got < count {
            let want = (count - got).min(buf.len());
            let n = match (&self.sock).read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf[..n].iter().any(|&b| b != CONFIRMED[0]) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "not an answer on the manager's tracking channel",
                ));
            }
            got += n;
        }
        Ok(got)
    }

    /// [`request_confirmation`](RelayClient::request_confirmation), then
    /// waits for it: whether every line sent before was handled.
    pub fn sync(&self) -> std::io::Result<bool> {
        self.request_confirmation()?;
        Ok(self.await_confirmations(1)? == 1)
    }

    /// Asks the manager process to unlink every tracked segment and stop.
    /// Nothing may be sent after it.
    pub fn shutdown(&self) -> std::io::Result<()> {
        (&self.sock).write_all(b"!\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    /// The reading side, as the manager process parses it: the lines it
    /// got, answering each confirmation request as `handle` does.
    fn serve(sock: UnixStream) -> Vec<String> {
        let mut answer = sock.try_clone().unwrap();
        let mut seen = Vec::new();
        for line in BufReader::new(sock).split(b'\n') {
            let line = line.unwrap();
            match parse(&line) {
                Line::Track(name) => seen.push(format!("+{name}")),
                Line::Confirm => {
                    answer.write_all(CONFIRMED).unwrap();
                    seen.push(".".into());
                }
                Line::Shutdown => {
                    seen.push("!".into());
                    break;
                }
                Line::Unknown => seen.push("?".into()),
            }
        }
        seen
    }

    #[test]
    fn client_round_trips_with_the_reading_side() {
        let (parent, child) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || serve(child));
        let client = RelayClient::new(parent);
        client.send_track("psm_a").unwrap();
        client.send_track("odd \u{e9}\r\t name").unwrap();
        client.request_confirmation().unwrap();
        client.send_track("psm_b").unwrap();
        client.request_confirmation().unwrap();
        assert_eq!(client.await_confirmations(2).unwrap(), 2);
        assert!(client.sync().unwrap());
        client.shutdown().unwrap();
        assert_eq!(
            server.join().unwrap(),
            [
                "+psm_a",
                "+odd \u{e9}\r\t name",
                ".",
                "+psm_b",
                ".",
                ".",
                "!"
            ]
        );
        // The manager process is gone: no more answers.
        assert_eq!(client.await_confirmations(1).unwrap(), 0);
    }

    #[test]
    fn names_with_a_newline_are_refused() {
        let (parent, child) = UnixStream::pair().unwrap();
        let client = RelayClient::new(parent);
        let e = client.send_track("a\n!").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        drop(client);
        let mut sent = Vec::new();
        (&child).read_to_end(&mut sent).unwrap();
        assert!(sent.is_empty());
    }

    #[test]
    fn a_stray_byte_is_not_an_answer() {
        let (parent, mut child) = UnixStream::pair().unwrap();
        child.write_all(b"x").unwrap();
        let client = RelayClient::new(parent);
        let e = client.await_confirmations(1).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn lines_parse() {
        assert_eq!(parse(b"+n"), Line::Track("n"));
        assert_eq!(parse(b""), Line::Confirm);
        assert_eq!(parse(b"!"), Line::Shutdown);
        assert_eq!(parse(b"+\xff"), Line::Unknown);
        assert_eq!(parse(b"?"), Line::Unknown);
    }
}
