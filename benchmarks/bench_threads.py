"""dask's threaded scheduler over a ZBigArray 4x the RAM budget, cold, against
numpy.memmap of the same bytes with the same dask graph (issue 15):
``da.from_array(A, chunks=(CH, 16)).sum().compute(num_workers=w)``.

asv: ``DaskSum`` (params: storage, workers).  Side by side, one run, medians
and same-run ratios::

    python -m benchmarks.bench_threads [--size 256M] [--budget 64M] [--repeat 5]

"Cold": the page cache of the files is dropped before each run
(``drop_caches`` as root, else ``posix_fadvise(DONTNEED)`` on each file), and
the pager's clean pages (``drop_clean``).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

from .common import MiB, mkdtemp, rmtree, set_ram_budget, parse_size

SIZE = 256 * MiB
BUDGET = 64 * MiB
CH = 16384                  # rows of 16 float64: 2 MiB chunks (one block)


def _drop_cache(paths):
    try:
        os.sync()
        with open('/proc/sys/vm/drop_caches', 'w') as f:
            f.write('3\n')
        return
    except OSError:
        pass
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _files(d):
    out = []
    for root, _, names in os.walk(d):
        out.extend(os.path.join(root, n) for n in names)
    return out


class _Setup:
    def __init__(self, kind, size, d):
        import transaction
        from wendelin_cy.bigarray.array_zodb import ZBigArray
        from wendelin_cy.lib.zodb import dbopen
        self.kind, self.d = kind, d
        n = size // (16 * 8)
        if kind == 'memmap':
            path = os.path.join(d, 'raw.bin')
            m = np.memmap(path, np.float64, 'w+', shape=(n, 16))
            for i in range(0, n, CH):
                m[i:i + CH] = i
            m.flush()
            del m
            self.A = np.memmap(path, np.float64, 'r', shape=(n, 16))
            self.root = None
        else:
            self.root = dbopen(os.path.join(d, 'data.fs'))
            self.root['X'] = A = ZBigArray((n, 16), np.float64)
            transaction.commit()
            v = A[:]
            for i in range(0, n, CH):
                v[i:i + CH] = i
                if i % (64 * CH) == 0:
                    transaction.commit()
            del v
            transaction.commit()
            self.A = A

    def cold(self):
        if self.root is not None:
            self.A._fileh.drop_clean()
        _drop_cache(_files(self.d))

    def run(self, workers):
        import dask.array as da
        return da.from_array(self.A, chunks=(CH, 16)).sum().compute(
            scheduler='threads', num_workers=workers)

    def close(self):
        if self.root is not None:
            from wendelin_cy.lib.zodb import dbclose
            dbclose(self.root)
        self.A = None


class DaskSum:
    """sum() of a cold (n, 16) float64 array 4x the budget, dask threads."""
    params = [['wendelin_cy', 'memmap'], [1, 2, 4]]
    param_names = ['storage', 'workers']
    timeout = 300
    number = 1
    repeat = 3

    def setup_cache(self):
        return None

    def setup(self, kind, workers):
        set_ram_budget(BUDGET)
        self.d = mkdtemp('threads')
        self.s = _Setup(kind, SIZE, self.d)
        self.s.cold()

    def teardown(self, kind, workers):
        self.s.close()
        rmtree(self.d)

    def time_sum(self, kind, workers):
        self.s.run(workers)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--size', default='256M')
    ap.add_argument('--budget', default='64M')
    ap.add_argument('--repeat', type=int, default=5)
    ap.add_argument('--workers', default='1,2,4')
    a = ap.parse_args(argv)
    size, budget = parse_size(a.size), parse_size(a.budget)
    set_ram_budget(budget)
    workers = [int(w) for w in a.workers.split(',')]
    res = {}
    setups = {}
    dirs = []
    try:
        for kind in ('wendelin_cy', 'memmap'):
            d = mkdtemp('threads')
            dirs.append(d)
            setups[kind] = _Setup(kind, size, d)
        expect = None
        for _ in range(a.repeat):          # alternated: same conditions for both
            for w in workers:
                for kind, s in setups.items():
                    s.cold()
                    t0 = time.perf_counter()
                    r = s.run(w)
                    res.setdefault((kind, w), []).append(time.perf_counter() - t0)
                    if expect is None:
                        expect = r
                    assert r == expect, (kind, w, r, expect)
    finally:
        for s in setups.values():
            s.close()
        for d in dirs:
            rmtree(d)
    print('size %s, budget %s, cold, %d repeats, medians (MiB/s); ratio = '
          'wendelin_cy / memmap, same run' % (a.size, a.budget, a.repeat))
    print('%8s %12s %12s %8s' % ('workers', 'wendelin_cy', 'memmap', 'ratio'))
    for w in workers:
        m = {k: size / MiB / statistics.median(res[(k, w)]) for k in setups}
        print('%8d %12.0f %12.0f %8.2f' % (w, m['wendelin_cy'], m['memmap'],
                                           m['wendelin_cy'] / m['memmap']))


if __name__ == '__main__':
    sys.exit(main())
