"""shmkit: Python's multiprocessing.shared_memory, re-implemented in Rust.

``from shmkit import shared_memory`` is a drop-in for
``from multiprocessing import shared_memory``.
"""

from importlib.metadata import PackageNotFoundError, version

from . import managers, shared_memory
from .managers import SharedMemoryManager
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
