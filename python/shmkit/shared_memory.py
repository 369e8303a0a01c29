"""Shared memory blocks that processes reach by name: a drop-in for
:mod:`multiprocessing.shared_memory`, implemented in Rust.

Names, sizes, bytes, pickles, exception types and messages are CPython's, so
a process using this module and one using the stdlib can share a segment.
Where the stdlib crashes, leaks or corrupts, this module does not; every such
difference is listed in ``docs/compat.md``.
"""

from __future__ import annotations

import operator
import os

from . import _shmkit

__all__ = ["SharedMemory"]

_USE_POSIX = True
_SHM_SAFE_NAME_LENGTH = 14
_SHM_NAME_PREFIX = "/psm_"
_O_CREX = os.O_CREAT | os.O_EXCL

#: ``rename()`` flags, with the values CPython gives them.
SHM_RENAME_NOREPLACE = _shmkit.SHM_RENAME_NOREPLACE
SHM_RENAME_EXCHANGE = _shmkit.SHM_RENAME_EXCHANGE


_init = _shmkit.init_shared_memory


def _make_filename():
    """A random ``/psm_`` name (tests patch this module global)."""
    return _shmkit.make_filename()


class SharedMemory:
    """A block of shared memory, created or attached to by name.

    ``SharedMemory(name=None, create=False, size=0, *, track=True)`` behaves
    as the stdlib class: ``create=True`` makes a new block of ``size`` bytes
    (under a fresh ``psm_xxxxxxxx`` name if ``name`` is None), otherwise the
    existing block ``name`` is attached at its full size. ``buf`` is a
    writable memoryview of the block.

    Unlike the stdlib, the memory stays mapped for as long as anything (a
    numpy array built on ``buf``, say) still refers to it, so no view can
    ever point at unmapped memory; and creating a block that ``/dev/shm``
    has no room for raises ``OSError(ENOSPC)`` instead of dying of SIGBUS on
    a later write.
    """

    # Class-level defaults, as CPython has them: tests and subclasses rely on
    # overriding ``_flags`` and on reading these before __init__ finishes.
    _name = None
    _mmap = None
    _buf = None
    _flags = os.O_RDWR
    _mode = 0o600
    _prepend_leading_slash = True
    _track = True

    def __init__(self, name=None, create=False, size=0, *, track=True):
        # CPython's checks (in its order, with its messages) and the open are
        # one native call: crates/shmkit-py/src/lib.rs, init_shared_memory.
        self._name, self._mmap, self._size = _init(
            name, create, size, self._flags, self._mode, self._prepend_leading_slash
        )
        if create:
            self._flags = _O_CREX | os.O_RDWR
        self._track = track

    @property
    def _fd(self):
        """The open descriptor, or -1 after close()."""
        seg = self._mmap
        return -1 if seg is None else seg.fd

    def __reduce__(self):
        return (self.__class__, (self.name, False, self.size))

    def __repr__(self):
        return f"{self.__class__.__name__}({self.name!r}, size={self.size})"

    @property
    def buf(self):
        """A memoryview of the contents of the block (made on first use)."""
        buf = self._buf
        if buf is None and self._mmap is not None:
            buf = self._buf = memoryview(self._mmap)
        return buf

    @property
    def name(self):
        """The unique name of the block, without a leading slash."""
        reported_name = self._name
        if self._prepend_leading_slash and reported_name.startswith("/"):
            reported_name = reported_name[1:]
        return reported_name

    @property
    def size(self):
        """The size of the block in bytes."""
        return self._size

    def close(self):
        """Closes this process's access to the block.

        Raises BufferError, as the stdlib does, while slices or other views
        of ``buf`` are alive. Arrays that merely keep the block as their base
        (numpy's ``ndarray(buffer=shm.buf)``) stay valid after close.
        """
        buf = self._buf
        if buf is not None:
            buf.release()  # BufferError while something exports it
            self._buf = None
        seg = self._mmap
        if seg is not None:
            seg.close()  # BufferError while views of it live
            self._mmap = None

    def unlink(self):
        """Requests that the block be destroyed once every process has closed
        it. Call it once, from one process."""
        if self._name:
            _shmkit.unlink(self._name)

    def rename(self, newname, flags=0):
        """Gives the block another name, atomically.

        ``flags`` may be ``SHM_RENAME_NOREPLACE`` (fail if ``newname`` is
        taken) or ``SHM_RENAME_EXCHANGE`` (swap the two names). CPython has
        this only on FreeBSD; shmkit has it on Linux.
        """
        if self._prepend_leading_slash:
            newname = "/" + newname
        _shmkit.rename(self._name, newname, flags)
        self._name = newname
