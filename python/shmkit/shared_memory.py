"""Shared memory blocks that processes reach by name: a drop-in for
:mod:`multiprocessing.shared_memory`, implemented in Rust.

Names, sizes, bytes, pickles, exception types and messages are CPython's, so
a process using this module and one using the stdlib can share a segment.
Where the stdlib crashes, leaks or corrupts, this module does not; every such
difference is listed in ``docs/compat.md``.
"""

from __future__ import annotations

import os
import types
from functools import partial

from . import _shmkit

__all__ = ["SharedMemory", "ShareableList"]

_USE_POSIX = True
_SHM_SAFE_NAME_LENGTH = 14
_SHM_NAME_PREFIX = "/psm_"
_O_CREX = os.O_CREAT | os.O_EXCL

#: ``rename()`` flags, with the values CPython gives them.
SHM_RENAME_NOREPLACE = _shmkit.SHM_RENAME_NOREPLACE
SHM_RENAME_EXCHANGE = _shmkit.SHM_RENAME_EXCHANGE

# A random "/psm_xxxxxxxx" name; native, so creating costs no Python frame.
# Tests patch this module global, and SharedMemory looks it up at each create.
_make_filename = _shmkit.make_filename


class SharedMemory(_shmkit.SharedMemoryBase):
    """A block of shared memory, created or attached to by name.

    ``SharedMemory(name=None, create=False, size=0, *, track=True,
    reserve=None)`` behaves
    as the stdlib class: ``create=True`` makes a new block of ``size`` bytes
    (under a fresh ``psm_xxxxxxxx`` name if ``name`` is None), otherwise the
    existing block ``name`` is attached at its full size. ``buf`` is a
    writable memoryview of the block.

    Unlike the stdlib, the memory stays mapped for as long as anything (a
    numpy array built on ``buf``, say) still refers to it, so no view can
    ever point at unmapped memory; and creating a block that ``/dev/shm``
    has no room for raises ``OSError(ENOSPC)`` instead of dying of SIGBUS on
    a later write. ``reserve=True`` (a shmkit extension) does the same for
    an attach, for blocks that another program made sparse (the stdlib
    always does); ``reserve=False`` turns it off for a create too.

    ``__init__``, ``buf``, ``name``, ``size``, ``close()`` and ``unlink()``
    are native (crates/shmkit-py/src/shared_memory.rs); CPython's class
    attributes ``_flags``, ``_mode`` and ``_prepend_leading_slash`` may be
    overridden by subclasses, as there.
    """

    __slots__ = ()

    def __reduce__(self):
        """Pickles as CPython does: by name, so unpickling attaches to the
        same block (``FileNotFoundError`` once it is unlinked)."""
        return (self.__class__, (self.name, False, self.size))

    def __repr__(self):
        """``SharedMemory('psm_…', size=N)``, as CPython's."""
        return f"{self.__class__.__name__}({self.name!r}, size={self.size})"

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


class ShareableList(_shmkit.ShareableListBase):
    """A fixed-length list of int, float, bool, str, bytes and None values
    in a shared memory block, laid out byte for byte as CPython 3.9–3.13
    lays it out, so stdlib and shmkit processes can share one.

    ``ShareableList(sequence)`` creates a list (in a block named ``name`` if
    given); ``ShareableList(name=name)`` attaches to an existing one. The
    block is ``self.shm``; ``track=False`` (a shmkit extension) makes it an
    untracked SharedMemory, which no leak tracker unlinks.

    Beyond the stdlib: ``sl[i:j]`` returns a plain list; equal-length slice
    assignment works; ``del sl[i]`` and ``del sl[i:j]`` set items to None
    (the length never changes); str slots are sized by UTF-8 bytes, so
    multibyte text is never cut; a str or bytes ending in NUL, which readers
    could not tell apart from padding, is refused instead of silently
    shortened; and an index below ``-len(sl)`` raises IndexError. See
    ``docs/compat.md``.

    Items are read and written natively (crates/shmkit-py/src/shareable_list.rs).
    """

    __slots__ = ()

    def __reduce__(self):
        """Pickles as CPython does: by the block's name, so unpickling
        attaches to the same list."""
        return partial(self.__class__, name=self.shm.name), ()

    def __repr__(self):
        """``ShareableList([...], name='psm_…')``, as CPython's."""
        return f"{self.__class__.__name__}({list(self)}, name={self.shm.name!r})"

    __class_getitem__ = classmethod(types.GenericAlias)
