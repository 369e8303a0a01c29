"""shmkit: Python's multiprocessing.shared_memory, re-implemented in Rust.

``from shmkit import shared_memory`` is a drop-in for
``from multiprocessing import shared_memory``.
"""

from importlib.metadata import PackageNotFoundError, version

from . import shared_memory
from .shared_memory import ShareableList, SharedMemory

try:
    __version__ = version("shmkit")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "ShareableList",
    "SharedMemory",
    "SharedMemoryManager",
    "managers",
    "shared_memory",
    "__version__",
]


def __getattr__(name):
    # shmkit.managers imports multiprocessing's machinery: only on first use.
    if name in ("managers", "SharedMemoryManager"):
        import importlib

        managers = importlib.import_module(".managers", __name__)
        return managers if name == "managers" else managers.SharedMemoryManager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
