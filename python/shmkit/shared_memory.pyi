from typing import Any

_USE_POSIX: bool
_SHM_SAFE_NAME_LENGTH: int
_SHM_NAME_PREFIX: str
_O_CREX: int
SHM_RENAME_NOREPLACE: int
SHM_RENAME_EXCHANGE: int

def _make_filename() -> str: ...

class SharedMemory:
    _name: str | None
    _mmap: Any
    _buf: memoryview | None
    _flags: int
    _mode: int
    _prepend_leading_slash: bool
    _track: bool
    _size: int
    def __init__(
        self, name: str | None = None, create: bool = False, size: int = 0, *, track: bool = True
    ) -> None: ...
    @property
    def _fd(self) -> int: ...
    @property
    def buf(self) -> memoryview: ...
    @property
    def name(self) -> str: ...
    @property
    def size(self) -> int: ...
    def close(self) -> None: ...
    def unlink(self) -> None: ...
    def rename(self, newname: str, flags: int = 0) -> None: ...
    def __reduce__(self) -> tuple[type[SharedMemory], tuple[str, bool, int]]: ...
