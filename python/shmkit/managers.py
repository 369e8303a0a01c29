"""A drop-in for :class:`multiprocessing.managers.SharedMemoryManager` whose
server is native (``shmkit::manager``), speaks CPython's wire protocol, and
never leaks.

``SharedMemoryManager([address[, authkey]])`` behaves as the stdlib class:
``start()`` starts a manager process, ``SharedMemory(size)`` and
``ShareableList(sequence)`` create segments in this process and have the
server track them, and ``shutdown()`` (or leaving a ``with`` block) makes the
server unlink them all. ``connect()`` reaches a running manager instead,
CPython's or shmkit's (a stdlib client can equally reach a shmkit server).

Beyond the stdlib:

* ``shutdown()`` unlinks every segment even when some are already gone;
* the manager process watches this one: if it dies, even by SIGKILL, the
  server unlinks every segment and exits at once; on SIGTERM it unlinks too;
* ``SharedMemory(size, name=...)`` and ``ShareableList(seq, name=...)``
  make named managed segments (gh-101014);
* on a manager this process started, a new segment's name goes to the
  manager process over a private socket pair and is tracked there in the
  background, instead of over a new authenticated connection per call
  (about 25x faster); names the server can no longer take are unlinked.

Every difference is listed in ``docs/compat.md``.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time
from multiprocessing import AuthenticationError, ProcessError, process, util  # noqa: F401

from . import _shmkit, shared_memory

__all__ = ["SharedMemoryManager"]

#: How long ``shutdown()`` waits for the manager process before it sends
#: SIGTERM, then SIGKILL (CPython's ``shutdown_timeout`` default).
_SHUTDOWN_TIMEOUT = 1.0
#: How long ``start()`` waits for the manager process to report its address.
_START_TIMEOUT = 30.0
#: How long the server waits for a silent peer in the middle of a request.
_CONNECTION_TIMEOUT = 60.0


class _State:
    """CPython's ``multiprocessing.managers.State``: shared between a manager
    and its finalizer, which must not hold the manager itself."""

    __slots__ = ("value",)
    INITIAL = 0
    STARTED = 1
    SHUTDOWN = 2

    def __init__(self):
        self.value = _State.INITIAL


class _ManagerProcess:
    """The forked manager process: the part of ``multiprocessing.Process``
    that callers of a manager use (``pid``, ``is_alive``, ``join``,
    ``terminate``, ``kill``, ``exitcode``)."""

    def __init__(self, pid):
        self.pid = pid
        self.exitcode = None
        try:
            self._pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self._pidfd = None

    def __repr__(self):
        state = "alive" if self.exitcode is None else f"exitcode={self.exitcode}"
        return f"<shmkit manager process pid={self.pid} {state}>"

    def _reap(self, block):
        if self.exitcode is not None:
            return True
        try:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere (a SIGCHLD handler, say)
            self.exitcode = -1
        else:
            if pid == 0:
                return False
            self.exitcode = os.waitstatus_to_exitcode(status)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        return True

    def is_alive(self):
        return not self._reap(False)

    def join(self, timeout=None):
        if self._reap(False):
            return
        if self._pidfd is not None:
            select.select([self._pidfd], [], [], timeout)
            self._reap(False)
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._reap(False):
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(0.005)

    def _signal(self, signum):
        if self.exitcode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def terminate(self):
        self._signal(signal.SIGTERM)

    def kill(self):
        self._signal(signal.SIGKILL)


def _read_address(fd, pid):
    """The address the manager process at ``pid`` reports on pipe ``fd``."""
    deadline = time.monotonic() + _START_TIMEOUT
    pending = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise RuntimeError(
                f"the manager process did not report its address within {_START_TIMEOUT:.0f} s"
            )
        chunk = os.read(fd, 4096)
        if not chunk:
            raise EOFError("the manager process exited before reporting its address")
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            address = _shmkit.manager_child_address(line)
            if address is not None:
                return address


#: The manager process's end of the tracking channel (see
#: crates/shmkit/src/manager/relay.rs).
_RELAY_FD = 3
#: After this many names sent on the tracking channel, an empty line asks
#: the manager process to confirm it has taken them over (see _track).
_ACK_EVERY = 128


def _manager_program():
    """The native manager program, or None to fork this process instead.
    ``$SHMKIT_MANAGER_PROGRAM`` overrides the one shipped beside this module
    (``_bin/shmkit-manager``, built by ``make develop``); set it empty to
    always fork."""
    program = os.environ.get("SHMKIT_MANAGER_PROGRAM")
    if program is None:
        program = os.path.join(os.path.dirname(__file__), "_bin", "shmkit-manager")
    if program and os.access(program, os.X_OK):
        return program
    return None


def _spawn_manager(program, settings_fd, report_fd, relay_fd):
    """Starts ``program`` with the settings pipe as stdin, the report pipe as
    stdout and the tracking channel as descriptor 3; every other descriptor
    of ours is close-on-exec (PEP 446). posix_spawn is a vfork and an exec:
    nothing of this process's memory is copied."""
    return os.posix_spawn(
        program,
        [program],
        os.environ,
        file_actions=[
            (os.POSIX_SPAWN_DUP2, settings_fd, 0),
            (os.POSIX_SPAWN_DUP2, report_fd, 1),
            (os.POSIX_SPAWN_DUP2, relay_fd, _RELAY_FD),
        ],
        # Not this process's handlers' dispositions: a SIGINT ignored or
        # blocked here must not leak in (the program ignores it itself).
        setsigdef=(signal.SIGINT, signal.SIGTERM),
        setsigmask=(),
    )


def _serve_in_child(settings_fd, report_fd, relay_fd, initializer, initargs):
    """The forked manager process: never returns."""
    code = 1
    try:
        os.dup2(settings_fd, 0)
        os.dup2(report_fd, 1)
        os.dup2(relay_fd, _RELAY_FD)
        # Keep nothing else of the parent's but stderr: a manager holding a
        # copy of some pipe would delay its reader's EOF.
        os.closerange(_RELAY_FD + 1, os.sysconf("SC_OPEN_MAX"))
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if initializer is not None:
            initializer(*initargs)
        # Runs the server, which also tracks the names the parent sends on
        # the channel.
        _shmkit.manager_serve_child_relay(_RELAY_FD)
        code = 0
    except BaseException:
        try:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:
            pass
    finally:
        os._exit(code)


class SharedMemoryManager:
    """A manager of shared memory segments: ``SharedMemory(size)`` and
    ``ShareableList(sequence)`` make segments that ``shutdown()`` unlinks.

    The server is shmkit's native one, wire-compatible with CPython's: stdlib
    clients may ``connect()`` to it, and this class may ``connect()`` to a
    stdlib server.
    """

    def __init__(self, address=None, authkey=None, serializer="pickle", ctx=None, *,
                 shutdown_timeout=_SHUTDOWN_TIMEOUT):
        """``address`` is where the server listens (``start()``) or is
        reached (``connect()``): a socket path, a ``b'\\0…'`` abstract
        name, or ``(host, port)``; None lets ``start()`` choose a fresh
        ``0600`` socket. ``authkey`` defaults to this process's
        ``multiprocessing`` authkey. Only the ``'pickle'`` serializer
        exists; ``ctx`` is accepted for compatibility and ignored (``start()``
        says how the manager process starts). ``shutdown_timeout`` is how long
        ``shutdown()`` waits for the manager process before terminating it.
        """
        if authkey is None:
            authkey = process.current_process().authkey
        if not isinstance(authkey, bytes):
            raise TypeError(f"Authkey {authkey!r} is type {type(authkey)!s}, not bytes")
        if serializer != "pickle":
            raise ValueError(f"shmkit's manager speaks only the 'pickle' serializer, not {serializer!r}")
        self._address = address
        self._authkey = process.AuthenticationString(authkey)
        self._serializer = serializer
        self._ctx = ctx
        self._shutdown_timeout = shutdown_timeout
        self._state = _State()
        self._process = None
        self._client = None
        self._relay = None
        # Names of the segments made through a manager we started, which
        # its shutdown unlinks (see _finalize_manager).
        self._names = []
        # Names sent on the tracking channel and still registered with our
        # leak tracker, waiting for the manager process to confirm them:
        # those sent since the last confirmation request, and those the
        # request in flight covers (None: no request in flight).
        self._unconfirmed = []
        self._confirming = None

    # -- the server ------------------------------------------------------

    @property
    def address(self):
        """The server's address: the one given, or the one ``start()``
        chose."""
        return self._address

    def _check_startable(self):
        if self._state.value == _State.STARTED:
            raise ProcessError("Already started server")
        if self._state.value == _State.SHUTDOWN:
            raise ProcessError("Manager has shut down")

    def start(self, initializer=None, initargs=()):
        """Starts the manager process, which runs the native server (the GIL
        plays no part in it). It ignores SIGINT, unlinks every segment on
        SIGTERM, and exits, unlinking them, as soon as this process dies.

        The process is the small ``shmkit-manager`` program shipped beside
        this module when there is one and no ``initializer`` is given: it
        starts and stops several times faster than a fork of this
        interpreter. Otherwise it is a fork of this process, which runs
        ``initializer(*initargs)`` first."""
        self._check_startable()
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        # A default socket goes in this process's private directory, made
        # once (mode 0700) and removed at exit, as CPython's default address
        # is: a new directory per manager costs more than the rest of a
        # short-lived manager's start-up.
        private_dir = util.get_temp_dir() if self._address is None else None
        settings = _shmkit.manager_child_settings(
            self._address, bytes(self._authkey), os.getpid(), _CONNECTION_TIMEOUT, private_dir
        )
        settings_r, settings_w = os.pipe()
        report_r, report_w = os.pipe()
        relay_sock, relay_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # The line protocol on it is the core's (RelayClient), both ends.
        relay = _shmkit.RelayClient(relay_sock.detach())
        program = _manager_program() if initializer is None else None
        shares_tracker = program is None and _shmkit.tracker_started()
        try:
            if program is not None:
                if len(settings) <= select.PIPE_BUF:
                    # Written first (a pipe takes this much without a
                    # reader), the program reads them at once instead of
                    # waiting for us.
                    os.write(settings_w, settings)
                    settings = b""
                pid = _spawn_manager(program, settings_r, report_w, relay_child.fileno())
            else:
                pid = os.fork()
                if pid == 0:
                    _serve_in_child(settings_r, report_w, relay_child.fileno(), initializer, initargs)
        except BaseException:
            for fd in (settings_r, settings_w, report_r, report_w):
                os.close(fd)
            relay.close()
            relay_child.close()
            raise
        os.close(settings_r)
        os.close(report_w)
        relay_child.close()
        proc = _ManagerProcess(pid)
        try:
            try:
                if settings:
                    os.write(settings_w, settings)
            except BrokenPipeError:
                pass  # the child is gone: reading its report says why
            finally:
                os.close(settings_w)
            address = _read_address(report_r, pid)
        except BaseException:
            relay.close()
            proc.kill()
            proc.join()
            raise
        finally:
            os.close(report_r)

        self._process = proc
        self._address = address
        self._client = _shmkit.ManagerClient(address, bytes(self._authkey))
        self._relay = relay
        if shares_tracker:
            # A forked manager shares this process's tracker table when this
            # process had a tracker before the fork: forgetting a confirmed
            # name here would forget the manager's registration of it too.
            # Its names stay registered until shutdown, as CPython's manager
            # shares its parent's resource tracker.
            self._unconfirmed = None
        self._state.value = _State.STARTED
        self.shutdown = util.Finalize(
            self,
            type(self)._finalize_manager,
            args=(proc, self._client, relay, self._state, self._shutdown_timeout, self._names),
            exitpriority=0,
        )

    @staticmethod
    def _finalize_manager(proc, client, relay, state, shutdown_timeout, names):
        """Shuts the server down (it unlinks every segment; the manager
        process unlinks those still in the tracking channel), then waits for
        its process, and terminates it if it lingers. Then this process's
        leak tracker forgets ``names``, the segments made through the
        manager, as CPython's manager (which shares its parent's tracker)
        unregisters what it unlinks: a handle attached to one here would
        otherwise have it reported as leaked at exit."""
        if proc.is_alive():
            try:
                # Through the tracking channel, behind the names sent before:
                # the manager process unlinks those still waiting there, then
                # shuts its server down.
                relay.shutdown()
            except OSError:
                try:
                    client.shutdown()
                except Exception:
                    pass
            proc.join(timeout=shutdown_timeout)
            if proc.is_alive():
                proc.terminate()  # the server unlinks on SIGTERM too
                proc.join(timeout=shutdown_timeout)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        relay.close()
        for name in names:
            _shmkit.tracker_unregister(name)
        names.clear()
        state.value = _State.SHUTDOWN

    def connect(self):
        """Connects to a running manager (checked with a ``dummy`` call, as
        CPython does). The manager is not ours to stop: such a manager has
        no ``shutdown``."""
        client = _shmkit.ManagerClient(self._address, bytes(self._authkey))
        client.dummy()
        self._client = client
        self._state.value = _State.STARTED

    def join(self, timeout=None):
        """Waits for the manager process to exit."""
        if self._process is not None:
            self._process.join(timeout)

    def get_server(self):
        """Not available: CPython returns an in-process ``Server`` to run
        with ``serve_forever()``; shmkit's server is native. Raises
        ``NotImplementedError``; run ``shmkit serve`` instead."""
        raise NotImplementedError(
            "shmkit's manager server is native: use start(), or run `shmkit serve`"
        )

    def __enter__(self):
        """Starts the manager if it is not started yet; returns it."""
        if self._state.value == _State.INITIAL:
            self.start()
        if self._state.value != _State.STARTED:
            raise ProcessError(f"Unable to start server (state {self._state.value})")
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        """``shutdown()``: every segment made through the manager is
        unlinked."""
        self.shutdown()

    def __reduce__(self):
        """Refuses to pickle (a manager owns a process); pass its
        ``address`` and ``authkey`` and ``connect()`` instead."""
        raise TypeError("a SharedMemoryManager cannot be pickled; pass its address and authkey")

    # -- requests ----------------------------------------------------------

    def _get_client(self):
        client = self._client
        if client is None:
            # Never started nor connected: CPython's error for address None,
            # or a client for an address given but not yet connected to.
            client = _shmkit.ManagerClient(self._address, bytes(self._authkey))
        return client

    def _track(self, client, segment, shm):
        """Hands ``shm``, just created with ``track=True``, to the manager.

        The create registered it with this process's leak tracker (before
        the segment existed), and it stays registered until the manager has
        taken it over: until then, a SIGKILL of this process leaves it to
        our tracker, after that to the manager, which unlinks everything it
        tracks when we die. So no moment leaks it. The manager process
        confirms names in batches (an empty line, answered with "." once
        every line before it is handled): a round trip per name would cost
        more than the rest of the create, and the answer to one batch's
        request is read only when the next batch is full, by which time it
        has long arrived. A manager reached with ``connect()`` confirms each
        name by answering ``track_segment``."""
        relay = self._relay
        if relay is not None:
            self._names.append(shm.name)
        try:
            if relay is not None:
                # Our own manager process: it tracks the name asynchronously,
                # and unlinks it if the server is gone by then.
                try:
                    relay.send_track(shm.name)
                except ValueError:
                    pass  # a name the channel cannot carry: ask the server
                except OSError:
                    pass  # the manager process is stopping: ask the server
                else:
                    if self._unconfirmed is None:
                        return segment
                    self._unconfirmed.append(shm.name)
                    if len(self._unconfirmed) >= _ACK_EVERY:
                        try:
                            self._confirm(relay)
                        except OSError:
                            pass  # stopping: the names stay registered here
                    return segment
            client.track_segment(shm.name)
        except BaseException:
            shm.unlink()
            raise
        _shmkit.tracker_unregister(shm.name)
        return segment

    def _confirm(self, relay):
        """Reads the answer to the confirmation request in flight, if any,
        and forgets the names it covers; then requests one for the names
        sent since."""
        if self._confirming is not None:
            if relay.await_confirmations(1) != 1:
                raise OSError("the manager process closed its tracking channel")
            for name in self._confirming:
                _shmkit.tracker_unregister(name)
        relay.request_confirmation()
        self._confirming, self._unconfirmed = self._unconfirmed, []

    def _sync(self):
        """Waits until the manager process has tracked every name sent."""
        relay = self._relay
        if relay is None:
            return
        if self._unconfirmed is None:
            try:
                relay.request_confirmation()
                relay.await_confirmations(1)
            except OSError:
                pass
            return
        try:
            answers = 1 if self._confirming is None else 2
            relay.request_confirmation()
            if relay.await_confirmations(answers) < answers:
                return
        except OSError:
            return
        for name in (self._confirming or []) + self._unconfirmed:
            _shmkit.tracker_unregister(name)
        self._confirming, self._unconfirmed = None, []

    def SharedMemory(self, size, name=None):
        """A new ``shmkit.shared_memory.SharedMemory`` of ``size`` bytes (named
        ``name`` if given) that the server unlinks when it shuts down."""
        client = self._get_client()
        # Tracked until the manager has taken it over (see _track).
        shm = shared_memory.SharedMemory(name, create=True, size=size)
        return self._track(client, shm, shm)

    def ShareableList(self, sequence, name=None):
        """A new ``shmkit.shared_memory.ShareableList`` holding ``sequence``
        (in a segment named ``name`` if given) that the server unlinks when
        it shuts down."""
        client = self._get_client()
        # As SharedMemory() above.
        sl = shared_memory.ShareableList(sequence, name=name)
        return self._track(client, sl, sl.shm)

    def list_segments(self):
        """The names of the segments the server tracks (shmkit only)."""
        self._sync()
        return self._get_client().list_segments()
