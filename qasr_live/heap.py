"""Give freed heap memory back to the system: glibc's malloc with fixed mmap and trim thresholds.

glibc raises its mmap threshold each time a large mmap'd block is freed (up to 32 MiB on 64-bit), so after the
first encoder run ONNX Runtime's activation buffers (0.4-3 MB each, allocated and freed on every run) come from
the heap instead, and the freed pages of a fragmented heap stay resident for the life of the process. Fixing the
thresholds turns the dynamic adjustment off: blocks over 128 KiB are mapped and unmapped again, and free space
at the top of the heap is returned once it passes 128 KiB.

Measured on the real-shaped 0.6B (int8 encoder, q4_k decoder; docs/performance.md "Memory budget"): the encoder
process peaked at 324 MB over a daemon's tick pattern and at 269 MB with fixed thresholds, for the same encoder
time within noise (7.11 s against 7.32 s over 40 ticks); the decoder's peak after a 380-row prefill was within
3 MB either way. Other C libraries (musl, macOS) are left as they are.
"""

from __future__ import annotations

import ctypes
import logging
import sys

__all__ = ["THRESHOLD_BYTES", "return_freed_memory"]

_LOGGER = logging.getLogger(__name__)

# glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value, kept instead of growing


def return_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds for this process; True where it took effect (glibc only)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    if not hasattr(libc, "gnu_get_libc_version"):  # musl has a mallopt that does nothing
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success and 0 on a value it refuses: ours are inside its documented range
    done = bool(mallopt(_M_MMAP_THRESHOLD, THRESHOLD_BYTES) == 1 and mallopt(_M_TRIM_THRESHOLD, THRESHOLD_BYTES) == 1)
    if not done:
        _LOGGER.warning("glibc refused the malloc thresholds: freed memory may stay resident")
    return done
