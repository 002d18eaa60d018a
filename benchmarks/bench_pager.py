"""The pager over BigFile_File: cost of a fault, sequential scans, random reads.

Every number is for a warm page cache: the file is read once in setup, so
these measure the pager (fault, pread of a block from the page cache, reclaim)
and not the disk.  numpy.memmap over the same raw file is timed next to it
(wendelin.core's bench_0virtmem does the same).  Cold and memory-capped runs
are in benchmarks/compare.py, which needs fresh processes and drop_caches.
"""
import os

import numpy as np

from .common import MiB, write_raw, warm, set_ram_budget, \
    parse_size, pager_stats

from wendelin_cy.bigfile.file_file import BigFile_File
from wendelin_cy.bigarray import BigArray

KiB = 1024
BLKSIZES = [64 * KiB, 256 * KiB, 2 * MiB]
BUDGETS = ['16M', '64M']
FILE_BYTES = 4 * 64 * MiB           # 4x the largest budget


def _make_file():
    # asv runs setup_cache in a cache directory it removes afterwards
    path = os.path.abspath('pager-data.f8')
    write_raw(path, FILE_BYTES)
    return path


class _Base:
    """params: blksize x budget, declared once for the suite."""
    params = (BLKSIZES, BUDGETS)
    param_names = ['blksize', 'budget']
    timeout = 120

    def setup_cache(self):
        return _make_file()

    def setup(self, path, blksize, budget):
        warm(path)
        self.budget = parse_size(budget)
        set_ram_budget(self.budget)
        self.f = BigFile_File(path, blksize, create=False)
        self.fh = self.f.fileh_open()
        self.path = path

    def teardown(self, path, blksize, budget):
        self.fh.close()
        self.f.close()



class FaultPerBlock(_Base):
    """First touch of every block of 32 MiB of a BigFile_File, in random
    block order (no readahead): the cost of one fault + one block load.
    Divide time_first_touch by 32 MiB / blksize for the cost per block;
    track_us_per_fault does that."""
    TOUCH = 32 * MiB

    def _touch(self, blksize):
        nblk = self.TOUCH // blksize
        vma = self.fh.mmap(0, nblk)
        vma.madvise('random')
        a = np.frombuffer(vma, np.uint8)
        s = 0
        for blk in np.random.default_rng(0).permutation(nblk):
            s += int(a[int(blk) * blksize])
        del a
        self.fh.drop_clean(0, nblk)         # next call faults again
        del vma
        return s

    def time_first_touch(self, path, blksize, budget):
        self._touch(blksize)

    def time_memmap_first_touch(self, path, blksize, budget):
        """The same touches on a fresh numpy.memmap (a minor fault each)."""
        nblk = self.TOUCH // blksize
        m = np.memmap(self.path, np.uint8, 'r', shape=(self.TOUCH,))
        s = 0
        for blk in np.random.default_rng(0).permutation(nblk):
            s += int(m[int(blk) * blksize])
        del m

    def track_us_per_fault(self, path, blksize, budget):
        import time
        nblk = self.TOUCH // blksize
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            self._touch(blksize)
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts)) / nblk * 1e6
    track_us_per_fault.unit = 'us'


class ScanSum(_Base):
    """np.sum over a view of 4x the budget (every scan reloads every block)
    next to numpy.memmap over the same raw bytes."""

    def setup(self, path, blksize, budget):
        _Base.setup(self, path, blksize, budget)
        n = 4 * self.budget // 8
        self.A = BigArray((n,), np.float64, self.fh)
        self.m = np.memmap(path, np.float64, 'r', shape=(n,))   # not touched here

    def teardown(self, path, blksize, budget):
        del self.A, self.m
        _Base.teardown(self, path, blksize, budget)

    def time_sum_bigarray(self, path, blksize, budget):
        np.sum(self.A[:])

    def time_sum_bigarray_fresh_handle(self, path, blksize, budget):
        fh = self.f.fileh_open()
        a = BigArray(self.A.shape, np.float64, fh)
        np.sum(a[:])
        del a
        fh.close()

    def time_sum_memmap(self, path, blksize, budget):
        np.sum(self.m)

    def time_sum_memmap_fresh_mapping(self, path, blksize, budget):
        np.sum(np.memmap(self.path, np.float64, 'r', shape=self.m.shape))

    def peakmem_sum_bigarray(self, path, blksize, budget):
        np.sum(self.A[:])

    def track_resident_over_budget(self, path, blksize, budget):
        np.sum(self.A[:])
        return pager_stats()['peak_resident'] / self.budget
    track_resident_over_budget.unit = 'x budget'


class RandomReads(_Base):
    """1000 random single-element reads through one view (3/4 of the blocks
    are not resident: the file is 4x the budget)."""
    N = 1000

    def setup(self, path, blksize, budget):
        _Base.setup(self, path, blksize, budget)
        n = min(4 * self.budget, FILE_BYTES) // 8
        self.A = BigArray((n,), np.float64, self.fh)
        self.a = self.A[:]
        self.m = np.memmap(path, np.float64, 'r', shape=(n,))
        self.idx = [int(i) for i in np.random.default_rng(1).integers(0, n, self.N)]

    def teardown(self, path, blksize, budget):
        del self.a, self.A, self.m
        _Base.teardown(self, path, blksize, budget)

    def time_random_reads(self, path, blksize, budget):
        a = self.a
        for i in self.idx:
            a[i]

    def time_random_reads_memmap(self, path, blksize, budget):
        m = self.m
        for i in self.idx:
            m[i]
