"""Keep freed large blocks in the process instead of handing them back to the OS (glibc only).

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a
fresh ``mmap`` and returns it with ``munmap`` when freed.  A training step of the
paper's CIFAR-10 network allocates several maps of 128 x 64 x 32 x 32 floats
(33.5 MB) and frees them again, so each step maps 130-200 MB of new pages and
takes 33,000-52,000 page faults (measured), each a kernel trap plus zeroing a page.
:func:`retain_freed_memory` tells glibc to take large blocks from its heap as
well (``M_MMAP_MAX`` = 0) and to keep up to 1 GiB of free space at the heap's
top (``M_TRIM_THRESHOLD``), so the next step reuses the same, already mapped
pages: no page faults after the first step (docs/performance.md).

The setting is process-wide, changes no number that any computation returns,
and costs memory that the process has already used once.  Other C libraries,
or ``RBP_NO_MALLOPT=1``, leave the allocator as it is.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30

_done: bool | None = None


def retain_freed_memory() -> bool:
    """Apply the setting once per process; True when glibc accepted it."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("RBP_NO_MALLOPT", "") in ("1", "true", "yes"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _done = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
