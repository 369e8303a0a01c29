//! One connection: the handshake, one request, and the handler of each
//! function `SharedMemoryServer` exposes.

use super::pool::{request_budget, request_cost};
use super::{Config, Shared};
use crate::error::Error;
use crate::manager::auth;
use crate::manager::connection::Connection;
use crate::manager::error::ManagerError;
use crate::manager::pickle::{self, PyValue};
use crate::sys;

/// A reply, and whether it is the answer to `shutdown`.
struct Outcome {
    reply: PyValue,
    shutdown: bool,
}

pub(super) fn handle(mut conn: Connection, shared: &Shared, config: &Config) {
    if let Err(e) = conn.set_timeout(config.timeout) {
        tracing::warn!(error = %e, "manager could not set a timeout");
    }
    conn.set_max_message_len(config.max_message_len);
    let Some(outcome) = exchange(&mut conn, shared, config) else {
        return;
    };
    if let Err(e) = conn.send(&outcome.reply) {
        tracing::debug!(error = %e, "manager could not send its reply");
    }
    if outcome.shutdown {
        // CPython's `Server.shutdown` replies, and `_handle_request` replies
        // again; clients read one. Only then does the server stop.
        let _ = conn.send(&outcome.reply);
        shared.signal_stop();
    }
}

/// Authenticates, reads the request and runs it. `None` when there is no
/// one left to reply to.
fn exchange(conn: &mut Connection, shared: &Shared, config: &Config) -> Option<Outcome> {
    let traceback = |func: &str, exc: String| Outcome {
        reply: PyValue::Tuple(vec!["#TRACEBACK".into(), traceback(func, &exc).into()]),
        shutdown: false,
    };
    let handshake = auth::deliver_challenge(conn, &config.authkey, config.challenge)
        .and_then(|()| auth::answer_challenge(conn, &config.authkey));
    if let Err(e) = handshake {
        return match e {
            // The peer is gone: nobody to tell.
            Error::Manager(ManagerError::Eof | ManagerError::Io { .. }) => {
                tracing::debug!(error = %e, "manager peer left during the handshake");
                None
            }
            e => {
                tracing::warn!(error = %e, "manager refused a connection");
                Some(traceback("_handle_request", exception_line(&e)))
            }
        };
    }
    let len = match conn.recv_len() {
        Ok(len) => len,
        Err(Error::Manager(ManagerError::Eof)) => return None,
        Err(e) => return Some(traceback("_handle_request", exception_line(&e))),
    };
    // Held until the request is answered and dropped.
    let Some(_memory) = shared.requests.take(request_cost(len), config.timeout) else {
        tracing::warn!(len, "manager had no memory free for a request in time");
        return Some(traceback("_handle_request", "MemoryError".into()));
    };
    let request = conn.recv_payload(len).and_then(|bytes| {
        Ok(pickle::loads_within(&bytes, request_budget(len)).map_err(ManagerError::from)?)
    });
    let request = match request {
        Ok(request) => request,
        Err(e) => return Some(traceback("_handle_request", exception_line(&e))),
    };
    tracing::debug!(request = %request, "manager request");
    let (func, args, kwds) = match parse_request(&request) {
        Ok(parsed) => parsed,
        Err(exc) => return Some(traceback("_handle_request", exc)),
    };
    let shutdown = func == Func::Shutdown;
    match call(shared, func, args, kwds) {
        Ok(result) => Some(Outcome {
            reply: PyValue::Tuple(vec!["#RETURN".into(), result]),
            shutdown,
        }),
        Err(exc) => Some(traceback(func.name(), exc)),
    }
}

/// A traceback in CPython's shape, for `RemoteError` to show.
fn traceback(func: &str, exception: &str) -> String {
    format!(
        "Traceback (most recent call last):\n  File \"shmkit/manager/server.rs\", in {func}\n{exception}\n"
    )
}

/// The last line of the traceback CPython would print for `e`.
fn exception_line(e: &Error) -> String {
    match e {
        Error::Manager(m) => match m {
            ManagerError::Authentication(reason) => {
                format!("multiprocessing.context.AuthenticationError: {reason}")
            }
            ManagerError::Pickle(p) => format!("_pickle.UnpicklingError: {p}"),
            ManagerError::Eof => "EOFError".into(),
            ManagerError::Truncated => "OSError: got end of file during message".into(),
            ManagerError::TooLong { .. } | ManagerError::BadLength(_) => {
                format!("OSError: bad message length ({m})")
            }
            other => format!("OSError: {other}"),
        },
        other => os_error_line(other),
    }
}

/// `FileNotFoundError: [Errno 2] No such file or directory: '/psm_x'` and
/// its kin, for an error about segment `name`.
fn os_error_line(e: &Error) -> String {
    let name = match e {
        Error::NotFound { name }
        | Error::AlreadyExists { name }
        | Error::PermissionDenied { name }
        | Error::InvalidName { name, .. }
        | Error::Io { name, .. } => Some(format!("/{}", name.trim_start_matches('/'))),
        _ => None,
    };
    let Some(errno) = e.errno() else {
        return format!("ValueError: {e}");
    };
    let kind = crate::pyexc::exception_name(errno);
    let text = crate::pyexc::strerror(errno);
    match name {
        Some(name) => format!(
            "{kind}: [Errno {errno}] {text}: {}",
            PyValue::Str(name).repr()
        ),
        None => format!("{kind}: [Errno {errno}] {text}"),
    }
}

// ---------------------------------------------------------------------------
// The functions

/// The functions a `SharedMemoryServer` exposes (its `public` list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Func {
    TrackSegment,
    ReleaseSegment,
    ListSegments,
    Shutdown,
    Dummy,
    DebugInfo,
    NumberOfObjects,
    Create,
    Incref,
    Decref,
    GetMethods,
    AcceptConnection,
}

impl Func {
    const ALL: [Func; 12] = [
        Func::TrackSegment,
        Func::ReleaseSegment,
        Func::ListSegments,
        Func::Shutdown,
        Func::Dummy,
        Func::DebugInfo,
        Func::NumberOfObjects,
        Func::Create,
        Func::Incref,
        Func::Decref,
        Func::GetMethods,
        Func::AcceptConnection,
    ];

    fn name(self) -> &'static str {
        match self {
            Func::TrackSegment => "track_segment",
            Func::ReleaseSegment => "release_segment",
            Func::ListSegments => "list_segments",
            Func::Shutdown => "shutdown",
            Func::Dummy => "dummy",
            Func::DebugInfo => "debug_info",
            Func::NumberOfObjects => "number_of_objects",
            Func::Create => "create",
            Func::Incref => "incref",
            Func::Decref => "decref",
            Func::GetMethods => "get_methods",
            Func::AcceptConnection => "accept_connection",
        }
    }

    /// The class CPython defines it on, for messages.
    fn owner(self) -> &'static str {
        match self {
            Func::TrackSegment
            | Func::ReleaseSegment
            | Func::ListSegments
            | Func::Shutdown
            | Func::Create => "SharedMemoryServer",
            _ => "Server",
        }
    }

    /// Parameter names after `self` and the connection.
    fn params(self) -> &'static [&'static str] {
        match self {
            Func::TrackSegment | Func::ReleaseSegment => &["segment_name"],
            Func::Incref | Func::Decref => &["ident"],
            Func::GetMethods => &["token"],
            Func::AcceptConnection => &["name"],
            Func::Create => &["typeid"],
            _ => &[],
        }
    }
}

pub(super) type Parsed<'a> = (Func, &'a [PyValue], &'a [(PyValue, PyValue)]);

/// `ignore, funcname, args, kwds = request` and the `public` check, with
/// CPython's exceptions.
pub(super) fn parse_request(request: &PyValue) -> std::result::Result<Parsed<'_>, String> {
    let Some(items) = request.as_sequence() else {
        return Err(format!(
            "TypeError: cannot unpack non-iterable {} object",
            request.type_name()
        ));
    };
    let [_, funcname, args, kwds] = items else {
        return Err(if items.len() < 4 {
            format!(
                "ValueError: not enough values to unpack (expected 4, got {})",
                items.len()
            )
        } else {
            "ValueError: too many values to unpack (expected 4)".into()
        });
    };
    let func = Func::ALL
        .into_iter()
        .find(|f| funcname.as_str() == Some(f.name()))
        .ok_or_else(|| format!("AssertionError: {} unrecognized", funcname.repr()))?;
    let Some(args) = args.as_sequence() else {
        return Err(format!(
            "TypeError: {}.{}() argument after * must be an iterable, not {}",
            func.owner(),
            func.name(),
            args.type_name()
        ));
    };
    let PyValue::Dict(kwds) = kwds else {
        return Err(format!(
            "TypeError: {}.{}() argument after ** must be a mapping, not {}",
            func.owner(),
            func.name(),
            kwds.type_name()
        ));
    };
    Ok((func, args, kwds))
}

/// Python's argument binding for `func(c, *args, **kwds)`, with its
/// messages. `Create` takes extra arguments, which it ignores.
fn bind<'a>(
    func: Func,
    args: &'a [PyValue],
    kwds: &'a [(PyValue, PyValue)],
) -> std::result::Result<Vec<&'a PyValue>, String> {
    let params = func.params();
    let qualname = format!("{}.{}()", func.owner(), func.name());
    let variadic = func == Func::Create;
    if args.len() > params.len() && !variadic {
        return Err(format!(
            "TypeError: {qualname} takes {} positional arguments but {} were given",
            params.len() + 2,
            args.len() + 2
        ));
    }
    let mut bound: Vec<Option<&PyValue>> = params.iter().map(|_| None).collect();
    for (slot, arg) in bound.iter_mut().zip(args) {
        *slot = Some(arg);
    }
    for (key, value) in kwds {
        let Some(key) = key.as_str() else {
            return Err("TypeError: keywords must be strings".into());
        };
        match params.iter().position(|p| *p == key) {
            // `typeid` is positional-only.
            Some(i) if !variadic => {
                if bound[i].is_some() {
                    return Err(format!(
                        "TypeError: {qualname} got multiple values for argument '{key}'"
                    ));
                }
                bound[i] = Some(value);
            }
            _ if variadic => {}
            _ => {
                return Err(format!(
                    "TypeError: {qualname} got an unexpected keyword argument '{key}'"
                ))
            }
        }
    }
    let missing: Vec<String> = params
        .iter()
        .zip(&bound)
        .filter(|(_, b)| b.is_none())
        .map(|(p, _)| format!("'{p}'"))
        .collect();
    if !missing.is_empty() {
        let s = if missing.len() == 1 { "" } else { "s" };
        return Err(format!(
            "TypeError: {qualname} missing {} required positional argument{s}: {}",
            missing.len(),
            missing.join(" and ")
        ));
    }
    Ok(bound.into_iter().map(|b| b.expect("checked")).collect())
}

fn segment_name(value: &PyValue) -> std::result::Result<&str, String> {
    let name = value.as_str().ok_or_else(|| {
        format!(
            "TypeError: a segment name must be str, not {}",
            value.type_name()
        )
    })?;
    crate::name::validate(name).map_err(|e| os_error_line(&e))?;
    Ok(name)
}

/// Runs `func`; `Err` is the exception line of a traceback.
pub(super) fn call(
    shared: &Shared,
    func: Func,
    args: &[PyValue],
    kwds: &[(PyValue, PyValue)],
) -> std::result::Result<PyValue, String> {
    let args = bind(func, args, kwds)?;
    match func {
        Func::TrackSegment => {
            // CPython keeps duplicates, and so do we: each is unlinked once.
            let name = segment_name(args[0])?;
            let mut state = shared.state();
            if state.closed {
                return Err(
                    "RuntimeError: the manager is shutting down; the segment is not tracked".into(),
                );
            }
            register(name);
            state.segments.push(name.to_owned());
            Ok(PyValue::None)
        }
        Func::ReleaseSegment => {
            let target = args[0];
            {
                let mut state = shared.state();
                let at = state
                    .segments
                    .iter()
                    .position(|n| target.as_str() == Some(n.as_str()))
                    .ok_or("ValueError: list.remove(x): x not in list")?;
                state.segments.remove(at);
            }
            let name = segment_name(target)?;
            let unlinked = crate::unlink(name);
            if matches!(unlinked, Ok(()) | Err(Error::NotFound { .. })) {
                // Under the lock, so that a concurrent track of the same
                // name is either still listed here or registers after.
                let state = shared.state();
                if !state.segments.iter().any(|n| n == name) {
                    crate::tracker::unregister(name);
                }
            }
            unlinked.map_err(|e| os_error_line(&e))?;
            Ok(PyValue::None)
        }
        Func::ListSegments => Ok(PyValue::List(
            shared
                .state()
                .segments
                .iter()
                .map(|n| n.as_str().into())
                .collect(),
        )),
        Func::Shutdown => {
            shared.close_and_unlink();
            Ok(PyValue::None)
        }
        Func::Dummy => Ok(PyValue::None),
        Func::DebugInfo => Ok(PyValue::Str(String::new())),
        Func::NumberOfObjects => Ok(PyValue::Int(0)),
        // A SharedMemoryManager registers no types, so CPython's lookups
        // fail the same way.
        Func::Create | Func::Incref | Func::Decref => Err(format!("KeyError: {}", args[0].repr())),
        Func::GetMethods | Func::AcceptConnection => Err(format!(
            "NotImplementedError: {}: a SharedMemoryManager has no shared objects",
            func.name()
        )),
    }
}

/// Registers `name`, which the server now tracks, with this process's leak
/// tracker, so that `shmkit::tracker::registered()` (and `shmkit ls`) show
/// this process as its owner, and so that its watcher removes the segment,
/// once unused, should this process die without unlinking it. The first
/// registration starts the watcher: a manager that tracks nothing never
/// starts one. Called with the state locked, so that no stop can unlink
/// (and unregister) the name between the two.
pub(super) fn register(name: &str) {
    if let Ok(bare) = crate::name::validate(name) {
        // The inode ties the registration to this file, not to whatever a
        // later create puts under the name (0, unknown, if it is gone).
        let ino = sys::shm_stat(bare).map_or(0, |st| st.key.2);
        crate::tracker::register(bare, ino, false);
    }
}
