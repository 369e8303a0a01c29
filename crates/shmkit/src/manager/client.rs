//! [`Client`]: calls a manager's functions, one connection per call, as
//! CPython's `dispatch` does.

use std::time::Duration;

use super::address::Address;
use super::auth::{self, AuthKey};
use super::connection::Connection;
use super::error::ManagerError;
use super::pickle::PyValue;
use crate::error::Result;

/// A client of a manager server, CPython's or shmkit's.
///
/// Every call opens a connection, runs both challenges (the client answers
/// first, then challenges the server), sends `(None, func, args, kwds)`,
/// reads the reply and closes, exactly as CPython's `SharedMemoryManager`
/// does for each of its calls.
///
/// ```
/// use shmkit::manager::{Client, Server};
///
/// let server = Server::bind(None, b"key")?.spawn()?;
/// let client = Client::connect(server.address().clone(), b"key")?;
/// client.track_segment("psm_not_really")?;
/// assert_eq!(client.list_segments()?, ["psm_not_really"]);
/// client.release_segment("psm_not_really").unwrap_err(); // no such segment
/// assert!(client.list_segments()?.is_empty());
/// client.shutdown()?;
/// server.join()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    address: Address,
    authkey: AuthKey,
    timeout: Option<Duration>,
}

impl Client {
    /// A client for the manager at `address`; nothing is sent yet.
    pub fn new(address: Address, authkey: &[u8]) -> Client {
        Client {
            address,
            authkey: AuthKey::new(authkey),
            timeout: None,
        }
    }

    /// A client for the manager at `address`, checked with a `dummy` call as
    /// CPython's `BaseManager.connect()` does.
    pub fn connect(address: Address, authkey: &[u8]) -> Result<Client> {
        let client = Client::new(address, authkey);
        client.dummy()?;
        Ok(client)
    }

    /// Sets how long each call may wait for the server (forever with `None`,
    /// the default).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// The server's address.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The shared secret.
    pub fn authkey(&self) -> &[u8] {
        &self.authkey
    }

    /// A new connection to the server, authenticated both ways.
    pub fn open(&self) -> Result<Connection> {
        let mut conn = Connection::connect(&self.address)?;
        conn.set_timeout(self.timeout)?;
        auth::answer_challenge(&mut conn, &self.authkey)?;
        auth::deliver_challenge(&mut conn, &self.authkey, auth::ChallengeKind::Modern)?;
        Ok(conn)
    }

    /// Calls `func(*args)` on the server and returns its result; a
    /// `'#TRACEBACK'` reply is [`ManagerError::Remote`].
    pub fn dispatch(&self, func: &str, args: Vec<PyValue>) -> Result<PyValue> {
        self.dispatch_with(func, args, Vec::new())
    }

    /// Calls `func(*args, **kwds)` on the server.
    ///
    /// ```
    /// use shmkit::manager::{Client, PyValue, Server};
    /// let server = Server::bind(None, b"k")?.spawn()?;
    /// let client = Client::new(server.address().clone(), b"k");
    /// let kwds = vec![("segment_name".into(), "never_made_here".into())];
    /// client.dispatch_with("track_segment", vec![], kwds)?;
    /// assert_eq!(
    ///     client.dispatch("list_segments", vec![])?,
    ///     PyValue::List(vec!["never_made_here".into()])
    /// );
    /// let err = client.dispatch("nope", vec![]).unwrap_err();
    /// assert!(err.to_string().contains("AssertionError: 'nope' unrecognized"));
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn dispatch_with(
        &self,
        func: &str,
        args: Vec<PyValue>,
        kwds: Vec<(PyValue, PyValue)>,
    ) -> Result<PyValue> {
        call(&mut self.open()?, func, args, kwds)
    }

    /// Asks the server to unlink segment `name` when it shuts down.
    pub fn track_segment(&self, name: &str) -> Result<()> {
        self.dispatch("track_segment", vec![name.into()]).map(drop)
    }

    /// Asks the server to forget segment `name` and unlink it now.
    pub fn release_segment(&self, name: &str) -> Result<()> {
        self.dispatch("release_segment", vec![name.into()])
            .map(drop)
    }

    /// The names the server tracks.
    pub fn list_segments(&self) -> Result<Vec<String>> {
        let reply = self.dispatch("list_segments", vec![])?;
        let names = reply.as_sequence().and_then(|items| {
            items
                .iter()
                .map(|n| n.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
        });
        names.ok_or_else(|| {
            ManagerError::Protocol(format!("list_segments returned {}", reply.repr())).into()
        })
    }

    /// Makes the server unlink every segment it tracks and stop.
    pub fn shutdown(&self) -> Result<()> {
        self.dispatch("shutdown", vec![]).map(drop)
    }

    /// Does nothing, remotely: a check that the server is there and the key
    /// right.
    pub fn dummy(&self) -> Result<()> {
        self.dispatch("dummy", vec![]).map(drop)
    }
}

/// Sends `(None, func, args, kwds)` on an authenticated connection and
/// reads the reply.
pub(crate) fn call(
    conn: &mut Connection,
    func: &str,
    args: Vec<PyValue>,
    kwds: Vec<(PyValue, PyValue)>,
) -> Result<PyValue> {
    conn.send(&PyValue::Tuple(vec![
        PyValue::None,
        func.into(),
        PyValue::Tuple(args),
        PyValue::Dict(kwds),
    ]))?;
    let reply = conn.recv()?;
    Ok(unwrap_reply(reply)?)
}

/// `('#RETURN', result)` → `result`; CPython's `convert_to_error` for the
/// rest.
fn unwrap_reply(reply: PyValue) -> std::result::Result<PyValue, ManagerError> {
    let PyValue::Tuple(mut items) = reply else {
        return Err(ManagerError::Protocol(format!(
            "a reply must be a (kind, result) tuple, not {}",
            reply.type_name()
        )));
    };
    if items.len() != 2 {
        return Err(ManagerError::Protocol(format!(
            "a reply must be a (kind, result) tuple, not one of {} items",
            items.len()
        )));
    }
    let payload = items.pop().expect("two items");
    let kind = items.pop().expect("two items");
    match (kind.as_str(), payload) {
        (Some("#RETURN"), result) => Ok(result),
        (Some("#TRACEBACK" | "#UNSERIALIZABLE"), PyValue::Str(traceback)) => {
            Err(ManagerError::Remote { traceback })
        }
        (Some("#TRACEBACK" | "#UNSERIALIZABLE"), other) => Err(ManagerError::Protocol(format!(
            "the server sent a {} for a traceback",
            other.type_name()
        ))),
        _ => Err(ManagerError::Protocol(format!(
            "Unrecognized message type {}",
            kind.repr()
        ))),
    }
}
