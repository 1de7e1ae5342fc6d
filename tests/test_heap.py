"""heap.py: with fixed malloc thresholds, memory freed by native code leaves the process (glibc's dynamic
threshold would keep it resident). Each case runs in a fresh interpreter: the thresholds are per process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

# What ONNX Runtime does on every encoder run, in miniature: a large block is freed (glibc then raises its mmap
# threshold past it), many buffers of 512 KiB are allocated and all but the newest freed. With the dynamic
# threshold they came from the heap, and the one still held pins everything below it.
_CHILD = textwrap.dedent(
    """
    import ctypes, json, sys
    from qasr_live.heap import return_freed_memory

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    fixed = return_freed_memory() if sys.argv[1] == "fixed" else None
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    libc.free(libc.malloc(4 << 20))
    before = rss_mb()
    blocks = []
    for _ in range(400):
        p = libc.malloc(512 << 10)
        ctypes.memset(p, 1, 512 << 10)  # touched: resident
        blocks.append(p)
    held = rss_mb() - before
    for p in blocks[:-1]:
        libc.free(p)
    print(json.dumps({"fixed": fixed, "held": held, "kept": rss_mb() - before}))
    """
)


def _run(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
def test_fixed_thresholds_return_freed_buffers_to_the_system():
    dynamic, fixed = _run("dynamic"), _run("fixed")
    assert fixed["fixed"] is True  # this machine runs glibc
    assert dynamic["held"] > 150 and fixed["held"] > 150  # 200 MB were touched in both
    assert dynamic["kept"] > 150  # the dynamic threshold keeps them resident (what the encoder process did)
    assert fixed["kept"] < 5  # fixed: all but the one held 512 KiB buffer went back
