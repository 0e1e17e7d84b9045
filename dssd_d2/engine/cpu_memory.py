"""Faster CPU training: freed memory kept in the process instead of returned to the OS.

glibc's malloc serves large blocks (above a threshold that grows to at most 32 MB) with fresh
``mmap`` calls, unmaps them when they are freed, and trims the heap's free top beyond 128 KB. A
training step allocates and frees its large activations every step, so the kernel maps and
zero-fills them again at every step: on the 2-core AVX2 EPYC of 2026-12-03, a Tiny-DSOD256
training process made 110,000 page faults a second and spent 30% of its CPU time in the kernel.
With every block served from the heap and the heap never trimmed, the same steps took 1.19 s
instead of 1.62 s (docs/experiments/2026-12-03-allocator-and-targets.md). The cost is that the process keeps its peak
memory; ``DSSD_D2_KEEP_FREED_MEMORY=0`` in the environment keeps glibc's defaults.
"""

import ctypes
import logging
import os
import platform

__all__ = ["keep_freed_memory"]

# mallopt(3) parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# glibc's malloc options read from the environment at start (mallopt(3), "ENVIRONMENT")
_MALLOC_ENV = (
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
)
_SWITCH = "DSSD_D2_KEEP_FREED_MEMORY"

logger = logging.getLogger(__name__)


def keep_freed_memory() -> bool:
    """Serve every allocation of this process (and of the DataLoader workers it forks later)
    from glibc's heap and never trim it; not if ``DSSD_D2_KEEP_FREED_MEMORY=0`` (glibc's
    defaults), if the environment sets glibc's malloc options itself, or if the C library is
    not glibc. Returns whether the setting was made."""
    chosen = os.environ.get(_SWITCH) == "0" or any(k in os.environ for k in _MALLOC_ENV)
    chosen = chosen or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")
    if chosen or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    done = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    if done:
        logger.info(
            "glibc malloc keeps freed memory (mallopt M_MMAP_MAX 0, M_TRIM_THRESHOLD 2 GB): "
            f"no page faults on the large blocks of each step; {_SWITCH}=0 in the environment "
            "turns this off"
        )
    return done
