//! [`Address`]: where a manager listens, in the families CPython's
//! `multiprocessing.connection` uses on Linux; and the listening and
//! connected sockets behind it.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::error::ManagerError;
use super::pickle::PyValue;
use crate::error::Result;

/// A manager's address.
///
/// In Python an `AF_UNIX` address is a `str` path (or, on Linux, `bytes`
/// starting with NUL for the abstract namespace) and an `AF_INET` address a
/// `(host, port)` tuple; [`from_py`](Self::from_py) and
/// [`to_py`](Self::to_py) convert.
///
/// ```
/// use shmkit::manager::Address;
/// let tcp: Address = "127.0.0.1:5000".parse().unwrap();
/// assert!(matches!(tcp, Address::Tcp(_)));
/// let unix: Address = "/tmp/pymp-x/listener-y".parse().unwrap();
/// assert_eq!(unix, Address::Unix("/tmp/pymp-x/listener-y".into()));
/// assert_eq!(unix.to_string(), "/tmp/pymp-x/listener-y");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A Unix domain socket at a path (`AF_UNIX`).
    Unix(PathBuf),
    /// A Linux abstract Unix socket: the name, without its leading NUL.
    Abstract(Vec<u8>),
    /// A TCP socket (`AF_INET` or `AF_INET6`).
    Tcp(SocketAddr),
}

impl Address {
    /// The socket family's name, as `multiprocessing.connection` spells it.
    pub fn family(&self) -> &'static str {
        match self {
            Address::Unix(_) | Address::Abstract(_) => "AF_UNIX",
            Address::Tcp(SocketAddr::V4(_)) => "AF_INET",
            Address::Tcp(SocketAddr::V6(_)) => "AF_INET6",
        }
    }

    /// The address as Python holds it: a `str` path (`bytes` if it is not
    /// UTF-8), `b'\0name'`, or `(host, port)`.
    ///
    /// ```
    /// use shmkit::manager::{pickle::PyValue, Address};
    /// let a: Address = "127.0.0.1:80".parse().unwrap();
    /// assert_eq!(a.to_py().repr(), "('127.0.0.1', 80)");
    /// assert_eq!(Address::from_py(&a.to_py())?, a);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn to_py(&self) -> PyValue {
        use std::os::unix::ffi::OsStrExt;
        match self {
            Address::Unix(path) => match path.to_str() {
                Some(s) => s.into(),
                None => path.as_os_str().as_bytes().into(),
            },
            Address::Abstract(name) => {
                let mut b = vec![0];
                b.extend_from_slice(name);
                PyValue::Bytes(b)
            }
            Address::Tcp(addr) => PyValue::Tuple(vec![
                addr.ip().to_string().into(),
                i64::from(addr.port()).into(),
            ]),
        }
    }

    /// Reads an address as Python holds it; a host name in a tuple is
    /// resolved, and its first address taken.
    pub fn from_py(value: &PyValue) -> Result<Address> {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let bad = || -> crate::Error {
            ManagerError::Protocol(format!("address type of {} unrecognized", value.repr())).into()
        };
        match value {
            PyValue::Str(s) => Ok(Address::Unix(s.into())),
            PyValue::Bytes(b) => match b.split_first() {
                Some((0, name)) => Ok(Address::Abstract(name.to_vec())),
                Some(_) => Ok(Address::Unix(OsStr::from_bytes(b).into())),
                None => Err(bad()),
            },
            PyValue::Tuple(items) => match items.as_slice() {
                [PyValue::Str(host), PyValue::Int(port)] => {
                    let port = u16::try_from(*port).map_err(|_| bad())?;
                    (host.as_str(), port)
                        .to_socket_addrs()
                        .map_err(|e| ManagerError::io("resolve", e))?
                        .next()
                        .map(Address::Tcp)
                        .ok_or_else(bad)
                }
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "{}", path.display()),
            Address::Abstract(name) => write!(f, "\\0{}", name.escape_ascii()),
            Address::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// `host:port` (an IP address, not a name) is TCP; anything else is a Unix
/// socket path.
impl FromStr for Address {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s.parse::<SocketAddr>() {
            Ok(addr) => Address::Tcp(addr),
            Err(_) => Address::Unix(s.into()),
        })
    }
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Self {
        Address::Tcp(addr)
    }
}

impl From<PathBuf> for Address {
    fn from(path: PathBuf) -> Self {
        Address::Unix(path)
    }
}

impl From<&Path> for Address {
    fn from(path: &Path) -> Self {
        Address::Unix(path.into())
    }
}

fn abstract_addr(name: &[u8]) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name)
}

/// A connected socket of either family, readable and writable as one type
/// (the client's connections, and `shmkit serve`'s relays).
#[derive(Debug)]
pub enum Stream {
    /// An `AF_UNIX` stream (a path or an abstract name).
    Unix(UnixStream),
    /// A TCP stream.
    Tcp(TcpStream),
}

impl Stream {
    /// Connects to `address`.
    pub fn connect(address: &Address) -> Result<Stream> {
        let io = |e| ManagerError::io("connect", e);
        Ok(match address {
            Address::Unix(path) => Stream::Unix(UnixStream::connect(path).map_err(io)?),
            Address::Abstract(name) => {
                let addr = abstract_addr(name).map_err(io)?;
                Stream::Unix(UnixStream::connect_addr(&addr).map_err(io)?)
            }
            Address::Tcp(addr) => {
                let s = TcpStream::connect(addr).map_err(io)?;
                // Requests are small and answered one at a time.
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }
        })
    }

    pub(crate) fn set_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
            Stream::Tcp(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
        }
    }

    pub(crate) fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_nonblocking(nonblocking),
            Stream::Tcp(s) => s.set_nonblocking(nonblocking),
        }
    }

    /// A second handle on the same socket, for the other direction.
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    /// Tells the peer nothing more will be written (its reads see end of
    /// file); errors, as on an already closed socket, are ignored.
    pub fn shutdown_write(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
        };
    }
}

impl Stream {
    /// Shuts both directions: the peer's reads see end of file, and a read
    /// blocked on this socket in another thread returns at once. Errors, as
    /// on an already closed socket, are ignored.
    pub fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A listening socket. A Unix socket file it made is removed when it is
/// dropped, and so is the private directory made for a default address.
#[derive(Debug)]
pub(crate) struct Listener {
    socket: ListenerSocket,
    address: Address,
    /// The socket file to remove, and the private directory around it.
    cleanup: Option<(PathBuf, Option<PathBuf>)>,
}

#[derive(Debug)]
enum ListenerSocket {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    /// Binds `address`, or without one a socket `listener-XXXXXXXX` in
    /// `private_dir` (which the caller made, mode `0700`), else in a new
    /// private directory `pymp-XXXXXXXX` under the temporary directory, as
    /// CPython does; that socket gets mode `0600`. The listener does not
    /// block: [`accept`](Self::accept) returns `WouldBlock` when nobody waits.
    pub(crate) fn bind(address: Option<&Address>, private_dir: Option<&Path>) -> Result<Listener> {
        let io = |e| ManagerError::io("bind", e);
        let listener = match address {
            None => {
                let (dir, made) = match private_dir {
                    Some(dir) => (dir.to_path_buf(), false),
                    None => (private_temp_dir().map_err(io)?, true),
                };
                let path = dir.join(format!("listener-{}", random_suffix()));
                let dir = made.then_some(dir);
                let bound = UnixListener::bind(&path).and_then(|l| {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
                    Ok(l)
                });
                match bound {
                    Ok(l) => Listener {
                        socket: ListenerSocket::Unix(l),
                        address: Address::Unix(path.clone()),
                        cleanup: Some((path, dir)),
                    },
                    Err(e) => {
                        let _ = std::fs::remove_file(&path);
                        if let Some(dir) = dir {
                            let _ = std::fs::remove_dir(dir);
                        }
                        return Err(io(e).into());
                    }
                }
            }
            Some(Address::Unix(path)) => Listener {
                socket: ListenerSocket::Unix(UnixListener::bind(path).map_err(io)?),
                address: Address::Unix(path.clone()),
                cleanup: Some((path.clone(), None)),
            },
            Some(Address::Abstract(name)) => {
                let addr = abstract_addr(name).map_err(io)?;
                Listener {
                    socket: ListenerSocket::Unix(UnixListener::bind_addr(&addr).map_err(io)?),
                    address: Address::Abstract(name.clone()),
                    cleanup: None,
                }
            }
            Some(Address::Tcp(addr)) => {
                let l = TcpListener::bind(addr).map_err(io)?;
                let bound = l.local_addr().map_err(io)?;
                Listener {
                    socket: ListenerSocket::Tcp(l),
                    address: Address::Tcp(bound),
                    cleanup: None,
                }
            }
        };
        match &listener.socket {
            ListenerSocket::Unix(l) => l.set_nonblocking(true),
            ListenerSocket::Tcp(l) => l.set_nonblocking(true),
        }
        .map_err(io)?;
        Ok(listener)
    }

    /// The bound address (with the real port for TCP port 0).
    pub(crate) fn address(&self) -> &Address {
        &self.address
    }

    /// Accepts one connection, as a blocking stream.
    pub(crate) fn accept(&self) -> io::Result<Stream> {
        let stream = match &self.socket {
            ListenerSocket::Unix(l) => Stream::Unix(l.accept()?.0),
            ListenerSocket::Tcp(l) => {
                let s = l.accept()?.0;
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }
        };
        stream.set_nonblocking(false)?;
        Ok(stream)
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.socket {
            ListenerSocket::Unix(l) => l.as_fd(),
            ListenerSocket::Tcp(l) => l.as_fd(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some((path, dir)) = self.cleanup.take() {
            let _ = std::fs::remove_file(path);
            if let Some(dir) = dir {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// Eight characters from CPython's `tempfile` alphabet.
fn random_suffix() -> String {
    const ALPHABET: &[u8; 37] = b"abcdefghijklmnopqrstuvwxyz0123456789_";
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    bytes
        .iter()
        .map(|&b| char::from(ALPHABET[usize::from(b) % ALPHABET.len()]))
        .collect()
}

/// A new directory `pymp-XXXXXXXX`, mode `0700`, under the temporary
/// directory (`$TMPDIR` or `/tmp`).
fn private_temp_dir() -> io::Result<PathBuf> {
    let base = std::env::temp_dir();
    loop {
        let dir = base.join(format!("pymp-{}", random_suffix()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn default_address_is_a_private_socket_that_goes_away() {
        let listener = Listener::bind(None, None).unwrap();
        let Address::Unix(path) = listener.address().clone() else {
            panic!("not a unix address");
        };
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("listener-") && name.len() == 17, "{name}");
        let dir = path.parent().unwrap().to_owned();
        assert!(dir
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("pymp-"));
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        drop(listener);
        assert!(!path.exists() && !dir.exists());
    }

    #[test]
    fn a_given_private_dir_holds_the_socket_and_stays() {
        let dir = private_temp_dir().unwrap();
        let listener = Listener::bind(None, Some(&dir)).unwrap();
        let Address::Unix(path) = listener.address().clone() else {
            panic!("not a unix address");
        };
        assert_eq!(path.parent(), Some(dir.as_path()));
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        drop(listener);
        assert!(!path.exists() && dir.exists());
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn tcp_port_zero_reports_the_real_port() {
        let listener = Listener::bind(Some(&"127.0.0.1:0".parse().unwrap()), None).unwrap();
        let Address::Tcp(addr) = listener.address() else {
            panic!()
        };
        assert_ne!(addr.port(), 0);
        assert_eq!(listener.address().family(), "AF_INET");
    }

    #[test]
    fn python_forms_convert_both_ways() {
        let cases = [
            Address::Unix("/tmp/x".into()),
            Address::Abstract(b"shmkit".to_vec()),
            "[::1]:7".parse().unwrap(),
        ];
        for a in cases {
            assert_eq!(Address::from_py(&a.to_py()).unwrap(), a);
        }
        assert!(Address::from_py(&PyValue::Int(3)).is_err());
        assert!(Address::from_py(&PyValue::Tuple(vec!["h".into(), PyValue::Int(70000)])).is_err());
    }
}
