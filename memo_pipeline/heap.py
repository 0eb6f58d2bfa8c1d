"""The C library's heap functions (glibc only; elsewhere they are absent and callers skip them).

`release_freed_memory` hands memory freed by the last clip back to the operating system, so the
resident size does not creep upwards over a long generation; it changes no allocator setting,
so the library may call it in any process. Allocator *settings* are the process owner's choice:
`cpu_tuning.tuned_allocator`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys


def libc_function(name: str, restype=ctypes.c_int, argtypes=None):
    """`name` from the C library with the given signature, or None off Linux / where it is missing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    function.restype = restype
    if argtypes is not None:
        function.argtypes = argtypes
    return function


_MALLOC_TRIM = libc_function("malloc_trim", ctypes.c_int, [ctypes.c_size_t])


def release_freed_memory() -> None:
    """Hand free heap memory back to the OS (`malloc_trim`, which also returns free pages inside
    the heap, not only at its top); no-op where glibc is absent."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
