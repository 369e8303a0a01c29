//! [`Connection`]: one socket with `multiprocessing.connection`'s framing,
//! carrying bytes or pickled values.

use std::time::Duration;

use super::address::{Address, Stream};
use super::error::ManagerError;
use super::frame;
use super::pickle::{self, PyValue};
use crate::error::Result;

/// A framed connection to a peer that speaks `multiprocessing.connection`,
/// like CPython's `Connection`: [`send_bytes`](Self::send_bytes) and
/// [`recv_bytes`](Self::recv_bytes) for raw messages, [`send`](Self::send)
/// and [`recv`](Self::recv) for pickled ones.
///
/// Nothing is authenticated here; see [`auth`](super::auth), or use
/// [`Client`](super::Client), which does it all.
///
/// ```
/// use shmkit::manager::{auth, ChallengeKind, Connection, PyValue, Server};
///
/// let server = Server::bind(None, b"key")?.spawn()?;
/// let mut conn = Connection::connect(server.address())?;
/// // A client answers first, then challenges.
/// auth::answer_challenge(&mut conn, b"key")?;
/// auth::deliver_challenge(&mut conn, b"key", ChallengeKind::Modern)?;
/// let no_args = PyValue::Tuple(vec![]);
/// conn.send(&PyValue::Tuple(vec![
///     PyValue::None,
///     "list_segments".into(),
///     no_args,
///     PyValue::Dict(vec![]),
/// ]))?;
/// assert_eq!(conn.recv()?.repr(), "('#RETURN', [])");
/// # Ok::<(), shmkit::Error>(())
/// ```
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    max_len: usize,
}

impl Connection {
    /// Connects to `address`, without authenticating.
    pub fn connect(address: &Address) -> Result<Connection> {
        Ok(Connection::from_stream(Stream::connect(address)?))
    }

    pub(crate) fn from_stream(stream: Stream) -> Connection {
        Connection {
            stream,
            max_len: frame::DEFAULT_MAX_LEN,
        }
    }

    /// Sets how long a send or a receive may wait (forever with `None`, the
    /// default). A receive that waits longer fails with
    /// [`ManagerError::Io`].
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        self.stream
            .set_timeout(timeout)
            .map_err(|e| ManagerError::io("set timeout", e).into())
    }

    /// The longest message [`recv_bytes`](Self::recv_bytes) and
    /// [`recv`](Self::recv) accept.
    pub fn max_message_len(&self) -> usize {
        self.max_len
    }

    /// Sets the longest message [`recv_bytes`](Self::recv_bytes) and
    /// [`recv`](Self::recv) accept ([`frame::DEFAULT_MAX_LEN`] by default).
    pub fn set_max_message_len(&mut self, max_len: usize) {
        self.max_len = max_len;
    }

    /// Sends `payload` as one message.
    pub fn send_bytes(&mut self, payload: &[u8]) -> Result<()> {
        Ok(frame::write(&mut self.stream, payload)?)
    }

    /// Receives one message of at most
    /// [`max_message_len`](Self::max_message_len) bytes.
    pub fn recv_bytes(&mut self) -> Result<Vec<u8>> {
        self.recv_bytes_max(self.max_len)
    }

    /// Receives one message of at most `max_len` bytes; a longer one is
    /// refused ([`ManagerError::TooLong`]) without reading it.
    pub fn recv_bytes_max(&mut self, max_len: usize) -> Result<Vec<u8>> {
        Ok(frame::read(&mut self.stream, max_len)?)
    }

    /// Reads the next message's header: the length of its payload, at most
    /// [`max_message_len`](Self::max_message_len). The payload is read by
    /// [`recv_payload`](Self::recv_payload).
    pub(crate) fn recv_len(&mut self) -> Result<usize> {
        Ok(frame::read_len(&mut self.stream, self.max_len)?)
    }

    /// Reads the `len`-byte payload announced by [`recv_len`](Self::recv_len).
    pub(crate) fn recv_payload(&mut self, len: usize) -> Result<Vec<u8>> {
        Ok(frame::read_payload(&mut self.stream, len)?)
    }

    /// Pickles `value` (protocol 4) and sends it.
    pub fn send(&mut self, value: &PyValue) -> Result<()> {
        self.send_bytes(&pickle::dumps(value))
    }

    /// Receives one message and unpickles it.
    pub fn recv(&mut self) -> Result<PyValue> {
        let bytes = self.recv_bytes()?;
        Ok(pickle::loads(&bytes).map_err(ManagerError::from)?)
    }
}
