from typing import Any

_USE_POSIX: bool
_SHM_SAFE_NAME_LENGTH: int
_SHM_NAME_PREFIX: str
_O_CREX: int
SHM_RENAME_NOREPLACE: int
SHM_RENAME_EXCHANGE: int

def _make_filename() -> str: ...

from ._shmkit import SharedMemoryBase

class SharedMemory(SharedMemoryBase):
    def rename(self, newname: str, flags: int = 0) -> None: ...
    def __reduce__(self) -> tuple[type[SharedMemory], tuple[str, bool, int]]: ...
