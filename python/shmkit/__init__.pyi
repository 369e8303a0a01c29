from . import managers as managers
from . import queues as queues
from . import shared_memory as shared_memory
from . import sync as sync
from .managers import SharedMemoryManager as SharedMemoryManager
from .shared_memory import ShareableList as ShareableList
from .shared_memory import SharedMemory as SharedMemory

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

__version__: str

def install() -> None: ...
def uninstall() -> None: ...
