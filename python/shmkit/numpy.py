"""numpy arrays in shared memory that travel between processes by name.

``shmkit.numpy.zeros((1000, 1000))`` (and ``empty``, ``ones``, ``full``, the
``*_like`` forms, ``array``, ``asarray``, ``copy``) returns an ordinary
``numpy.ndarray`` whose memory is a shmkit segment. Once this module is
imported, multiprocessing sends such an array, or any view or slice of it,
by name: ``Process`` arguments, ``Pool``, ``ProcessPoolExecutor``,
``Queue``, ``Pipe`` and managers pass only the name, offset, shape, strides
and dtype, and the receiver gets a zero-copy view of the same memory
(read-only if the sent view was). A plain ``pickle.dumps`` still pickles
the values.

Nobody calls ``unlink()``: the segment lives while any process holds a view
of it and is removed when the last one lets go, by garbage collection,
``del``, exit or death (the leak tracker cleans up after a SIGKILL, without
a warning). An array sent and dropped at once still arrives: the sender
keeps it for its receiver for up to ``PIN_SECONDS``, and an exiting sender
waits up to ``EXIT_WAIT_SECONDS`` for its transfers to arrive. Explicit
control stays possible: ``name=`` to choose the name, ``open(name)`` to
attach, ``keep()`` to keep a segment until ``unlink()``.

Requires numpy (``pip install shmkit[numpy]``).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from multiprocessing import util
from multiprocessing.reduction import ForkingPickler
from pickle import DEFAULT_PROTOCOL

import numpy as np

from . import _shmkit

__all__ = [
    "EXIT_WAIT_SECONDS",
    "PIN_SECONDS",
    "array",
    "asarray",
    "copy",
    "empty",
    "empty_like",
    "full",
    "full_like",
    "is_shared",
    "keep",
    "name_of",
    "ones",
    "ones_like",
    "open",
    "unlink",
    "zeros",
    "zeros_like",
]

#: How long a sender keeps an array it sent alive for the receiver, in
#: seconds, if the receiver does not say it arrived. Long enough for a task
#: that waits in a busy pool's queue; what it costs is the memory of a
#: transfer whose receiver died first, held until then.
PIN_SECONDS = 60.0
#: How long an exiting process waits for the arrays it sent to arrive.
EXIT_WAIT_SECONDS = 5.0

_Segment = _shmkit.ArraySegment
_SIMPLE_KINDS = frozenset("biufcSU")

# This process's exporters by (name, readonly), to share one mapping among
# every array received from the same segment.
_attached: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
# Every exporter alive in this process, for fork children and exit.
_live: weakref.WeakSet = weakref.WeakSet()
# Exporters kept alive for transfers on their way: exporter -> deadline.
_pins: dict = {}
_pin_lock = threading.Lock()
_pin_thread: threading.Thread | None = None
_exit_registered_pid = 0


def _simple_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.kind not in _SIMPLE_KINDS or dt.names is not None or dt.subdtype is not None:
        raise TypeError(
            f"shmkit.numpy holds bool, integer, float, complex, bytes and str "
            f"dtypes, not {dt!r}"
        )
    if dt.kind in "fc" and dt.itemsize not in ((2, 4, 8) if dt.kind == "f" else (8, 16)):
        raise TypeError(f"shmkit.numpy holds no {dt!r} (extended precision)")
    return dt


def _shape(shape) -> tuple:
    try:
        return tuple(int(d) for d in shape)
    except TypeError:
        return (int(shape),)


def _bare(name):
    if name is None:
        return None
    return name[1:] if name.startswith("/") else name


def _ensure_exit_hook(_=None) -> None:
    global _exit_registered_pid
    if _exit_registered_pid != os.getpid():
        # multiprocessing runs its finalizers at the exit of the main
        # process and of every process it starts (which skip atexit), in
        # order of priority: this one after its queues' feeder threads have
        # pickled what was put (they are joined at -5).
        util.Finalize(None, _at_exit, exitpriority=-10)
        _exit_registered_pid = os.getpid()


def _register(seg) -> None:
    _live.add(seg)
    _attached[(seg.name, seg.readonly)] = seg
    _ensure_exit_hook()


def _view(seg) -> np.ndarray:
    return np.ndarray(
        tuple(seg.shape),
        np.dtype(seg.dtype),
        buffer=seg,
        order="F" if seg.fortran else "C",
    )


def _new(shape, dtype, order, name, readonly, track, fill=None, src=None):
    dt = _simple_dtype(dtype)
    if order not in ("C", "F"):
        raise ValueError("order must be 'C' or 'F'")
    seg = _Segment.create(_bare(name), dt.str, list(_shape(shape)), order == "F", readonly, track)
    _register(seg)
    a = _view(seg)
    if src is not None:
        np.copyto(a, src, casting="unsafe")
    elif fill is not None:
        a.fill(fill)
    if readonly:
        ro = seg.readonly_twin()
        _register(ro)
        a = _view(ro)
    return a


def _order_of(prototype, order) -> str:
    if order in ("K", "A", None):
        f = prototype.flags
        return "F" if f.f_contiguous and not f.c_contiguous else "C"
    return order


def empty(shape, dtype=float, order="C", *, name=None, readonly=False, track=True):
    """A new array in shared memory (zero-filled, as shared memory always
    is). ``name`` chooses the segment's name; ``readonly`` makes every
    view of it, here and in other processes, read-only; ``track=False``
    leaves it out of the leak tracker (it then survives a SIGKILL)."""
    return _new(shape, dtype, order, name, readonly, track)


def zeros(shape, dtype=float, order="C", *, name=None, readonly=False, track=True):
    """A new array of zeros in shared memory; see :func:`empty`."""
    return _new(shape, dtype, order, name, readonly, track)


def ones(shape, dtype=float, order="C", *, name=None, readonly=False, track=True):
    """A new array of ones in shared memory; see :func:`empty`."""
    return _new(shape, dtype, order, name, readonly, track, fill=1)


def full(shape, fill_value, dtype=None, order="C", *, name=None, readonly=False, track=True):
    """A new array filled with ``fill_value`` in shared memory."""
    if dtype is None:
        dtype = np.array(fill_value).dtype
    return _new(shape, dtype, order, name, readonly, track, fill=fill_value)


def _like(prototype, dtype, order, shape):
    p = np.asarray(prototype)
    return (
        p.shape if shape is None else shape,
        p.dtype if dtype is None else dtype,
        _order_of(p, order),
    )


def empty_like(prototype, dtype=None, order="K", shape=None, *, name=None, readonly=False, track=True):
    """A new shared array with the shape and dtype of ``prototype``."""
    s, d, o = _like(prototype, dtype, order, shape)
    return _new(s, d, o, name, readonly, track)


def zeros_like(prototype, dtype=None, order="K", shape=None, *, name=None, readonly=False, track=True):
    """A new shared array of zeros shaped as ``prototype``."""
    s, d, o = _like(prototype, dtype, order, shape)
    return _new(s, d, o, name, readonly, track)


def ones_like(prototype, dtype=None, order="K", shape=None, *, name=None, readonly=False, track=True):
    """A new shared array of ones shaped as ``prototype``."""
    s, d, o = _like(prototype, dtype, order, shape)
    return _new(s, d, o, name, readonly, track, fill=1)


def full_like(prototype, fill_value, dtype=None, order="K", shape=None, *, name=None, readonly=False, track=True):
    """A new shared array filled with ``fill_value``, shaped as ``prototype``."""
    s, d, o = _like(prototype, dtype, order, shape)
    return _new(s, d, o, name, readonly, track, fill=fill_value)


def array(obj, dtype=None, *, order="K", name=None, readonly=False, track=True):
    """A copy of ``obj`` (anything ``numpy.asarray`` takes) in shared memory."""
    src = np.asarray(obj, dtype=dtype)
    return _new(src.shape, src.dtype, _order_of(src, order), name, readonly, track, src=src)


def copy(a, order="K", *, name=None, readonly=False, track=True):
    """A copy of ``a`` in a new shared array."""
    return array(a, order=order, name=name, readonly=readonly, track=track)


def asarray(obj, dtype=None, order=None, *, readonly=False, track=True):
    """``obj`` itself if it is already a view of shared memory of the given
    dtype (and order), else a copy of it in shared memory."""
    if isinstance(obj, np.ndarray) and _segment_of(obj) is not None:
        ok = dtype is None or np.dtype(dtype) == obj.dtype
        if order == "C":
            ok = ok and obj.flags.c_contiguous
        elif order == "F":
            ok = ok and obj.flags.f_contiguous
        if ok and (not readonly or not obj.flags.writeable):
            return obj
    return array(obj, dtype=dtype, order=order or "K", readonly=readonly, track=track)


def open(name, readonly=False, *, track=True):  # noqa: A001 - numpy's naming
    """Attaches to the shared array ``name`` (as ``name_of`` gives it);
    ``readonly`` gives a read-only view of a writable array."""
    return _view(_attach(_bare(name), None, readonly, track))


def _segment_of(a):
    """The exporter whose memory ``a`` views, or None."""
    b = a.base
    while b is not None:
        t = type(b)
        if t is _Segment:
            return b
        if t is memoryview:
            b = b.obj
        elif isinstance(b, np.ndarray):
            b = b.base
        else:
            return None
    return None


def is_shared(a) -> bool:
    """Whether ``a`` is a view of a shmkit shared array."""
    return isinstance(a, np.ndarray) and _segment_of(a) is not None


def name_of(a) -> str:
    """The name of the segment ``a`` views (for :func:`open` elsewhere)."""
    seg = _segment_of(a) if isinstance(a, np.ndarray) else None
    if seg is None:
        raise ValueError("not a view of a shmkit shared array")
    return seg.name


def keep(a, keep=True) -> None:
    """Keeps the segment of ``a`` after every view of it is gone (until
    :func:`unlink`), or with ``keep=False`` gives it back to automatic
    clean-up."""
    seg = _segment_of(a) if isinstance(a, np.ndarray) else None
    if seg is None:
        raise ValueError("not a view of a shmkit shared array")
    seg.auto = not keep


def unlink(a) -> None:
    """Removes the name of a shared array (an array or a name) now; views
    that exist keep working."""
    if isinstance(a, np.ndarray):
        seg = _segment_of(a)
        if seg is None:
            raise ValueError("not a view of a shmkit shared array")
        seg.unlink()
    else:
        _shmkit.unlink(_bare(a))


def _attach(name, ino, readonly, track=True):
    for key in ((name, readonly), (name, False)):
        seg = _attached.get(key)
        if seg is not None and (ino is None or seg.ino == ino):
            if readonly and not seg.readonly:
                seg = seg.readonly_twin()
                _register(seg)
            return seg
    seg = _Segment.open(name, readonly, track)
    if ino is not None and seg.ino != ino:
        seg.auto = False  # another segment under the same name: not ours
        raise FileNotFoundError(2, "the shared array sent is gone", name)
    _register(seg)
    return seg


# -- travel by name ----------------------------------------------------------


def _reduce(a, protocol=DEFAULT_PROTOCOL):
    seg = _segment_of(a)
    if seg is None:
        return a.__reduce_ex__(protocol)
    offset = a.__array_interface__["data"][0] - seg.address
    dt = a.dtype
    if dt.names is None and dt.subdtype is None and dt.kind in _SIMPLE_KINDS:
        dt = dt.str
    readonly = seg.readonly or not a.flags.writeable
    seg.begin_transfer(PIN_SECONDS)
    _pin(seg)
    return _rebuild, (seg.name, seg.ino, offset, a.shape, a.strides, dt, readonly)


# A copyreg reducer is not told the pickler's protocol; a pickler that
# knows it (shmkit.queues' protocol-5 pickler) passes it, so that arrays
# outside shmkit memory still travel out of band there.
_reduce.takes_protocol = True


def _rebuild(name, ino, offset, shape, strides, dtype, readonly):
    seg = _attach(name, ino, readonly)
    seg.end_transfer()
    # numpy checks that the view lies inside the buffer.
    return np.ndarray(shape, dtype, buffer=seg, offset=offset, strides=strides)


def _pin(seg) -> None:
    global _pin_thread
    with _pin_lock:
        _pins[seg] = time.monotonic() + PIN_SECONDS
        if _pin_thread is None:
            _pin_thread = threading.Thread(target=_unpin_loop, name="shmkit-array-pins", daemon=True)
            _pin_thread.start()


def _unpin_arrived() -> bool:
    """Drops the pins whose transfers arrived or were given up on; returns
    whether any is left."""
    now = time.monotonic()
    with _pin_lock:
        done = [s for s, until in _pins.items() if until <= now or s.in_flight == 0]
        for s in done:
            del _pins[s]
        return bool(_pins)


def _unpin_loop() -> None:
    global _pin_thread
    while True:
        time.sleep(0.005)
        with _pin_lock:
            if not _pins:
                _pin_thread = None
                return
        _unpin_arrived()


def _at_exit() -> None:
    deadline = time.monotonic() + EXIT_WAIT_SECONDS
    while _unpin_arrived() and time.monotonic() < deadline:
        time.sleep(0.005)
    with _pin_lock:
        _pins.clear()
    # Arrays still alive at exit may never be freed: let go of them now.
    for seg in list(_live):
        if seg.auto:
            seg.unlink_if_unused()
            seg.auto = False


def _after_fork_in_child() -> None:
    global _pin_lock, _pin_thread
    # The parent's transfers are the parent's to wait for.
    _pin_lock = threading.Lock()
    _pin_thread = None
    _pins.clear()
    for seg in list(_live):
        seg.after_fork()


class _ForkHook:
    """multiprocessing empties its finalizers in every process it starts;
    this puts the exit hook back for the arrays a fork child inherits."""


_FORK_HOOK = _ForkHook()
util.register_after_fork(_FORK_HOOK, lambda _: _live and _ensure_exit_hook())
os.register_at_fork(after_in_child=_after_fork_in_child)
ForkingPickler.register(np.ndarray, _reduce)
