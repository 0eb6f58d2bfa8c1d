"""Give freed heap memory back to the operating system between clips.

glibc keeps memory freed by large temporary tensors in its heap, so over a long generation the
resident size creeps upwards although nothing is held. `malloc_trim(0)` returns it. Elsewhere
(macOS, Windows, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys


def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Hand heap memory freed by the last clip back to the OS; no-op where glibc is absent."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
