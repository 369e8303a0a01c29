"""Locks, semaphores, events, conditions and barriers that processes share
by name, robust to the death of a holder.

Each is a shared memory segment named like a ``SharedMemory``: ``Lock()``
makes one under a fresh ``psm_`` name, ``Lock(name)`` attaches from any
process (Python or Rust, related or not), ``Lock(name, create=True)``
makes that name. They pickle by name, so they pass through ``Process``
arguments, ``Pool`` and queues under fork, spawn and forkserver.
``unlink()`` removes the name; ``track=`` is ``SharedMemory``'s.

Differences from ``multiprocessing.synchronize`` (see docs/compat.md):

- ``Lock`` and ``RLock`` are owned: ``release()`` from a thread that does
  not hold the lock raises ``RuntimeError`` (as ``threading.RLock`` does),
  where ``multiprocessing.Lock`` lets anyone release.
- A holder that dies (even by SIGKILL) hands the lock to the next taker,
  who gets an ``OwnerDiedWarning``; the lock's ``owner_died`` is True until
  ``mark_repaired()``. ``with`` keeps working.
- Semaphore counts belong to nobody (as in POSIX): a process that dies
  after ``acquire()`` does not give its unit back.
- A ``Barrier`` party that dies breaks the barrier for the others
  (``threading.BrokenBarrierError``) instead of hanging them; ``action``
  runs in the last party to arrive, after the others are released.
"""

from threading import BrokenBarrierError

from ._shmkit import (
    AtomicInt,
    Barrier,
    BoundedSemaphore,
    Condition,
    Event,
    Lock,
    OwnerDiedWarning,
    RLock,
    Semaphore,
)

__all__ = [
    "AtomicInt",
    "Barrier",
    "BoundedSemaphore",
    "BrokenBarrierError",
    "Condition",
    "Event",
    "Lock",
    "OwnerDiedWarning",
    "RLock",
    "Semaphore",
]


def _rebuild(cls, name, track, extra):
    """Attaches to ``name`` when a primitive is unpickled."""
    if cls is Barrier and extra is not None:
        action, timeout = extra
        return cls(None, action, timeout, name=name, track=track)
    return cls(name=name, track=track)
