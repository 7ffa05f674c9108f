"""Process-wide settings for long CPU-bound work, applied before torch starts its thread pool.

``OMP_WAIT_POLICY=PASSIVE``: an idle OpenMP worker sleeps instead of spinning for its next task. On a machine
where another process holds a core, spinning workers steal time slices from the one doing the work and every
small parallel region (the column sweep of error-compensating rounding, elementwise ops of the searches) waits for
a descheduled thread: measured 9x slower per op beside one CPU hog (``scripts/bench_vs_autoawq.py --hog``); on an
idle machine the quantize time is unchanged. Set only when the user has not chosen a policy, and only takes effect
when tts_awq is imported before torch (the ``tts-awq`` command always is).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

#: glibc's mallopt parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap, so a buffer freed by one trial is reused by the next instead of
#: being unmapped and faulted in again (glibc's largest allowed mmap threshold on 64-bit).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the top of the heap is kept up to this size instead of being returned to the system.
TRIM_THRESHOLD = 512 << 20


def prefer_passive_openmp() -> None:
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def keep_freed_blocks() -> bool:
    """Tell glibc's allocator to serve blocks up to 32 MB from the heap and keep freed memory for reuse (the
    quantize pass allocates and frees the same few tensor sizes thousands of times). No-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        log.debug("mallopt refused the allocator settings; continuing with the defaults")
    return ok
