"""Argument checks for MAIF's public entry points: a wrong type or value becomes a typed MAIF error
before anything is done with it, never an ``AttributeError`` three calls deep or a silent coercion.

Each ``require_*`` helper returns the value in the form the caller works with (``bytes`` for any
bytes-like object, ``float`` for any real number, a ``tuple`` for a sequence of ids) or raises:

* :class:`~maif.errors.ArgumentTypeError` (also a ``TypeError``) for a wrong type. A ``bool`` is never
  a number and a ``str`` is never a sequence (``"abc"`` is not ``("a", "b", "c")``);
* :class:`~maif.errors.ArgumentValueError` (also a ``ValueError``) for a refused value: NaN or an
  infinity, a number out of range, an empty id, text with a lone surrogate (not encodable as UTF-8);
* :class:`~maif.errors.LimitExceededError` (also a ``ValueError``) for a size above a named bound in
  :mod:`maif.limits`.

``name`` is the argument as the caller knows it; every message starts with it and names the type it got,
never the value's content (which may be large, or secret).
"""

from __future__ import annotations

import math
import numbers
import operator
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from maif.errors import ArgumentTypeError, ArgumentValueError, LimitExceededError

if TYPE_CHECKING:
    import numpy as np

T = TypeVar("T")

_NOT_SEQUENCES = (str, bytes, bytearray, memoryview)


def type_of(value: object) -> str:
    """The type name of ``value``, for messages."""
    return type(value).__name__


def require_instance(name: str, value: object, kind: type[T], what: str | None = None) -> T:
    """``value`` itself, if it is a ``kind``."""
    if not isinstance(value, kind):
        raise ArgumentTypeError(f"{name} must be {what or 'a ' + kind.__name__}, got {type_of(value)}")
    return value


def require_str(name: str, value: object, max_bytes: int, *, allow_empty: bool = True) -> str:
    """A ``str`` encodable as UTF-8 (no lone surrogates) of at most ``max_bytes`` bytes."""
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be a str, got {type_of(value)}")
    # isascii() is O(1) in CPython, and then the length is the UTF-8 size; a string with more characters
    # than max_bytes is too long without encoding it (every character takes at least one byte).
    if value.isascii() or len(value) > max_bytes:
        size = len(value)
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise ArgumentValueError(f"{name} is not valid Unicode text (a lone surrogate)") from None
    if size > max_bytes:
        raise LimitExceededError(f"{name} length in bytes", size, max_bytes)
    if size == 0 and not allow_empty:
        raise ArgumentValueError(f"{name} must not be empty")
    return value


def optional_str(name: str, value: object, max_bytes: int, *, allow_empty: bool = True) -> str | None:
    """None, or what :func:`require_str` accepts."""
    return None if value is None else require_str(name, value, max_bytes, allow_empty=allow_empty)


def require_int(name: str, value: object, lo: int, hi: int) -> int:
    """An integer (any ``numbers.Integral`` but ``bool``) in ``[lo, hi]``, as an ``int``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be an int, got {type_of(value)}")
    number = operator.index(value)
    if not lo <= number <= hi:
        raise ArgumentValueError(f"{name} must be between {lo} and {hi}, got {number}")
    return number


def require_float(name: str, value: object, lo: float | None = None, hi: float | None = None) -> float:
    """A finite real number (any ``numbers.Real`` but ``bool``) in ``[lo, hi]``, as a ``float``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a real number, got {type_of(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        raise ArgumentValueError(f"{name} is too large for a float") from None
    if not math.isfinite(number):
        raise ArgumentValueError(f"{name} must be a finite number, got {number!r}")
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise ArgumentValueError(f"{name} must be between {lo} and {hi}, got {number!r}")
    return number


def optional_float(
    name: str, value: object, lo: float | None = None, hi: float | None = None
) -> float | None:
    """None, or what :func:`require_float` accepts."""
    return None if value is None else require_float(name, value, lo, hi)


def require_bytes(name: str, value: object, max_bytes: int) -> bytes:
    """``bytes``, or a ``bytearray``/``memoryview`` copied to bytes, of at most ``max_bytes`` bytes."""
    if isinstance(value, bytes):
        size = len(value)
    elif isinstance(value, bytearray | memoryview):
        size = value.nbytes if isinstance(value, memoryview) else len(value)
    else:
        raise ArgumentTypeError(f"{name} must be bytes, bytearray or memoryview, got {type_of(value)}")
    if size > max_bytes:
        raise LimitExceededError(f"{name} size", size, max_bytes)
    return value if isinstance(value, bytes) else bytes(value)


def require_sequence(name: str, value: object, max_items: int | None, what: str) -> Sequence[Any]:
    """A sequence (a list, a tuple...; never a str or bytes) of at most ``max_items`` items."""
    # list and tuple first: the ABC check below costs microseconds, paid per block on the write path
    if not isinstance(value, list | tuple) and (isinstance(value, _NOT_SEQUENCES)
                                                or not isinstance(value, Sequence)):
        raise ArgumentTypeError(f"{name} must be a list or tuple of {what}, got {type_of(value)}")
    if max_items is not None and len(value) > max_items:
        raise LimitExceededError(f"{name} item count", len(value), max_items)
    return value


def require_str_sequence(
    name: str, value: object, max_bytes: int, *, max_items: int | None = None, allow_empty: bool = False
) -> tuple[str, ...]:
    """A list or tuple of strings (each as :func:`require_str` checks it), as a tuple."""
    items = require_sequence(name, value, max_items, "str")
    for index, item in enumerate(items):
        require_str(f"{name}[{index}]", item, max_bytes, allow_empty=allow_empty)
    return tuple(items)


def require_str_mapping(name: str, value: object, max_items: int, max_bytes: int) -> dict[str, str]:
    """A mapping of at most ``max_items`` strings to strings (each at most ``max_bytes``), as a dict."""
    if not isinstance(value, Mapping):
        raise ArgumentTypeError(f"{name} must be a dict of str to str, got {type_of(value)}")
    if len(value) > max_items:
        raise LimitExceededError(f"{name} item count", len(value), max_items)
    for key, item in value.items():
        require_str(f"{name} key", key, max_bytes)
        require_str(f"{name}[{key!r}]", item, max_bytes)
    return dict(value)


def require_path(name: str, value: object) -> Path:
    """A file system path given as a ``str`` or an ``os.PathLike`` of str: not empty, no NUL, encodable
    in the file system's encoding."""
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(text, str):
        raise ArgumentTypeError(f"{name} must be a path (str or os.PathLike), got {type_of(value)}")
    if not text:
        raise ArgumentValueError(f"{name} must not be empty")
    if "\x00" in text:
        raise ArgumentValueError(f"{name} holds a NUL character")
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        raise ArgumentValueError(f"{name} cannot be encoded for the file system (lone surrogate)") from None
    return Path(text)


def require_vector(name: str, value: object, max_dimensions: int) -> np.ndarray:
    """A non-empty, not all-zero, one-dimensional vector of finite real numbers that fit float32 (a
    sequence of numbers or a numeric ndarray), as a float32 array. Strings are never parsed as numbers."""
    import numpy as np  # here: only the engine's search path needs it

    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iuf":
            raise ArgumentTypeError(f"{name} must hold real numbers, got an array of {value.dtype}")
        if value.ndim != 1:
            raise ArgumentValueError(f"{name} must be one-dimensional, got shape {value.shape}")
        if value.shape[0] > max_dimensions:
            raise LimitExceededError(f"{name} dimensions", value.shape[0], max_dimensions)
    else:
        items = require_sequence(name, value, max_dimensions, "real numbers")
        for item in items:
            if isinstance(item, bool) or not isinstance(item, numbers.Real):
                raise ArgumentTypeError(f"{name} must hold real numbers, got an item of type {type_of(item)}")
    try:
        wide = np.asarray(value, dtype=np.float64)
    except (OverflowError, ValueError, TypeError):  # an int beyond the float range; an odd Real
        raise ArgumentValueError(f"{name} holds a number that is not a float") from None
    if wide.size == 0:
        raise ArgumentValueError(f"{name} must not be empty")
    if not np.all(np.isfinite(wide)) or float(np.max(np.abs(wide))) > float(np.finfo(np.float32).max):
        raise ArgumentValueError(f"{name} must hold finite numbers within the float32 range")
    if not np.any(wide):
        raise ArgumentValueError(f"{name} is all zeros: cosine similarity is undefined for it")
    return wide.astype(np.float32)


__all__ = [
    "optional_float",
    "optional_str",
    "require_bytes",
    "require_float",
    "require_instance",
    "require_int",
    "require_path",
    "require_sequence",
    "require_str",
    "require_str_mapping",
    "require_str_sequence",
    "require_vector",
    "type_of",
]
