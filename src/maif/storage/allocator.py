"""Keep freed large buffers from holding the process's memory above the store's budget (docs/adr/0083).

The store bounds what it holds (``max_memory_mb``: hot cache, unapplied writes), but glibc's malloc keeps
memory that Python has freed. Two of its defaults bite a server that moves megabyte buffers (4 MiB parts
of a streamed upload, WAL records, spool reads) across threads: the mmap threshold grows dynamically up to
32 MiB after the first large buffer is freed, after which 4 MiB buffers come from the heap and stay mapped
there once freed; and every thread that allocates may get its own arena (up to 8 per core), each keeping
its own freed memory. Measured on a 1 GiB streamed upload and download through ``maif serve`` with
``max_memory_mb = 64`` (tests/service/test_streaming.py): peak RSS grew by 100-132 MiB with the defaults
and by 58-66 MiB with a fixed 1 MiB threshold, so the process stays near its configured budget.

:func:`bound_allocator_retention` fixes the threshold (buffers of 1 MiB and more are mapped on their own
and returned to the system when freed; setting it also turns the dynamic growth off). It is called by the
processes MAIF runs (``maif serve``, ``maif worker``); an application embedding the store may call it
too. It changes nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

_M_MMAP_THRESHOLD = -3
"""mallopt's parameter number for the mmap threshold (glibc malloc.h)."""

MMAP_THRESHOLD_BYTES = 1024 * 1024
"""Buffers at least this large are mapped on their own and unmapped when freed."""

_log = logging.getLogger(__name__)


def bound_allocator_retention(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Set glibc's mmap threshold to ``threshold_bytes``; True when it took effect, False elsewhere."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, threshold_bytes) != 1:  # glibc returns 1 on success
        _log.warning("mallopt(M_MMAP_THRESHOLD, %d) refused; freed buffers may stay mapped", threshold_bytes)
        return False
    return True


__all__ = ["MMAP_THRESHOLD_BYTES", "bound_allocator_retention"]
