from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

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

PIN_SECONDS: float
EXIT_WAIT_SECONDS: float

_Shape = int | tuple[int, ...] | list[int]

def empty(
    shape: _Shape, dtype: DTypeLike = ..., order: str = "C", *, name: str | None = None,
    readonly: bool = False, track: bool = True,
) -> np.ndarray[Any, Any]: ...
def zeros(
    shape: _Shape, dtype: DTypeLike = ..., order: str = "C", *, name: str | None = None,
    readonly: bool = False, track: bool = True,
) -> np.ndarray[Any, Any]: ...
def ones(
    shape: _Shape, dtype: DTypeLike = ..., order: str = "C", *, name: str | None = None,
    readonly: bool = False, track: bool = True,
) -> np.ndarray[Any, Any]: ...
def full(
    shape: _Shape, fill_value: Any, dtype: DTypeLike | None = None, order: str = "C", *,
    name: str | None = None, readonly: bool = False, track: bool = True,
) -> np.ndarray[Any, Any]: ...
def empty_like(
    prototype: ArrayLike, dtype: DTypeLike | None = None, order: str = "K", shape: _Shape | None = None,
    *, name: str | None = None, readonly: bool = False, track: bool = True,
) -> np.ndarray[Any, Any]: ...
def zeros_like(
    prototype: ArrayLike, dtype: DTypeLike | None = None, order: str = "K", shape: _Shape | None = None,
    *, name: str | None = None, readonly: bool = False, track: bool = True,
) -> np.ndarray[Any, Any]: ...
def ones_like(
    prototype: ArrayLike, dtype: DTypeLike | None = None, order: str = "K", shape: _Shape | None = None,
    *, name: str | None = None, readonly: bool = False, track: bool = True,
) -> np.ndarray[Any, Any]: ...
def full_like(
    prototype: ArrayLike, fill_value: Any, dtype: DTypeLike | None = None, order: str = "K",
    shape: _Shape | None = None, *, name: str | None = None, readonly: bool = False,
    track: bool = True,
) -> np.ndarray[Any, Any]: ...
def array(
    obj: ArrayLike, dtype: DTypeLike | None = None, *, order: str = "K", name: str | None = None,
    readonly: bool = False, track: bool = True,
) -> np.ndarray[Any, Any]: ...
def copy(
    a: ArrayLike, order: str = "K", *, name: str | None = None, readonly: bool = False,
    track: bool = True,
) -> np.ndarray[Any, Any]: ...
def asarray(
    obj: ArrayLike, dtype: DTypeLike | None = None, order: str | None = None, *,
    readonly: bool = False, track: bool = True,
) -> np.ndarray[Any, Any]: ...
def open(name: str, readonly: bool = False, *, track: bool = True) -> np.ndarray[Any, Any]: ...
def is_shared(a: object) -> bool: ...
def name_of(a: np.ndarray[Any, Any]) -> str: ...
def keep(a: np.ndarray[Any, Any], keep: bool = True) -> None: ...
def unlink(a: np.ndarray[Any, Any] | str) -> None: ...
