"""How the C heap treats the large temporaries of a generation (glibc only; elsewhere no-ops).

glibc hands big freed blocks back to the operating system at once: blocks over its mmap
threshold (at most 32 MB) are mapped on allocation and unmapped on free, and free memory at the
top of the heap is trimmed once it exceeds the trim threshold. A denoising step frees and
re-allocates tens of megabytes per layer (the GEGLU feed-forward of the 320-wide level alone makes
84 MB and two 42 MB temporaries), so the next layer faults the same pages in again. Measured on
the full-size diffusion net at 128 px on the 2-core CPU: with glibc's defaults 17.2 s per step and
0.9-1.1 million page faults; keeping freed blocks of up to 32 MB in the heap, 15.6-16.6 s and
0.45-0.95 million; with no block mapped on its own at all, 15.2-15.9 s and almost none (the
320-wide feed-forward alone: 183 -> 124 ms), at the same peak resident size.
`keep_freed_memory` does the latter while a generation runs; `release_freed_memory` returns the
free memory between clips and at the end, so the resident size does not creep upwards over a
long generation.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from contextlib import contextmanager

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
MMAP_THRESHOLD_MAX = 32 << 20
"""glibc's largest mmap threshold on 64-bit systems."""
MMAP_MAX_DEFAULT = 65536
"""glibc's default limit on the number of blocks mapped on their own."""
TRIM_THRESHOLD_KEEP = 1 << 30
"""While generating, trim only when a gigabyte lies free at the top of the heap."""


def _libc_function(name: str):
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _libc_function("malloc_trim")
_MALLOPT = _libc_function("mallopt")


def release_freed_memory() -> None:
    """Hand heap memory freed by the last clip back to the OS; no-op where glibc is absent."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@contextmanager
def keep_freed_memory():
    """Allocate every block from the heap and keep freed ones for reuse while the block runs.

    On leaving, glibc maps large blocks on their own again, with the thresholds its own adaptive
    rule reaches after large tensors have been freed (mmap above 32 MB, trim above 64 MB), and the
    heap is trimmed (`malloc_trim` also returns free pages inside the heap, not only at its top)."""
    if _MALLOPT is None or _MALLOC_TRIM is None:
        yield
        return
    _MALLOPT(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
    _MALLOPT(M_MMAP_MAX, 0)
    _MALLOPT(M_TRIM_THRESHOLD, TRIM_THRESHOLD_KEEP)
    try:
        yield
    finally:
        _MALLOPT(M_MMAP_MAX, MMAP_MAX_DEFAULT)
        _MALLOPT(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_MAX)
        _MALLOC_TRIM(0)
