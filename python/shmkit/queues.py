"""Queues in shared memory: :class:`multiprocessing.Queue`'s API, with no
pipe and no feeder thread.

A queue lives in a shared memory segment, named like a
:class:`~shmkit.shared_memory.SharedMemory`: ``Queue()`` makes one under a
fresh name, ``Queue(name=...)`` attaches to it from any process, related
or not. It pickles by name, so it can be handed to ``Process`` arguments
and ``Pool`` initializers under fork, spawn and forkserver.

Items are pickled with protocol 5 and :mod:`multiprocessing`'s reducers.
Out-of-band buffers (numpy arrays, large ``bytes``, ``bytearray`` and
``memoryview`` items) of 64 KiB or more skip the ring: each is copied once
into a segment of its own, which the receiver maps, unlinks at once, and
views; it is freed when the receiver lets go of it. ``put_bytes`` and
``get_bytes`` move raw byte messages, shared with Rust's
``shmkit::queue::Queue``.

A process killed while putting or getting loses at most the item it was
moving; it never corrupts the queue nor blocks the other processes.
Differences from the stdlib are listed in ``docs/compat.md``.
"""

from __future__ import annotations

import copyreg
import functools
import pickle
from queue import Empty, Full

from . import _shmkit

__all__ = ["Empty", "Full", "JoinableQueue", "Queue", "SimpleQueue"]

_OOB_THRESHOLD = 64 << 10


class _File:
    """A pickler's file: ``write`` appends to a list the caller reads."""

    __slots__ = ("write",)


def _make_pickler(buffer_callback):
    """A protocol-5 pickler with ``ForkingPickler``'s reducers: its bound
    ``dump`` and ``clear_memo``, and the list its output lands in. The
    native put keeps it, and asks for a new one when a reducer is
    registered."""
    from multiprocessing.reduction import ForkingPickler

    table = copyreg.dispatch_table.copy()
    table.update(ForkingPickler._extra_reducers)
    for cls_, reduce in table.items():
        if getattr(reduce, "takes_protocol", False):
            table[cls_] = functools.partial(reduce, protocol=5)
    cls = type("_QueuePickler", (pickle.Pickler,), {"dispatch_table": table})
    chunks = []
    file = _File()
    file.write = chunks.append
    pickler = cls(file, 5, buffer_callback=buffer_callback)
    return pickler.dump, pickler.clear_memo, chunks


def _bytes_from(buf):
    return bytes(buf)


def _bytearray_from(buf):
    return bytearray(buf)


def _memoryview_from(buf):
    return memoryview(buf)


class _OutOfBand:
    """A large bytes-like item, pickled as a ``PickleBuffer`` so that it
    travels out of band."""

    __slots__ = ("obj", "rebuild")

    def __init__(self, obj, rebuild):
        self.obj = obj
        self.rebuild = rebuild

    def __reduce_ex__(self, protocol):
        return self.rebuild, (pickle.PickleBuffer(self.obj),)


_REBUILD = {bytes: _bytes_from, bytearray: _bytearray_from, memoryview: _memoryview_from}


def _wrap(obj):
    rebuild = _REBUILD.get(type(obj))
    if rebuild is not None:
        view = memoryview(obj)
        if view.nbytes >= _OOB_THRESHOLD and view.c_contiguous:
            return _OutOfBand(obj, rebuild)
    return obj


def _attach(cls, name, maxsize):
    return cls(maxsize, name=name, create=False)


class Queue(_shmkit.QueueBase):
    """A process-shared FIFO queue: ``Queue(maxsize=0, *, name=None,
    capacity=None, create=None, track=True)``.

    ``maxsize`` bounds the number of items (0: only the ring does);
    ``capacity`` is the ring's size in bytes (4 MiB by default; items too
    large for half of it go through segments of their own). ``name``
    without ``create=True`` attaches to an existing queue.

    ``put``/``get`` (with ``block`` and ``timeout``), ``put_nowait``,
    ``get_nowait``, ``qsize``, ``empty``, ``full`` and ``close`` are the
    stdlib's; ``put_many(items)`` and ``get_many(max_items, timeout)``
    move batches in one call; ``put_bytes``/``get_bytes`` raw messages.
    """

    __slots__ = ()

    def join_thread(self):
        """Nothing to wait for: there is no feeder thread; every ``put``
        has written its item before it returns. Must follow ``close()``,
        as in the stdlib."""
        assert self.closed, f"Queue {self!r} not closed"

    def cancel_join_thread(self):
        """Nothing to cancel: there is no feeder thread, and no item is
        ever left unwritten when a process exits."""

    def __reduce__(self):
        return (_attach, (self.__class__, self.name, self.maxsize))

    def __repr__(self):
        return f"<{self.__class__.__name__} name={self.name!r} maxsize={self.maxsize}>"

    def __getstate__(self):
        raise TypeError("pickled by name through __reduce__")


class SimpleQueue(Queue):
    """``multiprocessing.SimpleQueue``'s API on a shmkit queue: ``put``,
    ``get``, ``empty``, ``close``; unbounded."""

    __slots__ = ()

    def __new__(cls, *, name=None, capacity=None, create=None, track=True):
        return super().__new__(cls, 0, name=name, capacity=capacity, create=create, track=track)

    def __reduce__(self):
        return (_attach_simple, (self.__class__, self.name))


def _attach_simple(cls, name):
    return cls(name=name, create=False)


class JoinableQueue(Queue):
    """``multiprocessing.JoinableQueue``'s API: a :class:`Queue` whose
    items each count as a task until a ``task_done()``; ``join()`` waits
    for all. The count lives in the queue, shared by every process."""

    __slots__ = ()

    def task_done(self):
        """Mark one item's task done."""
        if not self._task_done():
            raise ValueError("task_done() called too many times")

    def join(self):
        """Block until every item put has been marked done."""
        self._join(None)
