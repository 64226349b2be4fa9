"""Eager PyTorch's heap between the pair engine's blocks (glibc only; a no-op elsewhere).

Each block of the pair engine allocates and frees a few dozen ``n x M`` tensors. Compiled
code (XLA, ``torch.compile``) plans its own buffers; eager torch asks ``malloc`` for each,
and glibc does not reuse freed blocks around the few small tensors that outlive each block:
resident memory grew by about two blocks per block at large batches, past 24 GB at
B = 65,536 (docs/performance.md). :func:`release_freed_memory` trims once it has grown by
:data:`TRIM_GROWTH`.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable
from typing import Any

from triplet_tools.mining.blocks import eager_torch

#: Growth of resident memory that triggers a trim. A trim after every block cost 1.5x the
#: time at B = 16,384 (the next block maps its pages afresh); growth of this much between
#: trims costs nothing measurable.
TRIM_GROWTH = 2**28


def release_freed_memory():
    """On eager PyTorch with glibc: once resident memory has grown by :data:`TRIM_GROWTH`
    since the last trim, returns the heap's free pages to the system (``malloc_trim``)."""
    if not eager_torch():
        return
    heap = _heap()
    if heap.trim is None:
        return
    if heap.resident() - heap.trimmed_at >= TRIM_GROWTH:
        heap.trim(0)
        heap.trimmed_at = heap.resident()


class _Heap:
    """glibc's ``malloc_trim`` (``None`` for another C library) and resident memory."""

    def __init__(self):
        self.trim: Callable[[int], Any] | None
        try:  # Windows cannot load "no library" (TypeError); macOS and musl lack it
            self.trim = ctypes.CDLL(None).malloc_trim
        except (AttributeError, OSError, TypeError):
            self.trim = None
        self.trimmed_at = 0

    @staticmethod
    def resident():
        """Resident bytes of this process (Linux ``/proc/self/statm``; 0 without it, which
        never triggers a trim)."""
        try:
            with open("/proc/self/statm", "rb") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0


@functools.cache
def _heap():
    """The process's :class:`_Heap`, loaded on first use (eager torch only)."""
    return _Heap()
