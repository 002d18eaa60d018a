"""What a 2 MiB block of memory the process never touched costs, against a
copy into memory already touched (docs/scale-out.md, "fresh memory").

    python benchmarks/repro/first_touch.py [blocks]

For each of `blocks` 2 MiB blocks (default 128, the 256 MiB of bench_net.py)
of a new anonymous mapping, 2 MiB aligned and MADV_HUGEPAGE as the pager's
staging blocks are: the time of copying 2 MiB into it (the kernel faults the
pages in and zeroes them first), then of copying the same 2 MiB into one
block already touched.  Prints median, 90th percentile and max per block.

On a VM whose guest hands free memory back to the host (free page reporting:
"Free page reporting enabled" in dmesg, page_reporting.page_reporting_order=
on the kernel command line), a first touch of memory the host took back waits
for the host too: on the machine of docs/scale-out.md 4.6 ms per block in one
run, 0.23 ms in the next.
"""

import ctypes
import mmap
import statistics
import sys
import time

import numpy as np

MiB = 1 << 20
BS = 2 * MiB
MADV_HUGEPAGE = 14


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    m = mmap.mmap(-1, (n + 1) * BS, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    whole = np.frombuffer(m, dtype=np.uint8)
    addr = whole.ctypes.data
    skip = (-addr) % BS                         # 2 MiB aligned blocks
    blocks = whole[skip:skip + n * BS]
    libc.madvise(addr + skip, n * BS, MADV_HUGEPAGE)
    src = np.random.default_rng(0).integers(0, 256, BS, dtype=np.uint8)
    warm = np.empty(BS, np.uint8)
    warm[:] = src
    fresh, reused = [], []
    for i in range(n):
        dst = blocks[i * BS:(i + 1) * BS]
        t = time.perf_counter()
        dst[:] = src
        fresh.append(time.perf_counter() - t)
        t = time.perf_counter()
        warm[:] = src
        reused.append(time.perf_counter() - t)
    for name, v in (('first touch + copy', fresh), ('copy into touched', reused)):
        v = sorted(x * 1e3 for x in v)
        print('%-20s median %.3f ms  p90 %.3f  max %.3f  (per 2 MiB, %d blocks)'
              % (name, statistics.median(v), v[int(len(v) * 0.9)], v[-1], n))
    del whole, blocks, dst
    m.close()


if __name__ == '__main__':
    main()
