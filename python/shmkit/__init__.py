"""shmkit: Python's multiprocessing.shared_memory, re-implemented in Rust.

``from shmkit import shared_memory`` is a drop-in for
``from multiprocessing import shared_memory``, and
``from shmkit.managers import SharedMemoryManager`` for the stdlib's
manager; ``shmkit.queues`` has queues in shared memory with
``multiprocessing.Queue``'s API. ``shmkit.install()`` makes the stdlib's names resolve to these, in
this process and in the processes it starts, so that unmodified code and
libraries use shmkit; ``shmkit.uninstall()`` undoes it. Every difference
from CPython is listed in ``docs/compat.md``.
"""

from . import shared_memory
from ._install import install, uninstall
from .shared_memory import ShareableList, SharedMemory

__all__ = [
    "ShareableList",
    "SharedMemory",
    "SharedMemoryManager",
    "install",
    "managers",
    "queues",
    "shared_memory",
    "uninstall",
    "__version__",
]


def __getattr__(name):
    # Imported on first use: shmkit.managers imports multiprocessing's
    # machinery, and importlib.metadata alone would double the import time
    # of shmkit, which every child of an install()ed process pays.
    if name == "queues":
        import importlib

        return importlib.import_module(".queues", __name__)
    if name in ("managers", "SharedMemoryManager"):
        import importlib

        managers = importlib.import_module(".managers", __name__)
        return managers if name == "managers" else managers.SharedMemoryManager
    if name == "sync":
        import importlib

        return importlib.import_module(".sync", __name__)
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("shmkit")
        except PackageNotFoundError:  # running from a source tree
            value = "0+unknown"
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
